"""peftshield demo: the main job on the embedded defaults (what make demo runs).

It runs the small default experiment grid (peftshield bench plan default lists it) and writes
the report, through the same sub-commands a user would call:

1. bench run default: on minilm, a task-specific backdoor (BadNets, "cf" -> negative,
   planted by full fine-tuning on poisoned amazon reviews; PSIM's threat model) and a
   task-agnostic one (POR on wiki sentences; LMSanitator's threat model) beside the clean
   control; LoRA victims on clean movies (prefix, prompt and P-tuning victims are in the
   bigger grids of bench/grids/); each victim undefended and behind
   PSIM, the LMSanitator monitor (after a scan of its backbone) and the STRIP baseline, thresholds
   calibrated at 5 % false rejections on clean held-out text. One JSON result per cell; the run
   resumes where it stopped when started again;
2. report: report.md and a self-contained report.html with the tables, plots and the
   papers' claims beside the measured figures.

The sizes are cut so that the whole demo, set-up included, fits in 15 minutes on 2 slow CPU
cores; a GPU is used when present.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from peftshield.commands.common import add_device_arg


def add_parser(subparsers) -> None:
    """Register ``demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="run the main job (the default grid of attacks, PEFT victims and defences, then the report)",
        description=__doc__,
        epilog="examples:\n  peftshield demo\n  peftshield demo --out runs/demo-gpu --device cuda\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    add_device_arg(parser)
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="cells run at once (default: 2 on a CPU with 2 or more cores, one torch thread each, "
        "which finishes sooner than one job on 2 threads; 1 on a GPU)",
    )
    parser.set_defaults(func=run)


def default_jobs(device: str) -> int:
    """Parallel cells for the demo: two one-thread workers on a multi-core CPU, one job on a GPU."""
    import os

    from peftshield.utils.device import resolve_device

    if resolve_device(device).type != "cpu":
        return 1
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def stage_commands(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """The command lines of the two stages, in order."""
    out = Path(args.out)
    results, report = str(out / "results"), str(out / "report")
    jobs = args.jobs if getattr(args, "jobs", None) is not None else default_jobs(args.device)
    return [
        (
            "the default grid: BadNets and POR backdoors, LoRA victims, PSIM / monitor / STRIP",
            ["bench", "run", "default", "--results", results, "--device", args.device, "--jobs", str(jobs)],
        ),
        ("the report (tables, plots, claims vs measured)", ["report", results, "--out", report]),
    ]


def stage_parser() -> argparse.ArgumentParser:
    """A parser holding the sub-commands the stages call, registered as ``peftshield`` registers them."""
    from peftshield.commands import bench, report

    parser = argparse.ArgumentParser(prog="peftshield")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in (bench, report):
        command.add_parser(subparsers)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the stages in order; stop at the first that fails (a user error propagates to the CLI)."""
    started = time.perf_counter()
    stages = stage_commands(args)
    parser = stage_parser()
    for number, (title, argv) in enumerate(stages, start=1):
        print(f"\n[{number}/{len(stages)}] {title}\n$ peftshield {' '.join(argv)}", flush=True)
        stage_args = parser.parse_args(argv)
        code = int(stage_args.func(stage_args) or 0)
        if code:
            return code
    report = Path(args.out) / "report"
    print(
        f"\ndemo finished in {time.perf_counter() - started:.0f} s; "
        f"open {report / 'report.html'} (or read {report / 'report.md'})"
    )
    return 0
