"""PSIM benchmark (issue 4): does the Poisoned Sample Identification Module (Zhao et al., NAACL
Findings 2024, §3) keep a backdoored PEFT victim's triggers out at a small cost in clean accuracy?

What it measures. Every backbone of the retention benchmark is reused: the clean ``minilm``
(``control``), the task-specific backdoors (badnets, insent, template, clean-label: PSIM's threat
model, poisoned by full fine-tuning on ``amazon``) and the task-agnostic ones (por, neuba: PSIM was
not designed for them). Per backbone, one PSIM module is fitted: the detector's default recipe
(``peftshield.defenses.psim``; a LoRA module, 1 epoch, every label reset at random, the published head
kept and frozen) on the clean ``movies`` training split — it depends on the backbone and the
defender's clean data only, so every victim of that backbone shares it. Its thresholds: the
paper's fixed 0.7 and calibrated ones at a target FRR of 0.01, 0.02 and 0.05 on the module's
scores of the clean ``movies`` dev split (never poisoned data, never the test split). A victim
then tunes each backbone on clean ``movies`` with each PEFT method (lora, prompt, ptuning, prefix;
``full`` on request), exactly as in ``bench_retention.py`` (same recipe and seed; fresh head, and
for task-specific attacks also LoRA with the attacker's head kept, ``head: keep``). The guard (the
PSIM module in front of the victim) runs once over the clean test split and its triggered copies,
and from that one scoring pass every threshold policy is read: CACC and ASR without the defence
(PSIM convention for task-specific attacks; LMSanitator's ``asr_lms`` for por / neuba), defended
CACC, defended ASR, FRR, FAR (plus precision, recall, F1), AUROC, an ROC curve (<= 50 points) and
the FRR-ASR trade-off as the threshold moves (~30 thresholds placed at quantiles of the clean test
scores; a curve for the report, not an operating point). The control victims are measured with the
triggers of every attack (false-trigger baseline; PSIM's FRR on a clean backbone). Latency: the
undefended victim and the guard (PSIM + victim, the victim run on every text) classify the same
test texts at the same batch size, 3 interleaved repeats, ratio of the medians
(``overhead_ratio``, target <= 1.6). The summary says per attack x method whether the issue's
target holds (defended ASR <= 0.02 with a CACC cost <= 1 point at one of the calibrated thresholds)
and gives the mean overhead ratio and the PSIM fit times.

Run (resumable; a killed run is simply started again and skips finished cells)::

    .venv/bin/python bench/bench_psim.py 2>&1 | tee bench/logs/psim.log
    .venv/bin/python bench/bench_psim.py --plan      # the cell order and a rough time estimate
    .venv/bin/python bench/bench_psim.py --report    # tables + summary of what is done, runs nothing
    .venv/bin/python bench/bench_psim.py --smoke     # the whole pipeline on a tiny BERT, ~1-3 min

Options: ``--attacks``, ``--methods`` (default the four PEFT methods; add ``full``), ``--seed``,
``--max-train 1500 --max-eval 500`` (victim and PSIM data), ``--poison-max-train 1500``,
``--poison-steps``, ``--poison-corpus amazon|tweets`` (as bench_retention.py: the same values find
the same poisoned backbones), ``--psim-method`` and ``--psim-set KEY=VALUE`` (the PSIM module's
recipe; default the detector's), ``--device auto``, ``--fresh`` (discard earlier result rows).

Resumability. Rows of ``bench/results/psim.json`` (docs/design.md, "Benchmark result files"): one per
poisoning (``cell: poison``, reused backbones included), one per PSIM fit (``cell: fit``) and one
per victim (``cell: victim``, ``defense: psim``, the threshold policies under ``policies``, keyed
``fixed@0.7``, ``calibrated@0.01`` ...). Poisoned backbones come from the retention benchmark's
content-addressed cache ``bench/work/<attack>-<corpus>-s<seed>-<hash>`` (built here, the same way,
when missing); PSIM modules are cached beside them as ``bench/work/psim-<attack>-s<seed>-<hash>``
(the hash covers the backbone folder, the detector's parameters, the data caps and the seed),
holding ``detector.json``, the module and ``calibration.json`` (the clean dev scores). Delete a
folder to build it again. A failing cell is a row with ``error`` and is retried on the next run.
Cells run in tiers, most informative first: badnets / insent / template with lora (+ head kept)
and prefix; their prompt and ptuning; clean-label; por / neuba with lora and prefix; the control
with lora and prefix; the rest.

Cost (rough, unloaded 2-core CPU; ``--plan`` prints it per cell, with the retention benchmark's
per-step costs): a victim 1.5-2 min; its guarded evaluation ~10 s (task-specific) to ~45 s
(por / neuba: every test text x 6 triggers, two models) plus ~20 s of latency repeats; a PSIM fit
~35 s per backbone; a poisoning (only when bench/work lacks it) 3-7 min.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_retention as retention  # noqa: E402
from _results import ResultFile  # noqa: E402
from bench_retention import Cell, Poisons, Setup, attack_kind  # noqa: E402

from peftshield.attacks.record import has_poison_record  # noqa: E402
from peftshield.data.records import Splits  # noqa: E402
from peftshield.defenses.psim import PSIMDetector  # noqa: E402
from peftshield.errors import PeftshieldError  # noqa: E402
from peftshield.tuning.config import METHODS, method_config  # noqa: E402
from peftshield.utils.io import read_json, write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "psim.json"
WORK = retention.WORK  # the retention benchmark's cache: its poisoned backbones are reused

#: clean-label last: the retention run builds that backbone late
DEFAULT_ATTACKS = ("badnets", "insent", "template", "clean-label", "por", "neuba")
DEFAULT_METHODS = ("lora", "prompt", "ptuning", "prefix")
METHOD_ORDER = ("lora", "prefix", "prompt", "ptuning", "full")
ATTACK_RANK = ("badnets", "insent", "template", "clean-label", "por", "neuba", "control")
TIER1_ATTACKS = ("badnets", "insent", "template")

FIXED = 0.7  # the paper's threshold (PSIM §3)
TARGET_FRRS = (0.01, 0.02, 0.05)
TARGET_ASR, TARGET_CACC_COST, TARGET_OVERHEAD = 0.02, 0.01, 1.6
LATENCY_REPEATS = 3
GUARD_BATCH = 128
ROC_POINTS = 50
#: clean-test FRRs at which the trade-off curve places its thresholds (dense where FRR is small)
TRADEOFF_FRRS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.35)
TRADEOFF_FRRS += (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98)
CALIBRATION_FILE = "calibration.json"


# --------------------------------------------------------------------------------------------
# Cells


def plan_cells(attacks: list[str], methods: list[str]) -> list[Cell]:
    """Every victim cell (bench_retention's :class:`Cell`), in tiers, most informative first."""
    cells = []
    for attack in [*attacks, "control"]:
        for method in [m for m in METHOD_ORDER if m in methods]:
            cells.append(Cell(attack, method))
            if method == "lora" and attack != "control" and attack_kind(attack) == "task-specific":
                cells.append(Cell(attack, method, head="keep"))

    def tier(cell: Cell) -> int:
        core = cell.method in ("lora", "prefix")
        if cell.attack in TIER1_ATTACKS:
            if core:
                return 1
            return 2 if cell.method in ("prompt", "ptuning") else 6
        if cell.attack == "control":
            return 5 if core else 6
        if attack_kind(cell.attack) == "task-specific":  # clean-label, or another chosen one
            return 3
        return 4 if core else 6

    def rank(cell: Cell) -> tuple[int, int, int]:
        attack = ATTACK_RANK.index(cell.attack) if cell.attack in ATTACK_RANK else len(ATTACK_RANK)
        return attack, METHOD_ORDER.index(cell.method), cell.head != "fresh"

    return sorted(cells, key=lambda c: (tier(c), rank(c)))


def policies(dev_scores: np.ndarray) -> dict[str, float]:
    """The threshold policies: the paper's fixed 0.7 and calibrated ones on clean dev scores."""
    from peftshield.evaluation.metrics import calibrate_threshold

    out = {f"fixed@{FIXED:g}": FIXED}
    for frr in TARGET_FRRS:
        out[f"calibrated@{frr:g}"] = calibrate_threshold(dev_scores, frr)
    return out


# --------------------------------------------------------------------------------------------
# PSIM modules: one per backbone, fitted once, cached under the work folder


def psim_setting(psim_set: list[str]) -> dict[str, Any]:
    """``["lr=2e-5", "head_lr=2e-5"]`` -> ``{"lr": 2e-05, "head_lr": 2e-05}`` (JSON values, else strings)."""
    out: dict[str, Any] = {}
    for item in psim_set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"bad --psim-set {item!r}: write KEY=VALUE, e.g. lr=2e-5")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


