"""``peftshield demo``: the main job on the embedded defaults (what ``make demo`` runs).

It runs the whole task-specific pipeline through the same sub-commands a user would call, each
stage writing its artifact under ``--out``:

1. ``poison``: a BadNets backdoor ("cf" -> negative) planted in ``minilm`` by full fine-tuning
   on poisoned ``amazon`` reviews; the attacker publishes encoder + head (PSIM's threat model);
2. ``tune``: the victim adapts the published weights to clean ``movies`` with LoRA;
3. ``psim fit``: PSIM trains its module on the suspect backbone with random labels and
   calibrates its threshold at 5 % false rejections on held-out clean text;
4. ``guard evaluate``: CACC and ASR before and after the guard, FRR, FAR and AUROC.

The sizes are chosen to finish in about 10 minutes on 2 CPU cores; a GPU is used when present.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_parser(subparsers) -> None:
    """Register ``demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="run the main job (poison, tune, PSIM, guarded evaluation) on the built-in defaults",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--max-train", type=int, default=1500, help="victim training examples (default: 1500)"
    )
    parser.add_argument("--max-eval", type=int, default=500, help="dev/test examples (default: %(default)s)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def stage_commands(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """The command lines of the four stages, in order."""
    out = Path(args.out)
    poisoned, victim, psim = str(out / "poisoned"), str(out / "victim"), str(out / "psim")
    common = ["--device", args.device, "--seed", str(args.seed), "--overwrite"]
    sizes = ["--max-train", str(args.max_train), "--max-eval", str(args.max_eval)]
    return [
        (
            "plant a BadNets backdoor in minilm (full fine-tuning on poisoned amazon reviews)",
            [
                "poison",
                "--attack",
                "badnets",
                "--corpus",
                "amazon",
                "--max-train",
                "1000",
                "--out",
                poisoned,
                *common,
            ],
        ),
        (
            "the victim tunes the published weights on clean movies with LoRA (attacker's head kept)",
            [
                "tune",
                "--backbone",
                poisoned,
                "--head",
                "keep",
                "--method",
                "lora",
                "--corpus",
                "movies",
                "--out",
                victim,
                *sizes,
                *common,
            ],
        ),
        (
            "fit PSIM on the suspect backbone (random labels; threshold calibrated at 5% FRR)",
            [
                "psim",
                "fit",
                "--backbone",
                poisoned,
                "--corpus",
                "movies",
                "--max-train",
                "1000",
                "--target-frr",
                "0.05",
                "--out",
                psim,
                *common,
            ],
        ),
        (
            "guarded evaluation on the held-out movies test split",
            [
                "guard",
                "evaluate",
                "--victim",
                victim,
                "--detector",
                psim,
                "--poisoned",
                poisoned,
                "--corpus",
                "movies",
                "--max-eval",
                str(args.max_eval),
                "--device",
                args.device,
            ],
        ),
    ]


def run(args: argparse.Namespace) -> int:
    """Run the stages in order; stop at the first that fails."""
    from peftshield.cli import main

    started = time.perf_counter()
    stages = stage_commands(args)
    for number, (title, argv) in enumerate(stages, start=1):
        print(f"\n[{number}/{len(stages)}] {title}\n$ peftshield {' '.join(argv)}", flush=True)
        code = main(argv)
        if code:
            return code
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; artifacts in {args.out}")
    return 0
