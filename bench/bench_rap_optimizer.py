"""RAP's optimiser, chosen on the dev split (issue 13, "Honest selection").

The choice recorded in :mod:`peftshield.defenses.rap` (Adam over the references' SGD with
accumulated gradients) was first measured on test copies. This benchmark remakes it without the
test split: a victim tuned on a BadNets backbone (a grid's ``artifacts/victim/...`` folder and its
``artifacts/poison/...`` backbone), RAP constructed and calibrated on the first part of the
``movies`` dev split, scored on the rest of the dev split and its triggered non-target copies. Per
optimiser and seed: AUROC, FAR at the threshold calibrated at 5 % FRR (its FRR beside it), the
construction's in-range rate and mean clean drop, and the fit time.

Run (resumable, one row per optimiser x seed)::

    .venv/bin/python bench/bench_rap_optimizer.py --victim RESULTS/artifacts/victim/lora-... \\
        --poisoned RESULTS/artifacts/poison/badnets-...
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _results import ResultFile  # noqa: E402

RESULT = HERE / "results" / "rap_optimizer.json"
COLUMNS = [
    "optimizer",
    "seed",
    "auroc",
    "frr_cal",
    "far_cal",
    "in_range_rate",
    "clean_drop_mean",
    "fit_seconds",
]


def cell(optimizer: str, seed: int, args) -> dict:
    """Construct RAP with ``optimizer`` on the dev split's first part; score the rest."""
    from peftshield.attacks.record import read_poison_record
    from peftshield.data.corpora import load_splits
    from peftshield.defenses.rap import RAPDetector
    from peftshield.evaluation import metrics as m
    from peftshield.evaluation.defended import triggered_examples

    record = read_poison_record(Path(args.poisoned))
    splits = load_splits({"corpus": "movies", "split_seed": 0, "max_train": 400, "max_eval": args.max_eval})
    dev = list(splits.dev)
    construct, scored = dev[: args.n_construct], dev[args.n_construct :]
    detector = RAPDetector(
        victim=args.victim, optimizer=optimizer, seed=seed, target_frr=0.05, base=args.poisoned
    )
    start = time.perf_counter()
    detector.fit(construct)
    fit_seconds = time.perf_counter() - start
    triggered = triggered_examples(scored, record.trigger_objects()[0], record.target, seed=seed)
    clean_scores = detector.score([e.text for e in scored])
    trig_scores = detector.score([e.text for e in triggered])
    cal = m.detection_metrics(clean_scores, trig_scores, detector.threshold_)
    return {
        "optimizer": optimizer,
        "seed": seed,
        "split": "dev",
        "attack": record.attack,
        "defense": "rap",
        "victim": Path(args.victim).name,
        "auroc": m.auroc(clean_scores, trig_scores),
        "frr_cal": cal["frr"],
        "far_cal": cal["far"],
        "in_range_rate": detector.in_range_rate_,
        "clean_drop_mean": detector.clean_drop_mean_,
        "n_construct": len(construct),
        "n_clean": len(clean_scores),
        "n_triggered": len(trig_scores),
        "fit_seconds": round(fit_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--victim", required=True, help="a tuned victim folder (BadNets backbone)")
    parser.add_argument("--poisoned", required=True, help="its poisoned backbone folder (poison.json)")
    parser.add_argument("--optimizers", default="adam,reference")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--max-eval", type=int, default=400, help="dev (and test) examples loaded")
    parser.add_argument("--n-construct", type=int, default=200, help="dev texts RAP is built on")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    command = "python bench/bench_rap_optimizer.py --victim VICTIM --poisoned BACKBONE"
    results = ResultFile(RESULT, "rap_optimizer", command)
    if not args.report:
        for optimizer in args.optimizers.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                row = results.run_cell(
                    {"optimizer": optimizer, "seed": seed}, lambda o=optimizer, s=seed: cell(o, s, args)
                )
                shown = ", ".join(f"{k} {row[k]:.3f}" for k in COLUMNS[2:] if k in row)
                print(f"{optimizer} s{seed}: {shown or row.get('error')}", flush=True)
        results.finish({"choice": "the optimiser with the higher mean dev AUROC (bench/README.md)"})
    print(results.table(COLUMNS))


if __name__ == "__main__":
    main()
