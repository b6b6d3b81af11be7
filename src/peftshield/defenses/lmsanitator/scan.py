"""Model scan: is a pretrained backbone backdoored? (LMSanitator stage 2, detection mode).

Wei et al., NDSS 2024, §IV-B and §V-B; reference ``2-PV_mining_filtering/TOKEN/main.py`` run with
``max_fuzz_iter = 30`` (detection) or 1,000 (search). :func:`scan` runs fuzzing attempts of the
:class:`~.mining.PVMiner` until a PV passes the filter (``stop_at_first``, the reference's
detection mode) or the attempt / step budget is spent (search for every PV), and returns a
:class:`ScanResult`: verdict (``backdoored`` when at least one PV survives), the PVs and their soft
triggers, a per-attempt log and the time taken. :meth:`ScanResult.save` writes ``pvs.safetensors``
(tensor ``pvs`` of shape ``(n, hidden)``, the file and key the attack records use for the true
PVs, and ``triggers`` of shape ``(n, n_slots, hidden)``) and ``scan.json``.

Deviation: the reference bounds a scan by attempts only; here a total step budget
(``max_total_steps``) bounds it as well, because a scan of a clean model runs every attempt to
its abandonment and the time target is about 300 optimisation steps per model on 2 CPU cores.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peftshield.errors import PeftshieldError
from peftshield.models.backbones import LoadedBackbone, fingerprint, load_backbone
from peftshield.utils.io import atomic_dir, read_json, write_json
from peftshield.utils.runinfo import run_metadata
from peftshield.utils.validate import require_positive

from .filtering import FilterThresholds
from .measures import sign_agreement
from .mining import AttemptRecord, MiningConfig, PVMiner

PV_FILE = "pvs.safetensors"
SCAN_FILE = "scan.json"
#: Default mining corpus (clean unlabelled Wikipedia sentences).
DEFAULT_TEXTS = "wiki"
#: Default bounds of a scan (issue 5: reference 30 attempts; about 300 steps per clean model).
DEFAULT_ATTEMPTS = 30
DEFAULT_MAX_TOTAL_STEPS = 300


@dataclass
class ScanResult:
    """The outcome of scanning one backbone."""

    verdict: str
    pvs: torch.Tensor
    triggers: torch.Tensor
    attempts: list[AttemptRecord]
    seconds: float
    steps: int
    model: str
    pooling: str
    hidden_size: int
    fingerprint: str
    config: MiningConfig
    thresholds: FilterThresholds
    stop_at_first: bool
    max_attempts: int
    max_total_steps: int | None
    texts: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_pvs(self) -> int:
        """Number of PVs kept."""
        return int(self.pvs.shape[0])

    def summary(self) -> dict[str, Any]:
        """The JSON report without the per-attempt traces."""
        return {
            "model": self.model,
            "verdict": self.verdict,
            "n_pvs": self.n_pvs,
            "attempts": len(self.attempts),
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
            "pooling": self.pooling,
            "hidden_size": self.hidden_size,
            "fingerprint": self.fingerprint,
            "stop_at_first": self.stop_at_first,
            "max_attempts": self.max_attempts,
            "max_total_steps": self.max_total_steps,
            "texts": self.texts,
            "thresholds": self.thresholds.to_dict(),
            "config": self.config.to_dict(),
            **self.extra,
        }

    def to_dict(self, traces: bool = True) -> dict[str, Any]:
        """Everything, including the per-attempt log (with step traces unless ``traces=False``)."""
        log = []
        for record in self.attempts:
            row = record.to_dict()
            if not traces:
                row.pop("trace", None)
            log.append(row)
        return {**self.summary(), "attempt_log": log}

    def save(self, out_dir: str | Path, overwrite: bool = False, command: str | None = None) -> Path:
        """Write ``pvs.safetensors`` and ``scan.json`` atomically into ``out_dir``."""
        from safetensors.torch import save_file

        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            save_file(
                {"pvs": self.pvs.contiguous().float(), "triggers": self.triggers.contiguous().float()},
                str(tmp / PV_FILE),
            )
            write_json(tmp / SCAN_FILE, {**self.to_dict(), "meta": run_metadata(command)})
        return Path(out_dir)


def mining_texts(source: str | Sequence[str] = DEFAULT_TEXTS) -> list[str]:
    """Clean texts for mining: a corpus name or file (labels ignored), or a list of strings."""
    if not isinstance(source, str):
        texts = [t for t in source if isinstance(t, str) and t.strip()]
    else:
        from peftshield.data.corpora import load_corpus

        texts = [e.text for e in load_corpus(source, label_column=None)]
    if not texts:
        raise PeftshieldError("no mining texts")
    return texts


def scan(
    model: str | LoadedBackbone,
    texts: str | Sequence[str] = DEFAULT_TEXTS,
    *,
    config: MiningConfig | None = None,
    thresholds: FilterThresholds | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    max_total_steps: int | None = DEFAULT_MAX_TOTAL_STEPS,
    stop_at_first: bool = True,
    pooling: str | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool | None = None,
    on_attempt: Callable[[AttemptRecord], None] | None = None,
) -> ScanResult:
    """Scan a backbone for task-agnostic backdoors: mine PVs, filter them, give a verdict.

    ``model`` is a backbone reference for :func:`~peftshield.models.backbones.load_backbone` (or a
    loaded one); ``texts`` a corpus name / file or a list of clean texts. The scan stops at the
    first PV when ``stop_at_first`` (reference detection mode), else after ``attempts`` attempts;
    in both cases also when ``max_total_steps`` optimisation steps have been spent (``None``: no
    step bound). ``progress=None`` shows a progress bar on a terminal only. ``seconds`` in the
    result counts from after the backbone and the texts are loaded.
    """
    from tqdm.auto import tqdm

    require_positive("", "attempts", attempts, integer=True)
    if max_total_steps is not None:
        require_positive("", "max_total_steps", max_total_steps, integer=True)
    config = config or MiningConfig()
    thresholds = thresholds or FilterThresholds()
    backbone = model if isinstance(model, LoadedBackbone) else load_backbone(model, pooling=pooling)
    text_list = mining_texts(texts)
    start = time.perf_counter()
    fp = fingerprint(backbone.encoder)
    miner = PVMiner(
        backbone.encoder,
        backbone.tokenizer,
        backbone.pooling,
        text_list,
        config,
        thresholds,
        device=device,
        seed=seed,
    )
    budget = max_total_steps if max_total_steps is not None else attempts * config.steps
    hide = True if progress is False else (None if progress is None else False)
    bar = tqdm(
        total=min(budget, attempts * config.steps), desc="scan", unit="step", disable=hide, leave=False
    )
    records: list[AttemptRecord] = []
    pvs: list[torch.Tensor] = []
    triggers: list[torch.Tensor] = []
    used = 0
    try:
        for index in range(attempts):
            left = budget - used
            if left <= 0:
                break
            result = miner.attempt(index, pvs, max_steps=left, on_step=lambda: bar.update(1))
            used += result.record.steps
            records.append(result.record)
            if result.record.outcome == "pv" and result.candidate is not None:
                pvs.append(result.candidate.pv)
                triggers.append(result.candidate.trigger)
            bar.set_postfix(attempt=index + 1, pvs=len(pvs))
            if on_attempt is not None:
                on_attempt(result.record)
            if pvs and stop_at_first:
                break
    finally:
        bar.close()
        miner.close()
    hidden = miner.hidden
    source = texts if isinstance(texts, str) else f"{len(text_list)} given texts"
    return ScanResult(
        verdict="backdoored" if pvs else "clean",
        pvs=torch.stack(pvs) if pvs else torch.zeros(0, hidden),
        triggers=torch.stack(triggers) if triggers else torch.zeros(0, config.n_slots, hidden),
        attempts=records,
        seconds=time.perf_counter() - start,
        steps=used,
        model=backbone.ref,
        pooling=backbone.pooling,
        hidden_size=hidden,
        fingerprint=fp,
        config=config,
        thresholds=thresholds,
        stop_at_first=stop_at_first,
        max_attempts=attempts,
        max_total_steps=max_total_steps,
        texts=str(source),
    )


@dataclass
class PVSet:
    """PVs read back from a scan folder or a PV file, with what is known of their backbone."""

    pvs: torch.Tensor
    fingerprint: str | None
    pooling: str | None
    source: str
    scan: dict[str, Any] = field(default_factory=dict)

    @property
    def hidden_size(self) -> int:
        """Width of the PVs."""
        return int(self.pvs.shape[1])


def read_pv_file(path: str | Path, hidden_size: int | None = None) -> torch.Tensor:
    """Read tensor ``pvs`` ``(n, hidden)`` from a safetensors file, checking its shape.

    Also reads the attack records' ``pvs.safetensors`` (same key), so a monitor can be fitted on the
    true PVs for an oracle comparison. A 1-D tensor is one PV.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise PeftshieldError(f"PV file not found: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise PeftshieldError(f"{path} is not a readable safetensors file: {err}") from None
    if "pvs" not in tensors:
        raise PeftshieldError(f"{path} has no tensor 'pvs' (tensors: {', '.join(tensors) or 'none'})")
    pvs = tensors["pvs"]
    if pvs.ndim == 1:
        pvs = pvs.unsqueeze(0)
    if pvs.ndim != 2:
        raise PeftshieldError(f"{path}: 'pvs' must have shape (n, hidden), got {tuple(pvs.shape)}")
    if not torch.is_floating_point(pvs) or not torch.isfinite(pvs).all():
        raise PeftshieldError(f"{path}: 'pvs' must hold finite floating-point values")
    if hidden_size is not None and pvs.shape[1] != hidden_size:
        raise PeftshieldError(
            f"{path}: the PVs have width {pvs.shape[1]} but the model's output has {hidden_size} units"
        )
    return pvs.float()


def load_pvs(source: str | Path, hidden_size: int | None = None) -> PVSet:
    """PVs from a scan folder (``pvs.safetensors`` + ``scan.json``) or a bare PV file.

    A poisoned model folder written by ``peftshield poison`` also works (its true PVs, with the
    fingerprint from its ``poison.json``): an oracle monitor to compare mined PVs with. A bare file
    carries no backbone fingerprint, so a monitor built from it cannot check that it watches the
    scanned backbone; scan folders are preferred.
    """
    path = Path(source)
    if path.is_dir():
        if not (path / PV_FILE).is_file():
            raise PeftshieldError(f"{path} is not a scan folder (no {PV_FILE})")
        info = read_json(path / SCAN_FILE) if (path / SCAN_FILE).is_file() else {}
        if not isinstance(info, dict):
            raise PeftshieldError(f"{path / SCAN_FILE} must hold a JSON object")
        if not info and (path / "poison.json").is_file():
            # A poisoned model folder: its true PVs (an oracle for comparisons) and its own fingerprint.
            record = read_json(path / "poison.json")
            if isinstance(record, dict):
                info = {"fingerprint": record.get("fingerprint") or None, "pooling": record.get("pooling")}
        pvs = read_pv_file(path / PV_FILE, hidden_size)
        return PVSet(
            pvs=pvs,
            fingerprint=info.get("fingerprint"),
            pooling=info.get("pooling"),
            source=str(path),
            scan=info,
        )
    return PVSet(pvs=read_pv_file(path, hidden_size), fingerprint=None, pooling=None, source=str(path))


def pv_recovery(found: torch.Tensor, true: torch.Tensor, t_match: float = 0.8) -> dict[str, Any]:
    """PV recovery: how many true PVs a scan found, matching by sign agreement (issue 5 metric).

    A true PV counts as recovered when some found PV agrees with its signs on more than ``t_match``
    of the units (the monitor's rule, reference T_match 0.8). Returns ``recovered`` (count),
    ``recovery_rate`` (over true PVs), ``n_true``, ``n_found``, ``best_agreement`` per true PV and
    ``spurious`` (found PVs that match no true PV). True PVs come from the attack record
    (``peftshield.attacks.record.load_pvs``) or :func:`read_pv_file`.
    """
    true = torch.atleast_2d(true).float()
    found = torch.atleast_2d(found).float() if found.numel() else torch.zeros(0, true.shape[1])
    if found.shape[1] != true.shape[1]:
        raise PeftshieldError(f"found PVs have width {found.shape[1]}, true PVs {true.shape[1]}")
    if true.shape[0] == 0:
        raise PeftshieldError("PV recovery needs at least one true PV")
    if found.shape[0] == 0:
        best = torch.zeros(true.shape[0])
        matched_found = torch.zeros(0, dtype=torch.bool)
    else:
        agreement = sign_agreement(true, found)  # (n_true, n_found)
        best = agreement.max(1).values
        matched_found = (agreement > t_match).any(0)
    recovered = int((best > t_match).sum())
    return {
        "n_true": int(true.shape[0]),
        "n_found": int(found.shape[0]),
        "recovered": recovered,
        "recovery_rate": recovered / true.shape[0],
        "best_agreement": [round(float(b), 4) for b in best],
        "spurious": int((~matched_found).sum()),
    }
