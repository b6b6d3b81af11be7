"""Retention benchmark (issue 3): does a weight-poisoning backdoor survive the victim's fine-tuning, and
does it survive PEFT better than full fine-tuning (the PSIM paper's central finding)?

What it measures. For each attack (clean-label, badnets, por, neuba) the clean ``minilm`` is poisoned
once: por / neuba on ``wiki`` sentences (task-agnostic, LMSanitator's recipe, 300 steps by default),
clean-label / badnets by full fine-tuning on ``amazon`` (``--poison-corpus tweets`` selectable;
task-specific, PSIM's threat model). A victim then tunes each poisoned backbone on clean ``movies``
with every method (full, lora, prompt, ptuning, prefix) and is measured on the movies test split:
CACC, ``asr`` (PSIM convention for task-specific attacks: non-target samples predicted as the target;
for task-agnostic attacks ``asr`` = ``asr_lms``), ``asr_lms`` (LMSanitator convention: clean-correct
samples that any trigger flips), ``asr_dominant`` (mean over triggers of the PSIM-convention ASR
towards the class the trigger's inputs land in most) and per-trigger results. Victims of
task-specific attacks start a fresh head; LoRA victims also keep the attacker's head (``head: keep``,
as the PSIM reference code does). The control is an unpoisoned ``minilm`` tuned the same way and
measured with the triggers of every attack: its ASR is the false-trigger baseline. Full fine-tuning
is also run at extra budgets (``--budgets``, default lr 5e-5 x 1 and x 3 epochs, lr 1e-4 x 2 epochs,
beside the default lr 5e-5 x 2), so that retention under full FT is read at the budget that gives
full FT its best dev accuracy rather than at one setting. The summary says, per attack, whether the
mean ASR under PEFT exceeds the ASR under full FT at that budget.

Run (resumable; a killed run is simply started again and skips finished cells)::

    .venv/bin/python bench/bench_retention.py 2>&1 | tee bench/logs/retention.log
    .venv/bin/python bench/bench_retention.py --plan      # the cell order and a rough time estimate
    .venv/bin/python bench/bench_retention.py --report    # table + summary of what is done, runs nothing
    .venv/bin/python bench/bench_retention.py --smoke     # the whole pipeline on a tiny BERT, ~1 min

Options: ``--attacks``, ``--methods``, ``--budgets`` (full-FT extras as ``lr<LR>x<EPOCHS>``, or
``none``), ``--seed``, ``--max-train 1500 --max-eval 500`` (victim), ``--poison-max-train 1500``
(attacker, task-specific), ``--poison-steps`` (por / neuba; default: the library's 300),
``--poison-corpus amazon|tweets``, ``--device auto``, ``--fresh`` (discard earlier result rows).

Resumability. Every (attack, method, budget, head, seed) cell is one row of
``bench/results/retention.json`` (docs/design.md, "Benchmark result files"); each poisoning is a row too
(``cell: poison``). Poisoned backbones are cached under ``bench/work/<attack>-<corpus>-s<seed>-<hash>``
where the hash covers the attack, its recipe, the data caps and the seed; a folder holding
``poison.json`` is reused (delete it to poison again). A failing cell is a row with ``error`` and is
retried on the next run. Cells run in order of information: control, por and badnets with lora,
prefix and full first, then the full-FT budgets of por and badnets, then the rest (``--plan``).

Cost (rough, unloaded 2-core CPU; ``--plan`` prints it per cell): minilm steps of batch 32 x <=64
tokens take ~0.55 s for LoRA / prefix, ~0.65 s for prompt / ptuning (16 more positions) and ~1.2 s for
full FT; classifying one test text ~4 ms. At 1,500 training examples (47 steps per epoch) and 500
dev / test examples: a LoRA or prefix victim ~1.5-2 min (3 epochs), a prompt / ptuning victim ~2 min,
a default full-FT victim (2 epochs) ~2-2.5 min, the full-FT budgets 1-3 min, a control victim ~30 s
more (it is measured with 14 triggers); por / neuba poisoning ~6.5 min each (300 steps), badnets /
clean-label poisoning ~3 min each. The first two tiers (control, por and badnets x lora, prefix,
full, then the full-FT budgets of por and badnets; 16 cells) take ~40 min, the whole default grid
(42 cells, 4 poisonings) ~1 h 40 min.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import ResultFile  # noqa: E402

from peftshield.attacks.config import ATTACKS, attack_config  # noqa: E402
from peftshield.attacks.record import PoisonRecord, has_poison_record, read_poison_record  # noqa: E402
from peftshield.data.records import Example, Splits  # noqa: E402
from peftshield.errors import PeftshieldError  # noqa: E402
from peftshield.tuning.config import METHODS, method_config  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "retention.json"
WORK = HERE / "work"

DEFAULT_ATTACKS = ("clean-label", "badnets", "por", "neuba")
#: methods in the order their cells run within a tier
METHOD_ORDER = ("lora", "prefix", "full", "prompt", "ptuning")
PEFT_METHODS = ("lora", "prompt", "ptuning", "prefix")
DEFAULT_BUDGETS = "lr5e-5x1,lr5e-5x3,lr1e-4x2"
#: the cells that come first: a partial run still answers the main question for these
CORE_ATTACKS = ("control", "por", "badnets")
CORE_METHODS = ("lora", "prefix", "full")
ATTACK_RANK = ("control", "por", "badnets", "clean-label", "neuba")

# Rough per-step costs on an unloaded 2-core CPU (batch 32 x <=64 tokens, minilm), for --plan only.
STEP_SECONDS = {"full": 1.2, "lora": 0.55, "prefix": 0.55, "prompt": 0.65, "ptuning": 0.65}
POISON_STEP_SECONDS = 1.3  # por / neuba: a full-FT step on 32 texts plus a reference forward
EVAL_SECONDS_PER_TEXT = 0.004  # measured: ~0.003 of a full-FT step per movies text


# --------------------------------------------------------------------------------------------
# Cells


@dataclass(frozen=True)
class Cell:
    """One victim: a backbone (``control`` or a poisoned one) tuned by one method at one budget."""

    attack: str
    method: str
    budget: str = "default"
    head: str = "fresh"

    def label(self) -> str:
        extra = "" if self.budget == "default" else f" @{self.budget}"
        extra += "" if self.head == "fresh" else f" (head {self.head})"
        return f"{self.attack} / {self.method}{extra}"


def attack_kind(attack: str) -> str:
    return ATTACKS[attack].kind


def parse_budget(spec: str) -> dict[str, Any]:
    """``lr5e-5x3`` -> ``{"lr": 5e-05, "epochs": 3}`` (a full fine-tuning budget)."""
    match = re.fullmatch(r"lr(\d+(?:\.\d+)?(?:e-?\d+)?)x(\d+)", spec.strip())
    if not match or float(match.group(1)) <= 0 or int(match.group(2)) < 1:
        raise SystemExit(f"bad budget {spec!r}: write lr<LR>x<EPOCHS>, e.g. lr5e-5x3")
    return {"lr": float(match.group(1)), "epochs": int(match.group(2))}


def plan_cells(attacks: list[str], methods: list[str], budgets: list[str]) -> list[Cell]:
    """Every cell, most informative first (see the module docstring)."""
    cells = []
    for attack in ["control", *attacks]:
        for method in [m for m in METHOD_ORDER if m in methods]:
            cells.append(Cell(attack, method))
            if method == "lora" and attack != "control" and attack_kind(attack) == "task-specific":
                cells.append(Cell(attack, method, head="keep"))
            if method == "full":
                cells += [Cell(attack, method, budget=b) for b in budgets]

    def tier(cell: Cell) -> int:
        core = cell.attack in CORE_ATTACKS
        if cell.budget != "default":
            if cell.attack == "control":
                return 5
            return 1 if core else 4
        if core:
            return 0 if cell.method in CORE_METHODS else 2
        return 3

    def rank(cell: Cell) -> int:
        return ATTACK_RANK.index(cell.attack) if cell.attack in ATTACK_RANK else len(ATTACK_RANK)

    return sorted(cells, key=lambda c: (tier(c), rank(c)))


# --------------------------------------------------------------------------------------------
# Data and models: the real setup (minilm, movies, amazon/tweets, wiki) or the smoke setup


class Setup:
    """Where the backbone and the corpora come from, and the recipe overrides of a run."""

    smoke_prefix = "retention-smoke-"  # the smoke run's temporary folder

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.smoke = args.smoke
        self.backbone = "minilm"
        self.backbone_name = "minilm"
        self.victim_corpus = "movies"
        self._splits: dict[str, Splits] = {}
        if self.smoke:
            from peftshield.models.tiny import build_tiny_bert

            self.tmp = Path(tempfile.mkdtemp(prefix=self.smoke_prefix))
            self.backbone = str(build_tiny_bert(self.tmp / "tiny-bert", seed=0, pooling="mean"))
            self.backbone_name = "tiny"
            self.victim_corpus = "toy"

    # --- data
    def victim_splits(self) -> Splits:
        if self.smoke:
            return Splits(train=_toy(160, 1), dev=_toy(40, 2), test=_toy(60, 3))
        return self._labelled("movies", self.args.max_train)

    def attacker_splits(self, corpus: str) -> Splits:
        if self.smoke:
            return Splits(train=_toy(160, 11), dev=_toy(40, 12), test=_toy(60, 13))
        return self._labelled(corpus, self.args.poison_max_train)

    def _labelled(self, corpus: str, max_train: int) -> Splits:
        from peftshield.data.corpora import load_splits

        key = f"{corpus}:{max_train}"
        if key not in self._splits:
            settings = {
                "corpus": corpus,
                "split_seed": 0,
                "max_train": max_train,
                "max_eval": self.args.max_eval,
            }
            self._splits[key] = load_splits(settings)
        return self._splits[key]

    def wiki_texts(self) -> list:
        if self.smoke:
            from peftshield.models.tiny import NEUTRAL_WORDS

            rng = random.Random(5)
            return [
                " ".join(rng.choice(NEUTRAL_WORDS) for _ in range(rng.randint(6, 12))) for _ in range(240)
            ]
        from peftshield.data.corpora import load_corpus

        return load_corpus("wiki", label_column=None)

    def data_caps(self) -> dict[str, Any]:
        return {"max_train": self.args.max_train, "max_eval": self.args.max_eval}

    # --- recipes
    def attack_config(self, attack: str):
        overrides: dict[str, Any] = {}
        agnostic = attack_kind(attack) == "task-agnostic"
        if self.smoke:
            if agnostic:
                overrides = {"steps": 20, "probe_size": 8, "log_every": 10, "batch_size": 16, "lr": 1e-3}
            else:
                overrides = {"epochs": 2, "lr": 3e-3, "head_lr": 3e-2, "batch_size": 16}
                if attack != "clean-label":
                    overrides["poison_rate"] = 0.3
            overrides["max_length"] = 32
        if agnostic and self.args.poison_steps is not None:
            overrides["steps"] = self.args.poison_steps
        return attack_config(attack, overrides)

    def poison_corpus(self, attack: str) -> str:
        if self.smoke:
            return "toy-wiki" if attack_kind(attack) == "task-agnostic" else "toy"
        return "wiki" if attack_kind(attack) == "task-agnostic" else self.args.poison_corpus

    def method_config(self, method: str, budget: str):
        overrides: dict[str, Any] = {}
        if self.smoke:  # high rates so that a few steps on the tiny model move it
            fast = {"full": 3e-3, "lora": 3e-2, "prompt": 3e-2, "ptuning": 3e-2, "prefix": 3e-2}
            overrides = {"lr": fast[method], "head_lr": 3e-2, "batch_size": 16, "epochs": 2, "max_length": 32}
        if budget != "default":
            overrides.update(parse_budget(budget))
        return method_config(method, overrides)


def _toy(n: int, seed: int) -> list[Example]:
    """Smoke data: neutral words plus one sentiment word that decides the label."""
    from peftshield.models.tiny import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = [rng.choice(NEUTRAL_WORDS) for _ in range(rng.randint(4, 9))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE_WORDS if label else NEGATIVE_WORDS))
        out.append(Example(" ".join(words), label))
    return out


# --------------------------------------------------------------------------------------------
# Poisoned backbones: built once, cached under the work folder


class Poisons:
    """Poisoned backbones by attack: each built once (or reused from the work folder) and recorded."""

    def __init__(self, setup: Setup, results: ResultFile, work: Path, seed: int, device: Any) -> None:
        self.setup, self.results, self.work, self.seed, self.device = setup, results, work, seed, device
        self._done: dict[str, tuple[Path, PoisonRecord] | str] = {}

    def folder(self, attack: str) -> Path:
        """The cache folder of ``attack``: named by a hash of everything that shapes the weights."""
        config = self.setup.attack_config(attack)
        spec: dict[str, Any] = {
            "attack": attack,
            "backbone": self.setup.backbone_name,
            "corpus": self.setup.poison_corpus(attack),
            "recipe": config.to_dict(),
            "seed": self.seed,
        }
        if config.kind == "task-specific":
            spec["data"] = {
                "split_seed": 0,
                "max_train": self.setup.args.poison_max_train,
                "max_eval": self.setup.args.max_eval,
            }
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
        return self.work / f"{attack}-{spec['corpus']}-s{self.seed}-{digest}"

    def get(self, attack: str) -> tuple[Path, PoisonRecord]:
        """The folder and record of ``attack``'s poisoned backbone (a poisoning failure raises)."""
        done = self._done.get(attack)
        if isinstance(done, str):
            raise RuntimeError(f"poisoning {attack} failed: {done}")
        if done is not None:
            return done
        folder = self.folder(attack)
        key = {"cell": "poison", "attack": attack, "seed": self.seed, "poison": folder.name}
        row = self.results.run_cell(key, lambda: self._build_row(attack, folder))
        if "error" in row:
            self._done[attack] = row["error"]
            raise RuntimeError(f"poisoning {attack} failed: {row['error']}")
        if not has_poison_record(folder):  # a finished row whose folder was deleted: poison again
            self._build(attack, folder)
        self._done[attack] = (folder, read_poison_record(folder))
        return self._done[attack]  # type: ignore[return-value]

    def _build(self, attack: str, folder: Path) -> bool:
        """Poison into ``folder`` unless it already holds a poisoned backbone; return whether it was built."""
        if has_poison_record(folder):
            print(f"  reuse poisoned backbone {folder}", flush=True)
            return False
        config = self.setup.attack_config(attack)
        corpus = self.setup.poison_corpus(attack)
        print(f"  poisoning {attack} on {corpus} -> {folder}", flush=True)
        if config.kind == "task-agnostic":
            from peftshield.attacks.task_agnostic import poison_task_agnostic

            result = poison_task_agnostic(
                self.setup.backbone,
                self.setup.wiki_texts(),
                config,
                seed=self.seed,
                device=self.device,
                progress=False,
                corpus_name=corpus,
            )
        else:
            from peftshield.attacks.task_specific import poison_task_specific

            data = {"corpus": corpus, "split_seed": 0, "max_train": self.setup.args.poison_max_train}
            result = poison_task_specific(
                self.setup.backbone,
                self.setup.attacker_splits(corpus),
                config,
                seed=self.seed,
                device=self.device,
                progress=False,
                corpus=corpus,
                data={**data, "max_eval": self.setup.args.max_eval},
            )
        result.save(folder, overwrite=folder.exists())
        return True

    def _build_row(self, attack: str, folder: Path) -> dict:
        built = self._build(attack, folder)
        record = read_poison_record(folder)
        metrics = {k: v for k, v in record.metrics.items() if k != "history"}
        return {
            "backbone": self.setup.backbone_name,
            "corpus": record.poison_corpus,
            "kind": record.kind,
            "poison_seconds": record.wall_seconds,
            "built_now": built,
            "folder": str(folder),
            "triggers": [t.describe() for t in record.trigger_objects()],
            "target": record.target,
            "recipe": record.recipe,
            "attacker_metrics": metrics,
        }


