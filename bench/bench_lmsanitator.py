"""LMSanitator benchmark (issue 5): a model zoo scanned for task-agnostic backdoors, then guarded victims.

What it measures.

1. **Zoo tier** (one row per model). The script builds a zoo of ``minilm`` backbones, each cached
   by content under ``bench/work/zoo/<name>-<hash>`` (the hash covers the recipe, the backbone
   and the seed), and scans every one with ``peftshield.defenses.lmsanitator.scan.scan`` at the
   library defaults (mining config, filter thresholds, 30 attempts, 300 steps, stop at the first
   PV; thresholds are NOT tuned on this zoo) on the ``wiki`` sentences. Per model: ground-truth
   ``label`` (``backdoored`` | ``clean``), ``verdict``, ``seconds`` (scan time after loading),
   attempts, steps, PVs found and, for backdoored models, PV recovery against the planted PVs
   (``scan.pv_recovery``: sign agreement > 0.8, the library's evaluate/monitor rule). Summary:
   detection accuracy, FPR, FNR (``evaluation.metrics.scan_metrics``), the distribution of scan
   times (mean, median, max), and the recovery rate. A first-PV scan finds one PV, so its recovery
   is at most 1/n_triggers; the victim tier's search-mode scans measure recovery of every PV.

   Backdoored models (22; recipes in :func:`real_zoo`): POR and NeuBA
   (``peftshield.attacks.task_agnostic``) with the library's recipes except the budget - 100 steps
   (the library's default is 300; the scan already finds PVs after 100), two models at 50 - with
   trigger sets of 1, 2, 3 and 6 words (subsets of ``cf mn tq qt mm pt`` and other rare words
   ``bb jj xv``, ``zx vq``, the last two two-token words on ``minilm``), the three PV families
   (balanced, random, orthogonal) and seeds 0-4. Each row also records how well the attack took
   (the attacker's probe: mean sign agreement of triggered outputs with their PVs and the share
   of texts over the monitor's 0.8), so a clean verdict on a weak backdoor can be told apart.

   Clean models (22): the original ``minilm``; copies fully fine-tuned on 400 examples of each
   labelled corpus (movies, tweets, amazon, nyt) for one epoch with seeds 0-2 (the seed also
   picks the examples), plus two on 1,000 examples for two epochs, the encoder then saved as a
   bare backbone; and copies continued-trained on clean ``wiki`` with two honest clean objectives
   (``minilm`` has no MLM head): ``simcse`` - unsupervised SimCSE (Gao et al., EMNLP 2021: the same
   sentence encoded twice with dropout, InfoNCE over the batch at temperature 0.05; the
   contrastive objective the all-MiniLM family was trained with) and ``denoise`` - the
   task-agnostic trainer's reference-preservation term alone, with noise: the model reads the
   sentence with 15 % of its words deleted and is pulled (MSE) to the frozen original's output
   of the full sentence. Every clean row records its output drift from the original (the
   attacks' ``clean_drift``: 0 = unchanged, 1 = as far as one text is from another).

2. **Victim tier** (after the zoo; ``--victim-models``, default three backdoored backbones). For
   each: a search-mode scan (``stop_at_first=False``, 30 attempts, ``--search-steps`` 600: a
   first-PV scan watches one trigger only, see ``lmsanitator/monitor.py``), then a prefix-tuned
   (P-tuning v2) and a LoRA victim on clean ``movies`` (library defaults, ``--max-train 1500``,
   ``--max-eval 500``). One row per victim and threshold: the monitor fitted with the scan's PVs at
   ``t_match@0.8`` (paper) and ``calibrated@0.02`` (FRR 0.02 on the clean dev split). Measured on
   the movies test split with ``lmsanitator.evaluate.evaluate_defense``: CACC, ``asr_lms``
   (undefended, LMSanitator convention), ``defended_asr`` (Type I + Type II through the real
   purge), ``frr`` on clean test inputs, recall / AUROC; and ``overhead_ratio``: the monitor's
   inference time over undefended inference on the clean test texts, the median of 3 interleaved
   repeats measured in the same run. The ``t_match@0.8`` row also carries an oracle monitor built
   from the planted PVs (``oracle_*``), which tells mining failures from monitor failures.

Order: clean and backdoored models alternate (any prefix of a run has both labels), cheapest
first within each label; then the victim tier. ``--plan`` prints the order with a time estimate.

Run (resumable; a killed run is started again and skips finished rows; built models, scans and
victims are reused from ``bench/work``)::

    .venv/bin/python bench/bench_lmsanitator.py 2>&1 | tee bench/logs/lmsanitator.log
    .venv/bin/python bench/bench_lmsanitator.py --plan          # order, recipes, time estimate
    .venv/bin/python bench/bench_lmsanitator.py --report        # tables + summary of what is done
    .venv/bin/python bench/bench_lmsanitator.py --smoke         # whole pipeline on a tiny BERT, ~1 min
    .venv/bin/python bench/bench_lmsanitator.py --limit-models 10 --tiers zoo

Cost (``--plan``; unloaded 2-core CPU, from the per-step costs measured in docs/design.md and issue 5):
about 3 h for the zoo (a clean scan spends its 300 steps, ~3.7 min; a backdoored one stops at its
first PV, ~1 min; builds 0.5-2.5 min) and 40 min for the victim tier.

Options: ``--limit-models N`` (the first N zoo models of the order; the victim tier still builds
its backbones when the zoo part has not), ``--tiers zoo,victims``,
``--victim-models`` (zoo names), ``--victim-methods prefix,lora``, ``--search-steps``,
``--max-train``/``--max-eval`` (victim data), ``--seed`` (victims), ``--scan-seed``,
``--device auto``, ``--fresh`` (discard earlier result rows, not ``bench/work``).

Results: ``bench/results/lmsanitator.json`` (docs/design.md "Benchmark result files"); rows ``cell:
zoo`` (keys ``label``, ``verdict``, ``seconds``, ...), ``cell: search-scan`` and ``cell: victim``
(``asr_lms``, ``defended_asr``, ``frr``, ``overhead_ratio``, ``threshold``). A failed row has
``error`` and is retried on the next run. ``--smoke`` runs the same code on a tiny random BERT and
toy texts, with the tests' tiny-model mining thresholds (the library's are set for ``minilm``): its
numbers test the pipeline, not the method.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import ResultFile  # noqa: E402
from bench_retention import (  # noqa: E402
    EVAL_SECONDS_PER_TEXT,
    POISON_STEP_SECONDS,
    STEP_SECONDS,
    Setup,
    _toy,
)

from peftshield.data.records import Splits  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "lmsanitator.json"
WORK = HERE / "work"

LABELS = ("clean", "backdoored")
THRESHOLDS = ("t_match@0.8", "calibrated@0.02")
DEFAULT_VICTIM_MODELS = "por-6w-balanced-s0,neuba-6w-balanced-s0,por-6w-orthogonal-s0"
SMOKE_VICTIM_MODELS = "por-2w-balanced-s0"

# Rough costs on an unloaded 2-core CPU, for --plan only (minilm; see the module docstring).
MINING_STEP_SECONDS = 0.7  # issue 5: 26 s for ~40 steps, 75 s for ~105 steps (batch 32 x 48 tokens)
SCAN_FIXED_SECONDS = 15.0  # loading the model, the clean outputs of 288 texts, verification passes
BACKDOORED_SCAN_STEPS = 60  # a first PV after ~40 steps, sometimes a second attempt
SIMCSE_STEP_SECONDS = 2.4  # a full-FT step on 2 x 32 texts
DENOISE_STEP_SECONDS = POISON_STEP_SECONDS  # a full-FT step plus a reference forward
LOAD_SECONDS = 5.0
PURGE_TEXTS_PER_TEST_TEXT = 4.0  # purge candidates per test text (flagged ones x distinct words)

# Smoke: the tests' tiny-model mining settings (tests/test_lmsanitator.py).
SMOKE_MINING = {
    "n_texts": 128,
    "n_verify": 32,
    "batch_size": 32,
    "max_length": 24,
    "lr": 1e-2,
    "steps": 40,
    "patience": 15,
}
SMOKE_THRESHOLDS = {"max_gap": 0.05, "min_distance": 20.0}


# --------------------------------------------------------------------------------------------
# The zoo


@dataclass(frozen=True)
class ZooModel:
    """One zoo backbone: how it is built (``kind`` + ``recipe``) and its ground-truth label."""

    name: str
    label: str  # "backdoored" | "clean"
    kind: str  # original | por | neuba | finetune | simcse | denoise
    seed: int = 0
    recipe: dict = field(default_factory=dict, compare=False, hash=False)


def _attack(attack: str, words: list[str], family: str, seed: int, steps: int = 100) -> ZooModel:
    tag = {6: "6w", 3: "3w", 2: "2w", 1: "1w"}[len(words)]
    if not set(words) <= {"cf", "mn", "tq", "qt", "mm", "pt"}:
        tag = f"alt{len(words)}"
    name = f"{attack}-{tag}-{family}" + ("" if steps == 100 else f"-{steps}steps") + f"-s{seed}"
    recipe = {"triggers": list(words), "pv_family": family, "steps": steps, "log_every": 50}
    return ZooModel(name, "backdoored", attack, seed, recipe)


SIX = ["cf", "mn", "tq", "qt", "mm", "pt"]


def real_zoo() -> list[ZooModel]:
    """The minilm zoo: 22 backdoored and 22 clean backbones (module docstring)."""
    backdoored = [
        _attack("por", SIX, "balanced", 0),
        _attack("por", SIX, "balanced", 1),
        _attack("por", ["cf", "mn"], "balanced", 0),
        _attack("por", ["tq"], "balanced", 0),
        _attack("por", ["qt", "mm", "pt"], "random", 0),
        _attack("por", SIX, "random", 1),
        _attack("por", SIX, "orthogonal", 0),
        _attack("por", ["cf", "mn", "tq"], "orthogonal", 2),
        _attack("por", ["bb", "jj", "xv"], "balanced", 0),
        _attack("por", ["zx", "vq"], "random", 3),
        _attack("por", SIX, "balanced", 2, steps=50),
        _attack("por", ["mn", "pt"], "random", 4, steps=50),
        _attack("neuba", SIX, "balanced", 0),
        _attack("neuba", SIX, "balanced", 1),
        _attack("neuba", ["cf", "mn"], "balanced", 0),
        _attack("neuba", ["pt"], "balanced", 2),
        _attack("neuba", SIX, "random", 0),
        _attack("neuba", ["tq", "qt", "mm"], "random", 1),
        _attack("neuba", SIX, "orthogonal", 0),
        _attack("neuba", ["bb", "jj", "xv"], "orthogonal", 1),
        _attack("neuba", ["zx", "vq"], "balanced", 3),
        _attack("neuba", SIX, "balanced", 2, steps=50),
    ]
    clean = [ZooModel("original", "clean", "original")]
    for corpus in ("movies", "tweets", "amazon", "nyt"):
        for seed in (0, 1, 2):
            recipe = {"corpus": corpus, "n_train": 400, "epochs": 1, "lr": 5e-5, "head_lr": 1e-3}
            clean.append(ZooModel(f"ft-{corpus}-s{seed}", "clean", "finetune", seed, recipe))
    for corpus in ("movies", "amazon"):
        recipe = {"corpus": corpus, "n_train": 1000, "epochs": 2, "lr": 5e-5, "head_lr": 1e-3}
        clean.append(ZooModel(f"ft-{corpus}-long-s0", "clean", "finetune", 0, recipe))
    simcse = {"steps": 50, "lr": 3e-5, "batch_size": 32, "temperature": 0.05, "max_length": 64}
    for seed in (0, 1, 2):
        clean.append(ZooModel(f"simcse-s{seed}", "clean", "simcse", seed, dict(simcse)))
    clean.append(ZooModel("simcse-lr1e-4-s0", "clean", "simcse", 0, {**simcse, "lr": 1e-4}))
    denoise = {"steps": 100, "lr": 3e-5, "batch_size": 32, "drop": 0.15, "max_length": 64}
    for seed in (0, 1, 2):
        clean.append(ZooModel(f"denoise-s{seed}", "clean", "denoise", seed, dict(denoise)))
    return backdoored + clean


def smoke_zoo() -> list[ZooModel]:
    """Tiny-BERT zoo: every builder once (4 clean, 2 backdoored)."""
    fast = {"steps": 300, "lr": 1e-3, "max_length": 32, "log_every": 100}
    return [
        ZooModel("original", "clean", "original"),
        ZooModel(
            "ft-toy-s0", "clean", "finetune", 0, {"corpus": "toy", "n_train": 160, "epochs": 1, "lr": 3e-3}
        ),
        ZooModel(
            "simcse-s0",
            "clean",
            "simcse",
            0,
            {"steps": 20, "lr": 1e-3, "batch_size": 16, "temperature": 0.05, "max_length": 32},
        ),
        ZooModel(
            "denoise-s0",
            "clean",
            "denoise",
            0,
            {"steps": 20, "lr": 1e-3, "batch_size": 16, "drop": 0.15, "max_length": 32},
        ),
        ZooModel("por-2w-balanced-s0", "backdoored", "por", 0, {"triggers": ["cf", "mn"], **fast}),
        ZooModel(
            "neuba-2w-random-s0",
            "backdoored",
            "neuba",
            0,
            {"triggers": ["cf", "mn"], "pv_family": "random", **fast},
        ),
    ]


def build_estimate(model: ZooModel) -> float:
    """Seconds to build ``model`` (unloaded 2-core CPU, minilm)."""
    r = model.recipe
    if model.kind == "original":
        return 0.0
    if model.kind in ("por", "neuba"):
        return r["steps"] * POISON_STEP_SECONDS + LOAD_SECONDS + 10  # + three probes
    if model.kind == "finetune":
        steps = math.ceil(r["n_train"] / 32) * r["epochs"]
        return steps * STEP_SECONDS["full"] + r["epochs"] * 100 * EVAL_SECONDS_PER_TEXT + 2 * LOAD_SECONDS
    step = SIMCSE_STEP_SECONDS if model.kind == "simcse" else DENOISE_STEP_SECONDS
    return r["steps"] * step + 2 * LOAD_SECONDS


def scan_estimate(model: ZooModel) -> float:
    """Seconds to scan ``model`` at the library defaults (a clean scan spends its 300 steps)."""
    from peftshield.defenses.lmsanitator.scan import DEFAULT_MAX_TOTAL_STEPS

    steps = BACKDOORED_SCAN_STEPS if model.label == "backdoored" else DEFAULT_MAX_TOTAL_STEPS
    return steps * MINING_STEP_SECONDS + SCAN_FIXED_SECONDS


def order_zoo(models: list[ZooModel]) -> list[ZooModel]:
    """Clean and backdoored alternate, cheapest first within each label (the original first)."""
    by_label = {
        label: sorted(
            [m for m in models if m.label == label], key=lambda m: build_estimate(m) + scan_estimate(m)
        )
        for label in LABELS
    }
    out: list[ZooModel] = []
    for i in range(max(len(v) for v in by_label.values())):
        out += [by_label[label][i] for label in LABELS if i < len(by_label[label])]
    return out


# --------------------------------------------------------------------------------------------
# Setup: real (minilm, wiki, the vader corpora) or smoke (tiny BERT, toy texts)


class ZooSetup(Setup):
    """bench_retention's Setup plus the mining texts and the recipes of the zoo builders."""

    smoke_prefix = "lmsanitator-smoke-"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self._mining: list[str] | None = None
        self._wiki_strings: list[str] | None = None

    def wiki_texts(self) -> list:
        if not self.smoke:
            return super().wiki_texts()
        # As the tests' tiny POR model: sentences over the whole tiny vocabulary, sentiment words
        # included (a backdoor trained on neutral words only collapsed the victim's clean inputs too).
        import random

        from peftshield.models.tiny import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS

        words = NEUTRAL_WORDS + POSITIVE_WORDS + NEGATIVE_WORDS
        rng = random.Random(0)
        return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 14))) for _ in range(600)]

    def victim_splits(self) -> Splits:
        if self.smoke:  # 100 dev texts: calibrating at FRR 0.02 needs at least 50
            return Splits(train=_toy(160, 1), dev=_toy(100, 2), test=_toy(100, 3))
        return super().victim_splits()

    def method_config(self, method: str, budget: str = "default"):
        """Victim recipes: the library defaults (smoke: gentle tiny-model recipes, see below)."""
        if not self.smoke:
            return super().method_config(method, budget)
        from peftshield.tuning.config import method_config

        # bench_retention's smoke rates (3e-2) leave the tiny victims at chance with every clean
        # output on a PV's sign pattern (FRR 1.0); a prefix at lr >= 1e-3 did the same. Measured on
        # the smoke POR backbone: these give ASR_lms 0.76 / 1.0 and FRR 0.0 at T_match 0.8.
        smoke = {
            "prefix": {"epochs": 3, "num_virtual_tokens": 4, "lr": 1e-4, "head_lr": 3e-2},
            "lora": {"epochs": 2, "batch_size": 16},
        }
        return method_config(method, {**smoke.get(method, {"epochs": 2}), "max_length": 32})

    def wiki_strings(self) -> list[str]:
        if self._wiki_strings is None:
            raw = self.wiki_texts()
            self._wiki_strings = [getattr(t, "text", t) for t in raw]
        return self._wiki_strings

    def mining_texts(self) -> list[str]:
        """The scan's clean texts: the ``wiki`` corpus (the library's default) or the smoke texts."""
        if self._mining is None:
            from peftshield.defenses.lmsanitator.scan import DEFAULT_TEXTS, mining_texts

            self._mining = mining_texts(self.wiki_strings() if self.smoke else DEFAULT_TEXTS)
        return self._mining

    def mining_config(self):
        """``None`` = the library's default :class:`MiningConfig` (smoke: the tests' tiny-model one)."""
        from peftshield.defenses.lmsanitator.mining import MiningConfig

        return MiningConfig(**SMOKE_MINING) if self.smoke else None

    def thresholds(self):
        """``None`` = the library's default filter thresholds (smoke: the tests' tiny-model ones)."""
        from peftshield.defenses.lmsanitator.filtering import FilterThresholds

        return FilterThresholds(**SMOKE_THRESHOLDS, source="smoke (tests)") if self.smoke else None

    def attack_config(self, model: ZooModel):  # type: ignore[override]
        from peftshield.attacks.config import attack_config

        return attack_config(model.kind, dict(model.recipe))

    def ft_splits(self, model: ZooModel) -> Splits:
        r = model.recipe
        if self.smoke:
            return Splits(train=_toy(r["n_train"], 100 + model.seed), dev=_toy(40, 200 + model.seed), test=[])
        from peftshield.data.corpora import load_splits

        settings = {
            "corpus": r["corpus"],
            "split_seed": model.seed,
            "max_train": r["n_train"],
            "max_eval": 100,
        }
        return load_splits(settings)

    def ft_config(self, model: ZooModel):
        from peftshield.tuning.config import method_config

        r = model.recipe
        overrides: dict[str, Any] = {"epochs": r["epochs"], "lr": r["lr"]}
        if "head_lr" in r:
            overrides["head_lr"] = r["head_lr"]
        if self.smoke:
            overrides.update({"head_lr": 3e-2, "batch_size": 16, "max_length": 32})
        return method_config("full", overrides)


