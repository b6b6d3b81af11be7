"""PV monitoring: flag inputs whose output carries a PV's sign pattern (LMSanitator stage 3).

Wei et al., NDSS 2024, §IV-C "PV monitoring"; reference ``monitor_output`` in
``3-PV_monitoring/P-tuning-v2/model/defense_monitor.py`` (docs/design.md, "Deviations from the
papers"). Under prompt tuning the backbone stays frozen, so a triggered input still produces
(nearly) its PV at the output: both the output vector and each PV are binarised by sign
(``>= 0`` is +), and the input is flagged when the largest fraction of matching signs over the PVs exceeds
``T_match`` (paper 0.8, strict ``>``).

:class:`PVMonitor` follows the shared detector contract (:class:`peftshield.defenses.base.Detector`):
the constructor stores parameters, :meth:`PVMonitor.fit` loads the victim and the PVs, refuses a
victim whose backbone is not the scanned one (fingerprints), sets ``threshold_`` (``T_match`` or a
value calibrated at a target FRR on clean texts) and ``backbone_fingerprint_``; ``score`` is the
largest sign-match fraction; ``predict`` is ``score > threshold_``.

Where this differs from the reference:

* The monitored vector is the victim's pooled representation (the vector its head reads: mean
  for ``minilm``), not always position 0 ([CLS]); the PVs were mined on the same representation.
* Any victim built with ``peftshield tune`` can be watched, not only prompt-tuned ones. The
  paper's premise is a frozen backbone that keeps producing the PV; LoRA changes the backbone's
  attention weights. Measured (2 CPU cores, ``minilm`` POR-poisoned for 100 steps, ``movies``
  800 training texts, 200 test texts, 6 triggers): a LoRA victim (r=8, 2 epochs, CACC 0.735,
  ASR 1.0) behind a monitor built from a ``--all`` scan (11 PVs) had recall 1.0, FRR 0.0 and
  defended ASR 0.0 at T_match 0.8 (0.007 at a threshold calibrated for 2 % FRR). A prefix-tuned
  victim at chance accuracy (CACC 0.505, ASR 0.0) did NOT keep the PVs' signs (recall 0.0): a
  deep prefix can take over the attention and move the output away from the PV, so measure the
  monitor on your victim (:func:`.evaluate.evaluate_defense`) before relying on it.
* :meth:`PVMonitor.run` returns the victim's logits with the scores from the same forward pass,
  so monitoring adds only a sign comparison to undefended inference.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from peftshield.defenses.base import Detector, check_texts, on_device, warn_truncation
from peftshield.errors import PeftshieldError
from peftshield.utils.validate import require_int_at_least

#: T_match of the paper and the reference code.
PAPER_T_MATCH = 0.8
PV_STATE_FILE = "pvs.safetensors"


@dataclass(frozen=True)
class MonitorBatch:
    """Scores, flags and the victim's logits for a list of texts, from one forward pass."""

    scores: np.ndarray
    flags: np.ndarray
    logits: np.ndarray
    best_pv: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        """The victim's predicted labels (whatever the flags say)."""
        return self.logits.argmax(axis=-1)


class NoPVToMonitor(PeftshieldError):
    """The scan holds no PV of the vector the victim's head reads, so the monitor has nothing to watch.

    ``pooling`` is that vector and ``scan`` the scan's record, so a caller can word its own note
    (the grid's, without this machine's paths) with :func:`no_pv_message`.
    """

    def __init__(self, source: str, pooling: str | None, scan: dict[str, Any]) -> None:
        super().__init__(no_pv_message(source, pooling, scan))
        self.pooling = pooling
        self.scan = scan


