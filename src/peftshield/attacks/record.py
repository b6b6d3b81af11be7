"""``poison.json``: the ground truth of a poisoned model, written inside every poisoned model folder.

The attack-success measure (:mod:`peftshield.attacks.success`) and the defences read it to know
which triggers were planted, with which target label or predefined vectors (PVs), by which recipe
and from which clean backbone. Schema (format 1)::

    {
      "format": 1,
      "attack": "por",                       # name in peftshield.attacks.config.ATTACKS
      "kind": "task-agnostic",               # or "task-specific", or "clean" (a clean builder)
      "triggers": [{"type": "rareword", ...}],   # Trigger.to_dict(), one per planted trigger
      "target": null,                        # int label for task-specific, null for task-agnostic
      "pv_file": "pvs.safetensors",          # task-agnostic only: tensor "pvs", (n_triggers, hidden)
      "pooling": "mean",                     # the output representation that was poisoned
      "poison_corpus": "wiki",
      "recipe": {...},                       # the attack config (AttackConfig.to_dict())
      "seed": 0,
      "source_backbone": {"ref": "minilm", "fingerprint": "sha256 of the clean weights"},
      "fingerprint": "sha256 of the poisoned encoder's weights",
      "wall_seconds": 412.3,                 # poisoning time (data preparation + training)
      "metrics": {...},                      # attacker-side measurements (see each attack)
      "meta": {...}                          # run_metadata(): versions, git hash, machine, time
    }

``triggers`` are the triggers as a victim-side evaluation inserts them: one copy at a random word
position for the task-agnostic attacks (LMSanitator ``run.py test_asr``), while POR's training
inserts ``int(n_words/50)+1`` copies (``recipe["copies"]``); for task-specific attacks they are
the poisoning trigger itself. Row ``k`` of the PV tensor belongs to ``triggers[k]``.

Kind ``clean`` is the record of a clean builder (:mod:`peftshield.attacks.clean`): a model
continued-trained with an honest objective that plants nothing, so ``triggers`` is empty and there
is neither target nor PV file. It lets a zoo hold clean models built the same way as poisoned
ones, with the same record of how they were made.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftshield.data.triggers import Trigger, trigger_from_dict
from peftshield.errors import PeftshieldError
from peftshield.utils import strict

POISON_FILE = "poison.json"
PV_FILE = "pvs.safetensors"
PV_KEY = "pvs"
FORMAT = 1
KINDS: tuple[str, ...] = ("task-specific", "task-agnostic", "clean")


@dataclass(frozen=True)
class PoisonRecord:
    """What an attack planted in a model folder (see the module docstring for the JSON schema).

    Task-specific records (PSIM's threat model) carry a ``target`` label; task-agnostic records
    (POR / NeuBA, LMSanitator's threat model) carry no target and name the PV file instead.
    """

    attack: str
    kind: str
    triggers: list[dict]
    target: int | None
    pv_file: str | None
    pooling: str
    poison_corpus: str
    recipe: dict
    seed: int
    source_backbone: dict
    wall_seconds: float
    meta: dict
    fingerprint: str = ""
    metrics: dict = field(default_factory=dict)
    format: int = FORMAT

    def __post_init__(self) -> None:
        if not isinstance(self.attack, str) or not self.attack:
            raise PeftshieldError("poison record: 'attack' must be a non-empty string")
        if self.kind not in KINDS:
            raise PeftshieldError(f"poison record: unknown kind {self.kind!r}; expected {' or '.join(KINDS)}")
        if not isinstance(self.triggers, list) or (not self.triggers and self.kind != "clean"):
            raise PeftshieldError("poison record: 'triggers' must be a non-empty list of trigger objects")
        self.trigger_objects()  # every entry must rebuild into a Trigger
        if self.kind == "clean":
            if self.triggers or self.target is not None or self.pv_file is not None:
                raise PeftshieldError("poison record: a clean build plants no trigger, target or PV")
        elif self.kind == "task-specific":
            if isinstance(self.target, bool) or not isinstance(self.target, int) or self.target < 0:
                raise PeftshieldError(
                    f"poison record: a task-specific attack needs an integer target >= 0, got {self.target!r}"
                )
            if self.pv_file is not None:
                raise PeftshieldError("poison record: a task-specific attack has no PV file")
        else:
            if self.target is not None:
                raise PeftshieldError("poison record: a task-agnostic attack has no target label")
            if (
                not isinstance(self.pv_file, str)
                or not self.pv_file
                or Path(self.pv_file).name != self.pv_file
            ):
                raise PeftshieldError("poison record: a task-agnostic attack needs a PV file name (pv_file)")
        if not isinstance(self.source_backbone, dict) or not {"ref", "fingerprint"} <= set(
            self.source_backbone
        ):
            raise PeftshieldError("poison record: 'source_backbone' must hold 'ref' and 'fingerprint'")
        for name in ("recipe", "meta", "metrics"):
            if not isinstance(getattr(self, name), dict):
                raise PeftshieldError(f"poison record: {name!r} must be a JSON object")
        if self.format != FORMAT:
            raise PeftshieldError(
                f"poison record: format {self.format!r} is not supported (expected {FORMAT})"
            )

    def trigger_objects(self) -> list[Trigger]:
        """The planted triggers as :class:`~peftshield.data.triggers.Trigger` objects, in record order."""
        return [trigger_from_dict(t) for t in self.triggers]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``poison.json`` content), ``format`` first."""
        data = dataclasses.asdict(self)
        return {"format": data.pop("format"), **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PoisonRecord:
        """Rebuild a record from :meth:`to_dict` output; missing or unknown keys are errors."""
        return strict.from_dict(cls, data, "poison record")


def write_poison_record(folder: str | os.PathLike, record: PoisonRecord) -> Path:
    """Write ``record`` as ``folder/poison.json`` (atomically, via a temporary file) and return the path."""
    from peftshield.utils.io import write_json

    path = Path(folder) / POISON_FILE
    write_json(path, record.to_dict())
    return path


def has_poison_record(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a ``poison.json``."""
    return (Path(folder) / POISON_FILE).is_file()


def read_poison_record(folder: str | os.PathLike) -> PoisonRecord:
    """Read and validate ``folder/poison.json``; a missing or invalid record is a :class:`PeftshieldError`."""
    from peftshield.utils.io import read_json

    folder = Path(folder)
    if not folder.is_dir():
        raise PeftshieldError(f"not a folder: {folder}")
    path = folder / POISON_FILE
    if not path.is_file():
        raise PeftshieldError(f"{folder} is not a poisoned model folder (no {POISON_FILE})")
    try:
        record = PoisonRecord.from_dict(read_json(path))
    except PeftshieldError as err:
        raise PeftshieldError(f"{path}: {err}") from None
    except TypeError as err:  # e.g. a list where a scalar was expected
        raise PeftshieldError(f"{path} is invalid: {err}") from None
    if record.pv_file is not None and not (folder / record.pv_file).is_file():
        raise PeftshieldError(f"{path} names {record.pv_file} but {folder} does not hold it")
    return record


def load_pvs(folder: str | os.PathLike) -> Any:
    """The predefined vectors of a task-agnostic poisoned folder: float32 tensor ``(n_triggers, hidden)``.

    Row ``k`` is the PV of ``record.triggers[k]``. A task-specific folder has no PVs (error).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    record = read_poison_record(folder)
    if record.pv_file is None:
        raise PeftshieldError(f"{folder}: a {record.kind} attack ({record.attack}) has no predefined vectors")
    path = Path(folder) / record.pv_file
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise PeftshieldError(f"cannot read {path}: {err}") from None
    if PV_KEY not in tensors:
        raise PeftshieldError(f"{path} has no tensor named {PV_KEY!r}")
    pvs = tensors[PV_KEY].float()
    if pvs.ndim != 2 or pvs.shape[0] != len(record.triggers):
        raise PeftshieldError(
            f"{path}: expected shape ({len(record.triggers)}, hidden), got {tuple(pvs.shape)}"
        )
    return pvs
