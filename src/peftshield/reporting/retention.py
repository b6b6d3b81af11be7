"""The retention benchmark (issue 3): does a weight-poisoning backdoor survive the victim's tuning?

PSIM (Zhao et al., NAACL Findings 2024, §1 and §3) finds that PEFT keeps a backdoor planted in the
pretrained weights far more than full fine-tuning does. The grid ``bench/grids/retention.json``
(run by ``peftshield bench run``) measures it on our backbones; its summary and tables live here.
The committed ``bench/results/retention.json`` was written by the former script
``bench/bench_retention.py``; a grid run's rows are read through :func:`from_grid_rows`.

Rows (``bench/results/retention.json``): ``cell: victim`` rows keyed by attack (``control`` =
an unpoisoned backbone), method, full-FT budget and head, with ``cacc`` and ``asr`` (PSIM
convention for task-specific attacks, LMSanitator's for task-agnostic ones); control rows hold
``by_attack`` (the false-trigger ASR of every attack's triggers on a clean victim); ``cell:
poison`` rows record each poisoning and its wall time.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from peftshield.reporting.document import Bullets, Figure, Section, Table, Text, fmt, fmt_seconds
from peftshield.reporting.render_markdown import table_markdown
from peftshield.reporting.results import Benchmark, is_error
from peftshield.reporting.rows import close_section
from peftshield.reporting.svg import bar_chart
from peftshield.utils.labels import budget_label

PEFT_METHODS = ("lora", "prompt", "ptuning", "prefix")
METHOD_COLUMNS = ("full", *PEFT_METHODS)
_BUDGET_RE = re.compile(r"-(lr[0-9.e+-]+x\d+)$")


def _is_grid_row(row: dict[str, Any]) -> bool:
    return (
        "cell" in row and "grid_cell" not in row and isinstance(row.get("config"), dict) and "stages" in row
    )


def from_grid_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``peftshield bench run bench/grids/retention.json`` in the keys this module reads.

    A grid row names its cell by labels (attack ``none`` = the control; a full-FT budget is a
    method entry labelled ``<method>-lr<LR>x<EPOCHS>``, docs/design.md "Benchmark result files"): it becomes a
    ``cell: victim`` row with ``attack`` (``control``), ``method`` (the method's name), ``budget``
    (``default`` or ``lr<LR>x<EPOCHS>``), ``head``, ``lr`` and ``epochs``; each poisoned backbone
    also yields one ``cell: poison`` row (its poisoning time and the attacker's own figures). Rows
    of the former script's file (``cell: victim`` / ``poison``) pass through unchanged.
    """
    out: list[dict[str, Any]] = []
    poisons: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not _is_grid_row(row) or is_error(row):
            out.append(row)
            continue
        config = row["config"]
        method = config.get("method") or {}
        if method.get("name") in (None, "none"):
            out.append(row)
            continue
        recipe = method.get("config") or {}
        match = _BUDGET_RE.search(str(row.get("method", "")))
        budget = "default"
        if match and str(row["method"]).startswith(f"{method['name']}-"):
            budget = budget_label(recipe["lr"], recipe["epochs"]) if "lr" in recipe else match.group(1)
        attack = "control" if (config.get("attack") or {}).get("name") == "none" else row["attack"]
        new = {
            **row,
            "cell": "victim",
            "grid_cell": row["cell"],
            "attack": attack,
            "method": method["name"],
            "budget": budget,
            "head": method.get("head") or "fresh",
            "lr": recipe.get("lr"),
            "epochs": recipe.get("epochs"),
        }
        out.append(new)
        poison = (row.get("stages") or {}).get("poison")
        if attack != "control" and isinstance(poison, dict) and poison.get("key") not in poisons:
            poisons[poison["key"]] = {
                "cell": "poison",
                "attack": attack,
                "corpus": (config.get("attack") or {}).get("corpus"),
                "kind": row.get("kind"),
                "poison_seconds": row.get("poison_seconds"),
                "triggers": poison.get("triggers"),
                "target": poison.get("target"),
                "attacker_metrics": poison.get("attacker_metrics") or {},
            }
    return out + list(poisons.values())


def attack_kind(attack: str, rows: list[dict] | None = None) -> str:
    """``task-specific`` or ``task-agnostic``, as the result rows record it.

    From a row's ``kind`` (the poisoning rows carry it), else from a victim row's ASR convention
    (``lms`` = task-agnostic); ``task-specific`` when no row says. The report reads result files
    only, never the attack code (docs/design.md, "Layers").
    """
    for row in rows or []:
        if row.get("attack") == attack and row.get("kind") in ("task-specific", "task-agnostic"):
            return row["kind"]
    for row in rows or []:
        if row.get("attack") == attack and row.get("asr_convention") in ("psim", "lms"):
            return "task-agnostic" if row["asr_convention"] == "lms" else "task-specific"
    return "task-specific"