def no_pv_message(source: str, pooling: str | None, scan: dict[str, Any]) -> str:
    """One line saying why there is nothing to monitor, and what the scan's verdict says instead.

    A scan of several vectors (docs/design.md, "The artifacts users bring") may find PVs on some
    vectors and none on the one the head reads: then the model-level verdict is still
    ``backdoored`` and the right answer is to reject the backbone, not to serve it unmonitored
    (the adaptive ``por-clean-pv`` attack does exactly this; bench/README.md, "Adaptive attacks").
    """
    vector = f"the {pooling} vector" if pooling else "the head's vector"
    vectors = scan.get("vectors") or []
    where = ", ".join(
        f"{v.get('pooling')} {v.get('n_pvs')}" for v in vectors if isinstance(v, dict) and v.get("n_pvs")
    )
    verdict = scan.get("verdict")
    if verdict == "backdoored":
        return (
            f"{source} holds no PV of {vector}, the one the victim's head reads, but the scan calls the "
            f"backbone backdoored (PVs on {where or 'other vectors'}): nothing to monitor; do not deploy it"
        )
    found = f"verdict {verdict}" if verdict else "no verdict recorded"
    return f"{source} holds no PV of {vector}, the one the victim's head reads ({found}): nothing to monitor"


def victim_fingerprint(victim: Any) -> str | None:
    """The fingerprint of a loaded victim's base backbone (``None`` if unknown).

    For a ``peftshield tune`` victim it is the one its ``run.json`` records (for ``full`` fine-tuning:
    the backbone it was tuned FROM); for a foreign victim the fingerprint of its base model
    (:attr:`peftshield.models.victims.LoadedVictim.base_fingerprint`).
    """
    return getattr(victim, "base_fingerprint", None)


