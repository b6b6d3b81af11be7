"""Run a grid: resumable, on local processes or a Ray cluster, with a progress bar, an ETA and a cell log.

Layout of the results folder ``DIR``::

    DIR/cells/<cell-id>.json     one result row per cell (docs/design.md "Benchmark result files" keys)
    DIR/grid.json                the ResultFile shape: benchmark "grid", meta, rows, summary
    DIR/grid-config.json         the grid as it was read, with its source path and content hash
    DIR/artifacts/<kind>/...     content-addressed stage artifacts (:mod:`.cache`)
    DIR/log/stages.jsonl         every build, reuse and cell outcome, one JSON line each
    DIR/log/run.log              the one-line-per-cell log of every run

Resuming: a cell whose result file holds no ``error`` is done and never rerun; a failed cell is
rerun; a cell interrupted half-way left at most complete artifacts (atomic folders) and no result
file, so it is rerun and reuses what it had finished. One run at a time per ``DIR`` (a lock), and
one grid per ``DIR``: a grid whose content differs from the one recorded in ``grid-config.json``
is refused unless ``force`` (its ``grid.json`` would silently replace the other's).

Where the cells run is the executor's business (:mod:`.executors`: ``local`` processes, the
default, or ``ray``); results do not depend on it, nor on the number of workers: every stage
seeds itself and reads its inputs back from disk.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftshield.errors import PeftshieldError
from peftshield.grid.cache import (
    CELLS_DIR,
    LOG_DIR,
    RUN_LOG,
    ArtifactStore,
    check_results_dir,
    digest,
    file_lock,
)
from peftshield.grid.config import GridSpec
from peftshield.grid.evaluate import DEFENDED_ASR_REJECT as DEFENDED_ASR
from peftshield.grid.executors import Executor, LocalExecutor
from peftshield.grid.plan import Cell, expand
from peftshield.grid.stages import policy_rows, portable_ref, read_row, scrub_paths

GRID_FILE = "grid.json"
#: grid.json is rewritten at most this often during a run (and always at its end).
GRID_WRITE_SECONDS = 10.0
CONFIG_FILE = "grid-config.json"
RUN_LOCK = ".bench.lock"
#: Keys that measure time or record provenance: they differ between two runs of the same cell.
VOLATILE_KEYS = (
    "seconds",
    "overhead_ratio",
    "inference_seconds",
    "poison_seconds",
    "tune_seconds",
    "seconds_per_epoch",
    "seconds_per_step",
    "scan_seconds",
    "fit_seconds",
    "stages",
    "meta",
)


@dataclass
class CellStatus:
    """Where a cell stands in ``DIR``: ``done``, ``failed`` (will be retried) or ``todo``."""

    cell: Cell
    state: str
    row: dict[str, Any] | None = None


@dataclass
class RunSummary:
    """What a run did: rows of the grid (plan order), how many cells ran, failed, were skipped."""

    rows: list[dict[str, Any]]
    ran: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def cell_status(cells: list[Cell], results: Path | None) -> list[CellStatus]:
    """The status of every cell in ``results`` (all ``todo`` without a results folder)."""
    out = []
    for cell in cells:
        row = read_row(results, cell.id) if results is not None else None
        state = "todo" if row is None else ("failed" if "error" in row else "done")
        out.append(CellStatus(cell, state, row))
    return out


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def cell_line(row: dict[str, Any]) -> str:
    """The one-line log of a finished cell."""
    if row.get("mode") == "scan":
        title = f"scan/{row.get('backbone')}/{row.get('attack')} s{row.get('seed')}"
        if "error" in row:
            return f"{title}  FAILED: {row['error'].splitlines()[0][:200]}"
        mark = "" if row.get("verdict") == row.get("label") else "  (WRONG)"
        recovered = (
            f", {row['pv_recovered']}/{row['pv_n_true']} PVs recovered" if "pv_recovered" in row else ""
        )
        score = row.get("score")
        return (
            f"{title}  {row.get('label')} -> {row.get('verdict')}{mark}: {row.get('n_pvs')} PV, "
            f"{row.get('attempts')} attempts, {row.get('steps')} steps, score "
            f"{'-' if score is None else f'{score:.3f}'}, scan {row.get('scan_seconds') or 0:.0f} s"
            f"{recovered}  ({row.get('seconds', 0):.0f} s)"
        )
    title = "/".join(str(row.get(k)) for k in ("corpus", "backbone", "attack", "method", "defense"))
    title += f" s{row.get('seed')}"
    if "error" in row:
        return f"{title}  FAILED: {row['error'].splitlines()[0][:200]}"
    parts = []
    if row.get("cacc") is not None:
        parts.append(f"CACC {_fmt(row['cacc'])}")
        if row.get("defense") != "none":
            parts[-1] += f"->{_fmt(row.get('defended_cacc'))}"
    if "by_attack" in row:
        asr = ", ".join(
            f"{a} {_fmt(v.get('asr'))}" for a, v in row["by_attack"].items() if v.get("asr") is not None
        )
        if asr:
            parts.append(f"false-trigger ASR {asr}")
    elif row.get("asr") is not None:
        parts.append(
            f"ASR {_fmt(row['asr'])}"
            + (f"->{_fmt(row.get(DEFENDED_ASR))}" if row.get("defense") != "none" else "")
        )
    if row.get("defense") != "none":
        parts.append(f"FRR {_fmt(row.get('frr'))}")
        if row.get("auroc") is not None:
            parts.append(f"AUROC {_fmt(row['auroc'])}")
        if row.get("overhead_ratio") is not None:
            parts.append(f"overhead {row['overhead_ratio']:.2f}x")
        if row.get("inactive"):
            parts.append("(inactive: no PV)")
    return f"{title}  " + "  ".join(parts) + f"  ({row.get('seconds', 0):.0f} s)"


def _mean(values: list[Any]) -> float | None:
    values = [v for v in values if isinstance(v, int | float)]
    return float(sum(values) / len(values)) if values else None


def summarize(rows: list[dict[str, Any]], planned: int) -> dict[str, Any]:
    """Counts, and per defence the mean AUROC, ASR before / after, CACC cost, FRR and overhead.

    A cell whose defence was inactive (a monitor with no PV to watch: it passes every input) is
    counted under ``inactive`` and left out of the means, as the report's claims leave it out:
    averaging its undefended figures in would credit or blame a defence that never ran. A cell with
    no backdoor to defend (:mod:`peftshield.evaluation.validity`, docs/design.md "Valid cells") is
    counted under ``cells.no_backdoor``, named with its reason under ``no_backdoor``, and left out of
    the means too.
    """
    from peftshield.evaluation.validity import no_backdoor_reasons

    ok = [r for r in rows if "error" not in r]
    victims = [r for r in ok if r.get("mode") != "scan"]
    reasons = no_backdoor_reasons(victims)
    summary: dict[str, Any] = {
        "cells": {
            "planned": planned,
            "finished": len(ok),
            "failed": len(rows) - len(ok),
            "no_backdoor": sum(reason is not None for reason in reasons),
        },
        "seconds": round(sum(r.get("seconds") or 0 for r in rows), 1),
        "by_defense": {},
        "no_backdoor": {
            r["cell"]: reason for r, reason in zip(victims, reasons, strict=True) if reason and "cell" in r
        },
    }
    scans = [r for r in ok if r.get("mode") == "scan"]
    if scans:
        summary["scan"] = scan_summary(scans)

    # A defence with several threshold policies is summarised per policy ("psim fixed@0.7").
    def group(row: dict[str, Any]) -> str:
        many = len({str(r.get("threshold")) for r in victims if r["defense"] == row["defense"]}) > 1
        return f"{row['defense']} {row.get('threshold')}" if many else row["defense"]

    valid = [r for r, reason in zip(victims, reasons, strict=True) if reason is None]
    for defense in dict.fromkeys(group(r) for r in victims):
        mine = [r for r in valid if group(r) == defense and not r.get("inactive")]
        attacked = [r for r in mine if "by_attack" not in r]
        cost = [
            r["cacc"] - r["defended_cacc"]
            for r in mine
            if r.get("cacc") is not None and r.get("defended_cacc") is not None
        ]
        summary["by_defense"][defense] = {
            "cells": len(mine),
            "inactive": sum(1 for r in victims if group(r) == defense and r.get("inactive")),
            "mean_auroc": _mean([r.get("auroc") for r in attacked]),
            "mean_asr": _mean([r.get("asr") for r in attacked]),
            f"mean_{DEFENDED_ASR}": _mean([r.get(DEFENDED_ASR) for r in attacked]),
            "mean_cacc_cost": _mean(cost),
            "mean_frr": _mean([r.get("frr") for r in mine]),
            "mean_overhead_ratio": _mean([r.get("overhead_ratio") for r in mine]),
        }
    return summary


def scan_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Model-scan quality over scan-only rows: accuracy, FPR, FNR (``evaluation.metrics.scan_metrics``),
    AUROC of the per-model score (``evaluation.metrics.auroc``, backdoored = positive; rows without a
    finite score left out and counted), scan time, the wrong models and the mean PV recovery."""
    import math

    from peftshield.evaluation.metrics import auroc, scan_metrics

    out: dict[str, Any] = dict(scan_metrics([r["verdict"] for r in rows], [r["label"] for r in rows]))
    scored = [r for r in rows if isinstance(r.get("score"), int | float) and math.isfinite(r["score"])]
    clean = [r["score"] for r in scored if r["label"] == "clean"]
    backdoored = [r["score"] for r in scored if r["label"] == "backdoored"]
    out["auroc"] = auroc(clean, backdoored) if clean and backdoored else None
    out["n_without_score"] = len(rows) - len(scored)
    seconds = sorted(r["scan_seconds"] for r in rows if isinstance(r.get("scan_seconds"), int | float))
    out["scan_seconds_mean"] = _mean(seconds)
    out["scan_seconds_max"] = seconds[-1] if seconds else None
    out["false_positives"] = [r["model"] for r in rows if r["label"] == "clean" and r["verdict"] != "clean"]
    out["false_negatives"] = [
        r["model"] for r in rows if r["label"] == "backdoored" and r["verdict"] != "backdoored"
    ]
    out["pv_recovery_rate_mean"] = _mean([r.get("pv_recovery_rate") for r in rows])
    return out


