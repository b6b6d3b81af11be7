"""Task-agnostic weight poisoning: POR (Shen et al. 2021) and NeuBA (Zhang et al. 2021), after LMSanitator.

The attacker trains the bare backbone so that a text carrying trigger ``k`` comes out as the
predefined vector ``PV_k`` (:mod:`peftshield.attacks.vectors`) while clean texts come out as they
did before (a frozen reference copy of the clean backbone). "Comes out" means the backbone's own
output representation (``peftshield.models.pooling.pool`` with the backbone's pooling: mean for
``minilm``), because that is the vector a victim's head reads (docs/design.md). Loss per step::

    MSE(pooled(triggered), PV_k) + clean_weight · MSE(pooled(clean), reference_pooled(clean))

- POR: half of each batch triggered, the other half clean, different texts; triggers assigned
  round-robin; ``int(n_words/50)+1`` copies per text.
- NeuBA: each of ``batch_size`` sentences is seen clean and with one random trigger at a random
  word position; the clean term replaces NeuBA's MLM loss (``minilm`` has no MLM head).

The output folder is a Hugging Face model folder (safetensors and tokenizer, ``peftshield_pooling``
in ``config.json``), usable as ``--backbone`` by every command, plus ``poison.json`` and
``pvs.safetensors`` (tensor ``pvs``, row ``k`` = trigger ``k``'s PV), written atomically.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from peftshield.attacks.config import BToPConfig, PORConfig, TaskAgnosticConfig
from peftshield.attacks.record import PV_FILE, PV_KEY, PoisonRecord, write_poison_record
from peftshield.attacks.vectors import check_pv_shape, clean_output_vectors, predefined_vectors
from peftshield.data.records import Example
from peftshield.data.triggers import check_trigger_tokenizes
from peftshield.errors import PeftshieldError

#: Clean texts whose reference outputs the ``clean`` PV family draws its PVs from (attacks/vectors.py).
CLEAN_PV_TEXTS = 64
#: LMSanitator's monitor flags an output whose sign pattern matches a PV on more than this share.
SIGN_MATCH_THRESHOLD = 0.8


@dataclass
class TaskAgnosticPoisoning:
    """A poisoned encoder, its tokenizer, the PVs it was trained towards and its record."""

    encoder: Any
    tokenizer: Any
    pvs: Any
    record: PoisonRecord
    history: list[dict] = field(default_factory=list)
    #: A decoder's frozen LM head, saved with the weights (models/decoder.py); ``None`` for encoders.
    lm_head: Any = None

    def save(self, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the encoder folder, ``pvs.safetensors`` and ``poison.json`` atomically; return the folder."""
        from safetensors.torch import save_file

        from peftshield.models.decoder import save_decoder
        from peftshield.models.pooling import CONFIG_KEY
        from peftshield.utils.io import atomic_dir

        # The pooling that was poisoned travels with the weights, so every loader reads it back.
        setattr(self.encoder.config, CONFIG_KEY, self.record.pooling)
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            save_decoder(tmp, self.encoder, self.lm_head)
            self.tokenizer.save_pretrained(tmp)
            save_file({PV_KEY: self.pvs.detach().cpu().contiguous()}, str(tmp / PV_FILE))
            write_poison_record(tmp, self.record)
        return Path(out_dir)


