"""`peftshield report`: fixture result files of every known benchmark shape -> report.md and report.html."""

import base64
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from peftshield.cli import main
from peftshield.errors import PeftshieldError
from peftshield.reporting import build
from peftshield.reporting.build import build_report, write_report
from peftshield.reporting.render_html import render_html
from peftshield.reporting.render_markdown import render_markdown
from peftshield.reporting.results import load_results
from peftshield.reporting.retention import tables
from peftshield.reporting.rows import expand_policies
from peftshield.reporting.svg import bar_chart, histogram, line_chart, standalone

META = {
    "git": "0123456789abcdef",
    "dirty": False,
    "versions": {"peftshield": "0.1.0", "torch": "9.9.9-fixture"},
    "machine": "fixture box",
    "started": "2026-01-01T00:00:00+00:00",
    "command": "python bench/fixture.py",
}


def _roc(a: float) -> dict:
    return {"fpr": [0.0, 0.1, 0.5, 1.0], "tpr": [0.0, a, min(1.0, a + 0.2), 1.0]}


def _victim(attack, method, budget="default", head="fresh", **extra):
    row = {"cell": "victim", "attack": attack, "method": method, "budget": budget, "head": head, "seed": 0}
    row.update({"corpus": "movies", "lr": 1e-3, "epochs": 3, "dev_accuracy": 0.8, "cacc": 0.8})
    row.update(extra)
    return row