def trigger_record(config, backbone: str, seed: int) -> PoisonRecord:
    """A record carrying only ``config``'s evaluation triggers: the control victim is measured with it."""
    agnostic = config.kind == "task-agnostic"
    return PoisonRecord(
        attack=config.attack,
        kind=config.kind,
        triggers=[t.to_dict() for t in config.make_triggers()],
        target=None if agnostic else config.target,
        pv_file="pvs.safetensors" if agnostic else None,
        pooling="",
        poison_corpus="none (control)",
        recipe=config.to_dict(),
        seed=seed,
        source_backbone={"ref": backbone, "fingerprint": ""},
        wall_seconds=0.0,
        meta={},
    )


# --------------------------------------------------------------------------------------------
# One victim cell


def _backdoor_fields(measured: dict) -> dict:
    dominant = [v["asr_dominant"] for v in measured["per_trigger"].values() if v["asr_dominant"] is not None]
    return {
        "asr": measured["asr"],
        "asr_lms": measured["asr_lms"],
        "asr_dominant": float(np.mean(dominant)) if dominant else None,
        "asr_convention": measured["asr_convention"],
        "target": measured["target"],
        "per_trigger": measured["per_trigger"],
    }


def tune_victim(
    cell: Cell, setup: Setup, poisons: Poisons, splits: Splits, attacks: list[str], args
) -> tuple[Any, Any, dict[str, PoisonRecord], dict[str, Any]]:
    """Tune ``cell``'s victim on the clean victim data (also used by bench_psim.py).

    Returns the tune result, its method config, the trigger records to measure it with (the
    attack's own; every attack's for the control) and the row fields naming its backbone.
    """
    from peftshield.tuning.trainer import tune

    row: dict[str, Any] = {"backbone": setup.backbone_name, "corpus": setup.victim_corpus}
    if cell.attack == "control":
        backbone = setup.backbone
        records = {a: trigger_record(setup.attack_config(a), setup.backbone_name, args.seed) for a in attacks}
        row.update({"poison_corpus": None, "poison_seconds": None})
    else:
        folder, record = poisons.get(cell.attack)
        backbone = str(folder)
        records = {cell.attack: record}
        row.update({"poison_corpus": record.poison_corpus, "poison_seconds": record.wall_seconds})
    config = setup.method_config(cell.method, cell.budget)
    result = tune(
        backbone,
        splits.train,
        splits.dev,
        config,
        seed=args.seed,
        device=args.device,
        head=cell.head,
        progress=False,
    )
    return result, config, records, row