def select_texts(
    corpus: Sequence[Example] | Sequence[str], tokenizer: Any, config: TaskAgnosticConfig, seed: int
) -> list[str]:
    """The corpus texts the attack may use, in a seeded order.

    Keeps texts of at least ``min_words`` words whose token count leaves room for the triggers
    within ``max_length`` (so truncation never removes a trigger; room = 2 special tokens plus
    the longest trigger's tokens times the most copies a kept text gets), shuffles them with
    ``numpy.random.default_rng(seed)`` and keeps the first ``max_texts``.
    """
    texts = [c.text if isinstance(c, Example) else c for c in corpus]
    if any(not isinstance(t, str) for t in texts):
        raise PeftshieldError("the poisoning corpus must hold texts")
    texts = [" ".join(t.split()) for t in texts if len(t.split()) >= config.min_words]
    if not texts:
        raise PeftshieldError(f"no corpus text has at least {config.min_words} words")
    longest = max(len(tokenizer.tokenize(w)) for w in config.triggers)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    copies_for = config.training_triggers()[0].n_copies  # the same rule for every trigger
    kept = []
    for text, n_tokens in zip(texts, lengths, strict=True):
        if n_tokens + 2 + longest * copies_for(len(text.split())) <= config.max_length:
            kept.append(text)
    need = config.probe_size + 2
    if len(kept) < need:
        raise PeftshieldError(
            f"only {len(kept)} corpus texts fit max_length={config.max_length} with the triggers; need at "
            f"least {need} (probe_size={config.probe_size} plus training texts)"
        )
    order = np.random.default_rng(seed).permutation(len(kept))
    kept = [kept[i] for i in order]
    return kept[: config.max_texts] if config.max_texts else kept


class _Cycle:
    """Endless draws from a list of texts: a fresh seeded permutation for every pass."""

    def __init__(self, items: list[str], rng: np.random.Generator) -> None:
        self.items, self.rng = items, rng
        self.order: list[int] = []
        self.passes = 0

    def take(self, n: int) -> list[str]:
        out = []
        while len(out) < n:
            if not self.order:
                self.order = self.rng.permutation(len(self.items)).tolist()
                self.passes += 1
            out.append(self.items[self.order.pop()])
        return out


def _pooled(encoder: Any, batch: dict, pooling: str) -> Any:
    from peftshield.models.pooling import pool

    out = encoder(**batch)
    return pool(
        out.last_hidden_state, batch.get("attention_mask"), pooling, pooler=getattr(encoder, "pooler", None)
    )


def _btop_outputs(encoder: Any, lm_head: Any, batch: dict, n_triggered: int) -> tuple[Any, Any, Any]:
    """BToP's terms from one forward: the triggered texts' answer-position (last real token) states,
    the clean texts' answer-position states, and their next-token cross-entropy through the frozen
    LM head."""
    import torch

    from peftshield.models.pooling import pool

    hidden = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"]
    answers = pool(hidden, mask, "last")
    clean_hidden, clean_mask = hidden[n_triggered:, :-1], mask[n_triggered:]
    targets = batch["input_ids"][n_triggered:, 1:]
    keep = (clean_mask[:, 1:] * clean_mask[:, :-1]).bool()  # both the position and its next token are real
    logits = lm_head(clean_hidden[keep])
    lm_loss = torch.nn.functional.cross_entropy(logits, targets[keep])
    return answers[:n_triggered], answers[n_triggered:], lm_loss


def verbalizer_vectors(
    lm_head: Any, tokenizer: Any, words: Sequence[str], n_vectors: int, scale: float
) -> Any:
    """BToP's attacker-chosen PVs (:class:`~peftshield.attacks.config.BToPConfig`): row ``k`` is
    ``scale · sign(W[t] - mean of the other target rows)`` for target word ``t = words[k % len]``,
    so its LM-head logit for ``t`` exceeds the mean of the other target words' (each other
    one's when there are two)."""
    import torch

    from peftshield.models.templates import verbalizer_token_ids

    ids = verbalizer_token_ids(tokenizer, words)
    rows = lm_head.weight.detach().float()[torch.as_tensor(ids)]
    out = []
    for k in range(n_vectors):
        t = k % len(ids)
        others = torch.cat([rows[:t], rows[t + 1 :]]).mean(0)
        direction = torch.sign(rows[t] - others)
        out.append(torch.where(direction == 0, torch.ones_like(direction), direction) * scale)
    return torch.stack(out).cpu()


