"""peftshield scan: is this pretrained backbone backdoored? (LMSanitator PV mining and filtering)."""

from __future__ import annotations

import argparse
import sys

from peftshield.commands.common import add_runtime_args
from peftshield.models.pooling import POOLING_CHOICES

# Scanner conventions (docs/design.md, "Conventions of the tools people already use"; docs/scan-format.md):
# exit 0 = no backdoor found, 1 = backdoor found, 2 = error; --format text|json|sarif; --out FILE atomic.
FORMATS = ("text", "json", "sarif")
#: Exit statuses of the scanner conventions (0 and 1 here; 2 is the CLI's error path).
EXIT_CLEAN, EXIT_BACKDOORED = 0, 1

EPILOG = """how it works (Wei et al., NDSS 2024, stage 2):
  A soft trigger of --slots vectors is spliced into clean texts (--texts) and optimised on the
  frozen backbone so that its output vector moves far from the clean output and becomes the same
  for every text: a task-agnostic backdoor has such a predefined vector (PV), a clean model
  should not. Each attempt starts from fresh embedding rows; a candidate is kept when it is far
  from the clean outputs, input-independent, new, and its trigger lies within 1.2x the embedding
  matrix's range. Verdict: backdoored when at least one PV is kept, on any vector.

which vectors: by default every output vector a classifier head of this architecture may read
(cls, mean, the pooler where the model has one; last and mean for decoders), the backbone's
registered one first: the attacker chose which one to poison, and a scan that watches only one
misses the others. Attempts take the vectors in turn and share the step budget; every attempt also
reads its forward pass on the other vectors. --pooling narrows the scan to the vectors named.

examples:
  peftshield scan minilm                                   # verdict on the shipped backbone
  peftshield scan runs/suspect --format sarif --out suspect.sarif   # for a code-scanning step
  peftshield scan runs/suspect --format json | jq .verdict
  peftshield scan my-lora-adapter                          # scans the adapter's base model
  peftshield scan my-lora-adapter --base path/to/base      # ... with another base
  peftshield scan runs/suspect --pooling cls pooler        # only these vectors
  peftshield scan runs/suspect --all --pvs-out scans/all   # every PV: what 'monitor fit' needs
  peftshield scan runs/suspect --all --max-total-steps 1200 --pvs-out scans/deep
  peftshield scan runs/suspect --thresholds calibration.json --format json

budget: each attempt runs at most --steps steps and is abandoned after 10 when it is neither far
from the clean outputs nor close to collapsing; the whole scan, all vectors together, stops after
--max-total-steps (about 3 minutes for a clean minilm on one CPU core) or at the first PV (the
default; --all searches on, and then spends the rest of the budget on the vectors that hold PVs).
--attempts bounds the attempts of each vector. A backdoor has several PVs: scan with --all
before 'peftshield monitor fit', or the monitor watches only the first trigger found.

output: the report (--format, default text) on stdout or in --out FILE (written atomically);
--pvs-out DIR (written atomically) keeps pvs.safetensors (tensors 'pvs' / 'triggers' of the
primary vector, 'pvs.<pooling>' of each scanned vector) and scan.json (the JSON report with the
per-attempt log and step traces). JSON schema and SARIF mapping: docs/scan-format.md.

exit status: 0 no backdoor found, 1 backdoor found, 2 error (bad input writes nothing).
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
    parser.add_argument(
        "model",
        help="what to scan: a registered backbone (minilm, mpnet), a model folder, a peft adapter "
        "folder (its base model is scanned) or a hub id",
    )
    parser.add_argument(
        "--base",
        metavar="PATH",
        help="for an adapter folder: the base model to scan instead of its base_model_name_or_path",
    )
    parser.add_argument(
        "--texts",
        default="wiki",
        help="clean mining texts: a corpus name or a CSV/TSV/JSONL file with a text column (default: wiki)",
    )
    parser.add_argument("--text-column", default="text", help="text column of a --texts file (default: text)")
    parser.add_argument(
        "--pooling",
        nargs="+",
        choices=POOLING_CHOICES,
        default=None,
        metavar="VECTOR",
        help=f"scan only these output vectors ({', '.join(POOLING_CHOICES)}); "
        "default: every candidate vector of the architecture",
    )
    parser.add_argument(
        "--attempts", type=int, default=30, help="fuzzing attempts at most, per vector (default: 30)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="optimisation steps per attempt (default: 30)"
    )
    parser.add_argument(
        "--max-total-steps",
        type=int,
        default=300,
        help="step budget of the whole scan, all vectors together; 0 = no budget beyond --attempts "
        "(default: 300)",
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
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="report format: text, json (docs/scan-format.md) or sarif (SARIF 2.1.0) (default: text)",
    )
    parser.add_argument("--json", action="store_true", help="same as --format json")
    parser.add_argument(
        "--out", metavar="FILE", help="write the report to FILE (atomically) instead of stdout"
    )
    parser.add_argument(
        "--pvs-out",
        metavar="DIR",
        help="folder for the mined PVs and the full log (pvs.safetensors, scan.json; written atomically)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out / --pvs-out")
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


def weights_file(location: str) -> str | None:
    """The weights file of a model folder (``model.safetensors``, its shard index, or the first shard)."""
    from pathlib import Path

    folder = Path(location)
    if not folder.is_dir():
        return None
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if (folder / name).is_file():
            return str(folder / name)
    shards = sorted(folder.glob("*.safetensors"))
    return str(shards[0]) if shards else None


def _check_report_file(path: str, overwrite: bool) -> None:
    import os
    from pathlib import Path

    from peftshield.errors import PeftshieldError

    target = Path(path)
    if target.is_dir():
        raise PeftshieldError(f"--out {path} is a folder; give a file name (the PV folder is --pvs-out)")
    if target.exists() and not overwrite:
        raise PeftshieldError(f"output file already exists: {path} (use --overwrite to replace it)")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise PeftshieldError(f"cannot write to {parent}")


def render(document: dict, fmt: str) -> str:
    """The report of a scan document in ``fmt`` (text, json or sarif), ending with a newline."""
    import json

    if fmt == "json":
        return json.dumps(document, indent=2, default=str) + "\n"
    if fmt == "sarif":
        from peftshield.defenses.lmsanitator.sarif import to_sarif

        return json.dumps(to_sarif(document), indent=2, default=str) + "\n"
    name = document["input"].get("path") or document["model"]
    base = f" (base {document['input']['base']})" if document["input"].get("base") else ""
    lines = [
        f"{name}{base}: {document['verdict'].upper()} (score {document['score']}; {document['n_pvs']} PV(s) "
        f"in {document['attempts']} attempt(s), {document['steps']} steps, {document['seconds']:.0f} s)"
    ]
    for vector in document["vectors"]:
        mark = " (registered)" if vector["pooling"] == document["registered_pooling"] else ""
        score = "-" if vector["score"] is None else f"{vector['score']:+.3f}"
        lines.append(
            f"  {vector['pooling']:<7} {vector['verdict']:<12} score {score:>7}  {vector['n_pvs']} PV(s), "
            f"{vector['attempts']} attempt(s), {vector['steps']} steps, {vector['seconds']:.1f} s{mark}"
        )
    if document.get("pvs_out"):
        lines.append(f"PVs and log: {document['pvs_out']}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """Scan, report the verdict (text, JSON or SARIF), optionally save PVs and the log; exit 0 / 1."""
    import os
    from pathlib import Path

    from peftshield.commands.common import parse_overrides
    from peftshield.defenses.lmsanitator.mining import MiningConfig
    from peftshield.defenses.lmsanitator.scan import scan, scan_target
    from peftshield.errors import PeftshieldError
    from peftshield.models.backbones import load_backbone
    from peftshield.utils.device import resolve_device
    from peftshield.utils.io import check_output_dir, write_text

    fmt = args.format or ("json" if args.json else "text")
    if args.json and args.format not in (None, "json"):
        raise PeftshieldError(f"--json contradicts --format {args.format}")
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
    # Fail now, not after the work.
    if args.out:
        _check_report_file(args.out, args.overwrite)
    if args.pvs_out:
        check_output_dir(args.pvs_out, overwrite=args.overwrite)
    ref, source = scan_target(args.model, args.base)
    texts = _load_texts(args.texts, args.text_column)
    backbone = load_backbone(ref)
    source["weights"] = weights_file(backbone.location)
    if source["weights"] and Path(ref).exists() and not Path(ref).is_absolute():
        # A model named by a relative path is reported relative too (SARIF locations in a repository).
        source["weights"] = os.path.relpath(source["weights"])
    machine = fmt != "text" and not args.out

    def report(record) -> None:
        if not args.quiet and not machine:
            print(
                f"  attempt {record.attempt + 1} ({record.pooling}): {record.outcome} after {record.steps} "
                f"steps ({record.seconds:.1f} s; distance {record.distance:.3g}, gap {record.gap:.3g})"
                + (f"; PV on {', '.join(record.pv_on)}" if record.pv_on else ""),
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
        pooling=args.pooling,
        device=device,
        seed=args.seed,
        progress=False if args.quiet or machine else None,
        on_attempt=report,
    )
    result.texts = args.texts
    result.input.update(source)
    command = " ".join(sys.argv)
    if args.pvs_out:
        result.save(args.pvs_out, overwrite=args.overwrite, command=command)
    document = {**result.to_dict(traces=False), "pvs_out": args.pvs_out, "command": command}
    text = render(document, fmt)
    if args.out:
        target = Path(args.out)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text(target, text)
    else:
        sys.stdout.write(text)
    return EXIT_BACKDOORED if result.backdoored else EXIT_CLEAN


def _load_texts(source: str, text_column: str) -> list[str]:
    from peftshield.data.corpora import load_corpus

    return [e.text for e in load_corpus(source, text_column=text_column, label_column=None)]
