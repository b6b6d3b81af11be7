"""Argument groups and helpers shared by several sub-commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from peftshield.data.corpora import load_splits
from peftshield.errors import PeftshieldError
from peftshield.models.pooling import POOLING_CHOICES
from peftshield.utils.device import DEVICE_CHOICES

__all__ = ["load_splits"]  # re-exported: the commands read corpora through the data layer's loader

DATA_DEFAULTS: dict[str, Any] = {
    "corpus": "movies",
    "text_column": "text",
    "label_column": "label",
    "split_seed": 0,
    "max_train": None,
    "max_eval": None,
}


def add_data_args(parser: argparse.ArgumentParser, recorded: bool = False) -> None:
    """``--corpus`` and the deterministic split options.

    With ``recorded`` every option defaults to what the model's ``run.json`` recorded, so that an
    evaluation sees exactly the split held out at tuning time.
    """
    group = parser.add_argument_group(
        "data" + (" (default: as recorded in the model's run.json)" if recorded else "")
    )

    def default(key: str) -> Any:
        return None if recorded else DATA_DEFAULTS[key]

    group.add_argument(
        "--corpus",
        default=default("corpus"),
        help="built-in corpus (movies, tweets, amazon, nyt) or a CSV/TSV/JSONL file"
        + ("" if recorded else " (default: movies)"),
    )
    group.add_argument(
        "--text-column",
        default=default("text_column"),
        help="text column of a user file" + ("" if recorded else " (default: text)"),
    )
    group.add_argument(
        "--label-column",
        default=default("label_column"),
        help="label column of a user file" + ("" if recorded else " (default: label)"),
    )
    group.add_argument(
        "--split-seed",
        type=int,
        default=default("split_seed"),
        help="seed of the train/dev/test split; keep it fixed across commands",
    )
    group.add_argument("--max-train", type=int, default=None, help="cap the training split (stratified)")
    group.add_argument("--max-eval", type=int, default=None, help="cap the dev and test splits (stratified)")


class ExamplesFormatter(argparse.HelpFormatter):
    """Help formatter that wraps the description but keeps the epilog's lines (its example lines)."""

    def add_text(self, text: str | None) -> None:  # noqa: D102 - argparse's own method
        if text and text.startswith("examples:"):
            self._add_item(lambda t: t.rstrip("\n") + "\n", [text])
        else:
            super().add_text(text)


def add_command(
    subparsers: Any, name: str, *, help: str, description: str | None, epilog: str | None = None
) -> argparse.ArgumentParser:
    """Register sub-command ``name``; its description and epilog keep their line breaks."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_actions(
    parser: argparse.ArgumentParser, dest: str, metavar: str = "SUBCOMMAND", *, stderr: bool = False
) -> Any:
    """The sub-commands of ``parser`` (``fit``, ``predict`` ...); without one, print its help and exit 2.

    The help goes to standard output, or to standard error with ``stderr``.
    """
    actions = parser.add_subparsers(dest=dest, metavar=metavar)
    parser.set_defaults(func=lambda args: _help_and_fail(parser, stderr))
    return actions


def _help_and_fail(parser: argparse.ArgumentParser, stderr: bool) -> int:
    parser.print_help(sys.stderr if stderr else None)
    return 2


def add_threshold_args(
    parser: argparse.ArgumentParser, *, fixed_help: str, frr_help: str, fixed: str = "--threshold"
) -> None:
    """The threshold policy: a fixed threshold (``fixed``) or ``--target-frr``, not both (docs/design.md)."""
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument(fixed, type=float, default=None, help=fixed_help)
    policy.add_argument("--target-frr", type=float, default=None, help=frr_help)


def add_clean_args(parser: argparse.ArgumentParser) -> None:
    """``--clean`` and ``--max-clean``: the defender's clean texts, read by :func:`clean_texts`."""
    parser.add_argument(
        "--clean",
        default="dev",
        help="clean texts: 'dev' (the victim's recorded dev split), a corpus name or a file (default: dev)",
    )
    parser.add_argument(
        "--max-clean", type=int, default=500, help="use at most this many clean texts (default: 500)"
    )


