"""The defence stage of the grid: one small adapter per defence, "fit this defence for this cell".

Each :class:`DefenseAdapter` says what the defence needs (a tuned victim? an LMSanitator scan of
the backbone?), which parameters a grid entry may set (validated before any cell runs), how to
fit it from a :class:`FitInputs` and how to load the fitted folder back. Adding a defence is one
entry in :data:`DEFENSES`; a detector registered in :mod:`peftshield.defenses.base` under a name
that is not in the table is picked up by :func:`registered_adapter` (constructor parameters
``victim`` / ``backbone`` / ``seed`` / ``device`` are filled in when the detector has them, then
``fit(clean_texts)``), so a baseline that follows the detector contract joins the grid as soon as
it is registered. Give it an explicit entry when it needs something else.

- ``psim`` (Zhao et al., NAACL Findings 2024, §3): needs only the suspect backbone and the
  defender's clean data; fitted once per backbone and shared by every victim method.
- ``monitor`` (Wei et al., NDSS 2024, §IV-C): needs the scan of the backbone (its mined PVs) and
  the victim; calibrated on the victim's clean dev split. When the scan found no PV of the vector
  the victim's head reads (verdict clean, or PVs on other vectors only), LMSanitator has nothing
  to monitor: the defence is recorded as inactive and passes every input (defended =
  undefended), its ``inactive`` note saying whether the scan still called the backbone backdoored.
- ``rap`` (Yang et al., EMNLP 2021): the registered detector's adapter, with the RAP word among
  the resolved parameters (so it is part of the cache key) and a refusal, before any cell runs, of
  a word that is one of the triggers of an attack in the grid: inserting the trigger itself as
  the perturbation measures that coincidence, not RAP (see :mod:`peftshield.defenses.rap`).
- ``onion`` (Qi et al., EMNLP 2021): the registered detector, calibrated on the held-out texts;
  its score comes from a causal LM alone, so one fitting serves the whole grid and each text's
  score is memoised across cells (:mod:`peftshield.grid.scorememo`), its measured cost charged
  to every cell that reads it.

Grid defaults: thresholds are calibrated at 5 % FRR on clean held-out data (docs/design.md's shared
policy), so detectors are compared at the same false-rejection budget; the papers' fixed
thresholds stay available (``threshold: 0.7`` for PSIM, ``0.8`` for the monitor).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftshield.data.records import Example
from peftshield.errors import PeftshieldError
from peftshield.utils.strict import unknown_keys

NONE = "none"
#: Parameters the grid fills in itself; a grid entry may not set them.
RESERVED = ("victim", "backbone", "pvs", "seed", "device")
#: Other names of table entries.
ALIASES = {"lmsanitator": "monitor"}
CALIBRATED_DEFAULTS: dict[str, Any] = {"threshold": "calibrated", "target_frr": 0.05}


@dataclass(frozen=True)
class FitInputs:
    """What a defence may read when it is fitted for one cell.

    ``backbone``: folder or reference of the (possibly poisoned) backbone the victim was tuned on;
    ``victim``: the tuned victim's folder (``None`` in a cell without a victim); ``scan``: the
    LMSanitator scan folder of the backbone (``None`` unless the defence needs it);
    ``clean_train``: the defender's clean labelled data (the victim corpus' train split, capped
    at ``sizes.defense_max_train``); ``clean_heldout``: clean texts never trained on and never
    measured (the victim corpus' dev split; its first part when the grid measures the rest of it,
    ``sizes.evaluate_on: dev``).
    """

    backbone: str
    victim: str | None
    scan: str | None
    clean_train: list[Example]
    clean_heldout: list[str]
    seed: int
    device: str


@dataclass(frozen=True)
class LoadInputs:
    """What loading a fitted defence may need: the backbone folder, the loaded victim, the device."""

    backbone: str
    victim: Any
    device: str


@dataclass(frozen=True)
class DefenseAdapter:
    """How the grid fits, loads and runs one defence (see the module docstring).

    ``fit(inputs, params)`` returns the fitted detector (or ``None`` when the defence is inactive
    for this cell) and a JSON-ready dict of what it measured; ``load(folder, inputs)`` reads the
    saved detector back; ``joint(detector, texts)``, when given, returns the victim's predictions
    and the scores from ONE pass (a monitor shares the victim's forward pass), which is what the
    overhead measurement times; ``check_attack(params, triggers)``, when given, raises a
    :class:`~peftshield.errors.PeftshieldError` for parameters that cannot be measured against an
    attack inserting the strings ``triggers`` (called by the grid's validation for every attack);
    ``text_only_scores``: the score of a text depends on the text alone, so the grid memoises it
    across cells (:mod:`peftshield.grid.scorememo`); ``correct(detector, texts)``, for a
    correction defence, returns the scores and the cleaned texts the victim should read instead
    (the grid then also reports ``corrected_cacc`` / ``corrected_asr``); ``purge(detector,
    texts)``, for a defence that cleans flagged inputs and answers them (LMSanitator's purge),
    returns per text ``(cleared, victim label after purging)``: the grid then reports
    ``defended_asr_purge`` beside ``defended_asr_reject`` (docs/design.md "Metric definitions").
    """

    name: str
    summary: str
    needs_victim: bool
    needs_scan: bool
    params: tuple[str, ...]
    defaults: dict[str, Any]
    check: Callable[[dict[str, Any]], None]
    fit: Callable[[FitInputs, dict[str, Any]], tuple[Any, dict[str, Any]]]
    load: Callable[[Path, LoadInputs], Any]
    joint: Callable[[Any, list[str]], tuple[Any, Any]] | None = None
    uses: tuple[str, ...] = field(default=("clean_train",))
    check_attack: Callable[[dict[str, Any], Sequence[str]], None] | None = None
    text_only_scores: bool = False
    correct: Callable[[Any, list[str]], tuple[Any, list[str]]] | None = None
    purge: Callable[[Any, list[str]], list[tuple[bool, int]]] | None = None

    def resolve(self, given: dict[str, Any], where: str) -> dict[str, Any]:
        """The defaults under ``given``; unknown or reserved keys and bad values raise, naming ``where``."""
        reserved = sorted(set(given) & set(RESERVED))
        if reserved:
            raise PeftshieldError(f"{where}: {', '.join(reserved)} is set by the grid, not by the entry")
        unknown = unknown_keys(given, sorted(self.params), what=self.name, noun="parameter")
        if unknown:
            raise PeftshieldError(f"{where}: {unknown}")
        params = {**self.defaults, **given}
        try:
            self.check(params)
        except PeftshieldError as err:
            raise PeftshieldError(f"{where}: {err}") from None
        except TypeError as err:
            raise PeftshieldError(f"{where}: {err}") from None
        return params


def threshold_label(params: dict[str, Any]) -> str | float | None:
    """The row's ``threshold`` field: ``"calibrated@0.05"`` or the fixed number."""
    threshold = params.get("threshold")
    if threshold is None:
        return None
    if threshold == "calibrated":
        return f"calibrated@{float(params.get('target_frr', 0.05)):g}"
    return float(threshold)


def _init_params(cls: type) -> list[str]:
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind not in skip
    ]


def _accepts(func: Callable, name: str) -> bool:
    params = inspect.signature(func).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _fitted_info(detector: Any) -> dict[str, Any]:
    """The fitted numbers every detector has, for ``artifact.json`` and the cell rows."""
    info: dict[str, Any] = {"threshold_value": float(detector.threshold_)}
    for attr in ("calibration_frr_", "n_calibration_", "clean_score_mean_", "fit_seconds_", "n_pvs_"):
        value = getattr(detector, attr, None)
        if value is not None:
            info[attr.rstrip("_")] = value
    return info


# ------------------------------------------------------------------------------------- PSIM


def _psim_check(params: dict[str, Any]) -> None:
    from peftshield.defenses.psim import PSIMDetector

    PSIMDetector(backbone="unused", **params).check_params()


def _psim_fit(inputs: FitInputs, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from peftshield.defenses.psim import PSIMDetector

    detector = PSIMDetector(backbone=inputs.backbone, seed=inputs.seed, device=inputs.device, **params)
    detector.fit(inputs.clean_train, progress=False)
    return detector, _fitted_info(detector)


def _psim_load(folder: Path, inputs: LoadInputs) -> Any:
    from peftshield.defenses.base import load_detector

    # The backbone override keeps a moved results folder working (the fingerprint is still checked).
    return load_detector(folder, device=inputs.device, backbone=inputs.backbone)


def _psim_params() -> tuple[str, ...]:
    from peftshield.defenses.psim import PSIMDetector

    return tuple(p for p in _init_params(PSIMDetector) if p not in RESERVED)


# ------------------------------------------------------------------------------------- monitor


_MONITOR_PARAMS = ("threshold", "target_frr", "batch_size", "max_length")


def _monitor_check(params: dict[str, Any]) -> None:
    from peftshield.defenses.lmsanitator.monitor import PVMonitor

    PVMonitor(victim="unused", pvs="unused", **params).check_params()


def _monitor_fit(inputs: FitInputs, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    import warnings

    from peftshield.defenses.lmsanitator.monitor import NoPVToMonitor, PVMonitor, no_pv_message

    if inputs.victim is None or inputs.scan is None:
        raise PeftshieldError("the monitor needs a victim and a scan of its backbone")
    monitor = PVMonitor(victim=inputs.victim, pvs=inputs.scan, device=inputs.device, **params)
    try:
        with warnings.catch_warnings():
            # The grid's scans search for every PV unless told otherwise; the first-PV warning is noise.
            warnings.filterwarnings("ignore", message=".*stopped at its first PV.*")
            monitor.fit(inputs.clean_heldout)
    except NoPVToMonitor as err:
        # No PV of the vector the victim's head reads: nothing to watch, every input passes. The
        # message says whether the scan still called the backbone backdoored on another vector.
        note = no_pv_message("the scan", err.pooling, err.scan)  # no machine path in a result row
        return None, {"inactive": f"{note}; every input passes", "n_pvs": 0}
    return monitor, _fitted_info(monitor)


def _monitor_load(folder: Path, inputs: LoadInputs) -> Any:
    from peftshield.defenses.lmsanitator.monitor import load_monitor

    return load_monitor(folder, victim=inputs.victim, device=inputs.device)


def _monitor_joint(detector: Any, texts: list[str]) -> tuple[Any, Any]:
    batch = detector.run(texts)
    return batch.labels, batch.scores


def _monitor_purge(detector: Any, texts: list[str]) -> list[tuple[bool, int]]:
    """LMSanitator's input purge (Wei et al. 2024, §IV-C; :class:`~.lmsanitator.purge.Purger`)."""
    from peftshield.defenses.lmsanitator.purge import Purger

    return [(r.cleared, int(r.label)) for r in Purger(detector).purge(texts)]


def _oracle_fit(inputs: FitInputs, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The monitor with the PVs the attacker planted (``pvs.safetensors`` of the poisoned backbone).

    It tells a mining failure (the scan's PVs miss a trigger) from a monitor failure (even the true
    PVs do not catch the victim's triggered outputs). No planted PV (the clean control, a
    task-specific attack): inactive, as the monitor is when its scan finds none.
    """
    from peftshield.attacks.record import has_poison_record, read_poison_record
    from peftshield.defenses.lmsanitator.monitor import PVMonitor

    if inputs.victim is None:
        raise PeftshieldError("the oracle monitor needs a victim")
    if not has_poison_record(inputs.backbone) or read_poison_record(inputs.backbone).pv_file is None:
        return None, {
            "inactive": "no planted PV (clean backbone or task-specific attack): nothing to monitor"
        }
    monitor = PVMonitor(victim=inputs.victim, pvs=inputs.backbone, device=inputs.device, **params)
    monitor.fit(inputs.clean_heldout)
    return monitor, _fitted_info(monitor)


# ------------------------------------------------------------------------------------- RAP


def _rap_check_attack(params: dict[str, Any], triggers: Sequence[str]) -> None:
    """Refuse a RAP word that is one of an attack's triggers (compared without case: BERT is uncased)."""
    word = params.get("rap_word")
    if isinstance(word, str) and word.lower() in {t.lower() for t in triggers}:
        from peftshield.defenses.rap import DEFAULT_RAP_WORD

        raise PeftshieldError(
            f"rap_word {word!r} is one of the attack's triggers ({', '.join(triggers)}): RAP would insert "
            "the trigger itself and measure that coincidence; choose a rare word that is none of the "
            f"grid's triggers (default {DEFAULT_RAP_WORD!r})"
        )


def _rap() -> DefenseAdapter:
    from peftshield.defenses.rap import DEFAULT_RAP_WORD

    adapter = registered_adapter("rap")
    return dataclasses.replace(
        adapter,
        # The word is a resolved parameter, so it is checked against the attacks and keys the cache.
        defaults={**adapter.defaults, "rap_word": DEFAULT_RAP_WORD},
        check_attack=_rap_check_attack,
    )


# ------------------------------------------------------------------------------------- registry


def registered_adapter(name: str, *, fit_data: str | None = None) -> DefenseAdapter:
    """An adapter for a detector registered in :mod:`peftshield.defenses.base` (the generic path).

    The detector is built with the entry's parameters plus, when its constructor takes them,
    ``victim`` (the victim folder), ``backbone`` (the backbone folder), ``seed`` and ``device``;
    it is fitted with ``fit(texts)`` on the clean held-out texts when it needs a victim (its
    calibration must not see the victim's training data), else on the defender's clean training
    texts (``fit_data`` overrides: ``"train"`` or ``"heldout"``); it is loaded with
    :func:`~peftshield.defenses.base.load_detector`, given ``victim`` / ``backbone`` / ``device``
    when its loader takes them.
    """
    from peftshield.defenses.base import detector_class

    cls = detector_class(name)
    init = _init_params(cls)
    needs_victim = "victim" in init
    data = fit_data or ("heldout" if needs_victim else "train")
    if data not in ("train", "heldout"):
        raise ValueError(f"fit_data must be train or heldout, got {data!r}")
    params = tuple(p for p in init if p not in RESERVED)
    defaults = {k: v for k, v in CALIBRATED_DEFAULTS.items() if k in params}

    def placeholders() -> dict[str, Any]:
        return {k: "unused" for k in ("victim", "backbone", "pvs") if k in init}

    def check(values: dict[str, Any]) -> None:
        cls(**placeholders(), **values).check_params()

    def fit(inputs: FitInputs, values: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        kwargs = dict(values)
        if needs_victim:
            if inputs.victim is None:
                raise PeftshieldError(f"the {name} defence needs a victim")
            kwargs["victim"] = inputs.victim
        if "backbone" in init:
            kwargs["backbone"] = inputs.backbone
        if "seed" in init:
            kwargs["seed"] = inputs.seed
        if "device" in init:
            kwargs["device"] = inputs.device
        texts = inputs.clean_heldout if data == "heldout" else [e.text for e in inputs.clean_train]
        detector = cls(**kwargs).fit(texts)
        return detector, _fitted_info(detector)

    def load(folder: Path, inputs: LoadInputs) -> Any:
        from peftshield.defenses.base import load_detector

        loader = cls._from_record
        kwargs: dict[str, Any] = {}
        if _accepts(loader, "device"):
            kwargs["device"] = inputs.device
        if needs_victim and _accepts(loader, "victim"):
            kwargs["victim"] = inputs.victim
        if "backbone" in init and _accepts(loader, "backbone"):
            kwargs["backbone"] = inputs.backbone
        return load_detector(folder, **kwargs)

    return DefenseAdapter(
        name=name,
        summary=(cls.__doc__ or name).strip().splitlines()[0],
        needs_victim=needs_victim,
        needs_scan=False,
        params=params,
        defaults=defaults,
        check=check,
        fit=fit,
        load=load,
        uses=("clean_heldout",) if data == "heldout" else ("clean_train",),
    )


def _onion_correct(detector: Any, texts: list[str]) -> tuple[Any, list[str]]:
    import numpy as np

    done = detector.sanitize_many(texts)
    return np.array([d.score for d in done], dtype=float), [d.text for d in done]


def _onion() -> DefenseAdapter:
    """ONION: calibrated on the held-out texts (every text costs an LM pass per word), measured
    both as a detector and as the correction defence it is, its text-only scores memoised."""
    return dataclasses.replace(
        registered_adapter("onion", fit_data="heldout"), text_only_scores=True, correct=_onion_correct
    )


def _psim() -> DefenseAdapter:
    return DefenseAdapter(
        name="psim",
        summary="PSIM: a PEFT module trained with random labels on the suspect backbone (Zhao et al. 2024)",
        needs_victim=False,
        needs_scan=False,
        params=_psim_params(),
        defaults=dict(CALIBRATED_DEFAULTS),
        check=_psim_check,
        fit=_psim_fit,
        load=_psim_load,
        uses=("clean_train",),
    )


def _monitor() -> DefenseAdapter:
    return DefenseAdapter(
        name="monitor",
        summary="LMSanitator: scan the backbone for PVs, watch the victim's output signs (Wei et al. 2024)",
        needs_victim=True,
        needs_scan=True,
        params=_MONITOR_PARAMS,
        defaults=dict(CALIBRATED_DEFAULTS),
        check=_monitor_check,
        fit=_monitor_fit,
        load=_monitor_load,
        joint=_monitor_joint,
        uses=("clean_heldout",),
        purge=_monitor_purge,
    )


def _monitor_oracle() -> DefenseAdapter:
    return DefenseAdapter(
        name="monitor-oracle",
        summary="LMSanitator's monitor with the planted PVs instead of the scan's (an upper bound)",
        needs_victim=True,
        needs_scan=False,
        params=_MONITOR_PARAMS,
        defaults={"threshold": 0.8, "target_frr": 0.05},
        check=_monitor_check,
        fit=_oracle_fit,
        load=_monitor_load,
        joint=_monitor_joint,
        uses=("clean_heldout",),
        purge=_monitor_purge,
    )


#: The defence table: name -> factory of its adapter (factories keep imports lazy).
#: Add a defence with one entry, e.g. ``"strip": lambda: registered_adapter("strip")``.
DEFENSES: dict[str, Callable[[], DefenseAdapter]] = {
    "psim": _psim,
    "monitor": _monitor,
    "monitor-oracle": _monitor_oracle,
    "rap": _rap,
    "onion": _onion,
}


def defense_names() -> list[str]:
    """Every defence name a grid may use: ``none``, the table, then other registered detectors."""
    from peftshield.defenses.base import registered_detectors

    extra = [n for n in sorted(registered_detectors()) if n not in DEFENSES and n not in ALIASES]
    return [NONE, *DEFENSES, *extra]


def get_adapter(name: str) -> DefenseAdapter:
    """The adapter of defence ``name`` (table entry, alias, or a registered detector)."""
    from peftshield.defenses.base import registered_detectors

    name = ALIASES.get(name, name)
    if name in DEFENSES:
        return DEFENSES[name]()
    if name in registered_detectors():
        return registered_adapter(name)
    raise PeftshieldError(f"unknown defence {name!r}; choose one of {', '.join(defense_names())}")
