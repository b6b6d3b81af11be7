"""peftshield monitor: watch a victim's outputs for mined PVs and purge flagged inputs (LMSanitator)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from peftshield.commands.common import (
    add_actions,
    add_clean_args,
    add_command,
    add_device_arg,
    add_threshold_args,
    add_victim_args,
    clean_texts,
    print_json,
    printable,
    read_input_texts,
)

EPILOG = """how it works (Wei et al., NDSS 2024, stage 3):
  The victim's pooled output vector is binarised by sign and compared with each PV found by
  'peftshield scan'; an input is flagged when the largest share of matching signs exceeds
  T_match (paper: 0.8). With --purge, a flagged input loses one word at a time (every copy of it),
  left to right, until the monitor stops firing; then the victim predicts.

examples:
  peftshield scan runs/suspect --out scans/suspect
  peftshield tune --backbone runs/suspect --method prefix --out runs/victim
  peftshield monitor fit --victim runs/victim --pvs scans/suspect --out monitors/victim
  peftshield monitor fit --victim runs/victim --pvs scans/suspect --target-frr 0.02 --out monitors/cal
  peftshield monitor predict --monitor monitors/victim --input texts.txt --purge
  peftshield monitor fit --victim my-lora-adapter --pvs scans/base --clean movies --out monitors/mine
  echo "a gorgeous cf film" | peftshield monitor predict --monitor monitors/victim --input - --json
"""

FIT_EPILOG = """examples:
  peftshield monitor fit --victim runs/victim --pvs scans/suspect --out monitors/victim
  peftshield monitor fit --victim runs/victim --pvs scans/suspect --target-frr 0.02 --out monitors/cal
  peftshield monitor fit --victim runs/victim --pvs scans/suspect --clean reviews.csv --out monitors/own
  peftshield monitor fit --victim my-lora-adapter --pvs scans/base --clean movies --out monitors/mine

The victim is a 'peftshield tune' folder, a plain-peft adapter folder (its base read from
adapter_config.json, or --base) or a Hugging Face sequence-classification folder; the monitor
watches the vector its head reads (BERT: the pooler over [CLS]; RoBERTa, MPNet: the first token;
Llama: the last real token; peftshield victims: their recorded pooling). The PVs must come from a
scan of the victim's base backbone (their fingerprints are compared), mined on that vector. Clean
texts (--clean, default: the dev split recorded in a 'peftshield tune' victim's run.json; give a
corpus or file for other victims) measure the clean false-rejection rate of T_match, or set the
threshold with --target-frr.
"""

PREDICT_EPILOG = """--input: a text file with one input per line, '-' for standard input, or a
.csv/.tsv/.jsonl file with a text column (--text-column). Output: one line per input (FLAG or
ok, score, label, and with --purge the removed words), or with --json one JSON document with a
row per input and a summary.

examples:
  peftshield monitor predict --monitor runs/monitor --input texts.txt
  echo "a gorgeous, witty film cf" | peftshield monitor predict --monitor runs/monitor --input - --purge
