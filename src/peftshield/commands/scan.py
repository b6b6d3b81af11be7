"""peftshield scan: is this pretrained backbone backdoored? (LMSanitator PV mining and filtering)."""

from __future__ import annotations

import argparse
import sys

from peftshield.commands.common import add_runtime_args, print_json

EPILOG = """how it works (Wei et al., NDSS 2024, stage 2):
  A soft trigger of --slots vectors is spliced into clean texts (--texts) and optimised on the
  frozen backbone so that its pooled output moves far from the clean output and becomes the same
  for every text: a task-agnostic backdoor has such a predefined vector (PV), a clean model
  should not. Each attempt starts from fresh embedding rows; a candidate is kept when it is far
  from the clean outputs, input-independent, new, and its trigger lies within 1.2x the embedding
  matrix's range. Verdict: backdoored when at least one PV is kept.

examples:
  peftshield scan minilm                                   # verdict on the shipped backbone
  peftshield scan runs/suspect --out scans/suspect          # verdict, first PV saved
  peftshield scan runs/suspect --all --out scans/all         # every PV: what 'monitor fit' needs
  peftshield scan runs/suspect --all --max-total-steps 1200 --out scans/deep
  peftshield scan runs/suspect --thresholds calibration.json --json

budget: each attempt runs at most --steps steps and is abandoned after 10 when it is neither far
from the clean outputs nor close to collapsing; the whole scan stops after --max-total-steps
(about 3 minutes for a clean minilm on one CPU core). A backdoor has several PVs: scan with --all
before 'peftshield monitor fit', or the monitor watches only the first trigger found.

output (--out DIR, written atomically): pvs.safetensors (tensor 'pvs' (n, hidden) and the soft
'triggers'), scan.json (verdict, per-attempt log, thresholds, time, the backbone's fingerprint).
Exit status 0 whatever the verdict; 2 on bad input.
"""


def add_parser(subparsers) -> None:
    """Register ``scan``."""
    parser = subparsers.add_parser(
        "scan",
        help="scan a pretrained backbone for task-agnostic backdoors (LMSanitator)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="backbone to scan: registered name (minilm), model folder or hub id")
    parser.add_argument(
        "--texts",
        default="wiki",
        help="clean mining texts: a corpus name or a CSV/TSV/JSONL file with a text column (default: wiki)",
    )
    parser.add_argument("--text-column", default="text", help="text column of a --texts file (default: text)")
    parser.add_argument(
        "--pooling", choices=("cls", "pooler", "mean"), default=None, help="default: the backbone's own"
    )
    parser.add_argument("--attempts", type=int, default=30, help="fuzzing attempts at most (default: 30)")
    parser.add_argument(
        "--steps", type=int, default=None, help="optimisation steps per attempt (default: 30)"
    )
    parser.add_argument(
        "--max-total-steps",
        type=int,
        default=300,
        help="step budget of the whole scan; 0 = no budget beyond --attempts (default: 300)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--stop-at-first",
        dest="stop_at_first",
        action="store_true",
        default=True,
        help="stop at the first PV: enough for a verdict (default)",
    )
    mode.add_argument(
        "--all",
        dest="stop_at_first",
        action="store_false",
        help="search for every PV (default: stop at the first)",
    )
    parser.add_argument("--slots", type=int, default=None, help="soft-trigger length in tokens (default: 7)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a mining config value")
    parser.add_argument("--config", metavar="FILE.json", help="mining config overrides as a JSON object")
    parser.add_argument(
        "--thresholds",
        metavar="FILE.json",
        help="filter thresholds (e.g. from calibration on clean backbones); default: the built-in ones",
    )
    parser.add_argument("--out", help="output folder for PVs and the log (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    add_runtime_args(parser)
    parser.set_defaults(func=run)


def _thresholds(path: str | None):
    from peftshield.defenses.lmsanitator.filtering import FilterThresholds
    from peftshield.errors import PeftshieldError
    from peftshield.utils.io import read_json

    if path is None:
        return FilterThresholds()
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("thresholds"), dict):
        data = data["thresholds"]  # a CalibrationResult file
    if not isinstance(data, dict):
        raise PeftshieldError(f"{path} must hold a JSON object of thresholds")
    return FilterThresholds.from_dict(data)


def run(args: argparse.Namespace) -> int:
    """Scan, print the verdict, optionally save PVs and the log."""
    from peftshield.commands.common import parse_overrides
    from peftshield.defenses.lmsanitator.mining import MiningConfig
    from peftshield.defenses.lmsanitator.scan import scan
    from peftshield.errors import PeftshieldError
    from peftshield.models.backbones import load_backbone
    from peftshield.utils.device import resolve_device
    from peftshield.utils.io import check_output_dir

    overrides = parse_overrides(args.set, args.config)
    if args.steps is not None:
        overrides["steps"] = args.steps
        overrides.setdefault("patience", min(args.steps, MiningConfig().patience))
    if args.slots is not None:
        overrides["n_slots"] = args.slots
    config = MiningConfig.from_dict(overrides)
    thresholds = _thresholds(args.thresholds)
    if args.attempts < 1:
        raise PeftshieldError("--attempts must be at least 1")
    if args.max_total_steps < 0:
        raise PeftshieldError("--max-total-steps must be >= 0")
    device = resolve_device(args.device)
    if args.out:
        check_output_dir(args.out, overwrite=args.overwrite)  # fail now, not after the work
    texts = _load_texts(args.texts, args.text_column)
    backbone = load_backbone(args.model, pooling=args.pooling)

    def report(record) -> None:
        if not args.quiet and not args.json:
            print(
                f"  attempt {record.attempt + 1}: {record.outcome} after {record.steps} steps "
                f"({record.seconds:.1f} s; distance {record.distance:.3g}, gap {record.gap:.3g})",
                file=sys.stderr,
            )

    result = scan(
        backbone,
        texts,
        config=config,
        thresholds=thresholds,
        attempts=args.attempts,
        max_total_steps=args.max_total_steps or None,
        stop_at_first=args.stop_at_first,
        device=device,
        seed=args.seed,
        progress=False if args.quiet or args.json else None,
        on_attempt=report,
    )
    result.texts = args.texts
    if args.out:
        result.save(args.out, overwrite=args.overwrite, command=" ".join(sys.argv))
    if args.json:
        print_json({**result.to_dict(traces=False), "out": args.out})
    else:
        where = f" -> {args.out}" if args.out else ""
        print(
            f"{args.model}: {result.verdict.upper()} ({result.n_pvs} PV(s) in "
            f"{len(result.attempts)} attempt(s), {result.steps} steps, {result.seconds:.0f} s){where}"
        )
    return 0


def _load_texts(source: str, text_column: str) -> list[str]:
    from peftshield.data.corpora import load_corpus

    return [e.text for e in load_corpus(source, text_column=text_column, label_column=None)]