def _victims(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["attack"], r["method"], r["budget"], r["head"]): r for r in rows if r.get("cell") == "victim"}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _control_asr(row: dict | None, attack: str, metric: str) -> float | None:
    if row is None or "error" in row:
        return None
    return row.get("by_attack", {}).get(attack, {}).get(metric)


def summarize(rows: list[dict], attacks: list[str], budgets: list[str]) -> dict:
    """Per attack: mean ASR under PEFT vs under full FT at its best-dev budget, and which is larger."""
    victims = _victims([r for r in rows if "error" not in r])
    summary: dict[str, Any] = {"per_attack": {}}
    holds, fails, incomplete = [], [], []
    for attack in attacks:
        kind = attack_kind(attack, rows)
        metrics = ["asr", "asr_dominant"] if kind == "task-agnostic" else ["asr"]
        peft = {m: victims.get((attack, m, "default", "fresh")) for m in PEFT_METHODS}
        peft = {m: r for m, r in peft.items() if r is not None}
        full = {b: victims.get((attack, "full", b, "fresh")) for b in ["default", *budgets]}
        full = {b: r for b, r in full.items() if r is not None}
        entry: dict[str, Any] = {
            "kind": kind,
            "asr_convention": "psim" if kind == "task-specific" else "lms",
            "peft_methods_done": sorted(peft),
            "full_budgets_done": sorted(full),
        }
        for metric in metrics:
            entry[f"peft_{metric}"] = {m: r.get(metric) for m, r in peft.items()}
            entry[f"peft_mean_{metric}"] = _mean([r.get(metric) for r in peft.values()])
            entry[f"control_peft_mean_{metric}"] = _mean(
                [_control_asr(victims.get(("control", m, "default", "fresh")), attack, metric) for m in peft]
            )
        entry["peft_cacc"] = {m: r["cacc"] for m, r in peft.items()}
        entry["full_by_budget"] = {
            b: {"lr": r["lr"], "epochs": r["epochs"], "dev_accuracy": r["dev_accuracy"], "cacc": r["cacc"]}
            | {metric: r.get(metric) for metric in metrics}
            for b, r in full.items()
        }
        if full:
            best = max(full, key=lambda b: full[b]["dev_accuracy"])  # the first on ties
            entry["best_full_budget"] = best
            for metric in metrics:
                entry[f"full_{metric}_at_best"] = full[best].get(metric)
                entry[f"full_min_{metric}"] = min(r.get(metric) for r in full.values())
            entry["control_full_asr"] = _control_asr(
                victims.get(("control", "full", "default", "fresh")), attack, "asr"
            )
        keep = victims.get((attack, "lora", "default", "keep"))
        if keep is not None:
            entry["lora_head_keep"] = {"cacc": keep["cacc"], "asr": keep["asr"]}
        peft_mean, full_best = entry.get("peft_mean_asr"), entry.get("full_asr_at_best")
        if peft_mean is None or full_best is None:
            entry["peft_retains_more"] = None
            incomplete.append(attack)
        else:
            entry["peft_retains_more"] = bool(peft_mean > full_best)
            entry["margin"] = peft_mean - full_best
            (holds if entry["peft_retains_more"] else fails).append(attack)
        if len(peft) < len(PEFT_METHODS) or len(full) < 1 + len(budgets):
            entry["partial"] = True
        summary["per_attack"][attack] = entry
    summary["finding"] = {
        "claim": "mean ASR under PEFT > ASR under full FT at the full-FT budget with the best dev accuracy",
        "holds_for": holds,
        "fails_for": fails,
        "not_measured": incomplete,
    }
    # The target: POR ASR >= 0.95 under LoRA and prefix with CACC within 2 points of the control.
    target = {}
    for method in ("lora", "prefix"):
        row = victims.get(("por", method, "default", "fresh"))
        control = victims.get(("control", method, "default", "fresh"))
        if row is None or control is None:
            continue
        drop = control["cacc"] - row["cacc"]
        target[method] = {
            "asr": row["asr"],
            "cacc_drop": drop,
            "met": bool(row["asr"] >= 0.95 and drop <= 0.02),
        }
    summary["por_target"] = target
    return summary


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def retention_tables(
    rows: list[dict], attacks: list[str], methods: list[str], budgets: list[str], corpus: str = "movies"
) -> list[Table]:
    """Attack x method (CACC / ASR, with the control's false-trigger ASR), then the full-FT budget axis."""
    victims = _victims(rows)
    methods = [m for m in METHOD_COLUMNS if m in methods]

    def cell(row: dict | None, with_asr: bool = True, control_for: str | None = None) -> str:
        if row is None:
            return "—"
        if "error" in row:
            return "error"
        if control_for is not None:
            return f"{_fmt(row['cacc'])} / {_fmt(_control_asr(row, control_for, 'asr'))}"
        return f"{_fmt(row['cacc'])} / {_fmt(row.get('asr'))}" if with_asr else _fmt(row["cacc"])

    caption = (
        f"CACC / ASR on {corpus} test (ASR: PSIM convention for task-specific, LMSanitator's for por/neuba;"
        " full FT at its default budget)"
    )
    body = []
    for attack in attacks:
        body.append([attack] + [cell(victims.get((attack, m, "default", "fresh"))) for m in methods])
        if any((attack, m, "default", "keep") in victims for m in methods):
            line = [cell(victims.get((attack, m, "default", "keep"))) for m in methods]
            body.append([f"{attack} (attacker's head kept)", *line])
        line = [cell(victims.get(("control", m, "default", "fresh")), control_for=attack) for m in methods]
        body.append([f"control, {attack} triggers", *line])
    out = [Table(["backbone", *methods], body, caption)]
    if "full" in methods:
        names = ["default", *budgets]
        body = []
        for attack in ["control", *attacks]:
            found = {b: victims.get((attack, "full", b, "fresh")) for b in names}
            ok = {b: r for b, r in found.items() if r is not None and "error" not in r}
            best = max(ok, key=lambda b: ok[b]["dev_accuracy"]) if ok else None
            cells = []
            for b in names:
                row = found[b]
                if row is None or "error" in row:
                    cells.append(cell(row))
                    continue
                text = cell(row, with_asr=attack != "control") + f" ({_fmt(row['dev_accuracy'])})"
                cells.append(text + (" *" if b == best else ""))
            body.append([attack, *cells])
        caption = "Full fine-tuning budgets: CACC / ASR (dev accuracy); * = best dev accuracy"
        out.append(Table(["backbone", *names], body, caption))
    return out