def clean_texts(source: str, victim: str | None, max_clean: int, *, allow_empty: bool = False) -> list[str]:
    """The first ``max_clean`` clean texts of ``source``: ``dev`` (the split the victim's ``run.json``
    records as its dev split), a corpus name or a file (``--clean``); none is an error unless
    ``allow_empty``.
    """
    from peftshield.data.corpora import load_corpus
    from peftshield.tuning.trainer import RUN_FILE
    from peftshield.utils.io import read_json

    if max_clean < 1:
        raise PeftshieldError("--max-clean must be at least 1")
    if source == "dev":
        if victim is None:
            raise PeftshieldError(
                "--clean dev needs --victim (its run.json names the split); or give a corpus"
            )
        run_file = Path(victim) / RUN_FILE
        if not run_file.is_file():
            raise PeftshieldError(
                f"--clean dev reads the dev split a 'peftshield tune' victim records in its {RUN_FILE}; "
                f"{victim} has none: give --clean CORPUS|FILE"
            )
        run = read_json(run_file)
        data = run.get("data") if isinstance(run, dict) else None
        if not isinstance(data, dict):
            raise PeftshieldError(f"{run_file} records no data split; give --clean CORPUS|FILE")
        texts = [e.text for e in load_splits(data).dev]
    else:
        texts = [e.text for e in load_corpus(source, label_column=None)]
    if not texts and not allow_empty:
        raise PeftshieldError(f"no clean texts in {source}")
    return texts[:max_clean]


VICTIM_HELP = (
    "victim: a 'peftshield tune' folder, a peft adapter folder (LoRA, prompt, P-tuning; its head "
    "saved through modules_to_save) or a Hugging Face sequence-classification folder"
)


def add_victim_args(
    parser: argparse.ArgumentParser, *, required: bool = True, help: str = VICTIM_HELP
) -> None:
    """``--victim`` (any victim form, docs/design.md "The artifacts users bring") and ``--base``."""
    parser.add_argument("--victim", required=required, default=None, help=help)
    parser.add_argument(
        "--base",
        default=None,
        metavar="PATH",
        help="base model of a peft adapter victim (default: the adapter_config.json's "
        "base_model_name_or_path): a model folder, a registered name or a hub id",
    )


def add_backbone_args(parser: argparse.ArgumentParser) -> None:
    """``--backbone`` and ``--pooling`` (the output representation, docs/design.md)."""
    parser.add_argument(
        "--backbone",
        default="minilm",
        help="registered name (minilm), local model folder or hub id (default: minilm)",
    )
    parser.add_argument(
        "--pooling",
        choices=POOLING_CHOICES,
        default=None,
        help="output representation the head reads and attacks target (default: the backbone's own)",
    )