def fixture_results(root: Path) -> Path:
    """Write one result file per known benchmark shape (plus an unknown one, a grid split over two files)."""

    def put(rel: str, benchmark: str, rows: list, summary=None, meta=META) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"benchmark": benchmark, "meta": meta, "rows": rows, "summary": summary or {}}
        path.write_text(json.dumps(data))

    put(
        "tuning.json",
        "tuning",
        [
            {
                "method": "full",
                "cacc": 0.8341,
                "dev_accuracy": 0.83,
                "trainable_params": 22713986,
                "epochs": 2,
            },
            {"method": "lora", "cacc": 0.8287, "dev_accuracy": 0.83, "trainable_params": 74498, "epochs": 3},
            {"method": "lora", "pooling": "cls", "cacc": 0.8088, "config": {"method": "lora", "lr": 5e-05}},
            {"cell": "throughput", "method": "lora", "throughput_ratio": 1.0234},
        ],
    )
    control_by_attack = {
        "por": {"asr": 0.0634, "asr_lms": 0.0634, "asr_convention": "lms"},
        "badnets": {"asr": 0.2903, "asr_lms": 0.02, "asr_convention": "psim"},
    }
    put(
        "retention.json",
        "retention",
        [
            _victim("control", "lora", cacc=0.788, by_attack=control_by_attack),
            _victim("control", "full", cacc=0.798, dev_accuracy=0.804, by_attack=control_by_attack),
            {
                "cell": "poison",
                "attack": "por",
                "corpus": "wiki",
                "kind": "task-agnostic",
                "poison_seconds": 321.5,
            },
            _victim("por", "lora", cacc=0.784, asr=1.0, asr_lms=1.0, asr_dominant=1.0, asr_convention="lms"),
            _victim("por", "full", cacc=0.816, asr=0.9911, asr_lms=0.9911, asr_dominant=1.0),
            _victim("por", "full", "lr5e-5x3", cacc=0.812, dev_accuracy=0.816, asr=0.9922, asr_dominant=1.0),
            _victim("badnets", "lora", cacc=0.8, asr=0.9073, asr_convention="psim"),
            _victim("badnets", "lora", head="keep", cacc=0.802, asr=0.9798),
            {**_victim("badnets", "prefix"), "error": "RuntimeError: out of memory\ntraceback line"},
        ],
    )
    put(
        "psim.json",
        "psim",
        [
            # one row per threshold policy
            {
                "attack": "badnets",
                "method": "lora",
                "defense": "psim",
                "threshold": "fixed@0.7",
                "cacc": 0.8,
                "asr": 0.9073,
                "defended_cacc": 0.61,
                "defended_asr": 0.0511,
                "frr": 0.2,
                "far": 0.05,
                "auroc": 0.9432,
                "overhead_ratio": 1.42,
                "roc": _roc(0.7),
                "tradeoff": {"threshold": [0.5, 0.7, 0.9], "frr": [0.5, 0.2, 0.01], "asr": [0.0, 0.05, 0.6]},
            },
            {
                "attack": "badnets",
                "method": "lora",
                "defense": "psim",
                "threshold": "calibrated@0.02",
                "cacc": 0.8,
                "asr": 0.9073,
                "defended_cacc": 0.7901,
                "defended_asr": 0.0123,
                "frr": 0.02,
                "far": 0.01,
                "auroc": 0.9432,
                "overhead_ratio": 1.42,
                "roc": _roc(0.7),
            },
            # one row nesting its policies
            {
                "attack": "badnets",
                "method": "prefix",
                "defense": "psim",
                "cacc": 0.79,
                "asr": 0.6895,
                "auroc": 0.8765,
                "roc": _roc(0.5),
                "policies": {
                    "fixed@0.7": {"defended_cacc": 0.7, "defended_asr": 0.0456, "frr": 0.1, "far": 0.06},
                    "calibrated@0.02": {
                        "defended_cacc": 0.78,
                        "defended_asr": 0.2351,
                        "frr": 0.02,
                        "far": 0.3,
                        "threshold": 0.83,
                    },
                },
            },
            {
                "attack": "por",
                "method": "lora",
                "defense": "psim",
                "threshold": "calibrated@0.02",
                "cacc": 0.78,
                "asr_lms": 1.0,
                "defended_cacc": 0.77,
                "defended_asr_lms": 0.6789,
                "frr": 0.02,
                "auroc": 0.61,
            },
            # the control victim nests its policies (false rejections only), as bench_psim.py writes it
            {
                "cell": "victim",
                "attack": "control",
                "method": "lora",
                "defense": "psim",
                "cacc": 0.79,
                "policies": {"fixed@0.7": {"threshold": 0.7, "defended_cacc": 0.6, "frr": 0.2468}},
            },
            {"cell": "fit", "defense": "psim", "fit_seconds": 33.3, "psim_method": "ptuning"},
            {"cell": "poison", "attack": "badnets", "corpus": "amazon", "poison_seconds": 195.8},
        ],
    )
    zoo = [
        {
            "model": "por-s0",
            "attack": "por",
            "label": "backdoored",
            "verdict": "backdoored",
            "seconds": 61.0,
            "recovery_rate": 1.0,
        },
        {
            "model": "por-s1",
            "attack": "por",
            "label": "backdoored",
            "verdict": "backdoored",
            "seconds": 75.0,
            "pv_recovery": {"recovery_rate": 0.5},
        },
        {"model": "neuba-s0", "attack": "neuba", "label": "backdoored", "verdict": "clean", "seconds": 190.0},
        {"model": "clean-0", "label": "clean", "verdict": "clean", "seconds": 170.0},
        {"model": "clean-1", "label": "clean", "verdict": "clean", "seconds": 180.0},
        {"model": "clean-2", "label": "clean", "verdict": "backdoored", "seconds": 95.0},
    ]
    # the victim tier's search-mode rescan of a zoo model: not one more zoo model
    search = [{"cell": "search-scan", "model": "por-s1", "label": "backdoored", "verdict": "backdoored"}]
    victims = [
        {
            "attack": "por",
            "method": "prefix",
            "cacc": 0.75,
            "asr_lms": 0.98,
            "defended_asr": 0.0071,
            "frr": 0.015,
            "overhead_ratio": 1.031,
        },
        {
            "attack": "neuba",
            "method": "prefix",
            "cacc": 0.76,
            "asr_lms": 0.91,
            "defended_asr": 0.0432,
            "frr": 0.018,
            "overhead_ratio": 1.044,
        },
    ]
    put("lmsanitator.json", "lmsanitator", zoo + search + victims)
    cell_a = {"backbone": "minilm", "attack": "badnets", "method": "lora"}
    cell_b = {"backbone": "minilm", "attack": "por", "method": "prefix"}
    put(
        "comparison.json",
        "comparison",
        [
            {**cell_a, "defense": "none", "cacc": 0.8, "asr": 0.9},
            {
                **cell_a,
                "defense": "psim",
                "auroc": 0.95,
                "defended_cacc": 0.79,
                "defended_asr": 0.03,
                "overhead_ratio": 1.4,
                "roc": _roc(0.8),
            },
            {
                **cell_a,
                "defense": "strip",
                "auroc": 0.8,
                "defended_cacc": 0.7,
                "defended_asr": 0.2,
                "overhead_ratio": 5.5,
                "roc": _roc(0.4),
            },
            {
                **cell_a,
                "defense": "rap",
                "auroc": 0.97,
                "defended_cacc": 0.78,
                "defended_asr": 0.02,
                "overhead_ratio": 2.1,
                "roc": _roc(0.9),
            },
            {**cell_b, "defense": "none", "cacc": 0.75, "asr_lms": 0.98},
            {
                **cell_b,
                "defense": "monitor",
                "auroc": 0.99,
                "defended_cacc": 0.75,
                "defended_asr": 0.004,
                "overhead_ratio": 1.02,
                "roc": _roc(0.95),
            },
            {
                **cell_b,
                "defense": "onion",
                "auroc": 0.6,
                "defended_cacc": 0.7,
                "defended_asr": 0.5,
                "corrected_cacc": 0.7321,
                "corrected_asr": 0.4321,
                "overhead_ratio": 30.0,
            },
        ],
    )
    # a grid run writes one file per cell, in sub-folders
    put(
        "grid/cell-1/result.json",
        "grid",
        [{**cell_a, "seed": 0, "defense": "psim", "auroc": 0.777, "defended_asr": 0.1, "roc": _roc(0.6)}],
    )
    put(
        "grid/cell-2/result.json",
        "grid",
        [{**cell_a, "seed": 1, "defense": "psim", "error": "ValueError: grid cell exploded"}],
        meta={**META, "git": "fedcba9876543210"},
    )
    put("mystery.json", "mystery", [{"alpha": 1.5, "beta": "x", "nested": {"deep": 1}}, {"alpha": 2.25}])
    (root / "grid" / "cell-1" / "config.json").write_text(json.dumps({"hidden_size": 384}))
    (root / ".tmp.partial").mkdir()
    (root / ".tmp.partial" / "half.json").write_text("{not json")  # hidden: never read
    return root


