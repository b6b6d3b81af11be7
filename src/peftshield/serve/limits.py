"""The request-body size limit, enforced before the application reads a byte (413).

An ASGI middleware: a declared ``Content-Length`` over the limit is refused at once; otherwise the
body is read as it streams, and refused as soon as the running total passes the limit (a client
may lie about, or omit, the length). The body that passed is replayed to the application.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The one JSON shape of every error the service returns."""
    return {"error": {"code": code, "message": message, **extra}}


async def send_json(send: Send, status: int, body: dict[str, Any], headers: list | None = None) -> None:
    """Send a whole JSON response from ASGI middleware."""
    payload = json.dumps(body).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413 (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 413 for an oversize body; pass the others on with their body replayed."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_json(send, 400, error_body("bad_request", "Content-Length is not a number"))
                    return
        too_large = error_body(
            "payload_too_large",
            f"request body over the limit of {self.max_bytes} bytes",
            limit=self.max_bytes,
        )
        close = [(b"connection", b"close")]
        if declared is not None and declared > self.max_bytes:
            await send_json(send, 413, too_large, close)
            return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left; nothing to answer
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await send_json(send, 413, too_large, close)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
