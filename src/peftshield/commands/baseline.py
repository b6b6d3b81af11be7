"""peftshield baseline: fit a classic input-level defence (STRIP, RAP or ONION) for a victim.

The baselines the PSIM and LMSanitator detectors are compared with. Each is fitted on clean texts,
its threshold calibrated at a target false-rejection rate (or fixed), and saved as a detector
folder that 'peftshield guard predict' and 'peftshield guard evaluate' read with --detector, beside
PSIM or the monitor.

The defences offered are the registered detectors, except those with a command of their own
(PSIM: 'peftshield psim fit'; the LMSanitator monitor: 'peftshield monitor fit').
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any

from peftshield.commands.common import (
    add_actions,
    add_clean_args,
    add_command,
    add_output_args,
    add_runtime_args,
    add_threshold_args,
    add_victim_args,
    clean_texts,
    parse_overrides,
    print_json,
)
from peftshield.errors import PeftshieldError
from peftshield.utils.strict import check_keys

#: Registered detectors fitted by a command of their own, not by ``baseline fit``.
OWN_COMMANDS = {"psim": "peftshield psim fit", "lmsanitator": "peftshield monitor fit"}


def baseline_names() -> list[str]:
    """The defences ``baseline fit --defense`` offers: every registered detector without its own command."""
    from peftshield.defenses.base import registered_detectors

    return [name for name in registered_detectors() if name not in OWN_COMMANDS]


def baseline_help(name: str) -> str:
    """The first line of the detector class's docstring (its one-line summary)."""
    from peftshield.defenses.base import detector_class

    doc = (detector_class(name).__doc__ or "").strip()
    return doc.splitlines()[0] if doc else name


EPILOG = """defences:
{defences}

examples:
  peftshield baseline fit --defense strip --victim runs/victim --out runs/strip
  peftshield baseline fit --defense rap --victim runs/victim --target 0 --target-frr 0.01 --out runs/rap
  peftshield baseline fit --defense rap --victim runs/victim --set epochs=10 --out runs/rap
  peftshield baseline fit --defense strip --victim my-lora-adapter --clean movies --out runs/strip-mine
  peftshield guard evaluate --victim runs/victim --detector runs/strip --poisoned runs/bad

Clean texts (--clean, default: the dev split recorded in the victim's run.json, at most
--max-clean) fit the defence; a held-out part (--set calibration_fraction=..., default 0.2) sets
the threshold at --target-frr (default 0.05), or reports what a fixed --threshold costs. --set
KEY=VALUE reaches any other parameter of the defence:
{keys}
RAP's default word is "jj", a rare
word that is none of the default attack triggers (the references' "cf" is our default BadNets
trigger and a POR one, "mn" the clean-label one): if the victim's backdoor uses "jj", or its
vocabulary splits it, choose another (--set rap_word=...); fit warns when the word itself flips
the victim. The folder holds detector.json (and the defence's weights) and refers to the victim
by path; it is written atomically.
"""


def add_parser(subparsers) -> None:
    """Register ``baseline`` and its sub-command ``fit``."""
    parser = add_command(
        subparsers,
        "baseline",
        help=f"fit a baseline input detector ({', '.join(n.upper() for n in baseline_names())}) for a victim",
        description=__doc__,
        epilog="examples:\n  peftshield baseline fit --defense strip --victim runs/victim --out runs/strip\n",
    )
    sub = add_actions(parser, "baseline_command")
    names = baseline_names()
    defences = "\n".join(f"  {name:<8}{baseline_help(name)}" for name in names)
    fit = add_command(
        sub,
        "fit",
        help="fit a baseline defence on clean texts and save a detector folder",
        description=__doc__,
        epilog=EPILOG.format(defences=defences, keys=_set_keys()),
    )
    fit.add_argument("--defense", required=True, choices=sorted(names), help="which baseline")
    add_victim_args(
        fit,
        required=False,
        help="the classifier protected: a 'peftshield tune' folder (its run.json names the --clean dev "
        "split), a peft adapter folder or a Hugging Face sequence-classification folder",
    )
    add_threshold_args(
        fit,
        fixed_help="fixed threshold on the score scale",
        frr_help="calibrate the threshold at this false-rejection rate on held-out clean texts "
        "(default: 0.05)",
    )
    fit.add_argument(
        "--target", type=int, default=None, help="the protected (attacker's target) label, where used (RAP)"
    )
    add_clean_args(fit)
    fit.add_argument("--batch-size", type=int, default=128, help="texts per forward pass (default: 128)")
    add_output_args(fit, "parameter of the defence", out="detector folder to write (atomically)")
    fit.add_argument("--json", action="store_true", help="print the result as JSON")
    add_runtime_args(fit)
    fit.set_defaults(func=run_fit)