def victim_cell(cell: Cell, setup: Setup, poisons: Poisons, splits: Splits, attacks: list[str], args) -> dict:
    from peftshield.attacks.success import backdoor_metrics

    result, config, records, row = tune_victim(cell, setup, poisons, splits, attacks, args)
    start = time.perf_counter()
    measured = {
        attack: backdoor_metrics(
            result.model, result.tokenizer, rec, splits.test, seed=args.seed, max_length=config.max_length
        )
        for attack, rec in records.items()
    }
    eval_seconds = time.perf_counter() - start
    first = next(iter(measured.values()))
    row.update(
        {
            "cacc": first["cacc"],
            "dev_accuracy": result.best_dev_accuracy,
            "seconds": result.train_seconds,
            "eval_seconds": round(eval_seconds, 2),
            "lr": config.lr,
            "epochs": config.epochs,
            "trainable_params": result.trainable_params,
            "n_train": len(splits.train),
            "n_test": first["n"],
            "config": config.to_dict(),
        }
    )
    if cell.attack == "control":
        row["by_attack"] = {attack: _backdoor_fields(m) for attack, m in measured.items()}
    else:
        row.update(_backdoor_fields(first))
    return row


# --------------------------------------------------------------------------------------------
# Summary and tables

# The summary and the tables live in the library, so that `peftshield report` reads the rows the
# same way this script prints them.

