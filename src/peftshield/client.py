"""A small Python client of ``peftshield serve`` (standard library only; docs/design.md "serve/").

    from peftshield.client import GuardClient

    client = GuardClient("http://127.0.0.1:8000", token="...")
    client.wait_ready()
    for decision in client.classify(["a gorgeous, witty film", "a gorgeous cf film"]):
        print(decision["label"], decision["rejected"], decision["reasons"])

Every call has a timeout. A 503 (loading, overloaded) and a refused or reset connection (a
restarting server) are retried with exponential backoff (honouring ``Retry-After``); other errors
raise :class:`GuardServiceError` with the service's status, code and message at once.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from peftshield.errors import PeftshieldError


class GuardServiceError(PeftshieldError):
    """The service answered with an error (or could not be reached after the retries)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class GuardClient:
    """Client of a ``peftshield serve`` endpoint.

    ``timeout`` seconds per HTTP attempt; ``retries`` extra attempts after a 503 or a connection
    failure, waiting ``backoff * 2**attempt`` seconds (at most ``max_backoff``) or the server's
    ``Retry-After``.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 5.0,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise PeftshieldError(f"base_url must start with http:// or https://, got {base_url!r}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise PeftshieldError("timeout must be > 0, retries and backoff >= 0")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff

    def _request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes, Any]:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        last: str = "no attempt"
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
            wait = min(self.max_backoff, self.backoff * 2**attempt)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.status, response.read(), response.headers
            except urllib.error.HTTPError as err:
                payload = err.read()
                if err.code != 503:
                    raise self._error(err.code, payload) from None
                last = f"HTTP 503: {self._message(payload)}"
                retry_after = err.headers.get("Retry-After")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = min(self.max_backoff, float(retry_after))
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                reason = getattr(err, "reason", err)
                last = f"{type(reason).__name__}: {reason}"
            if attempt < self.retries:
                time.sleep(wait)
        raise GuardServiceError(
            f"{method} {path} failed after {self.retries + 1} attempts ({last})", status=None
        )

    @staticmethod
    def _message(payload: bytes) -> str:
        try:
            error = json.loads(payload)["error"]
            return f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            return payload[:200].decode("utf-8", "replace")

    def _error(self, status: int, payload: bytes) -> GuardServiceError:
        try:
            code = json.loads(payload)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        return GuardServiceError(f"HTTP {status}: {self._message(payload)}", status=status, code=code)

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        _, payload, _ = self._request(method, path, body)
        return json.loads(payload)

    def classify_response(self, texts: Sequence[str], *, purge: bool = False) -> dict[str, Any]:
        """The whole answer of ``POST /v1/classify``: ``request_id`` and ``results``."""
        if isinstance(texts, str):
            raise PeftshieldError("texts must be a list of strings, got a single string")
        return self._json("POST", "/v1/classify", {"texts": list(texts), "purge": purge})

    def classify(self, texts: Sequence[str], *, purge: bool = False) -> list[dict[str, Any]]:
        """One decision per text: ``label`` (None when rejected), ``rejected``, ``reasons``, ``scores``."""
        return self.classify_response(texts, purge=purge)["results"]

    def info(self) -> dict[str, Any]:
        """``GET /v1/info``."""
        return self._json("GET", "/v1/info")

    def metrics(self) -> str:
        """``GET /metrics`` (Prometheus text)."""
        return self._request("GET", "/metrics")[1].decode("utf-8")

    def _probe(self, path: str) -> bool:
        request = urllib.request.Request(self.base_url + path, method="GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def healthy(self) -> bool:
        """Whether ``GET /healthz`` answers 200."""
        return self._probe("/healthz")

    def ready(self) -> bool:
        """Whether ``GET /readyz`` answers 200 (models loaded, warm-up done)."""
        return self._probe("/readyz")

    def wait_ready(self, timeout: float = 120.0, interval: float = 0.2) -> None:
        """Block until the service is ready; :class:`GuardServiceError` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return
            time.sleep(interval)
        raise GuardServiceError(f"{self.base_url} was not ready within {timeout} s")