#: Constructor parameters with an option of their own (not reached through --set).
_OWN_OPTIONS = ("victim", "threshold", "target_frr", "seed", "device", "batch_size", "target_label")


def _set_keys() -> str:
    """The ``--set`` keys of every defence, one line each, from the detector classes' constructors."""
    from peftshield.defenses.base import detector_class

    lines = []
    for name in baseline_names():
        params = inspect.signature(detector_class(name)).parameters
        lines.append(f"  {name:<8}" + ", ".join(p for p in params if p not in _OWN_OPTIONS))
    return "\n".join(lines)


def detector_params(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """Constructor parameters of ``cls`` from the command line; options it does not take are errors."""
    from peftshield.defenses.base import CALIBRATED
    from peftshield.utils.device import resolve_device

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    given: dict[str, Any] = {
        "seed": args.seed,
        "device": str(resolve_device(args.device)),
        "batch_size": args.batch_size,
    }
    if args.victim is not None:
        given["victim"] = str(Path(args.victim).resolve())
    if args.base is not None:
        if args.victim is None:
            raise PeftshieldError("--base is the base model of an adapter victim: give --victim too")
        given["base"] = args.base
    if args.target_frr is not None:
        given.update(threshold=CALIBRATED, target_frr=args.target_frr)
    elif args.threshold is not None:
        given["threshold"] = args.threshold
    if args.target is not None:
        given["target_label"] = args.target
    overrides = parse_overrides(args.set, args.config)
    check_keys(overrides, sorted(accepted), what=args.defense, noun="parameter")
    # --victim also names the clean dev split (--clean dev), so a defence without one ignores it.
    if "target_label" in given and "target_label" not in accepted:
        raise PeftshieldError(f"--target is not used by {args.defense}")
    if "victim" in accepted and "victim" not in given and "victim" not in overrides:
        raise PeftshieldError(f"{args.defense} needs --victim FOLDER (the classifier it protects)")
    params = {k: v for k, v in given.items() if k in accepted}
    params.update(overrides)
    return params


def run_fit(args: argparse.Namespace) -> int:
    """Fit the chosen baseline on clean texts and save its detector folder."""
    from peftshield.commands.guard import one_line_warnings
    from peftshield.defenses.base import CALIBRATED
    from peftshield.utils.io import check_output_dir

    if args.batch_size < 1:
        raise PeftshieldError("--batch-size must be at least 1")
    from peftshield.defenses.base import detector_class

    cls = detector_class(args.defense)
    params = detector_params(args, cls)
    detector = cls(**params)
    detector.check_params()  # every option error before any data or model is loaded
    check_output_dir(args.out, overwrite=args.overwrite)  # fail now, not after the work
    texts = clean_texts(args.clean, args.victim, args.max_clean)
    with one_line_warnings():
        detector.fit(texts, progress=False if args.quiet else None)
    detector.save(args.out, overwrite=args.overwrite)
    policy = f"calibrated@{detector.target_frr}" if detector.threshold == CALIBRATED else "fixed"
    fitted = detector.fitted_attributes()
    summary = {
        "out": args.out,
        "defense": args.defense,
        "victim": params.get("victim"),
        "threshold": detector.threshold_,
        "policy": policy,
        "calibration_frr": fitted.get("calibration_frr_"),
        "n_calibration": fitted.get("n_calibration_"),
        "n_clean": len(texts),
        # The defence's own scalar diagnostics (RAP's in-range rate, STRIP's clean entropy ...).
        **{
            k.rstrip("_"): v
            for k, v in fitted.items()
            if isinstance(v, int | float | str) and k not in _SHOWN
        },
    }
    if args.json:
        print_json(summary)
    else:
        frr = summary["calibration_frr"]
        shown = "n/a" if frr is None else f"{frr:.3f}"
        print(
            f"{args.defense}: threshold {detector.threshold_:.6g} ({policy}), clean FRR {shown} on "
            f"{summary['n_calibration']} held-out texts of {len(texts)} -> {args.out}"
        )
    return 0


_SHOWN = ("threshold_", "calibration_frr_", "n_calibration_", "backbone_fingerprint_", "victim_fingerprint_")
