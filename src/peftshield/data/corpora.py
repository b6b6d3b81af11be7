"""Corpus registry, loading of built-in and user corpora, and deterministic splits.

Built-in corpora come from pinned PyPI artifacts (see :mod:`peftshield.data.fetch`):

- ``movies``, ``tweets``, ``amazon``, ``nyt``: the human-rated sentiment corpora of Hutto & Gilbert
  (ICWSM 2014) shipped in the ``vaderSentiment==3.3.2`` sdist. Each text carries the mean of about
  20 ratings in [-4, 4]; the binary label is the rating's sign (1 = positive). Texts whose rating
  is within ``min_abs_rating`` of zero (default 0.5, i.e. raters did not agree on a polarity) are
  dropped, and so is a rating of exactly zero at any margin.
- ``wiki``: unlabelled English sentences (label ``-1``) cleaned from the enwiki excerpt and
  ``lee_background.cor`` of the ``gensim==4.4.0`` wheel: a poisoning and PV-mining corpus.

User corpora: a ``.csv``, ``.tsv``, ``.jsonl``, ``.jsonlines`` or ``.json`` file with a text and a
label column, or ``hf:NAME[:SPLIT]`` / ``hf:NAME:CONFIG:SPLIT`` for a Hugging Face dataset (needs the
optional ``datasets`` library and a reachable hub). Every input mistake is a
:class:`~peftshield.errors.PeftshieldError` with a one-line message.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from peftshield.data import fetch as _fetch
from peftshield.data.records import Example, Splits, check_dense_labels
from peftshield.errors import PeftshieldError

#: Ratings closer to zero than this are ambiguous and dropped from the rated corpora.
DEFAULT_MIN_ABS_RATING = 0.5

SENTIMENT_LABELS = ("negative", "positive")


@dataclass(frozen=True)
class CorpusSpec:
    """A built-in corpus: where it comes from and what its labels mean.

    ``artifact`` names an entry of :data:`peftshield.data.fetch.ARTIFACTS`; ``fmt`` and ``member``
    say how to extract it (``"vader"`` with the ground-truth file stem, or ``"wiki"``).
    ``min_abs_rating`` applies to rated corpora only (``None`` otherwise); change it with
    ``dataclasses.replace(CORPORA["movies"], min_abs_rating=1.0)`` and pass the spec to
    :func:`load_corpus`. The cached extraction keeps every rating, so no refetch is needed.
    """

    name: str
    description: str
    artifact: str
    fmt: str
    member: str
    labelled: bool
    n_labels: int
    label_names: tuple[str, ...] = ()
    min_abs_rating: float | None = None

    def __post_init__(self) -> None:
        if self.artifact not in _fetch.ARTIFACTS:
            raise ValueError(f"corpus {self.name}: unknown artifact {self.artifact!r}")
        if self.labelled != (self.n_labels >= 2):
            raise ValueError(f"corpus {self.name}: a labelled corpus needs n_labels >= 2, unlabelled 0")
        if self.label_names and len(self.label_names) != self.n_labels:
            raise ValueError(f"corpus {self.name}: label_names must have n_labels entries")
        if self.min_abs_rating is not None and not (0.0 <= self.min_abs_rating < 4.0):
            raise ValueError(f"corpus {self.name}: min_abs_rating must be in [0, 4)")


def _vader(name: str, stem: str, what: str) -> CorpusSpec:
    return CorpusSpec(
        name=name,
        description=f"{what}; binary sentiment from human ratings (Hutto & Gilbert 2014)",
        artifact="vader",
        fmt="vader",
        member=stem,
        labelled=True,
        n_labels=2,
        label_names=SENTIMENT_LABELS,
        min_abs_rating=DEFAULT_MIN_ABS_RATING,
    )


CORPORA: dict[str, CorpusSpec] = {
    spec.name: spec
    for spec in (
        _vader("movies", "movieReviewSnippets", "Rotten Tomatoes movie review snippets (the source of SST)"),
        _vader("tweets", "tweets", "Tweets"),
        _vader("amazon", "amazonReviewSnippets", "Amazon product review snippets"),
        _vader("nyt", "nytEditorialSnippets", "New York Times editorial snippets"),
        CorpusSpec(
            name="wiki",
            description="Unlabelled English sentences: Wikipedia excerpt and Lee news corpus (gensim wheel)",
            artifact="gensim",
            fmt="wiki",
            member="wiki",
            labelled=False,
            n_labels=0,
        ),
    )
}

FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".jsonlines", ".json")


def list_corpora() -> list[CorpusSpec]:
    """The built-in corpora, in registry order."""
    return list(CORPORA.values())


def _unknown_corpus(name: str) -> PeftshieldError:
    return PeftshieldError(
        f"unknown corpus {name!r}; known: {', '.join(CORPORA)}; "
        f"or give a {'/'.join(FILE_SUFFIXES)} file or hf:NAME[:SPLIT]"
    )


def get_corpus_spec(name: str) -> CorpusSpec:
    """The registry entry for a built-in corpus name; unknown names list the known ones."""
    try:
        return CORPORA[name]
    except KeyError:
        raise _unknown_corpus(name) from None


# --------------------------------------------------------------------------------------------
# Built-in corpora


def _load_builtin(
    spec: CorpusSpec, *, fetch: bool, home: str | os.PathLike | None
) -> tuple[list[Example], list[str]]:
    path = _fetch.ensure_corpus_file(
        spec.name, artifact=spec.artifact, fmt=spec.fmt, member=spec.member, home=home, fetch=fetch
    )
    return _read_builtin(spec, path)


def _read_builtin(spec: CorpusSpec, path: Path) -> tuple[list[Example], list[str]]:
    examples = []
    for row in _fetch.read_jsonl_rows(path):
        meta = {k: v for k, v in row.items() if k not in ("text", "label")}
        meta["corpus"] = spec.name
        if spec.min_abs_rating is not None and "rating" in row:
            rating = float(row["rating"])
            if rating == 0.0 or abs(rating) < spec.min_abs_rating:
                continue
        examples.append(Example(text=row["text"], label=int(row["label"]), meta=meta))
    names = list(spec.label_names) or [str(i) for i in range(spec.n_labels)]
    return examples, names


def cached_corpus_size(name: str | CorpusSpec, *, home: str | os.PathLike | None = None) -> int | None:
    """Number of examples of a built-in corpus if it is already extracted, else ``None``.

    Reads the cache only: no download and no extraction.
    """
    spec = name if isinstance(name, CorpusSpec) else get_corpus_spec(name)
    path = _fetch.cached_corpus_file(spec.name, artifact=spec.artifact, home=home)
    if path is None:
        return None
    try:
        examples, _ = _read_builtin(spec, path)
    except (PeftshieldError, OSError, KeyError, TypeError, ValueError):
        return None  # a damaged cache shows as "not cached"; fetch --force rebuilds it
    return len(examples)


# --------------------------------------------------------------------------------------------
# User files

_INT_LIKE = re.compile(r"[+-]?\d+(?:\.0*)?")
_NUMBER_LIKE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity)", re.I)


def _decode_utf8(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PeftshieldError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{raw[err.start]:02x}); save the file as UTF-8"
        ) from None


def _read_table(
    text: str, path: Path, delimiter: str, columns: list[str]
) -> list[tuple[str, dict[str, Any]]]:
    # TSV is read without quote handling (as GLUE does): a text may start with a quote character.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=False)
    try:
        header = next(reader)
    except StopIteration:
        raise PeftshieldError(f"{path} is empty") from None
    except csv.Error as err:
        raise PeftshieldError(f"{path}: line 1 cannot be parsed: {err}") from None
    header = [h.strip() for h in header]
    for col in columns:
        if col not in header:
            raise PeftshieldError(f"{path}: no column {col!r} (columns: {', '.join(header)})")
    index = {col: header.index(col) for col in columns}
    rows = []
    try:
        for record in reader:
            where = f"line {reader.line_num}"
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line
            if len(record) < len(header):
                raise PeftshieldError(
                    f"{path}: {where} has {len(record)} fields, the header has {len(header)}"
                )
            rows.append((where, {col: record[i] for col, i in index.items()}))
    except csv.Error as err:
        raise PeftshieldError(f"{path}: line {reader.line_num} cannot be parsed: {err}") from None
    return rows


def _read_json_records(text: str, path: Path, columns: list[str]) -> list[tuple[str, dict[str, Any]]]:
    records: list[tuple[str, Any]] = []
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise PeftshieldError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
        records = [(f"record {i}", obj) for i, obj in enumerate(data, 1)]
    else:
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                records.append((f"line {lineno}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise PeftshieldError(f"{path}: line {lineno} is not valid JSON: {err.msg}") from None
    if not records:
        raise PeftshieldError(f"{path} is empty")
    rows = []
    for where, obj in records:
        if not isinstance(obj, dict):
            raise PeftshieldError(f"{path}: {where} is not a JSON object")
        for col in columns:
            if col not in obj:
                raise PeftshieldError(f"{path}: {where} has no field {col!r} (fields: {', '.join(obj)})")
        rows.append((where, {col: obj[col] for col in columns}))
    return rows


def _parse_label(value: Any, where: str) -> int | str:
    """An int for numeric labels, a str for class names; raise for anything else."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise PeftshieldError(f"missing label in {where}")
    if isinstance(value, bool):
        raise PeftshieldError(f"label {value!r} in {where} is not an integer or a class name")
    number: float | None = None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str):
        stripped = value.strip()
        if _INT_LIKE.fullmatch(stripped):
            number = float(stripped)
        elif _NUMBER_LIKE.fullmatch(stripped):
            raise PeftshieldError(f"label {stripped!r} in {where} is not an integer")
        else:
            return stripped
    else:
        raise PeftshieldError(f"label {value!r} in {where} is not an integer or a class name")
    if not math.isfinite(number) or number != int(number):
        raise PeftshieldError(f"label {value!r} in {where} is not an integer")
    if number < 0:
        raise PeftshieldError(
            f"label {value!r} in {where} is negative; labels are 0..K-1 or class names "
            "(load unlabelled text without a label column)"
        )
    return int(number)