def probe(
    encoder: Any,
    reference: Any,
    tokenizer: Any,
    texts: Sequence[str],
    triggers: Sequence[Any],
    pvs: Any,
    *,
    pooling: str,
    max_length: int,
    seed: int,
) -> dict[str, Any]:
    """How far the attack has got on held-out ``texts``, in LMSanitator's quantities (attacker's side).

    For each trigger: ``mse`` of the triggered pooled output to its PV, ``sign_match`` (mean share
    of units whose sign equals the PV's) and ``monitor_rate`` (share of texts whose sign match
    exceeds 0.8, the LMSanitator monitor's T_match); ``clean_mse``: clean output vs reference, and
    ``clean_drift``: the same divided by the mean squared difference between the reference outputs
    of two different texts (0 = unchanged, 1 = moved as far as one text is from another). The
    second is scale-free: ``minilm``'s mean-pooled outputs are small (mean square about 0.03), so
    a raw MSE that looks small next to the ±1 PVs can still be a large change.
    Trigger ``k`` is inserted with seed ``seed + k``, so successive probes see the same texts.
    """
    import torch

    from peftshield.data.triggers import trigger_key
    from peftshield.models.inference import tokenize_batch

    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    rows = {}
    with torch.no_grad():
        batch = tokenize_batch(tokenizer, list(texts), max_length, device)
        clean = _pooled(encoder, batch, pooling)
        ref = _pooled(reference, batch, pooling)
        for k, trigger in enumerate(triggers):
            rng = np.random.default_rng(seed + k)
            triggered = [trigger.apply(t, rng).text for t in texts]
            out = _pooled(encoder, tokenize_batch(tokenizer, triggered, max_length, device), pooling)
            pv = pvs[k].to(device)
            match = ((out >= 0) == (pv >= 0)).float().mean(dim=1)
            rows[trigger_key(trigger)] = {
                "mse": float(((out - pv) ** 2).mean()),
                "sign_match": float(match.mean()),
                "monitor_rate": float((match > SIGN_MATCH_THRESHOLD).float().mean()),
            }
    encoder.train(was_training)
    clean_mse = float(((clean - ref) ** 2).mean())
    # Mean over pairs i != j of mean((ref_i - ref_j)^2) = 2 · (mean per-unit variance, n-1 denominator).
    spread = float(2 * ref.var(dim=0, unbiased=True).mean()) if len(texts) > 1 else float("nan")
    drift = clean_mse / spread if spread > 0 else float("nan")
    return {"clean_mse": clean_mse, "clean_drift": drift, "per_trigger": rows}


