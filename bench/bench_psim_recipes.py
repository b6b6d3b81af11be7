"""PSIM recipe comparison on ``minilm`` (issue 4: "find what works on our backbones and record it").

The PSIM score of a text depends only on the suspect backbone and the PSIM module trained on it,
not on the victim, so the recipe can be chosen with detector-only cells: for each poisoned
backbone already in ``bench/work/`` (built by ``bench_retention.py`` / ``bench_psim.py``) and each
recipe below, fit :class:`~peftshield.defenses.psim.PSIMDetector` on clean ``movies`` training texts
(random labels, calibration on 20 % of them), then score the clean ``movies`` test split and its
triggered copies (the non-target test samples with the backdoor's trigger) - or, with ``--split dev``
(the default since issue 13), the ``movies`` dev split and its triggered copies, so that the
recipe is chosen without reading the test split. Reported per cell:
AUROC, mean clean / triggered confidence, FRR and FAR at the paper's fixed 0.7, FAR at the
threshold calibrated at 2 % FRR on the held-out clean texts (its FRR on the test split beside
it), and the fit time. Recipes:

- ``ptuning-ours``: the library default (P-tuning, 5 tokens, lr 3e-3, head frozen);
- ``ptuning-reference``: the reference code's rates (lr 2e-5 for the prompt and the head);
- ``lora``: LoRA lr 1e-3, head frozen;
- ``prompt``: prompt tuning, lr 0.1 (our default), head frozen.

Run (resumable, one row per backbone x recipe x split)::

    .venv/bin/python bench/bench_psim_recipes.py --split dev --work bench/work/recipes
    .venv/bin/python bench/bench_psim_recipes.py --report

Rows without ``split`` were measured on the test split (before issue 13).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _results import ResultFile  # noqa: E402

RESULT = HERE / "results" / "psim_recipes.json"
WORK = HERE / "work"

RECIPES: dict[str, dict] = {
    "ptuning-ours": {"method": "ptuning", "config": {}},
    "ptuning-reference": {"method": "ptuning", "config": {"lr": 2e-5, "head_lr": 2e-5}},
    "lora": {"method": "lora", "config": {"lr": 1e-3}},
    "prompt": {"method": "prompt", "config": {}},
}
COLUMNS = [
    "backbone_folder",
    "split",
    "recipe",
    "auroc",
    "clean_mean",
    "triggered_mean",
    "frr_fixed",
    "far_fixed",
    "frr_cal",
    "far_cal",
    "fit_seconds",
]


def task_specific_backbones(work: Path) -> list[Path]:
    """Poisoned full-model folders (with a published head) under ``work``."""
    from peftshield.attacks.record import has_poison_record, read_poison_record

    found = []
    for folder in sorted(work.iterdir()) if work.exists() else []:
        if has_poison_record(folder) and read_poison_record(folder).kind == "task-specific":
            found.append(folder)
    return found


def cell(folder: Path, recipe: str, args) -> dict:
    """Fit one recipe on one backbone and measure it on the movies ``args.split`` split (dev or test)."""
    from peftshield.attacks.record import read_poison_record
    from peftshield.data.corpora import load_splits
    from peftshield.defenses.psim import PSIMDetector
    from peftshield.evaluation import metrics as m
    from peftshield.evaluation.defended import triggered_examples

    record = read_poison_record(folder)
    splits = load_splits({"corpus": "movies", "split_seed": 0, "max_train": args.max_train, "max_eval": 500})
    spec = RECIPES[recipe]
    detector = PSIMDetector(
        backbone=str(folder),
        method=spec["method"],
        config=spec["config"],
        threshold="calibrated",
        target_frr=0.02,
        seed=args.seed,
        device=args.device,
    )
    start = time.perf_counter()
    detector.fit(splits.train)
    fit_seconds = time.perf_counter() - start
    trigger = record.trigger_objects()[0]
    measured = splits.dev if args.split == "dev" else splits.test
    triggered = triggered_examples(measured, trigger, record.target, seed=args.seed)
    clean_scores = detector.score([e.text for e in measured])
    trig_scores = detector.score([e.text for e in triggered])
    fixed = m.detection_metrics(clean_scores, trig_scores, 0.7)
    cal = m.detection_metrics(clean_scores, trig_scores, detector.threshold_)
    return {
        "backbone_folder": folder.name,
        "split": args.split,
        "attack": record.attack,
        "defense": "psim",
        "method": spec["method"],
        "config": detector.config_,
        "auroc": m.auroc(clean_scores, trig_scores),
        "clean_mean": float(np.mean(clean_scores)),
        "triggered_mean": float(np.mean(trig_scores)),
        "frr_fixed": fixed["frr"],
        "far_fixed": fixed["far"],
        "threshold_cal": float(detector.threshold_),
        "frr_cal": cal["frr"],
        "far_cal": cal["far"],
        "n_clean": len(clean_scores),
        "n_triggered": len(trig_scores),
        "fit_seconds": round(fit_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--max-train", type=int, default=1000, help="clean movies texts for the module")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    where = "where the recipes are measured (choose on dev)"
    parser.add_argument("--split", choices=("dev", "test"), default="dev", help=where)
    parser.add_argument("--work", type=Path, default=WORK, help="folder holding the poisoned backbones")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    command = f"python bench/bench_psim_recipes.py --split {args.split} --max-train {args.max_train}"
    results = ResultFile(RESULT, "psim_recipes", command)
    for row in results.rows:
        row.setdefault("split", "test")  # the rows measured before the --split option
    if not args.report:
        for folder in task_specific_backbones(args.work):
            for recipe in args.recipes.split(","):
                key = {"backbone_folder": folder.name, "recipe": recipe, "seed": args.seed}
                key["split"] = args.split
                row = results.run_cell(key, lambda f=folder, r=recipe: cell(f, r, args))
                shown = ", ".join(f"{k} {row[k]:.3f}" for k in COLUMNS[2:] if k in row)
                print(f"  {shown or row.get('error')}", flush=True)
        results.finish({"recipes": RECIPES})
    print(results.table(COLUMNS))


if __name__ == "__main__":
    main()