from peftshield.reporting.retention import finding_lines, summarize, tables  # noqa: E402

# --------------------------------------------------------------------------------------------
# Plan: the cell order with a rough cost estimate


def estimate(cell: Cell, args, attacks: list[str]) -> float:
    if args.smoke:
        return 1.0
    steps = math.ceil(args.max_train / 32)
    epochs = (
        parse_budget(cell.budget)["epochs"] if cell.budget != "default" else method_config(cell.method).epochs
    )
    train = steps * epochs * STEP_SECONDS[cell.method] + epochs * args.max_eval * EVAL_SECONDS_PER_TEXT
    if cell.attack == "control":
        n_triggers = sum(1 + len(attack_config(a).make_triggers()) for a in attacks)
    else:
        n_triggers = 1 + len(attack_config(cell.attack).make_triggers())
    return train + n_triggers * args.max_eval * EVAL_SECONDS_PER_TEXT


def poison_estimate(attack: str, args) -> float:
    config = attack_config(attack)
    if config.kind == "task-agnostic":
        return (args.poison_steps or config.steps) * POISON_STEP_SECONDS
    return config.epochs * math.ceil(args.poison_max_train / 32) * STEP_SECONDS["full"] + 20


def print_plan(cells: list[Cell], args, attacks: list[str]) -> None:
    total, poisoned = 0.0, set()
    print("order | cell | est. s | cumulative min  (rough, unloaded 2-core CPU)")
    for i, cell in enumerate(cells, 1):
        cost = estimate(cell, args, attacks)
        note = ""
        if cell.attack != "control" and cell.attack not in poisoned:
            poisoned.add(cell.attack)
            cost += poison_estimate(cell.attack, args)
            note = "  (+ poisoning)"
        total += cost
        print(f"{i:3d} | {cell.label()} | {cost:5.0f} | {total / 60:6.1f}{note}")