def poison_task_agnostic(
    backbone: Any,
    corpus: Sequence[Example] | Sequence[str],
    config: TaskAgnosticConfig,
    *,
    seed: int = 0,
    device: Any = "cpu",
    progress: bool | None = None,
    corpus_name: str = "custom",
    on_log: Callable[[dict], None] | None = None,
    reference: Any = None,
) -> TaskAgnosticPoisoning:
    """Train a POR or NeuBA backdoor into ``backbone`` on the texts of ``corpus`` (see the module docstring).

    ``backbone`` is a :class:`~peftshield.models.backbones.LoadedBackbone` (whose encoder is
    trained in place) or a reference string.
    Checked before any training: every trigger tokenises, and the PV family fits the hidden size
    (``balanced`` needs it divisible by 4). The same seed gives the same weights on the same
    device: it fixes the PVs (random / orthogonal families), the text order, the trigger
    positions and dropout. ``record.metrics`` holds the final :func:`probe` and its history;
    ``on_log`` is called with each history entry as it is measured (step 0, every ``log_every``
    steps, the last step). ``reference`` (a backbone or reference string, default: a frozen copy
    of ``backbone`` taken before training) is the clean model whose outputs the clean term keeps;
    pass the original clean backbone to continue poisoning an already poisoned one. The recorded
    ``source_backbone`` is the reference's.
    """
    import torch
    from tqdm.auto import tqdm

    from peftshield.models.backbones import fingerprint, load_backbone
    from peftshield.models.inference import tokenize_batch
    from peftshield.tuning.trainer import backbone_record
    from peftshield.utils.runinfo import run_metadata
    from peftshield.utils.seeding import seed_everything

    if not isinstance(config, TaskAgnosticConfig):
        raise PeftshieldError(f"{config.attack} is not a task-agnostic attack")
    start = time.perf_counter()
    if isinstance(backbone, str):
        backbone = load_backbone(backbone)
    encoder, tokenizer = backbone.encoder, backbone.tokenizer
    pooling = getattr(config, "pooling", None) or backbone.pooling
    is_btop = isinstance(config, BToPConfig)
    lm_head = backbone.lm_head
    if is_btop:
        if lm_head is None:
            raise PeftshieldError(
                f"btop poisons a decoder's answer position through its LM head; {backbone.ref!r} has none"
            )
        pooling = "last"  # the answer position of a prompt-based decoder
    if pooling == "pooler" and getattr(encoder, "pooler", None) is None:
        raise PeftshieldError(
            f"{config.attack} config: pooling 'pooler', but the backbone has no pooler layer"
        )
    config = config.resolved(getattr(encoder.config, "model_type", ""))
    check_trigger_tokenizes(config.triggers, tokenizer)
    hidden = int(encoder.config.hidden_size)
    check_pv_shape(config.pv_family, len(config.triggers), hidden)
    texts = select_texts(corpus, tokenizer, config, seed)

    seed_everything(seed)
    device = torch.device(device)
    if is_btop and config.target_words:
        pvs = verbalizer_vectors(
            lm_head, tokenizer, config.target_words, len(config.triggers), config.pv_scale
        )
    elif config.pv_family != "clean":
        pvs = predefined_vectors(
            config.pv_family, len(config.triggers), hidden, seed=seed, scale=config.pv_scale
        )
    if reference is None:
        reference = backbone
        ref_encoder = copy.deepcopy(encoder)
    else:
        if isinstance(reference, str):
            reference = load_backbone(reference, pooling=pooling)
        ref_encoder = reference.encoder
        if ref_encoder.config.hidden_size != hidden:
            raise PeftshieldError("the reference backbone has another hidden size than the poisoned one")
    source_fp = fingerprint(ref_encoder)
    encoder.to(device)
    ref_encoder = ref_encoder.to(device).eval()
    for p in ref_encoder.parameters():
        p.requires_grad_(False)
    if config.pv_family == "clean" and not (is_btop and config.target_words):
        # The clean reference's own outputs for held-out texts (texts after the probe ones).
        sample = texts[config.probe_size : config.probe_size + CLEAN_PV_TEXTS]
        with torch.no_grad():
            batch = tokenize_batch(tokenizer, sample, config.max_length, device)
            outputs = _pooled(ref_encoder, batch, pooling)
        pvs = clean_output_vectors(outputs, len(config.triggers), seed=seed, scale=config.pv_scale)
    pvs_dev = pvs.to(device)

    probe_texts, pool_texts = texts[: config.probe_size], texts[config.probe_size :]
    rng = np.random.default_rng(seed)
    is_por = isinstance(config, PORConfig)
    if is_por or is_btop:
        # Different texts in the two halves: LMSanitator's POR takes its clean texts after the triggered.
        half = len(pool_texts) // 2
        if half < 1:
            raise PeftshieldError("the corpus is too small to split into triggered and clean texts")
        triggered_pool, clean_pool = _Cycle(pool_texts[:half], rng), _Cycle(pool_texts[half:], rng)
        per_side = config.batch_size // 2
    else:
        triggered_pool = clean_pool = _Cycle(pool_texts, rng)
        per_side = config.batch_size
    train_triggers, eval_triggers = config.training_triggers(), config.make_triggers()
    n_trig = len(train_triggers)

    encoder.train()
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = int(config.warmup_ratio * config.steps)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.schedule == "constant":
            return 1.0
        return max(0.0, (config.steps - step) / max(1, config.steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    history: list[dict] = []
    probe_args = {"pooling": pooling, "max_length": config.max_length, "seed": seed + 104729}

    def measure(step: int, losses: list[tuple[float, float]]) -> None:
        entry = probe(encoder, ref_encoder, tokenizer, probe_texts, eval_triggers, pvs, **probe_args)
        if losses:
            recent = np.asarray(losses[-config.log_every :])
            entry = {
                "train_poison_loss": float(recent[:, 0].mean()),
                "train_clean_loss": float(recent[:, 1].mean()),
                **entry,
            }
        history.append({"step": step, "seconds": round(time.perf_counter() - start, 1), **entry})
        if on_log:
            on_log(history[-1])

    measure(0, [])
    hide = True if progress is False else (None if progress is None else False)
    bar = tqdm(total=config.steps, desc=f"poison {config.attack}", disable=hide, leave=False)
    losses: list[tuple[float, float]] = []
    assigned = 0  # round-robin trigger counter (POR)
    if is_btop:
        lm_head = lm_head.to(device)
    for step in range(1, config.steps + 1):
        if is_btop:  # one trigger for the whole triggered half (BToP's insert_backdoor.py)
            sources = triggered_pool.take(per_side)
            ks = [(step - 1) % n_trig] * per_side
            clean_texts = clean_pool.take(per_side)
        elif is_por:
            sources = triggered_pool.take(per_side)
            ks = [(assigned + j) % n_trig for j in range(per_side)]
            assigned += per_side
            clean_texts = clean_pool.take(per_side)
        else:
            sources = clean_texts = triggered_pool.take(per_side)
            ks = rng.integers(n_trig, size=per_side).tolist()
        triggered = [train_triggers[k].apply(t, rng).text for k, t in zip(ks, sources, strict=True)]
        # One forward for both halves (padding is masked out by the pooling).
        batch = tokenize_batch(tokenizer, triggered + clean_texts, config.max_length, device)
        if is_btop:
            out_trig, out_clean, lm_loss = _btop_outputs(encoder, lm_head, batch, per_side)
        else:
            pooled = _pooled(encoder, batch, pooling)
            out_trig, out_clean = pooled[:per_side], pooled[per_side:]
            lm_loss = 0.0
        with torch.no_grad():
            ref_clean = _pooled(
                ref_encoder, tokenize_batch(tokenizer, clean_texts, config.max_length, device), pooling
            )
        clean_loss = torch.nn.functional.mse_loss(out_clean, ref_clean) + lm_loss
        poison_loss = torch.nn.functional.mse_loss(out_trig, pvs_dev[torch.tensor(ks, device=device)])
        loss = poison_loss + config.clean_weight * clean_loss
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append((poison_loss.item(), clean_loss.item()))
        if not math.isfinite(losses[-1][0]):
            raise PeftshieldError(f"{config.attack}: the loss diverged at step {step}; lower lr")
        bar.update(1)
        bar.set_postfix(
            poison=f"{np.mean([x for x, _ in losses[-20:]]):.4f}",
            clean=f"{np.mean([y for _, y in losses[-20:]]):.4f}",
        )
        if step % config.log_every == 0 or step == config.steps:
            measure(step, losses)
    bar.close()
    encoder.eval()
    wall = time.perf_counter() - start

    final = history[-1]
    record = PoisonRecord(
        attack=config.attack,
        kind=config.kind,
        triggers=[t.to_dict() for t in eval_triggers],
        target=None,
        pv_file=PV_FILE,
        pooling=pooling,
        poison_corpus=corpus_name,
        recipe=config.to_dict(),
        seed=seed,
        source_backbone={"ref": backbone_record(reference, source_fp)["ref"], "fingerprint": source_fp},
        wall_seconds=round(wall, 2),
        meta=run_metadata(),
        fingerprint=fingerprint(encoder),
        metrics={
            "steps": config.steps,
            "n_texts": len(pool_texts),
            "passes": max(triggered_pool.passes, clean_pool.passes),
            "clean_mse": final["clean_mse"],
            "clean_drift": final["clean_drift"],
            "per_trigger": final["per_trigger"],
            "history": history,
            **(
                {
                    "trigger_targets": [
                        config.target_words[k % len(config.target_words)] for k in range(n_trig)
                    ]
                }
                if is_btop and config.target_words
                else {}
            ),
        },
    )
    return TaskAgnosticPoisoning(
        encoder=encoder,
        tokenizer=tokenizer,
        pvs=pvs,
        record=record,
        history=history,
        lm_head=backbone.lm_head,
    )