class Modules:
    """PSIM modules by backbone (``control`` or an attack), each fitted once or reused, and recorded."""

    def __init__(
        self, setup: Setup, results: ResultFile, poisons: Poisons, splits: Splits, work: Path, args
    ) -> None:
        self.setup, self.results, self.poisons, self.splits, self.work, self.args = (
            setup,
            results,
            poisons,
            splits,
            work,
            args,
        )
        self._failed: dict[str, str] = {}
        self._current: tuple[str, Any, dict[str, float]] | None = None  # one module in memory

    def params(self, backbone: str) -> dict[str, Any]:
        """The detector's parameters (fit on all training texts; calibration is on the dev split)."""
        config = dict(self.args.psim_config)
        if self.setup.smoke:
            config.setdefault("max_length", 32)
        return {
            "backbone": backbone,
            "method": self.args.psim_method,
            "config": config or None,
            "threshold": FIXED,
            "calibration_fraction": 0.0,
            "seed": self.args.seed,
        }

    def detector(self, backbone: str):
        """An unfitted PSIM detector on ``backbone`` with this run's parameters."""
        from peftshield.defenses.psim import PSIMDetector

        return PSIMDetector(**self.params(backbone), device=str(self.args.device), batch_size=GUARD_BATCH)

    def folder(self, attack: str) -> Path:
        """The cache folder of ``attack``'s module: named by a hash of everything that shapes it."""
        source = self.setup.backbone_name if attack == "control" else self.poisons.folder(attack).name
        spec = {
            "backbone": source,
            "params": {k: v for k, v in self.params("").items() if k != "backbone"},
            "data": {"corpus": self.setup.victim_corpus, "split_seed": 0, **self.setup.data_caps()},
            "seed": self.args.seed,
        }
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
        return self.work / f"psim-{attack}-s{self.args.seed}-{digest}"

    def key(self, attack: str) -> dict[str, Any]:
        return {"cell": "fit", "attack": attack, "seed": self.args.seed, "psim": self.folder(attack).name}

    def get(self, attack: str) -> tuple[Any, dict[str, float]]:
        """The fitted detector of ``attack``'s backbone and its threshold policies (failures raise)."""
        if attack in self._failed:
            raise RuntimeError(f"PSIM fit on {attack} failed: {self._failed[attack]}")
        if self._current is not None and self._current[0] == attack:
            return self._current[1], self._current[2]
        folder = self.folder(attack)
        row = self.results.run_cell(self.key(attack), lambda: self._fit_row(attack, folder))
        if "error" in row:
            self._failed[attack] = row["error"]
            raise RuntimeError(f"PSIM fit on {attack} failed: {row['error']}")
        if self._current is not None and self._current[0] == attack:  # the fit cell just built it
            return self._current[1], self._current[2]
        self._current = None  # free the previous module before loading this one
        detector = self._build(attack, folder)  # a finished row whose folder was deleted: fit again
        if detector is None:
            from peftshield.defenses.base import load_detector

            detector = load_detector(folder, device=str(self.args.device))
        scores = np.asarray(read_json(folder / CALIBRATION_FILE)["dev_scores"], dtype=float)
        self._current = (attack, detector, policies(scores))
        return detector, self._current[2]

    def _backbone(self, attack: str) -> str:
        return self.setup.backbone if attack == "control" else str(self.poisons.get(attack)[0])

    def _build(self, attack: str, folder: Path):
        """Fit into ``folder`` unless it holds a module; write the dev scores; return a new detector."""
        detector = None
        if not (folder / "detector.json").is_file():
            print(f"  fitting PSIM on {attack} -> {folder}", flush=True)
            detector = self.detector(self._backbone(attack))
            detector.fit(self.splits.train)
            detector.save(folder, overwrite=folder.exists())
        if not (folder / CALIBRATION_FILE).is_file():
            if detector is None:
                from peftshield.defenses.base import load_detector

                detector = load_detector(folder, device=str(self.args.device))
            scores = detector.score([e.text for e in self.splits.dev])
            write_json(
                folder / CALIBRATION_FILE,
                {"split": "dev", "n": len(scores), "dev_scores": [float(s) for s in scores]},
            )
        return detector

    def _fit_row(self, attack: str, folder: Path) -> dict:
        from peftshield.defenses.base import read_detector_record

        built = not (folder / "detector.json").is_file()
        self._current = None
        detector = self._build(attack, folder)
        record = read_detector_record(folder)
        fitted = record["fitted"]
        scores = np.asarray(read_json(folder / CALIBRATION_FILE)["dev_scores"], dtype=float)
        chosen = policies(scores)
        if detector is not None:  # keep the freshly fitted module for the victims that follow
            self._current = (attack, detector, chosen)
        return {
            "backbone": self.setup.backbone_name,
            "corpus": self.setup.victim_corpus,
            "defense": "psim",
            "built_now": built,
            "folder": str(folder),
            "fit_seconds": fitted.get("fit_seconds_"),
            "psim_method": record["params"]["method"],
            "psim_head": fitted.get("head_"),
            "psim_config": fitted.get("config_"),
            "n_train": fitted.get("n_train_"),
            "n_dev": int(scores.size),
            "dev_score_mean": float(scores.mean()),
            "thresholds": chosen,
            "dev_frr": {name: float(np.mean(scores > t)) for name, t in chosen.items()},
        }


