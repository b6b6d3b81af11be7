"""Corpora: fetching (faked pip), extraction of the real formats, user files, validation, splits."""

from __future__ import annotations

import argparse
import bz2
import dataclasses
import hashlib
import io
import json
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from peftshield.data import corpora, fetch
from peftshield.data.corpora import (
    CORPORA,
    CorpusSpec,
    list_corpora,
    load_corpus,
    load_corpus_with_names,
    load_labelled_file,
    split_examples,
)
from peftshield.data.records import Example
from peftshield.errors import PeftshieldError

# ------------------------------------------------------------------------------------------
# fixtures in the real formats

VADER_LINES = [
    ("1", "2.266666667", "The Rock is destined to be the 21st Century's new ''Conan''."),
    ("2", "-1.8125", "Her fans walked out muttering words like horrible and terrible."),
    ("3", "0.2", "Execute like lightning not like wind"),  # near zero: dropped
    ("4", "-0.5", "It is fine I suppose"),  # exactly at the margin: kept
    ("5", "0", "A flat statement"),  # zero: dropped at any margin
    ("6", "3.1", "Gorgeous and\ttouching"),  # a tab inside the text stays in the text
]
VADER_TEXT = "\r\n".join("\t".join(row) for row in VADER_LINES)  # CRLF, no final newline

