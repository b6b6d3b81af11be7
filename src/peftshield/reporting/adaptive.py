"""Adaptive attacks (issue 13, item 6): each attack shaped against one defence, beside its plain form.

Rows come from grid configs such as ``bench/grids/adaptive_psim.json`` (``benchmark: adaptive``):
an adaptive attack's rows carry ``adaptive: <defence>`` (:mod:`peftshield.attacks.adaptive`), the
plain attacks of the same run do not. Per threshold policy the section prints the before / after
table and one line per adaptive cell that sets its defended ASR beside the plain attack's of the
same method and policy (the plain attack is the one it is built from: ``badnets`` for
``badnets-capped``), so that a defence that fails against the adaptive form is said plainly.
"""

from __future__ import annotations

from typing import Any

from peftshield.evaluation.validity import no_backdoor_reasons
from peftshield.reporting.document import Section, Text, fmt
from peftshield.reporting.psim import detector_columns
from peftshield.reporting.results import Benchmark
from peftshield.reporting.rows import (
    asr_of,
    close_section,
    defended_asr_of,
    expand_policies,
    has_metrics,
    policy_of,
)
from peftshield.reporting.tables import rows_table


def _plain_name(attack: str) -> str:
    """The attack an adaptive one is built from, by the naming rule ``<plain>-<variant>``."""
    return attack.split("-", 1)[0]


def _verdict(row: dict[str, Any], plain: dict[str, Any] | None, policy: str, no_backdoor: str | None) -> str:
    """One line: the adaptive cell's defended ASR against the plain attack's, and what it means."""
    name, method = row.get("attack"), row.get("method")
    after, before = defended_asr_of(row), asr_of(row)
    text = f"{name} / {method} at {policy} (against {row.get('adaptive')}): ASR {fmt(before)} -> {fmt(after)}"
    if plain is not None:
        text += f"; plain {plain.get('attack')}: {fmt(asr_of(plain))} -> {fmt(defended_asr_of(plain))}"
    if after is None or before is None:
        return text + "."
    if no_backdoor:
        return text + f" - no backdoor to defend ({no_backdoor}): says nothing."
    evaded = plain is not None and (defended_asr_of(plain) or 0.0) + 0.05 < after
    text += " - **the adaptive attack gets through where the plain one did not.**" if evaded else "."
    if row.get("inactive"):
        text += f" The defence was inactive: {row['inactive']}."
    if evaded and row.get("scan_verdict") == "backdoored":
        text += " The model-level scan still calls the backbone backdoored, so it can be rejected before use."
    return text


def adaptive_section(bench: Benchmark) -> Section:
    """Before / after tables per policy and the adaptive-vs-plain lines."""
    section = Section("Adaptive attacks (each shaped against one defence)")
    section.blocks.append(
        Text(
            "Each adaptive attack (attacks/adaptive) beside the plain attack it is built from, in one run "
            "and at the same sizes. Defended ASR counts a rejected triggered input as blocked; a line "
            "says where the adaptive form gets through (defended ASR more than 5 points above the plain "
            "attack's at the same method and threshold policy)."
        )
    )
    rows = expand_policies([r for r in bench.ok_rows if has_metrics(r)])
    reasons = {id(r): why for r, why in zip(rows, no_backdoor_reasons(rows), strict=True)}
    keys = [k for k in ("attack", "adaptive", "method", "defense") if any(r.get(k) is not None for r in rows)]
    for policy in dict.fromkeys(policy_of(r) for r in rows):
        members = [r for r in rows if policy_of(r) == policy]
        caption = f"Before / after at threshold {policy}" if policy != "—" else "Undefended victims"
        table = rows_table(members, detector_columns(keys), caption)
        if table is not None:
            section.blocks.append(table)
        plain = {
            (r.get("attack"), r.get("method"), r.get("defense")): r for r in members if not r.get("adaptive")
        }
        lines = [
            _verdict(
                r,
                plain.get((_plain_name(str(r.get("attack"))), r.get("method"), r.get("defense"))),
                policy,
                reasons[id(r)],
            )
            for r in members
            if r.get("adaptive") and r.get("defense") not in (None, "none")
        ]
        if lines:
            section.blocks.append(Text("\n".join(f"- {line}" for line in lines)))
    return close_section(section, bench.rows, None if rows else "No cell of this benchmark has finished.")
