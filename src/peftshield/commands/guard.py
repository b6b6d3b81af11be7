"""peftshield guard: classify texts with a victim behind detectors, or measure that defence.

A guarded victim rejects every input a detector flags (PSIM, Zhao et al. 2024, §3) and labels the
others. predict does this for texts from a file or stdin; evaluate reports CACC and ASR
before and after the defence and the detection quality, from a poisoned model's ground truth.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from peftshield.commands.common import (
    add_data_args,
    add_device_arg,
    add_victim_args,
    check_output_file,
    data_settings,
    load_splits,
    print_json,
    read_input_texts,
)
from peftshield.errors import PeftshieldError
from peftshield.utils.io import write_text

PREDICT_EPILOG = """examples:
  peftshield guard predict --victim runs/victim --detector runs/psim --input texts.txt
  echo "a gorgeous, witty film cf" | peftshield guard predict --victim runs/victim --detector runs/psim
  peftshield guard predict --victim runs/victim --detector runs/psim --detector runs/psim-lora \\
      --input reviews.jsonl --text-field review --output decisions.jsonl
  peftshield guard predict --victim my-lora-adapter --detector runs/psim-mine --input texts.txt
  peftshield guard predict --victim my-lora-adapter --base models/bert-base --detector runs/psim-mine

The victim is a 'peftshield tune' folder, a plain-peft adapter folder (its base model read from
adapter_config.json, or --base) or a Hugging Face sequence-classification folder.