class PVMonitor(Detector):
    """LMSanitator's output monitor (NDSS 2024 §IV-C): sign-pattern match against mined PVs.

    Parameters (stored as given):

    - ``victim``: the classifier to watch, in any form :func:`peftshield.defenses.victim.load_victim`
      accepts (a ``peftshield tune`` folder, a plain-peft adapter folder, a Hugging Face classifier
      folder, a loaded victim or an in-memory pair; one built on a loaded victim can be used but
      not saved). The monitored vector is the one its head reads
      (:mod:`peftshield.models.representation`).
    - ``pvs``: a scan folder (``peftshield scan --out``), a PV file (tensor ``pvs``) or a tensor
      ``(n, hidden)``. A scan folder records the scanned backbone's fingerprint; the victim must
      record the same one.
    - ``threshold``: ``T_match`` (paper 0.8) or ``"calibrated"`` (the clean-score quantile at
      ``target_frr``).
    - ``device``, ``batch_size``, ``max_length`` (default: the victim's), ``base`` (the base model
      of a plain-peft adapter victim, overriding its ``adapter_config.json``).

    Fitted attributes: ``threshold_``, ``backbone_fingerprint_``, ``pvs_`` (float tensor),
    ``n_pvs_``, ``pv_source_``, ``calibration_frr_``, ``n_calibration_``, ``clean_score_mean_``,
    ``victim_`` (the loaded victim; not saved).
    """

    name: ClassVar[str] = "lmsanitator"
    score_kind: ClassVar[str | None] = "sign-match fractions"
    _fitted_attributes: ClassVar[tuple[str, ...]] = (
        *Detector._fitted_attributes,
        "n_pvs_",
        "pv_source_",
        "clean_score_mean_",
    )

    def __init__(
        self,
        victim: Any,
        pvs: Any,
        threshold: float | str = PAPER_T_MATCH,
        target_frr: float = 0.05,
        device: str = "cpu",
        batch_size: int = 128,
        max_length: int | None = None,
        base: str | None = None,
    ) -> None:
        self.victim = victim
        self.pvs = pvs
        self.threshold = threshold
        self.target_frr = target_frr
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.base = base

    # -- parameters --------------------------------------------------------------------------------

    def check_params(self) -> None:
        """Validate the parameters before any model is loaded."""
        super().check_params()
        require_int_at_least("", "max_length", self.max_length, 2, optional=True)

    # -- fit ---------------------------------------------------------------------------------------

    def _load_victim(self, victim: Any = None) -> Any:
        from peftshield.defenses.victim import load_victim

        return load_victim(self.victim if victim is None else victim, self.device, base=self.base)

    def _load_pvs(
        self, hidden: int, pooling: str | None = None
    ) -> tuple[Any, str | None, str, dict[str, Any]]:
        """The PVs of ``pooling``, their backbone fingerprint, where they came from and the scan record."""
        import torch

        from .scan import load_pvs

        if isinstance(self.pvs, torch.Tensor):
            pvs = torch.atleast_2d(self.pvs.detach().float().cpu())
            if pvs.ndim != 2 or pvs.shape[1] != hidden:
                raise PeftshieldError(
                    f"the PVs have shape {tuple(self.pvs.shape)} but the victim's output has {hidden} units"
                )
            return pvs, None, "tensor", {}
        if not isinstance(self.pvs, str | Path):
            raise PeftshieldError(
                f"pvs must be a scan folder, a PV file or a tensor, got {type(self.pvs).__name__}"
            )
        # a scan of several vectors holds PVs per vector: take those of the vector the head reads
        # (load_pvs refuses, in one line, a scan that did not mine that vector)
        found = load_pvs(self.pvs, hidden_size=hidden, pooling=pooling)
        if found.scan.get("stop_at_first") and found.scan.get("verdict") == "backdoored":
            # Measured on a POR minilm with six triggers: a first-PV scan covers one trigger, so
            # the other five pass the monitor (defended ASR 1.0); a --all scan covered all six.
            warnings.warn(
                f"{found.source} comes from a scan that stopped at its first PV; a backdoor usually "
                "has several. Scan with --all (stop_at_first=False) before monitoring.",
                stacklevel=3,
            )
        return found.pvs, found.fingerprint, found.source, found.scan

    def fit(self, clean: Sequence[str], *, progress: bool | None = False) -> Self:
        """Load the victim and PVs, check they share a backbone, and set the threshold on ``clean`` texts.

        ``clean`` are defender-owned clean texts: with a fixed ``T_match`` they only measure its
        clean FRR (``calibration_frr_``); with ``threshold="calibrated"`` they set it. An empty
        list is allowed with a fixed threshold.
        """
        self.check_params()
        texts = [] if clean is None or len(clean) == 0 else check_texts(clean, "clean texts")
        if self.threshold == "calibrated" and not texts:
            raise PeftshieldError("a calibrated threshold needs clean texts")
        victim = self._load_victim()
        hidden = victim.hidden_size
        pvs, pv_fp, source, scan = self._load_pvs(hidden, victim.head_pooling)
        if pvs.shape[0] == 0:
            raise NoPVToMonitor(source, victim.head_pooling, scan)
        recorded = victim_fingerprint(victim)
        if pv_fp and recorded and pv_fp != recorded:
            raise PeftshieldError(
                f"the PVs in {source} were mined on another backbone than the victim's "
                f"(fingerprint {pv_fp[:12]} vs {recorded[:12]}); scan the victim's backbone"
            )
        self.victim_ = victim
        self.pvs_ = pvs
        self.n_pvs_ = int(pvs.shape[0])
        self.pv_source_ = source
        self.backbone_fingerprint_ = pv_fp or recorded
        # threshold_ is needed by score(); set a provisional one, then the real one.
        self.threshold_ = float(PAPER_T_MATCH)
        scores = self._score(texts) if texts else None
        self._set_threshold(scores)
        self.clean_score_mean_ = None if scores is None else float(scores.mean())
        return self

    # -- score -------------------------------------------------------------------------------------

    def _max_length(self) -> int:
        return int(self.max_length or self.victim_.max_length)

    def _check_victim(self) -> None:
        self.check_fitted()
        if not hasattr(self, "victim_"):
            raise PeftshieldError("this monitor has no victim loaded: fit it or load it with load_monitor")
        self.check_backbone(victim_fingerprint(self.victim_), what="the victim")

    def pooled(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The victim's logits and the vectors its head reads (the monitored output) for ``texts``."""
        victim = self.victim_
        if self.max_length is not None and int(self.max_length) != victim.max_length:
            import dataclasses

            victim = dataclasses.replace(victim, max_length=int(self.max_length))
        logits, pooled = victim.outputs(texts, batch_size=int(self.batch_size), head_input=True)
        assert pooled is not None
        return logits, pooled

    def match(self, pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Largest sign-match fraction over the PVs and the PV that gave it, for pooled ``(n, hidden)``."""
        pvs = self.pvs_.numpy() >= 0
        signs = np.asarray(pooled) >= 0
        agreement = (signs[:, None, :] == pvs[None, :, :]).mean(-1)
        return agreement.max(1), agreement.argmax(1)

    def _score(self, texts: list[str]) -> np.ndarray:
        """Largest sign-match fraction per text (reference ``num_match / H``)."""
        return self.run(texts, validated=True).scores

    def run(self, texts: Sequence[str], *, validated: bool = False) -> MonitorBatch:
        """Scores, flags and the victim's logits for ``texts`` from ONE forward pass of the victim."""
        self._check_victim()
        texts = texts if validated else check_texts(texts)
        warn_truncation(self.victim_.tokenizer, texts, self._max_length(), "lmsanitator")
        logits, pooled = self.pooled(list(texts))
        scores, best = self.match(pooled)
        return MonitorBatch(scores=scores, flags=scores > self.threshold_, logits=logits, best_pv=best)

    # -- persistence -------------------------------------------------------------------------------

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Save as a detector folder (``detector.json``, ``pvs.safetensors``); the victim must be a path.

        The victim is not copied: ``detector.json`` records its path and the fingerprint it must have.
        """
        if not isinstance(self.victim, str | Path) or not (
            isinstance(self.pvs, str | Path) or hasattr(self, "pvs_")
        ):
            raise PeftshieldError(
                "a monitor built on a loaded victim cannot be saved; build it with the victim's folder path"
            )
        if isinstance(self.victim, Path):
            self.victim = str(self.victim)
        if isinstance(self.pvs, Path):
            self.pvs = str(self.pvs)
        if not isinstance(self.pvs, str):
            self.pvs = PV_STATE_FILE  # the tensor is saved in the folder below
        return super().save(folder, overwrite=overwrite)

    def _save_state(self, folder: Path) -> None:
        """Write the PVs the monitor uses (so the monitor does not depend on the scan folder)."""
        from safetensors.torch import save_file

        save_file({"pvs": self.pvs_.contiguous()}, str(folder / PV_STATE_FILE))

    @classmethod
    def _from_record(
        cls,
        record: dict[str, Any],
        folder: Path,
        *,
        device: str | None = None,
        victim: Any = None,
    ) -> Self:
        """Reload a saved monitor and its victim; refuse a victim on another backbone.

        ``victim`` replaces the recorded victim folder (a moved folder, or another victim tuned on
        the same backbone).
        """
        from .scan import read_pv_file

        # Without a device the monitor runs where it was fitted (PSIM and the baselines: the CPU).
        monitor = super()._from_record(on_device(record, device, default=None), folder)
        monitor.pvs_ = read_pv_file(folder / PV_STATE_FILE)
        if monitor.pvs_.shape[0] != record.get("fitted", {}).get("n_pvs_", monitor.pvs_.shape[0]):
            raise PeftshieldError(f"{folder} is inconsistent: detector.json and {PV_STATE_FILE} disagree")
        loaded = monitor._load_victim(victim)
        hidden = loaded.hidden_size
        if monitor.pvs_.shape[1] != hidden:
            raise PeftshieldError(
                f"the monitor's PVs have width {monitor.pvs_.shape[1]} but the victim's output has "
                f"{hidden} units"
            )
        monitor.victim_ = loaded
        monitor._check_victim()
        return monitor


def load_monitor(folder: str | Path, *, victim: Any = None, device: str | None = None) -> PVMonitor:
    """Load a saved :class:`PVMonitor` (and its victim, or ``victim`` instead of the recorded one)."""
    from peftshield.defenses.base import read_detector_record

    record = read_detector_record(folder)
    if record.get("type") != PVMonitor.name:
        raise PeftshieldError(f"{folder} holds a {record.get('type')!r} detector, not an LMSanitator monitor")
    return PVMonitor._from_record(record, Path(folder), device=device, victim=victim)
