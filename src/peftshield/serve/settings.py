"""The service's limits and batching settings, validated once (docs/design.md "serve/")."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from peftshield.errors import PeftshieldError
from peftshield.utils.validate import require_positive


@dataclass(frozen=True)
class ServeSettings:
    """Limits, batching and audit settings of ``peftshield serve``.

    ``max_texts`` texts per request and ``max_chars`` characters per text (over: 422);
    ``max_body_bytes`` per request body (over: 413); ``request_timeout_s`` per classify request
    (over: 504); ``max_queue_texts`` texts waiting for the model (over: 503). Micro-batching
    gathers requests until ``max_batch`` texts or ``max_wait_ms`` after the first one.
    ``audit_log`` is the JSONL file of rejected texts (``None``: no audit log); ``log_texts``
    writes the raw text beside its sha256. ``purge_max_rounds`` bounds the LMSanitator purge.
    """

    max_texts: int = 64
    max_chars: int = 2000
    max_body_bytes: int = 1_000_000
    max_batch: int = 128
    max_wait_ms: float = 5.0
    max_queue_texts: int = 4096
    request_timeout_s: float = 30.0
    audit_log: str | None = None
    log_texts: bool = False
    purge_max_rounds: int = 3

    def __post_init__(self) -> None:
        for name in (
            "max_texts",
            "max_chars",
            "max_body_bytes",
            "max_batch",
            "max_queue_texts",
            "purge_max_rounds",
        ):
            require_positive("serve", name, getattr(self, name), integer=True)
        require_positive("serve", "request_timeout_s", self.request_timeout_s)
        for name in ("max_wait_ms", "request_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise PeftshieldError(f"serve: {name} must be a finite number >= 0, got {value!r}")
        if self.max_queue_texts < self.max_texts:
            raise PeftshieldError("serve: max_queue_texts must be at least max_texts")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``GET /v1/info`` shows)."""
        return asdict(self)