# --------------------------------------------------------------------------------------------
# Measurements from one scoring pass


def at_threshold(batch, threshold: float):
    """The guard's batch as it would be with the PSIM threshold at ``threshold`` (no re-scoring)."""
    from peftshield.defenses.guard import GuardedBatch

    scores = batch.scores["psim"]
    flags = scores > threshold
    return GuardedBatch(
        victim_pred=batch.victim_pred,
        scores=batch.scores,
        flags={"psim": flags},
        rejected=flags,
        thresholds={"psim": float(threshold)},
    )


def roc_points(clean: np.ndarray, triggered: np.ndarray, max_points: int = ROC_POINTS) -> dict[str, list]:
    """ROC of the score (triggered = positive), thinned to ``max_points`` spread along the curve."""
    clean, triggered = np.sort(np.asarray(clean, float)), np.sort(np.asarray(triggered, float))
    cuts = np.unique(np.concatenate([clean, triggered]))[::-1]  # flag score >= cut, high cuts first
    fpr = np.r_[0.0, (clean.size - np.searchsorted(clean, cuts, "left")) / clean.size]
    tpr = np.r_[0.0, (triggered.size - np.searchsorted(triggered, cuts, "left")) / triggered.size]
    if fpr.size > max_points:  # keep points evenly spaced in path length, so steep parts keep detail
        path = np.r_[0.0, np.cumsum(np.abs(np.diff(fpr)) + np.abs(np.diff(tpr)))]
        keep = np.unique(np.searchsorted(path, np.linspace(0.0, path[-1], max_points)))
        keep = np.unique(np.r_[0, np.minimum(keep, fpr.size - 1), fpr.size - 1])
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [round(float(x), 5) for x in fpr], "tpr": [round(float(x), 5) for x in tpr]}