FIGURE_TITLES = (
    "Clean accuracy per method",
    "Backdoor retention: ASR per attack and victim method",
    "ASR before / after PSIM: badnets",
    "ASR before / after PSIM: por",
    "PSIM ROC: badnets",
    "PSIM FRR–ASR trade-off: badnets",
    "LMSanitator scan time per model",
    "ROC per detector: badnets / lora",
    "ROC per detector: por / prefix",
)
SECTION_TITLES = (
    "Tuning (clean accuracy per PEFT method)",
    "Retention (weight poisoning vs victim tuning)",
    "PSIM (input detection for task-specific backdoors)",
    "LMSanitator (model scan and inference-time monitor)",
    "Comparison (detectors compared on the same cells)",
    "Grid run (every cell)",
    "mystery (benchmark without a dedicated section)",
    "Claims vs measured",
    "Configuration and versions",
)


@pytest.fixture
def report(tmp_path):
    results = fixture_results(tmp_path / "results")
    out = tmp_path / "out"
    assert main(["report", str(results), "--out", str(out), "--quiet"]) == 0
    md = (out / "report.md").read_text(encoding="utf-8")
    html = (out / "report.html").read_text(encoding="utf-8")
    return results, out, md, html


def _svgs_from_markdown(md: str) -> list[str]:
    found = re.findall(r"\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", md)
    return [base64.b64decode(data).decode("utf-8") for data in found]


def test_report_has_every_section_table_and_plot(report):
    results, out, md, html = report
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.md"]  # no temporary left
    for title in SECTION_TITLES:
        assert f"## {title}" in md
        assert re.search(rf"<h2 id=\"[\w-]+\">{re.escape(title.replace('&', '&amp;'))}</h2>", html), title
    doc = build_report(load_results(results))
    md_svgs = _svgs_from_markdown(md)
    assert len(md_svgs) == html.count("<svg ") == len(doc.figures()) >= len(FIGURE_TITLES)
    for title in FIGURE_TITLES:
        assert f"<title>{title}</title>" in html
        assert any(f"<title>{title}</title>" in svg for svg in md_svgs), title
    for svg in md_svgs:  # each embedded image is a well-formed SVG document
        assert ET.fromstring(svg).tag == "{http://www.w3.org/2000/svg}svg"
    assert md.count("\n|---|") == html.count("<table>") == len(doc.tables())


