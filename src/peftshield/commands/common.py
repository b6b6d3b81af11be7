"""Argument groups and helpers shared by several sub-commands."""

from __future__ import annotations

import argparse
import json
from typing import Any

from peftshield.data.records import Splits
from peftshield.errors import PeftshieldError
from peftshield.models.pooling import POOLING_CHOICES
from peftshield.utils.device import DEVICE_CHOICES

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
    group.add_argument("--text-column", default=default("text_column"), help="text column of a user file")
    group.add_argument("--label-column", default=default("label_column"), help="label column of a user file")
    group.add_argument(
        "--split-seed",
        type=int,
        default=default("split_seed"),
        help="seed of the train/dev/test split; keep it fixed across commands",
    )
    group.add_argument("--max-train", type=int, default=None, help="cap the training split (stratified)")
    group.add_argument("--max-eval", type=int, default=None, help="cap the dev and test splits (stratified)")


def add_backbone_args(parser: argparse.ArgumentParser) -> None:
    """``--backbone`` and ``--pooling`` (the output representation, DESIGN.md)."""
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


def add_output_args(parser: argparse.ArgumentParser, what: str = "value") -> None:
    """``--out``, ``--overwrite``, ``--set KEY=VALUE`` and ``--config FILE.json``."""
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help=f"override a {what}")
    parser.add_argument("--config", metavar="FILE.json", help=f"{what} overrides as a JSON object")


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--seed`` and ``--quiet``."""
    parser.add_argument(
        "--device",
        default="auto",
        choices=DEVICE_CHOICES,
        help="auto uses a GPU when present (default: auto)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for every random choice (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def data_settings(args: argparse.Namespace, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """The data options: those given on the command line over those ``recorded`` in a run.json."""
    settings = {**DATA_DEFAULTS, **(recorded or {})}
    for key in DATA_DEFAULTS:
        if getattr(args, key, None) is not None:
            settings[key] = getattr(args, key)
    return settings


def load_splits(settings: dict[str, Any]) -> Splits:
    """Load a corpus and split it deterministically according to ``settings``."""
    from peftshield.data.corpora import load_corpus, split_examples

    for key in ("max_train", "max_eval"):
        if settings.get(key) is not None and settings[key] < 1:
            raise PeftshieldError(f"--{key.replace('_', '-')} must be at least 1")
    examples = load_corpus(
        settings["corpus"],
        text_column=settings.get("text_column", "text"),
        label_column=settings.get("label_column", "label"),
    )
    if any(e.label < 0 for e in examples):
        raise PeftshieldError(f"corpus {settings['corpus']!r} is unlabelled; a classifier needs labels")
    return split_examples(
        examples,
        seed=settings.get("split_seed", 0),
        max_train=settings.get("max_train"),
        max_eval=settings.get("max_eval"),
    )


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