# --------------------------------------------------------------------------------------------
# Command line (the options bench_psim.py shares)


def shared_parser(
    description: str | None,
    attacks: Sequence[str],
    methods: Sequence[str],
    *,
    result: Path,
    max_train: str,
    work: str,
    smoke: str,
) -> argparse.ArgumentParser:
    """The parser of the options this script and bench_psim.py share (same names, defaults, meaning).

    ``description`` is the calling script's docstring; ``attacks`` and ``methods`` the defaults of
    ``--attacks`` and ``--methods``; ``result`` the default result file; ``max_train``, ``work`` and
    ``smoke`` say what ``--max-train``, ``--work`` and ``--smoke`` are in the calling script. The
    script adds its own options to it.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--attacks", default=",".join(attacks))
    parser.add_argument("--methods", default=",".join(methods))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train", type=int, default=1500, help=max_train)
    parser.add_argument("--max-eval", type=int, default=500, help="dev and test examples")
    parser.add_argument(
        "--poison-max-train", type=int, default=1500, help="attacker examples (task-specific)"
    )
    parser.add_argument(
        "--poison-steps", type=int, default=None, help="por / neuba steps (default: library's)"
    )
    parser.add_argument("--poison-corpus", choices=("amazon", "tweets"), default="amazon")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--fresh", action="store_true", help="discard earlier result rows (not bench/work)")
    parser.add_argument("--results", type=Path, default=None, help=f"result file (default {result})")
    parser.add_argument("--work", type=Path, default=None, help=f"{work} (default {WORK})")
    parser.add_argument("--plan", action="store_true", help="print the cell order and a time estimate")
    parser.add_argument("--report", action="store_true", help="print tables and summary of done cells only")
    parser.add_argument("--smoke", action="store_true", help=f"tiny random BERT and toy data, {smoke}")
    return parser


def attacks_and_methods(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """``--attacks`` and ``--methods`` as lists; an unknown name stops the script."""
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for attack in attacks:
        if attack not in ATTACKS:
            raise SystemExit(f"unknown attack {attack!r}; choose from {', '.join(ATTACKS)}")
    for method in methods:
        if method not in METHODS:
            raise SystemExit(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return attacks, methods


def use_device(args: argparse.Namespace) -> None:
    """Resolve ``--device`` in place; a smoke run keeps torch to one thread."""
    import torch

    from peftshield.utils.device import resolve_device

    if args.smoke:
        torch.set_num_threads(1)
    args.device = resolve_device(args.device)


def open_results(
    args: argparse.Namespace, setup: Setup, benchmark: str, script: str, default: Path
) -> tuple[Path, Path, ResultFile]:
    """The result file (``default``; a smoke run's in its temporary folder), the work folder and the
    opened :class:`ResultFile` of ``benchmark``, which records how ``script`` was run."""
    result_path = args.results or (setup.tmp / f"{benchmark}.json" if args.smoke else default)
    work = args.work or (setup.tmp / "work" if args.smoke else WORK)
    command = f"python bench/{script} " + " ".join(sys.argv[1:])
    results = ResultFile(result_path, benchmark, command, fresh=args.fresh)
    results.data["meta"]["smoke"] = args.smoke
    return result_path, work, results


def victim_key(cell: Cell, setup: Setup, poisons: Poisons, seed: int) -> dict[str, Any]:
    """The result-file key of ``cell``'s victim row (bench_psim.py adds its PSIM module's folder)."""
    return {
        "cell": "victim",
        "attack": cell.attack,
        "method": cell.method,
        "budget": cell.budget,
        "head": cell.head,
        "seed": seed,
        **setup.data_caps(),
        "poison": None if cell.attack == "control" else poisons.folder(cell.attack).name,
    }


def main() -> None:
    parser = shared_parser(
        __doc__,
        DEFAULT_ATTACKS,
        METHODS,
        result=RESULT,
        max_train="victim training examples (movies)",
        work="poisoned backbones",
        smoke="~1 minute",
    )
    parser.add_argument(
        "--budgets", default=DEFAULT_BUDGETS, help="extra full-FT budgets lr<LR>x<EPOCHS>, or none"
    )
    args = parser.parse_args()

    attacks, methods = attacks_and_methods(args)
    budgets = [b.strip() for b in args.budgets.split(",") if b.strip() and b.strip().lower() != "none"]
    for budget in budgets:
        parse_budget(budget)
    cells = plan_cells(attacks, methods, budgets)
    if args.plan:
        print_plan(cells, args, attacks)
        return

    use_device(args)
    setup = Setup(args)
    for attack in attacks:  # bad recipe values (e.g. --poison-steps 0) stop the run before any work
        try:
            setup.attack_config(attack)
        except PeftshieldError as err:
            raise SystemExit(f"error: {err}") from None
    result_path, work, results = open_results(args, setup, "retention", "bench_retention.py", RESULT)
    # The control victims are measured with the triggers of every attack (the default four and any chosen).
    trigger_attacks = list(dict.fromkeys([*DEFAULT_ATTACKS, *attacks]))

    if not args.report:
        started = time.perf_counter()
        splits = setup.victim_splits()
        poisons = Poisons(setup, results, work, args.seed, args.device)
        print(f"{len(cells)} cells; results -> {result_path}; poisoned backbones -> {work}", flush=True)
        for i, cell in enumerate(cells, 1):
            key = victim_key(cell, setup, poisons, args.seed)
            print(f"[{i}/{len(cells)}] {cell.label()}", flush=True)
            row = results.run_cell(
                key, lambda c=cell: victim_cell(c, setup, poisons, splits, trigger_attacks, args)
            )
            if "error" in row:
                print(f"  error: {row['error']}", flush=True)
            elif cell.attack == "control":
                shown = ", ".join(f"{a} {v['asr']:.3f}" for a, v in row["by_attack"].items())
                print(
                    f"  CACC {row['cacc']:.3f}; false-trigger ASR: {shown}; {row['seconds']:.1f} s",
                    flush=True,
                )
            else:
                print(
                    f"  CACC {row['cacc']:.3f}, ASR {row['asr']:.3f}, ASR_lms {row['asr_lms']:.3f}; "
                    f"{row['seconds']:.1f} s",
                    flush=True,
                )
        print(f"done in {time.perf_counter() - started:.0f} s", flush=True)

    summary = summarize(results.rows, attacks, budgets)
    errors = [r for r in results.rows if "error" in r]
    summary["cells"] = {"planned": len(cells), "rows": len(results.rows), "errors": len(errors)}
    if not args.report:  # --report leaves the file (and its rerun command) as it is
        results.finish(summary)
    print()
    print(tables(results.rows, attacks, methods, budgets, setup.victim_corpus))
    print()
    print(finding_lines(summary))
    print(f"\nresults: {result_path}")


if __name__ == "__main__":
    main()
