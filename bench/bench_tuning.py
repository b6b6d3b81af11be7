"""Tuning benchmark (issue: foundation): CACC, trainable parameters and time per epoch for every
method on movies with minilm, plus the throughput of ``tune``'s loop against a plain torch + peft
loop on the same batches, measured in the same run.

Resumable: one result per cell in bench/results/tuning.json; finished cells are skipped.
Run: .venv/bin/python bench/bench_tuning.py [--max-train 3000] [--methods lora,prefix] [--fresh]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import ResultFile  # noqa: E402

from peftshield.data.corpora import load_splits  # noqa: E402
from peftshield.models.backbones import load_backbone  # noqa: E402
from peftshield.models.inference import tokenize_batch  # noqa: E402
from peftshield.tuning.config import METHODS, method_config  # noqa: E402
from peftshield.tuning.trainer import accuracy_on, build_classifier, tune  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "tuning.json"


def method_cell(method: str, splits, seed: int, pooling: str | None = None) -> dict:
    config = method_config(method)
    backbone = load_backbone("minilm", pooling=pooling)
    result = tune(backbone, splits.train, splits.dev, config, seed=seed, progress=None)
    cacc = accuracy_on(result.model, result.tokenizer, splits.test, max_length=config.max_length)
    return {
        "backbone": "minilm",
        "corpus": "movies",
        "method": method,
        "seed": seed,
        "pooling": backbone.pooling,
        "cacc": cacc,
        "dev_accuracy": result.best_dev_accuracy,
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
        "epochs": config.epochs,
        "seconds_per_epoch": float(np.mean([h["epoch_seconds"] for h in result.history])),
        "seconds": result.train_seconds,
        "config": config.to_dict(),
        "n_train": len(splits.train),
        "n_test": len(splits.test),
    }


def plain_loop_steps(model, batches, lr: float) -> float:
    """A hand-written torch + peft training loop: the baseline for tune's throughput."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    start = time.perf_counter()
    for batch, labels in batches:
        loss = model(**batch, labels=labels)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


def throughput_cell(splits, seed: int, steps: int = 40, rounds: int = 3) -> dict:
    """Examples per second of tune() vs the plain loop on identical batches (LoRA, ABAB order)."""
    config = method_config("lora", {"epochs": 1})
    train = splits.train[: steps * config.batch_size]
    backbone = load_backbone("minilm")
    tokenizer = backbone.tokenizer
    batches = []
    for first in range(0, len(train), config.batch_size):
        chunk = train[first : first + config.batch_size]
        batches.append(
            (
                tokenize_batch(tokenizer, [e.text for e in chunk], config.max_length, "cpu"),
                torch.tensor([e.label for e in chunk]),
            )
        )
    ours, plain = [], []
    for _ in range(rounds):
        result = tune("minilm", train, [], config, seed=seed, progress=False)
        ours.append(len(train) / result.history[0]["epoch_seconds"])
        model = build_classifier(load_backbone("minilm"), 2, config)
        plain.append(len(train) / plain_loop_steps(model, batches, config.lr))
    return {
        "backbone": "minilm",
        "corpus": "movies",
        "method": "lora",
        "cell": "throughput",
        "tune_examples_per_s": float(np.median(ours)),
        "plain_examples_per_s": float(np.median(plain)),
        "throughput_ratio": float(np.median(ours) / np.median(plain)),
        "steps": steps,
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-train", type=int, default=3000)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--poolings",
        default="cls,pooler",
        help="extra LoRA cells with these output representations, to choose minilm's default by measurement",
    )
    parser.add_argument("--fresh", action="store_true", help="discard earlier results")
    args = parser.parse_args()
    command = "python bench/bench_tuning.py " + " ".join(sys.argv[1:])
    results = ResultFile(RESULT, "tuning", command, fresh=args.fresh)
    splits = load_splits({"corpus": "movies", "split_seed": 0, "max_train": args.max_train})
    for method in args.methods.split(","):
        key = {"method": method, "seed": args.seed, "n_train": len(splits.train)}
        results.run_cell(key, lambda m=method: method_cell(m, splits, args.seed))
    results.run_cell({"cell": "throughput", "seed": args.seed}, lambda: throughput_cell(splits, args.seed))
    for pooling in filter(None, args.poolings.split(",")):
        key = {"method": "lora", "seed": args.seed, "n_train": len(splits.train), "pooling": pooling}
        results.run_cell(key, lambda p=pooling: method_cell("lora", splits, args.seed, pooling=p))
    rows = [r for r in results.rows if "error" not in r]
    summary = {
        r["method"] + ("" if r.get("pooling", "mean") == "mean" else f"[{r['pooling']}]"): round(r["cacc"], 4)
        for r in rows
        if "cacc" in r
    }
    for row in rows:
        if "throughput_ratio" in row:
            summary["throughput_ratio"] = row["throughput_ratio"]
    results.finish(summary)
    print(
        results.table(
            [
                "method",
                "pooling",
                "cacc",
                "dev_accuracy",
                "trainable_params",
                "epochs",
                "seconds_per_epoch",
                "throughput_ratio",
            ]
        )
    )


if __name__ == "__main__":
    main()
