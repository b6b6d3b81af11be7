"""The ``peftshield`` command: one entry point, one sub-command per job.

User mistakes (:class:`~peftshield.errors.PeftshieldError`) are printed as one line on stderr
with exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from peftshield import __version__
from peftshield.errors import PeftshieldError

# Sub-command modules, each with ``add_parser(subparsers)``; imported lazily so that
# ``peftshield --help`` does not pay for torch.
_COMMANDS = (
    "data",
    "tune",
    "poison",
    "evaluate",
    "demo",
    "psim",
    "guard",
    "scan",
    "monitor",
    "report",
    "bench",
    "baseline",
    "serve",
)

DESCRIPTION = """Defend parameter-efficient fine-tuning against weight-poisoning backdoors.

typical flow:
  peftshield data fetch                       # built-in corpora into $PEFTSHIELD_HOME
  peftshield tune --method lora --out runs/lora
  peftshield evaluate runs/lora
"""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="peftshield", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"peftshield {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(f"peftshield.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PeftshieldError as err:
        print(f"peftshield: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peftshield: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
