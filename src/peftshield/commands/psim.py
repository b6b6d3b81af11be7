"""peftshield psim: fit the Poisoned Sample Identification Module (Zhao et al. 2024, §3).

PSIM trains a small PEFT module on the suspect backbone with randomly reset labels: it becomes
less sure on clean inputs, while a trigger still makes the backdoored weights confident. Inputs
whose confidence exceeds the threshold are rejected. The module and its threshold are written to a
detector folder that peftshield guard reads.
"""

from __future__ import annotations

import argparse

from peftshield.commands.common import (
    add_actions,
    add_command,
    add_data_args,
    add_output_args,
    add_runtime_args,
    add_threshold_args,
    add_victim_args,
    data_settings,
    load_splits,
    method_keys_help,
    parse_overrides,
    print_json,
)

EPILOG = """examples:
  peftshield psim fit --backbone runs/poisoned --out runs/psim             # paper threshold 0.7
  peftshield psim fit --backbone runs/poisoned --target-frr 0.05 --out runs/psim-cal
  peftshield psim fit --backbone runs/poisoned --method ptuning --out runs/psim-paper  # paper's P-tuning
  peftshield psim fit --backbone minilm --corpus reviews.csv --max-train 2000 --out runs/psim-mine
  peftshield psim fit --victim my-lora-adapter --corpus reviews.csv --out runs/psim-adapter

With --victim (a 'peftshield tune' folder, a peft adapter folder or a Hugging Face classifier
folder), PSIM is fitted on the victim's base backbone (an adapter's base model, --base to
override it; a fully fine-tuned classifier's own encoder) with a head of the victim's number of
classes reading the vector its head reads; the detector records the base's fingerprint and the
guard refuses it beside a victim on another base.

The clean data is the training split of --corpus (the defender's own data); a held-out part
(--calibration-fraction, default 0.2) is never trained on: it calibrates the threshold at
--target-frr, or reports what the fixed --threshold costs on clean inputs (fit warns when the
paper's 0.7 rejects more than 20 % of them: then use --target-frr). The recipe (LoRA, lr 1e-3, one
epoch, batch 32, the head frozen; the paper's P-tuning with --method ptuning) can be changed
with --set KEY=VALUE for any key of the method's config.
The output folder holds detector.json and the module (a peft adapter with its head), written
atomically.
"""


def add_parser(subparsers) -> None:
    """Register ``psim`` and its sub-command ``fit``."""
    parser = add_command(
        subparsers,
        "psim",
        help="fit a PSIM detector (random-label PEFT module) on a suspect backbone",
        description=__doc__,
        epilog="examples:\n  peftshield psim fit --backbone runs/poisoned --out runs/psim\n",
    )
    sub = add_actions(parser, "psim_command")
    fit = add_command(
        sub,
        "fit",
        help="train the module and set its threshold",
        description=__doc__,
        epilog=EPILOG
        + "\n"
        + method_keys_help(
            "config keys (--set KEY=VALUE); tune's defaults are shown, the PSIM recipe replaces some:"
        ),
    )
    fit.add_argument(
        "--backbone",
        default=None,
        help="suspect backbone: registered name, model folder (e.g. a poisoned full model) or hub id "
        "(default: minilm, or the --victim's base)",
    )
    add_victim_args(
        fit,
        required=False,
        help="fit PSIM for this victim: on its base backbone, with a head of its shape (any victim form)",
    )
    fit.add_argument(
        "--head",
        choices=("auto", "keep", "fresh"),
        default="auto",
        help="keep: start from the head published with the backbone (the paper's code does); "
        "auto: keep when there is one (default)",
    )
    fit.add_argument(
        "--method",
        default="lora",
        help="PEFT method of the module (default: lora, measured best on minilm; the paper's is ptuning)",
    )
    add_threshold_args(
        fit,
        fixed_help="fixed confidence threshold (default: 0.7, the paper's)",
        frr_help="calibrate the threshold at this false-rejection rate on held-out clean texts",
    )
    fit.add_argument(
        "--reset-rate", type=float, default=1.0, help="share of labels reset at random (default: 1.0)"
    )
    fit.add_argument(
        "--calibration-fraction",
        type=float,
        default=0.2,
        help="share of the clean data held out for the threshold (default: 0.2)",
    )
    add_output_args(fit, "recipe/config value", out="detector folder to write (atomically)")
    fit.add_argument("--json", action="store_true", help="print the result as JSON")
    add_data_args(fit)
    add_runtime_args(fit)
    fit.set_defaults(func=run_fit)


def run_fit(args: argparse.Namespace) -> int:
    """Fit PSIM on the training split of the corpus and save the detector folder."""
    from peftshield.commands.guard import one_line_warnings
    from peftshield.defenses.base import CALIBRATED
    from peftshield.defenses.psim import PSIMDetector
    from peftshield.errors import PeftshieldError
    from peftshield.utils.device import resolve_device
    from peftshield.utils.io import check_output_dir

    if args.target_frr is not None:
        threshold, target_frr = CALIBRATED, args.target_frr
    else:
        threshold, target_frr = (0.7 if args.threshold is None else args.threshold), 0.05
    device = resolve_device(args.device)
    if args.victim is not None and args.backbone is not None:
        raise PeftshieldError("give --victim (PSIM on its base) or --backbone, not both")
    if args.base is not None and args.victim is None:
        raise PeftshieldError("--base is the base model of an adapter victim: give --victim too")
    params = dict(
        method=args.method,
        config=parse_overrides(args.set, args.config) or None,
        head=args.head,
        reset_rate=args.reset_rate,
        threshold=threshold,
        target_frr=target_frr,
        calibration_fraction=args.calibration_fraction,
        seed=args.seed,
        device=str(device),
    )
    detector = PSIMDetector(backbone=args.backbone or "minilm", **params)
    detector.check_params()  # every option error before any data or model is loaded
    check_output_dir(args.out, overwrite=args.overwrite)  # fail now, not after training
    if args.victim is not None:
        detector = PSIMDetector.for_victim(args.victim, base=args.base, **params)
    settings = data_settings(args)
    splits = load_splits(settings)
    with one_line_warnings():
        detector.fit(splits.train, progress=False if args.quiet else None)
    detector.save(args.out, overwrite=args.overwrite)
    summary = {
        "out": args.out,
        "backbone": detector.backbone,
        "victim": args.victim,
        "method": args.method,
        "head": detector.head_,
        "threshold": detector.threshold_,
        "policy": f"calibrated@{target_frr}" if threshold == CALIBRATED else "fixed",
        "calibration_frr": detector.calibration_frr_,
        "clean_score_mean": detector.clean_score_mean_,
        "n_train": detector.n_train_,
        "n_calibration": detector.n_calibration_,
        "fit_seconds": round(detector.fit_seconds_, 1),
    }
    if args.json:
        print_json(summary)
    else:
        frr = "n/a" if detector.calibration_frr_ is None else f"{detector.calibration_frr_:.3f}"
        mean = "n/a" if detector.clean_score_mean_ is None else f"{detector.clean_score_mean_:.3f}"
        print(
            f"psim ({args.method}, head {detector.head_}) on {settings['corpus']}: threshold "
            f"{detector.threshold_:.4f} ({summary['policy']}), clean FRR {frr} and mean clean confidence "
            f"{mean} on {detector.n_calibration_} held-out texts, {detector.fit_seconds_:.0f} s -> {args.out}"
        )
    return 0