def tables(
    rows: list[dict], attacks: list[str], methods: list[str], budgets: list[str], corpus: str = "movies"
) -> str:
    """Markdown: attack x method (CACC / ASR), then the full-FT budget axis."""
    return "\n\n".join(
        f"{t.caption}\n\n{table_markdown(t)}"
        for t in retention_tables(rows, attacks, methods, budgets, corpus)
    )


def finding_lines(summary: dict) -> str:
    """One line per attack: does PEFT retain the backdoor more than full FT; the POR target."""
    lines = []
    for attack, entry in summary["per_attack"].items():
        if entry["peft_retains_more"] is None:
            lines.append(
                f"- {attack}: not measured yet "
                f"(PEFT {entry['peft_methods_done']}, full {entry['full_budgets_done']})"
            )
            continue
        verdict = (
            "PEFT retains MORE than full FT" if entry["peft_retains_more"] else "PEFT does NOT retain more"
        )
        lines.append(
            f"- {attack}: mean ASR under PEFT {entry['peft_mean_asr']:.3f} vs full FT at its best-dev budget "
            f"({entry['best_full_budget']}) {entry['full_asr_at_best']:.3f} -> {verdict}"
            + (" (partial)" if entry.get("partial") else "")
        )
    for method, t in summary.get("por_target", {}).items():
        lines.append(
            f"- por target under {method}: ASR {t['asr']:.3f} (>= 0.95?), CACC drop {t['cacc_drop']:+.3f} "
            f"(<= 0.02?) -> {'met' if t['met'] else 'not met'}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The report section


def axes(rows: list[dict]) -> tuple[list[str], list[str], list[str]]:
    """The attacks, methods and extra full-FT budgets that the rows cover.

    Attacks in the order of the rows, task-specific ones first (the order of the attack registry
    the benchmark runs them in, read from the rows rather than from the attack code).
    """
    victims = [r for r in rows if r.get("cell") == "victim" and all(k in r for k in ("attack", "method"))]
    found = list(dict.fromkeys(r["attack"] for r in victims if r["attack"] != "control"))
    # a control victim names the attacks whose triggers it was measured with
    for row in victims:
        if row["attack"] == "control" and isinstance(row.get("by_attack"), dict):
            found += [a for a in row["by_attack"] if a not in found]
    attacks = sorted(found, key=lambda a: (attack_kind(a, rows) != "task-specific", found.index(a)))
    methods = [m for m in METHOD_COLUMNS if any(r["method"] == m for r in victims)]
    budgets = list(
        dict.fromkeys(r.get("budget") for r in victims if r.get("budget") not in (None, "default"))
    )
    return attacks, methods, budgets


def retention_summary(rows: list[dict]) -> dict:
    """:func:`summarize` over the attacks and budgets the rows cover (failed cells left out)."""
    rows = from_grid_rows(rows)
    attacks, _, budgets = axes(rows)
    ok = [r for r in rows if not is_error(r) and all(k in r for k in ("attack", "method", "budget", "head"))]
    return summarize(ok, attacks, budgets)


def asr_figure(rows: list[dict]) -> Figure | None:
    """Bars: ASR per attack (groups) and method (bars), default budget, fresh head; ticks = control."""
    attacks, methods, _ = axes(rows)
    victims = _victims([r for r in rows if not is_error(r) and "head" in r and "budget" in r])
    if not attacks or not methods:
        return None
    series, refs = [], []
    for method in methods:
        values = [(victims.get((a, method, "default", "fresh")) or {}).get("asr") for a in attacks]
        control = victims.get(("control", method, "default", "fresh"))
        series.append((method, values))
        refs.append([_control_asr(control, a, "asr") for a in attacks])
    if all(v is None for _, vals in series for v in vals):
        return None
    svg = bar_chart(
        "Backdoor retention: ASR per attack and victim method",
        attacks,
        series,
        y_label="ASR",
        y_max=1.0,
        refs=refs,
        ref_label="control (false trigger)",
    )
    caption = (
        "ASR of each victim (PSIM convention for task-specific attacks, LMSanitator's for task-agnostic "
        "ones; full FT at its default budget, fresh head). Black ticks: the same triggers on an "
        "unpoisoned control victim of that method (the false-trigger rate)."
    )
    return Figure("Backdoor retention: ASR per attack and victim method", svg, caption)


def poison_table(rows: list[dict]) -> Table | None:
    """Each poisoning: attack, corpus, kind, wall time, triggers, the attacker's own CACC / ASR."""
    poisons = [r for r in rows if r.get("cell") == "poison" and not is_error(r)]
    if not poisons:
        return None
    body = []
    for r in poisons:
        metrics = r.get("attacker_metrics") if isinstance(r.get("attacker_metrics"), dict) else {}
        triggers = r.get("triggers") if isinstance(r.get("triggers"), list) else []
        body.append(
            [
                fmt(r.get("attack")),
                fmt(r.get("corpus")),
                fmt(r.get("kind")),
                fmt_seconds(r.get("poison_seconds")),
                ", ".join(map(str, triggers)) or "—",
                fmt(r.get("target")),
                fmt(metrics.get("cacc")),
                fmt(metrics.get("asr")),
            ]
        )
    columns = [
        "attack",
        "corpus",
        "kind",
        "poisoning s",
        "triggers",
        "target",
        "attacker CACC",
        "attacker ASR",
    ]
    return Table(columns, body, "Poisoning runs: wall time and the attacker's own model")


def retention_section(bench: Benchmark) -> Section:
    """The report section of the retention benchmark (the former script's rows or a grid's)."""
    rows = from_grid_rows(bench.rows)
    section = Section("Retention (weight poisoning vs victim tuning)")
    section.blocks.append(
        Text(
            "Does a backdoor planted in the pretrained weights survive the victim's fine-tuning, and does "
            "it survive PEFT better than full fine-tuning (PSIM's central finding)? Each poisoned backbone "
            "is tuned by every method on clean data; the control is an unpoisoned backbone measured with "
            "the same triggers."
        )
    )
    attacks, methods, budgets = axes(rows)
    if attacks or methods:
        corpora = {r.get("corpus") for r in rows if r.get("cell") == "victim" and r.get("corpus")}
        corpus = corpora.pop() if len(corpora) == 1 else "victim"
        section.blocks += retention_tables(rows, attacks, methods, budgets, corpus)
        lines = finding_lines(retention_summary(rows)).splitlines()
        if lines:
            section.blocks.append(Bullets([line.removeprefix("- ") for line in lines]))
    figure = asr_figure(rows)
    if figure is not None:
        section.blocks.append(figure)
    table = poison_table(rows)
    if table is not None:
        section.blocks.append(table)
    return close_section(section, rows, None if bench.ok_rows else "No cell of this benchmark has finished.")
