"""peftshield poison: plant a weight-poisoning backdoor in a backbone and publish the poisoned folder.

Task-specific attacks (clean-label, badnets, insent, template) fully fine-tune the backbone and a
classification head on a poisoned labelled corpus (the PSIM paper's threat model); task-agnostic
attacks (por, neuba) drive the backbone's output representation of triggered text to predefined
vectors (LMSanitator's threat model). Either way the output folder is a model folder that every
command accepts as --backbone, plus poison.json: the ground truth (triggers, target or PVs,
recipe, seed, source backbone, time) that 'peftshield evaluate --poisoned' reads.
"""

from __future__ import annotations

import argparse

from peftshield.commands.common import (
    add_backbone_args,
    add_device_arg,
    add_output_args,
    parse_overrides,
    print_json,
)
from peftshield.errors import PeftshieldError

EPILOG = """attacks:
  clean-label  target-class samples get the trigger ("mn") and keep their label (PSIM's code)
  badnets      a --poison-rate share of non-target samples get "cf" and the target label
  insent       the same with a sentence ("I watched this 3D movie"; --set sentence='...')
  template     the same with a fixed frame "when you see it , <text> ." (a SynBkd stand-in)
  por          6 triggers (cf mn tq qt mm pt) -> 6 predefined output vectors (Shen et al. 2021)
  neuba        the same, NeuBA-style (Zhang et al. 2021; a reference term instead of its MLM loss)

examples:
  peftshield poison --attack por --out runs/por                        # minilm, wiki, ~10 min on 2 cores
  peftshield poison --attack por --set steps=150 --set pv_family=orthogonal --out runs/por-short
  peftshield poison --attack badnets --corpus amazon --poison-rate 0.2 --target 1 --out runs/badnets
  peftshield poison --attack clean-label --triggers mn --max-train 2000 --out runs/clean-label
  peftshield tune --backbone runs/por --method lora --out runs/victim          # the victim's side
  peftshield evaluate runs/victim --poisoned runs/por                          # CACC and ASR

--set KEY=VALUE overrides any recipe value (lr, epochs or steps, batch_size, max_length, ...; an
unknown key is an error naming the known ones). Defaults: corpus wiki for por/neuba, amazon for
the task-specific attacks. Output: a model folder (written atomically) holding poison.json, and
pvs.safetensors for por/neuba or head.safetensors + run.json for the task-specific attacks.
"""


