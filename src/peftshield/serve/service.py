"""The model work behind the service: a loaded :class:`~peftshield.defenses.guard.Guard` per batch.

One call of :meth:`GuardService.classify` runs the guard once over the texts of every request in
a micro-batch (``Guard.predict``, so the answers are the library's), purges the texts the
LMSanitator monitor flagged for requests that asked for it (Wei et al. 2024, §IV-C, through
:class:`~peftshield.defenses.lmsanitator.purge.Purger`), writes the audit lines of the rejected
texts (fsynced) and only then returns, so no answer leaves before its audit line is on disk.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftshield.errors import PeftshieldError
from peftshield.serve.audit import AuditLog
from peftshield.serve.batcher import Job
from peftshield.serve.metrics import ServeMetrics
from peftshield.serve.settings import ServeSettings

WARM_UP_TEXTS = ("peftshield warm-up batch", "a second warm-up text, a little longer than the first")


class ServiceError(Exception):
    """A failure inside the model work (reported as a 500 without details)."""


class GuardService:
    """A victim behind its detectors (or alone, ``guard=None``, to measure what the guard costs).

    ``victim`` is the guard's loaded victim; ``victim_ref`` and ``detector_refs`` name where they
    came from (``GET /v1/info``). The monitor used for purging is the guard's first
    :class:`~peftshield.defenses.lmsanitator.monitor.PVMonitor`, if it has one.
    """

    def __init__(
        self,
        guard: Any,
        victim: Any,
        settings: ServeSettings,
        *,
        victim_ref: str,
        detector_refs: Sequence[str] = (),
        audit: AuditLog | None = None,
        metrics: ServeMetrics | None = None,
    ) -> None:
        self.guard = guard
        self.victim = victim
        self.settings = settings
        self.victim_ref = victim_ref
        self.detector_refs = list(detector_refs)
        self.audit = audit
        self.metrics = metrics or ServeMetrics()
        self.monitor_name = self._find_monitor()
        self.ready = False

    @classmethod
    def load(
        cls,
        victim: str | Path,
        detectors: Sequence[str | Path],
        settings: ServeSettings,
        *,
        device: str = "auto",
        batch_size: int = 128,
        audit: AuditLog | None = None,
        metrics: ServeMetrics | None = None,
    ) -> GuardService:
        """Load the models once: the guard's own loader (every victim form it accepts) or, with no
        detectors, the victim alone (the undefended baseline)."""
        from peftshield.defenses.guard import Guard

        if detectors:
            guard = Guard.from_folders(victim, list(detectors), device=device, batch_size=batch_size)
            loaded = guard.victim
        else:
            from peftshield.defenses.victim import load_victim

            guard, loaded = None, load_victim(victim, device=device)
        return cls(
            guard,
            loaded,
            settings,
            victim_ref=str(victim),
            detector_refs=[str(d) for d in detectors],
            audit=audit,
            metrics=metrics,
        )

    def _find_monitor(self) -> str | None:
        if self.guard is None:
            return None
        from peftshield.defenses.lmsanitator.monitor import PVMonitor

        for name, det in self.guard.detectors.items():
            if isinstance(det, PVMonitor):
                return name
        return None

    @property
    def can_purge(self) -> bool:
        """Whether ``purge`` requests can be served (the guard holds the LMSanitator monitor)."""
        return self.monitor_name is not None

    # -- the model work (worker thread) ---------------------------------------------------------------

    def _decide(self, texts: list[str]) -> list[dict[str, Any]]:
        if self.guard is None:
            logits = self.victim.predict_logits(texts)
            return [
                {"label": int(i), "rejected": False, "reasons": [], "scores": {}} for i in logits.argmax(-1)
            ]
        with warnings.catch_warnings():
            # Truncation is expected for long texts and said once in GET /v1/info; it must not
            # flood the server log once per batch.
            warnings.simplefilter("ignore")
            decisions = self.guard.predict(texts)
        out = [d.to_dict() for d in decisions]
        for row in out:
            for name, value in row["scores"].items():
                if not math.isfinite(value):
                    raise ServiceError(f"detector {name} gave a non-finite score")
        return out

    def _purge(self, texts: list[str], rows: list[dict[str, Any]], wanted: list[int]) -> None:
        """Add the purge fields to ``rows[i]`` for every ``i`` in ``wanted`` (one batched purge)."""
        from peftshield.defenses.lmsanitator.purge import Purger

        assert self.monitor_name is not None
        flagged = [i for i in wanted if self.monitor_name in rows[i]["reasons"]]
        for i in wanted:
            row = rows[i]
            if i not in flagged:
                # Nothing for the monitor to purge: an accepted text keeps its label, one rejected by
                # another detector stays without one.
                row.update(
                    purged_text=texts[i],
                    purged_label=row["label"],
                    purge_removed=[],
                    purge_cleared=not row["rejected"],
                )
        if not flagged:
            return
        monitor = self.guard.detectors[self.monitor_name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = Purger(monitor, max_rounds=self.settings.purge_max_rounds).purge(
                [texts[i] for i in flagged]
            )
        for i, res in zip(flagged, results, strict=True):
            only_monitor = rows[i]["reasons"] == [self.monitor_name]
            usable = res.cleared and only_monitor
            rows[i].update(
                purged_text=res.text,
                purged_label=int(res.label) if usable else None,
                purge_removed=list(res.removed),
                purge_cleared=bool(res.cleared),
            )

    def classify(self, jobs: list[Job]) -> list[list[dict[str, Any]]]:
        """The decisions of every job's texts (one guard pass for all), audited before returning."""
        texts = [t for job in jobs for t in job.texts]
        try:
            rows = self._decide(texts)
            spans, start = [], 0
            for job in jobs:
                spans.append((start, start + len(job.texts)))
                start += len(job.texts)
            wanted = [i for job, (a, b) in zip(jobs, spans, strict=True) if job.purge for i in range(a, b)]
            if wanted:
                self._purge(texts, rows, wanted)
        except (ServiceError, PeftshieldError):
            raise
        except Exception as err:  # a bug or a model failure: the caller answers 500, the log has it
            raise ServiceError(f"{type(err).__name__} in the model work") from err
        records = []
        for job, (a, b) in zip(jobs, spans, strict=True):
            for k in range(a, b):
                if rows[k]["rejected"] and self.audit is not None:
                    records.append(self.audit.entry(job.request_id, k - a, texts[k], rows[k]))
        if self.audit is not None:
            self.audit.write(records)  # flushed and fsynced before any answer is released
        self._count(rows)
        return [rows[a:b] for a, b in spans]

    def _count(self, rows: list[dict[str, Any]]) -> None:
        m = self.metrics
        m.batch_texts.observe(len(rows))
        m.texts.inc(len(rows))
        for row in rows:
            if row["rejected"]:
                m.rejected.inc()
            for name in row["reasons"]:
                m.rejections.inc(detector=name)

    def warm_up(self) -> None:
        """One small batch through every model (not audited, not counted): the first real request
        does not pay for lazy initialisation."""
        texts = list(WARM_UP_TEXTS)
        self._decide(texts)
        if self.can_purge:
            from peftshield.defenses.lmsanitator.purge import Purger

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Purger(self.guard.detectors[self.monitor_name], max_rounds=1).purge(texts[:1])
        self.ready = True

    # -- description ------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/info`` shows: victim, detectors, thresholds, fingerprints, versions, limits."""
        from peftshield.utils.runinfo import package_versions

        run = getattr(self.victim, "run", None) or {}
        backbone = run.get("backbone", {}) if isinstance(run, dict) else {}
        detectors = []
        if self.guard is not None:
            for (name, det), ref in zip(self.guard.detectors.items(), self.detector_refs, strict=False):
                detectors.append(
                    {
                        "name": name,
                        "type": type(det).name,
                        "folder": Path(ref).name,
                        "threshold": float(det.threshold_),
                        "backbone_fingerprint": getattr(det, "backbone_fingerprint_", None),
                    }
                )
        return {
            "victim": {
                "folder": Path(self.victim_ref).name,
                "method": run.get("method") if isinstance(run, dict) else None,
                "num_labels": run.get("num_labels") if isinstance(run, dict) else None,
                "max_length": getattr(self.victim, "max_length", None),
                "backbone_fingerprint": backbone.get("fingerprint") if isinstance(backbone, dict) else None,
            },
            "defended": self.guard is not None,
            "detectors": detectors,
            "purge": self.can_purge,
            "audit_log": self.audit is not None,
            "limits": {k: v for k, v in self.settings.to_dict().items() if k != "audit_log"},
            "versions": package_versions(),
            "ready": self.ready,
        }