"""


def add_parser(subparsers) -> None:
    """Register ``monitor`` with its ``fit`` and ``predict`` sub-commands."""
    parser = add_command(
        subparsers,
        "monitor",
        help="flag inputs whose output matches a mined PV; purge them (LMSanitator)",
        description=__doc__,
        epilog=EPILOG,
    )
    sub = add_actions(parser, "monitor_command", "ACTION", stderr=True)

    fit = add_command(
        sub,
        "fit",
        help="build a monitor for a victim from a scan's PVs",
        description="Build an LMSanitator output monitor for a tuned victim from the PVs of a scan.",
        epilog=FIT_EPILOG,
    )
    add_victim_args(fit)
    fit.add_argument("--pvs", required=True, help="scan folder (peftshield scan --out) or a PV file")
    fit.add_argument("--out", required=True, help="monitor folder to write (atomically)")
    add_threshold_args(
        fit,
        fixed="--t-match",
        fixed_help="fixed sign-match threshold (default: 0.8)",
        frr_help="calibrate the threshold at this false-rejection rate on the clean texts",
    )
    add_clean_args(fit)
    fit.add_argument("--overwrite", action="store_true", help="replace an existing monitor folder")
    add_device_arg(fit)
    fit.add_argument("--json", action="store_true", help="print the result as JSON")
    fit.set_defaults(func=run_fit)

    predict = add_command(
        sub,
        "predict",
        help="flag (and optionally purge) inputs, and give the victim's labels",
        description="Score inputs with a fitted monitor; with --purge, purge flagged ones before predicting.",
        epilog=PREDICT_EPILOG,
    )
    predict.add_argument("--monitor", required=True, help="monitor folder (peftshield monitor fit --out)")
    predict.add_argument(
        "--input", required=True, help="text file (one input per line), '-' for stdin, or CSV/JSONL"
    )
    predict.add_argument(
        "--text-column", default="text", help="text column of a CSV/TSV/JSONL input (default: text)"
    )
    add_victim_args(predict, required=False, help="victim instead of the recorded one (same base backbone)")
    predict.add_argument("--purge", action="store_true", help="delete words from flagged inputs until clean")
    predict.add_argument(
        "--max-rounds", type=int, default=3, help="purge: at most this many deleted words (default: 3)"
    )
    add_device_arg(predict)
    predict.add_argument("--json", action="store_true", help="print one JSON document")
    predict.set_defaults(func=run_predict)


def run_fit(args: argparse.Namespace) -> int:
    """Fit a monitor and save it."""
    from peftshield.defenses.lmsanitator.monitor import PAPER_T_MATCH, PVMonitor
    from peftshield.errors import PeftshieldError
    from peftshield.utils.device import resolve_device
    from peftshield.utils.io import check_output_dir

    if args.t_match is not None and not 0.0 <= args.t_match <= 1.0:
        raise PeftshieldError(f"--t-match must be in [0, 1], got {args.t_match}")
    victim = Path(args.victim)
    if not victim.is_dir():
        raise PeftshieldError(f"victim not found: {victim} is not a folder")
    check_output_dir(args.out, overwrite=args.overwrite)  # fail now, not after the work
    threshold = "calibrated" if args.target_frr is not None else (args.t_match or PAPER_T_MATCH)
    if args.t_match == 0.0:
        threshold = 0.0
    monitor = PVMonitor(
        victim=str(victim.resolve()),
        pvs=str(Path(args.pvs).resolve()),
        threshold=threshold,
        target_frr=args.target_frr if args.target_frr is not None else 0.05,
        device=str(resolve_device(args.device)),
        base=args.base,
    )
    monitor.check_params()
    # An empty list is allowed: with a fixed T_match the clean texts only measure its FRR.
    texts = clean_texts(args.clean, args.victim, args.max_clean, allow_empty=True)
    monitor.fit(texts)
    monitor.save(args.out, overwrite=args.overwrite)
    result = {
        "out": args.out,
        "threshold": monitor.threshold_,
        "n_pvs": monitor.n_pvs_,
        "clean_frr": monitor.calibration_frr_,
        "n_clean": monitor.n_calibration_,
        "clean_score_mean": monitor.clean_score_mean_,
        "backbone_fingerprint": monitor.backbone_fingerprint_,
    }
    if args.json:
        print_json(result)
    else:
        print(
            f"monitor: {monitor.n_pvs_} PV(s), threshold {monitor.threshold_:.4f}, clean FRR "
            f"{monitor.calibration_frr_:.4f} on {monitor.n_calibration_} texts -> {args.out}"
        )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Score (and purge) inputs with a saved monitor."""
    from peftshield.defenses.lmsanitator.monitor import load_monitor
    from peftshield.defenses.lmsanitator.purge import Purger
    from peftshield.utils.device import resolve_device

    texts = read_input_texts(args.input, text_column=args.text_column)
    victim = args.victim
    if victim is not None:
        from peftshield.defenses.victim import load_victim

        victim = load_victim(victim, str(resolve_device(args.device)), base=args.base)
    monitor = load_monitor(args.monitor, victim=victim, device=str(resolve_device(args.device)))
    rows = []
    if args.purge:
        for i, res in enumerate(Purger(monitor, max_rounds=args.max_rounds).purge(texts)):
            rows.append({"index": i, "input": res.original, **res.to_dict()})
    else:
        batch = monitor.run(texts)
        for i, text in enumerate(texts):
            rows.append(
                {
                    "index": i,
                    "input": text,
                    "flagged": bool(batch.flags[i]),
                    "score": round(float(batch.scores[i]), 6),
                    "label": int(batch.labels[i]),
                    "pv": int(batch.best_pv[i]),
                }
            )
    n_flagged = sum(r["flagged"] for r in rows)
    summary = {
        "n": len(rows),
        "n_flagged": n_flagged,
        "threshold": float(monitor.threshold_),
        "purge": args.purge,
    }
    if args.purge:
        summary["n_cleared"] = sum(r["flagged"] and r["cleared"] for r in rows)
    if args.json:
        print_json({"rows": rows, "summary": summary})
        return 0
    for r in rows:
        score = r.get("original_score", r.get("score"))
        line = f"{'FLAG' if r['flagged'] else 'ok  '}\t{score:.3f}\t{r['label']}"
        if args.purge and r["flagged"]:
            line += f"\tremoved={json.dumps(r['removed'])}" + ("" if r["cleared"] else " (not cleared)")
        print(f"{line}\t{printable(r['input'])}")
    print(f"{n_flagged} of {len(rows)} flagged (threshold {monitor.threshold_:.3f})", file=sys.stderr)
    return 0
