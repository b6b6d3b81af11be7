"""The service's counters and histograms in the Prometheus text exposition format (version 0.0.4).

Written here rather than pulled from ``prometheus_client``: a handful of counters and two
histograms do not justify a dependency. Thread-safe (the model worker records batch sizes).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""

    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    """A monotonically increasing count, one series per label set."""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self._values: dict[tuple[tuple[str, str], ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (>= 0) to the series of ``labels``."""
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = tuple((name, str(labels[name])) for name in self.labelnames)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        """The current value of one series (0 when never incremented)."""
        key = tuple((name, str(labels[name])) for name in self.labelnames)
        with self._lock:
            return self._values.get(key, 0.0)

    def render(self) -> list[str]:
        """Exposition lines."""
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.labelnames:
            items = [((), 0.0)]
        lines += [f"{self.name}{_labels(k)} {_number(v)}" for k, v in items]
        return lines


class Histogram:
    """Cumulative bucket counts, a sum and a count (no labels)."""

    def __init__(self, name: str, help: str, buckets: Sequence[float]) -> None:
        self.name, self.help = name, help
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._counts = [0] * len(self.buckets)
        self._sum = 0.0
        self._count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        """Record one observation."""
        with self._lock:
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self._counts[i] += 1
                    break
            self._sum += value
            self._count += 1

    @property
    def count(self) -> int:
        """Observations so far."""
        with self._lock:
            return self._count

    def render(self) -> list[str]:
        """Exposition lines (cumulative ``_bucket`` series, ``_sum``, ``_count``)."""
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            running = 0
            for bound, n in zip(self.buckets, self._counts, strict=True):
                running += n
                lines.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {running}')
            lines.append(f"{self.name}_sum {_number(self._sum)}")
            lines.append(f"{self.name}_count {self._count}")
        return lines


class ServeMetrics:
    """Everything ``GET /metrics`` shows: requests, texts, rejections, latency and batch sizes."""

    def __init__(self) -> None:
        self.requests = Counter(
            "peftshield_requests_total", "HTTP requests by path and status code", ("path", "code")
        )
        self.texts = Counter("peftshield_texts_total", "texts classified")
        self.rejected = Counter("peftshield_rejected_texts_total", "texts rejected by any detector")
        self.rejections = Counter("peftshield_rejections_total", "texts flagged, per detector", ("detector",))
        self.latency = Histogram(
            "peftshield_request_latency_seconds", "latency of POST /v1/classify", LATENCY_BUCKETS_S
        )
        self.batch_texts = Histogram("peftshield_batch_texts", "texts per model batch", BATCH_BUCKETS)

    def render(self) -> str:
        """The whole exposition document."""
        lines: list[str] = []
        for metric in (
            self.requests,
            self.texts,
            self.rejected,
            self.rejections,
            self.latency,
            self.batch_texts,
        ):
            lines += metric.render()
        return "\n".join(lines) + "\n"
