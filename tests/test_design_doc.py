"""The code's citations of docs/design.md name sections that exist there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "design.md"
CITATION = re.compile(r"""docs/design\.md,?\s*["'“]([A-Z][^"'”]{2,60})["'”]""")


def headings() -> set[str]:
    return {
        line.lstrip("#").strip()
        for line in DOC.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }


def citations() -> dict[str, list[str]]:
    """Cited section name -> the files citing it (whitespace, including line breaks, collapsed)."""
    found: dict[str, list[str]] = {}
    files = [
        *(ROOT / "src").rglob("*.py"),
        *(ROOT / "bench").rglob("*.py"),
        ROOT / "README.md",
        ROOT / "bench" / "README.md",
    ]
    for path in files:
        text = " ".join(path.read_text(encoding="utf-8").replace("#:", " ").replace("#", " ").split())
        for name in CITATION.findall(text):
            found.setdefault(" ".join(name.split()), []).append(str(path.relative_to(ROOT)))
    return found


def test_every_cited_section_exists():
    cited = citations()
    assert len(cited) >= 5, "the citation pattern found (almost) nothing: the check would prove nothing"
    missing = {name: files for name, files in cited.items() if name not in headings()}
    assert not missing, f"sections cited but not in docs/design.md: {missing}"


def test_the_code_cites_no_file_outside_the_repository():
    for path in (ROOT / "src").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for outside in ("REFERENCE-CODE.md", "DESIGN.md", "PEERS.md", "/work/shared"):
            assert outside not in text, f"{path.relative_to(ROOT)} cites {outside}"
