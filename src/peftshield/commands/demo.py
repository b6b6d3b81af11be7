"""``peftshield demo``: the main job on the embedded defaults (what ``make demo`` runs).

For now it fine-tunes LoRA on ``movies`` with ``minilm`` and prints the clean accuracy; the
attack and defence stages join it as they land.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    """Register ``demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="run the main job on the built-in defaults",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--max-train", type=int, default=3000, help="training examples (default: %(default)s)"
    )
    parser.add_argument("--max-eval", type=int, default=1000, help="dev/test examples (default: %(default)s)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Tune LoRA on movies and report CACC."""
    from peftshield.commands import tune as tune_command

    tune_args = argparse.Namespace(
        backbone="minilm",
        pooling=None,
        method="lora",
        set=None,
        config=None,
        head="fresh",
        out=f"{args.out}/lora",
        overwrite=True,
        json=False,
        corpus="movies",
        text_column="text",
        label_column="label",
        split_seed=0,
        max_train=args.max_train,
        max_eval=args.max_eval,
        device=args.device,
        seed=args.seed,
        quiet=False,
    )
    print(f"peftshield demo: LoRA fine-tuning of minilm on movies ({args.max_train} training examples)")
    return tune_command.run(tune_args)
