"""Model scan: is a pretrained backbone backdoored? (LMSanitator stage 2, detection mode).

Wei et al., NDSS 2024, §IV-B and §V-B; reference ``2-PV_mining_filtering/TOKEN/main.py`` run with
``max_fuzz_iter = 30`` (detection) or 1,000 (search). :func:`scan` runs fuzzing attempts of the
:class:`~.mining.PVMiner` until a PV passes the filter (``stop_at_first``, the reference's
detection mode) or the attempt / step budget is spent (search for every PV), and returns a
:class:`ScanResult`: verdict (``backdoored`` when at least one PV survives), the PVs and their soft
triggers per output vector, a per-model score, a per-attempt log and the time taken.
:meth:`ScanResult.save` writes ``pvs.safetensors`` and ``scan.json``; the document's keys are
documented in ``docs/scan-format.md``.

A scan for an unknown attacker (issue 11; docs/design.md, "The artifacts users bring"): by
default every candidate output vector of the architecture is mined
(:func:`peftshield.models.pooling.candidate_poolings`: cls, mean, the pooler where the model has
one, the last token for decoders), because a victim's head may read any of them and a
task-agnostic attacker chooses which one to poison. The vectors share one miner (one set of clean
outputs, one verification pass per candidate for all vectors) and one step budget: attempts
take the vectors in turn, the registered one first, and each attempt also watches the others. The
scan stops at the first PV on any vector (``stop_at_first``); in search mode, once a PV is found,
the rest of the budget goes to the vectors that have PVs (the monitor needs every PV of its
vector). Each vector gets a verdict (``backdoored``, ``clean`` = no PV within the attempts it got,
``not_scanned`` = the scan ended before its first attempt), the model ``backdoored`` if any vector
is.

The per-model score (:func:`candidate_score`) is the best candidate's margin to the filter
thresholds, in log units: ``min(log(max_gap / gap), log(distance / min_distance))`` maximised over
every candidate the scan measured (every attempt's final candidate, on every watched vector). It
is positive when a candidate passes both the collapse and the distance rules, so a backdoored
verdict has a positive score and a clean one a negative score (up to the novelty rule), and
higher means more suspicious: a zoo gets an AUROC, not only an accuracy (TrojAI's convention).

Deviation: the reference bounds a scan by attempts only; here a total step budget
(``max_total_steps``) bounds it as well, because a scan of a clean model runs every attempt to
its abandonment and the time target is about 300 optimisation steps per model on 2 CPU cores.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peftshield.errors import PeftshieldError
from peftshield.models.backbones import LoadedBackbone, fingerprint, load_backbone
from peftshield.models.pooling import POOLING_CHOICES, candidate_poolings
from peftshield.utils.io import atomic_dir, read_json, write_json
from peftshield.utils.runinfo import package_versions, run_metadata
from peftshield.utils.validate import require_positive

from .filtering import FilterThresholds
from .measures import sign_agreement
from .mining import AttemptRecord, MiningConfig, PVMiner

PV_FILE = "pvs.safetensors"
SCAN_FILE = "scan.json"
#: Name and version of the JSON document (docs/scan-format.md); bumped on an incompatible change.
SCHEMA = "peftshield.scan/1"
#: Default mining corpus (clean unlabelled Wikipedia sentences).
DEFAULT_TEXTS = "wiki"
#: Default bounds of a scan (issue 5: reference 30 attempts; about 300 steps per clean model).
DEFAULT_ATTEMPTS = 30
DEFAULT_MAX_TOTAL_STEPS = 300
#: Smallest gap / distance the score takes a logarithm of (keeps it finite for a perfect collapse).
SCORE_FLOOR = 1e-6
#: Subtracted from the score of a candidate whose trigger left the legitimate range.
OUT_OF_RANGE_PENALTY = 1.0
VERDICTS = ("backdoored", "clean", "not_scanned")


def candidate_score(distance: float, gap: float, in_range: bool, thresholds: FilterThresholds) -> float:
    """A candidate's signed margin to the filter thresholds (higher = more suspicious; module docstring).

    ``min(log(max_gap / gap), log(distance / min_distance))``, with ``gap`` and ``distance``
    floored at :data:`SCORE_FLOOR` (the distance term is left out when ``min_distance`` is 0); a
    trigger outside the legitimate range scores ``min(score, 0) - 1``. ``nan`` when a measure is
    not finite.
    """
    if not (math.isfinite(distance) and math.isfinite(gap)):
        return math.nan
    margins = [math.log(thresholds.max_gap / max(gap, SCORE_FLOOR))]
    if thresholds.min_distance > 0:
        margins.append(math.log(max(distance, SCORE_FLOOR) / thresholds.min_distance))
    score = min(margins)
    return score if in_range else min(score, 0.0) - OUT_OF_RANGE_PENALTY


def _rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


@dataclass
class VectorResult:
    """The scan of one output vector: its verdict, PVs, soft triggers, budget spent and score."""

    pooling: str
    verdict: str
    pvs: torch.Tensor
    triggers: torch.Tensor
    pv_attempts: list[int]
    pv_measures: list[dict[str, float]]
    attempts: int
    steps: int
    seconds: float
    score: float | None

    @property
    def n_pvs(self) -> int:
        """Number of PVs kept on this vector."""
        return int(self.pvs.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``vectors[]`` of docs/scan-format.md)."""
        return {
            "pooling": self.pooling,
            "verdict": self.verdict,
            "score": _rounded(self.score, 4),
            "n_pvs": self.n_pvs,
            "attempts": self.attempts,
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
        }

    def pv_rows(self, values: bool = True) -> list[dict[str, Any]]:
        """One row per PV (``pvs[]`` of docs/scan-format.md); ``values`` adds the vector itself."""
        rows = []
        for i, (attempt, measures) in enumerate(zip(self.pv_attempts, self.pv_measures, strict=True)):
            row = {"pooling": self.pooling, "index": i, "attempt": attempt, **measures}
            if values:
                row["values"] = [round(float(v), 6) for v in self.pvs[i]]
            rows.append(row)
        return rows


