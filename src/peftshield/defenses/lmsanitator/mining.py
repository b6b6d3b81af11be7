"""PV mining: invert the predefined vectors (PVs) of a task-agnostic backdoor (LMSanitator stage 2).

Wei et al., *Defending Prompt-Tuning Against Task-Agnostic Backdoors*, NDSS 2024, §IV-B "PV mining";
reference code ``meng-wenlong/LMSanitator``, ``2-PV_mining_filtering/TOKEN/main.py``
(docs/design.md, "Deviations from the papers"). A soft trigger of ``n_slots`` vectors is spliced
into clean texts as input embeddings, at a random word position of each text, and optimised on the
FROZEN suspect backbone so that the pooled output moves far from the clean output (distance) and
becomes the same for every text of the batch (diversity); a backdoored backbone has such an
input-independent output - its PV - and a clean one should not.

Where this implementation differs from the reference code, and why:

* **Scale-aware measures** (:mod:`.measures`): every output is divided by the per-unit spread of
  the backbone's own clean outputs before the distance, diversity and repetition losses are taken;
  the reference raw-unit measures do not discriminate on ``minilm`` (docs/design.md).
* **Saturating distance and repetition terms**: the loss uses ``log(1 + D)`` and ``log(1 + R)``
  where the reference uses ``D`` and ``R``. In clean-spread units a PV lies tens of units away
  (``D`` about 40-70 for +-1 PVs), and an unbounded distance term keeps pushing the outputs apart
  after they reached the PV, against the diversity term: on the tiny POR model of the tests the
  entropy gap rose from 0.016 back to 0.05 while ``D`` grew from 67 to 77. With the logarithm a
  far output stops paying for more distance, and the diversity term finishes the collapse.
* **Projected trigger**: after each step the soft trigger is clipped into the legitimate range
  (:func:`legitimate_range`, per dimension by default, see :class:`.filtering.FilterThresholds`);
  the reference lets it leave the range and only rejects the candidate afterwards, which wastes
  the attempt. A real trigger is made of real embedding rows, so nothing reachable is lost.
* **Learning rate** 1e-2 without warm-up: the reference's 2e-4 / 5e-5 are meant to be multiplied
  by 100 by its adaptive rule while its raw-unit gradients are tiny; in clean-spread units the
  gradients exceed 5e-3 from the first step, so the rule (kept as in the reference) rarely fires
  and the base rate must move the trigger across the embedding range (per-dimension spread about
  0.05 on ``minilm``) within tens of steps.
* **The monitored vectors** are the backbone's pooled representations (``cls`` | ``pooler`` |
  ``mean`` | ``last``, see :mod:`peftshield.models.pooling`), not always the [CLS] state: the vector
  a victim's head reads is the one a task-agnostic attack must target, and a scan that does not
  know the victim watches every candidate (issue 11). One miner serves several vectors: the clean
  outputs and every verification pass are computed once for all of them, each attempt optimises
  the trigger for one target vector, and the same forward pass is read on the other vectors too, so
  a trigger that collapses another vector than its target is verified and kept as that vector's PV.
* **Initial triggers** are rows of the word-embedding matrix drawn at random (special tokens
  excluded) by a generator seeded with ``(seed, attempt)``; the reference takes rows
  ``(seed * k * 10 + i * 10) mod |V|``, which on BERT vocabularies are mostly ``[unusedN]`` rows.
* **Budget in steps, not epochs.** The reference runs 4 epochs of 2,000 texts per attempt (250
  steps) and abandons an attempt after 2 epochs without a PV; with about 300 steps for a whole
  clean scan on 2 CPU cores (issue 5) an attempt here has ``steps`` steps and is abandoned after
  ``patience`` steps when its distance has not reached the threshold.
* **Candidates are verified on held-out texts**: the candidate PV is the mean output of a
  verification batch of texts never used in the optimisation (the reference takes the last
  training batch), so that a trigger that only fits the texts it was trained on is not a PV.
  Candidates are checked every ``check_every`` steps and an attempt stops as soon as one passes the
  filter (:mod:`.filtering`); the reference checks only after the last epoch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from peftshield.errors import PeftshieldError
from peftshield.models.pooling import POOLING_CHOICES, pool
from peftshield.utils import strict
from peftshield.utils.validate import require_finite_fields, require_positive, require_range

from .filtering import Candidate, FilterThresholds, candidate_reasons
from .measures import (
    DEFAULT_SCALE_FLOOR,
    OutputScale,
    batch_entropy,
    normalised_mse,
    relative_spread,
    sign_agreement,
)


@dataclass
class MiningConfig:
    """Hyper-parameters of one PV search (LMSanitator TOKEN/main.py arguments, budget in steps).

    Reference values in brackets: ``n_slots`` (``prompt_len`` 7), ``n_texts`` (2,000 WikiText
    texts; 256 here), ``max_length`` (128; 48 here, for speed), ``batch_size`` (32), ``lr`` (2e-4,
    5e-5 for BERT; larger here because the losses are read in clean-spread units and the budget is
    short), ``boost`` / ``boost_grad`` (x100 while the trigger's largest gradient is below 5e-3),
    ``max_position`` (the trigger goes before word ``randint(1, min(32, n_words))``),
    ``diversity_coeff`` (``loss_coeff`` 1.0), ``repetition_coeff`` (0.5).

    Ours only: ``n_verify`` held-out texts verify candidates; ``steps`` per attempt, abandoned
    after ``patience`` steps while the distance is below ``min_distance`` or the smallest entropy
    gap so far is above ``patience_gap_factor`` x ``max_gap`` (on ``minilm`` a POR backdoor is at a
    gap of 0.017 after 6 steps, a clean backbone still above 0.05 after 10); candidates checked
    every ``check_every`` steps; ``scale_floor`` (see :class:`.measures.OutputScale`); ``project``
    clips the trigger into the legitimate range after each step; ``pool_slots=False`` leaves the
    trigger's own token states out of a mean-pooled output (the victim's head does include them,
    so the default keeps them; measured on ``minilm``, leaving them out did not stop a clean
    backbone from collapsing and made the tiny POR backdoor harder to find).
    """

    n_slots: int = 7
    n_texts: int = 256
    n_verify: int = 32
    max_length: int = 48
    batch_size: int = 32
    max_position: int = 32
    lr: float = 1e-2
    boost: float = 100.0
    boost_grad: float = 5e-3
    steps: int = 30
    patience: int = 10
    patience_gap_factor: float = 2.5
    check_every: int = 5
    distance_coeff: float = 1.0
    diversity_coeff: float = 1.0
    repetition_coeff: float = 0.5
    scale_floor: float = DEFAULT_SCALE_FLOOR
    project: bool = True
    pool_slots: bool = True

    def __post_init__(self) -> None:
        require_finite_fields("mining config", self)
        positive_ints = (
            "n_slots",
            "n_texts",
            "n_verify",
            "max_length",
            "batch_size",
            "max_position",
            "steps",
            "patience",
            "check_every",
        )
        for name in positive_ints:
            require_positive("mining config", name, getattr(self, name), integer=True)
        for name in ("lr", "boost", "scale_floor", "patience_gap_factor"):
            require_positive("mining config", name, getattr(self, name))
        for name in ("boost_grad", "distance_coeff", "diversity_coeff", "repetition_coeff"):
            require_range("mining config", name, getattr(self, name), 0, float("inf"))
        if self.batch_size < 2 or self.n_verify < 2:
            raise PeftshieldError(
                "mining config: batch_size and n_verify must be at least 2 (a batch softmax)"
            )
        if self.n_texts < self.batch_size:
            raise PeftshieldError(
                f"mining config: n_texts ({self.n_texts}) must be at least batch_size ({self.batch_size})"
            )
        if self.max_length < self.n_slots + 3:
            raise PeftshieldError(
                f"mining config: max_length ({self.max_length}) leaves no room for "
                f"{self.n_slots} trigger slots"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MiningConfig:
        """Build from a dict; unknown keys are an error that lists the known ones."""
        return strict.from_dict(cls, data, "mining config")


def word_embeddings(encoder: nn.Module) -> nn.Embedding:
    """The encoder's word-embedding layer, checked to be a readable ``(vocab, hidden)`` matrix.

    The miner builds its inputs from this matrix (the reference replaces the embeddings of its
    placeholder tokens) and the legitimacy filter reads its range; a model without one cannot be
    scanned, which is reported as a one-line error.
    """
    try:
        layer = encoder.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        layer = None
    weight = getattr(layer, "weight", None)
    hidden = getattr(getattr(encoder, "config", None), "hidden_size", None)
    if not isinstance(layer, nn.Module) or not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise PeftshieldError(
            "this model has no readable word-embedding matrix (get_input_embeddings() gives no 2-D "
            "weight); PV mining needs one"
        )
    if hidden is not None and weight.shape[1] != hidden:
        raise PeftshieldError(
            f"the word-embedding matrix has width {weight.shape[1]}, the model's hidden size is {hidden}; "
            "PV mining needs input embeddings of the hidden size"
        )
    if weight.shape[0] < 2 or not torch.isfinite(weight).all():
        raise PeftshieldError("the word-embedding matrix is empty or holds non-finite values")
    return layer


@dataclass
class PreparedTexts:
    """Token ids of clean texts with ``n_slots`` trigger slots spliced in, padded (internal).

    ``slot[i, j]`` is the trigger slot index at token ``j`` of text ``i`` (``-1`` elsewhere);
    ``clean_ids`` hold the same tokens without the slots.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    slot: torch.Tensor
    clean_ids: torch.Tensor
    clean_mask: torch.Tensor
    positions: list[int]

    def __len__(self) -> int:
        return self.ids.shape[0]