def _defended(clean, clean_labels, trig, trig_labels, target, n_triggers: int) -> dict[str, Any]:
    from peftshield.evaluation.defended import defended_metrics

    row = defended_metrics(clean, clean_labels, trig, trig_labels, target, n_triggers=n_triggers)
    if target is None:  # one name for both conventions (asr_convention says which)
        row["asr"], row["defended_asr"] = row["asr_lms"], row["defended_asr_lms"]
    return row


def measure(
    clean, clean_labels, trig, trig_labels, target, n_triggers: int, chosen: dict[str, float]
) -> dict:
    """CACC, ASR, AUROC, each threshold policy, ROC and FRR-ASR trade-off of one scoring pass.

    ``clean`` / ``trig`` are the guard's batches on the clean test texts and their triggered
    copies; every threshold is applied to the same scores and victim predictions.
    """
    from peftshield.evaluation.metrics import calibrate_threshold

    def at(cut: float | None) -> dict[str, Any]:
        if cut is None:
            return _defended(clean, clean_labels, trig, trig_labels, target, n_triggers)
        moved = at_threshold(clean, cut), at_threshold(trig, cut)
        return _defended(moved[0], clean_labels, moved[1], trig_labels, target, n_triggers)

    base = at(None)
    out: dict[str, Any] = {
        "cacc": base["cacc"],
        "asr": base["asr"],
        "asr_convention": "psim" if target is not None else "lms",
        "target": target,
        "auroc": base["auroc"],
        "n_clean": base["n_clean"],
        "n_triggered": base["n_triggered"],
        "n_triggers": n_triggers,
        "psim_score_mean": {
            "clean": float(clean.scores["psim"].mean()),
            "triggered": float(trig.scores["psim"].mean()),
        },
        "policies": {},
    }
    for name, threshold in chosen.items():
        row = at(threshold)
        out["policies"][name] = {"threshold": float(threshold)} | {
            k: row[k] for k in ("defended_cacc", "defended_asr", "frr", "far", "precision", "recall", "f1")
        }
        out["policies"][name]["cacc_cost"] = base["cacc"] - row["defended_cacc"]
    out["roc"] = roc_points(clean.scores["psim"], trig.scores["psim"])
    clean_scores = clean.scores["psim"]
    cuts = sorted({float(clean_scores.max())} | {calibrate_threshold(clean_scores, f) for f in TRADEOFF_FRRS})
    curve: dict[str, list] = {"threshold": [], "frr": [], "asr": []}
    for cut in cuts:
        row = at(cut)
        curve["threshold"].append(round(cut, 6))
        curve["frr"].append(round(row["frr"], 5))
        curve["asr"].append(round(row["defended_asr"], 5))
    out["tradeoff"] = curve
    return out