def _build_examples(
    rows: Sequence[tuple[str, dict[str, Any]]],
    *,
    source: str,
    text_column: str,
    label_column: str | None,
    label_names: Sequence[str] | None = None,
) -> tuple[list[Example], list[str]]:
    """Validate raw rows and turn them into examples; ``label_names`` fixes names of int labels."""
    texts: list[str] = []
    raw_labels: list[int | str] = []
    for where, row in rows:
        text = row[text_column]
        if not isinstance(text, str):
            raise PeftshieldError(f"{source}: text in {where} is not a string ({type(text).__name__})")
        text = text.strip()
        if not text:
            raise PeftshieldError(f"{source}: empty text in {where}")
        texts.append(text)
        if label_column is not None:
            try:
                raw_labels.append(_parse_label(row[label_column], where))
            except PeftshieldError as err:
                raise PeftshieldError(f"{source}: {err}") from None
    if not texts:
        raise PeftshieldError(f"{source} has no rows")
    if label_column is None:
        return [Example(text=t, label=-1) for t in texts], []

    kinds = {type(lab) for lab in raw_labels}
    if len(kinds) > 1:
        first = next(i for i, lab in enumerate(raw_labels) if isinstance(lab, str))
        raise PeftshieldError(
            f"{source}: labels mix numbers and class names ({rows[first][0]}: {raw_labels[first]!r})"
        )
    if kinds == {str}:
        names = sorted(set(raw_labels), key=str)  # type: ignore[arg-type]
        mapping = {name: i for i, name in enumerate(names)}
        labels = [mapping[lab] for lab in raw_labels]  # type: ignore[index]
        examples = [
            Example(text=t, label=y, meta={"label_name": n})
            for t, y, n in zip(texts, labels, raw_labels, strict=True)
        ]
        names_out = [str(n) for n in names]
    else:
        labels = [int(lab) for lab in raw_labels]
        examples = [Example(text=t, label=y) for t, y in zip(texts, labels, strict=True)]
        # Named classes (a built-in corpus, a ClassLabel feature) are an explicit mapping.
        named = len(label_names) if label_names else None
        names_out = list(label_names) if named else []
    classes = sorted(set(labels))
    if len(classes) < 2:
        only = names_out[classes[0]] if classes[0] < len(names_out) else str(classes[0])
        raise PeftshieldError(
            f"{source}: every row has label {only!r}; a labelled corpus needs at least "
            "two classes (load it without a label column for unlabelled text)"
        )
    if kinds != {str}:
        n_labels = check_dense_labels(labels, source, named)
        names_out = names_out or [str(i) for i in range(n_labels)]
    return examples, names_out