def test_report_shows_the_measured_numbers(report):
    _, _, md, html = report
    for text in (
        "0.012",  # psim calibrated defended ASR (one row per policy)
        "0.046",  # psim fixed@0.7 defended ASR from a row nesting its policies
        "0.235",  # ... and its calibrated policy
        "0.679",  # defended ASR in the LMSanitator convention
        "1.42×",  # overhead
        "0.667",  # zoo: 4 of 6 verdicts right (scan_metrics)
        "0.333",  # zoo FPR and FNR: 1 of 3 each
        "321.5",  # POR poisoning wall time
        "195.8",  # the poisoning row of the PSIM benchmark
        "0.247",  # the control's false rejections under a nested policy
        "fit rows",  # PSIM fit rows shown with their scalar columns
        "33.3",
        "1.02×",  # throughput ratio
        "22,713,986",
        "baseline rap AUROC 0.970",  # the cell a baseline wins is named
        "Our detectors' AUROC is above every baseline's in 1 of 2 cells.",
        "0.777",  # grid cell from a sub-folder
        "0.432",  # ONION as a correction defence (corrected ASR)
        "1.500",  # unknown benchmark, generic table
        "92.8% over 960 models",  # a claim, with our figure beside it
        "accuracy 66.7% over 6 models",
        "calibrated@0.02: 1 of 3 cells meet both",  # issue 4's target, per calibrated policy
        "lora 0.829 (3 epochs)",  # docs/design.md's scratch figures beside the tuning benchmark's
        "9.9.9-fixture",  # versions of every file
        "fedcba9876",
        "5e-05",  # a configuration value that would round to 0.000
    ):
        assert text in md, text
        assert text.replace("'", "&#x27;") in html, text
    # failed cells are listed, never dropped
    for text in ("out of memory", "ValueError: grid cell exploded"):
        assert text in md and text in html
    assert "traceback line" not in md  # only the first line of the error
    # JSON files of another shape are listed as skipped; hidden folders are not read at all
    assert "grid/cell-1/config.json: not a benchmark result" in md
    assert "half.json" not in md


def test_retention_tables_are_the_benchmark_scripts(report):
    results, _, md, _ = report
    rows = json.loads((results / "retention.json").read_text())["rows"]
    expected = tables(rows, ["badnets", "por"], ["full", "lora", "prefix"], ["lr5e-5x3"])
    assert expected in md
    assert "| badnets | — | 0.800 / 0.907 | error |" in expected  # the failed prefix cell


def test_html_is_self_contained(report):
    _, _, _, html = report
    assert not re.search(r"https?:", html, re.IGNORECASE)
    for tag in ("<script", "<link", "<img", "<iframe", "@import", "url("):
        assert tag not in html.lower()
    assert "src=" not in html and 'href="#' in html  # only in-page links


def test_default_output_is_the_results_folder_and_output_is_deterministic(tmp_path, capsys):
    results = fixture_results(tmp_path / "results")
    assert main(["report", str(results)]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "1 failed cell" not in printed and "2 failed cell(s)" in printed
    first = (results / "report.md").read_text(), (results / "report.html").read_text()
    assert main(["report", str(results), "--quiet"]) == 0  # the report files are not read as results
    assert ((results / "report.md").read_text(), (results / "report.html").read_text()) == first


def test_report_files_are_replaced_atomically(tmp_path, monkeypatch):
    results = fixture_results(tmp_path / "results")
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("old md")
    (out / "report.html").write_text("old html")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build.os, "replace", broken_replace)
    with pytest.raises(PeftshieldError, match="No space left"):
        write_report(results, out)
    monkeypatch.undo()
    assert (out / "report.md").read_text() == "old md" and (out / "report.html").read_text() == "old html"
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.md"]

    def broken_render(doc):
        raise RuntimeError("renderer bug")

    monkeypatch.setattr("peftshield.reporting.render_html.render_html", broken_render)
    with pytest.raises(RuntimeError):
        write_report(results, out)
    assert (out / "report.md").read_text() == "old md"  # nothing written before both are rendered


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("peftshield: error:"), err
    return err[0]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    assert main(["report", str(empty)]) == 2
    assert "no benchmark result files" in _error(capsys)
    assert not (empty / "report.md").exists()

    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "results folder not found" in _error(capsys)

    broken = tmp_path / "broken"
    fixture_results(broken)
    (broken / "psim.json").write_text('{"benchmark": "psim", "rows": [')
    assert main(["report", str(broken)]) == 2
    assert "psim.json is not valid JSON" in _error(capsys)
    assert not (broken / "report.md").exists() and not (broken / "report.html").exists()

    malformed = tmp_path / "malformed"
    malformed.mkdir()
    (malformed / "x.json").write_text(json.dumps({"benchmark": "psim", "rows": {"a": 1}}))
    assert main(["report", str(malformed)]) == 2
    assert "'rows' must be a list" in _error(capsys)

    good = fixture_results(tmp_path / "good")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["report", str(good), "--out", str(blocker / "sub")]) == 2
    assert "is not a folder" in _error(capsys)