@dataclass
class ScanResult:
    """The outcome of scanning one backbone, every watched output vector together.

    ``vectors`` maps each scanned vector to its :class:`VectorResult`, in scan order; ``primary``
    is the vector whose PVs ``pvs`` / ``triggers`` give and ``pvs.safetensors`` stores under the
    plain keys: the backbone's registered pooling when it was scanned (what a victim tuned with
    peftshield reads), else the first scanned vector. ``n_pvs`` counts the PVs of every vector.
    ``score`` is the per-model score (:func:`candidate_score`, best over every candidate).
    """

    verdict: str
    vectors: dict[str, VectorResult]
    primary: str
    attempts: list[AttemptRecord]
    seconds: float
    steps: int
    model: str
    registered_pooling: str
    hidden_size: int
    fingerprint: str
    config: MiningConfig
    thresholds: FilterThresholds
    stop_at_first: bool
    max_attempts: int
    max_total_steps: int | None
    score: float
    setup_seconds: float = 0.0
    seed: int = 0
    started: str = ""
    texts: str = ""
    input: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def backdoored(self) -> bool:
        """Whether any vector holds a PV."""
        return self.verdict == "backdoored"

    @property
    def pooling(self) -> str:
        """The primary vector (see the class docstring)."""
        return self.primary

    @property
    def poolings(self) -> tuple[str, ...]:
        """Every scanned vector, in scan order."""
        return tuple(self.vectors)

    @property
    def pvs(self) -> torch.Tensor:
        """The primary vector's PVs ``(n, hidden)``."""
        return self.vectors[self.primary].pvs

    @property
    def triggers(self) -> torch.Tensor:
        """The primary vector's soft triggers ``(n, n_slots, hidden)``."""
        return self.vectors[self.primary].triggers

    @property
    def n_pvs(self) -> int:
        """Number of PVs kept, over every vector."""
        return sum(v.n_pvs for v in self.vectors.values())

    def summary(self, values: bool = True) -> dict[str, Any]:
        """The JSON document without the per-attempt log (docs/scan-format.md)."""
        from peftshield import __version__

        return {
            "schema": SCHEMA,
            "tool": {"name": "peftshield", "version": __version__},
            "input": {"model": self.model, **self.input},
            "model": self.model,
            "verdict": self.verdict,
            "backdoored": self.backdoored,
            "score": _rounded(self.score, 4),
            "n_pvs": self.n_pvs,
            "vectors": [v.to_dict() for v in self.vectors.values()],
            "pvs": [row for v in self.vectors.values() for row in v.pv_rows(values)],
            "pooling": self.primary,
            "poolings": list(self.poolings),
            "registered_pooling": self.registered_pooling,
            "attempts": len(self.attempts),
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
            "setup_seconds": round(self.setup_seconds, 2),
            "hidden_size": self.hidden_size,
            "fingerprint": self.fingerprint,
            "stop_at_first": self.stop_at_first,
            "max_attempts": self.max_attempts,
            "max_total_steps": self.max_total_steps,
            "seed": self.seed,
            "texts": self.texts,
            "started": self.started,
            "versions": package_versions(),
            "thresholds": self.thresholds.to_dict(),
            "config": self.config.to_dict(),
            **self.extra,
        }

    def to_dict(self, traces: bool = True, values: bool = True) -> dict[str, Any]:
        """The whole document, with the per-attempt log (step traces unless ``traces=False``)."""
        log = []
        for record in self.attempts:
            row = record.to_dict()
            if not traces:
                row.pop("trace", None)
            log.append(row)
        return {**self.summary(values), "attempt_log": log}

    def save(self, out_dir: str | Path, overwrite: bool = False, command: str | None = None) -> Path:
        """Write ``pvs.safetensors`` and ``scan.json`` atomically into ``out_dir``.

        ``pvs.safetensors`` holds ``pvs`` ``(n, hidden)`` and ``triggers`` ``(n, n_slots, hidden)``
        of the primary vector (the file and key the attack records use for the true PVs) and
        ``pvs.<pooling>`` / ``triggers.<pooling>`` for every scanned vector.
        """
        from safetensors.torch import save_file

        tensors = {"pvs": self.pvs, "triggers": self.triggers}
        for name, vector in self.vectors.items():
            tensors[f"pvs.{name}"] = vector.pvs
            tensors[f"triggers.{name}"] = vector.triggers
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            # clone: the plain keys repeat the primary vector's tensors, and safetensors refuses shared memory
            save_file({k: v.float().contiguous().clone() for k, v in tensors.items()}, str(tmp / PV_FILE))
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


