"""The FastAPI application of ``peftshield serve`` (docs/design.md "serve/").

Endpoints (shaped like LLM Guard's and NeMo Guardrails' guard services):

- ``POST /v1/classify`` ``{"texts": [...], "purge": false}`` -> one decision per text (``label``,
  null when rejected, ``rejected``, ``reasons``, ``scores``; with ``purge`` also ``purged_text``,
  ``purged_label``, ``purge_removed``, ``purge_cleared``) and the ``request_id`` the audit log uses;
- ``GET /v1/info``: victim, detectors, thresholds, fingerprints, versions and limits;
- ``GET /healthz``: the process answers; ``GET /readyz``: models loaded and the warm-up batch done;
- ``GET /metrics``: Prometheus text; ``/docs`` and ``/openapi.json``: FastAPI's own schema.

With a token, ``/v1/*`` and ``/metrics`` need ``Authorization: Bearer <token>``; the probes and
the schema stay open. Every error is ``{"error": {"code", "message", ...}}``: no traceback or
internal path reaches a response.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from peftshield import __version__
from peftshield.serve.auth import token_matches
from peftshield.serve.batcher import MicroBatcher, QueueFull
from peftshield.serve.limits import BodyLimitMiddleware, error_body
from peftshield.serve.metrics import CONTENT_TYPE
from peftshield.serve.service import GuardService

log = logging.getLogger("uvicorn.error")  # the server log uvicorn configures

KNOWN_PATHS = ("/v1/classify", "/v1/info", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")


# Module level: the annotation below is resolved in this module's namespace.
_BEARER = HTTPBearer(auto_error=False, description="the token of $PEFTSHIELD_TOKEN or --token-file")


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` with ``status``."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers, self.extra = headers, extra


class ClassifyRequest(BaseModel):
    """Body of ``POST /v1/classify``."""

    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(description="the texts to classify (non-empty strings)")
    purge: StrictBool = Field(False, description="purge texts the LMSanitator monitor flags")


class TextDecision(BaseModel):
    """One text's answer (the purge fields only when purge was asked for)."""

    label: int | None
    rejected: bool
    reasons: list[str]
    scores: dict[str, float]
    purged_text: str | None = None
    purged_label: int | None = None
    purge_removed: list[str] | None = None
    purge_cleared: bool | None = None


class ClassifyResponse(BaseModel):
    """Body of a ``POST /v1/classify`` answer."""

    request_id: str
    results: list[TextDecision]


class ErrorResponse(BaseModel):
    """Body of every error."""

    error: dict[str, Any]


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    details = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in errors
    ]
    if any(d["type"] == "json_invalid" for d in details):
        return "the request body is not valid JSON", details
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(p for p in first["loc"] if p != "body") or "body"
    return f"{where}: {first['msg']}", details


def create_app(service: GuardService, *, token: str | None = None) -> FastAPI:
    """The application serving ``service``; ``token`` (if given) guards ``/v1/*`` and ``/metrics``."""
    settings = service.settings
    metrics = service.metrics
    batcher = MicroBatcher(
        service.classify,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        max_queue_texts=settings.max_queue_texts,
    )

    async def warm_up() -> None:
        started = time.perf_counter()
        try:
            await batcher.in_worker(service.warm_up)
        except Exception as err:  # the service stays not ready; the log says why
            log.error("peftshield: warm-up failed: %s: %s", type(err).__name__, err)
            return
        log.info("peftshield: ready (warm-up batch %.2f s)", time.perf_counter() - started)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        # The warm-up runs in the background: the server listens at once, /healthz answers and
        # /readyz says 503 until the warm-up batch is done.
        await batcher.start()
        warming = asyncio.create_task(warm_up(), name="peftshield-warm-up")
        try:
            yield
        finally:
            warming.cancel()
            await batcher.stop()
            if service.audit is not None:
                service.audit.close()

    app = FastAPI(
        title="peftshield guard service",
        version=__version__,
        description="A victim classifier behind PSIM and the LMSanitator monitor (peftshield serve).",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.batcher = batcher

    def authorised(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        if token is None:
            return
        header = f"{credentials.scheme} {credentials.credentials}" if credentials else None
        if not token_matches(header, token):
            raise ApiError(
                401, "unauthorized", "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    errors = {code: {"model": ErrorResponse} for code in (401, 413, 422, 503, 504)}

    @app.post(
        "/v1/classify", response_model=ClassifyResponse, responses=errors, dependencies=[Depends(authorised)]
    )
    async def classify(body: ClassifyRequest) -> JSONResponse:
        """Label or reject each text (PSIM §3 deployment); purge flagged texts when asked."""
        texts = body.texts
        if not texts:
            raise ApiError(422, "invalid_request", "texts: the list is empty")
        if len(texts) > settings.max_texts:
            raise ApiError(
                422,
                "too_many_texts",
                f"texts: {len(texts)} texts, over the limit of {settings.max_texts} per request",
                limit=settings.max_texts,
            )
        for i, text in enumerate(texts):
            if not text.strip():
                raise ApiError(422, "invalid_request", f"texts[{i}] is empty")
            if len(text) > settings.max_chars:
                raise ApiError(
                    422,
                    "text_too_long",
                    f"texts[{i}]: {len(text)} characters, over the limit of {settings.max_chars}",
                    limit=settings.max_chars,
                )
        if body.purge and not service.can_purge:
            raise ApiError(
                422, "purge_unavailable", "purge needs the LMSanitator monitor among the detectors"
            )
        if not service.ready:
            raise ApiError(503, "not_ready", "the models are still loading", headers={"Retry-After": "1"})
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        try:
            results = await asyncio.wait_for(
                batcher.submit(texts, body.purge, request_id), settings.request_timeout_s
            )
        except QueueFull:
            raise ApiError(
                503, "overloaded", "too many texts are waiting; retry later", headers={"Retry-After": "1"}
            ) from None
        except TimeoutError:
            raise ApiError(504, "timeout", f"no answer within {settings.request_timeout_s} s") from None
        metrics.latency.observe(time.perf_counter() - started)
        return JSONResponse(
            {"request_id": request_id, "results": results}, headers={"X-Request-ID": request_id}
        )

    @app.get("/v1/info", dependencies=[Depends(authorised)], responses=errors)
    async def info() -> dict[str, Any]:
        """Victim, detectors, thresholds, fingerprints, versions and limits."""
        return service.info()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive (answers even while a batch runs)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz() -> JSONResponse:
        """The models are loaded and the warm-up batch ran."""
        if not service.ready:
            return JSONResponse(error_body("not_ready", "the models are still loading"), status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", dependencies=[Depends(authorised)], response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        """Counters and histograms in the Prometheus text format."""
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(err.code, err.message, **err.extra), status_code=err.status, headers=err.headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        message, details = _validation_message(list(err.errors()))
        return JSONResponse(error_body("invalid_request", message, details=details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(f"http_{err.status_code}", str(err.detail)),
            status_code=err.status_code,
            headers=getattr(err, "headers", None),
        )

    @app.exception_handler(Exception)
    async def internal(_: Request, err: Exception) -> JSONResponse:
        log.error("internal error: %s: %s", type(err).__name__, err)
        return JSONResponse(error_body("internal", "internal server error"), status_code=500)

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(_RequestCounter, metrics=metrics)
    return app


class _RequestCounter:
    """ASGI middleware counting every answered request by path and status (413s included)."""

    def __init__(self, app: Any, metrics: Any) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        label = path if path in KNOWN_PATHS else "other"

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.inc(path=label, code=str(message["status"]))
            await send(message)

        await self.app(scope, receive, counting_send)
