"""Resumable benchmark result files in the shared shape (docs/design.md, "Benchmark result files").

One row per cell; a finished cell is skipped when the benchmark is run again; a failed cell is
a row with an ``error`` field, not a missing row (and is retried on the next run).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path

from peftshield.utils.io import read_json, write_json
from peftshield.utils.runinfo import run_metadata


class ResultFile:
    """A ``bench/results/<name>.json`` file that is rewritten atomically after every cell."""

    def __init__(self, path: Path, benchmark: str, command: str, fresh: bool = False) -> None:
        self.path = path
        self.data = {"benchmark": benchmark, "meta": run_metadata(command), "rows": [], "summary": {}}
        if path.exists() and not fresh:
            old = read_json(path)
            self.data["rows"] = [r for r in old.get("rows", []) if "error" not in r]
            self.data["meta"]["resumed_from"] = old.get("meta", {}).get("started")

    @property
    def rows(self) -> list[dict]:
        return self.data["rows"]

    def find(self, key: dict) -> dict | None:
        for row in self.rows:
            if all(row.get(k) == v for k, v in key.items()):
                return row
        return None

    def run_cell(self, key: dict, compute: Callable[[], dict]) -> dict:
        done = self.find(key)
        if done is not None:
            print(f"skip (done): {key}", flush=True)
            return done
        print(f"run: {key}", flush=True)
        try:
            row = {**key, **compute()}
        except Exception as err:  # a failed cell is recorded, the benchmark goes on
            row = {
                **key,
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()[-2000:],
            }
        self.rows.append(row)
        write_json(self.path, self.data)
        return row

    def finish(self, summary: dict) -> None:
        self.data["summary"] = summary
        write_json(self.path, self.data)

    def table(self, columns: list[str]) -> str:
        """A Markdown table of the rows over ``columns``."""

        def fmt(value) -> str:
            if isinstance(value, float):
                return f"{value:.4f}" if value < 10 else f"{value:.1f}"
            return "" if value is None else str(value)

        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in self.rows]
        return "\n".join(lines)