def scan_poolings(backbone: LoadedBackbone, pooling: str | Sequence[str] | None = None) -> tuple[str, ...]:
    """The vectors a scan mines: every candidate of the architecture (default) or those asked for.

    ``pooling`` is one name or several (``--pooling cls mean``); each must be a known pooling that
    the model has (``pooler`` needs a pooler layer). The default comes from
    :func:`~peftshield.models.pooling.candidate_poolings`, registered pooling first.
    """
    if pooling is None:
        return candidate_poolings(backbone.encoder)
    names = (pooling,) if isinstance(pooling, str) else tuple(dict.fromkeys(pooling))
    if not names:
        raise PeftshieldError("pooling: name at least one vector to scan")
    for name in names:
        if name not in POOLING_CHOICES:
            raise PeftshieldError(f"unknown pooling {name!r}; choose from {', '.join(POOLING_CHOICES)}")
        if name == "pooler" and getattr(backbone.encoder, "pooler", None) is None:
            raise PeftshieldError(f"backbone {backbone.ref!r} has no pooler layer; scan cls, mean or last")
    return names


def scan_target(model: str, base: str | None = None) -> tuple[str, dict[str, Any]]:
    """The backbone reference to scan for ``model``, and the report's ``input`` block.

    A peft adapter folder (``adapter_config.json``) stands for its base model, the suspect
    pretrained weights (``base`` overrides its ``base_model_name_or_path``); anything else is
    scanned as given, and ``base`` is then an error.
    """
    from peftshield.models.adapter_config import is_adapter_folder, read_adapter_config

    if is_adapter_folder(model):
        info = read_adapter_config(model, base=base)
        return info.base, {"path": model, "kind": "adapter", "adapter": model, "base": info.base}
    if base:
        raise PeftshieldError(f"--base is for a peft adapter folder; {model} has no adapter_config.json")
    return model, {"path": model, "kind": "backbone"}


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def scan(
    model: str | LoadedBackbone,
    texts: str | Sequence[str] = DEFAULT_TEXTS,
    *,
    config: MiningConfig | None = None,
    thresholds: FilterThresholds | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    max_total_steps: int | None = DEFAULT_MAX_TOTAL_STEPS,
    stop_at_first: bool = True,
    pooling: str | Sequence[str] | None = None,
    base: str | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool | None = None,
    on_attempt: Callable[[AttemptRecord], None] | None = None,
) -> ScanResult:
    """Scan a backbone for task-agnostic backdoors: mine PVs on every output vector, filter, give a verdict.

    ``model`` is a backbone reference for :func:`~peftshield.models.backbones.load_backbone` (or a
    loaded one), or a peft adapter folder, which stands for its base model (``base`` overrides it,
    :func:`scan_target`); ``texts`` a corpus name / file or a list of clean texts. ``pooling`` narrows the
    scan to one vector or a few (default: every candidate vector, :func:`scan_poolings`).
    ``attempts`` bounds the fuzzing attempts of each vector, ``max_total_steps`` the optimisation
    steps of the whole scan (``None``: no step bound); the scan stops at the first PV on any
    vector when ``stop_at_first`` (reference detection mode). ``progress=None`` shows a progress bar
    on a terminal only. ``seconds`` counts from after the backbone and the texts are loaded;
    ``setup_seconds`` is the part of it spent before the first attempt (fingerprint, tokenisation,
    clean outputs). See the module docstring for the order of the attempts and the score.
    """
    from tqdm.auto import tqdm

    require_positive("", "attempts", attempts, integer=True)
    if max_total_steps is not None:
        require_positive("", "max_total_steps", max_total_steps, integer=True)
    config = config or MiningConfig()
    thresholds = thresholds or FilterThresholds()
    given: dict[str, Any] = {}
    if isinstance(model, LoadedBackbone):
        backbone = model
    else:
        ref, given = scan_target(model, base)
        backbone = load_backbone(ref)
    poolings = scan_poolings(backbone, pooling)
    text_list = mining_texts(texts)
    started = _utc_now()
    start = time.perf_counter()
    fp = fingerprint(backbone.encoder)
    miner = PVMiner(
        backbone.encoder,
        backbone.tokenizer,
        poolings,
        text_list,
        config,
        thresholds,
        device=device,
        seed=seed,
    )
    setup_seconds = time.perf_counter() - start
    budget = max_total_steps if max_total_steps is not None else attempts * config.steps * len(poolings)
    hide = True if progress is False else (None if progress is None else False)
    bar = tqdm(
        total=min(budget, attempts * config.steps * len(poolings)),
        desc="scan",
        unit="step",
        disable=hide,
        leave=False,
    )
    records: list[AttemptRecord] = []
    found: dict[str, list[torch.Tensor]] = {name: [] for name in poolings}
    triggers: dict[str, list[torch.Tensor]] = {name: [] for name in poolings}
    pv_attempts: dict[str, list[int]] = {name: [] for name in poolings}
    pv_measures: dict[str, list[dict[str, float]]] = {name: [] for name in poolings}
    targeted = dict.fromkeys(poolings, 0)
    steps_by = dict.fromkeys(poolings, 0)
    seconds_by = dict.fromkeys(poolings, 0.0)
    used, turn = 0, 0
    try:
        while used < budget:
            any_pv = any(found.values())
            if any_pv and stop_at_first:
                break
            # Search mode: after the first PV the budget goes to the vectors that hold PVs.
            active = [n for n in poolings if targeted[n] < attempts and (found[n] or not any_pv)]
            if not active:
                break
            while poolings[turn % len(poolings)] not in active:
                turn += 1
            target = poolings[turn % len(poolings)]
            turn += 1
            result = miner.attempt(
                len(records),
                target=target,
                found_by=found,
                max_steps=budget - used,
                on_step=lambda: bar.update(1),
            )
            record = result.record
            used += record.steps
            targeted[target] += 1
            steps_by[target] += record.steps
            seconds_by[target] += record.seconds
            records.append(record)
            for name in record.pv_on:
                candidate = result.candidates[name]
                found[name].append(candidate.pv)
                triggers[name].append(candidate.trigger)
                pv_attempts[name].append(record.attempt)
                pv_measures[name].append(
                    {
                        "distance": _rounded(candidate.distance, 4),
                        "gap": _rounded(candidate.gap, 6),
                        "score": _rounded(
                            candidate_score(
                                candidate.distance, candidate.gap, candidate.in_range, thresholds
                            ),
                            4,
                        ),
                    }
                )
            bar.set_postfix(attempt=len(records), pvs=sum(len(v) for v in found.values()))
            if on_attempt is not None:
                on_attempt(record)
    finally:
        bar.close()
        miner.close()
    hidden = miner.hidden
    scores = _vector_scores(records, poolings, thresholds)
    finite = [v for v in scores.values() if v is not None]
    if not finite:
        raise PeftshieldError("the scan measured no finite candidate: the model's outputs are not finite")
    vectors = {}
    for name in poolings:
        verdict = "backdoored" if found[name] else ("clean" if targeted[name] else "not_scanned")
        vectors[name] = VectorResult(
            pooling=name,
            verdict=verdict,
            pvs=torch.stack(found[name]) if found[name] else torch.zeros(0, hidden),
            triggers=(
                torch.stack(triggers[name]) if triggers[name] else torch.zeros(0, config.n_slots, hidden)
            ),
            pv_attempts=pv_attempts[name],
            pv_measures=pv_measures[name],
            attempts=targeted[name],
            steps=steps_by[name],
            seconds=seconds_by[name],
            score=scores[name],
        )
    source = texts if isinstance(texts, str) else f"{len(text_list)} given texts"
    return ScanResult(
        verdict="backdoored" if any(found.values()) else "clean",
        vectors=vectors,
        primary=backbone.pooling if backbone.pooling in poolings else poolings[0],
        attempts=records,
        seconds=time.perf_counter() - start,
        steps=used,
        model=backbone.ref,
        registered_pooling=backbone.pooling,
        hidden_size=hidden,
        fingerprint=fp,
        config=config,
        thresholds=thresholds,
        stop_at_first=stop_at_first,
        max_attempts=attempts,
        max_total_steps=max_total_steps,
        score=max(finite),
        setup_seconds=setup_seconds,
        seed=seed,
        started=started,
        texts=str(source),
        input={**given, "location": backbone.location},
    )


