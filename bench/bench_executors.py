"""Executor overhead (issue 16): the same grid run by the local executor, then by the Ray executor,
into fresh results folders, with one worker each (``--jobs 1`` against a one-CPU local Ray
instance), so that the ratio of the wall times is what Ray's tasks, workers and object store add.

The grid's own engine runs both (``peftshield.grid.runner.run_grid``); this script only times
them and checks that the rows agree. ``--grid small`` is a 12-cell grid on a tiny random BERT
(cells of a second or two: the worst case for a per-cell overhead); ``--grid default`` the
shipped default grid (``peftshield bench plan default``). Run with OMP_NUM_THREADS=1.

It measures the grid runner itself, so it cannot be a grid config (issue 16): it is a thin timing
wrapper around two ``run_grid`` calls, with no stage or cache of its own.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_executors.py --grid small
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import ResultFile  # noqa: E402

from peftshield.grid.config import load_grid  # noqa: E402
from peftshield.grid.executors import LocalExecutor, RayExecutor  # noqa: E402
from peftshield.grid.runner import comparable, run_grid  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "executors.json"
TARGET = 0.05  # issue 16: the Ray executor adds at most 5 % per cell on the default grid


def small_grid(folder: Path) -> Path:
    """A 12-cell grid on a tiny random BERT and a toy sentiment CSV, written into ``folder``."""
    from peftshield.models.tiny import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS, build_tiny_bert

    bert = build_tiny_bert(folder / "bert", seed=0, pooling="mean")
    rng = random.Random(1)
    data = folder / "toy.csv"
    with open(data, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for _ in range(300):
            label = rng.randint(0, 1)
            words = [rng.choice(NEUTRAL_WORDS) for _ in range(rng.randint(3, 8))]
            words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE_WORDS if label else NEGATIVE_WORDS))
            writer.writerow([" ".join(words), label])
    fast = {"batch_size": 16, "max_length": 32, "epochs": 2}
    grid = {
        "name": "executors-small",
        "sizes": {"max_train": 150, "max_eval": 60},
        "corpora": [str(data)],
        "backbones": [str(bert)],
        "attacks": [
            "none",
            {"name": "badnets", "corpus": str(data), "recipe": {**fast, "lr": 3e-3, "poison_rate": 0.3}},
        ],
        "methods": [
            {"name": "lora", "config": {**fast, "lr": 3e-2, "head_lr": 3e-2}},
            {"name": "prefix", "config": {**fast, "epochs": 1, "num_virtual_tokens": 4}},
        ],
        "defenses": ["none", {"name": "psim", "config": {"batch_size": 8, "max_length": 32}}, "strip"],
    }
    path = folder / "grid.json"
    path.write_text(json.dumps(grid), encoding="utf-8")
    return path


def timed(grid_file: Path, results: Path, executor) -> tuple[float, dict]:
    """Wall seconds of one run into a fresh ``results`` folder, and its rows by cell id."""
    grid = load_grid(grid_file)
    start = time.perf_counter()
    summary = run_grid(grid, results, executor=executor, device="cpu", progress=False)
    seconds = time.perf_counter() - start
    if summary.failed:
        raise RuntimeError(f"{summary.failed} cell(s) failed: {summary.failures}")
    return seconds, {r["cell"]: comparable(r) for r in summary.rows}


def measure(grid_name: str, work: Path) -> dict:
    """Local, then Ray, on the same grid; the ratio and the per-cell difference of the wall times."""
    import ray

    grid_file = small_grid(work) if grid_name == "small" else Path(grid_name)
    if grid_name == "default":
        from peftshield.grid.config import default_grid_path

        grid_file = default_grid_path()
    local_s, local_rows = timed(grid_file, work / "local", LocalExecutor(jobs=1))
    start = time.perf_counter()
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    ray_start = time.perf_counter() - start
    try:
        ray_s, ray_rows = timed(grid_file, work / "ray", RayExecutor(cpus_per_task=1))
    finally:
        ray.shutdown()
    cells = len(local_rows)
    return {
        "grid": load_grid(grid_file).name,
        "cells": cells,
        "local_seconds": round(local_s, 1),
        "ray_seconds": round(ray_s, 1),
        "ray_start_seconds": round(ray_start, 1),
        "overhead_ratio": round(ray_s / local_s, 4),
        "overhead_ratio_with_start": round((ray_s + ray_start) / local_s, 4),
        "overhead_per_cell_seconds": round((ray_s - local_s) / cells, 3),
        "rows_equal": local_rows == ray_rows,
        "target": f"overhead_ratio <= {1 + TARGET:g} on the default grid",
        "met": ray_s / local_s <= 1 + TARGET,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grid", default="small", help="small, default, or a grid file (default: small)")
    args = parser.parse_args()
    command = f"OMP_NUM_THREADS=1 python bench/bench_executors.py --grid {args.grid}"
    result = ResultFile(RESULT, "executors", command)
    work = Path(tempfile.mkdtemp(prefix="peftshield-executors-"))
    try:
        result.rows[:] = [r for r in result.rows if r.get("grid_arg") != args.grid]
        row = result.run_cell(
            {"grid_arg": args.grid, "executor": "ray vs local", "workers": 1},
            lambda: measure(args.grid, work),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ok = [r for r in result.rows if "error" not in r]
    result.finish({"by_grid": {r["grid_arg"]: r.get("overhead_ratio") for r in ok}, "target": TARGET})
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
