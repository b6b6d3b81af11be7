"""Read a peft adapter folder's ``adapter_config.json`` (docs/design.md, "The artifacts users bring").

A peft adapter folder holds ``adapter_config.json`` (``peft_type``, ``task_type``,
``base_model_name_or_path``, ``modules_to_save``) and ``adapter_model.safetensors``. The base is the
suspect pretrained model; the adapter and head are the user's. This module only reads and checks the
config file; loading the model is the victim loader's job, scanning the base the scan's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peftshield.errors import PeftshieldError
from peftshield.utils.io import read_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class AdapterInfo:
    """What a peft adapter folder says about itself (the fields peftshield needs)."""

    folder: Path
    peft_type: str
    task_type: str | None
    base: str
    modules_to_save: tuple[str, ...]
    raw: dict


def is_adapter_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is a peft adapter folder (it has an ``adapter_config.json``)."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def read_adapter_config(folder: str | Path, base: str | None = None) -> AdapterInfo:
    """Read and check ``folder/adapter_config.json``; ``base`` overrides its base model reference.

    Raises :class:`PeftshieldError` (one line) when the file is missing or not JSON, names no
    ``peft_type``, or names no base model and none is given.
    """
    folder = Path(folder)
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise PeftshieldError(f"{folder} is not a peft adapter folder (no {ADAPTER_CONFIG})")
    raw = read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("peft_type"), str):
        raise PeftshieldError(f"{path} is not a peft adapter config (no peft_type)")
    chosen = base or raw.get("base_model_name_or_path")
    if not isinstance(chosen, str) or not chosen.strip():
        raise PeftshieldError(f"{path} names no base model (base_model_name_or_path); pass --base PATH")
    modules = raw.get("modules_to_save") or ()
    if isinstance(modules, str):
        modules = (modules,)
    task = raw.get("task_type")
    return AdapterInfo(
        folder=folder,
        peft_type=raw["peft_type"].upper(),
        task_type=task.upper() if isinstance(task, str) else None,
        base=chosen,
        modules_to_save=tuple(str(m) for m in modules),
        raw=raw,
    )