def triggered_set(test: list, record, seed: int) -> tuple[list[str], list[int], Any, int]:
    """Texts and true labels of the triggered test copies (one block per trigger, as evaluate_guard)."""
    from peftshield.evaluation.defended import triggered_examples

    triggers = record.trigger_objects()
    examples = []
    for k, trigger in enumerate(triggers):
        examples += triggered_examples(test, trigger, record.target, seed=seed + k)
    return [e.text for e in examples], [e.label for e in examples], record.target, len(triggers)


def as_victim(result):
    """A :class:`TunedModel` view of a fresh tune result (what the guard takes), without saving it."""
    from peftshield.tuning.trainer import TunedModel, backbone_record

    run = {
        "method": result.config.method,
        "num_labels": result.num_labels,
        "backbone": backbone_record(result.backbone, result.backbone_fingerprint),
    }
    return TunedModel(
        model=result.model,
        tokenizer=result.tokenizer,
        run=run,
        backbone=result.backbone,
        max_length=result.config.max_length,
    )


def latency(guard, texts: list[str], repeats: int = LATENCY_REPEATS) -> dict[str, Any]:
    """Undefended victim vs guard on the same texts and batch size; medians of interleaved repeats."""
    from peftshield.models.inference import predict_outputs

    victim = guard.victim
    plain, guarded = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        predict_outputs(
            victim.model, victim.tokenizer, texts, batch_size=guard.batch_size, max_length=victim.max_length
        )
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        guard.run(texts, victim_on_rejected=True)
        guarded.append(time.perf_counter() - start)
    undefended, defended = statistics.median(plain), statistics.median(guarded)
    return {
        "overhead_ratio": defended / undefended,
        "latency": {
            "undefended_s": round(undefended, 4),
            "guarded_s": round(defended, 4),
            "repeats": repeats,
            "n_texts": len(texts),
            "batch_size": guard.batch_size,
        },
    }


def victim_cell(
    cell: Cell, setup: Setup, poisons: Poisons, modules: Modules, splits: Splits, attacks: list[str], args
) -> dict:
    """Tune the victim as bench_retention does, then measure it behind its backbone's PSIM module."""
    import warnings

    from peftshield.defenses.base import TruncationWarning
    from peftshield.defenses.guard import Guard

    result, config, records, row = retention.tune_victim(cell, setup, poisons, splits, attacks, args)
    detector, chosen = modules.get(cell.attack)
    guard = Guard(as_victim(result), {"psim": detector}, batch_size=GUARD_BATCH)
    test = list(splits.test)
    texts, labels = [e.text for e in test], [e.label for e in test]
    start = time.perf_counter()
    with warnings.catch_warnings():
        # a few long reviews are truncated, identically for both models: not worth a warning per pass
        warnings.simplefilter("ignore", TruncationWarning)
        clean = guard.run(texts, victim_on_rejected=True)
        measured = {}
        for attack, record in records.items():
            trig_texts, trig_labels, target, n = triggered_set(test, record, args.seed)
            trig = guard.run(trig_texts, victim_on_rejected=True)
            measured[attack] = measure(clean, labels, trig, trig_labels, target, n, chosen)
        eval_seconds = time.perf_counter() - start
        timing = latency(guard, texts)
    row.update(
        {
            "defense": "psim",
            "psim": modules.folder(cell.attack).name,
            "fit_seconds": getattr(detector, "fit_seconds_", None),
            "dev_accuracy": result.best_dev_accuracy,
            "seconds": result.train_seconds,
            "eval_seconds": round(eval_seconds, 2),
            **timing,
            "lr": config.lr,
            "epochs": config.epochs,
            "trainable_params": result.trainable_params,
            "n_train": len(splits.train),
            "config": config.to_dict(),
        }
    )
    if cell.attack == "control":
        first = next(iter(measured.values()))
        row["cacc"] = first["cacc"]
        row["policies"] = {
            name: {k: p[k] for k in ("threshold", "defended_cacc", "frr", "cacc_cost")}
            for name, p in first["policies"].items()
        }
        row["by_attack"] = measured
    else:
        row.update(measured[cell.attack])
    return row


# --------------------------------------------------------------------------------------------
# Summary and tables


def _victims(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["attack"], r["method"], r["head"]): r for r in rows if r.get("cell") == "victim"}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def target_check(row: dict) -> dict[str, Any]:
    """Which calibrated policies meet the issue's target (defended ASR <= 2 %, CACC cost <= 1 point)."""
    met = [
        name
        for name, p in row["policies"].items()
        if name.startswith("calibrated")
        and p["defended_asr"] <= TARGET_ASR
        and p["cacc_cost"] <= TARGET_CACC_COST + 1e-12
    ]
    return {"met": bool(met), "met_at": met}


