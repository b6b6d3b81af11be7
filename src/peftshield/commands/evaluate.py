"""``peftshield evaluate``: reload a tuned model and report its clean accuracy (CACC)."""

from __future__ import annotations

import argparse

from peftshield.commands.common import add_data_args, data_settings, load_splits, print_json
from peftshield.utils.device import DEVICE_CHOICES


def add_parser(subparsers) -> None:
    """Register ``evaluate``."""
    parser = subparsers.add_parser(
        "evaluate",
        help="report the clean accuracy of a tuned adapter or model folder",
        description=__doc__ + "\nThe data options default to those recorded in the model's run.json, "
        "so the test split is the one held out at tuning time.",
    )
    parser.add_argument("model", help="folder written by 'peftshield tune'")
    parser.add_argument("--split", choices=("train", "dev", "test"), default="test", help="default: test")
    parser.add_argument(
        "--backbone",
        default=None,
        help="backbone to load an adapter on (default: the one recorded in run.json)",
    )
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_data_args(parser, recorded=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print CACC."""
    from peftshield.tuning.trainer import accuracy_on, load_tuned
    from peftshield.utils.device import resolve_device

    tuned = load_tuned(args.model, device=resolve_device(args.device), backbone=args.backbone)
    settings = data_settings(args, recorded=tuned.run.get("data"))
    examples = getattr(load_splits(settings), args.split)
    cacc = accuracy_on(tuned.model, tuned.tokenizer, examples, max_length=tuned.max_length)
    result = {
        "model": args.model,
        "corpus": settings["corpus"],
        "split": args.split,
        "n": len(examples),
        "cacc": cacc,
    }
    if args.json:
        print_json(result)
    else:
        print(f"{args.model}: CACC {cacc:.4f} on {len(examples)} {settings['corpus']} {args.split} examples")
    return 0