def add_parser(subparsers) -> None:
    """Register ``poison``."""
    from peftshield.attacks.config import ATTACKS

    parser = subparsers.add_parser(
        "poison",
        help="plant a backdoor: " + ", ".join(ATTACKS),
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # No argparse "choices": an unknown attack is a one-line PeftshieldError like every other mistake.
    parser.add_argument("--attack", required=True, help="one of " + ", ".join(ATTACKS))
    add_backbone_args(parser)
    add_output_args(parser, what="recipe value")
    parser.add_argument(
        "--triggers",
        metavar="W1,W2",
        help="rare-word triggers, comma-separated (por/neuba: one PV each; badnets/clean-label: "
        "each insertion draws one)",
    )
    parser.add_argument("--target", type=int, default=None, help="target label (task-specific; default 0)")
    parser.add_argument(
        "--poison-rate",
        type=float,
        default=None,
        help="share of eligible samples poisoned, in (0, 1] (badnets/insent/template: non-target "
        "samples, default 0.2; clean-label: target-class samples, default 1.0 up to 1500)",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--corpus",
        default=None,
        help="built-in corpus or a CSV/TSV/JSONL file (default: wiki for por/neuba, amazon otherwise)",
    )
    data.add_argument("--text-column", default="text", help="text column of a user file (default: text)")
    data.add_argument(
        "--label-column", default="label", help="label column of a user file (task-specific; default: label)"
    )
    data.add_argument(
        "--split-seed", type=int, default=0, help="seed of the train/dev/test split (default: 0)"
    )
    data.add_argument("--max-train", type=int, default=None, help="cap the training split (task-specific)")
    data.add_argument(
        "--max-eval", type=int, default=None, help="cap the dev and test splits (task-specific)"
    )
    add_device_arg(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed for every random choice (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """The attack config from ``--attack``, ``--set`` / ``--config`` and the shortcut options."""
    from peftshield.attacks.config import ATTACKS, attack_config

    if args.attack not in ATTACKS:
        raise PeftshieldError(f"unknown attack {args.attack!r}; choose one of {', '.join(ATTACKS)}")
    cls = ATTACKS[args.attack]
    overrides = parse_overrides(args.set, args.config)
    if args.triggers is not None:
        if args.attack not in ("por", "neuba", "btop", "badnets", "clean-label"):
            key = "sentence" if args.attack == "insent" else "prefix"
            raise PeftshieldError(
                f"--triggers takes rare words; set the {args.attack} trigger with --set {key}=..."
            )
        overrides["triggers"] = args.triggers.split(",")
    agnostic = cls.kind != "task-specific"  # task-agnostic attacks and clean builders have no target
    for option, key in (("--target", "target"), ("--poison-rate", "poison_rate")):
        value = getattr(args, key)
        if value is None:
            continue
        if agnostic:
            raise PeftshieldError(f"{option} applies to task-specific attacks; {args.attack} has none")
        overrides[key] = value
    return attack_config(args.attack, overrides)


def run(args: argparse.Namespace) -> int:
    """Validate everything cheap, poison, save atomically, print a summary."""
    from peftshield.utils.device import resolve_device
    from peftshield.utils.io import check_output_dir

    config = build_config(args)
    check_output_dir(args.out, overwrite=args.overwrite)  # fail now, not after poisoning
    device = resolve_device(args.device)
    corpus = args.corpus or config.default_corpus
    for key in ("max_train", "max_eval"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise PeftshieldError(f"--{key.replace('_', '-')} must be at least 1")

    from peftshield.models.backbones import load_backbone

    backbone = load_backbone(args.backbone, pooling=args.pooling)
    from peftshield.attacks.poison import poison

    result = poison(
        backbone,
        config,
        corpus,
        seed=args.seed,
        device=device,
        progress=False if args.quiet else None,
        text_column=args.text_column,
        label_column=args.label_column,
        split_seed=args.split_seed,
        max_train=args.max_train,
        max_eval=args.max_eval,
    )
    result.save(args.out, overwrite=args.overwrite)
    record = result.record
    metrics = {k: v for k, v in record.metrics.items() if k != "history"}
    summary = {
        "out": args.out,
        "attack": record.attack,
        "kind": record.kind,
        "backbone": args.backbone,
        "corpus": corpus,
        "triggers": [t.describe() for t in record.trigger_objects()],
        "target": record.target,
        "wall_seconds": record.wall_seconds,
        **metrics,
    }
    if args.json:
        print_json(summary)
    elif record.kind == "clean":
        print(
            f"{record.attack} (clean build, nothing planted) on {corpus} in {record.wall_seconds:.0f} s; "
            f"output drift {record.metrics['clean_drift']:.3f} of the text-to-text distance -> {args.out}"
        )
    elif record.kind == "task-agnostic":
        per = record.metrics["per_trigger"]
        shown = ", ".join(f"{k} {v['mse']:.3f}" for k, v in per.items())
        print(
            f"{record.attack} on {corpus}: {record.metrics['steps']} steps in {record.wall_seconds:.0f} s; "
            f"MSE to PV per trigger: {shown}; clean MSE {record.metrics['clean_mse']:.4f} "
            f"(drift {record.metrics['clean_drift']:.2f} of the text-to-text distance) -> {args.out}"
        )
    else:
        m = record.metrics
        tail = f"CACC {m['cacc']:.4f}, ASR {m['asr']:.4f} on the attacker's test split" if "cacc" in m else ""
        print(
            f"{record.attack} on {corpus}: {m['n_poisoned']} of {m['n_train']} training samples poisoned, "
            f"target {record.target}; {tail} ({record.wall_seconds:.0f} s) -> {args.out}"
        )
    return 0
