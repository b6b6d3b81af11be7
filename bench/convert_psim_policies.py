"""One-off conversion (issue 16, item 2): ``bench/results/psim.json`` to one row per threshold policy.

The file was written by the former ``bench/bench_psim.py``, whose victim rows nested their four
threshold policies (``fixed@0.7``, ``calibrated@0.01/0.02/0.05``) under ``policies`` (and, in a
control row, under every ``by_attack`` entry). This rewrites each such row as one row per policy,
the shape of every other result file and of ``peftshield bench run bench/grids/psim.json``:
``threshold`` = the policy's name, ``threshold_value`` = its cut, the policy's figures at the top
level (``defended_asr`` renamed ``defended_asr_reject``, the grid's name for a rejected input).
Its ``overhead_ratio`` (median of 3 interleaved repeats, not the grid's protocol) becomes
``overhead_ratio_median3`` so that the name ``overhead_ratio`` has one meaning (bench/README.md).

Nothing is re-measured: every number is copied from the old row. Rows without nesting (poison
and fit rows) are kept as they are; running it again changes nothing. Run once::

    python bench/convert_psim_policies.py bench/results/psim.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OLD_PROTOCOL = "median-of-3-interleaved-repeats"


def _policy_fields(policy: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in policy.items() if k != "threshold"}
    if "defended_asr" in out:
        out["defended_asr_reject"] = out.pop("defended_asr")
    return out


def flatten(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of one old row: one per policy (an unnested row is returned as it is)."""
    policies = row.get("policies")
    if not isinstance(policies, dict):
        return [row]
    base = {k: v for k, v in row.items() if k not in ("policies", "by_attack", "overhead_ratio")}
    if "overhead_ratio" in row:
        base["overhead_ratio_median3"] = row["overhead_ratio"]
        base["overhead_protocol"] = OLD_PROTOCOL
    out = []
    for name, policy in policies.items():
        new = {**base, "threshold": name, "threshold_value": policy["threshold"], **_policy_fields(policy)}
        if isinstance(row.get("by_attack"), dict):
            new["by_attack"] = {
                attack: {k: v for k, v in sub.items() if k != "policies"}
                | {"threshold_value": sub["policies"][name]["threshold"]}
                | _policy_fields(sub["policies"][name])
                for attack, sub in row["by_attack"].items()
            }
        out.append(new)
    return out


def main(path: str) -> None:
    file = Path(path)
    data = json.loads(file.read_text(encoding="utf-8"))
    before = len(data["rows"])
    data["rows"] = [new for row in data["rows"] for new in flatten(row)]
    data["meta"]["converted"] = (
        "one row per threshold policy by bench/convert_psim_policies.py (issue 16): numbers copied, "
        "not re-measured; overhead_ratio (median of 3 repeats) renamed overhead_ratio_median3"
    )
    tmp = file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(file)
    print(f"{file}: {before} rows -> {len(data['rows'])} rows")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/psim.json")