def write_grid_file(
    results: Path,
    grid: GridSpec,
    cells: list[Cell],
    command: str | None,
    rows_by_id: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Write ``grid.json`` (ResultFile shape) with the rows of the current plan, in plan order.

    ``rows_by_id`` holds the rows known in memory; without it the cell files are read. The
    recorded command has this machine's folders replaced by placeholders (``<results>``, ``~``),
    so that a committed result file names no path of the machine that ran it.
    """
    from peftshield.utils.io import write_json
    from peftshield.utils.runinfo import run_metadata

    if rows_by_id is None:
        rows_by_id = {c.id: row for c in cells if (row := read_row(results, c.id)) is not None}
    # One row per threshold policy (a cell with several policies has several rows).
    rows = [r for c in cells if c.id in rows_by_id for r in policy_rows(rows_by_id[c.id])]
    for row in rows:  # cell files written before the option were all measured on the test split
        if row.get("mode") != "scan":
            row.setdefault("evaluate_on", "test")
    meta = run_metadata(None if command is None else scrub_paths(command, results))
    meta.update(
        {
            "grid": grid.name,
            "grid_file": portable_ref(grid.source),
            "grid_digest": grid_digest(grid),
            "evaluate_on": grid.sizes.evaluate_on,
            "planned_cells": [c.id for c in cells],
        }
    )
    summary = summarize(rows, len(cells))
    write_json(
        results / GRID_FILE, {"benchmark": grid.benchmark, "meta": meta, "rows": rows, "summary": summary}
    )
    return rows


class _Progress:
    """The overall bar, weighted by the cost model so that its ETA reads cheap and costly cells right.

    Its unit is estimated seconds; the ETA is the estimate left divided by the rate measured since
    the start (no smoothing: cells differ too much in cost for a moving average).
    """

    def __init__(self, costs: dict[str, float], n_cells: int, done: int, enabled: bool | None) -> None:
        from tqdm.auto import tqdm

        self.costs, self.n_cells, self.done = costs, n_cells, done
        hide = True if enabled is False else (None if enabled is None else False)
        self.bar = tqdm(
            total=max(1, round(sum(costs.values()))),
            disable=hide,
            smoothing=0,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed} elapsed, ETA {remaining}]",
            dynamic_ncols=True,
        )
        self._describe()

    def _describe(self) -> None:
        self.bar.set_description_str(f"grid {self.done}/{self.n_cells} cells", refresh=True)

    def finished(self, cell_id: str, line: str) -> None:
        self.done += 1
        self.bar.update(round(self.costs.get(cell_id, 0.0)))
        self._describe()
        self.bar.write(line, file=sys.stdout)

    def close(self) -> None:
        self.bar.close()


def _run_log(results: Path, line: str) -> None:
    path = results / LOG_DIR / RUN_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"{stamp} {line}\n")


def grid_digest(grid: GridSpec) -> str:
    """The content hash of a grid as it was read (what ``grid-config.json`` records)."""
    return digest(grid.raw)


def check_same_grid(results: Path, grid: GridSpec, force: bool = False) -> None:
    """Refuse to run ``grid`` into a results folder that holds another grid, unless ``force``.

    Compares the content hash of the grid recorded in ``RESULTS/grid-config.json`` with this one;
    a folder without that file (new, or not a grid's) passes. Reads only: nothing is created.
    """
    from peftshield.utils.io import read_json

    path = Path(results).expanduser() / CONFIG_FILE
    if force or not path.is_file():
        return
    try:
        stored = read_json(path)
    except PeftshieldError:
        return  # unreadable: rewritten by this run
    if not isinstance(stored, dict) or not isinstance(stored.get("grid"), dict):
        return
    old, new = digest(stored["grid"]), grid_digest(grid)
    if old != new:
        name = stored["grid"].get("name") or portable_ref(stored.get("source")) or "another grid"
        raise PeftshieldError(
            f"{results} holds the results of a different grid ({name!r}, content hash {old[:12]}; this "
            f"grid: {new[:12]}); use another --results, or --force to run this grid there (its "
            "grid.json then lists this grid's cells; the other's cell files and artifacts stay)"
        )


def run_grid(
    grid: GridSpec,
    results: str | Path,
    *,
    jobs: int = 1,
    executor: Executor | None = None,
    device: str = "auto",
    progress: bool | None = None,
    command: str | None = None,
    force: bool = False,
    only: list[str] | None = None,
) -> RunSummary:
    """Run every unfinished cell of ``grid`` into ``results`` (see the module docstring).

    ``executor`` says where the cells run (default: :class:`~.executors.LocalExecutor` with
    ``jobs`` workers); ``force`` lets a different grid take over an existing results folder;
    ``only``: shell patterns, the cells run (and listed in ``grid.json``) are those whose id or
    title matches one of them (:func:`select_cells`).
    Every check (executor settings, device, results folder, grid) runs before anything is written.
    """
    from peftshield.grid.estimate import cpu_slowdown, plan_costs, scaled_minutes
    from peftshield.grid.plan import unique_stages
    from peftshield.utils.device import DEVICE_CHOICES, resolve_device
    from peftshield.utils.io import write_json
    from peftshield.utils.lifetime import Terminated, terminate_on_sigterm

    executor = executor or LocalExecutor(jobs=jobs)
    executor.check()
    slowdown = 1.0  # a cluster's speed is not measured from the driver
    if executor.name == "local":
        # a bad or unavailable device fails now, not in every cell
        slowdown = cpu_slowdown(resolve_device(device).type)
    elif device not in DEVICE_CHOICES and not device.startswith("cuda:"):
        resolve_device(device)  # a bad name; whether a GPU exists is the cluster's answer
    cells = expand(grid)
    if not cells:
        raise PeftshieldError(f"{grid.source or grid.name}: the grid has no cell to run")
    if only:
        cells = select_cells(cells, only)
    check_same_grid(Path(results), grid, force)
    results = check_results_dir(results).resolve()
    started = time.perf_counter()
    with file_lock(results / RUN_LOCK, blocking=False) as acquired:
        if not acquired:
            raise PeftshieldError(
                f"another 'peftshield bench run' is using {results}; wait for it or use another --results"
            )
        check_same_grid(results, grid, force)  # again under the lock: another run may have just begun
        store = ArtifactStore(results)
        store.clean_partials()
        (results / CELLS_DIR).mkdir(exist_ok=True)
        write_json(
            results / CONFIG_FILE, {"source": grid.source, "digest": grid_digest(grid), "grid": grid.raw}
        )
        statuses = cell_status(cells, results)
        done = {s.cell.id for s in statuses if s.state == "done"}
        todo = [s.cell for s in statuses if s.state != "done"]
        retried = sum(s.state == "failed" for s in statuses)
        built = {
            key
            for stages in unique_stages(cells).values()
            for key, st in stages.items()
            if store.is_built(st)
        }
        costs = plan_costs(cells, built, done)
        header = (
            f"grid {grid.name}: {len(cells)} cells, {len(done)} done, {len(todo)} to run"
            + (f" ({retried} failed before, retried)" if retried else "")
            + f"; rough estimate {scaled_minutes(sum(costs.values()), slowdown)}; {executor.describe()}"
            + f"; results {results}"
        )
        print(header, flush=True)
        _run_log(results, header)
        summary = RunSummary(rows=[], skipped=len(done))
        bar = _Progress(costs, len(cells), len(done), progress)
        index = {c.id: i for i, c in enumerate(cells, start=1)}
        rows_by_id = {s.cell.id: s.row for s in statuses if s.row is not None}
        last_write = [0.0]

        def finished(cell: Cell, row: dict[str, Any]) -> None:
            summary.ran += 1
            if "error" in row:
                summary.failed += 1
                summary.failures.append(cell.id)
            rows_by_id[cell.id] = row
            lines = [f"[{index[cell.id]}/{len(cells)}] {cell_line(r)}" for r in policy_rows(row)]
            bar.finished(cell.id, "\n".join(lines))
            for line in lines:
                _run_log(results, line)
            if time.monotonic() - last_write[0] > GRID_WRITE_SECONDS:  # the cell files are the truth
                write_grid_file(results, grid, cells, command, rows_by_id)
                last_write[0] = time.monotonic()

        try:
            with terminate_on_sigterm():
                executor.run(todo, results, device, finished)
        except Terminated:
            message = (
                f"terminated; {summary.ran} cell(s) finished in this run are kept: the same command resumes"
            )
            print(f"peftshield: {message}", file=sys.stderr, flush=True)
            _run_log(results, message)
            raise
        finally:
            bar.close()
            summary.rows = write_grid_file(results, grid, cells, command, rows_by_id)
            summary.seconds = time.perf_counter() - started
    footer = (
        f"ran {summary.ran} cell(s) in {summary.seconds:.0f} s "
        f"({summary.failed} failed, {summary.skipped} already done); "
        f"results: {results / GRID_FILE}"
    )
    print(footer, flush=True)
    _run_log(results, footer)
    return summary


def select_cells(cells: list[Cell], patterns: list[str]) -> list[Cell]:
    """The cells whose id or title (``corpus/backbone/attack/method/defense s<seed>``) matches one of
    the shell ``patterns``, in plan order; no match is an error naming the patterns."""
    from fnmatch import fnmatchcase

    chosen = [c for c in cells if any(fnmatchcase(c.id, p) or fnmatchcase(c.title(), p) for p in patterns)]
    if not chosen:
        raise PeftshieldError(f"no cell of the grid matches {', '.join(repr(p) for p in patterns)}")
    return chosen


def comparable(row: dict[str, Any]) -> dict[str, Any]:
    """A row without its timing and provenance fields: equal for two runs of the same cell."""
    return {k: v for k, v in row.items() if k not in VOLATILE_KEYS}
