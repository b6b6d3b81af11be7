"""peftshield evaluate: reload a tuned model and report its clean accuracy (CACC).

With --poisoned FOLDER (a folder written by peftshield poison) it also reports the attack
success rate of that folder's recorded triggers on the same test examples: the PSIM convention
(asr: non-target samples predicted as the target) for task-specific attacks, the LMSanitator
convention (asr_lms: clean-correct samples whose prediction any trigger flips) for all, and
both per trigger.
"""

from __future__ import annotations

import argparse

from peftshield.commands.common import add_data_args, add_device_arg, data_settings, load_splits, print_json

EPILOG = """examples:
  peftshield evaluate runs/lora                                  # CACC on the recorded test split
  peftshield evaluate runs/victim --poisoned runs/por --json     # CACC, ASR, per-trigger ASR
  peftshield evaluate runs/clean-victim --poisoned runs/por      # the control: a clean victim
"""


def add_parser(subparsers) -> None:
    """Register ``evaluate``."""
    parser = subparsers.add_parser(
        "evaluate",
        help="report the clean accuracy (and, with --poisoned, the attack success) of a tuned model",
        description=__doc__ + "\nThe data options default to those recorded in the model's run.json, "
        "so the test split is the one held out at tuning time.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="folder written by 'peftshield tune'")
    parser.add_argument("--split", choices=("train", "dev", "test"), default="test", help="default: test")
    parser.add_argument(
        "--backbone",
        default=None,
        help="backbone to load an adapter on (default: the one recorded in run.json)",
    )
    parser.add_argument(
        "--poisoned",
        metavar="FOLDER",
        default=None,
        help="a folder written by 'peftshield poison': also report the ASR of its triggers",
    )
    parser.add_argument(
        "--trigger-seed", type=int, default=0, help="seed of the trigger positions (default: 0)"
    )
    add_device_arg(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_data_args(parser, recorded=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print CACC (and ASR with --poisoned)."""
    from peftshield.tuning.trainer import accuracy_on, load_tuned
    from peftshield.utils.device import resolve_device

    record = None
    if args.poisoned is not None:
        from peftshield.attacks.record import read_poison_record

        record = read_poison_record(args.poisoned)  # fail before loading any model
    tuned = load_tuned(args.model, device=resolve_device(args.device), backbone=args.backbone)
    settings = data_settings(args, recorded=tuned.run.get("data"))
    examples = getattr(load_splits(settings), args.split)
    result = {
        "model": args.model,
        "corpus": settings["corpus"],
        "split": args.split,
        "n": len(examples),
    }
    if record is None:
        result["cacc"] = accuracy_on(tuned.model, tuned.tokenizer, examples, max_length=tuned.max_length)
    else:
        from peftshield.attacks.success import evaluate_victim

        measured = evaluate_victim(tuned, record, examples, seed=args.trigger_seed)
        result.update({k: v for k, v in measured.items() if k != "n"})
        result["poisoned"] = args.poisoned
        result["victim_on_poisoned_backbone"] = _on_poisoned_backbone(
            args.model, tuned.run, args.poisoned, record
        )
    if args.json:
        print_json(result)
        return 0
    where = f"on {len(examples)} {settings['corpus']} {args.split} examples"
    if record is None:
        print(f"{args.model}: CACC {result['cacc']:.4f} {where}")
        return 0
    if record.kind == "task-specific":
        convention = f"PSIM convention: non-target samples predicted as target {record.target}"
    else:
        convention = "LMSanitator convention: any trigger flips a correct prediction"
    per = ", ".join(f"{k} {v.get('asr', v['asr_lms']):.2f}" for k, v in result["per_trigger"].items())
    print(
        f"{args.model}: CACC {result['cacc']:.4f}, ASR {result['asr']:.4f} ({convention}) {where}; "
        f"per trigger: {per}"
    )
    if not result["victim_on_poisoned_backbone"]:
        print(f"note: {args.model} was not tuned on {args.poisoned} (a control, or another backbone)")
    return 0


def _on_poisoned_backbone(model: str, run: dict, poisoned: str, record) -> bool:
    """Whether the victim was tuned on the poisoned folder (or is it): compare weight fingerprints."""
    from pathlib import Path

    if Path(model).resolve() == Path(poisoned).resolve():
        return True
    return bool(record.fingerprint) and run.get("backbone", {}).get("fingerprint") == record.fingerprint
