"""Side by side: the committed retention / PSIM figures (measured by the former scripts) and the same
cells re-run by the grid configs (issue 16). Prints a markdown table per benchmark; runs nothing.

    python bench/reproduction_table.py bench/work/retention/grid.json bench/work/psim/grid.json

Cells are matched by attack (``none`` = ``control``), method, budget, head and threshold policy;
a figure is listed when both files have it. The difference column is re-run minus committed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from peftshield.reporting.retention import from_grid_rows

HERE = Path(__file__).resolve().parent
RETENTION_KEYS = ("cacc", "asr", "asr_dominant", "dev_accuracy")
PSIM_KEYS = ("cacc", "asr", "auroc", "threshold_value", "defended_cacc", "defended_asr_reject", "frr", "far")


def _rows(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text(encoding="utf-8"))["rows"]


def _fmt(value: Any) -> str:
    return "—" if not isinstance(value, int | float) else f"{value:.3f}"


def _line(cell: str, key: str, old: Any, new: Any) -> str | None:
    if not isinstance(old, int | float) or not isinstance(new, int | float):
        return None
    return f"| {cell} | {key} | {_fmt(old)} | {_fmt(new)} | {new - old:+.3f} |"


def _victim_key(row: dict[str, Any]) -> tuple:
    return (row["attack"], row["method"], row.get("budget", "default"), row.get("head", "fresh"))


def retention(rerun: Path) -> list[str]:
    """Retention: every re-run victim beside the committed row of the same cell."""
    old = {_victim_key(r): r for r in _rows(HERE / "results" / "retention.json") if r.get("cell") == "victim"}
    out = ["| cell | figure | committed | re-run | diff |", "|---|---|---|---|---|"]
    for row in from_grid_rows(_rows(rerun)):
        if row.get("cell") != "victim" or "error" in row:
            continue
        key = _victim_key(row)
        before = old.get(key)
        if before is None:
            continue
        cell = " / ".join(str(k) for k in key if k not in ("default", "fresh"))
        for metric in RETENTION_KEYS:
            line = _line(cell, metric, before.get(metric), row.get(metric))
            if line:
                out.append(line)
        for attack, sub in (row.get("by_attack") or {}).items():
            was = (before.get("by_attack") or {}).get(attack, {})
            for metric in ("asr", "asr_dominant"):
                line = _line(cell, f"{attack} trigger {metric}", was.get(metric), sub.get(metric))
                if line:
                    out.append(line)
    return out


def psim(rerun: Path) -> list[str]:
    """PSIM: every re-run (cell, policy) row beside the committed row of the same cell and policy."""
    old = {}
    for r in _rows(HERE / "results" / "psim.json"):
        if r.get("cell") == "victim":
            old[
                (r["attack"], r["method"] + ("" if r["head"] == "fresh" else "-headkeep"), r["threshold"])
            ] = r
    out = ["| cell | policy | figure | committed | re-run | diff |", "|---|---|---|---|---|---|"]
    for row in _rows(rerun):
        if "error" in row:
            continue
        attack = "control" if row["attack"] == "none" else row["attack"]
        before = old.get((attack, row["method"], row["threshold"]))
        if before is None:
            continue
        for metric in PSIM_KEYS:
            line = _line(
                f"{attack} / {row['method']} | {row['threshold']}",
                metric,
                before.get(metric),
                row.get(metric),
            )
            if line:
                out.append(line)
        for name, sub in (row.get("by_attack") or {}).items():
            was = (before.get("by_attack") or {}).get(name, {})
            for metric in ("asr", "auroc"):
                cell = f"{attack} / {row['method']} | {row['threshold']}"
                line = _line(cell, f"{name} trigger {metric}", was.get(metric), sub.get(metric))
                if line:
                    out.append(line)
    return out


def main(argv: list[str]) -> None:
    retention_file = Path(argv[0]) if argv else HERE / "work" / "retention" / "grid.json"
    psim_file = Path(argv[1]) if len(argv) > 1 else HERE / "work" / "psim" / "grid.json"
    if retention_file.is_file():
        print("Retention\n\n" + "\n".join(retention(retention_file)) + "\n")
    if psim_file.is_file():
        print("PSIM\n\n" + "\n".join(psim(psim_file)))


if __name__ == "__main__":
    main(sys.argv[1:])
