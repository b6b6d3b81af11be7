"""Fine-tune a classifier on a backbone with any registered method, and save / reload the result.

The loop is deliberately plain (AdamW, linear schedule with warm-up, gradient clipping, dev-set
checkpoint selection), as in the PSIM reference code's victim training (confidence.py: AdamW,
6 % warm-up, best-dev checkpoint), so that its throughput stays within a few percent of a
hand-written torch + peft loop (``bench/grids/tuning.json`` measures the seconds per step of
``lora`` beside ``peft-lora``, :mod:`peftshield.tuning.plain_peft`).

Artifacts:

* PEFT methods write a standard peft adapter folder (``adapter_config.json``,
  ``adapter_model.safetensors`` with the head kept through ``modules_to_save``) plus ``run.json``.
* Full fine-tuning writes a Hugging Face model folder (usable as a backbone by every command)
  plus the head in ``head.safetensors`` and ``run.json``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peftshield.data.records import Example, check_dense_labels
from peftshield.errors import PeftshieldError
from peftshield.models.backbones import (
    LoadedBackbone,
    fingerprint,
    load_backbone,
    load_state_strict,
    read_safetensors,
    strict_peft_from_pretrained,
)
from peftshield.models.classifier import PooledClassifier, VerbalizerClassifier
from peftshield.models.inference import predict_outputs, tokenize_batch
from peftshield.models.templates import templated, verbalizer_token_ids
from peftshield.tuning.config import MethodConfig, config_from_dict
from peftshield.utils.io import atomic_dir, read_json, write_json
from peftshield.utils.runinfo import run_metadata
from peftshield.utils.seeding import seed_everything

HEAD_FILE = "head.safetensors"
RUN_FILE = "run.json"


def build_classifier(
    backbone: LoadedBackbone, num_labels: int, config: MethodConfig, head: str = "fresh"
) -> torch.nn.Module:
    """Put a head on the backbone and wrap it with the method's peft adapter.

    ``head="keep"`` loads ``head.safetensors`` from the backbone folder (a task-specific
    attacker publishes its head with the weights, and the PSIM reference code's victim keeps it);
    ``fresh`` starts a new random head. With a ``verbalizer`` in the config the classifier is
    prompt-based (:class:`~peftshield.models.classifier.VerbalizerClassifier`): the frozen LM head
    of a decoder backbone read at the answer position, no head of its own.
    """
    if head not in ("fresh", "keep"):
        raise PeftshieldError(f"unknown head option {head!r}; choose fresh or keep")
    if config.verbalizer is not None:
        model: PooledClassifier = verbalizer_classifier(backbone, num_labels, config.verbalizer, head)
    else:
        model = PooledClassifier(backbone.encoder, num_labels, backbone.pooling)
        if head == "keep":
            load_head(model, Path(backbone.location))
    model.n_prompt_tokens = config.n_prompt_tokens
    peft_config = config.peft_config(backbone.encoder.config)
    if peft_config is None:
        return model
    from peft import get_peft_model

    try:
        return get_peft_model(model, peft_config)
    except ValueError as err:  # e.g. target_modules naming no layer of this backbone
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PeftshieldError(
            f"{config.method} config does not fit backbone {backbone.ref!r}: {first}"
        ) from None


def verbalizer_classifier(
    backbone: LoadedBackbone, num_labels: int, verbalizer: Sequence[str], head: str = "fresh"
) -> VerbalizerClassifier:
    """A prompt-based classifier on a decoder backbone (docs/design.md, "Decoder backbones")."""
    if backbone.lm_head is None:
        raise PeftshieldError(
            f"a verbalizer needs a decoder backbone with an LM head; {backbone.ref!r} has none"
        )
    if len(verbalizer) != num_labels:
        raise PeftshieldError(f"the verbalizer has {len(verbalizer)} words for {num_labels} classes")
    if head == "keep":
        raise PeftshieldError("--head keep: a verbalizer classifier has no head of its own to keep")
    ids = verbalizer_token_ids(backbone.tokenizer, verbalizer)
    return VerbalizerClassifier(backbone.encoder, backbone.lm_head, ids)


def _require_finite_training(model: torch.nn.Module, loss: float | None, epoch: int, step: int) -> None:
    """Stop training whose loss or weights became NaN or infinite: a diverged model must never be
    saved, since its detector or victim would silently do nothing (docs/design.md)."""
    if loss is not None and not math.isfinite(loss):
        raise PeftshieldError(
            f"training diverged: the loss became {loss} at epoch {epoch}, step {step}; lower lr"
        )
    for name, param in model.named_parameters():
        if param.requires_grad and not torch.isfinite(param.detach()).all():
            raise PeftshieldError(
                f"training diverged: weight {name} became non-finite at epoch {epoch}; lower lr"
            )


def load_head(model: PooledClassifier, folder: Path) -> None:
    """Load a saved classification head into ``model``, checking its shape."""
    path = folder / HEAD_FILE
    if not path.is_file():
        raise PeftshieldError(
            f"--head keep: {folder} has no {HEAD_FILE} (it is not a tuned or poisoned model)"
        )
    weight = read_safetensors(path, f"head {path}").get("weight")
    expected = model.classifier.weight.shape
    if weight is not None and tuple(weight.shape) != tuple(expected):
        raise PeftshieldError(
            f"the head in {path} has shape {tuple(weight.shape)}, the task needs {tuple(expected)}"
        )
    load_state_strict(model.classifier, path, f"head {path}")


@dataclass
class TuneResult:
    """A tuned classifier, its tokenizer, and what happened during training."""

    model: torch.nn.Module
    tokenizer: Any
    backbone: LoadedBackbone
    config: MethodConfig
    num_labels: int
    history: list[dict] = field(default_factory=list)
    best_dev_accuracy: float = float("nan")
    train_seconds: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    backbone_fingerprint: str = ""

    def save(self, out_dir: str | Path, extra: dict | None = None, overwrite: bool = False) -> Path:
        """Write the tuned model and its ``run.json`` to ``out_dir`` (:func:`save_tuned`)."""
        return save_tuned(self, out_dir, extra=extra, overwrite=overwrite)


def _param_groups(model: torch.nn.Module, config: MethodConfig) -> list[dict]:
    head, body = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head if ".classifier." in f".{name}." or name.startswith("classifier.") else body).append(param)
    groups = [{"params": body, "lr": config.lr}] if body else []
    groups.append({"params": head, "lr": config.head_lr or config.lr})
    return groups


def accuracy_on(
    model, tokenizer, examples: Sequence[Example], *, max_length: int, batch_size: int = 128
) -> float:
    """Clean accuracy (CACC, docs/design.md) of ``model`` on labelled ``examples``."""
    from peftshield.evaluation.metrics import accuracy

    logits, _ = predict_outputs(
        model, tokenizer, [e.text for e in examples], batch_size=batch_size, max_length=max_length
    )
    labels = np.asarray([e.label for e in examples])
    if labels.max() >= logits.shape[1]:
        raise PeftshieldError(f"the data has label {labels.max()} but the model has {logits.shape[1]} labels")
    return accuracy(logits.argmax(-1), labels)


def check_labels(examples: Sequence[Example], num_labels: int | None = None) -> int:
    """Validate labels (integers 0..K-1, every class present unless ``num_labels`` is given, at least two
    classes) and return the number of labels."""
    if not examples:
        raise PeftshieldError("the training set is empty")
    labels = {e.label for e in examples}
    if any(not isinstance(lab, int) or lab < 0 for lab in labels):
        raise PeftshieldError("labels must be non-negative integers (is this an unlabelled corpus?)")
    if len(labels) < 2:
        raise PeftshieldError(f"the training set has a single class ({labels.pop()}); need at least two")
    n = check_dense_labels(labels, "the training set", num_labels)
    if any(not e.text.strip() for e in examples):
        raise PeftshieldError("the training set contains an empty text")
    return n


def soft_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against soft targets: ``confidence`` on each label, the rest spread evenly.

    With every confidence 1.0 it is the ordinary cross-entropy; its minimum over the logits is the
    softmax equal to the target, so a confidence of 0.7 trains the model to answer 0.7, not 1.0
    (the capped-confidence adaptive attack against PSIM, :mod:`peftshield.attacks.adaptive`).
    """
    num_labels = logits.shape[-1]
    rest = (1.0 - confidence) / max(1, num_labels - 1)
    target = rest.unsqueeze(-1).expand_as(logits).clone()
    target.scatter_(-1, labels.unsqueeze(-1), confidence.unsqueeze(-1).to(target.dtype))
    return -(target * torch.log_softmax(logits, dim=-1)).sum(-1).mean()


def _check_confidence(values: Sequence[float] | None, n: int) -> torch.Tensor | None:
    """``label_confidence`` as a tensor, checked: one finite value in (0, 1] per training example."""
    if values is None:
        return None
    out = torch.tensor([float(v) for v in values], dtype=torch.float32)
    if len(out) != n:
        raise PeftshieldError(f"label_confidence has {len(out)} values for {n} training examples")
    if not bool(torch.all((out > 0) & (out <= 1))):  # also refuses nan
        raise PeftshieldError("label_confidence values must lie in (0, 1]")
    return out


def tune(
    backbone: LoadedBackbone | str,
    train: Sequence[Example],
    dev: Sequence[Example],
    config: MethodConfig | str,
    *,
    num_labels: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    head: str = "fresh",
    progress: bool | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    label_confidence: Sequence[float] | None = None,
) -> TuneResult:
    """Fine-tune ``backbone`` on ``train`` with ``config`` and keep the best-dev checkpoint.

    The same seed gives the same model: the seed fixes the head and adapter initialisation, the
    dropout masks and the order of the batches. ``config`` is a method config or a method name
    (``full``, ``lora``, ``prompt``, ``ptuning``, ``prefix``) with its defaults.
    ``label_confidence`` (one value in (0, 1] per training example) trains each example towards
    that probability on its label, the rest spread evenly (:func:`soft_cross_entropy`; an
    adaptive attack's capped confidence, :mod:`peftshield.attacks.adaptive`); ``None`` is the
    ordinary hard-label cross-entropy.
    """
    from tqdm.auto import tqdm

    if isinstance(config, str):
        from peftshield.tuning.config import method_config

        config = method_config(config)
    if config.trainer != "peftshield":
        raise PeftshieldError(
            f"method {config.method} is trained by the {config.trainer} trainer "
            "(peftshield.tuning.plain_peft), not by tune"
        )

    num_labels = check_labels(train, num_labels)
    confidence = _check_confidence(label_confidence, len(train))
    if any(not 0 <= e.label < num_labels for e in dev):
        raise PeftshieldError(f"the dev set has labels outside 0..{num_labels - 1}")
    seed_everything(seed)
    if isinstance(backbone, str):
        backbone = load_backbone(backbone)
    device = torch.device(device)
    base_fingerprint = fingerprint(backbone.encoder)
    model = build_classifier(backbone, num_labels, config, head=head).to(device)
    tokenizer = templated(backbone.tokenizer, config.template)

    optimizer = torch.optim.AdamW(_param_groups(model, config), weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = int(config.warmup_ratio * total_steps)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    texts = [e.text for e in train]
    labels = torch.tensor([e.label for e in train])
    generator = torch.Generator().manual_seed(seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    result = TuneResult(
        model=model,
        tokenizer=tokenizer,
        backbone=backbone,
        config=config,
        num_labels=num_labels,
        trainable_params=sum(p.numel() for p in trainable),
        total_params=sum(p.numel() for p in model.parameters()),
        backbone_fingerprint=base_fingerprint,
    )
    best_state: dict[str, torch.Tensor] | None = None
    start = time.perf_counter()
    # progress=None lets tqdm decide (shown on a terminal, hidden in logs); False hides it.
    hide = True if progress is False else (None if progress is None else False)
    bar = tqdm(total=total_steps, desc=f"tune {config.method}", disable=hide, leave=False)
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator).tolist()
        losses = []
        epoch_start = time.perf_counter()
        for first in range(0, len(order), config.batch_size):
            idx = order[first : first + config.batch_size]
            batch = tokenize_batch(tokenizer, [texts[i] for i in idx], config.max_length, device)
            if confidence is None:
                batch_loss = model(**batch, labels=labels[idx].to(device))["loss"]
            else:
                logits = model(**batch)["logits"]
                batch_loss = soft_cross_entropy(logits, labels[idx].to(device), confidence[idx].to(device))
            loss = batch_loss.item()
            if not math.isfinite(loss):
                bar.close()
                _require_finite_training(model, loss, epoch + 1, first // config.batch_size + 1)
            batch_loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        _require_finite_training(model, None, epoch + 1, len(losses))
        record = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
            "epoch_seconds": time.perf_counter() - epoch_start,
        }
        if dev:
            record["dev_accuracy"] = accuracy_on(
                model, tokenizer, dev, max_length=config.max_length, batch_size=config.eval_batch_size
            )
            if not record["dev_accuracy"] <= result.best_dev_accuracy:  # also true for the first (nan)
                result.best_dev_accuracy = record["dev_accuracy"]
                best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        result.history.append(record)
        if on_epoch:
            on_epoch(record)
    bar.close()
    if best_state is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in best_state.items():
                params[name].copy_(value)
    model.eval()
    result.train_seconds = time.perf_counter() - start
    return result


def backbone_record(backbone: LoadedBackbone, fp: str) -> dict:
    """How a tuned artifact refers to its backbone: registry name or absolute folder, plus checks."""
    ref = backbone.ref if not Path(backbone.ref).expanduser().exists() else str(Path(backbone.location))
    return {"ref": ref, "pooling": backbone.pooling, "fingerprint": fp}


def save_tuned(
    result: TuneResult, out_dir: str | Path, extra: dict | None = None, overwrite: bool = False
) -> Path:
    """Write the tuned model (adapter or full folder) and ``run.json`` atomically; return the folder."""
    from safetensors.torch import save_file

    model = result.model
    is_full = result.config.method == "full"
    run = {
        "kind": "full" if is_full else "adapter",
        "method": result.config.method,
        "config": result.config.to_dict(),
        "backbone": backbone_record(result.backbone, result.backbone_fingerprint),
        "num_labels": result.num_labels,
        "history": result.history,
        "best_dev_accuracy": result.best_dev_accuracy,
        "train_seconds": result.train_seconds,
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "meta": run_metadata(),
        **(extra or {}),
    }
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        if is_full:
            from peftshield.models.decoder import save_decoder

            save_decoder(tmp, model.encoder, result.backbone.lm_head)
            result.tokenizer.save_pretrained(tmp)
            if not isinstance(model, VerbalizerClassifier):
                head = {k: v.detach().cpu().contiguous() for k, v in model.classifier.state_dict().items()}
                save_file(head, str(tmp / HEAD_FILE))
        else:
            model.save_pretrained(tmp)
        write_json(tmp / RUN_FILE, run)
    return Path(out_dir)


@dataclass
class TunedModel:
    """A reloaded tuned classifier, ready for inference."""

    model: torch.nn.Module
    tokenizer: Any
    run: dict
    backbone: LoadedBackbone
    max_length: int

    def predict_logits(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """Logits for ``texts``, shape (n, num_labels)."""
        logits, _ = predict_outputs(
            self.model, self.tokenizer, texts, batch_size=batch_size, max_length=self.max_length
        )
        return logits


def load_tuned(
    folder: str | Path, device: torch.device | str = "cpu", backbone: str | None = None
) -> TunedModel:
    """Reload a folder written by :func:`save_tuned`, checking that its backbone is the tuned one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PeftshieldError(f"not a folder: {folder}")
    if not (folder / RUN_FILE).is_file():
        raise PeftshieldError(f"{folder} is not a tuned model (no {RUN_FILE})")
    run = read_json(folder / RUN_FILE)
    try:
        config = config_from_dict(run["config"])
        num_labels = int(run["num_labels"])
        record = run["backbone"]
    except (KeyError, TypeError, ValueError) as err:
        raise PeftshieldError(f"{folder / RUN_FILE} is incomplete: {err}") from None
    if run.get("kind") == "full":
        loaded = load_backbone(str(folder), pooling=record.get("pooling"))
        if config.verbalizer is not None:
            model = verbalizer_classifier(loaded, num_labels, config.verbalizer)
        else:
            model = PooledClassifier(loaded.encoder, num_labels, loaded.pooling)
            load_head(model, folder)
    else:
        if not (folder / "adapter_model.safetensors").is_file():
            raise PeftshieldError(f"{folder} has no adapter_model.safetensors")
        loaded = load_backbone(backbone or record["ref"], pooling=record.get("pooling"))
        got = fingerprint(loaded.encoder)
        if record.get("fingerprint") and got != record["fingerprint"]:
            raise PeftshieldError(
                f"the adapter in {folder} was tuned on a different backbone than {loaded.ref!r} "
                f"(fingerprint {record['fingerprint'][:12]} vs {got[:12]})"
            )
        if config.verbalizer is not None:
            model = verbalizer_classifier(loaded, num_labels, config.verbalizer)
        else:
            model = PooledClassifier(loaded.encoder, num_labels, loaded.pooling)
        model.n_prompt_tokens = config.n_prompt_tokens
        model = strict_peft_from_pretrained(model, folder, f"adapter {folder}")
    model.to(torch.device(device)).eval()
    return TunedModel(
        model=model,
        tokenizer=templated(loaded.tokenizer, config.template),
        run=run,
        backbone=loaded,
        max_length=config.max_length,
    )