def summarize(rows: list[dict], attacks: list[str]) -> dict:
    """Per attack x method: the target check and the headline figures; overhead and fit times."""
    ok = [r for r in rows if "error" not in r]
    victims = _victims(ok)
    cells: dict[str, Any] = {}
    for (attack, method, head), row in victims.items():
        if attack == "control":
            continue
        label = f"{attack}/{method}" + ("" if head == "fresh" else f" (head {head})")
        cells[label] = {
            "kind": attack_kind(attack),
            "cacc": row["cacc"],
            "asr": row["asr"],
            "auroc": row["auroc"],
            "overhead_ratio": row["overhead_ratio"],
            "policies": {
                n: {k: p[k] for k in ("defended_asr", "cacc_cost", "frr", "far")}
                for n, p in row["policies"].items()
            },
            **target_check(row),
        }
    specific = {k: v for k, v in cells.items() if v["kind"] == "task-specific"}
    ratios = [r["overhead_ratio"] for r in victims.values()]
    fits = {
        r["attack"]: {"fit_seconds": r["fit_seconds"], "built_now": r["built_now"], "dev_frr": r["dev_frr"]}
        for r in ok
        if r.get("cell") == "fit"
    }
    control = {
        m: {n: p["frr"] for n, p in r["policies"].items()}
        for (a, m, _), r in victims.items()
        if a == "control"
    }
    return {
        "target": (
            f"defended ASR <= {TARGET_ASR} with CACC cost <= {TARGET_CACC_COST} at a calibrated threshold"
        ),
        "cells": cells,
        "task_specific_met": sorted(k for k, v in specific.items() if v["met"]),
        "task_specific_not_met": sorted(k for k, v in specific.items() if not v["met"]),
        "mean_overhead_ratio": _mean(ratios),
        "max_overhead_ratio": max(ratios) if ratios else None,
        "overhead_target_met": None if not ratios else bool(_mean(ratios) <= TARGET_OVERHEAD),
        "fit": fits,
        "mean_fit_seconds": _mean([f["fit_seconds"] for f in fits.values()]),
        "control_frr": control,
        "attacks": attacks,
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def tables(rows: list[dict], attacks: list[str], methods: list[str], corpus: str = "movies") -> str:
    """Markdown: per victim CACC / ASR / AUROC and the defended figures at each threshold policy."""
    victims = _victims(rows)
    names = [f"fixed@{FIXED:g}", *[f"calibrated@{f:g}" for f in TARGET_FRRS]]
    order = [c for c in plan_cells(attacks, methods) if c.attack != "control"]
    order.sort(key=lambda c: (ATTACK_RANK.index(c.attack) if c.attack in ATTACK_RANK else 99, c.method))
    out = [
        f"PSIM guard on {corpus} test: CACC / ASR undefended, then defended CACC / ASR per threshold",
        "(ASR: PSIM convention for task-specific attacks, LMSanitator's for por / neuba; target: defended "
        "ASR <= 0.02 at a CACC cost <= 1 point at a calibrated threshold)",
        "",
        "| victim | CACC / ASR | AUROC | " + " | ".join(names) + " | overhead | target |",
        "|---|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for cell in order:
        row = victims.get((cell.attack, cell.method, cell.head))
        label = f"{cell.attack} / {cell.method}" + ("" if cell.head == "fresh" else " (head kept)")
        if row is None:
            continue
        if "error" in row:
            out.append(f"| {label} | error | | " + " | " * len(names) + " |")
            continue
        pol = row["policies"]
        shown = " | ".join(
            f"{_fmt(pol[n]['defended_cacc'])} / {_fmt(pol[n]['defended_asr'])}" if n in pol else "—"
            for n in names
        )
        check = target_check(row)
        verdict = ("met @" + ",".join(n.split("@")[1] for n in check["met_at"])) if check["met"] else "no"
        out.append(
            f"| {label} | {_fmt(row['cacc'])} / {_fmt(row['asr'])} | {_fmt(row['auroc'])} | {shown} | "
            f"{_fmt(row['overhead_ratio'], 2)}x | {verdict} |"
        )
    out += ["", "FRR / FAR per threshold policy (test split)", ""]
    out += ["| victim | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for cell in order:
        row = victims.get((cell.attack, cell.method, cell.head))
        if row is None or "error" in row:
            continue
        label = f"{cell.attack} / {cell.method}" + ("" if cell.head == "fresh" else " (head kept)")
        pol = row["policies"]
        out.append(
            f"| {label} | "
            + " | ".join(f"{_fmt(pol[n]['frr'])} / {_fmt(pol[n]['far'])}" if n in pol else "—" for n in names)
            + " |"
        )
    controls = [(m, victims.get(("control", m, "fresh"))) for m in METHOD_ORDER if m in methods]
    controls = [(m, r) for m, r in controls if r is not None and "error" not in r]
    if controls:
        out += [
            "",
            "Control (clean minilm): CACC, then FRR per threshold; ASR / AUROC with each attack's triggers",
            "",
        ]
        out += ["| victim | CACC | " + " | ".join(f"FRR {n}" for n in names) + " | ASR / AUROC by trigger |"]
        out += ["|---|---|" + "---|" * len(names) + "---|"]
        for method, row in controls:
            frrs = " | ".join(_fmt(row["policies"][n]["frr"]) if n in row["policies"] else "—" for n in names)
            by = ", ".join(f"{a} {_fmt(v['asr'])} / {_fmt(v['auroc'])}" for a, v in row["by_attack"].items())
            out.append(f"| control / {method} | {_fmt(row['cacc'])} | {frrs} | {by} |")
    fits = [r for r in rows if r.get("cell") == "fit" and "error" not in r]
    if fits:
        out += ["", "PSIM modules (fit on the clean training split; thresholds from the clean dev split)", ""]
        out += ["| backbone | fit s | head | dev mean conf. | " + " | ".join(names) + " |"]
        out += ["|---|---|---|---|" + "---|" * len(names)]
        for r in fits:
            thr = " | ".join(
                f"{r['thresholds'][n]:.4f} (FRR {r['dev_frr'][n]:.3f})" if n in r["thresholds"] else "—"
                for n in names
            )
            out.append(
                f"| {r['attack']} | {_fmt(r['fit_seconds'], 1)} | {r['psim_head']} | "
                f"{_fmt(r['dev_score_mean'])} | {thr} |"
            )
    return "\n".join(out)


def summary_lines(summary: dict) -> str:
    lines = [f"- target ({summary['target']}):"]
    lines.append(f"  met: {', '.join(summary['task_specific_met']) or 'none'}")
    lines.append(f"  not met: {', '.join(summary['task_specific_not_met']) or 'none'}")
    agnostic = {k: v for k, v in summary["cells"].items() if v["kind"] == "task-agnostic"}
    if agnostic:
        shown = ", ".join(f"{k} {'met' if v['met'] else 'no'}" for k, v in agnostic.items())
        lines.append(f"- task-agnostic (outside PSIM's design): {shown}")
    if summary["mean_overhead_ratio"] is not None:
        lines.append(
            f"- guard overhead: mean {summary['mean_overhead_ratio']:.2f}x, max "
            f"{summary['max_overhead_ratio']:.2f}x (target <= {TARGET_OVERHEAD}x: "
            f"{'met' if summary['overhead_target_met'] else 'not met'})"
        )
    if summary["fit"]:
        fits = ", ".join(f"{a} {_fmt(f['fit_seconds'], 1)} s" for a, f in summary["fit"].items())
        lines.append(f"- PSIM fit: {fits} (mean {_fmt(summary['mean_fit_seconds'], 1)} s)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Plan: the cell order with a rough cost estimate (bench_retention's per-step costs)


def n_triggered(attack: str, args) -> int:
    """Triggered test texts of ``attack``: half the test set per trigger (task-specific), all (agnostic)."""
    from peftshield.attacks.config import attack_config

    n = len(attack_config(attack).make_triggers())
    return n * args.max_eval // (2 if attack_kind(attack) == "task-specific" else 1)


def estimate(cell: Cell, args, attacks: list[str]) -> float:
    if args.smoke:
        return 1.0
    steps = math.ceil(args.max_train / 32)
    epochs = method_config(cell.method).epochs
    train = steps * epochs * retention.STEP_SECONDS[cell.method]
    train += epochs * args.max_eval * retention.EVAL_SECONDS_PER_TEXT
    trig = sum(n_triggered(a, args) for a in (attacks if cell.attack == "control" else [cell.attack]))
    guard = 2 * (args.max_eval + trig) * retention.EVAL_SECONDS_PER_TEXT  # two models per text
    timing = LATENCY_REPEATS * 3 * args.max_eval * retention.EVAL_SECONDS_PER_TEXT
    return train + guard + timing


def fit_estimate(args) -> float:
    steps = math.ceil(args.max_train / 32)
    method = args.psim_method
    return steps * retention.STEP_SECONDS.get(method, 0.65) + args.max_eval * retention.EVAL_SECONDS_PER_TEXT


def print_plan(cells: list[Cell], args, attacks: list[str], poisons: Poisons, modules: Modules) -> None:
    total, seen = 0.0, set()
    print("order | cell | est. s | cumulative min  (rough, unloaded 2-core CPU)")
    for i, cell in enumerate(cells, 1):
        cost, notes = estimate(cell, args, attacks), []
        if cell.attack not in seen:
            seen.add(cell.attack)
            if cell.attack != "control":
                if has_poison_record(poisons.folder(cell.attack)):
                    notes.append(f"backbone cached: {poisons.folder(cell.attack).name}")
                else:
                    cost += retention.poison_estimate(cell.attack, args)
                    notes.append("+ poisoning")
            if (modules.folder(cell.attack) / "detector.json").is_file():
                notes.append("PSIM cached")
            else:
                cost += fit_estimate(args)
                notes.append("+ PSIM fit")
        total += cost
        note = f"  ({'; '.join(notes)})" if notes else ""
        print(f"{i:3d} | {cell.label()} | {cost:5.0f} | {total / 60:6.1f}{note}")


# --------------------------------------------------------------------------------------------


class PsimSetup(Setup):
    """bench_retention's setup (same backbones, corpora, recipes, smoke data); smoke in its own folder."""

    smoke_prefix = "psim-smoke-"


def main() -> None:
    parser = retention.shared_parser(
        __doc__,
        DEFAULT_ATTACKS,
        DEFAULT_METHODS,
        result=RESULT,
        max_train="victim / PSIM training examples",
        work="backbones and modules",
        smoke="~1-3 minutes",
    )
    parser.add_argument(
        "--psim-method", default=PSIMDetector().method, help="PSIM module method (default: the detector's)"
    )
    parser.add_argument(
        "--psim-set", action="append", default=[], metavar="KEY=VALUE", help="PSIM recipe override"
    )
    args = parser.parse_args()

    attacks, methods = retention.attacks_and_methods(args)
    if args.psim_method not in METHODS:
        raise SystemExit(f"unknown PSIM method {args.psim_method!r}; choose from {', '.join(METHODS)}")
    args.psim_config = psim_setting(args.psim_set)
    cells = plan_cells(attacks, methods)

    if args.plan:
        args.smoke = False  # the plan is of the real run
        setup = PsimSetup(args)
        work = args.work or WORK
        poisons = Poisons(setup, None, work, args.seed, None)  # type: ignore[arg-type]  # folders only
        modules = Modules(setup, None, poisons, None, work, args)  # type: ignore[arg-type]
        print_plan(cells, args, attacks, poisons, modules)
        return

    retention.use_device(args)
    setup = PsimSetup(args)
    try:  # bad recipe values stop the run before any work
        for attack in attacks:
            setup.attack_config(attack)
        Modules(setup, None, None, None, WORK, args).detector("").check_params()  # type: ignore[arg-type]
    except PeftshieldError as err:
        raise SystemExit(f"error: {err}") from None
    result_path, work, results = retention.open_results(args, setup, "psim", "bench_psim.py", RESULT)

    if not args.report:
        started = time.perf_counter()
        splits = setup.victim_splits()
        poisons = Poisons(setup, results, work, args.seed, args.device)
        modules = Modules(setup, results, poisons, splits, work, args)
        print(f"{len(cells)} cells; results -> {result_path}; backbones and modules -> {work}", flush=True)
        for i, cell in enumerate(cells, 1):
            key = {
                **retention.victim_key(cell, setup, poisons, args.seed),
                "psim": modules.folder(cell.attack).name,
            }
            print(f"[{i}/{len(cells)}] {cell.label()}", flush=True)
            row = results.run_cell(
                key, lambda c=cell: victim_cell(c, setup, poisons, modules, splits, attacks, args)
            )
            if "error" in row:
                print(f"  error: {row['error']}", flush=True)
                continue
            cal = row["policies"][f"calibrated@{TARGET_FRRS[-1]:g}"]
            shown = f"CACC {row['cacc']:.3f}"
            if cell.attack != "control":
                shown += f", ASR {row['asr']:.3f}, AUROC {row['auroc']:.3f}"
                shown += f"; @cal{TARGET_FRRS[-1]:g}: dASR {cal['defended_asr']:.3f}"
            shown += f", dCACC {cal['defended_cacc']:.3f}, FRR {cal['frr']:.3f}"
            print(f"  {shown}; overhead {row['overhead_ratio']:.2f}x; {row['seconds']:.1f} s", flush=True)
        print(f"done in {time.perf_counter() - started:.0f} s", flush=True)

    summary = summarize(results.rows, attacks)
    errors = [r for r in results.rows if "error" in r]
    summary["rows"] = {"planned_victims": len(cells), "rows": len(results.rows), "errors": len(errors)}
    if not args.report:  # --report leaves the file (and its rerun command) as it is
        results.finish(summary)
    print()
    print(tables(results.rows, attacks, methods, setup.victim_corpus))
    print()
    print(summary_lines(summary))
    print(f"\nresults: {result_path}")


if __name__ == "__main__":
    main()
