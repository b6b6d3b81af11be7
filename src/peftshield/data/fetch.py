"""Fetch pinned PyPI artifacts into a cache and extract our corpora from them.

No model or dataset hub is reachable at run time (docs/design.md, "Facts of this machine"), but a
package registry is: the labelled sentiment corpora ship inside the ``vaderSentiment`` source
distribution and the unlabelled English text inside the ``gensim`` wheel. Each artifact is
downloaded with ``pip download --no-deps`` (the user's pip configuration, index and proxy apply),
checked against a pinned sha256 and kept under ``<home>/downloads``. Each corpus is then extracted
once into ``<home>/corpora/<name>.jsonl`` (one ``{"text": ..., "label": ...}`` object per line,
plus provenance fields) with a sidecar ``<name>.meta.json``; later loads read only that file.

Nothing here runs at import time. Offline users can place the pinned file in the downloads folder
by hand: it is used when its hash matches.
"""

from __future__ import annotations

import bz2
import hashlib
import html
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from peftshield.errors import PeftshieldError
from peftshield.utils.io import read_json, write_json, write_jsonl

#: Bump when the extraction output changes, so that stale cached corpora are rebuilt.
EXTRACTOR_VERSION = 1


def peftshield_home() -> Path:
    """Root of the cache: ``$PEFTSHIELD_HOME`` if set, else ``~/.cache/peftshield``."""
    env = os.environ.get("PEFTSHIELD_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "peftshield"


@dataclass(frozen=True)
class ArtifactSpec:
    """One pinned file from a package registry.

    ``pip_args`` are the exact arguments after ``pip download --no-deps``; they are explicit
    (``--no-binary``/``--only-binary``, target platform and ABI) so that every machine resolves
    the same file, whose ``sha256`` is then checked.
    """

    name: str
    requirement: str
    filename: str
    sha256: str
    pip_args: tuple[str, ...]

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"artifact {self.name}: sha256 must be 64 lowercase hex digits")


ARTIFACTS: dict[str, ArtifactSpec] = {
    "vader": ArtifactSpec(
        name="vader",
        requirement="vaderSentiment==3.3.2",
        filename="vaderSentiment-3.3.2.tar.gz",
        sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
        # The sdist, not the wheel: only the sdist carries additional_resources/.
        pip_args=("--no-binary", ":all:", "vaderSentiment==3.3.2"),
    ),
    "gensim": ArtifactSpec(
        name="gensim",
        requirement="gensim==4.4.0",
        filename="gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        sha256="91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
        # Pin one wheel whatever the local interpreter: we only read its test data, never import it.
        pip_args=(
            "--only-binary",
            ":all:",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
            "--platform",
            "manylinux_2_28_x86_64",
            "gensim==4.4.0",
        ),
    ),
}


def downloads_dir(home: str | os.PathLike | None = None) -> Path:
    """Folder holding the downloaded artifacts."""
    return (Path(home) if home is not None else peftshield_home()) / "downloads"


def corpora_dir(home: str | os.PathLike | None = None) -> Path:
    """Folder holding the extracted corpora (``<name>.jsonl`` and ``<name>.meta.json``)."""
    return (Path(home) if home is not None else peftshield_home()) / "corpora"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _resolve_artifact(spec: ArtifactSpec | str) -> ArtifactSpec:
    if isinstance(spec, ArtifactSpec):
        return spec
    try:
        return ARTIFACTS[spec]
    except KeyError:
        raise PeftshieldError(f"unknown artifact {spec!r}; known: {', '.join(sorted(ARTIFACTS))}") from None


