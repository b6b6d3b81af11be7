"""The audit log: one JSON line per rejected text, on disk before the response is sent.

Each line holds the time, the request id and the text's index in the request, the sha256 of the
text (the raw text only when asked for: the log may be read by people who should not see user
input), the detectors that fired and every score. A batch's lines are written in one ``write``,
flushed and ``fsync``-ed before any of its requests is answered, so a crash (even ``kill -9``)
loses no line whose response was sent (docs/design.md "serve/").
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from peftshield.errors import PeftshieldError


def text_sha256(text: str) -> str:
    """Hex sha256 of the UTF-8 text (how the log names a text without showing it)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class AuditLog:
    """Append-only JSONL file of rejected texts, each batch flushed and fsynced."""

    def __init__(self, path: str | os.PathLike, *, log_texts: bool = False) -> None:
        self.path = Path(path)
        self.log_texts = log_texts
        self._lock = threading.Lock()
        if self.path.is_dir():
            raise PeftshieldError(f"audit log {self.path} is a folder")
        if not self.path.parent.is_dir():
            raise PeftshieldError(f"audit log folder not found: {self.path.parent}")
        try:
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open
        except OSError as err:
            raise PeftshieldError(f"cannot open audit log {self.path}: {err.strerror}") from None
        self.lines_written = 0

    def entry(self, request_id: str, index: int, text: str, decision: dict[str, Any]) -> dict[str, Any]:
        """The audit record of one rejected text."""
        record: dict[str, Any] = {
            "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"),
            "request_id": request_id,
            "index": index,
            "sha256": text_sha256(text),
            "reasons": list(decision["reasons"]),
            "scores": dict(decision["scores"]),
        }
        if self.log_texts:
            record["text"] = text
        return record

    def write(self, records: Iterable[dict[str, Any]]) -> int:
        """Append ``records`` as one write, then flush and fsync; returns the number of lines."""
        payload = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records)
        if not payload:
            return 0
        with self._lock:
            self._handle.write(payload)
            self._handle.flush()
            os.fsync(self._handle.fileno())
            n = payload.count("\n")
            self.lines_written += n
        return n

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if not self._handle.closed:
                self._handle.close()