WIKI_XML = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">
  <siteinfo><sitename>Wikipedia</sitename></siteinfo>
  <page>
    <title>AccessibleComputing</title><ns>0</ns><id>10</id>
    <redirect title="Computer accessibility" />
    <revision><text xml:space="preserve">#REDIRECT [[Computer accessibility]] and many more words here.
    </text></revision>
  </page>
  <page>
    <title>Talk:Anarchism</title><ns>1</ns><id>11</id>
    <revision><text>This talk page sentence has more than six words in it.</text></revision>
  </page>
  <page>
    <title>Anarchism</title><ns>0</ns><id>12</id>
    <revision><text xml:space="preserve">{{Redirect2|Anarchist|Anarchists|the fictional character}}
{{Use British English|date=January 2014}}
'''Anarchism''' is a [[political philosophy]] that advocates [[self-governance|self-governed]] \
societies based on voluntary institutions.&lt;ref&gt;George Woodcock. {{cite book|title=Anarchism}}\
&lt;/ref&gt; These are often described as [[stateless society|stateless societies]].&lt;ref name="x"/&gt;
[[File:Paris Commune.jpg|thumb|The [[Paris Commune]] was celebrated by anarchists.]]
== History ==
* A list item that has quite enough words to pass the filter.
{| class="wikitable"
|-
| A table cell that also has quite enough words to pass.
|}
The word comes from the ancient Greek {{lang|grc|anarchia}} and was first used by \
[http://example.org Proudhon] in 1840.
Dr. Smith wrote that the U.S. government was not amused by any of this at all.
Too short here.
&lt;!-- A hidden comment that has many words but must never appear. --&gt;
[[Category:Political culture]]
[[de:Anarchismus]]</text></revision>
  </page>
</mediawiki>
"""


def _make_vader_sdist(path: Path, text: str = VADER_TEXT) -> None:
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for stem in ("movieReviewSnippets", "tweets", "amazonReviewSnippets", "nytEditorialSnippets"):
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"hutto_ICWSM_2014/{stem}_GroundTruth.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path, "w:gz") as tar:
        data = inner.getvalue()
        info = tarfile.TarInfo("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _make_gensim_wheel(path: Path) -> None:
    lee = (
        "Hundreds of people have been forced to vacate their homes in the Southern Highlands. "
        "A new blaze near Goulburn has forced the closure of the Hume Highway.\n"
        "Mr. Sharon said the talks were over for now and would not resume soon.\n"
    )
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(fetch._WIKI_MEMBER, bz2.compress(WIKI_XML.encode("utf-8")))
        zf.writestr(fetch._LEE_MEMBER, lee)


@pytest.fixture()
def fake_registry(tmp_path, monkeypatch):
    """Artifacts built in tmp_path, pinned to their own hashes, served by a fake pip."""
    built = tmp_path / "built"
    built.mkdir()
    _make_vader_sdist(built / fetch.ARTIFACTS["vader"].filename)
    _make_gensim_wheel(built / fetch.ARTIFACTS["gensim"].filename)
    artifacts = {
        key: dataclasses.replace(spec, sha256=fetch.sha256_file(built / spec.filename))
        for key, spec in fetch.ARTIFACTS.items()
    }
    monkeypatch.setattr(fetch, "ARTIFACTS", artifacts)
    calls: list[list[str]] = []

    def fake_pip(args: list[str], dest: Path) -> None:
        calls.append(args)
        spec = next(s for s in artifacts.values() if s.requirement in args)
        (dest / spec.filename).write_bytes((built / spec.filename).read_bytes())

    monkeypatch.setattr(fetch, "_pip_download", fake_pip)
    home = tmp_path / "home"
    monkeypatch.setenv("PEFTSHIELD_HOME", str(home))
    return {"home": home, "calls": calls, "built": built, "artifacts": artifacts}


# ------------------------------------------------------------------------------------------
# fetch


def test_home_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTSHIELD_HOME", str(tmp_path))
    assert fetch.peftshield_home() == tmp_path
    monkeypatch.delenv("PEFTSHIELD_HOME")
    assert fetch.peftshield_home() == Path.home() / ".cache" / "peftshield"


def test_pinned_artifacts_use_explicit_flags():
    vader, gensim = fetch.ARTIFACTS["vader"], fetch.ARTIFACTS["gensim"]
    assert "--no-binary" in vader.pip_args and "vaderSentiment==3.3.2" in vader.pip_args
    for flag in ("--only-binary", "--python-version", "--implementation", "--abi", "--platform"):
        assert flag in gensim.pip_args


def test_fetch_artifact_downloads_once(fake_registry):
    path = fetch.fetch_artifact("vader")
    assert path == fake_registry["home"] / "downloads" / fetch.ARTIFACTS["vader"].filename
    assert fetch.sha256_file(path) == fetch.ARTIFACTS["vader"].sha256
    assert fetch.fetch_artifact("vader") == path
    assert len(fake_registry["calls"]) == 1  # second call found the verified file
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp folder left


def test_fetch_artifact_hash_mismatch_deletes_file(fake_registry, monkeypatch):
    bad = dataclasses.replace(fetch.ARTIFACTS["vader"], sha256="0" * 64)
    with pytest.raises(PeftshieldError, match="sha256 mismatch.*deleted"):
        fetch.fetch_artifact(bad)
    assert list((fake_registry["home"] / "downloads").iterdir()) == []


def test_fetch_artifact_replaces_corrupt_cached_file(fake_registry):
    target = fake_registry["home"] / "downloads" / fetch.ARTIFACTS["vader"].filename
    target.parent.mkdir(parents=True)
    target.write_bytes(b"truncated")
    path = fetch.fetch_artifact("vader")
    assert fetch.sha256_file(path) == fetch.ARTIFACTS["vader"].sha256
    assert len(fake_registry["calls"]) == 1


def test_fetch_artifact_offline(fake_registry):
    with pytest.raises(PeftshieldError, match="not in the cache"):
        fetch.fetch_artifact("vader", fetch=False)
    assert fake_registry["calls"] == []


def test_pip_failure_is_one_line(tmp_path, monkeypatch):
    class Proc:
        returncode = 1
        stdout = ""
        stderr = "Looking in indexes...\nERROR: Could not find a version that satisfies the requirement x\n"

    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: Proc())
    with pytest.raises(PeftshieldError) as info:
        fetch.fetch_artifact("vader", home=tmp_path)
    assert "\n" not in str(info.value)
    assert "Could not find a version" in str(info.value)
    assert list((tmp_path / "downloads").iterdir()) == []


def test_sha256_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert fetch.sha256_file(path) == hashlib.sha256(b"abc").hexdigest()


# ------------------------------------------------------------------------------------------
# real formats


def test_parse_vader_ground_truth():
    rows = fetch.parse_vader_ground_truth(VADER_TEXT)
    assert [r["id"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert [r["label"] for r in rows] == [1, 0, 1, 0, 0, 1]
    assert rows[1]["rating"] == -1.8125
    assert rows[0]["text"].endswith("''Conan''.")  # no stray \r
    assert rows[5]["text"] == "Gorgeous and touching"


def test_parse_vader_rejects_malformed_line():
    with pytest.raises(PeftshieldError, match="line 2"):
        fetch.parse_vader_ground_truth("1\t1.0\tok\r\nbroken line\r\n")


def test_strip_wiki_markup():
    text = fetch.strip_wiki_markup(
        "{{Infobox|a={{nested|x}}}}'''Bold''' is a [[political philosophy]] of [[self-governance|self-rule]]"
        '<ref>cite</ref> and [http://x.org Proudhon].<ref name="a"/>\n'
        "== Heading ==\n* list item\n[[File:X.jpg|thumb|A [[caption]] here.]]\n"
        '{| class="wikitable"\n| cell\n|}\n&lt;b&gt;html&lt;/b&gt; <span>kept</span> text &amp; more.'
    )
    assert text.split("\n") == [
        "Bold is a political philosophy of self-rule and Proudhon.",
        "<b>html</b> kept text & more.",
    ]


def test_wiki_sentences_from_xml():
    sentences = list(fetch.wiki_sentences_from_xml(io.BytesIO(WIKI_XML.encode("utf-8"))))
    assert sentences == [
        "Anarchism is a political philosophy that advocates self-governed societies based on voluntary "
        "institutions.",
        "These are often described as stateless societies.",
        "The word comes from the ancient Greek and was first used by Proudhon in 1840.",
        "Dr. Smith wrote that the U.S. government was not amused by any of this at all.",
    ]


def test_split_sentences_and_prose_filter():
    parts = fetch.split_sentences("Mr. J. Smith arrived at 4 p.m. today. He left! Did he? Yes, e.g. now.")
    assert parts == ["Mr. J. Smith arrived at 4 p.m. today.", "He left!", "Did he?", "Yes, e.g. now."]
    assert fetch.is_prose("The cat sat on the warm mat today.")
    assert not fetch.is_prose("Too short to keep.")
    assert not fetch.is_prose("the sentence starts with a lower case letter here.")
    assert not fetch.is_prose("A sentence that has leftover {{markup}} inside it here.")
    assert not fetch.is_prose("The vowel is written as,, or in these six languages.")
    assert not fetch.is_prose("A sentence without any final punctuation at all here")


# ------------------------------------------------------------------------------------------
# built-in corpora through the cache


def test_builtin_corpora_from_fake_artifacts(fake_registry):
    movies = load_corpus("movies")
    assert [e.meta["id"] for e in movies] == ["1", "2", "4", "6"]  # 0.2 and 0 dropped, -0.5 kept
    assert [e.label for e in movies] == [1, 0, 0, 1]
    assert movies[0].meta["corpus"] == "movies"
    cache = fake_registry["home"] / "corpora"
    assert (cache / "movies.jsonl").is_file() and (cache / "movies.meta.json").is_file()
    first = json.loads((cache / "movies.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert set(first) >= {"text", "label"}

    strict = dataclasses.replace(CORPORA["movies"], min_abs_rating=2.0)
    assert [e.meta["id"] for e in load_corpus(strict)] == ["1", "6"]

    wiki = load_corpus("wiki")
    assert all(e.label == -1 for e in wiki)
    sources = Counter(e.meta["source"] for e in wiki)
    assert sources == {"enwiki": 4, "lee_background": 3}
    assert len(fake_registry["calls"]) == 2  # one download per artifact

    # Later loads read the cache only; an offline load still works.
    (cache / "movies.jsonl").write_text('{"text": "cached only", "label": 1, "rating": 3.0}\n')
    assert [e.text for e in load_corpus("movies", fetch=False)] == ["cached only"]
    assert corpora.cached_corpus_size("movies") == 1
    assert corpora.cached_corpus_size("tweets") is None  # artifact present, but not extracted yet


def test_builtin_corpus_not_fetched(tmp_path):
    with pytest.raises(PeftshieldError, match="not fetched yet.*peftshield data fetch movies"):
        load_corpus("movies", fetch=False, home=tmp_path)
    assert corpora.cached_corpus_size("movies", home=tmp_path) is None


def test_stale_cache_is_rebuilt(fake_registry):
    load_corpus("movies")
    meta_path = fake_registry["home"] / "corpora" / "movies.meta.json"
    meta = json.loads(meta_path.read_text())
    meta["extractor_version"] = -1
    meta_path.write_text(json.dumps(meta))
    (fake_registry["home"] / "corpora" / "movies.jsonl").write_text('{"text": "old", "label": 1}\n')
    assert len(load_corpus("movies")) == 4


def test_registry():
    assert list(CORPORA) == ["movies", "tweets", "amazon", "nyt", "wiki"]
    assert list_corpora()[0] is CORPORA["movies"]
    assert CORPORA["movies"].labelled and CORPORA["movies"].n_labels == 2
    assert CORPORA["movies"].min_abs_rating == corpora.DEFAULT_MIN_ABS_RATING == 0.5
    assert not CORPORA["wiki"].labelled and CORPORA["wiki"].n_labels == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        CORPORA["movies"].name = "x"  # type: ignore[misc]
    with pytest.raises(ValueError):
        CorpusSpec("x", "d", artifact="vader", fmt="vader", member="m", labelled=True, n_labels=1)


def test_unknown_corpus_lists_known():
    known = "unknown corpus 'imdb'; known: movies, tweets, amazon, nyt, wiki;"
    with pytest.raises(PeftshieldError, match=known):
        load_corpus("imdb")


# ------------------------------------------------------------------------------------------
# user files


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_string_labels(tmp_path):
    content = 'id,review,sentiment\n1,"good, very good",pos\n2,bad,neg\n3,"ok ""fine""",pos\n'
    path = _write(tmp_path / "d.csv", content)
    examples, names = load_labelled_file(path, text_column="review", label_column="sentiment")
    assert names == ["neg", "pos"]
    assert [(e.text, e.label) for e in examples] == [("good, very good", 1), ("bad", 0), ('ok "fine"', 1)]
    assert examples[0].meta["label_name"] == "pos"
    assert load_corpus(path, text_column="review", label_column="sentiment") == examples


def test_tsv_keeps_quotes(tmp_path):
    path = _write(tmp_path / "d.tsv", 'sentence\tlabel\n"quoted start and more\t1\nplain\t0\n')
    examples, names = load_labelled_file(path, text_column="sentence")
    assert [e.text for e in examples] == ['"quoted start and more', "plain"]
    assert names == ["0", "1"]


def test_jsonl_and_json_array(tmp_path):
    rows = [{"text": "a b", "label": 0}, {"text": "c d", "label": 2.0}, {"text": "e", "label": "1"}]
    jl = _write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    arr = _write(tmp_path / "d.json", json.dumps(rows))
    lines_json = _write(tmp_path / "l.json", "\n".join(json.dumps(r) for r in rows))
    for path in (jl, arr, lines_json):
        examples, names = load_labelled_file(path)
        assert [e.label for e in examples] == [0, 2, 1]
        assert names == ["0", "1", "2"]


def test_unlabelled_user_file(tmp_path):
    path = _write(tmp_path / "u.jsonl", '{"text": "one line"}\n{"text": "two lines"}\n')
    examples, names = load_labelled_file(path, label_column=None)
    assert [e.label for e in examples] == [-1, -1] and names == []


def test_load_corpus_with_names_builtin(fake_registry):
    examples, names = load_corpus_with_names("movies")
    assert names == ["negative", "positive"] and len(examples) == 4


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "message"),
    [
        ("d.csv", b"text,label\nfine,1\n\xff\xfebad,0\n", {}, r"line 3 is not valid UTF-8"),
        ("d.csv", b"body,label\nx,1\n", {}, r"no column 'text' \(columns: body, label\)"),
        ("d.csv", b"text,label\nx,1\n", {"label_column": "y"}, r"no column 'y'"),
        ("d.jsonl", b'{"text": "x", "label": 1}\n{"label": 0}\n', {}, r"line 2 has no field 'text'"),
        ("d.csv", b"text,label\nx,1\n  ,0\n", {}, r"empty text in line 3"),
        ("d.jsonl", b'{"text": "x", "label": 1}\n{"text": "", "label": 0}\n', {}, r"empty text in line 2"),
        ("d.csv", b"text,label\nx,1\ny,1\n", {}, r"every row has label '1'.*at least two classes"),
        ("d.csv", b"text,label\nx,pos\ny,pos\n", {}, r"every row has label 'pos'"),
        ("d.csv", b"text,label\nx,1\ny,-1\n", {}, r"label '-1' in line 3 is negative"),
        ("d.csv", b"text,label\nx,1\ny,0.5\n", {}, r"label '0.5' in line 3 is not an integer"),
        ("d.jsonl", b'{"text": "x", "label": 1}\n{"text": "y", "label": 1.5}\n', {}, r"1.5 in line 2 is not"),
        ("d.jsonl", b'{"text": "x", "label": true}\n{"text": "y", "label": 0}\n', {}, r"not an integer"),
        ("d.csv", b"text,label\nx,1\ny,pos\n", {}, r"labels mix numbers and class names \(line 3: 'pos'\)"),
        ("d.csv", b"text,label\nx,1\ny,\n", {}, r"missing label in line 3"),
        ("d.csv", b"text,label\nx\n", {}, r"line 2 has 1 fields"),
        ("d.csv", b"", {}, r"is empty"),
        ("d.jsonl", b'{"text": "x", "label": 1}\nnot json\n', {}, r"line 2 is not valid JSON"),
        ("d.json", b'[{"text": "x", "label": 1},', {}, r"invalid JSON"),
        ("d.jsonl", b'["x", 1]\n', {}, r"line 1 is not a JSON object"),
        ("d.txt", b"text,label\n", {}, r"unsupported file type \.txt"),
    ],
)
def test_bad_user_files(tmp_path, name, content, kwargs, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(PeftshieldError, match=message) as info:
        load_corpus(path, **kwargs)
    assert "\n" not in str(info.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(PeftshieldError, match="file not found"):
        load_corpus(tmp_path / "nope.csv")
    with pytest.raises(PeftshieldError, match="file not found"):
        load_corpus(str(tmp_path / "sub" / "nope"))
    folder = tmp_path / "dir.csv"
    folder.mkdir()
    with pytest.raises(PeftshieldError, match="cannot read"):
        load_corpus(folder)


def test_hf_without_datasets(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(PeftshieldError, match="`datasets` library is not installed"):
        load_corpus("hf:glue:sst2:train")
    with pytest.raises(PeftshieldError, match="expected hf:NAME"):
        load_corpus("hf:")


def test_hf_unreachable_hub(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("datasets")

    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'x' on the Hub\nmore detail")

    fake.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(PeftshieldError, match="hub unreachable.*Couldn't reach") as info:
        load_corpus("hf:x:validation")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------
# splits


def _corpus(counts: dict[int, int]) -> list[Example]:
    examples = []
    for label, n in counts.items():
        examples.extend(Example(text=f"text {label} {i}", label=label) for i in range(n))
    return examples


def test_split_deterministic_and_stratified():
    examples = _corpus({0: 503, 1: 211, 2: 57})
    a = split_examples(examples, seed=3)
    b = split_examples(list(examples), seed=3)
    assert a == b
    assert split_examples(examples, seed=4).test != a.test
    all_texts = [e.text for split in (a.train, a.dev, a.test) for e in split]
    assert sorted(all_texts) == sorted(e.text for e in examples)  # a partition
    totals = Counter(e.label for e in examples)
    for split, frac in ((a.train, 0.7), (a.dev, 0.1), (a.test, 0.2)):
        got = Counter(e.label for e in split)
        for label, n in totals.items():
            assert abs(got[label] - frac * n) <= 1, (label, got[label], frac * n)
    assert len({e.label for e in a.train[:20]}) > 1  # classes interleave


def test_split_caps_stratified_and_nested():
    examples = _corpus({0: 600, 1: 300})
    full = split_examples(examples, seed=0)
    capped = split_examples(examples, seed=0, max_train=90, max_eval=30)
    assert capped.sizes() == {"train": 90, "dev": 30, "test": 30}
    assert Counter(e.label for e in capped.train) == {0: 60, 1: 30}
    assert Counter(e.label for e in capped.test) == {0: 20, 1: 10}
    assert set(map(id, capped.test)) <= set(map(id, full.test))
    smaller = split_examples(examples, seed=0, max_train=45)
    assert set(map(id, smaller.train)) <= set(map(id, capped.train))
    assert smaller.test == full.test  # eval splits do not depend on max_train
    assert split_examples(examples, seed=0, max_train=10**6) == full


def test_split_unlabelled_and_fractions():
    examples = [Example(text=f"s{i}") for i in range(100)]
    splits = split_examples(examples, seed=1, dev_fraction=0.05, test_fraction=0.25)
    assert splits.sizes() == {"train": 70, "dev": 5, "test": 25}
    tiny = split_examples(_corpus({0: 1, 1: 2}), seed=0)
    assert sum(tiny.sizes().values()) == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dev_fraction": -0.1},
        {"test_fraction": 1.0},
        {"dev_fraction": 0.5, "test_fraction": 0.5},
        {"max_train": 0},
        {"max_eval": 0},
    ],
)
def test_split_rejects_bad_arguments(kwargs):
    with pytest.raises(PeftshieldError):
        split_examples(_corpus({0: 5, 1: 5}), **kwargs)
    with pytest.raises(PeftshieldError, match="empty"):
        split_examples([])


# ------------------------------------------------------------------------------------------
# command line


def _parse(argv: list[str]) -> argparse.Namespace:
    from peftshield.commands import data as data_command

    parser = argparse.ArgumentParser(prog="peftshield")
    data_command.add_parser(parser.add_subparsers())
    return parser.parse_args(argv)


def test_cli_fetch_list_show(fake_registry, capsys, tmp_path):
    args = _parse(["data", "fetch", "movies", "wiki"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "[1/2] movies" in out and "4 examples" in out and "7 examples" in out

    args = _parse(["data", "list"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    movies_line = next(line for line in lines if line.startswith("movies"))
    assert " 4 " in movies_line and "yes" in movies_line
    assert " - " in next(line for line in lines if line.startswith("nyt"))

    args = _parse(["data", "show", "movies", "--n", "2", "--split", "train"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "movies: 4 examples" in out and "1 (positive): 2" in out

    path = _write(tmp_path / "u.csv", "text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(20)))
    args = _parse(["data", "show", str(path), "--split", "test", "--seed", "2"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "1 (b): 10" in out and "test 4" in out

    args = _parse(["data", "fetch", "imdb"])
    with pytest.raises(PeftshieldError, match="unknown corpus"):
        args.func(args)
    assert fake_registry["calls"] == [
        list(fake_registry["artifacts"]["vader"].pip_args),
        list(fake_registry["artifacts"]["gensim"].pip_args),
    ]


# ------------------------------------------------------------------------------------------
# real download (network; minutes at most)


@pytest.mark.slow
def test_real_fetch_movies_and_wiki(tmp_path):
    movies = load_corpus("movies", home=tmp_path)
    assert 9_500 <= len(movies) <= 10_605
    counts = Counter(e.label for e in movies)
    assert 0.4 <= counts[1] / len(movies) <= 0.6
    wiki = load_corpus("wiki", home=tmp_path)
    assert 15_000 <= len(wiki) <= 30_000
    words = sum(len(e.text.split()) for e in wiki)
    assert 300_000 <= words <= 600_000
    assert all(e.label == -1 for e in wiki)
