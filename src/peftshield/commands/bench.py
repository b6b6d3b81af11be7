"""peftshield bench: run an experiment grid (corpora x backbones x attacks x methods x defences x seeds).

Each cell's stages (poisoning, tuning, scans, detectors) are cached under --results by what they
depend on, so cells share them and a rerun resumes where the last one stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from peftshield.commands.common import add_device_arg
from peftshield.grid.executors import EXECUTORS

EPILOG = """grid file (YAML needs the 'yaml' extra; JSON always works; 'default' is the shipped grid):
  name: study
  seeds: [0]
  sizes: {max_train: 400, max_eval: 150, poison_max_train: 800}
  scan: {texts: wiki, max_total_steps: 90}          # LMSanitator scan, for the monitor
  corpora: [movies]                                  # victim data: built-in name or CSV/TSV/JSONL file
  backbones: [minilm]                                # registered name, model folder or hub id
  attacks: [none, badnets, {name: por, recipe: {steps: 100}}]   # none = clean control
  methods: [lora, {name: prefix, config: {epochs: 2}}]          # none = no victim (detection only)
  defenses: [none, psim, monitor]                    # none = undefended

examples:
  peftshield bench plan default                          # cells, stages, cost estimate
  peftshield bench run default --results runs/grid       # the small default grid
  peftshield bench run study.yaml --results runs/study --jobs 2
  peftshield bench run study.yaml --results /shared/study --executor ray --address auto
  peftshield bench plan study.yaml --results runs/study  # what is done, cached, left

Every stage artifact (poisoned backbone, victim, scan, fitted defence) is cached by content under
RESULTS/artifacts and shared by every cell that needs it; each cell writes RESULTS/cells/<id>.json
and RESULTS/grid.json collects them (benchmark result shape). A killed run started again with the
same command redoes no finished cell; failed cells are retried. A results folder holds one grid:
running a different grid into it needs --force. Exit status: 0 when every cell finished, 1 when
some failed, 2 on bad input (found before any cell runs), 143 when stopped by SIGTERM (the
workers stop with it).