def _special_ids(tokenizer) -> tuple[list[int], list[int]]:
    # [CLS] ... [SEP] for BERT-like tokenizers, <s> ... </s> for RoBERTa-like ones.
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return ([first] if first is not None else []), ([last] if last is not None else [])


def _split_tokens(tokenizer, words: list[str], position: int) -> tuple[list[int], list[int]]:
    """Token ids before and after word ``position`` of ``words`` (joined with single spaces)."""
    text = " ".join(words)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        start = sum(len(w) + 1 for w in words[:position])
        split = next(
            (i for i, (s, _) in enumerate(enc["offset_mapping"]) if s >= start), len(enc["input_ids"])
        )
        return list(enc["input_ids"][:split]), list(enc["input_ids"][split:])
    left = tokenizer(" ".join(words[:position]), add_special_tokens=False)["input_ids"] if position else []
    right = tokenizer(" ".join(words[position:]), add_special_tokens=False)["input_ids"]
    return list(left), list(right)


def prepare_texts(
    tokenizer,
    texts: Sequence[str],
    n_slots: int,
    max_length: int,
    max_position: int,
    rng: np.random.Generator,
) -> PreparedTexts:
    """Tokenise ``texts`` and splice ``n_slots`` trigger slots before a random word of each.

    The word index is drawn uniformly in ``[1, min(max_position, n_words)]`` (reference:
    ``random.randint(1, min(32, n))``). Texts are truncated so that special tokens, the text and
    the slots fit in ``max_length`` tokens.
    """
    head, tail = _special_ids(tokenizer)
    body = max_length - n_slots - len(head) - len(tail)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows, clean_rows, slots, positions = [], [], [], []
    for text in texts:
        words = text.split()
        if not words:
            raise PeftshieldError("PV mining: a mining text is empty")
        position = int(rng.integers(1, min(max_position, len(words)) + 1))
        left, right = _split_tokens(tokenizer, words, position)
        left = left[:body]
        right = right[: body - len(left)]
        rows.append(head + left + [pad] * n_slots + right + tail)
        slot = [-1] * (len(head) + len(left)) + list(range(n_slots)) + [-1] * (len(right) + len(tail))
        slots.append(slot)
        clean_rows.append(head + left + right + tail)
        positions.append(position)

    def padded(seqs: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(s) for s in seqs)
        return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)

    ids = padded(rows, pad)
    clean_ids = padded(clean_rows, pad)
    return PreparedTexts(
        ids=ids,
        mask=padded([[1] * len(r) for r in rows], 0),
        slot=padded(slots, -1),
        clean_ids=clean_ids,
        clean_mask=padded([[1] * len(r) for r in clean_rows], 0),
        positions=positions,
    )