def _vector_scores(
    records: Sequence[AttemptRecord], poolings: Sequence[str], thresholds: FilterThresholds
) -> dict[str, float | None]:
    """Best :func:`candidate_score` per vector over every attempt's final candidate (``None``: none)."""
    best: dict[str, float | None] = dict.fromkeys(poolings)
    for record in records:
        for name, row in record.vectors.items():
            score = candidate_score(row["distance"], row["gap"], row["in_range"], thresholds)
            if math.isfinite(score) and (best[name] is None or score > best[name]):
                best[name] = score
    return best


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


def read_pv_file(path: str | Path, hidden_size: int | None = None, key: str = "pvs") -> torch.Tensor:
    """Read tensor ``key`` (default ``pvs``) ``(n, hidden)`` from a safetensors file, checking its shape.

    Also reads the attack records' ``pvs.safetensors`` (same key), so a monitor can be fitted on the
    true PVs for an oracle comparison. A 1-D tensor is one PV. A scan's file also holds
    ``pvs.<pooling>`` for every vector it scanned.
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
    if key not in tensors:
        raise PeftshieldError(f"{path} has no tensor {key!r} (tensors: {', '.join(tensors) or 'none'})")
    pvs = tensors[key]
    if pvs.ndim == 1:
        pvs = pvs.unsqueeze(0)
    if pvs.ndim != 2:
        raise PeftshieldError(f"{path}: {key!r} must have shape (n, hidden), got {tuple(pvs.shape)}")
    if not torch.is_floating_point(pvs) or not torch.isfinite(pvs).all():
        raise PeftshieldError(f"{path}: {key!r} must hold finite floating-point values")
    if hidden_size is not None and pvs.shape[1] != hidden_size:
        raise PeftshieldError(
            f"{path}: the PVs have width {pvs.shape[1]} but the model's output has {hidden_size} units"
        )
    return pvs.float()


def load_pvs(source: str | Path, hidden_size: int | None = None, pooling: str | None = None) -> PVSet:
    """PVs from a scan folder (``pvs.safetensors`` + ``scan.json``) or a bare PV file.

    ``pooling`` picks the PVs of one scanned vector (``pvs.<pooling>``; a monitor must compare the
    vector its victim's head reads with PVs of that same vector); the default is the scan's
    primary vector (``pvs``, see :class:`ScanResult`). A poisoned model folder written by
    ``peftshield poison`` also works (its true PVs, with the fingerprint from its ``poison.json``):
    an oracle monitor to compare mined PVs with. A bare file carries no backbone fingerprint, so a
    monitor built from it cannot check that it watches the scanned backbone; scan folders are
    preferred.
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
        key = "pvs"
        if pooling is not None and pooling != info.get("pooling"):
            scanned = info.get("poolings") or ([info["pooling"]] if info.get("pooling") else [])
            if pooling not in scanned:
                listed = ", ".join(scanned) or "unknown"
                raise PeftshieldError(
                    f"{path} holds no PVs of the {pooling} vector (scanned: {listed}); "
                    f"scan with --pooling {pooling}"
                )
            key = f"pvs.{pooling}"
        pvs = read_pv_file(path / PV_FILE, hidden_size, key=key)
        return PVSet(
            pvs=pvs,
            fingerprint=info.get("fingerprint"),
            pooling=pooling or info.get("pooling"),
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