def add_output_args(
    parser: argparse.ArgumentParser, what: str = "value", out: str = "output folder (written atomically)"
) -> None:
    """``--out`` (help: ``out``), ``--overwrite``, ``--set KEY=VALUE`` and ``--config FILE.json``."""
    parser.add_argument("--out", required=True, help=out)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help=f"override a {what}")
    parser.add_argument("--config", metavar="FILE.json", help=f"{what} overrides as a JSON object")


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    """``--device``: where the models run (docs/design.md: a GPU is used when present)."""
    parser.add_argument(
        "--device",
        default="auto",
        choices=DEVICE_CHOICES,
        help="where the models run: auto uses a GPU when present, else the CPU (default: auto)",
    )


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--seed`` and ``--quiet``."""
    add_device_arg(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed for every random choice (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def data_settings(args: argparse.Namespace, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """The data options: those given on the command line over those ``recorded`` in a run.json."""
    settings = {**DATA_DEFAULTS, **(recorded or {})}
    for key in DATA_DEFAULTS:
        if getattr(args, key, None) is not None:
            settings[key] = getattr(args, key)
    return settings


def parse_overrides(pairs: list[str] | None, config_file: str | None = None) -> dict[str, Any]:
    """Merge ``--config FILE.json`` and ``--set key=value`` pairs (values parsed as JSON when they can be)."""
    from peftshield.utils.io import read_json

    merged: dict[str, Any] = {}
    if config_file:
        loaded = read_json(config_file)
        if not isinstance(loaded, dict):
            raise PeftshieldError(f"{config_file} must hold a JSON object")
        merged.update(loaded)
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise PeftshieldError(f"--set expects key=value, got {pair!r}")
        try:
            merged[key.strip().replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            merged[key.strip().replace("-", "_")] = raw
    return merged


def print_json(data: Any) -> None:
    """Print one JSON document on stdout (for ``--json``)."""
    print(json.dumps(data, indent=2, default=str))


def read_input_texts(source: str, fmt: str = "auto", text_column: str = "text") -> list[str]:
    """Input texts of ``guard predict`` and ``monitor predict``, read one way for both.

    ``source`` is ``-`` (standard input) or a file. With ``fmt`` ``auto`` a ``.csv`` / ``.tsv`` /
    ``.jsonl`` / ``.json`` file is parsed by its format and ``text_column`` is read; other files and
    stdin are JSON lines when the first line is a JSON object, else one text per line (blank lines
    skipped). ``lines`` and ``jsonl`` force the format. Bytes that are not UTF-8 are an error naming
    the line.
    """
    from peftshield.data.corpora import FILE_SUFFIXES, load_corpus

    if source == "-":
        raw = sys.stdin.buffer.read()
        name = "stdin"
    else:
        path = Path(source)
        if not path.is_file():
            raise PeftshieldError(f"input file not found: {source}")
        if fmt == "auto" and path.suffix.lower() in FILE_SUFFIXES:
            return [e.text for e in load_corpus(path, text_column=text_column, label_column=None)]
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise PeftshieldError(f"cannot read {source}: {err.strerror or err}") from None
        name = source
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PeftshieldError(f"{name}: line {line} is not valid UTF-8; save the input as UTF-8") from None
    lines = [(i, line) for i, line in enumerate(content.splitlines(), 1) if line.strip()]
    if not lines:
        raise PeftshieldError(f"{name}: no texts (the input is empty)")
    if fmt == "auto":
        fmt = "jsonl" if _is_json_object(lines[0][1]) else "lines"
    if fmt == "lines":
        return [line.strip() for _, line in lines]
    texts = []
    for lineno, line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise PeftshieldError(f"{name}: line {lineno} is not valid JSON: {err.msg}") from None
        if not isinstance(obj, dict) or text_column not in obj:
            raise PeftshieldError(f"{name}: line {lineno} has no {text_column!r} field")
        text = obj[text_column]
        if not isinstance(text, str) or not text.strip():
            raise PeftshieldError(f"{name}: line {lineno}: {text_column!r} must be a non-empty string")
        texts.append(text)
    return texts


def _is_json_object(line: str) -> bool:
    if not line.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def printable(text: str) -> str:
    """``text`` with control characters (ESC, NUL, tab, DEL, C1 ...) written as escapes (``\\x1b``),
    so that an input can never drive the terminal it is printed to."""
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def check_output_file(path: str) -> None:
    """Fail before any work if ``path`` cannot be written as an output file (a folder, say)."""
    target = Path(path)
    if target.is_dir():
        raise PeftshieldError(f"--output {path} is a folder; give a file name")
    if target.is_symlink() and not target.exists():
        raise PeftshieldError(
            f"--output {path} is a dangling symbolic link; remove it or choose another file"
        )


def method_keys_help(
    header: str = "config keys (--set KEY=VALUE, --config FILE.json), with their defaults:",
) -> str:
    """The ``--set KEY=VALUE`` keys of every fine-tuning method with their defaults, one method a
    line, for the epilog of the commands that tune (``tune``, ``psim fit``)."""
    import dataclasses
    import textwrap

    from peftshield.tuning.config import METHODS, own_methods

    lines = [header]
    for name in own_methods():
        cls = METHODS[name]
        pairs = []
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            pairs.append(f"{f.name}={json.dumps(default)}")
        lines += textwrap.wrap(
            ", ".join(pairs), width=100, initial_indent=f"  {name:<9}", subsequent_indent=" " * 11
        )
    return "\n".join(lines) + "\n"
