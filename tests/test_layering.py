"""Imports flow one way (docs/design.md, "Layers"): a check over the import graph of src/peftshield.

Every ``import`` / ``from ... import`` statement of every module is read with :mod:`ast` - at module
level, inside functions and under ``TYPE_CHECKING`` alike - and resolved to the peftshield module it
names. A module may import its own layer or a layer below it; a module of the base layer (``errors``,
``utils``, the metric definitions) imports only the base layer; siblings of one layer (``attacks``
and ``defenses``; ``grid`` and ``reporting``) do not import each other. A failure names the file,
the line, the import and the rule it breaks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "peftshield"

#: Module prefix -> (rank, group). The longest matching prefix decides. Higher ranks may import lower
#: ones; equal ranks only inside one group. Keep in step with docs/design.md, "Layers".
LAYERS: dict[str, tuple[int, str]] = {
    "peftshield": (0, "base"),  # the package root: __version__ only
    "peftshield.errors": (0, "base"),
    "peftshield.utils": (0, "base"),
    "peftshield.evaluation.metrics": (0, "base"),  # pure metric functions over arrays
    "peftshield.evaluation.validity": (0, "base"),  # the valid-cell rule over result rows
    "peftshield.data": (1, "data"),
    "peftshield.models": (2, "models"),
    "peftshield.tuning": (3, "tuning"),
    "peftshield.attacks": (4, "attacks"),
    "peftshield.defenses": (4, "defenses"),
    "peftshield.evaluation": (5, "evaluation"),
    "peftshield.testing": (5, "testing"),  # the detector contract check, for third-party detectors
    "peftshield.grid": (6, "grid"),
    "peftshield.reporting": (6, "reporting"),
    "peftshield.commands": (7, "commands"),
    "peftshield.serve": (6, "serve"),  # the HTTP guard service (defenses / models / utils)
    "peftshield.client": (8, "client"),  # a leaf: see ONLY
    "peftshield.cli": (8, "cli"),
    "peftshield.__main__": (9, "main"),
}

#: Packages that may import only the named groups (and themselves), whatever their rank.
ONLY: dict[str, set[str]] = {
    "peftshield.client": {"base"},  # the HTTP client of the guard service: errors / utils only
    "peftshield.reporting": {"base"},  # reads result files, never the attack or defence code
}

#: Known edges that break the rule, each with the change that removes it. Keep this list short.
ALLOWED: set[tuple[str, str]] = set()


def module_name(path: Path, src: Path = SRC) -> str:
    """``src/peftshield/a/b.py`` -> ``peftshield.a.b``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, src: Path = SRC) -> list[tuple[int, str, str]]:
    """``(line, imported peftshield module, statement text)`` for every import in ``path``."""
    name = module_name(path, src)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # ``from peftshield.evaluation import metrics`` imports the submodule when there is one.
            targets = []
            for alias in node.names:
                sub = f"{stem}.{alias.name}"
                where = src / Path(*sub.split("."))
                is_module = where.with_suffix(".py").exists() or where.is_dir()
                targets.append(sub if is_module else stem)
        else:
            continue
        for target in targets:
            if target == "peftshield" or target.startswith("peftshield."):
                found.append((node.lineno, target, ast.get_source_segment(source, node) or ""))
    return found


def layer_of(module: str) -> tuple[int, str]:
    """The (rank, group) of ``module``: its longest prefix in :data:`LAYERS`."""
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add its package to LAYERS and to docs/design.md")
    return LAYERS[best]


def violation(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported`` (None when it may)."""
    if (importer, imported) in ALLOWED:
        return None
    if importer == imported or imported.startswith(importer + "."):
        return None
    (rank_a, group_a), (rank_b, group_b) = layer_of(importer), layer_of(imported)
    for prefix, groups in ONLY.items():
        if importer == prefix or importer.startswith(prefix + "."):
            if group_b not in groups and not imported.startswith(prefix):
                return f"{prefix} may import only {', '.join(sorted(groups))}, not {group_b}"
            return None
    if rank_b > rank_a:
        return f"layer {group_a} (rank {rank_a}) imports the higher layer {group_b} (rank {rank_b})"
    if rank_b == rank_a and group_a != group_b:
        return f"sibling layers {group_a} and {group_b} do not import each other"
    return None


def all_violations(src: Path = SRC) -> list[str]:
    """Every forbidden import under ``src/peftshield``, as ``file:line: statement  [reason]``."""
    problems = []
    for path in sorted((src / "peftshield").rglob("*.py")):
        importer = module_name(path, src)
        for line, imported, text in imports_of(path, src):
            why = violation(importer, imported)
            if why:
                where = path.relative_to(src.parent)
                problems.append(f"{where}:{line}: {' '.join(text.split())}  [{why}]")
    return problems


def test_imports_flow_one_way() -> None:
    problems = all_violations()
    assert not problems, "imports against the layering (docs/design.md, 'Layers'):\n" + "\n".join(problems)


def test_allowed_edges_still_exist() -> None:
    """An allow-list entry whose import is gone must be deleted, so the list cannot go stale."""
    edges = {(module_name(p), target) for p in PACKAGE.rglob("*.py") for _, target, _ in imports_of(p)}
    assert not ALLOWED - edges, f"stale ALLOWED entries: {sorted(ALLOWED - edges)}"


def test_every_package_has_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))


@pytest.mark.parametrize(
    ("importer", "imported", "allowed"),
    [
        ("peftshield.models.backbones", "peftshield.data.records", True),
        ("peftshield.data.corpora", "peftshield.models.backbones", False),
        ("peftshield.defenses.psim", "peftshield.commands.common", False),
        ("peftshield.attacks.task_agnostic", "peftshield.defenses.base", False),
        ("peftshield.tuning.trainer", "peftshield.evaluation.metrics", True),
        ("peftshield.utils.io", "peftshield.data.records", False),
        ("peftshield.cli", "peftshield.commands.tune", True),
        ("peftshield.client", "peftshield.utils.io", True),
        ("peftshield.client", "peftshield.defenses.guard", False),
        ("peftshield.serve.app", "peftshield.commands.common", False),
        ("peftshield.serve.app", "peftshield.defenses.guard", True),
        ("peftshield.reporting.retention", "peftshield.attacks.config", False),
        ("peftshield.reporting.build", "peftshield.utils.io", True),
    ],
)
def test_the_rule_itself(importer: str, imported: str, allowed: bool) -> None:
    """The checker flags what it must (so an empty violation list means something)."""
    assert (violation(importer, imported) is None) is allowed


def test_a_planted_violation_is_reported_with_file_and_line(tmp_path: Path) -> None:
    fake = tmp_path / "src" / "peftshield" / "data"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("from . import bad\n")
    (fake / "bad.py").write_text("def f():\n    from peftshield.commands.common import load_splits\n")
    assert all_violations(tmp_path / "src") == [
        "src/peftshield/data/bad.py:2: from peftshield.commands.common import load_splits  "
        "[layer data (rank 1) imports the higher layer commands (rank 7)]"
    ]