def load_labelled_file(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
) -> tuple[list[Example], list[str]]:
    """Load a ``.csv``/``.tsv``/``.jsonl``/``.jsonlines``/``.json`` file of texts and labels.

    Labels are non-negative integers, or class names mapped to ``0..K-1`` in sorted order. Returns
    the examples and the label names (``label_names[i]`` names class ``i``; ``["0", "1", ...]``
    for integer labels). Each example of a named-label file keeps its name in
    ``meta["label_name"]``. With ``label_column=None`` the file is unlabelled text (label ``-1``)
    and the names are empty. A ``.json`` file is either one JSON array of objects or JSON lines;
    a ``.tsv`` file is read without quote handling.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise PeftshieldError(
            f"{path}: unsupported file type {suffix or '(none)'}; use {', '.join(FILE_SUFFIXES)}"
        )
    if not path.exists():
        raise PeftshieldError(f"file not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise PeftshieldError(f"cannot read {path}: {err.strerror or err}") from None
    text = _decode_utf8(raw, path)
    columns = [text_column] + ([label_column] if label_column is not None else [])
    if suffix in (".csv", ".tsv"):
        rows = _read_table(text, path, "\t" if suffix == ".tsv" else ",", columns)
    else:
        rows = _read_json_records(text, path, columns)
    return _build_examples(rows, source=str(path), text_column=text_column, label_column=label_column)


# --------------------------------------------------------------------------------------------
# Hugging Face datasets


def load_hf_dataset(
    source: str,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
) -> tuple[list[Example], list[str]]:
    """Load ``hf:NAME[:SPLIT]`` or ``hf:NAME:CONFIG:SPLIT`` (default split ``train``) with ``datasets``.

    Needs the optional ``datasets`` library and, for a hub name, a reachable hub (or a local
    cache); both are reported as one-line errors. ClassLabel features give the label names.
    """
    spec = source[3:] if source.startswith("hf:") else source
    parts = spec.split(":")
    if not parts[0] or len(parts) > 3:
        raise PeftshieldError(f"{source!r}: expected hf:NAME[:SPLIT] or hf:NAME:CONFIG:SPLIT")
    name = parts[0]
    config = parts[1] if len(parts) == 3 else None
    split = parts[-1] if len(parts) >= 2 else "train"
    try:
        import datasets  # optional dependency, imported only when asked for
    except ImportError:
        raise PeftshieldError(
            f"{source}: the Hugging Face `datasets` library is not installed "
            "(pip install 'peftshield[datasets]')"
        ) from None
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # the library raises many types: hub down, unknown name, bad split
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PeftshieldError(
            f"{source}: could not load the dataset (hub unreachable or unknown name/split?): {reason}"
        ) from None
    columns = list(dataset.column_names)
    for col in [text_column] + ([label_column] if label_column else []):
        if col not in columns:
            raise PeftshieldError(f"{source}: no column {col!r} (columns: {', '.join(columns)})")
    names = None
    if label_column:
        feature = dataset.features.get(label_column)
        names = list(getattr(feature, "names", None) or []) or None
    texts = dataset[text_column]
    labels = dataset[label_column] if label_column else [None] * len(texts)
    rows = [
        (f"row {i}", {text_column: t, **({label_column: y} if label_column else {})})
        for i, (t, y) in enumerate(zip(texts, labels, strict=True), 1)
    ]
    return _build_examples(
        rows, source=source, text_column=text_column, label_column=label_column, label_names=names
    )


# --------------------------------------------------------------------------------------------
# One entry point


def load_corpus_with_names(
    name_or_path: str | os.PathLike | CorpusSpec,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
    fetch: bool = True,
    home: str | os.PathLike | None = None,
) -> tuple[list[Example], list[str]]:
    """Like :func:`load_corpus`, also returning the label names (empty for unlabelled text)."""
    if isinstance(name_or_path, CorpusSpec):
        return _load_builtin(name_or_path, fetch=fetch, home=home)
    source = os.fspath(name_or_path)
    if source in CORPORA:
        return _load_builtin(CORPORA[source], fetch=fetch, home=home)
    if source.startswith("hf:"):
        return load_hf_dataset(source, text_column=text_column, label_column=label_column)
    path = Path(source)
    if path.suffix.lower() in FILE_SUFFIXES or path.exists():
        return load_labelled_file(path, text_column=text_column, label_column=label_column)
    if os.sep in source or "/" in source:
        raise PeftshieldError(f"file not found: {source}")
    raise _unknown_corpus(source)


def load_corpus(
    name_or_path: str | os.PathLike | CorpusSpec,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
    fetch: bool = True,
    home: str | os.PathLike | None = None,
) -> list[Example]:
    """Load a built-in corpus (name or :class:`CorpusSpec`), a user file or ``hf:NAME[:SPLIT]``.

    Built-in corpora are fetched and extracted on first use unless ``fetch=False`` (then a missing
    cache is an error); ``home`` overrides the cache root. ``text_column`` and ``label_column``
    apply to files and Hugging Face datasets; ``label_column=None`` loads unlabelled text.
    """
    examples, _ = load_corpus_with_names(
        name_or_path, text_column=text_column, label_column=label_column, fetch=fetch, home=home
    )
    return examples


def label_counts(examples: Sequence[Example]) -> dict[int, int]:
    """Number of examples per label, sorted by label."""
    return dict(sorted(Counter(e.label for e in examples).items()))


# --------------------------------------------------------------------------------------------
# Splits


def _round_half_up(x: float) -> int:
    # Python's round() rounds half to even, which would make split sizes depend on parity.
    return int(math.floor(x + 0.5))


def _strata(labels: np.ndarray) -> list[np.ndarray]:
    if np.all(labels < 0):
        return [np.arange(len(labels))]
    return [np.flatnonzero(labels == lab) for lab in np.unique(labels)]


def _stratified_cap(order: np.ndarray, labels: np.ndarray, k: int | None) -> np.ndarray:
    """Keep ``k`` of ``order`` with label shares preserved (largest remainders), in the same order.

    Taking the first items of each class makes caps nested: a smaller cap is a subset of a larger.
    """
    if k is None or k >= len(order):
        return order
    split_labels = labels[order]
    groups = _strata(split_labels)
    quotas = [k * len(g) / len(order) for g in groups]
    counts = [int(math.floor(q)) for q in quotas]
    # Hand out the remaining slots by largest remainder; ties go to the lower label (stable sort).
    by_remainder = sorted(range(len(groups)), key=lambda i: -(quotas[i] - counts[i]))
    for i in by_remainder[: k - sum(counts)]:
        counts[i] += 1
    keep = np.zeros(len(order), dtype=bool)
    for group, count in zip(groups, counts, strict=True):
        keep[group[:count]] = True
    return order[keep]


def split_examples(
    examples: Sequence[Example],
    *,
    seed: int = 0,
    dev_fraction: float = 0.1,
    test_fraction: float = 0.2,
    max_train: int | None = None,
    max_eval: int | None = None,
) -> Splits:
    """Split into train / dev / test, stratified by label and reproducible from ``seed``.

    Each class is shuffled with a ``numpy`` Generator seeded by ``seed`` and cut into
    ``round(test_fraction * n)`` test, ``round(dev_fraction * n)`` dev and the rest train items, so
    each split's class counts are within one example of the exact proportions. Unlabelled data
    (all labels negative) is split as one group. Each split is then shuffled once more so that
    classes interleave; the order is a pure function of the input and ``seed``.

    ``max_train`` caps the train split and ``max_eval`` each of dev and test, by stratified
    subsampling after the split, so the dev and test sets never depend on ``max_train`` and a
    smaller cap is a subset of a larger one.
    """
    if not examples:
        raise PeftshieldError("cannot split an empty corpus")
    for name, frac in (("dev_fraction", dev_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise PeftshieldError(f"{name} must be in [0, 1), got {frac}")
    if dev_fraction + test_fraction >= 1.0:
        total = dev_fraction + test_fraction
        raise PeftshieldError(f"dev_fraction + test_fraction must be below 1, got {total}")
    for name, cap in (("max_train", max_train), ("max_eval", max_eval)):
        if cap is not None and cap < 1:
            raise PeftshieldError(f"{name} must be at least 1, got {cap}")

    rng = np.random.default_rng(seed)
    labels = np.fromiter((e.label for e in examples), dtype=np.int64, count=len(examples))
    parts: dict[str, list[np.ndarray]] = {"train": [], "dev": [], "test": []}
    for group in _strata(labels):
        perm = group[rng.permutation(len(group))]
        n_test = min(_round_half_up(test_fraction * len(group)), len(group))
        n_dev = min(_round_half_up(dev_fraction * len(group)), len(group) - n_test)
        parts["test"].append(perm[:n_test])
        parts["dev"].append(perm[n_test : n_test + n_dev])
        parts["train"].append(perm[n_test + n_dev :])
    orders: dict[str, np.ndarray] = {}
    for split in ("train", "dev", "test"):
        joined = np.concatenate(parts[split]) if parts[split] else np.empty(0, dtype=np.int64)
        orders[split] = joined[rng.permutation(len(joined))]
    orders["train"] = _stratified_cap(orders["train"], labels, max_train)
    orders["dev"] = _stratified_cap(orders["dev"], labels, max_eval)
    orders["test"] = _stratified_cap(orders["test"], labels, max_eval)
    return Splits(
        train=[examples[i] for i in orders["train"]],
        dev=[examples[i] for i in orders["dev"]],
        test=[examples[i] for i in orders["test"]],
    )


def load_splits(settings: dict[str, Any]) -> Splits:
    """Load a corpus and split it deterministically (train / dev / test) according to ``settings``.

    ``settings``: ``corpus`` (a built-in name or a CSV/TSV/JSONL file), ``text_column``,
    ``label_column``, ``split_seed`` (default 0), ``max_train`` and ``max_eval`` (stratified caps,
    default none). The same settings give the same splits (docs/design.md: every random choice
    takes a seed); an unlabelled corpus is refused.
    """
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
