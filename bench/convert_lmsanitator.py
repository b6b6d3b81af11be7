"""One-off conversion (issue 16): bench/results/lmsanitator.json from bench_lmsanitator.py's row shape
to the grid's (bench/grids/lmsanitator_zoo.json and lmsanitator_victims.json). Nothing is measured.

The old file (git ``60ed1cf``) was written by the deleted script; its figures were measured on
2026-11-23 (its ``meta``). This rewrites each old row in the shape a grid run of the converted
configs writes, under that config's cell id, so the report reads one shape:

- ``cell: zoo`` row -> scan-only row (``mode: scan``, ``zoo: seed``, ``model`` = ``attack`` = the
  zoo name, ``builder`` = how it was built, ``kind`` = the attack kind); the old ``seconds`` (scan
  time) is ``scan_seconds``; ``score`` is null: the old rows did not record the per-model score, so
  the converted file has no score AUROC.
- ``cell: victim`` row -> a monitor row: the old ``defended_asr`` (through the real purge) is
  ``defended_asr_purge`` (``type1`` / ``type2`` -> ``type1_purge`` / ``type2_purge``), and
  ``defended_asr_reject`` is the old ``type1`` (a flagged input blocked leaves exactly the
  unflagged flips: the same count, docs/design.md "Metric definitions"); ``overhead_ratio`` keeps
  its old protocol, named in ``overhead_protocol`` (median of 3 interleaved repeats).
- the ``oracle_*`` fields of a ``t_match@0.8`` row -> a row of its own, defence ``monitor-oracle``.
- ``cell: search-scan`` rows are folded into their victims' rows (``scan_*``, ``pv_*``).

Run once: ``python bench/convert_lmsanitator.py OLD.json bench/results/lmsanitator.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from peftshield.grid.config import load_grid
from peftshield.grid.plan import expand
from peftshield.utils.io import read_json, write_json

HERE = Path(__file__).resolve().parent
KINDS = {"por": "task-agnostic", "neuba": "task-agnostic", "original": None}
ZOO_KEYS = (
    "verdict attempts steps n_pvs outcomes best_gap thresholds clean_drift build_seconds triggers pv_family "
    "attack_sign_match attack_monitor_rate attack_min_monitor_rate pv_n_true pv_n_found pv_recovered "
    "pv_recovery_rate pv_best_agreement pv_spurious build_metrics"
).split()
DETECTION = ("frr", "far", "precision", "recall", "f1", "auroc")


def _zoo_row(old: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    kind = old["kind"]
    row: dict[str, Any] = {
        "cell": ids[old["model"]],
        "mode": "scan",
        "zoo": "seed",
        "backbone": old["backbone"],
        "attack": old["model"],
        "model": old["model"],
        "seed": old.get("scan_seed", 0),
        "kind": KINDS.get(kind, "clean"),
        "builder": "none" if kind == "original" else kind,
        "label": old["label"],
        "score": None,
        "scan_seconds": old["seconds"],
    }
    row.update({k: old[k] for k in ZOO_KEYS if k in old})
    row["converted"] = True  # meta.converted says from what
    return row


def _victim_rows(old: dict[str, Any], search: dict[str, Any], ids: dict[tuple, str]) -> list[dict[str, Any]]:
    policy = {"t_match@0.8": ("t_match-0.8", 0.8), "calibrated@0.02": ("calibrated-0.02", "calibrated@0.02")}
    label, threshold = policy[old["threshold"]]
    head = {
        "zoo": "seed",
        "corpus": old["corpus"],
        "backbone": old["backbone"],
        "attack": old["model"],
        "method": old["method"],
        "seed": old["seed"],
        "kind": "task-agnostic",
    }
    common = {
        "cacc": old["cacc"],
        "asr": old["asr_lms"],
        "asr_lms": old["asr_lms"],
        "asr_convention": "lms",
        "n_triggers": old["n_triggers"],
        "n_clean": old["n_test"],
        "dev_accuracy": old["dev_accuracy"],
        "tune_seconds": old["train_seconds"],
        "scan_verdict": search.get("verdict"),
        "scan_seconds": search.get("seconds"),
        "n_pvs": old["n_pvs"],
        **{
            k: search[k]
            for k in ("pv_n_true", "pv_recovered", "pv_recovery_rate", "pv_spurious")
            if k in search
        },
    }
    monitor = {
        "cell": ids[(old["model"], old["method"], label)],
        **head,
        "defense": label,
        "threshold": threshold,
        "threshold_value": old["threshold_value"],
        **common,
        "defended_asr_reject": old["type1"],
        "defended_asr_purge": old["defended_asr"],
        "type1_purge": old["type1"],
        "type2_purge": old["type2"],
        "n_purged": old["n_purged"],
        **{k: old[k] for k in DETECTION},
        "calibration_frr": old.get("calibration_frr"),
        "overhead_ratio": old["overhead_ratio"],
        "overhead_protocol": "median-of-3-interleaved (bench_lmsanitator.py)",
        "config": {"defense": {"name": "monitor"}},
        "converted": True,
    }
    rows = [monitor]
    if "oracle_defended_asr" in old:
        rows.append(
            {
                "cell": ids[(old["model"], old["method"], "oracle-0.8")],
                **head,
                "defense": "oracle-0.8",
                "threshold": 0.8,
                **common,
                "defended_asr_reject": old["oracle_type1"],
                "defended_asr_purge": old["oracle_defended_asr"],
                "type1_purge": old["oracle_type1"],
                "type2_purge": old["oracle_type2"],
                **{k: old[f"oracle_{k}"] for k in ("frr", "recall", "auroc")},
                "config": {"defense": {"name": "monitor-oracle"}},
                "converted": True,
            }
        )
    return rows


def convert(old: dict[str, Any]) -> dict[str, Any]:
    """The converted document (module docstring)."""
    zoo_ids = {c.attack.label: c.id for c in expand(load_grid(HERE / "grids" / "lmsanitator_zoo.json"))}
    victim_ids = {
        (c.attack.label, c.method.label, c.defense.label): c.id
        for c in expand(load_grid(HERE / "grids" / "lmsanitator_victims.json"))
    }
    searches = {r["model"]: r for r in old["rows"] if r.get("cell") == "search-scan"}
    rows: list[dict[str, Any]] = []
    for r in old["rows"]:
        if r.get("cell") == "zoo":
            rows.append(_zoo_row(r, zoo_ids))
    for r in old["rows"]:
        if r.get("cell") == "victim":
            rows += _victim_rows(r, searches.get(r["model"], {}), victim_ids)
    meta = dict(old["meta"])
    meta["converted"] = {
        "by": "bench/convert_lmsanitator.py (issue 16): old rows in the grid's shape, nothing re-measured",
        "grids": ["bench/grids/lmsanitator_zoo.json", "bench/grids/lmsanitator_victims.json"],
    }
    summary = {"old_summary": old.get("summary", {})}
    return {"benchmark": "lmsanitator", "meta": meta, "rows": rows, "summary": summary}


def main() -> None:
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    write_json(target, convert(read_json(source)))


if __name__ == "__main__":
    main()