executors: 'local' (default) runs --jobs worker processes on this machine; 'ray' (pip install
'peftshield[ray]') runs every artifact build and every cell as a Ray task, on the cluster at
--address or on a local Ray instance started for the run (--jobs CPUs). RESULTS must then be a
folder every worker sees (a shared file system): the workers read and write its artifacts.
"""


def add_parser(subparsers) -> None:
    """Register ``bench run`` and ``bench plan``."""
    parser = subparsers.add_parser(
        "bench",
        help="run an experiment grid of attacks, PEFT methods and defences (resumable, parallel)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="bench_command", metavar="{run,plan}")
    run = sub.add_parser(
        "run",
        help="run every unfinished cell of a grid",
        description="Run every unfinished cell of a grid into --results (resumable).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("grid", help="grid file (.yaml, .yml or .json), or 'default'")
    run.add_argument("--results", required=True, help="results folder (created; reused to resume)")
    run.add_argument(
        "--executor",
        default="local",
        choices=EXECUTORS,
        help="where the cells run: local processes or a Ray cluster (default: local)",
    )
    run.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="local: worker processes (default: 1); ray without --address: CPUs of the local Ray "
        "instance (default: all)",
    )
    run.add_argument(
        "--address",
        default=None,
        help="ray: the cluster to join (auto, HOST:PORT or ray://HOST:10001; default: start a local one)",
    )
    run.add_argument(
        "--cpus-per-task", type=float, default=1.0, help="ray: CPUs (and torch threads) per task (default: 1)"
    )
    run.add_argument(
        "--gpus-per-task",
        type=float,
        default=1.0,
        help="ray: GPU share of each task where the cluster has GPUs; 0.25 runs four minilm tasks per "
        "GPU (default: 1)",
    )
    run.add_argument(
        "--max-retries", type=int, default=3, help="ray: re-runs of a task whose worker died (default: 3)"
    )
    add_device_arg(run)
    run.add_argument(
        "--force",
        action="store_true",
        help="run this grid into a results folder that holds a different grid (default: refuse)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar (the cell log stays)")
    run.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="PATTERN",
        help="run only the cells whose id or corpus/backbone/attack/method/defense title matches this "
        "shell pattern (repeatable; e.g. 'movies.minilm.badnets.*'); grid.json then lists those cells",
    )
    run.set_defaults(func=run_command)
    plan = sub.add_parser(
        "plan",
        help="list the cells and stages of a grid, with what is done and cached",
        description="List the cells and stages of a grid, what is done or cached in --results, "
        "and a cost estimate.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plan.add_argument("grid", help="grid file (.yaml, .yml or .json), or 'default'")
    plan.add_argument("--results", help="results folder to compare with (default: none, nothing cached)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=plan_command)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_command(args: argparse.Namespace) -> int:
    """Validate the options, the grid and the results folder (creating nothing), then run it."""
    from peftshield.grid.config import load_grid
    from peftshield.grid.executors import make_executor
    from peftshield.grid.runner import run_grid

    executor = make_executor(
        args.executor,
        jobs=args.jobs,
        address=args.address,
        cpus_per_task=args.cpus_per_task,
        gpus_per_task=args.gpus_per_task,
        max_retries=args.max_retries,
    )
    grid = load_grid(args.grid)
    command = f"peftshield bench run {args.grid} --results {args.results} --executor {args.executor}"
    if args.jobs is not None:
        command += f" --jobs {args.jobs}"
    if args.address:
        command += f" --address {args.address}"
    command += f" --device {args.device}"
    for pattern in args.only or []:
        command += f" --only '{pattern}'"
    summary = run_grid(
        grid,
        args.results,
        executor=executor,
        device=args.device,
        progress=False if args.quiet else None,
        command=command,
        force=args.force,
        only=args.only,
    )
    return 1 if summary.failed else 0


def plan_report(grid: Any, results: str | None) -> dict[str, Any]:
    """The plan as data: cells with status, stages with cached flags, and the cost estimate."""
    from peftshield.grid.cache import ArtifactStore
    from peftshield.grid.estimate import cpu_slowdown, plan_costs
    from peftshield.grid.plan import expand, unique_stages
    from peftshield.grid.runner import cell_status
    from peftshield.utils.device import resolve_device

    cells = expand(grid)
    folder = Path(results) if results else None
    store = ArtifactStore(folder) if folder is not None else None
    statuses = cell_status(cells, folder)
    stages = unique_stages(cells)
    cached = {
        key
        for by_key in stages.values()
        for key, st in by_key.items()
        if store is not None and store.is_built(st)
    }
    done = {s.cell.id for s in statuses if s.state == "done"}
    costs = plan_costs(cells, cached, done)
    counts = {
        kind: {"total": len(by_key), "cached": sum(k in cached for k in by_key)}
        for kind, by_key in stages.items()
    }
    return {
        "grid": grid.name,
        "source": grid.source,
        "mode": grid.mode,
        "zoo": grid.zoo,
        "evaluate_on": grid.sizes.evaluate_on,
        "dev_heldout": grid.sizes.dev_heldout,
        "axes": {
            "corpora": [c.label for c in grid.corpora],
            "backbones": [b.label for b in grid.backbones],
            "attacks": [a.label for a in grid.attacks],
            "methods": [m.label for m in grid.methods],
            "defenses": [d.label for d in grid.defenses],
            "seeds": list(grid.seeds),
        },
        "stages": counts,
        "estimate_seconds": round(sum(costs.values()), 1),
        # this machine's time over the cost model's (measured: grid/estimate.cpu_slowdown)
        "slowdown": round(cpu_slowdown(resolve_device("auto").type), 2),
        "cells": [
            {
                "index": i,
                "id": s.cell.id,
                "title": s.cell.title(),
                "status": s.state,
                "stages": [
                    {"kind": st.kind, "name": st.name, "key": st.key, "cached": st.key in cached}
                    for st in s.cell.stages()
                ],
                "estimate_seconds": round(costs.get(s.cell.id, 0.0), 1),
            }
            for i, s in enumerate(statuses, start=1)
        ],
    }


def plan_command(args: argparse.Namespace) -> int:
    """Print the plan of a grid."""
    from peftshield.commands.common import print_json
    from peftshield.grid.config import load_grid
    from peftshield.grid.estimate import scaled_minutes

    report = plan_report(load_grid(args.grid), args.results)
    if args.json:
        print_json(report)
        return 0
    axes = report["axes"]
    if report.get("mode") == "scan":  # scan-only cells have no corpus, method or defence axis
        axes = {k: v for k, v in axes.items() if k in ("backbones", "attacks", "seeds")}
    sizes = " x ".join(f"{len(v)} {k}" for k, v in axes.items())
    if report.get("mode") == "scan":
        sizes += " (scan-only cells)"
    cells = report["cells"]
    by_state = {state: sum(c["status"] == state for c in cells) for state in ("done", "failed", "todo")}
    print(f"grid {report['grid']} ({report['source']}): {len(cells)} cells from {sizes}")
    print(
        f"  cells: {by_state['done']} done, {by_state['failed']} failed (to retry), {by_state['todo']} to run"
    )
    if report.get("evaluate_on") == "dev":
        print(
            f"  measured on: the dev split, its first {report['dev_heldout']:g} held out for the defences "
            "(the test split is not read)"
        )
    print(
        "  artifacts: "
        + ", ".join(
            f"{kind} {c['total']} ({c['cached']} cached)"
            for kind, c in report["stages"].items()
            if c["total"]
        )
    )
    print(
        f"  rough time to finish: {scaled_minutes(report['estimate_seconds'], report['slowdown'])}; "
        "minilm-calibrated cost model, unloaded machine, a shared stage counts for its first cell"
    )
    width = max(len(c["title"]) for c in cells)
    print(f"\n{'#':>3}  {'status':6}  {'cell':{width}}  {'est. s':>6}  stages (* = cached)")
    for c in cells:
        stages = " ".join(f"{s['kind']}:{s['name']}{'*' if s['cached'] else ''}" for s in c["stages"]) or "-"
        seconds = c["estimate_seconds"] * report["slowdown"]
        print(f"{c['index']:>3}  {c['status']:6}  {c['title']:{width}}  {seconds:6.0f}  {stages}")
    return 0
