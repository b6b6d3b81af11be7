"""``peftshield serve``: the guard as an authenticated HTTP service (docs/design.md "serve/").

The victim and its detectors load once; ``POST /v1/classify`` answers with the guard's decisions
(PSIM, Zhao et al. 2024, §3: reject what a detector flags, label the rest; LMSanitator, Wei et
al. 2024, §IV-C: purge what the monitor flags). Needs the ``serve`` extra (FastAPI, uvicorn).
"""

from __future__ import annotations

import argparse
import importlib.util

from peftshield.commands.common import add_command
from peftshield.errors import PeftshieldError
from peftshield.utils.device import DEVICE_CHOICES

EPILOG = """examples:
  peftshield serve --victim runs/victim --detector runs/psim --detector runs/monitor
  PEFTSHIELD_TOKEN=$(cat secret) peftshield serve --victim runs/victim --detector runs/psim \\
      --host 0.0.0.0 --port 8080 --audit-log /var/log/peftshield/audit.jsonl
  peftshield serve --victim runs/victim --detector runs/psim --token-file /run/secrets/token
  curl -s -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \\
      -d '{"texts": ["a gorgeous cf film"], "purge": true}' http://127.0.0.1:8000/v1/classify

endpoints: POST /v1/classify, GET /v1/info, /healthz, /readyz, /metrics (Prometheus), /docs,
/openapi.json. With a token, /v1/* and /metrics need 'Authorization: Bearer TOKEN'. A host other
than loopback is refused without a token. Errors are JSON {"error": {"code", "message"}}: 422
for malformed bodies, too many texts or too long texts, 413 for a body over --max-body-bytes,
503 while loading or overloaded, 504 past --request-timeout. Every rejected text is one line of
the audit log (time, request id, sha256 of the text, reasons, scores), fsynced before the answer.
SIGTERM finishes the requests in flight, then exits 0.
"""


def add_parser(subparsers) -> None:
    """Register ``serve``."""
    from peftshield.serve.settings import ServeSettings

    d = ServeSettings()
    parser = add_command(
        subparsers,
        "serve",
        help="serve the guard over HTTP (FastAPI; the 'serve' extra)",
        description=__doc__,
        epilog=EPILOG,
    )
    models = parser.add_argument_group("models")
    models.add_argument("--victim", required=True, help="victim folder (any form 'peftshield guard' accepts)")
    models.add_argument(
        "--detector",
        action="append",
        default=[],
        help="detector folder (psim fit, monitor fit, baseline fit); repeat to stack",
    )
    models.add_argument(
        "--undefended",
        action="store_true",
        help="serve the victim with no detector (a baseline to measure the guard's cost)",
    )
    models.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="default: auto")
    models.add_argument(
        "--batch-size", type=int, default=128, help="texts per forward pass inside a batch (default: 128)"
    )
    net = parser.add_argument_group("network and security")
    net.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    net.add_argument("--port", type=int, default=8000, help="default: 8000")
    net.add_argument(
        "--token-file",
        default=None,
        help="file whose first line is the bearer token (default: $PEFTSHIELD_TOKEN, if set)",
    )
    net.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="server log level; debug also logs every request (default: info)",
    )
    limits = parser.add_argument_group("limits and batching")
    limits.add_argument(
        "--max-texts",
        type=int,
        default=d.max_texts,
        help=f"texts per request, over: 422 (default: {d.max_texts})",
    )
    limits.add_argument(
        "--max-chars",
        type=int,
        default=d.max_chars,
        help=f"characters per text, over: 422 (default: {d.max_chars})",
    )
    limits.add_argument(
        "--max-body-bytes",
        type=int,
        default=d.max_body_bytes,
        help=f"request body bytes, over: 413 (default: {d.max_body_bytes})",
    )
    limits.add_argument(
        "--request-timeout",
        type=float,
        default=d.request_timeout_s,
        help=f"seconds per classify request, over: 504 (default: {d.request_timeout_s:g})",
    )
    limits.add_argument(
        "--max-queue-texts",
        type=int,
        default=d.max_queue_texts,
        help=f"texts waiting for the model, over: 503 (default: {d.max_queue_texts})",
    )
    limits.add_argument(
        "--max-batch", type=int, default=d.max_batch, help=f"texts per micro-batch (default: {d.max_batch})"
    )
    limits.add_argument(
        "--max-wait-ms",
        type=float,
        default=d.max_wait_ms,
        help=f"wait this long for more requests to fill a batch (default: {d.max_wait_ms:g})",
    )
    limits.add_argument(
        "--purge-max-rounds",
        type=int,
        default=d.purge_max_rounds,
        help=f"purge: at most this many deleted words (default: {d.purge_max_rounds})",
    )
    audit = parser.add_argument_group("audit log")
    audit.add_argument(
        "--audit-log",
        default="peftshield-audit.jsonl",
        help="JSONL file, one line per rejected text (default: ./peftshield-audit.jsonl)",
    )
    audit.add_argument("--no-audit-log", action="store_true", help="keep no audit log")
    audit.add_argument(
        "--log-texts",
        action="store_true",
        help="write the raw text of rejected inputs beside their sha256 (default: hash only)",
    )
    parser.set_defaults(func=run_serve)


def _settings(args: argparse.Namespace):
    from peftshield.serve.settings import ServeSettings

    return ServeSettings(
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        max_body_bytes=args.max_body_bytes,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue_texts=args.max_queue_texts,
        request_timeout_s=args.request_timeout,
        audit_log=None if args.no_audit_log else args.audit_log,
        log_texts=args.log_texts,
        purge_max_rounds=args.purge_max_rounds,
    )


def run_serve(args: argparse.Namespace) -> int:
    """Check every option, load the models once, then serve until SIGTERM."""
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise PeftshieldError(
            f"peftshield serve needs {' and '.join(missing)}: pip install 'peftshield[serve]'"
        )
    from peftshield.serve.audit import AuditLog
    from peftshield.serve.auth import check_bind, read_token

    if bool(args.detector) == bool(args.undefended):
        raise PeftshieldError("give at least one --detector, or --undefended to serve the bare victim")
    if not 0 <= args.port <= 65535:
        raise PeftshieldError(f"--port must be in [0, 65535], got {args.port}")
    if args.batch_size < 1:
        raise PeftshieldError("--batch-size must be at least 1")
    settings = _settings(args)
    token = read_token(args.token_file)
    check_bind(args.host, token)
    audit = AuditLog(settings.audit_log, log_texts=settings.log_texts) if settings.audit_log else None

    from peftshield.commands.guard import one_line_warnings
    from peftshield.serve.service import GuardService

    try:
        with one_line_warnings():
            service = GuardService.load(
                args.victim,
                args.detector,
                settings,
                device=args.device,
                batch_size=args.batch_size,
                audit=audit,
            )
    except BaseException:
        if audit is not None:
            audit.close()
        raise
    from peftshield.serve.app import create_app
    from peftshield.serve.server import run_server

    run_server(create_app(service, token=token), args.host, args.port, log_level=args.log_level)
    return 0