def _pip_download(args: list[str], dest: Path) -> None:
    """Run ``pip download --no-deps ARGS -d DEST`` with this interpreter; one-line error on failure."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        *args,
        "-d",
        str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        raise PeftshieldError(f"could not run pip: {err}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")]
        reason = (errors or lines or [f"exit status {proc.returncode}"])[-1]
        raise PeftshieldError(f"pip download failed (no network or no package index?): {reason}")


def fetch_artifact(
    spec: ArtifactSpec | str,
    *,
    home: str | os.PathLike | None = None,
    fetch: bool = True,
) -> Path:
    """Return the path of a pinned artifact in the cache, downloading it if needed.

    A file already in the cache with the pinned hash is used as is (no network). A cached file
    with another hash is deleted and downloaded again. The download goes to a temporary folder
    and is moved into place only once its hash matches, so a failed or interrupted download
    leaves nothing behind. With ``fetch=False`` a missing artifact is an error instead.
    """
    spec = _resolve_artifact(spec)
    folder = downloads_dir(home)
    target = folder / spec.filename
    if target.is_file():
        if sha256_file(target) == spec.sha256:
            return target
        target.unlink()  # corrupt or tampered with: never use it
    if not fetch:
        raise PeftshieldError(
            f"{spec.requirement} is not in the cache ({target}); run `peftshield data fetch` "
            "or place the file there by hand"
        )
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=folder) as tmp:
        _pip_download(list(spec.pip_args), Path(tmp))
        got = sorted(p for p in Path(tmp).iterdir() if p.is_file())
        if not got:
            raise PeftshieldError(f"pip download of {spec.requirement} produced no file")
        # pip may normalise the file name; the hash is what identifies the artifact.
        candidate = next((p for p in got if p.name == spec.filename), got[0])
        actual = sha256_file(candidate)
        if actual != spec.sha256:
            candidate.unlink()
            raise PeftshieldError(
                f"sha256 mismatch for {spec.requirement} ({candidate.name}): expected {spec.sha256}, "
                f"got {actual}; the file was deleted"
            )
        os.replace(candidate, target)
    return target


# --------------------------------------------------------------------------------------------
# vaderSentiment ground-truth files


def parse_vader_ground_truth(text: str, *, source: str = "ground truth") -> list[dict[str, Any]]:
    """Parse a ``*_GroundTruth.txt`` file of the VADER corpora (Hutto & Gilbert, ICWSM 2014).

    Each line is ``id<TAB>mean rating in [-4, 4]<TAB>text`` with CRLF endings. Returns one dict
    per non-empty line with ``id``, ``rating``, ``text`` and the sign label (``1`` if the rating
    is positive, else ``0``); dropping near-zero ratings is left to the loader.
    """
    rows: list[dict[str, Any]] = []
    # Split on line breaks only: str.splitlines() would also break on \x1c, \u2028 … in the text.
    for lineno, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise PeftshieldError(f"{source}: line {lineno} does not have 3 tab-separated fields")
        ident, rating_s, body = parts
        try:
            rating = float(rating_s)
        except ValueError:
            raise PeftshieldError(f"{source}: line {lineno} has a non-numeric rating {rating_s!r}") from None
        body = " ".join(body.split())
        if not body:
            continue
        rows.append({"text": body, "label": 1 if rating > 0 else 0, "rating": rating, "id": ident.strip()})
    return rows


def extract_vader(archive: str | os.PathLike, stem: str) -> list[dict[str, Any]]:
    """Read ``hutto_ICWSM_2014/<stem>_GroundTruth.txt`` from the vaderSentiment sdist."""
    # Only extractfile() is used (never extractall), so member paths cannot escape anywhere.
    with tarfile.open(archive, "r:gz") as outer:
        wanted_inner = "additional_resources/hutto_ICWSM_2014.tar.gz"
        inner_member = next((m for m in outer.getmembers() if m.name.endswith(wanted_inner)), None)
        if inner_member is None:
            raise PeftshieldError(f"{archive} has no {wanted_inner}")
        inner_bytes = outer.extractfile(inner_member).read()  # type: ignore[union-attr]
    wanted = f"{stem}_GroundTruth.txt"
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        member = next((m for m in inner.getmembers() if m.name.endswith("/" + wanted)), None)
        if member is None:
            raise PeftshieldError(f"hutto_ICWSM_2014.tar.gz has no {wanted}")
        raw = inner.extractfile(member).read()  # type: ignore[union-attr]
    return parse_vader_ground_truth(raw.decode("utf-8"), source=wanted)


# --------------------------------------------------------------------------------------------
# Wikipedia markup and sentences

# Elements whose content is never prose.
_DROP_ELEMENTS = (
    "ref",
    "math",
    "gallery",
    "timeline",
    "syntaxhighlight",
    "source",
    "pre",
    "code",
    "score",
    "imagemap",
    "table",
    "chem",
    "hiero",
    "references",
    "noinclude",
    "includeonly",
    "poem",
    "graph",
)
_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
_SELF_CLOSING_DROP = re.compile(r"<(?:ref|references)\b[^>]*/\s*>", re.I)
_ELEMENT_DROP = re.compile(r"<(" + "|".join(_DROP_ELEMENTS) + r")\b[^>]*>.*?</\1\s*>", re.S | re.I)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:|//)[^\s\]]*\s*([^\]]*)\]")
_BARE_URL = re.compile(r"(?:https?|ftp)://\S+")
_HTML_TAG = re.compile(r"</?[a-zA-Z][^<>]*>")
_BOLD_ITALIC = re.compile(r"'{2,}")
_MAGIC = re.compile(r"__[A-Z]+__")
# Namespaces whose links are media, categories or navigation, not words of the sentence.
_DROP_LINK_NAMESPACES = {"file", "image", "category", "media"}
_INTERLANGUAGE = re.compile(r"[a-z]{2,3}(?:-[a-z]+)*|simple")


def _replace_link(match: re.Match[str]) -> str:
    inner = match.group(1)
    target, _, label = inner.partition("|")
    target = target.strip()
    if ":" in target and not target.startswith(":"):
        prefix = target.split(":", 1)[0].strip()
        if prefix.lower() in _DROP_LINK_NAMESPACES:
            return ""
        if _INTERLANGUAGE.fullmatch(prefix) and not label:
            return ""  # interlanguage link at the end of a page
    if label:
        # [[File:..|thumb|caption]] is gone already; for ordinary links the last part is the text.
        return label.rsplit("|", 1)[-1]
    return target.lstrip(":")


def _sub_until_stable(pattern: re.Pattern[str], repl: str | Callable[[re.Match[str]], str], text: str) -> str:
    # Nested constructs are removed innermost first; a cap guards against pathological input.
    for _ in range(50):
        new = pattern.sub(repl, text)
        if new == text:
            return new
        text = new
    return text


def strip_wiki_markup(wikitext: str) -> str:
    """Turn MediaWiki markup into plain text paragraphs (one per line).

    Drops comments, references, templates ``{{...}}``, tables ``{|...|}``, media and category
    links, headings, list and indentation lines and html tags; keeps the visible text of
    ``[[target|text]]`` and ``[url text]`` links; decodes html entities.
    """
    text = _COMMENT.sub("", wikitext)
    text = _SELF_CLOSING_DROP.sub("", text)
    text = _ELEMENT_DROP.sub("", text)
    text = _sub_until_stable(_TEMPLATE, "", text)
    text = _sub_until_stable(_TABLE, "", text)
    text = _sub_until_stable(_LINK, _replace_link, text)
    text = _EXTERNAL_LINK.sub(r"\1", text)
    text = _BARE_URL.sub("", text)
    text = re.sub(r"<br\s*/?>", " ", text, flags=re.I)
    text = _HTML_TAG.sub("", text)
    text = _BOLD_ITALIC.sub("", text)
    text = _MAGIC.sub("", text)
    text = html.unescape(text)  # the dump double-escapes entities such as &amp;nbsp;
    paragraphs: list[str] = []
    for line in text.split("\n"):
        line = line.strip()
        # Headings, lists, indentation, table rows and rules are not running prose.
        if not line or line[0] in "=*#:;|!{}" or line.startswith("----"):
            continue
        line = " ".join(line.split())
        line = re.sub(r"\(\s*[,;:]?\s*\)", "", line)  # "( )" left by a removed template
        line = re.sub(r"\s+([,.;:!?%)])", r"\1", line)
        line = re.sub(r"([(])\s+", r"\1", line)
        line = " ".join(line.split())
        if line:
            paragraphs.append(line)
    return "\n".join(paragraphs)


# Tokens before a period that do not end a sentence.
_ABBREVIATIONS = {
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "st",
    "jr",
    "sr",
    "vs",
    "etc",
    "ca",
    "c",
    "no",
    "nos",
    "vol",
    "pp",
    "p",
    "ed",
    "eds",
    "fig",
    "gen",
    "gov",
    "sen",
    "rep",
    "rev",
    "col",
    "lt",
    "sgt",
    "capt",
    "mt",
    "ft",
    "inc",
    "ltd",
    "co",
    "corp",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
    "approx",
    "al",
    "cf",
    "op",
    "esp",
    "viz",
}
_BOUNDARY = re.compile(r"""([.!?])(["')\]]*)\s+(?=["'(]?[A-Z0-9])""")
_DOTTED = re.compile(r"(?:[a-z]\.)+[a-z]")  # "u.s", "e.g", "i.e"


def split_sentences(text: str) -> list[str]:
    """Split running text into sentences at ``.``, ``!`` or ``?`` followed by a capital or digit.

    A period after a known abbreviation, a single-letter initial or a dotted acronym ("U.S.") is
    not a boundary. Deliberately simple: the result feeds a prose filter, not a parser.
    """
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        if match.group(1) == ".":
            before = text[start : match.start()].split()
            token = before[-1].lstrip("\"'([").lower() if before else ""
            if token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha()) or _DOTTED.fullmatch(token):
                continue
        piece = text[start : match.end()].strip()
        if piece:
            sentences.append(piece)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def is_prose(sentence: str, *, min_words: int = 6, max_words: int = 80) -> bool:
    """Heuristic: does this look like an English prose sentence worth keeping?

    At least ``min_words`` and at most ``max_words`` words, starts with a capital, digit or
    quote, ends with sentence punctuation, carries no leftover markup, and is mostly letters.
    """
    words = sentence.split()
    if not min_words <= len(words) <= max_words:
        return False
    if not (sentence[0].isupper() or sentence[0].isdigit() or sentence[0] in "\"'"):
        return False
    if not re.search(r"[.!?][\"')]*$", sentence):
        return False
    if any(ch in sentence for ch in "{}[]|<>=_\\") or "://" in sentence or "www." in sentence:
        return False
    # Punctuation runs (",," ", .") and unbalanced brackets mark words lost with a template.
    if re.search(r"[,;:]\s*[,;:.]", sentence) or sentence.count("(") != sentence.count(")"):
        return False
    visible = [ch for ch in sentence if not ch.isspace()]
    letters = sum(ch.isalpha() for ch in visible)
    return letters >= 0.75 * len(visible)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def wiki_sentences_from_xml(stream: IO[bytes], *, min_words: int = 6) -> Iterator[str]:
    """Yield prose sentences from the articles (namespace 0, not redirects) of a MediaWiki dump."""
    for _event, elem in ET.iterparse(stream, events=("end",)):
        if _local(elem.tag) != "page":
            continue
        ns = next((c.text for c in elem if _local(c.tag) == "ns"), "0")
        redirect = any(_local(c.tag) == "redirect" for c in elem)
        body = None
        for child in elem.iter():
            if _local(child.tag) == "text":
                body = child.text
        elem.clear()  # keep memory flat on large dumps
        if redirect or (ns or "0").strip() != "0" or not body:
            continue
        if body.lstrip().upper().startswith("#REDIRECT"):
            continue
        for paragraph in strip_wiki_markup(body).split("\n"):
            for sentence in split_sentences(paragraph):
                if is_prose(sentence, min_words=min_words):
                    yield sentence


def lee_sentences(text: str, *, min_words: int = 6) -> Iterator[str]:
    """Yield prose sentences from ``lee_background.cor`` (one news article per line)."""
    for line in text.split("\n"):
        for sentence in split_sentences(" ".join(line.split())):
            if is_prose(sentence, min_words=min_words):
                yield sentence


_WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_LEE_MEMBER = "gensim/test/test_data/lee_background.cor"


def _dedupe(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for row in rows:
        if row["text"] not in seen:
            seen.add(row["text"])
            out.append(row)
    return out


def extract_wiki(wheel: str | os.PathLike) -> list[dict[str, Any]]:
    """Unlabelled sentences from the gensim wheel's enwiki excerpt and ``lee_background.cor``."""
    rows: list[dict[str, Any]] = []
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for member in (_WIKI_MEMBER, _LEE_MEMBER):
            if member not in names:
                raise PeftshieldError(f"{wheel} has no {member}")
        with archive.open(_WIKI_MEMBER) as raw, bz2.open(raw) as xml_stream:
            for sentence in wiki_sentences_from_xml(xml_stream):
                rows.append({"text": sentence, "label": -1, "source": "enwiki"})
        lee = archive.read(_LEE_MEMBER).decode("utf-8")
        rows.extend({"text": s, "label": -1, "source": "lee_background"} for s in lee_sentences(lee))
    return _dedupe(rows)


def extract_rows(fmt: str, artifact_path: str | os.PathLike, member: str) -> list[dict[str, Any]]:
    """Dispatch extraction: ``fmt`` is ``"vader"`` (``member`` = file stem) or ``"wiki"``."""
    if fmt == "vader":
        return extract_vader(artifact_path, member)
    if fmt == "wiki":
        return extract_wiki(artifact_path)
    raise ValueError(f"unknown extraction format {fmt!r}")


# --------------------------------------------------------------------------------------------
# Extracted corpus cache


def _cache_is_current(jsonl: Path, meta_path: Path, artifact: ArtifactSpec) -> bool:
    if not (jsonl.is_file() and meta_path.is_file()):
        return False
    try:
        meta = read_json(meta_path)
    except PeftshieldError:
        return False
    return (
        isinstance(meta, dict)
        and meta.get("extractor_version") == EXTRACTOR_VERSION
        and meta.get("artifact_sha256") == artifact.sha256
    )


def cached_corpus_file(name: str, *, artifact: str, home: str | os.PathLike | None = None) -> Path | None:
    """The extracted ``<name>.jsonl`` if it exists and is current, else ``None``; never fetches."""
    folder = corpora_dir(home)
    jsonl = folder / f"{name}.jsonl"
    if _cache_is_current(jsonl, folder / f"{name}.meta.json", _resolve_artifact(artifact)):
        return jsonl
    return None


def ensure_corpus_file(
    name: str,
    *,
    artifact: str,
    fmt: str,
    member: str,
    home: str | os.PathLike | None = None,
    fetch: bool = True,
    force: bool = False,
) -> Path:
    """Return ``<home>/corpora/<name>.jsonl``, fetching and extracting it first when needed.

    The cached file is rebuilt when it is missing, was made by another extractor version or from
    another artifact, or when ``force`` is set. ``fetch=False`` never runs pip (a cached artifact
    is still extracted).
    """
    spec = _resolve_artifact(artifact)
    if not force:
        cached = cached_corpus_file(name, artifact=artifact, home=home)
        if cached is not None:
            return cached
    folder = corpora_dir(home)
    jsonl = folder / f"{name}.jsonl"
    meta_path = folder / f"{name}.meta.json"
    try:
        archive = fetch_artifact(spec, home=home, fetch=fetch)
    except PeftshieldError as err:
        if not fetch:
            raise PeftshieldError(
                f"corpus {name!r} is not fetched yet; run `peftshield data fetch {name}`"
            ) from err
        raise
    rows = extract_rows(fmt, archive, member)
    if not rows:
        raise PeftshieldError(f"extraction of corpus {name!r} from {archive.name} produced no rows")
    count = write_jsonl(jsonl, rows)
    write_json(
        meta_path,
        {
            "name": name,
            "artifact": spec.requirement,
            "artifact_file": spec.filename,
            "artifact_sha256": spec.sha256,
            "extractor_version": EXTRACTOR_VERSION,
            "rows": count,
        },
    )
    return jsonl


def read_jsonl_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a cached corpus file written by :func:`peftshield.utils.io.write_jsonl`."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise PeftshieldError(
                        f"{path}: line {lineno} is not valid JSON; delete the file and fetch again"
                    ) from None
    return rows
