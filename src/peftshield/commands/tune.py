"""peftshield tune: fine-tune a classifier on a backbone with a PEFT method or full fine-tuning."""

from __future__ import annotations

import argparse

from peftshield.commands.common import (
    add_backbone_args,
    add_data_args,
    add_output_args,
    add_runtime_args,
    data_settings,
    load_splits,
    method_keys_help,
    parse_overrides,
    print_json,
)
from peftshield.tuning.config import own_methods

EPILOG = """examples:
  peftshield tune --method lora --out runs/lora                   # minilm on movies
  peftshield tune --method prefix --set num_virtual_tokens=32 --set lr=1e-2 --out runs/prefix
  peftshield tune --backbone runs/poisoned --head keep --method lora --out runs/victim
  peftshield tune --corpus my.csv --text-column review --label-column stars --out runs/mine

Each method has its own measured defaults (lr, epochs, rank or virtual tokens); --set overrides
any of them and an unknown key is an error. Output: a peft adapter folder (the head is saved with
it) or, for --method full, a model folder; both hold run.json (config, metrics, versions, time).
"""


def add_parser(subparsers) -> None:
    """Register ``tune``."""
    parser = subparsers.add_parser(
        "tune",
        help="fine-tune a classifier (full, lora, prompt, ptuning, prefix)",
        description=__doc__,
        epilog=EPILOG + "\n" + method_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_backbone_args(parser)
    parser.add_argument("--method", default="lora", choices=sorted(own_methods()), help="default: lora")
    parser.add_argument(
        "--head",
        choices=("fresh", "keep"),
        default="fresh",
        help="keep: reuse head.safetensors published with the backbone (default: fresh)",
    )
    add_output_args(parser, what="method config value")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_data_args(parser)
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Tune, evaluate on the test split, save."""
    from peftshield.models.backbones import load_backbone
    from peftshield.tuning.config import method_config
    from peftshield.tuning.trainer import accuracy_on, save_tuned, tune
    from peftshield.utils.device import resolve_device
    from peftshield.utils.io import check_output_dir

    config = method_config(args.method, parse_overrides(args.set, args.config))
    device = resolve_device(args.device)
    check_output_dir(args.out, overwrite=args.overwrite)  # fail now, not after training
    settings = data_settings(args)
    splits = load_splits(settings)
    backbone = load_backbone(args.backbone, pooling=args.pooling)
    result = tune(
        backbone,
        splits.train,
        splits.dev,
        config,
        seed=args.seed,
        device=device,
        head=args.head,
        progress=False if args.quiet else None,
    )
    cacc = accuracy_on(
        result.model,
        result.tokenizer,
        splits.test,
        max_length=config.max_length,
        batch_size=config.eval_batch_size,
    )
    metrics = {
        "cacc": cacc,
        "dev_accuracy": result.best_dev_accuracy,
        "n_test": len(splits.test),
        "n_train": len(splits.train),
    }
    save_tuned(
        result,
        args.out,
        extra={"data": settings, "seed": args.seed, "head": args.head, "metrics": metrics},
        overwrite=args.overwrite,
    )
    summary = {
        "out": args.out,
        "method": args.method,
        "backbone": args.backbone,
        **metrics,
        "trainable_params": result.trainable_params,
        "train_seconds": round(result.train_seconds, 1),
    }
    if args.json:
        print_json(summary)
    else:
        print(
            f"{args.method} on {args.corpus}: CACC {cacc:.4f} (dev {result.best_dev_accuracy:.4f}), "
            f"{result.trainable_params:,} trainable parameters, {result.train_seconds:.0f} s -> {args.out}"
        )
    return 0
