"""Running the application under uvicorn, with a graceful shutdown (docs/design.md "serve/").

On SIGTERM (or SIGINT) uvicorn stops accepting connections, lets the in-flight requests finish
(their batches run to the end and their audit lines are written), runs the application's
shutdown, and :func:`run_server` returns normally: a stop asked for is not a failure, so the
process exits 0.
"""

from __future__ import annotations

import signal
from typing import Any


def run_server(
    app: Any, host: str, port: int, *, log_level: str = "info", graceful_timeout_s: float | None = None
) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM/SIGINT; in-flight requests are finished first."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=log_level == "debug",
        timeout_graceful_shutdown=graceful_timeout_s,
        server_header=False,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it caught once it has shut down, under the handler that was in
    # place before it started: with these, that re-raise is a no-op and the process exits 0.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore(signum: int, frame: Any) -> None:  # pragma: no cover - a signal after shutdown
    return None