Input: one text per line (blank lines skipped), JSON lines with a text field, or a
.csv/.tsv/.jsonl/.json file read by its format (its --text-field column), as 'monitor predict'
reads it. Output: one JSON
object per input line, {"text", "label" (null when rejected), "rejected", "reasons" (the detectors
that fired), "scores" (every detector's score)}.
"""

EVALUATE_EPILOG = """examples:
  peftshield guard evaluate --victim runs/victim --detector runs/psim --poisoned runs/poisoned
  peftshield guard evaluate --victim runs/victim --detector runs/psim --trigger cf --target 0 --json

The ground truth (triggers and target label) comes from the poisoned folder's poison.json;
--trigger/--target give or override it by hand (a rare word, inserted once at a random
position). The test split defaults to the one held out when the victim was tuned (its run.json).
Triggered inputs are the non-target test examples with the trigger inserted.
"""


def add_parser(subparsers) -> None:
    """Register ``guard`` with ``predict`` and ``evaluate``."""
    parser = subparsers.add_parser(
        "guard",
        help="guarded inference (victim + detectors) and its defended metrics",
        description=__doc__,
        epilog=(
            "examples:\n"
            "  peftshield guard predict --victim runs/victim --detector runs/psim --input texts.txt\n"
            "  peftshield guard evaluate --victim runs/victim --detector runs/psim --poisoned runs/poisoned\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="guard_command", metavar="SUBCOMMAND")

    predict = sub.add_parser(
        "predict",
        help="label texts or reject them, as JSON lines",
        description="Label each input text with the victim, or reject it when any detector flags it "
        "(PSIM, Zhao et al. 2024, section 3): one JSON line per input, on stdout or into --output.",
        epilog=PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_models(predict)
    predict.add_argument("--input", default="-", help="text file, JSONL file or - for stdin (default: -)")
    predict.add_argument(
        "--format",
        choices=("auto", "lines", "jsonl"),
        default="auto",
        help="auto: a .csv/.tsv/.jsonl/.json file by its format, otherwise JSON lines when the first "
        "line is a JSON object, else one text per line (default: auto)",
    )
    predict.add_argument(
        "--text-field", default="text", help="text column of a CSV/TSV or field of JSON lines (default: text)"
    )
    predict.add_argument(
        "--output", default=None, help="write the JSON lines here (atomically) instead of stdout"
    )
    predict.set_defaults(func=run_predict)

    evaluate = sub.add_parser(
        "evaluate",
        help="CACC, ASR, defended CACC/ASR, FRR, FAR, AUROC from a poisoned model's ground truth",
        description="Measure the defence: run the guarded victim on clean test texts and on their "
        "triggered copies, and report clean accuracy and attack success without and with the "
        "detectors, and how well they detect (FRR, FAR, precision, recall, F1, AUROC).",
        epilog=EVALUATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_models(evaluate)
    evaluate.add_argument("--poisoned", default=None, help="poisoned model folder holding poison.json")
    evaluate.add_argument("--trigger", action="append", metavar="WORD", help="trigger word (repeatable)")
    evaluate.add_argument("--target", type=int, default=None, help="the attacker's target label")
    evaluate.add_argument("--split", choices=("dev", "test"), default="test", help="default: test")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the trigger positions (default: 0)")
    evaluate.add_argument("--json", action="store_true", help="print the result row as JSON")
    add_data_args(evaluate, recorded=True)
    evaluate.set_defaults(func=run_evaluate)
    parser.set_defaults(func=lambda args: _usage(parser))


def _add_models(parser: argparse.ArgumentParser) -> None:
    add_victim_args(parser)
    parser.add_argument(
        "--detector",
        action="append",
        required=True,
        help="detector folder (e.g. from 'peftshield psim fit'); repeat to stack detectors",
    )
    add_device_arg(parser)
    parser.add_argument("--batch-size", type=int, default=128, help="texts per forward pass (default: 128)")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """Show the library's warnings (truncation, an unsure PSIM module) as one stderr line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            yield
        finally:
            seen = set()
            for w in caught:
                text = str(w.message)
                if text not in seen and not issubclass(w.category, DeprecationWarning | FutureWarning):
                    seen.add(text)
                    print(f"peftshield: warning: {text}", file=sys.stderr)


def _check_batch_size(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise PeftshieldError("--batch-size must be at least 1")


def run_predict(args: argparse.Namespace) -> int:
    """Label or reject every input text; print (or write) one JSON line per text."""
    from peftshield.defenses.guard import Guard

    _check_batch_size(args)
    if args.output:
        check_output_file(args.output)
    texts = read_input_texts(args.input, args.format, args.text_field)
    with one_line_warnings():
        guard = Guard.from_folders(
            args.victim, args.detector, device=args.device, batch_size=args.batch_size, base=args.base
        )
        decisions = guard.predict(texts)
    lines = [
        json.dumps({"text": t, **d.to_dict()}, ensure_ascii=False)
        for t, d in zip(texts, decisions, strict=True)
    ]
    payload = "\n".join(lines) + "\n"
    if args.output:
        write_text(Path(args.output), payload)
    else:
        sys.stdout.write(payload)
    return 0


def ground_truth(args: argparse.Namespace) -> tuple[list[Any], int | None, str]:
    """Triggers and target: from ``--poisoned``'s poison.json, overridden by ``--trigger``/``--target``."""
    from peftshield.data.triggers import RareWordTrigger

    triggers: list[Any] = []
    target: int | None = None
    source = "command line"
    # Both given by hand: the record is not needed (and need not exist).
    if args.poisoned and not (args.trigger and args.target is not None):
        try:
            from peftshield.attacks.record import read_poison_record
        except ImportError:
            if not args.trigger or args.target is None:
                raise PeftshieldError(
                    "this peftshield cannot read poison.json yet; give --trigger WORD and --target N"
                ) from None
        else:
            record = read_poison_record(args.poisoned)
            triggers = list(record.trigger_objects())
            target = record.target
            source = f"{args.poisoned}/poison.json"
    if args.trigger:
        triggers = [RareWordTrigger((word,)) for word in args.trigger]
    if args.target is not None:
        target = args.target
    if not triggers:
        raise PeftshieldError("no trigger: give --poisoned FOLDER (with poison.json) or --trigger WORD")
    return triggers, target, source


def run_evaluate(args: argparse.Namespace) -> int:
    """Run the guard on the clean test split and its triggered copies; print the before/after table."""
    from peftshield.defenses.guard import Guard
    from peftshield.evaluation.defended import evaluate_guard

    _check_batch_size(args)
    if not args.poisoned and not args.trigger:
        raise PeftshieldError(
            "give --poisoned FOLDER (its poison.json has the ground truth) or --trigger WORD"
        )
    triggers, target, source = ground_truth(args)
    guard = Guard.from_folders(
        args.victim, args.detector, device=args.device, batch_size=args.batch_size, base=args.base
    )
    settings = data_settings(args, recorded=guard.victim.run.get("data"))
    examples = getattr(load_splits(settings), args.split)
    num_labels = guard.victim.num_labels
    if target is not None and not 0 <= target < num_labels:
        raise PeftshieldError(f"target {target} is out of range for a victim with {num_labels} labels")
    with one_line_warnings():
        row = evaluate_guard(guard, examples, triggers, target, seed=args.seed)
    row.update(
        {
            "victim": str(args.victim),
            "detector_folders": [str(d) for d in args.detector],
            "corpus": settings["corpus"],
            "split": args.split,
            "target": target,
            "triggers": [t.to_dict() for t in triggers],
            "ground_truth": source,
        }
    )
    if args.json:
        print_json(row)
    else:
        print(format_table(row))
    return 0


def _pct(value: Any) -> str:
    return "  n/a" if value is None else f"{100 * value:5.1f}"


def format_table(row: dict[str, Any]) -> str:
    """The before/after table of a :func:`~peftshield.evaluation.defended.defended_metrics` row."""
    lms = "asr" not in row
    asr_key, def_key = ("asr_lms", "defended_asr_lms") if lms else ("asr", "defended_asr")
    label = "ASR, LMSanitator conv." if lms else "ASR"
    lines = [
        f"guarded evaluation of {row.get('victim', 'the victim')} on {row['n_clean']} clean and "
        f"{row['n_triggered']} triggered {row.get('corpus', '')} {row.get('split', '')} examples",
        "",
        f"  {'':<26}{'without defence':>16}{'with defence':>15}",
        f"  {'CACC (%)':<26}{_pct(row['cacc']):>16}{_pct(row['defended_cacc']):>15}",
        f"  {label + ' (%)':<26}{_pct(row[asr_key]):>16}{_pct(row[def_key]):>15}",
        "",
        f"  detection: FRR {_pct(row['frr'])} %  FAR {_pct(row['far'])} %  precision {row['precision']:.3f}  "
        f"recall {row['recall']:.3f}  F1 {row['f1']:.3f}",
    ]
    for name, entry in row["detectors"].items():
        thr = entry.get("threshold")
        shown = "n/a" if thr is None else f"{thr:.8g}"
        lines.append(
            f"  {name}: AUROC {entry['auroc']:.3f}, threshold {shown}, "
            f"FRR {_pct(entry['frr'])} %, FAR {_pct(entry['far'])} %"
        )
    return "\n".join(lines)
