"""Our measured figures beside each claim of :mod:`.claims` ("claims vs measured").

Each claim id maps to a function of the loaded results that returns our figure and a status:
``met`` / ``not met`` against a numeric bound, ``holds`` / ``fails`` / ``partly`` for a finding,
``for comparison`` where the claim has no bound to test, ``not measured`` where no result covers
it. Failed cells never count as measured, and neither do cells with no backdoor to defend (a victim
at chance, or one whose ASR is not above the clean control's false-trigger rate:
:mod:`peftshield.evaluation.validity`, docs/design.md "Valid cells"), nor rows measured on the dev
split to make a choice (``evaluate_on: dev``, docs/design.md "Choosing on the dev split").
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from peftshield.evaluation.validity import no_backdoor_reasons, valid_rows
from peftshield.reporting.claims import CLAIMS, Claim
from peftshield.reporting.document import Section, Table, Text, number
from peftshield.reporting.results import Results
from peftshield.reporting.rows import cacc_cost, defended_asr_of, expand_policies, on_test_split, policy_of

NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Measured:
    """Our figure for a claim, its status, and what it was computed from."""

    figure: str
    status: str
    basis: str = ""


def _compare(value: float, bound: tuple[str, float]) -> bool:
    op, limit = bound
    return {"<=": value <= limit, ">=": value >= limit, "<": value < limit, ">": value > limit}[op]


def _rows(results: Results, kind: str) -> list[dict[str, Any]]:
    # a cell with no backdoor to defend never counts for or against a claim (evaluation.validity)
    return [
        row
        for bench in results.of_kind(kind)
        for row in valid_rows(on_test_split(expand_policies(bench.ok_rows)))
    ]


def _retention_summary(results: Results) -> dict | None:
    from peftshield.reporting.retention import retention_summary

    bench = results.get("retention")
    if bench is None or not bench.ok_rows:
        return None
    try:
        return retention_summary(on_test_split(bench.rows))
    except (KeyError, TypeError, ValueError):
        return None


def _psim_peft_asr(results: Results, _: Claim) -> Measured:
    summary = _retention_summary(results)
    if not summary:
        return Measured("—", NOT_MEASURED)
    parts = []
    for attack, entry in summary["per_attack"].items():
        asr = {m: v for m, v in entry.get("peft_asr", {}).items() if v is not None}
        if asr:
            shown = ", ".join(f"{m} {v:.3f}" for m, v in asr.items())
            parts.append(f"{attack}: {shown}")
    if not parts:
        return Measured("—", NOT_MEASURED)
    return Measured("; ".join(parts), "for comparison", "retention: PEFT victims, default budget, fresh head")


def _psim_peft_vs_full(results: Results, _: Claim) -> Measured:
    summary = _retention_summary(results)
    if not summary:
        return Measured("—", NOT_MEASURED)
    finding = summary["finding"]
    parts = []
    for attack, entry in summary["per_attack"].items():
        if entry.get("peft_retains_more") is None:
            continue
        parts.append(
            f"{attack}: PEFT {entry['peft_mean_asr']:.3f} vs full FT {entry['full_asr_at_best']:.3f} "
            f"(best-dev budget {entry['best_full_budget']})"
        )
    holds, fails = finding["holds_for"], finding["fails_for"]
    if not holds and not fails:
        return Measured("—", NOT_MEASURED)
    status = "holds" if holds and not fails else "fails" if fails and not holds else "partly"
    basis = f"holds for {', '.join(holds) or 'none'}; fails for {', '.join(fails) or 'none'}"
    return Measured("; ".join(parts), status, basis)


def _por_target(results: Results, _: Claim) -> Measured:
    summary = _retention_summary(results)
    target = (summary or {}).get("por_target") or {}
    if not target:
        return Measured("—", NOT_MEASURED)
    parts = [f"{m}: ASR {t['asr']:.3f}, CACC drop {t['cacc_drop']:+.3f}" for m, t in target.items()]
    met = [t["met"] for t in target.values()]
    # both methods must be measured and met; one met (or only one measured) is partly
    status = "met" if all(met) and len(met) == 2 else "not met" if not any(met) else "partly"
    return Measured("; ".join(parts), status, "retention: por vs control, lora and prefix")


def _por_time(results: Results, claim: Claim) -> Measured:
    from peftshield.reporting.retention import from_grid_rows

    retention = from_grid_rows(_rows(results, "retention"))
    rows = [r for r in retention if r.get("cell") == "poison" and r.get("attack") == "por"]
    seconds = [s for s in (number(r.get("poison_seconds")) for r in rows) if s is not None]
    if not seconds:
        return Measured("—", NOT_MEASURED)
    worst = max(seconds)
    return Measured(
        f"{worst:.0f} s", _status(worst, claim), f"retention: {len(seconds)} POR poisoning run(s)"
    )


def _status(value: float, claim: Claim) -> str:
    return "met" if claim.bound and _compare(value, claim.bound) else "not met"


def _calibrated(results: Results, _: Claim) -> Measured:
    by_policy: dict[str, list[tuple[float, float]]] = {}
    for row in _rows(results, "psim"):
        policy = policy_of(row)
        asr, cost = defended_asr_of(row), cacc_cost(row)
        if policy.lower().startswith("calibrated") and asr is not None and cost is not None:
            by_policy.setdefault(policy, []).append((asr, cost))
    if not by_policy:
        return Measured("—", NOT_MEASURED)
    parts, best = [], 0.0
    for policy, pairs in by_policy.items():
        ok = sum(a <= 0.02 and c <= 0.01 for a, c in pairs)
        best = max(best, ok / len(pairs))
        worst_asr, worst_cost = max(a for a, _ in pairs), max(c for _, c in pairs)
        parts.append(
            f"{policy}: {ok} of {len(pairs)} cells meet both (defended ASR max {worst_asr:.3f}, "
            f"CACC cost max {worst_cost:.3f})"
        )
    # met when one calibrated policy meets the target on every cell
    status = "met" if best == 1.0 else "not met" if best == 0.0 else "partly"
    return Measured("; ".join(parts), status, "psim: victims at each calibrated threshold")


def _overhead(bench_names: tuple[str, ...], defense: str | None) -> Callable[[Results, Claim], Measured]:
    def measure(results: Results, claim: Claim) -> Measured:
        values, used = [], []
        for name in bench_names:
            rows = _rows(results, name)
            if defense is not None and name in ("comparison", "grid"):
                # an inactive defence (a monitor with no PV to watch) costs nothing by construction
                rows = [r for r in rows if r.get("defense") == defense and not r.get("inactive")]
            # one figure per cell: a cell's threshold-policy rows share one timed pass
            per_cell = {r.get("cell") or id(r): number(r.get("overhead_ratio")) for r in rows}
            found = [v for v in per_cell.values() if v is not None]
            if found:
                values += found
                used.append(name)
        if not values:
            return Measured("—", NOT_MEASURED)
        worst = max(values)
        figure = f"max {worst:.2f}×, median {statistics.median(values):.2f}× over {len(values)} cells"
        return Measured(figure, _status(worst, claim), ", ".join(used))

    return measure


def _zoo(results: Results) -> dict[str, Any]:
    from peftshield.reporting.lmsanitator import is_zoo_row, scan_summary

    bench = results.get("lmsanitator")
    if bench is None:
        return {}
    summary, _ = scan_summary([r for r in bench.ok_rows if is_zoo_row(r)])
    return summary


def _zoo_metric(key: str, label: str) -> Callable[[Results, Claim], Measured]:
    def measure(results: Results, claim: Claim) -> Measured:
        summary = _zoo(results)
        if not summary or summary.get(key) is None:
            return Measured("—", NOT_MEASURED)
        value = summary[key]
        text = f"{value:.1f} s" if key.startswith("seconds") else f"{value * 100:.1f}%"
        return Measured(
            f"{label} {text} over {summary['n']} models", _status(value, claim), "lmsanitator zoo"
        )

    return measure


def _zoo_size(results: Results, _: Claim) -> Measured:
    summary = _zoo(results)
    if not summary:
        return Measured("—", NOT_MEASURED)
    b, c = summary["n_backdoored"], summary["n_clean"]
    return Measured(
        f"{b} backdoored + {c} clean", "met" if b >= 20 and c >= 20 else "not met", "lmsanitator zoo"
    )


def _lms_victims(results: Results) -> list[dict[str, Any]]:
    from peftshield.reporting.lmsanitator import is_oracle_row, is_zoo_row

    # the oracle monitor (planted PVs) bounds the defence; it is not the defence's result
    return [
        r
        for r in _rows(results, "lmsanitator")
        if not is_zoo_row(r) and not is_oracle_row(r) and defended_asr_of(r, prefer="purge") is not None
    ]


def _lms_asr(results: Results, _: Claim) -> Measured:
    # LMSanitator's "ASR after defence" is the purged answer's (Wei et al. 2024, §V)
    values = [defended_asr_of(r, prefer="purge") for r in _lms_victims(results)]
    if not values:
        return Measured("—", NOT_MEASURED)
    below = sum(v < 0.01 for v in values)
    figure = (
        f"{below} of {len(values)} victim cells below 1%; median defended ASR {statistics.median(values):.3f}"
    )
    # "most scenarios" is read as more than half of the measured cells
    return Measured(figure, "met" if below * 2 > len(values) else "not met", "lmsanitator victims")


def _lms_defended(results: Results, _: Claim) -> Measured:
    rows = _lms_victims(results)
    prefix = [r for r in rows if r.get("method") == "prefix"]
    basis = "lmsanitator: prefix victims" if prefix else "lmsanitator: all victims (no prefix victim found)"
    rows = prefix or rows
    pairs = [(defended_asr_of(r, prefer="purge"), number(r.get("frr"))) for r in rows]
    pairs = [(a, f) for a, f in pairs if a is not None and f is not None]
    if not pairs:
        return Measured("—", NOT_MEASURED)
    ok = sum(a <= 0.01 and f <= 0.02 for a, f in pairs)
    figure = (
        f"{ok} of {len(pairs)} cells meet both; defended ASR max {max(a for a, _ in pairs):.3f}, "
        f"FRR max {max(f for _, f in pairs):.3f}"
    )
    return Measured(figure, "met" if ok == len(pairs) else "not met" if ok == 0 else "partly", basis)


def _auroc_race(results: Results, _: Claim) -> Measured:
    from peftshield.reporting.comparison import OURS, cell_keys, is_baseline
    from peftshield.reporting.rows import cell_label

    wins = total = excluded = 0
    used = []
    # cell by cell within each run: two grids may label different cells alike
    for bench in [*results.of_kind("comparison"), *results.of_kind("grid")]:
        name = bench.name
        every = [r for r in on_test_split(expand_policies(bench.ok_rows)) if r.get("defense") is not None]
        if not every:
            continue
        keys = cell_keys(every)
        reasons = no_backdoor_reasons(every)
        cells: dict[str, dict[str, float]] = {}
        invalid: set[str] = set()
        for row, reason in zip(every, reasons, strict=True):
            value = number(row.get("auroc"))
            if value is None:
                continue
            if reason is not None:
                invalid.add(cell_label(row, keys))
                continue
            cells.setdefault(cell_label(row, keys), {}).setdefault(str(row["defense"]), value)
        for scores in cells.values():
            ours = [v for d, v in scores.items() if d in OURS]
            base = [v for d, v in scores.items() if is_baseline(d)]
            if ours and base:
                total += 1
                wins += max(ours) > max(base)
        excluded += len(invalid - set(cells))
        used.append(name)
    if not total:
        return Measured("—", NOT_MEASURED)
    status = "met" if wins == total else "not met" if wins == 0 else "partly"
    figure = f"ours above every baseline in {wins} of {total} cells"
    if excluded:
        figure += f" ({excluded} cell(s) with no backdoor to defend left out)"
    return Measured(figure, status, ", ".join(used))


def _design_tuning(results: Results, _: Claim) -> Measured:
    rows = [r for r in _rows(results, "tuning") if number(r.get("cacc")) is not None and not r.get("pooling")]
    found = {r["method"]: r for r in rows if r.get("method") in ("lora", "full")}
    if not found:
        return Measured("—", NOT_MEASURED)
    parts = []
    for method, row in sorted(found.items(), key=lambda kv: kv[0] != "lora"):
        setting = [
            f"{row[k]} {name}" for k, name in (("epochs", "epochs"), ("n_train", "examples")) if k in row
        ]
        parts.append(f"{method} {row['cacc']:.3f}" + (f" ({', '.join(setting)})" if setting else ""))
    return Measured("; ".join(parts), "for comparison", "tuning")


MEASURES: dict[str, Callable[[Results, Claim], Measured]] = {
    "psim-peft-asr": _psim_peft_asr,
    "psim-peft-vs-full": _psim_peft_vs_full,
    "issue3-por-target": _por_target,
    "issue3-por-time": _por_time,
    "issue4-calibrated": _calibrated,
    "issue4-overhead": _overhead(("psim", "comparison", "grid"), "psim"),
    "lms-accuracy": _zoo_metric("accuracy", "accuracy"),
    "lms-asr": _lms_asr,
    "issue5-accuracy": _zoo_metric("accuracy", "accuracy"),
    "issue5-fpr": _zoo_metric("fpr", "FPR"),
    "issue5-scan-time": _zoo_metric("seconds_mean", "mean"),
    "issue5-zoo": _zoo_size,
    "issue5-defended": _lms_defended,
    "issue5-overhead": _overhead(("lmsanitator", "comparison", "grid"), "monitor"),
    "issue6-auroc": _auroc_race,
    "design-tuning": _design_tuning,
}


def measure(results: Results) -> list[tuple[Claim, Measured]]:
    """Every claim with our figure (a measurement that cannot be read counts as not measured)."""
    out = []
    for item in CLAIMS:
        function = MEASURES.get(item.id)
        try:
            found = function(results, item) if function else Measured("—", NOT_MEASURED)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
            found = Measured("—", NOT_MEASURED, f"unreadable rows: {type(err).__name__}: {err}")
        out.append((item, found))
    return out


def claims_section(results: Results) -> Section:
    """The "claims vs measured" table."""
    pairs = measure(results)
    body = [[c.who, c.statement, c.figure, m.figure, m.status, m.basis, c.source] for c, m in pairs]
    columns = ["who", "claim", "their figure", "our figure", "status", "measured on", "source"]
    counts: dict[str, int] = {}
    for _, m in pairs:
        counts[m.status] = counts.get(m.status, 0) + 1
    tally = ", ".join(f"{n} {status}" for status, n in counts.items())
    return Section(
        "Claims vs measured",
        [
            Text(
                "The seed papers' claims (from their abstracts; sources in docs/design.md) "
                "and "
                "the issues' targets, beside our figures from the results above. "
                f"Tally: {tally}."
            ),
            Table(columns, body, "Claims and targets vs our measurements"),
        ],
    )