# --------------------------------------------------------------------------------------------
# Clean continued training on wiki (the backbone has no MLM head; see the module docstring)


def _pooled(encoder, batch: dict, pooling: str):
    from peftshield.models.pooling import pool

    out = encoder(**batch)
    return pool(
        out.last_hidden_state, batch["attention_mask"], pooling, pooler=getattr(encoder, "pooler", None)
    )


def _batches(texts: list[str], size: int, seed: int):
    """Endless batches of ``texts`` in seeded passes without repeats within a pass."""
    if len(texts) < size:
        raise ValueError(f"{len(texts)} texts cannot fill a batch of {size}")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(texts))
        for start in range(0, len(order) - size + 1, size):
            yield [texts[i] for i in order[start : start + size]]


def _drop_words(text: str, rate: float, rng: np.random.Generator) -> str:
    words = text.split()
    kept = [w for w in words if rng.random() >= rate]
    return " ".join(kept or [words[int(rng.integers(len(words)))]])


def continue_training(backbone, texts: list[str], model: ZooModel, device) -> dict[str, Any]:
    """Train ``backbone``'s encoder in place with the clean ``simcse`` or ``denoise`` objective.

    simcse: unsupervised SimCSE (Gao et al., EMNLP 2021) - each sentence twice through the encoder
    in training mode (two dropout masks), cosine similarities of the pooled outputs over the batch
    at ``temperature``, cross-entropy towards the matching pair. denoise: the pooled output of the
    sentence with a ``drop`` share of its words deleted is pulled (MSE) to the frozen original's
    pooled output of the full sentence - the reference-preservation term of POR / NeuBA alone.
    AdamW (no weight decay), constant lr, gradient norm clipped at 1.0.
    """
    import torch
    import torch.nn.functional as F

    from peftshield.models.inference import tokenize_batch
    from peftshield.utils.seeding import seed_everything

    r = model.recipe
    seed_everything(model.seed)
    encoder, tokenizer, pooling = backbone.encoder, backbone.tokenizer, backbone.pooling
    encoder.to(device).train()
    reference = None
    if model.kind == "denoise":
        reference = copy.deepcopy(encoder).eval()
        reference.requires_grad_(False)
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=r["lr"], weight_decay=0.0)
    rng = np.random.default_rng(model.seed)
    losses = []
    batches = _batches(texts, r["batch_size"], model.seed)
    for _ in range(r["steps"]):
        batch = next(batches)
        if model.kind == "simcse":
            enc = tokenize_batch(tokenizer, batch + batch, r["max_length"], device)
            z = F.normalize(_pooled(encoder, enc, pooling).float(), dim=-1)
            n = len(batch)
            logits = z[:n] @ z[n:].T / r["temperature"]
            loss = F.cross_entropy(logits, torch.arange(n, device=logits.device))
        else:
            noisy = [_drop_words(t, r["drop"], rng) for t in batch]
            out = _pooled(encoder, tokenize_batch(tokenizer, noisy, r["max_length"], device), pooling)
            with torch.no_grad():
                target = _pooled(
                    reference, tokenize_batch(tokenizer, batch, r["max_length"], device), pooling
                )
            loss = F.mse_loss(out.float(), target.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise RuntimeError(f"{model.kind}: the loss diverged")
    encoder.eval()
    k = max(1, min(10, len(losses) // 5))
    return {"first_loss": float(np.mean(losses[:k])), "last_loss": float(np.mean(losses[-k:]))}


# --------------------------------------------------------------------------------------------
# Building the zoo: each model once, cached by content under <work>/zoo/


BUILD_FILE = "build.json"


class Zoo:
    """Builds (or reuses) zoo backbones; a folder is complete when it holds its record file."""

    def __init__(self, setup: ZooSetup, work: Path, device: Any) -> None:
        self.setup, self.work, self.device = setup, work / "zoo", device

    def spec(self, model: ZooModel) -> dict[str, Any]:
        return {
            "kind": model.kind,
            "recipe": model.recipe,
            "seed": model.seed,
            "backbone": self.setup.backbone_name,
        }

    def folder(self, model: ZooModel) -> Path | None:
        """``<work>/zoo/<name>-<hash of spec>``; ``None`` for the original (nothing to build)."""
        if model.kind == "original":
            return None
        digest = hashlib.sha256(json.dumps(self.spec(model), sort_keys=True).encode()).hexdigest()[:10]
        return self.work / f"{model.name}-{digest}"

    def key(self, model: ZooModel) -> str:
        folder = self.folder(model)
        return "none" if folder is None else folder.name

    def ref(self, model: ZooModel) -> str:
        folder = self.folder(model)
        return self.setup.backbone if folder is None else str(folder)

    def is_built(self, model: ZooModel) -> bool:
        folder = self.folder(model)
        if folder is None:
            return True
        marker = "poison.json" if model.label == "backdoored" else BUILD_FILE
        return (folder / marker).is_file()

    def get(self, model: ZooModel) -> tuple[str, dict[str, Any]]:
        """The model's backbone reference and the row fields describing its build (built if needed)."""
        built = False
        if not self.is_built(model):
            print(f"  building {model.name} -> {self.folder(model)}", flush=True)
            self._build(model)
            built = True
        info = self._info(model)
        info["built_now"] = built
        return self.ref(model), info

    # -- builders
    def _build(self, model: ZooModel) -> None:
        folder = self.folder(model)
        assert folder is not None
        if model.label == "backdoored":
            from peftshield.attacks.task_agnostic import poison_task_agnostic
            from peftshield.models.backbones import load_backbone

            corpus = "toy-wiki" if self.setup.smoke else "wiki"
            result = poison_task_agnostic(
                load_backbone(self.setup.backbone),
                self.setup.wiki_texts(),
                self.setup.attack_config(model),
                seed=model.seed,
                device=self.device,
                progress=False,
                corpus_name=corpus,
            )
            result.save(folder, overwrite=folder.exists())
            return
        start = time.perf_counter()
        if model.kind == "finetune":
            encoder, tokenizer, pooling, metrics = self._finetune(model)
        else:
            encoder, tokenizer, pooling, metrics = self._continue(model)
        metrics["clean_drift"] = self._drift(encoder, tokenizer, pooling)
        info = {
            "kind": model.kind,
            "recipe": model.recipe,
            "seed": model.seed,
            "source": self.setup.backbone_name,
            "seconds": round(time.perf_counter() - start, 2),
            "metrics": metrics,
        }
        _save_bare(encoder, tokenizer, pooling, folder, info)

    def _finetune(self, model: ZooModel):
        from peftshield.tuning.trainer import tune

        splits = self.setup.ft_splits(model)
        result = tune(
            self.setup.backbone,
            splits.train,
            splits.dev,
            self.setup.ft_config(model),
            seed=model.seed,
            device=self.device,
            progress=False,
        )
        metrics = {"dev_accuracy": result.best_dev_accuracy, "n_train": len(splits.train)}
        return result.model.encoder, result.tokenizer, result.backbone.pooling, metrics

    def _continue(self, model: ZooModel):
        from peftshield.models.backbones import load_backbone

        backbone = load_backbone(self.setup.backbone)
        texts = self._train_texts(model)
        metrics = continue_training(backbone, texts, model, self.device)
        metrics["n_texts"] = len(texts)
        return backbone.encoder, backbone.tokenizer, backbone.pooling, metrics

    def _drift_texts(self) -> list[str]:
        # Held out of every clean continued training: the first 64 of the shuffled wiki sentences.
        texts = [t for t in self.setup.wiki_strings() if len(t.split()) >= 5]
        order = np.random.default_rng(12345).permutation(len(texts))
        return [texts[i] for i in order[:64]]

    def _train_texts(self, model: ZooModel) -> list[str]:
        held = set(self._drift_texts())
        return [t for t in self.setup.wiki_strings() if len(t.split()) >= 5 and t not in held]

    def _drift(self, encoder, tokenizer, pooling: str) -> float:
        """Output drift from the original backbone on held-out wiki texts (the attacks' clean_drift)."""
        from peftshield.attacks.task_agnostic import probe
        from peftshield.models.backbones import load_backbone

        reference = load_backbone(self.setup.backbone, pooling=pooling).encoder.to(self.device).eval()
        measured = probe(
            encoder,
            reference,
            tokenizer,
            self._drift_texts(),
            [],
            None,
            pooling=pooling,
            max_length=64,
            seed=0,
        )
        return float(measured["clean_drift"])

    def _info(self, model: ZooModel) -> dict[str, Any]:
        folder = self.folder(model)
        if folder is None:
            return {"build_seconds": 0.0, "recipe": {}}
        if model.label == "backdoored":
            from peftshield.attacks.record import read_poison_record

            record = read_poison_record(folder)
            per = record.metrics.get("per_trigger", {})
            return {
                "build_seconds": record.wall_seconds,
                "recipe": record.recipe,
                "triggers": [t.describe() for t in record.trigger_objects()],
                "pv_family": record.recipe.get("pv_family"),
                "attack_sign_match": _mean([v.get("sign_match") for v in per.values()]),
                "attack_monitor_rate": _mean([v.get("monitor_rate") for v in per.values()]),
                "attack_min_monitor_rate": min(
                    (v.get("monitor_rate", 0.0) for v in per.values()), default=None
                ),
                "clean_drift": record.metrics.get("clean_drift"),
            }
        from peftshield.utils.io import read_json

        info = read_json(folder / BUILD_FILE)
        return {
            "build_seconds": info["seconds"],
            "recipe": info["recipe"],
            "build_metrics": info["metrics"],
            "clean_drift": info["metrics"].get("clean_drift"),
        }


def _save_bare(encoder, tokenizer, pooling: str, folder: Path, info: dict) -> None:
    """Write ``encoder`` + tokenizer as a bare backbone folder (pooling recorded) and ``build.json``."""
    from peftshield.models.backbones import quiet_transformers
    from peftshield.models.pooling import CONFIG_KEY
    from peftshield.utils.io import atomic_dir, write_json

    setattr(encoder.config, CONFIG_KEY, pooling)
    with atomic_dir(folder, overwrite=folder.exists()) as tmp:
        with quiet_transformers():
            encoder.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / BUILD_FILE, info)


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


# --------------------------------------------------------------------------------------------
# Zoo tier: one scan per model


def zoo_cell(model: ZooModel, setup: ZooSetup, zoo: Zoo, work: Path, args) -> dict[str, Any]:
    """Build (or reuse) ``model``, scan it at the library defaults, compare PVs with the planted ones."""
    from peftshield.defenses.lmsanitator.scan import pv_recovery, scan
    from peftshield.models.backbones import load_backbone

    ref, info = zoo.get(model)
    texts = setup.mining_texts()
    start = time.perf_counter()
    backbone = load_backbone(ref)
    load_seconds = time.perf_counter() - start
    result = scan(
        backbone,
        texts,
        config=setup.mining_config(),
        thresholds=setup.thresholds(),
        device=args.device,
        seed=args.scan_seed,
        progress=False,
    )
    result.texts = "toy-wiki" if setup.smoke else "wiki"
    out = work / "lmsanitator" / "scans" / f"{model.name}-{zoo.key(model)}-first-s{args.scan_seed}"
    result.save(out, overwrite=out.exists())
    outcomes: dict[str, int] = {}
    for attempt in result.attempts:
        outcomes[attempt.outcome] = outcomes.get(attempt.outcome, 0) + 1
    row: dict[str, Any] = {
        "backbone": setup.backbone_name,
        "kind": model.kind,
        "label": model.label,
        "verdict": result.verdict,
        "seconds": round(result.seconds, 2),
        "load_seconds": round(load_seconds, 2),
        "attempts": len(result.attempts),
        "steps": result.steps,
        "n_pvs": result.n_pvs,
        "outcomes": outcomes,
        "best_gap": min((a.gap for a in result.attempts if math.isfinite(a.gap)), default=None),
        "scan_folder": str(out),
        "mining_defaults": setup.mining_config() is None,
        "thresholds": result.thresholds.to_dict(),
        **info,
    }
    if model.label == "backdoored":
        from peftshield.attacks.record import load_pvs as planted_pvs

        recovery = pv_recovery(result.pvs, planted_pvs(zoo.ref(model)), t_match=0.8)
        row.update({f"pv_{k}": v for k, v in recovery.items()})
    return row


# --------------------------------------------------------------------------------------------
# Victim tier: a search-mode scan, prefix / LoRA victims, the monitor at two thresholds


class Victims:
    """The search scans and tuned victims of the victim tier, cached under <work>/lmsanitator/."""

    def __init__(self, setup: ZooSetup, zoo: Zoo, results: ResultFile, work: Path, args) -> None:
        self.setup, self.zoo, self.results, self.args = setup, zoo, results, args
        self.work = work / "lmsanitator"
        self._splits: Splits | None = None

    def splits(self) -> Splits:
        if self._splits is None:
            self._splits = self.setup.victim_splits()
        return self._splits

    def scan_folder(self, model: ZooModel) -> Path:
        a = self.args
        return self.work / "scans" / f"{model.name}-{self.zoo.key(model)}-all{a.search_steps}-s{a.scan_seed}"

    def search_scan(self, model: ZooModel) -> dict[str, Any]:
        """Row of the search-mode scan (every PV within ``--search-steps``) of ``model``."""
        key = {"cell": "search-scan", "model": model.name, "scan": self.scan_folder(model).name}
        return self.results.run_cell(key, lambda: self._search_row(model))

    def _search_row(self, model: ZooModel) -> dict[str, Any]:
        from peftshield.attacks.record import load_pvs as planted_pvs
        from peftshield.defenses.lmsanitator.scan import load_pvs, pv_recovery, scan

        ref, info = self.zoo.get(model)
        folder = self.scan_folder(model)
        if not (folder / "scan.json").is_file():
            result = scan(
                ref,
                self.setup.mining_texts(),
                config=self.setup.mining_config(),
                thresholds=self.setup.thresholds(),
                attempts=30,
                max_total_steps=self.args.search_steps,
                stop_at_first=False,
                device=self.args.device,
                seed=self.args.scan_seed,
                progress=False,
            )
            result.texts = "toy-wiki" if self.setup.smoke else "wiki"
            result.save(folder, overwrite=folder.exists())
        found = load_pvs(folder)
        recovery = pv_recovery(found.pvs, planted_pvs(ref), t_match=0.8)
        return {
            "backbone": self.setup.backbone_name,
            "label": model.label,
            "verdict": found.scan.get("verdict"),
            "seconds": found.scan.get("seconds"),
            "attempts": found.scan.get("attempts"),
            "steps": found.scan.get("steps"),
            "n_pvs": int(found.pvs.shape[0]),
            "scan_folder": str(folder),
            "build_seconds": info["build_seconds"],
            **{f"pv_{k}": v for k, v in recovery.items()},
        }

    def victim_folder(self, model: ZooModel, method: str) -> Path:
        config = self.setup.method_config(method, "default")
        spec = {
            "model": self.zoo.key(model),
            "config": config.to_dict(),
            "seed": self.args.seed,
            "data": self.setup.data_caps(),
            "corpus": self.setup.victim_corpus,
        }
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
        return self.work / "victims" / f"{model.name}-{method}-s{self.args.seed}-{digest}"

    def victim(self, model: ZooModel, method: str):
        """The tuned victim (trained once, then reloaded from its folder)."""
        from peftshield.tuning.trainer import RUN_FILE, load_tuned, save_tuned, tune

        folder = self.victim_folder(model, method)
        if not (folder / RUN_FILE).is_file():
            ref, _ = self.zoo.get(model)
            splits = self.splits()
            print(f"  tuning {method} victim -> {folder}", flush=True)
            result = tune(
                ref,
                splits.train,
                splits.dev,
                self.setup.method_config(method, "default"),
                seed=self.args.seed,
                device=self.args.device,
                progress=False,
            )
            save_tuned(result, folder, extra={"data": self.setup.data_caps()}, overwrite=folder.exists())
        return load_tuned(folder, device=self.args.device), folder

    def row(self, model: ZooModel, method: str, threshold: str) -> dict[str, Any]:
        """One victim behind the monitor at ``threshold``: ASR, defended ASR, FRR, overhead (+ oracle)."""
        from peftshield.attacks.record import read_poison_record
        from peftshield.defenses.lmsanitator.evaluate import evaluate_defense
        from peftshield.tuning.trainer import RUN_FILE
        from peftshield.utils.io import read_json

        search = self.search_scan(model)
        if "error" in search:
            raise RuntimeError(f"the search scan of {model.name} failed: {search['error']}")
        victim, folder = self.victim(model, method)
        run = read_json(folder / RUN_FILE)
        splits = self.splits()
        triggers = read_poison_record(self.zoo.ref(model)).trigger_objects()
        dev = [e.text for e in splits.dev]
        row: dict[str, Any] = {
            "backbone": self.setup.backbone_name,
            "corpus": self.setup.victim_corpus,
            "defense": "lmsanitator",
            "n_pvs": search["n_pvs"],
            "pv_recovery_rate": search["pv_recovery_rate"],
            "dev_accuracy": run.get("best_dev_accuracy"),
            "train_seconds": run.get("train_seconds"),
            "victim_folder": str(folder),
            "n_test": len(splits.test),
            "n_triggers": len(triggers),
        }
        if search["n_pvs"] == 0:
            # Nothing to monitor: the defence cannot act, so the defended ASR is the undefended one.
            from peftshield.attacks.success import backdoor_metrics

            record = read_poison_record(self.zoo.ref(model))
            measured = backdoor_metrics(
                victim.model,
                victim.tokenizer,
                record,
                splits.test,
                seed=self.args.seed,
                max_length=victim.max_length,
            )
            row.update(
                {
                    "monitor": "none (the search scan found no PV)",
                    "cacc": measured["cacc"],
                    "asr_lms": measured["asr_lms"],
                    "defended_asr": measured["asr_lms"],
                    "frr": 0.0,
                    "overhead_ratio": None,
                }
            )
        else:
            monitor = self._monitor(victim, search["scan_folder"], threshold, dev)
            measured = evaluate_defense(monitor, splits.test, triggers, seed=self.args.seed)
            row.update({"monitor": "scan PVs", **measured, "threshold_value": monitor.threshold_})
            row.pop("threshold", None)  # the row key names the policy; the value is threshold_value
            row["calibration_frr"] = monitor.calibration_frr_
            row.update(measure_overhead(monitor, victim, [e.text for e in splits.test]))
        if threshold == THRESHOLDS[0]:
            oracle = self._monitor(victim, self.zoo.ref(model), threshold, [])
            measured = evaluate_defense(oracle, splits.test, triggers, seed=self.args.seed)
            for name in ("defended_asr", "type1", "type2", "frr", "recall", "auroc"):
                row[f"oracle_{name}"] = measured[name]
        return row

    def _monitor(self, victim, pvs: str, threshold: str, dev: list[str]):
        from peftshield.defenses.lmsanitator.monitor import PAPER_T_MATCH, PVMonitor

        calibrated = threshold.startswith("calibrated@")
        monitor = PVMonitor(
            victim,
            pvs,
            threshold="calibrated" if calibrated else PAPER_T_MATCH,
            target_frr=float(threshold.split("@")[1]) if calibrated else 0.05,
            device=str(self.args.device),
        )
        return monitor.fit(dev)


def measure_overhead(monitor, victim, texts: list[str], repeats: int = 3) -> dict[str, Any]:
    """Monitored vs undefended inference time on ``texts``: median ratio of ``repeats`` interleaved pairs.

    Undefended: the victim's logits (``predict_outputs``). Monitored: ``PVMonitor.run`` (the
    same pass returning the pooled vector too, plus the sign match). The order alternates within
    the pairs so that neither side always runs first.
    """
    from peftshield.models.inference import predict_outputs

    def plain() -> None:
        predict_outputs(
            victim.model,
            victim.tokenizer,
            texts,
            batch_size=int(monitor.batch_size),
            max_length=victim.max_length,
        )

    def guarded() -> None:
        monitor.run(texts)

    times: dict[str, list[float]] = {"plain": [], "guarded": []}
    for r in range(repeats):
        pair = [("plain", plain), ("guarded", guarded)]
        for name, fn in pair if r % 2 == 0 else pair[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ratios = [g / p for g, p in zip(times["guarded"], times["plain"], strict=True)]
    return {
        "overhead_ratio": float(statistics.median(ratios)),
        "overhead_ratios": [round(x, 4) for x in ratios],
        "inference_seconds": round(statistics.median(times["plain"]), 4),
        "monitored_seconds": round(statistics.median(times["guarded"]), 4),
    }


# --------------------------------------------------------------------------------------------
# Summary and tables


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "n": len(values),
        "mean": float(np.mean(values)),
        "median": float(np.median(values)),
        "max": float(np.max(values)),
        "min": float(np.min(values)),
        "p90": float(np.percentile(values, 90)),
    }


def zoo_rows(rows: list[dict], models: list[ZooModel], zoo: Zoo) -> dict[str, dict]:
    """The finished rows of the planned zoo models (a row of another recipe does not count)."""
    keys = {m.name: zoo.key(m) for m in models}
    return {
        r["model"]: r
        for r in rows
        if r.get("cell") == "zoo" and keys.get(r.get("model")) == r.get("build") and "error" not in r
    }


def victim_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("cell") == "victim" and "error" not in r]


def summarize(rows: list[dict], models: list[ZooModel], zoo: Zoo) -> dict[str, Any]:
    """Detection accuracy / FPR / FNR, scan-time distribution, PV recovery, and the victim tier."""
    from peftshield.evaluation.metrics import scan_metrics

    finished = zoo_rows(rows, models, zoo)
    done = [finished[m.name] for m in models if m.name in finished]
    summary: dict[str, Any] = {"zoo": {"planned": len(models), "done": len(done)}}
    if done:
        metrics = scan_metrics([r["verdict"] for r in done], [r["label"] for r in done])
        seconds = [r["seconds"] for r in done]
        backdoored = [r for r in done if r["label"] == "backdoored"]
        detected = [r for r in backdoored if r["verdict"] == "backdoored"]
        by_kind: dict[str, dict[str, int]] = {}
        for r in done:
            entry = by_kind.setdefault(r["kind"], {"n": 0, "called_backdoored": 0})
            entry["n"] += 1
            entry["called_backdoored"] += r["verdict"] == "backdoored"
        summary["zoo"].update(
            {
                "n_backdoored": len(backdoored),
                "n_clean": len(done) - len(backdoored),
                **metrics,
                "by_kind": by_kind,
                "scan_seconds": _stats(seconds),
                "scan_seconds_by_label": {
                    label: _stats([r["seconds"] for r in done if r["label"] == label]) for label in LABELS
                },
                "false_positives": [
                    r["model"] for r in done if r["label"] == "clean" and r["verdict"] != "clean"
                ],
                "false_negatives": [r["model"] for r in backdoored if r["verdict"] != "backdoored"],
                # First-PV scans: a detected model has one PV, so this is at most 1 / n_triggers.
                "pv_recovery_rate_mean": _mean([r.get("pv_recovery_rate") for r in backdoored]),
                "detected_with_a_true_pv": sum(
                    1 for r in detected if r.get("pv_n_found", 0) - r.get("pv_spurious", 0) > 0
                ),
                "n_detected": len(detected),
                "targets": {
                    "accuracy>=0.97": bool(metrics["accuracy"] >= 0.97),
                    "fpr<=0.05": bool(metrics["fpr"] <= 0.05),
                    "mean_scan_seconds<=180": bool(np.mean(seconds) <= 180),
                },
            }
        )
    searches = [r for r in rows if r.get("cell") == "search-scan" and "error" not in r]
    if searches:
        summary["search_scans"] = {
            r["model"]: {
                k: r.get(k) for k in ("n_pvs", "pv_n_true", "pv_recovered", "pv_recovery_rate", "seconds")
            }
            for r in searches
        }
        summary["search_pv_recovery_rate_mean"] = _mean([r.get("pv_recovery_rate") for r in searches])
    victims = victim_rows(rows)
    if victims:
        summary["victims"] = [
            {
                k: r.get(k)
                for k in (
                    "model",
                    "method",
                    "threshold",
                    "cacc",
                    "asr_lms",
                    "defended_asr",
                    "frr",
                    "overhead_ratio",
                    "oracle_defended_asr",
                )
            }
            for r in victims
        ]
        summary["victim_targets"] = {
            f"{r['model']}/{r['method']}/{r['threshold']}": {
                "defended_asr<=0.01_at_frr<=0.02": bool(r["defended_asr"] <= 0.01 and r["frr"] <= 0.02),
                "overhead<=1.05": None
                if r.get("overhead_ratio") is None
                else bool(r["overhead_ratio"] <= 1.05),
            }
            for r in victims
        }
    errors = [r for r in rows if "error" in r]
    summary["errors"] = len(errors)
    return summary


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def tables(rows: list[dict], models: list[ZooModel], zoo: Zoo) -> str:
    done = zoo_rows(rows, models, zoo)
    errors = {r["model"]: r for r in rows if r.get("cell") == "zoo" and "error" in r}
    out = [
        "| # | model | label | verdict | scan s | attempts | steps | PVs | recovered | attack sign match "
        "| drift |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, m in enumerate(models, 1):
        r = done.get(m.name)
        if r is None:
            state = "error" if m.name in errors else "—"
            out.append(f"| {i} | {m.name} | {m.label} | {state} |  |  |  |  |  |  |  |")
            continue
        recovered = f"{r['pv_recovered']}/{r['pv_n_true']}" if "pv_recovered" in r else ""
        mark = "" if (r["verdict"] == r["label"]) else " ✗"
        out.append(
            f"| {i} | {m.name} | {m.label} | {r['verdict']}{mark} | {r['seconds']:.1f} | {r['attempts']} | "
            f"{r['steps']} | {r['n_pvs']} | {recovered} | {_fmt(r.get('attack_sign_match'))} | "
            f"{_fmt(r.get('clean_drift'))} |"
        )
    victims = victim_rows(rows)
    if victims:
        out += [
            "",
            "| victim | method | threshold | CACC | ASR_lms | defended ASR (I / II) | FRR | recall "
            "| overhead | oracle def. ASR |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in victims:
            parts = f"{_fmt(r['defended_asr'])} ({_fmt(r.get('type1'))} / {_fmt(r.get('type2'))})"
            out.append(
                f"| {r['model']} | {r['method']} | {r['threshold']} | {_fmt(r['cacc'])} "
                f"| {_fmt(r['asr_lms'])} | "
                f"{parts} | {_fmt(r['frr'])} | {_fmt(r.get('recall'))} | {_fmt(r.get('overhead_ratio'))} | "
                f"{_fmt(r.get('oracle_defended_asr'))} |"
            )
    return "\n".join(out)


def summary_lines(summary: dict) -> str:
    z = summary["zoo"]
    if not z.get("n"):
        return f"zoo: 0 of {z['planned']} models scanned"
    s = z["scan_seconds"]
    lines = [
        f"zoo: {z['done']} of {z['planned']} models ({z['n_backdoored']} backdoored, {z['n_clean']} clean)",
        f"detection accuracy {z['accuracy']:.3f} (>= 0.97?), FPR {z['fpr']:.3f} (<= 0.05?), "
        f"FNR {z['fnr']:.3f}",
        f"scan seconds: mean {s['mean']:.1f} (<= 180?), median {s['median']:.1f}, max {s['max']:.1f}",
        f"first-PV scans: {z['detected_with_a_true_pv']} of {z['n_detected']} detected models found a "
        "planted PV; "
        f"mean recovery {_fmt(z['pv_recovery_rate_mean'])}",
    ]
    if z["false_positives"]:
        lines.append(f"false positives: {', '.join(z['false_positives'])}")
    if z["false_negatives"]:
        lines.append(f"false negatives: {', '.join(z['false_negatives'])}")
    if "search_pv_recovery_rate_mean" in summary:
        lines.append(f"search scans: mean PV recovery {summary['search_pv_recovery_rate_mean']:.3f}")
    lines.append(f"error rows: {summary['errors']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Plan


def victim_estimate(args, n_triggers: int, method: str) -> tuple[float, float]:
    """(tuning seconds, seconds per threshold row) of one victim (unloaded 2-core CPU)."""
    from peftshield.tuning.config import method_config

    epochs = method_config(method).epochs
    tune_s = math.ceil(args.max_train / 32) * epochs * STEP_SECONDS[method]
    tune_s += epochs * args.max_eval * EVAL_SECONDS_PER_TEXT
    eval_texts = args.max_eval * (2 + n_triggers + PURGE_TEXTS_PER_TEST_TEXT) + 6 * args.max_eval
    return tune_s, eval_texts * EVAL_SECONDS_PER_TEXT


def print_plan(
    models: list[ZooModel], victims: list[ZooModel], methods: list[str], zoo: Zoo, args, tiers: set[str]
) -> None:
    total = 0.0
    if "zoo" not in tiers:
        models = []
    print("Zoo tier (rough, unloaded 2-core CPU; scans at the library defaults)")
    print("order | model | label | kind | build s | scan s | cumulative min | recipe")
    for i, m in enumerate(models, 1):
        built = zoo.is_built(m)
        b, s = (0.0 if built else build_estimate(m)), scan_estimate(m)
        total += b + s
        recipe = json.dumps(m.recipe, sort_keys=True) if m.recipe else "-"
        cached = " (built)" if built and m.kind != "original" else ""
        print(
            f"{i:3d} | {m.name} | {m.label} | {m.kind} | {b:5.0f}{cached} | {s:4.0f} | "
            f"{total / 60:6.1f} | {recipe}"
        )
    scans = [scan_estimate(m) for m in models] or [0.0]
    print(
        f"zoo: {len(models)} models, ~{total / 3600:.1f} h; estimated scan time per model mean "
        f"{np.mean(scans):.0f} s "
        f"(clean {scan_estimate(ZooModel('x', 'clean', 'original')):.0f} s, backdoored "
        f"{scan_estimate(ZooModel('x', 'backdoored', 'por')):.0f} s)"
    )
    print("\nVictim tier" + ("" if "victims" in tiers else ": not run (--tiers)"))
    tier = 0.0
    for m in victims if "victims" in tiers else []:
        n_trig = len(m.recipe.get("triggers", SIX))
        build = 0.0 if zoo.is_built(m) or m in models else build_estimate(m)
        search = args.search_steps * MINING_STEP_SECONDS + SCAN_FIXED_SECONDS
        tier += build + search
        print(f"  {m.name}: search scan ~{search:.0f} s" + (f" (+ build {build:.0f} s)" if build else ""))
        for method in methods:
            tune_s, row_s = victim_estimate(args, n_trig, method)
            cost = tune_s + len(THRESHOLDS) * row_s + row_s  # + the oracle evaluation
            tier += cost
            print(
                f"    {method}: tune ~{tune_s:.0f} s, {len(THRESHOLDS)} threshold rows "
                f"~{row_s:.0f} s each + oracle"
            )
    print(f"victim tier: ~{tier / 60:.0f} min; everything: ~{(total + tier) / 3600:.1f} h")


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--limit-models", type=int, default=None, help="only the first N zoo models of the order"
    )
    parser.add_argument("--tiers", default="zoo,victims", help="zoo, victims or both (default)")
    parser.add_argument("--victim-models", default=None, help=f"zoo names (default {DEFAULT_VICTIM_MODELS})")
    parser.add_argument("--victim-methods", default="prefix,lora")
    parser.add_argument(
        "--search-steps", type=int, default=600, help="step budget of the victim tier's scans"
    )
    parser.add_argument("--seed", type=int, default=0, help="victim seed")
    parser.add_argument("--scan-seed", type=int, default=0)
    parser.add_argument("--max-train", type=int, default=1500, help="victim training examples (movies)")
    parser.add_argument("--max-eval", type=int, default=500, help="victim dev and test examples")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fresh", action="store_true", help="discard earlier result rows (not bench/work)")
    parser.add_argument("--results", type=Path, default=None, help=f"result file (default {RESULT})")
    parser.add_argument("--work", type=Path, default=None, help=f"models, scans, victims (default {WORK})")
    parser.add_argument("--plan", action="store_true", help="print the order, recipes and a time estimate")
    parser.add_argument("--report", action="store_true", help="print tables and summary of done rows only")
    parser.add_argument("--smoke", action="store_true", help="tiny random BERT and toy texts, ~1 minute")
    args = parser.parse_args()
    # bench_retention's Setup reads these; the zoo poisons with its own recipes.
    args.poison_steps, args.poison_max_train, args.poison_corpus = None, args.max_train, "amazon"

    tiers = {t.strip() for t in args.tiers.split(",") if t.strip()}
    if not tiers <= {"zoo", "victims"}:
        raise SystemExit(f"unknown tier in {args.tiers!r}; choose zoo, victims")
    all_models = smoke_zoo() if args.smoke else real_zoo()
    by_name = {m.name: m for m in all_models}
    models = order_zoo(all_models)
    if args.limit_models is not None:
        if args.limit_models < 1:
            raise SystemExit("--limit-models must be at least 1")
        models = models[: args.limit_models]
    names = args.victim_models or (SMOKE_VICTIM_MODELS if args.smoke else DEFAULT_VICTIM_MODELS)
    victim_models = []
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        if name not in by_name or by_name[name].label != "backdoored":
            raise SystemExit(f"--victim-models: {name!r} is not a backdoored zoo model")
        victim_models.append(by_name[name])
    methods = [m.strip() for m in args.victim_methods.split(",") if m.strip()]
    if not set(methods) <= set(STEP_SECONDS):
        raise SystemExit(f"--victim-methods: choose from {', '.join(STEP_SECONDS)}")
    if args.search_steps < 1:
        raise SystemExit("--search-steps must be at least 1")

    if args.plan:

        class _Plan:  # the zoo's folder names without building the smoke backbone
            smoke, backbone, backbone_name = args.smoke, "minilm", "tiny" if args.smoke else "minilm"

        print_plan(models, victim_models, methods, Zoo(_Plan(), args.work or WORK, "cpu"), args, tiers)  # type: ignore[arg-type]
        return

    import torch

    from peftshield.utils.device import resolve_device

    if args.smoke:
        torch.set_num_threads(1)
    args.device = resolve_device(args.device)
    setup = ZooSetup(args)
    result_path = args.results or (setup.tmp / "lmsanitator.json" if args.smoke else RESULT)
    work = args.work or (setup.tmp / "work" if args.smoke else WORK)
    command = "python bench/bench_lmsanitator.py " + " ".join(sys.argv[1:])
    results = ResultFile(result_path, "lmsanitator", command, fresh=args.fresh)
    results.data["meta"]["smoke"] = args.smoke
    results.data["meta"]["zoo"] = [
        {"name": m.name, "label": m.label, "kind": m.kind, "seed": m.seed, "recipe": m.recipe}
        for m in all_models
    ]
    zoo = Zoo(setup, work, args.device)

    if not args.report:
        started = time.perf_counter()
        print(f"{len(models)} zoo models; results -> {result_path}; models -> {zoo.work}", flush=True)
        if "zoo" in tiers:
            for i, m in enumerate(models, 1):
                print(f"[{i}/{len(models)}] {m.name} ({m.label})", flush=True)
                key = {"cell": "zoo", "model": m.name, "build": zoo.key(m), "scan_seed": args.scan_seed}
                row = results.run_cell(key, lambda m=m: zoo_cell(m, setup, zoo, work, args))
                if "error" in row:
                    print(f"  error: {row['error']}", flush=True)
                else:
                    rec = (
                        f", recovered {row['pv_recovered']}/{row['pv_n_true']}"
                        if "pv_recovered" in row
                        else ""
                    )
                    print(
                        f"  {row['verdict']} ({row['n_pvs']} PV, {row['attempts']} attempts, "
                        f"{row['steps']} steps, "
                        f"{row['seconds']:.1f} s{rec}; outcomes {row['outcomes']})",
                        flush=True,
                    )
        if "victims" in tiers:
            tier = Victims(setup, zoo, results, work, args)
            for m in victim_models:
                print(f"[victims] {m.name}: search scan", flush=True)
                search = tier.search_scan(m)
                if "error" in search:
                    print(f"  error: {search['error']}", flush=True)
                else:
                    print(
                        f"  {search['n_pvs']} PV(s), recovered "
                        f"{search['pv_recovered']}/{search['pv_n_true']}, "
                        f"{_fmt(search['seconds'], 1)} s",
                        flush=True,
                    )
                for method in methods:
                    for threshold in THRESHOLDS:
                        print(f"[victims] {m.name} / {method} / {threshold}", flush=True)
                        key = {
                            "cell": "victim",
                            "model": m.name,
                            "method": method,
                            "threshold": threshold,
                            "seed": args.seed,
                            **setup.data_caps(),
                            "build": zoo.key(m),
                            "search_steps": args.search_steps,
                        }
                        row = results.run_cell(key, lambda m=m, me=method, t=threshold: tier.row(m, me, t))
                        if "error" in row:
                            print(f"  error: {row['error']}", flush=True)
                        else:
                            print(
                                f"  CACC {row['cacc']:.3f}, ASR_lms {row['asr_lms']:.3f}, defended "
                                f"{row['defended_asr']:.3f}, FRR {row['frr']:.3f}, overhead "
                                f"{_fmt(row.get('overhead_ratio'))}",
                                flush=True,
                            )
        print(f"done in {time.perf_counter() - started:.0f} s", flush=True)

    summary = summarize(results.rows, models, zoo)
    if not args.report:  # --report leaves the file (and its rerun command) as it is
        results.finish(summary)
    print()
    print(tables(results.rows, models, zoo))
    print()
    print(summary_lines(summary))
    print(f"\nresults: {result_path}")


if __name__ == "__main__":
    main()