def test_output_folder_without_write_permission(tmp_path, monkeypatch, capsys):
    good = fixture_results(tmp_path / "good")
    out = tmp_path / "out"
    out.mkdir()
    # root may write anywhere, so the permission answer is simulated here (the real one is tested below)
    monkeypatch.setattr(build.os, "access", lambda path, mode: Path(path) != out)
    assert main(["report", str(good), "--out", str(out)]) == 2
    assert "not writable" in _error(capsys)
    assert list(out.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(tmp_path, capsys):
    good = fixture_results(tmp_path / "good")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["report", str(good), "--out", str(locked)]) == 2
        assert "not writable" in _error(capsys)
    finally:
        locked.chmod(0o700)


def test_expand_policies_reads_both_nestings():
    flat = {"attack": "a", "threshold": "fixed@0.7", "defended_asr": 0.1}
    nested = {
        "attack": "b",
        "asr": 0.9,
        "roc": _roc(0.5),
        "by_threshold": {"fixed@0.7": {"defended_asr": 0.2}, "calibrated@0.05": {"defended_asr": 0.3}},
    }
    detectors = {"attack": "c", "detectors": {"psim": {"auroc": 0.9, "frr": 0.1}}}  # not policies
    out = expand_policies([flat, nested, detectors])
    assert out[0] is flat and out[3] is detectors
    assert [(r["threshold"], r["defended_asr"], r["asr"]) for r in out[1:3]] == [
        ("fixed@0.7", 0.2, 0.9),
        ("calibrated@0.05", 0.3, 0.9),
    ]
    assert out[1]["roc"] == nested["roc"]


def test_svg_charts_are_well_formed_and_escape_labels():
    charts = [
        bar_chart(
            "a <b> & c",
            ["x", "y & z"],
            [("s1", [0.5, None]), ("s2", [1.2, 0.1])],
            refs=[[0.2, 0.3], [None, 0.05]],
        ),
        line_chart("roc", [("d<1>", [0, 0.5, 1], [0, 0.9, 1])], x_label="fpr", y_label="tpr", diagonal=True),
        histogram("h", [("clean", [1.0, 2.0, 2.5]), ("backdoored", [9.0])], x_label="s"),
        histogram("one value", [("clean", [3.0, 3.0])], x_label="s"),
    ]
    for svg in charts:
        root = ET.fromstring(standalone(svg))
        assert root.tag.endswith("svg")
    assert "a &lt;b&gt; &amp; c" in charts[0] and "d&lt;1&gt;" in charts[1]
    assert charts[0].count("</rect>") == 3  # three bars carry a value title; the missing value is a gap
    assert charts[0].count("</line>") == 3  # three control ticks (the missing reference draws none)


def test_markdown_and_html_render_the_same_document(tmp_path):
    results = load_results(fixture_results(tmp_path / "r"))
    doc = build_report(results)
    md, html = render_markdown(doc), render_html(doc)
    for table in doc.tables():
        for row in table.rows[:3]:
            assert row[0].replace("|", "\\|") in md
            assert row[0].replace("&", "&amp;").replace("<", "&lt;").replace("'", "&#x27;") in html


def test_two_grid_runs_are_reported_apart_even_with_alike_cells(tmp_path):
    """The demo grid and the comparison grid both have a badnets / lora cell: never merge them."""
    cell = {"attack": "badnets", "method": "lora", "backbone": "minilm", "corpus": "movies", "seed": 0}
    for grid, auroc in (("default", 0.611), ("comparison", 0.922)):
        rows = [
            {**cell, "defense": "psim", "auroc": auroc, "defended_asr": 0.1},
            {**cell, "defense": "strip", "auroc": 0.5, "defended_asr": 0.9},
        ]
        data = {"benchmark": "grid", "meta": {**META, "grid": grid}, "rows": rows, "summary": {}}
        (tmp_path / f"{grid}.json").write_text(json.dumps(data))
    results = load_results(tmp_path)
    assert [b.name for b in results.benchmarks] == ["grid:comparison", "grid:default"]
    out = tmp_path / "out"
    assert main(["report", str(tmp_path), "--out", str(out), "--quiet"]) == 0
    md = (out / "report.md").read_text(encoding="utf-8")
    default = md.split("## Grid run `default` (every cell)")[1].split("\n## ")[0]
    comparison = md.split("## Grid run `comparison` (every cell)")[1].split("\n## ")[0]
    assert "0.611" in default and "0.922" not in default
    assert "0.922" in comparison and "0.611" not in comparison