@dataclass
class AttemptRecord:
    """What one mining attempt did (one row of the scan's per-attempt log).

    ``pooling`` is the vector the trigger was optimised for; ``distance`` … ``max_abs_trigger``
    describe its final candidate on that vector. ``vectors`` holds the final candidate's measures
    on every vector the miner watches (``distance``, ``gap``, ``overlap``, ``in_range``, ``pv``) and
    ``pv_on`` the vectors on which the attempt produced a PV (its target, or another vector whose
    output its trigger collapsed).
    """

    attempt: int
    outcome: str  # "pv" | "duplicate" | "rejected" | "abandoned" | "budget"
    steps: int
    seconds: float
    init_rows: list[int]
    distance: float = float("nan")
    gap: float = float("nan")
    spread: float = float("nan")
    overlap: float = float("nan")
    in_range: bool = False
    max_abs_trigger: float = float("nan")
    boosted_steps: int = 0
    reasons: list[str] = field(default_factory=list)
    trace: list[dict[str, float]] = field(default_factory=list)
    pooling: str = ""
    pv_on: list[str] = field(default_factory=list)
    vectors: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (floats rounded for the log)."""
        out = dataclasses.asdict(self)
        for row in (out, *out["vectors"].values()):
            for key, value in row.items():
                if isinstance(value, float):
                    row[key] = round(value, 6) if math.isfinite(value) else None
        return out


@dataclass
class AttemptResult:
    """An attempt's log record, its final (or accepted) candidate on its target vector, and on every vector.

    ``candidates`` maps each watched vector to the candidate the attempt's trigger gives there
    (all from one verification pass); ``record.pv_on`` names those that passed the filter.
    """

    record: AttemptRecord
    candidate: Candidate | None
    candidates: dict[str, Candidate] = field(default_factory=dict)


class PVMiner:
    """Mines PVs of one frozen backbone with soft triggers (LMSanitator TOKEN/main.py, stage 2).

    Construction tokenises the texts, computes the clean pooled outputs and their
    :class:`~.measures.OutputScale`, and reads the embedding range; :meth:`attempt` runs one
    fuzzing attempt. :func:`~peftshield.defenses.lmsanitator.scan.scan` drives the attempts.

    ``pooling`` is one vector name or a sequence of them (the first is the default target): with
    several, the clean outputs and scales are computed for all of them in one pass
    (``clean_by`` / ``scale_by``; ``clean`` / ``scale`` are the first vector's) and every attempt
    watches them all (see the module docstring).

    ``encoder`` is the backbone (its parameters are never changed; they are set to
    ``requires_grad=False`` while the miner runs and restored afterwards by :meth:`close`).
    The first ``n_verify`` of the shuffled texts are held out to verify candidates.
    """

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer,
        pooling: str | Sequence[str],
        texts: Sequence[str],
        config: MiningConfig | None = None,
        thresholds: FilterThresholds | None = None,
        *,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        self.config = config or MiningConfig()
        self.thresholds = thresholds or FilterThresholds()
        self.device = torch.device(device)
        self.seed = seed
        self.encoder = encoder
        names = (pooling,) if isinstance(pooling, str) else tuple(dict.fromkeys(pooling))
        if not names or any(name not in POOLING_CHOICES for name in names):
            raise PeftshieldError(
                f"unknown pooling in {list(names)!r}; choose from {', '.join(POOLING_CHOICES)}"
            )
        self.poolings: tuple[str, ...] = names
        self.pooling = names[0]
        self.pooler = getattr(encoder, "pooler", None)
        if "pooler" in names and self.pooler is None:
            raise PeftshieldError("this model has no pooler layer; mine cls, mean or last instead")
        self.embedding = word_embeddings(encoder)
        cfg = self.config
        needed = cfg.batch_size + cfg.n_verify
        texts = [t for t in texts if isinstance(t, str) and t.split()]
        if len(texts) < needed:
            raise PeftshieldError(
                f"PV mining needs at least {needed} non-empty texts (batch {cfg.batch_size} + "
                f"{cfg.n_verify} held out), got {len(texts)}"
            )
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(texts))[: cfg.n_texts + cfg.n_verify]
        chosen = [texts[i] for i in order]
        self.texts = chosen
        self._grad_flags = [p.requires_grad for p in encoder.parameters()]
        self._was_training = encoder.training
        encoder.requires_grad_(False)
        encoder.eval()
        encoder.to(self.device)
        weight = self.embedding.weight.detach()
        if self.thresholds.range_mode == "global":
            emb_min, emb_max = weight.min(), weight.max()
        else:
            emb_min, emb_max = weight.min(0).values, weight.max(0).values
        self.lo, self.hi = legitimate_range(emb_min.float(), emb_max.float(), self.thresholds.range_factor)
        self.lo, self.hi = self.lo.to(self.device), self.hi.to(self.device)
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._init_rows = np.array([i for i in range(weight.shape[0]) if i not in special])
        prepared = prepare_texts(tokenizer, chosen, cfg.n_slots, cfg.max_length, cfg.max_position, rng)
        self.prepared = prepared
        self.verify_idx = np.arange(cfg.n_verify)
        self.train_idx = np.arange(cfg.n_verify, len(prepared))
        self.clean_by = self._clean_outputs(prepared)
        self.scale_by: dict[str, OutputScale] = {}
        for name, clean in self.clean_by.items():
            if not torch.isfinite(clean).all():
                raise PeftshieldError(f"the model's clean {name} outputs are not finite; it cannot be mined")
            try:
                self.scale_by[name] = OutputScale.from_outputs(clean[self.train_idx], floor=cfg.scale_floor)
            except ValueError:
                raise PeftshieldError(
                    f"the {name} vector of this model is the same for every text; scan another vector"
                ) from None
        self.clean, self.scale = self.clean_by[self.pooling], self.scale_by[self.pooling]
        self.hidden = int(self.clean.shape[1])

    # ------------------------------------------------------------------ forward passes

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
        return pool(hidden, mask, pooling, pooler=self.pooler).float()

    @torch.no_grad()
    def _clean_outputs(self, prepared: PreparedTexts) -> dict[str, torch.Tensor]:
        # One forward pass per batch serves every watched vector.
        outs: dict[str, list[torch.Tensor]] = {name: [] for name in self.poolings}
        for start in range(0, len(prepared), 64):
            ids, mask = self._trim(
                prepared.clean_ids[start : start + 64], prepared.clean_mask[start : start + 64]
            )
            hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            for name in self.poolings:
                outs[name].append(self._pool(hidden, mask, name))
        return {name: torch.cat(chunks) for name, chunks in outs.items()}

    def _trim(self, ids: torch.Tensor, mask: torch.Tensor, *rest: torch.Tensor):
        # Cut the padding columns no text of this batch needs (batches are padded to the longest text).
        width = int(mask.sum(1).max())
        cut = [t[:, :width].to(self.device) for t in (ids, mask, *rest)]
        return tuple(cut)

    def triggered_states(self, trigger: torch.Tensor, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states of texts ``index`` with ``trigger`` in their slots, and the pooling mask."""
        p = self.prepared
        ids, mask, slot = self._trim(p.ids[index], p.mask[index], p.slot[index])
        with torch.no_grad():
            embeds = self.embedding(ids)
        slot_vectors = trigger[slot.clamp_min(0)]
        embeds = torch.where((slot >= 0).unsqueeze(-1), slot_vectors.to(embeds.dtype), embeds)
        out = self.encoder(inputs_embeds=embeds, attention_mask=mask)
        # pool_slots=False leaves the trigger's own token states out of a mean (see MiningConfig).
        pool_mask = mask if self.config.pool_slots else mask * (slot < 0)
        return out.last_hidden_state, pool_mask

    def triggered_outputs(
        self, trigger: torch.Tensor, index: np.ndarray, pooling: str | None = None
    ) -> torch.Tensor:
        """Pooled outputs of texts ``index`` with ``trigger`` ``(n_slots, hidden)`` in their slots.

        ``pooling`` names the vector (default: the first watched one).
        """
        hidden, pool_mask = self.triggered_states(trigger, index)
        return self._pool(hidden, pool_mask, self._target(pooling))

    def _target(self, pooling: str | None) -> str:
        if pooling is None:
            return self.pooling
        if pooling not in self.poolings:
            raise PeftshieldError(f"this miner watches {', '.join(self.poolings)}, not {pooling!r}")
        return pooling

    # ------------------------------------------------------------------ one attempt

    def initial_trigger(self, attempt: int) -> tuple[torch.Tensor, list[int]]:
        """Fresh initialisation ("fuzzing"): ``n_slots`` random rows of the word-embedding matrix."""
        rng = np.random.default_rng([self.seed, attempt])
        rows = [int(r) for r in rng.choice(self._init_rows, size=self.config.n_slots, replace=False)]
        weight = self.embedding.weight.detach()
        return weight[rows].clone().float().to(self.device), rows

    def in_range(self, trigger: torch.Tensor) -> bool:
        """Reference legitimacy check: every value within ``range_factor`` x the embedding matrix's range."""
        return bool(((trigger >= self.lo) & (trigger <= self.hi)).all())

    @torch.no_grad()
    def evaluate(
        self, trigger: torch.Tensor, found: Sequence[torch.Tensor] = (), pooling: str | None = None
    ) -> Candidate:
        """Measure a trigger on the held-out verification texts and build its candidate PV (one vector)."""
        target = self._target(pooling)
        return self.evaluate_all(trigger, {target: list(found)}, only=(target,))[target]

    @torch.no_grad()
    def evaluate_all(
        self,
        trigger: torch.Tensor,
        found_by: dict[str, Sequence[torch.Tensor]] | None = None,
        only: Sequence[str] | None = None,
    ) -> dict[str, Candidate]:
        """Candidates of ``trigger`` on every watched vector (or ``only`` these), from one verification pass.

        ``found_by`` maps a vector to the PVs already kept for it (its candidate's ``overlap``).
        """
        found_by = found_by or {}
        hidden, pool_mask = self.triggered_states(trigger, self.verify_idx)
        return {
            name: self._candidate(name, trigger, self._pool(hidden, pool_mask, name), found_by.get(name, ()))
            for name in (only or self.poolings)
        }

    def _candidate(
        self, pooling: str, trigger: torch.Tensor, outputs: torch.Tensor, found: Sequence[torch.Tensor]
    ) -> Candidate:
        scale = self.scale_by[pooling]
        z = scale.normalise(outputs)
        pv = outputs.mean(0)
        overlap = float(sign_agreement(pv, torch.stack(list(found)).to(pv.device)).max()) if found else 0.0
        entropy = float(batch_entropy(z))
        return Candidate(
            pv=pv.cpu(),
            trigger=trigger.detach().cpu().clone(),
            distance=float(normalised_mse(outputs, self.clean_by[pooling][self.verify_idx], scale)),
            entropy=entropy,
            gap=math.log(z.shape[0]) - entropy,
            spread=float(relative_spread(z)),
            overlap=overlap,
            in_range=self.in_range(trigger),
            max_abs_trigger=float(trigger.abs().max()),
        )

    def attempt(
        self,
        attempt: int,
        found: Sequence[torch.Tensor] = (),
        *,
        target: str | None = None,
        found_by: dict[str, Sequence[torch.Tensor]] | None = None,
        max_steps: int | None = None,
        accept_early: bool = True,
        on_step: Callable[[], None] | None = None,
    ) -> AttemptResult:
        """Run one fuzzing attempt; return its record and its last (or accepted) candidate.

        The trigger is optimised for vector ``target`` (default: the first watched one); ``found``
        are the PVs already kept for it, ``found_by`` those of every vector (``found`` wins for the
        target). With several watched vectors, each check step also reads the step's forward pass
        on the other vectors, and the attempt is accepted (outcome ``pv``) as soon as its trigger is
        a PV on any of them; ``record.pv_on`` names them.

        Loss (each term in clean-spread units, see module docstring):
        ``- distance_coeff * log(1 + D) - diversity_coeff * H - repetition_coeff * log(1 + R)``
        where ``D`` is the normalised MSE to the clean outputs, ``H`` the batch entropy and ``R``
        the normalised MSE to the nearest PV already ``found`` (reference: ``-MSE`` distance +
        ``loss_coeff`` x diversity + ``-0.5 * MSE`` repetition). Adam; the learning rate is
        ``boost`` x ``lr`` until the trigger's largest gradient first exceeds ``boost_grad``
        (reference adaptive lr); the trigger is clipped into the legitimate range after each step
        when ``project``. Outcomes: ``pv`` (kept), ``duplicate`` (a kept PV found again),
        ``abandoned`` (no PV in sight after ``patience`` steps), ``rejected`` (ran out of steps),
        ``budget`` (cut short by ``max_steps``, the scan's remaining budget). With
        ``accept_early=False`` the attempt always runs to its last step (calibration).
        """
        cfg, th = self.config, self.thresholds
        target = self._target(target)
        found_by = {name: list(pvs) for name, pvs in (found_by or {}).items()}
        if found or target not in found_by:
            found_by[target] = list(found)
        found = found_by[target]
        scale, clean = self.scale_by[target], self.clean_by[target]
        others = [name for name in self.poolings if name != target]
        steps = min(cfg.steps, max_steps if max_steps is not None else cfg.steps)
        start = time.perf_counter()
        trigger, rows = self.initial_trigger(attempt)
        trigger.requires_grad_(True)
        optimizer = torch.optim.Adam([trigger], lr=cfg.lr)
        found_z = torch.stack([scale.normalise(f.to(self.device).float()) for f in found]) if found else None
        rng = np.random.default_rng([self.seed, attempt, 1])
        order = rng.permutation(self.train_idx)
        cursor = 0
        converged = False
        boosted_steps = 0
        best_distance, best_gap = -math.inf, math.inf
        record = AttemptRecord(
            attempt=attempt, outcome="", steps=0, seconds=0.0, init_rows=rows, pooling=target
        )
        candidates: dict[str, Candidate] | None = None
        checked_at = 0
        for step in range(1, steps + 1):
            if cursor + cfg.batch_size > len(order):
                order, cursor = rng.permutation(self.train_idx), 0
            index = order[cursor : cursor + cfg.batch_size]
            cursor += cfg.batch_size
            states, pool_mask = self.triggered_states(trigger, index)
            outputs = self._pool(states, pool_mask, target)
            z = scale.normalise(outputs)
            distance = normalised_mse(outputs, clean[index], scale)
            entropy = batch_entropy(z)
            # log(1 + D): far enough is far enough - see the module docstring.
            loss = -cfg.distance_coeff * torch.log1p(distance) - cfg.diversity_coeff * entropy
            if found_z is not None and cfg.repetition_coeff:
                nearest = ((z.unsqueeze(1) - found_z.unsqueeze(0)) ** 2).mean((0, 2)).min()
                loss = loss - cfg.repetition_coeff * torch.log1p(nearest)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # Reference adaptive lr: x boost while the largest gradient is below boost_grad, until
            # it first exceeds it ("converged"), then the base lr for good.
            if not converged and float(trigger.grad.abs().max()) < cfg.boost_grad:
                lr = cfg.lr * cfg.boost
                boosted_steps += 1
            else:
                converged = True
                lr = cfg.lr
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            if cfg.project:
                with torch.no_grad():
                    trigger.copy_(torch.maximum(torch.minimum(trigger, self.hi), self.lo))
            if on_step is not None:
                on_step()
            record.steps = step
            dist, gap = float(distance.detach()), math.log(z.shape[0]) - float(entropy.detach())
            best_distance = max(best_distance, dist)
            record.trace.append({"step": step, "distance": round(dist, 4), "gap": round(gap, 5), "lr": lr})
            if not accept_early:
                continue
            # Cheap pre-check on the training batch before paying for the verification pass; the
            # other watched vectors are read from the same forward pass.
            if step % cfg.check_every == 0 and (
                (dist >= th.min_distance and gap <= 2 * th.max_gap)
                or any(self._near_pv(states.detach(), pool_mask, name, index) for name in others)
            ):
                candidates, checked_at = self.evaluate_all(trigger.detach(), found_by), step
                candidate = candidates[target]
                reasons = candidate_reasons(candidate, th)
                if any(not candidate_reasons(c, th) for c in candidates.values()):
                    record.outcome = "pv"
                    break
                if candidate.overlap > th.max_overlap and len(reasons) == 1:
                    # A PV already kept, found again: this attempt has nothing new to give.
                    record.outcome = "duplicate"
                    break
            best_gap = min(best_gap, gap)
            if step >= cfg.patience and (
                best_distance < th.min_distance or best_gap > cfg.patience_gap_factor * th.max_gap
            ):
                # Reference: an attempt is abandoned when no PV appeared after 2 epochs. Here "no
                # PV in sight" = not yet far, or not within patience_gap_factor of collapsing.
                record.outcome = "abandoned"
                break
        if checked_at != record.steps or candidates is None:
            candidates = self.evaluate_all(trigger.detach(), found_by)
        candidate = candidates[target]
        reasons = candidate_reasons(candidate, th)
        passed = [name for name, c in candidates.items() if not candidate_reasons(c, th)]
        if not record.outcome:
            if accept_early and passed:
                record.outcome = "pv"
            else:
                record.outcome = "budget" if steps < cfg.steps else "rejected"
        record.pv_on = passed if record.outcome == "pv" else []
        record.vectors = {
            name: {
                "distance": c.distance,
                "gap": c.gap,
                "overlap": c.overlap,
                "in_range": c.in_range,
                "pv": name in record.pv_on,
            }
            for name, c in candidates.items()
        }
        record.reasons = reasons
        record.distance = candidate.distance
        record.gap = candidate.gap
        record.spread = candidate.spread
        record.overlap = candidate.overlap
        record.in_range = candidate.in_range
        record.max_abs_trigger = candidate.max_abs_trigger
        record.boosted_steps = boosted_steps
        record.seconds = time.perf_counter() - start
        return AttemptResult(record=record, candidate=candidate, candidates=candidates)

    def _near_pv(
        self, states: torch.Tensor, pool_mask: torch.Tensor, pooling: str, index: np.ndarray
    ) -> bool:
        """The pre-check of :meth:`attempt` for a watched vector other than the target (no gradient)."""
        th, scale = self.thresholds, self.scale_by[pooling]
        with torch.no_grad():
            outputs = self._pool(states, pool_mask, pooling)
            dist = float(normalised_mse(outputs, self.clean_by[pooling][index], scale))
            gap = math.log(outputs.shape[0]) - float(batch_entropy(scale.normalise(outputs)))
        return dist >= th.min_distance and gap <= 2 * th.max_gap

    def close(self) -> None:
        """Restore the encoder's ``requires_grad`` flags and training mode."""
        for param, flag in zip(self.encoder.parameters(), self._grad_flags, strict=True):
            param.requires_grad_(flag)
        self.encoder.train(self._was_training)


def legitimate_range(
    emb_min: torch.Tensor, emb_max: torch.Tensor, factor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds a soft-trigger value must respect: the reference ``[factor * min, factor * max]``.

    ``emb_min`` / ``emb_max`` are the embedding matrix's global extremes (0-d tensors, reference
    TOKEN variant) or its per-dimension extremes (``(hidden,)``, reference MASK variant). Scaling
    by ``factor`` widens a range only when ``min < 0 < max`` (true of real embedding matrices);
    any other range is widened around its centre by the same factor.
    """
    straddles = (emb_min < 0) & (emb_max > 0)
    centre, half = (emb_min + emb_max) / 2, (emb_max - emb_min) / 2
    lo = torch.where(straddles, factor * emb_min, centre - factor * half)
    hi = torch.where(straddles, factor * emb_max, centre + factor * half)
    return lo, hi
