"""RAP: robustness-aware perturbations (Yang et al., EMNLP 2021, "RAP: Robustness-Aware
Perturbations for Defending against Backdoor Attacks on NLP Models").

A backdoor makes the victim's target-class output robust: a triggered input keeps its target-class
probability under a perturbation that visibly lowers the probability of clean inputs. RAP builds
such a perturbation (§3): a rare word (reference "cf") inserted at the start of the input, whose
*word embedding* is optimised — everything else frozen — so that on clean inputs of the protected
(target) class the protected-class probability drops by an amount within ``[a, b]``
(``prob_range``, reference ``[-0.3, -0.1]`` as ``p(perturbed) - p(original)``). The loss (§3,
reference ``construct_rap_iter``) is

    scale * mean(relu(diff - high)) + mean(relu(low - diff)),   diff = p_rap(t) - p(t),

and after each step the embedding is rescaled to its original norm. At inference the score says
how *little* the protected-class probability moves (higher = more suspicious, the detector
contract), and the threshold is the clean-score quantile at the target FRR (§4: FRR 0.5–5 % on
clean held-out data). The reference rule is one-sided, ``score = p_rap(t) - p(t) = -drop``
(``two_sided=False``); the default here is two-sided, ``score = -|p_rap(t) - p(t)|``: a clean
input whose probability *rises* under the word is not robust either, but the one-sided rule ranks
it above every triggered input. The two agree once the word has converged (every clean drop in
``[a, b]``); where it has not, they do not. Measured on the tiny test victim (``rap_word="mn"``,
every class protected, seeds 0-1, 240 construction and 60 calibration texts, 43-45 % of the
construction inputs in range after 5 epochs): AUROC 0.85 one-sided and 0.99 two-sided; at the
threshold calibrated for 10 % FRR the one-sided rule caught 0 % of the triggered inputs (the top
clean scores are rises of +0.03 or more, triggered inputs sit at ``|diff| < 0.01``), the
two-sided one 99-100 %.

The victim's weights are never changed: the learned vector lives in the detector
(``embedding_``, saved as ``rap.safetensors``) and enters the victim through a forward hook on its
word-embedding layer that replaces the output at the inserted word's position only, for the
duration of one call (the hook is removed in a ``finally``). Mathematically this is the
reference's edited embedding row, with one difference: an input that already contains the RAP word
keeps that word's own embedding at its own position (the reference replaces every occurrence, so a
RAP word equal to the attacker's trigger — the references' "cf" is also BadNets' default trigger —
would rewrite the trigger).

Protected class (``target_label``): RAP protects one label known to the defender (the reference's
``--protect_label``; OpenBackdoor reads it from the poisoned data); give it when it is known (the
attacker's target in a poison record). ``None`` (default) protects *every* class: one embedding
per class ``c`` is learned on the clean inputs the victim predicts as ``c``, and an input is scored
with the embedding of the class the victim predicts for it. This needs no knowledge of the target
and is the reference, class by class; for the target class it is exactly the reference's
construction. (A single embedding asked to lower the predicted-class probability of every clean
input, whatever its class, was tried first: on the tiny test victim its AUROC was 0.56-0.62,
against 0.84-0.85 for one embedding per class and 0.85-0.86 with the true target, one-sided
scores; two-sided: 0.99 per class and with the true target.) With a fixed
``target_label``, inputs the victim does not assign to it get the floor score
:data:`NOT_PROTECTED_SCORE` (the backdoor did not fire; the reference leaves such inputs out).

The RAP word should not be the attacker's trigger: its embedding is the starting point, and a
trigger's embedding flips every clean input to the target with saturated probabilities, where the
loss has almost no gradient. With the references' SGD the word then stays the trigger and the
result measures the coincidence, not RAP: on the tiny victim with a "cf" backdoor,
``rap_word="cf"`` with ``optimizer="reference"`` gave AUROC 0.46-0.47 one-sided (rises rank
first) and 1.00 two-sided (the trigger itself moves every clean input and no triggered one).
Adam's normalised steps leave the saturated start (0.83-0.84 one-sided, 0.99 two-sided, as with
"mn"). ``fit`` warns when inserting the bare word flips more than :data:`MAX_FLIPPED` of the clean
predictions; benchmarks should pick a word that is none of the attack's triggers (the grid
refuses a RAP entry whose word is a trigger of one of its attacks). "cf" is also the default
trigger of BadNets here and in OpenBackdoor, whose RAP defender uses "cf" too and edits the
shared row, so there RAP rewrites the trigger itself (which may be behind OpenBackdoor issue #24,
RAP's FAR near 1.0 on SST-2).

Default word: "jj" (:data:`DEFAULT_RAP_WORD`), not the references' "cf"
(:data:`PAPER_RAP_WORD`). "cf" is our default BadNets trigger and one of the POR / NeuBA
triggers, and "mn" the clean-label one (:mod:`peftshield.attacks.config`: every default rare-word
trigger is one of ``cf mn tq qt mm pt``), so with the references' word a default RAP run against a
default attack would measure the coincidence above. "jj" is none of them, a rare word, and one
token of ``minilm``'s (uncased BERT WordPiece) vocabulary (id 29017 of 30522, "JJ" too); a
victim whose vocabulary splits it needs another word (``fit`` says so).

Where the paper's code (lancopku/RAP), OpenBackdoor (thunlp) and this implementation differ:

- Construction data: the RAP code uses the clean held-out texts whose *label* is the protected
  one; OpenBackdoor uses all clean dev texts, whatever their label. Here: the held-out texts the
  victim *predicts* as the protected class (no labels needed; the same set on a correct victim).
- The word's embedding enters through a hook at the inserted position only (above), and one
  embedding per class is learned when the target is unknown (above).
- Optimiser: both references update the row with ``weight -= lr * grad`` and never zero the
  gradient, so each step applies the *sum* of all gradients so far (the RAP code says it follows
  embedding poisoning for faster convergence); that is ``optimizer="reference"`` here. The default
  is Adam at the same ``lr`` on the vector alone (its gradient is taken with
  ``torch.autograd.grad``, so no victim weight receives one). Why: the row's gradient is small
  against its norm (measured on the BadNets ``minilm`` of ``bench/work``: gradient norm 0.2-0.35,
  row norm 1.28), so SGD at lr 1e-2 moves it by well under 1 % per step, and how far the
  accumulated steps go depends on how many there are (quadratically). Measured there (2 CPU
  cores, 80 construction texts from the amazon dev split, 3 epochs, "mn", scored on 80 clean and
  their 40-odd triggered non-target test copies): loss per class 0.094 -> 0.089 and
  0.082 -> 0.071, in range 16 %, AUROC 0.903 with the reference rule; 0.092 -> 0.075 and
  0.081 -> 0.051, 26 %, 0.943 with Adam (plain SGD without accumulation, 120 texts: 0.103 -> 0.101
  and 0.076 -> 0.072, 7 %, 0.894). Those scores read test copies; the choice was remade on the
  dev split by ``bench/grids/rap_optimizer.json`` (docs/design.md, "Choosing on the dev split"):
  Adam kept it, mean dev AUROC over three seeds 0.722 against 0.621 for the reference rule
  (bench/README.md, "RAP optimiser").
- The RAP code constructs with the model in training mode (dropout on); OpenBackdoor and this code
  use evaluation mode (deterministic).
- Threshold: both references calibrate on the same texts they construct on, over inputs predicted
  as the protected class (``np.nanpercentile`` at ``frr * 100``; the RAP code calibrates on inputs
  with ``p > 0.5``, binary tasks). Here the threshold is calibrated on a held-out part of the clean
  data (``calibration_fraction``) over *all* its inputs, so the target FRR is the share of all
  clean inputs rejected — the guard's FRR (:mod:`peftshield.evaluation.defended`).
- The score is two-sided by default (above).
- The default word is "jj", not "cf" (above).
- Defaults: ``lr`` 1e-2 and 5 epochs, batch 32 (both references, with Adam here), ``scale`` 1,
  range ``[-0.3, -0.1]``. ``in_range_rate_`` (the reference's "success rate" on the construction
  texts) and ``clean_drop_mean_`` say how far the construction got, and ``fit`` warns when fewer
  than half of the construction inputs reach the range. On the tiny test victim neither more
  epochs (20: same in-range rate), plain SGD, accumulated gradients nor Adam changed the outcome
  (in range 34-48 %, AUROC within 0.03): one word of the original embedding norm cannot move every
  clean input by the same amount there.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from peftshield.data.records import Example
from peftshield.defenses.base import CALIBRATED
from peftshield.defenses.victim import VictimDetector
from peftshield.errors import PeftshieldError
from peftshield.utils.validate import require_positive

#: The RAP word of the paper's scripts and OpenBackdoor (also our default BadNets / POR trigger).
PAPER_RAP_WORD = "cf"
#: Our default RAP word: rare, one minilm token, none of the library's default attack triggers.
DEFAULT_RAP_WORD = "jj"
#: Reference range of ``p_rap(t) - p(t)`` on clean inputs (the code writes it as "-0.1 -0.3").
PAPER_PROB_RANGE = (-0.3, -0.1)
#: Score of an input the victim does not assign to the protected class (below any ``-drop``).
NOT_PROTECTED_SCORE = -2.0
#: Below this share of construction inputs in range, ``fit`` warns that the word did not converge.
MIN_IN_RANGE = 0.5
#: Above this share of clean predictions flipped by the bare RAP word, ``fit`` warns (a trigger?).
MAX_FLIPPED = 0.2
RAP_STATE_FILE = "rap.safetensors"
#: How the embedding learns: Adam (default), or the references' SGD with accumulated gradients.
OPTIMIZERS = ("adam", "reference")


def insert_rap_word(texts: Sequence[str], word: str) -> list[str]:
    """Insert the RAP word at the start of each text (reference: always the first position)."""
    return [f"{word} {text}" for text in texts]


def rap_loss(diff: Any, low: float, high: float, scale: float) -> Any:
    """RAP loss (Yang et al. 2021, §3) on ``diff = p_rap(t) - p(t)``: zero inside ``[low, high]``."""
    import torch

    return scale * torch.relu(diff - high).mean() + torch.relu(low - diff).mean()


class RAPDetector(VictimDetector):
    """RAP (Yang et al., EMNLP 2021): a learned word lowers clean inputs' protected-class probability.

    Parameters (stored as given, checked by :meth:`check_params` when fitting):

    - ``victim``: the classifier to protect (forms: :mod:`peftshield.defenses.victim`).
    - ``target_label``: the protected class, or ``None`` (default) to protect every class with its
      own embedding (see the module docstring).
    - ``rap_word``: the perturbation word, one token of the victim's vocabulary (default "jj";
      reference "cf", which is also our default BadNets trigger: see the module docstring).
    - ``prob_range``: ``(low, high)`` range for ``p_rap(t) - p(t)`` on clean inputs (reference
      ``(-0.3, -0.1)``); ``scale``: weight of the "not lowered enough" term (reference 1).
    - ``lr``, ``epochs``, ``train_batch_size``: the embedding's optimisation (reference 1e-2, 5,
      32); ``optimizer``: ``"adam"`` (default) or ``"reference"`` (SGD whose gradients accumulate,
      as in both reference codes; see the module docstring).
    - ``two_sided``: score ``-|p_rap(t) - p(t)|`` (default) or the reference's ``p_rap(t) - p(t)``.
    - ``threshold``: ``"calibrated"`` (default) or a fixed number on the score scale (``[-1, 0]``
      two-sided, ``[-1, 1]`` one-sided); ``target_frr``; ``calibration_fraction``: share of the clean
      texts held out of the construction to calibrate the threshold.
    - ``seed``, ``device``, ``batch_size`` (scoring), ``max_length`` (default: the victim's),
      ``base`` (the base model of a plain-peft adapter victim, overriding its ``adapter_config.json``).

    Fitted attributes: ``threshold_``, ``backbone_fingerprint_``, ``victim_fingerprint_``,
    ``embedding_`` (one learned vector per protected class, shape ``(n, hidden)``; saved in
    ``rap.safetensors``), ``protected_classes_``, ``rap_token_id_``, ``embedding_norm_``,
    ``class_stats_`` (per class: construction inputs, in-range rate, mean drop, loss per epoch),
    ``n_construct_``, ``in_range_rate_`` and ``clean_drop_mean_`` (over all construction inputs),
    ``calibration_frr_``, ``n_calibration_``, ``fit_seconds_``.
    """

    name: ClassVar[str] = "rap"
    _fitted_attributes: ClassVar[tuple[str, ...]] = (
        *VictimDetector._fitted_attributes,
        "rap_token_id_",
        "protected_classes_",
        "class_stats_",
        "embedding_norm_",
        "n_construct_",
        "in_range_rate_",
        "clean_drop_mean_",
        "fit_seconds_",
    )

    def __init__(
        self,
        victim: Any,
        target_label: int | None = None,
        rap_word: str = DEFAULT_RAP_WORD,
        prob_range: Sequence[float] = PAPER_PROB_RANGE,
        scale: float = 1.0,
        lr: float = 1e-2,
        epochs: int = 5,
        train_batch_size: int = 32,
        optimizer: str = "adam",
        two_sided: bool = True,
        threshold: float | str = CALIBRATED,
        target_frr: float = 0.05,
        calibration_fraction: float = 0.2,
        seed: int = 0,
        device: str = "cpu",
        batch_size: int = 128,
        max_length: int | None = None,
        base: str | None = None,
    ) -> None:
        self.victim = victim
        self.target_label = target_label
        self.rap_word = rap_word
        self.prob_range = prob_range
        self.scale = scale
        self.lr = lr
        self.epochs = epochs
        self.train_batch_size = train_batch_size
        self.optimizer = optimizer
        self.two_sided = two_sided
        self.threshold = threshold
        self.target_frr = target_frr
        self.calibration_fraction = calibration_fraction
        self.seed = seed
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.base = base

    # -- parameters --------------------------------------------------------------------------------

    def check_params(self) -> None:
        """Validate the parameters before any model is loaded."""
        super().check_params()

        def number(value: Any) -> bool:
            return not isinstance(value, bool) and isinstance(value, int | float)

        def count(value: Any) -> bool:
            return not isinstance(value, bool) and isinstance(value, int) and value >= 1

        # the held-out split (calibration_fraction, seed) is checked by VictimDetector
        if self.target_label is not None and not (count(self.target_label) or self.target_label == 0):
            raise PeftshieldError(
                f"target_label must be a class index >= 0 or None, got {self.target_label!r}"
            )
        if not isinstance(self.rap_word, str) or len(self.rap_word.split()) != 1:
            raise PeftshieldError(f"rap_word must be one word, got {self.rap_word!r}")
        pr = self.prob_range
        if not isinstance(pr, list | tuple) or len(pr) != 2 or not all(number(v) for v in pr):
            raise PeftshieldError(f"prob_range must be two numbers (low, high), got {pr!r}")
        if not -1.0 <= float(pr[0]) < float(pr[1]) <= 0.0:
            raise PeftshieldError(
                f"prob_range (low, high) must satisfy -1 <= low < high <= 0 (a drop of the protected "
                f"class probability; reference (-0.3, -0.1)), got {tuple(pr)}"
            )
        require_positive("", "scale", self.scale)
        require_positive("", "lr", self.lr)
        require_positive("", "epochs", self.epochs, integer=True)
        require_positive("", "train_batch_size", self.train_batch_size, integer=True)
        if self.optimizer not in OPTIMIZERS:
            raise PeftshieldError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not isinstance(self.two_sided, bool):
            raise PeftshieldError(f"two_sided must be true or false, got {self.two_sided!r}")

    # -- the RAP word --------------------------------------------------------------------------------

    def _rap_token(self, tokenizer: Any) -> int:
        """The vocabulary id of the RAP word; it must be a single token (the reference uses ids[1])."""
        ids = tokenizer(self.rap_word, add_special_tokens=False)["input_ids"]
        unk = getattr(tokenizer, "unk_token_id", None)
        if len(ids) != 1 or (unk is not None and ids[0] == unk):
            raise PeftshieldError(
                f"rap_word {self.rap_word!r} is {len(ids)} tokens of the victim's vocabulary"
                f"{' (unknown)' if unk is not None and unk in ids else ''}; choose a word that is one known "
                f"token and none of the attack's triggers (the default {DEFAULT_RAP_WORD!r} is one token "
                "of minilm's vocabulary)"
            )
        return int(ids[0])

    @contextmanager
    def _inserted(self, vector: Any) -> Iterator[None]:
        """While active, the first occurrence of the RAP token in each input embeds as ``vector``.

        A forward hook on the victim's word-embedding layer; the victim's weights are not touched
        and the hook is removed on exit, whatever happens.
        """
        import torch

        victim = self._loaded_victim()
        layer = victim.model.get_input_embeddings()
        token = int(self.rap_token_id_)

        def hook(module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor:
            ids = args[0] if args else None
            if ids is None or ids.shape != output.shape[:-1]:
                return output
            hit = ids == token
            first = hit & (hit.cumsum(dim=-1) == 1)  # the word we inserted at the start
            if not bool(first.any()):
                return output
            return torch.where(first.unsqueeze(-1), vector.to(output.device, output.dtype), output)

        handle = layer.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    # -- fit -------------------------------------------------------------------------------------------

    def _probs(self, texts: Sequence[str], vector: Any = None) -> np.ndarray:
        """Victim softmax for ``texts``; with ``vector``, the RAP word is inserted and embedded as it."""
        from peftshield.models.inference import softmax

        if vector is None:
            return softmax(self.victim_logits(texts, warn=False))
        with self._inserted(vector):
            return softmax(self.victim_logits(insert_rap_word(texts, self.rap_word), warn=False))

    def _classes(self, n_classes: int) -> list[int]:
        """The protected classes: ``[target_label]``, or every class."""
        if self.target_label is None:
            return list(range(n_classes))
        if self.target_label >= n_classes:
            raise PeftshieldError(
                f"target_label {self.target_label} is out of range for a {n_classes}-class victim"
            )
        return [int(self.target_label)]

    def _construct(self, texts: list[str], base: np.ndarray, cls: int, original: Any, seed: int) -> tuple:
        """Optimise one RAP embedding for class ``cls`` on ``texts`` the victim predicts as ``cls`` (§3).

        ``base`` holds their protected-class probabilities without the word. Adam (or the
        references' accumulated SGD) on the vector, rescaled to the original row's norm after each
        step. Returns (vector, loss history).
        """
        import torch

        from peftshield.models.inference import tokenize_batch

        victim = self.victim_
        model = victim.model
        device = original.device
        base_t = torch.tensor(base, dtype=torch.float32, device=device)
        low, high = (float(v) for v in self.prob_range)
        vector = original.clone().requires_grad_(True)
        adam = torch.optim.Adam([vector], lr=float(self.lr)) if self.optimizer == "adam" else None
        accumulated = torch.zeros_like(vector)
        order = np.random.default_rng([int(seed) & 0xFFFFFFFF, cls]).permutation(len(texts))
        size = int(self.train_batch_size)
        history = []
        for _ in range(int(self.epochs)):
            total = 0.0
            for first in range(0, len(order), size):
                idx = order[first : first + size]
                batch = tokenize_batch(
                    victim.tokenizer,
                    insert_rap_word([texts[i] for i in idx], self.rap_word),
                    victim.max_length,
                    device,
                )
                with self._inserted(vector), torch.enable_grad():
                    probs = torch.softmax(model(**batch)["logits"].float(), dim=-1)
                    loss = rap_loss(probs[:, cls] - base_t[idx], low, high, float(self.scale))
                    # Only the vector gets a gradient: no victim weight is touched.
                    (grad,) = torch.autograd.grad(loss, [vector])
                with torch.no_grad():
                    if adam is not None:
                        vector.grad = grad
                        adam.step()
                        vector.grad = None
                    else:  # the references: the gradient is never zeroed, so the steps accumulate
                        accumulated += grad
                        vector -= float(self.lr) * accumulated
                    vector *= self.embedding_norm_ / vector.norm().clamp_min(1e-12)
                total += float(loss.detach()) * len(idx)
            history.append(total / len(order))
        return vector.detach(), history

    def fit(self, clean: Sequence[Example] | Sequence[str], *, progress: bool | None = False) -> Self:
        """Learn the RAP word's embedding(s) on clean texts and calibrate the threshold (RAP §3, §4).

        ``clean``: defender-owned clean texts (or :class:`Example` records; labels unused). A
        seeded ``calibration_fraction`` of them is held out for the threshold; the rest construct
        the word: for each protected class, the texts the victim assigns to that class.
        ``progress`` is accepted for a uniform interface and ignored.
        """
        import torch

        pool, calibration = self._split_clean(clean)
        if not pool:
            raise PeftshieldError("rap: no clean text left to construct the RAP word; give more clean texts")
        start = time.perf_counter()
        victim = self._attach_victim()
        self.rap_token_id_ = self._rap_token(victim.tokenizer)
        layer = victim.model.get_input_embeddings()
        original = layer.weight[self.rap_token_id_].detach().clone().float()
        self.embedding_norm_ = float(original.norm())
        self.threshold_ = 0.0  # provisional: victim_logits() needs a fitted detector

        probs = self._probs(pool)
        predicted = probs.argmax(-1)
        classes = self._classes(probs.shape[1])
        self._warn_if_trigger(pool, probs, original)
        model = victim.model
        was_training = model.training
        model.eval()
        vectors, protected, stats = [], [], []
        try:
            for cls in classes:
                members = np.flatnonzero(predicted == cls)
                if members.size == 0:
                    continue
                chosen = [pool[i] for i in members]
                vector, history = self._construct(chosen, probs[members, cls], cls, original, int(self.seed))
                vectors.append(vector.cpu())
                protected.append(cls)
                drops = probs[members, cls] - self._probs(chosen, vector)[:, cls]
                stats.append(
                    {
                        "class": cls,
                        "n": int(members.size),
                        "in_range_rate": float(
                            np.mean((drops >= -self.prob_range[1]) & (drops <= -self.prob_range[0]))
                        ),
                        "drop_mean": float(drops.mean()),
                        "loss": history,
                    }
                )
        finally:
            model.train(was_training)
        if not vectors:
            raise PeftshieldError(
                f"rap: the victim predicts class {self.target_label} for none of the {len(pool)} clean "
                "construction texts; give more clean texts of that class"
            )
        self.embedding_ = torch.stack(vectors).contiguous()
        self.protected_classes_ = protected
        self.class_stats_ = stats
        self.n_construct_ = int(sum(s["n"] for s in stats))
        self.in_range_rate_ = float(sum(s["in_range_rate"] * s["n"] for s in stats) / self.n_construct_)
        self.clean_drop_mean_ = float(sum(s["drop_mean"] * s["n"] for s in stats) / self.n_construct_)
        scores = self._score(calibration) if calibration else None
        self._set_threshold(scores)
        self.fit_seconds_ = time.perf_counter() - start
        if self.in_range_rate_ < MIN_IN_RANGE:
            warnings.warn(
                f"rap: only {100 * self.in_range_rate_:.0f}% of the {self.n_construct_} construction inputs "
                f"have their protected-class probability lowered by {-self.prob_range[1]:g}.."
                f"{-self.prob_range[0]:g} (mean drop {self.clean_drop_mean_:.3f}); the RAP word has not "
                "converged: raise epochs or lr",
                stacklevel=2,
            )
        return self

    def _warn_if_trigger(self, texts: list[str], probs: np.ndarray, original: Any) -> None:
        """Warn when inserting the RAP word itself flips many clean predictions: it may be a trigger."""
        flipped = float(np.mean(self._probs(texts, original).argmax(-1) != probs.argmax(-1)))
        if flipped > MAX_FLIPPED:
            warnings.warn(
                f"rap: inserting the RAP word {self.rap_word!r} flips the victim's prediction on "
                f"{100 * flipped:.0f}% of the clean texts: it may be a backdoor trigger of this victim, and "
                "its embedding a poor start; choose another rare word (rap_word)",
                stacklevel=3,
            )

    # -- score -----------------------------------------------------------------------------------------

    def _diff(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``p_rap(t) - p(t)`` per text, ``t`` its predicted class, and whether ``t`` is protected."""
        probs = self._probs(texts)
        predicted = probs.argmax(-1)
        diff = np.zeros(len(texts))
        covered = np.zeros(len(texts), dtype=bool)
        for row, cls in enumerate(self.protected_classes_):
            members = np.flatnonzero(predicted == cls)
            if members.size:
                rap = self._probs([texts[i] for i in members], self.embedding_[row])
                diff[members] = rap[:, cls] - probs[members, cls]
                covered[members] = True
        return diff, covered

    def _score(self, texts: list[str]) -> np.ndarray:
        """How little the protected probability moves under the RAP word; floor if not protected.

        Two-sided (default): ``-|p_rap(t) - p(t)|``; one-sided (the reference): ``p_rap(t) - p(t)``.
        """
        self._warn_truncation(texts)
        diff, covered = self._diff(texts)
        scores = -np.abs(diff) if self.two_sided else diff
        return np.where(covered, scores, NOT_PROTECTED_SCORE)

    @classmethod
    def _from_record(
        cls, record: dict[str, Any], folder: Path, *, device: str | None = None, victim: Any = None
    ) -> Self:
        """Reload (see :meth:`VictimDetector._from_record`); JSON turned ``prob_range`` into a list."""
        params = dict(record["params"])
        if isinstance(params.get("prob_range"), list):
            params["prob_range"] = tuple(params["prob_range"])
        return super()._from_record({**record, "params": params}, folder, device=device, victim=victim)

    # -- persistence -----------------------------------------------------------------------------------

    def _save_state(self, folder: Path) -> None:
        """Write the learned RAP embedding (the victim is not copied)."""
        from safetensors.torch import save_file

        save_file({"embedding": self.embedding_.float().contiguous()}, str(folder / RAP_STATE_FILE))

    def _restore_state(self, folder: Path) -> None:
        """Read the learned embedding and check it against the victim's embedding width and token."""
        from safetensors.torch import load_file

        path = folder / RAP_STATE_FILE
        if not path.is_file():
            raise PeftshieldError(f"{folder} has no {RAP_STATE_FILE}")
        state = load_file(str(path))
        if "embedding" not in state:
            raise PeftshieldError(f"{path} holds no 'embedding' tensor")
        vectors = state["embedding"]
        layer = self.victim_.model.get_input_embeddings()
        n = len(getattr(self, "protected_classes_", []))
        if vectors.ndim != 2 or vectors.shape != (n, layer.weight.shape[1]):
            raise PeftshieldError(
                f"{path}: the RAP embeddings have shape {tuple(vectors.shape)}; expected {n} rows (one per "
                f"protected class) of the victim's embedding width {layer.weight.shape[1]}"
            )
        if self._rap_token(self.victim_.tokenizer) != self.rap_token_id_:
            raise PeftshieldError(f"{folder}: the victim's tokenizer maps {self.rap_word!r} to another id")
        self.embedding_ = vectors