def test_the_adaptive_section_says_where_an_adaptive_attack_gets_through(tmp_path):
    """Issue 13 item 6: each adaptive cell beside its plain attack; evasion said plainly."""
    cell = {"backbone": "minilm", "corpus": "movies", "seed": 0, "method": "lora", "num_labels": 2}
    control = {**cell, "attack": "none", "defense": "none", "cacc": 0.8}
    control["by_attack"] = {"badnets": {"asr": 0.1}, "badnets-capped": {"asr": 0.1}}
    rows = [control]
    for attack, extra, defended, cacc in (
        ("badnets", {}, 0.02, 0.8),
        ("badnets-capped", {"adaptive": "psim"}, 0.6, 0.8),
    ):
        base = {**cell, "attack": attack, "kind": "task-specific", "cacc": cacc, "asr": 0.95, **extra}
        rows.append({**base, "defense": "none", "defended_asr_reject": 0.95})
        psim = {"defense": "psim", "threshold": "calibrated@0.02", "auroc": 0.9, "frr": 0.02}
        rows.append({**base, **psim, "defended_asr_reject": defended, "defended_cacc": cacc - 0.01})
    data = {"benchmark": "adaptive", "meta": META, "rows": rows, "summary": {}}
    (tmp_path / "adaptive.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main(["report", str(tmp_path), "--out", str(out), "--quiet"]) == 0
    md = (out / "report.md").read_text(encoding="utf-8")
    section = md.split("## Adaptive attacks (each shaped against one defence)")[1]
    assert "badnets-capped / lora at calibrated@0.02 (against psim): ASR 0.950 -> 0.600" in section
    assert (
        "plain badnets: 0.950 -> 0.020" in section and "gets through where the plain one did not" in section
    )

    # the same adaptive victim at chance has no backdoor to defend: no evasion claimed
    for row in rows:
        if row["attack"] == "badnets-capped":
            row["cacc"] = 0.52
    (tmp_path / "adaptive.json").write_text(json.dumps({**data, "rows": rows}))
    assert main(["report", str(tmp_path), "--out", str(out), "--quiet"]) == 0
    section = (out / "report.md").read_text(encoding="utf-8").split("## Adaptive attacks (each shaped")[1]
    assert "no backdoor to defend (victim at chance" in section
    assert "gets through where the plain one did not" not in section


def test_the_adaptive_section_says_when_the_defence_was_inactive_but_the_scan_flagged(tmp_path):
    """An adaptive POR whose PVs the scan finds on other vectors only: the monitor has nothing to
    watch (inactive), the victim keeps its backdoor, and the model-level verdict is still said."""
    cell = {"backbone": "minilm", "corpus": "movies", "seed": 0, "method": "lora", "num_labels": 2}
    control = {**cell, "attack": "none", "defense": "none", "cacc": 0.68}
    control["by_attack"] = {"por": {"asr_lms": 0.13}, "por-clean-pv": {"asr_lms": 0.13}}
    rows = [control]
    policy = {"defense": "monitor", "threshold": "calibrated@0.05", "scan_verdict": "backdoored"}
    for attack, extra, defended in (("por", {}, 0.0), ("por-clean-pv", {"adaptive": "lmsanitator"}, 1.0)):
        base = {**cell, "attack": attack, "kind": "task-agnostic", "cacc": 0.69, "asr": 1.0, **extra}
        rows.append({**base, "defense": "none", "defended_asr_reject": 1.0})
        monitor = {**base, **policy, "defended_asr_reject": defended, "defended_cacc": 0.68, "frr": 0.0}
        if extra:
            monitor["inactive"] = "no PV of the mean vector, the one the victim's head reads"
        rows.append(monitor)
    (tmp_path / "adaptive.json").write_text(
        json.dumps({"benchmark": "adaptive", "meta": META, "rows": rows, "summary": {}})
    )
    out = tmp_path / "out"
    assert main(["report", str(tmp_path), "--out", str(out), "--quiet"]) == 0
    section = (out / "report.md").read_text(encoding="utf-8").split("## Adaptive attacks (each shaped")[1]
    line = next(x for x in section.splitlines() if x.startswith("- por-clean-pv / lora"))
    assert "gets through where the plain one did not" in line
    assert "The defence was inactive: no PV of the mean vector" in line
    assert "scan still calls the backbone backdoored" in line
