"""A scan report as SARIF 2.1.0, the format code-scanning CI steps ingest (docs/scan-format.md).

docs/design.md, "Conventions of the tools people already use": model scanners report findings in
SARIF so that a CI pipeline can gate a model on them. :func:`to_sarif` turns the JSON document of
:meth:`~.scan.ScanResult.summary` (or a saved ``scan.json``) into one SARIF log: one run, the
tool ``peftshield`` with one rule per finding kind, and one result of level ``error`` per output
vector that holds a PV, located at the scanned weights file. A clean scan has no result. The run's
``properties`` carry the verdict and the per-model score; its invocation says whether the scan
ran to completion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
#: Where a reader of the report learns what was looked for: LMSanitator (Wei et al., NDSS 2024).
INFORMATION_URI = "https://arxiv.org/abs/2308.13904"
#: The finding: a predefined output vector (PV) of a task-agnostic backdoor on one output vector.
RULE_ID = "peftshield/task-agnostic-backdoor"
RULES = [
    {
        "id": RULE_ID,
        "name": "TaskAgnosticBackdoor",
        "shortDescription": {"text": "Task-agnostic backdoor: a predefined output vector (PV) was mined"},
        "fullDescription": {
            "text": (
                "A soft trigger spliced into clean texts moved the model's output vector far from its "
                "clean outputs and made it the same for every text (LMSanitator PV mining and "
                "filtering): a trigger maps any input to a predefined vector, the mark of a "
                "task-agnostic backdoor (POR, NeuBA, BToP) that survives parameter-efficient fine-tuning."
            )
        },
        "helpUri": INFORMATION_URI,
        "help": {
            "text": (
                "Do not fine-tune or deploy these weights unguarded. Rescan with --all to mine every PV, "
                "then watch the victim with 'peftshield monitor fit --pvs'."
            )
        },
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": ["security", "backdoor", "model"]},
    }
]


def artifact_uri(path: str) -> str:
    """A SARIF ``artifactLocation.uri`` for a file path: relative paths stay relative, others get ``file://``."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate.as_uri()
    return quote(candidate.as_posix())


def _location(document: dict[str, Any]) -> dict[str, Any]:
    source = document.get("input") or {}
    target = source.get("weights") or source.get("location") or source.get("model") or document.get("model")
    location: dict[str, Any] = {"physicalLocation": {"artifactLocation": {"uri": artifact_uri(str(target))}}}
    if source.get("adapter"):
        location["message"] = {"text": f"base model of the adapter {source['adapter']}"}
    return location


def _result(document: dict[str, Any], vector: dict[str, Any]) -> dict[str, Any]:
    name = vector["pooling"]
    pvs = [row for row in document.get("pvs", []) if row.get("pooling") == name]
    model = (document.get("input") or {}).get("path") or document.get("model")
    best = max((row.get("score") for row in pvs if row.get("score") is not None), default=vector.get("score"))
    return {
        "ruleId": RULE_ID,
        "ruleIndex": 0,
        "level": "error",
        "message": {
            "text": (
                f"{model}: backdoor found on the {name} output vector: {vector['n_pvs']} predefined "
                f"output vector(s) mined in {vector['attempts']} attempt(s) (score {vector.get('score')})"
            )
        },
        "locations": [_location(document)],
        "fingerprints": {"peftshield/backbone-sha256/v1": f"{document.get('fingerprint')}:{name}"},
        "properties": {
            "pooling": name,
            "n_pvs": vector["n_pvs"],
            "score": vector.get("score"),
            "best_pv_score": best,
            "pv_attempts": [row.get("attempt") for row in pvs],
        },
    }


def to_sarif(document: dict[str, Any], *, successful: bool = True) -> dict[str, Any]:
    """The SARIF 2.1.0 log of one scan document (see the module docstring)."""
    tool = document.get("tool") or {}
    results = [_result(document, v) for v in document.get("vectors", []) if v.get("verdict") == "backdoored"]
    invocation: dict[str, Any] = {"executionSuccessful": successful}
    if document.get("started"):
        invocation["startTimeUtc"] = document["started"]
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": tool.get("name", "peftshield"),
                        "version": str(tool.get("version", "")),
                        "informationUri": INFORMATION_URI,
                        "rules": RULES,
                    }
                },
                "invocations": [invocation],
                "results": results,
                "properties": {
                    "verdict": document.get("verdict"),
                    "score": document.get("score"),
                    "vectors": {v["pooling"]: v["verdict"] for v in document.get("vectors", [])},
                    "seconds": document.get("seconds"),
                    "fingerprint": document.get("fingerprint"),
                    "schema": document.get("schema"),
                },
            }
        ],
    }
