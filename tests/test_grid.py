"""The experiment grid runner (issue 6, item 2) on the tiny BERT and toy CSV corpora.

Checks: expansion counts and shared stages; validation errors before any cell runs; content-
addressed caching (a poisoned backbone is built once for every cell that needs it; changing a
defence parameter reuses the poison and the victims); kill-and-resume (every cell done exactly
once, results identical to an uninterrupted run); ``--jobs 2`` equals ``--jobs 1``; failed cells
recorded and retried; the monitor / scan / prefix chain; the shipped default grid.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from peftshield.cli import main
from peftshield.grid.cache import StageLog, file_lock
from peftshield.grid.config import load_grid
from peftshield.grid.plan import expand, unique_stages
from peftshield.grid.runner import RUN_LOCK, comparable
from peftshield.models.tiny import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS

FAST_BADNETS = {
    "epochs": 2,
    "lr": 3e-3,
    "head_lr": 3e-2,
    "batch_size": 16,
    "max_length": 32,
    "poison_rate": 0.3,
}
FAST_LORA = {"lr": 3e-2, "head_lr": 3e-2, "batch_size": 16, "epochs": 2, "max_length": 32}
FAST_PREFIX = {"epochs": 1, "num_virtual_tokens": 4, "max_length": 32, "batch_size": 16}
FAST_PSIM = {"config": {"batch_size": 8, "max_length": 32}}
# The planted POR backdoor and the scan settings of tests/test_lmsanitator.py (a PV is found in seconds).
STRONG_POR = {"steps": 300, "lr": 1e-3, "max_length": 32, "triggers": ["cf", "mn"], "log_every": 300}
SCAN = {
    "attempts": 3,
    "max_total_steps": 120,
    "mining": {
        "n_texts": 128,
        "n_verify": 32,
        "batch_size": 32,
        "max_length": 24,
        "lr": 0.01,
        "steps": 40,
        "patience": 15,
    },
    "thresholds": {"max_gap": 0.05, "min_distance": 20.0},
}


def small_grid(tiny_bert: str, toy_csv: str, **changes) -> dict:
    """2 attacks x 1 method x 2 defences = 4 cells; badnets is shared by two cells."""
    grid = {
        "name": "small",
        "seeds": [0],
        "sizes": {"max_train": 100, "max_eval": 40},
        "corpora": [toy_csv],
        "backbones": [tiny_bert],
        "attacks": ["none", {"name": "badnets", "corpus": toy_csv, "recipe": FAST_BADNETS}],
        "methods": [{"name": "lora", "config": FAST_LORA}],
        "defenses": ["none", {"name": "psim", **FAST_PSIM}],
    }
    grid.update(changes)
    return copy.deepcopy(grid)  # tests mutate it


def write_grid(folder: Path, grid: dict, name: str = "grid.json") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(grid), encoding="utf-8")
    return str(path)


def rows_by_cell(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((results / "cells").glob("*.json"))}


def events(results: Path) -> list[dict]:
    return StageLog(results / "log" / "stages.jsonl").read()


def built_counts(results: Path) -> Counter:
    return Counter((e["kind"], e["key"]) for e in events(results) if e["event"] == "built")


def run_cli(args: list[str]) -> int:
    return main(["bench", *args])


@pytest.fixture(scope="module")
def texts_csv(tmp_path_factory) -> str:
    """Unlabelled sentences over the tiny vocabulary (POR poisoning and PV mining), as in test_lmsanitator."""
    rng = random.Random(0)
    words = NEUTRAL_WORDS + POSITIVE_WORDS + NEGATIVE_WORDS
    path = tmp_path_factory.mktemp("texts") / "texts.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text"])
        for _ in range(600):
            writer.writerow([" ".join(rng.choice(words) for _ in range(rng.randint(5, 14)))])
    return str(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bert, toy_csv) -> tuple[str, Path]:
    """The small grid run once, uninterrupted, with one job: (grid file, results folder)."""
    folder = tmp_path_factory.mktemp("reference")
    grid = write_grid(folder, small_grid(tiny_bert, toy_csv))
    results = folder / "results"
    assert run_cli(["run", grid, "--results", str(results), "--quiet"]) == 0
    return grid, results


# ------------------------------------------------------------------------------------- planning


def test_expansion_counts_and_shared_stages(tmp_path, tiny_bert, toy_csv, texts_csv):
    por = {"name": "por", "corpus": texts_csv, "recipe": {"steps": 5}}
    grid = small_grid(
        tiny_bert,
        toy_csv,
        seeds=[0, 1],
        attacks=["none", {"name": "badnets", "corpus": toy_csv, "recipe": FAST_BADNETS}, por],
        methods=[{"name": "lora", "config": FAST_LORA}, {"name": "prefix", "config": FAST_PREFIX}, "none"],
    )
    cells = expand(load_grid(write_grid(tmp_path, grid)))
    # per seed: 3 attacks x (lora x 2 defences + prefix x 2 + no victim x psim only)
    assert len(cells) == 2 * 3 * 5
    assert len({c.id for c in cells}) == len(cells)
    assert [c.id for c in cells] == [c.id for c in expand(load_grid(write_grid(tmp_path, grid)))]
    stages = unique_stages(cells)
    assert len(stages["poison"]) == 2 * 2  # badnets and por, per seed: shared by all their cells
    assert len(stages["victim"]) == 2 * 3 * 2  # per seed, backbone and method
    assert len(stages["defense"]) == 2 * 3  # PSIM needs only the backbone: shared by every method
    assert not stages["scan"]
    badnets = [c for c in cells if c.attack.name == "badnets" and c.seed == 0]
    assert len({c.poison.key for c in badnets}) == 1 and len(badnets) == 5
    assert all(c.victim is None for c in cells if c.method.name == "none")
    assert not [c for c in cells if c.method.name == "none" and c.defense.name == "none"]

    grid["defenses"] = ["none", "monitor"]
    grid["methods"] = grid["methods"][:2]
    grid["scan"] = {**SCAN, "texts": texts_csv}
    cells = expand(load_grid(write_grid(tmp_path, grid)))
    stages = unique_stages(cells)
    assert len(cells) == 2 * 3 * 2 * 2
    assert len(stages["scan"]) == 2 * 3  # one scan per (poisoned) backbone and seed
    assert len(stages["defense"]) == 2 * 3 * 2  # the monitor watches one victim


def test_the_default_grid_exercises_every_stage_within_the_time_budget():
    from peftshield.grid.estimate import plan_costs

    grid = load_grid("default")
    cells = expand(grid)
    kinds = {c.attack.kind for c in cells}
    assert {"task-specific", "task-agnostic", None} == kinds
    assert {c.method.name for c in cells} == {"lora"}  # prefix and the rest: bench/grids/
    assert {c.defense.name for c in cells} == {"none", "psim", "monitor", "strip"}  # one baseline
    assert all(stages for stages in unique_stages(cells).values())
    assert {c.backbone.label for c in cells} == {"minilm"}
    minutes = sum(plan_costs(cells, set(), set()).values()) / 60
    assert 3 < minutes <= 15


# ------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda g: g.update(defences=["psim"]), "unknown key(s) defences (did you mean 'defenses'?)"),
        (lambda g: g["sizes"].update(max_trian=5), "sizes: unknown key(s) max_trian"),
        (lambda g: g["attacks"].append("badnet"), "attacks[2] (badnet): unknown attack 'badnet'"),
        (
            lambda g: g["attacks"][1]["recipe"].update(rate=0.5),
            "attacks[1] (badnets).recipe: unknown badnets config",
        ),
        (lambda g: g["attacks"][1].update(trigger="cf"), "attacks[1] (badnets): unknown key(s) trigger"),
        (lambda g: g["methods"].append("lorra"), "methods[1] (lorra): unknown method 'lorra'"),
        (
            lambda g: g["methods"][0]["config"].update(rank=4),
            "methods[0] (lora).config: unknown lora config key(s) rank",
        ),
        (lambda g: g["defenses"].append("psimm"), "defenses[2] (psimm): unknown defence 'psimm'"),
        (
            lambda g: g["defenses"][1].update(treshold=0.7),
            "defenses[1] (psim): unknown psim parameter(s) treshold",
        ),
        (
            lambda g: g["defenses"][1].update(threshold=1.5),
            "defenses[1] (psim): psim scores are probabilities",
        ),
        (lambda g: g["corpora"].append("moviez"), "corpora[1] (moviez): unknown corpus 'moviez'"),
        (lambda g: g["corpora"].append("wiki"), "corpora[1] (wiki): corpus 'wiki' is unlabelled"),
        (lambda g: g["corpora"].append("missing.csv"), "corpus file not found"),
        (lambda g: g["backbones"].append("bertt"), "backbones[1] (bertt): unknown backbone 'bertt'"),
        (
            lambda g: g["backbones"].append("./no/such/folder"),
            "backbones[1] (./no/such/folder): not a folder",
        ),
        (lambda g: g.update(seeds=[0, 0]), "seeds: repeated seed"),
        (
            lambda g: g["methods"].append({"name": "lora", "config": FAST_LORA}),
            "repeats the label of methods[0]",
        ),
        (
            lambda g: g.update(defenses=["monitor"], methods=[{"name": "lora"}, "none"]),
            "defenses[0] (monitor): needs a tuned victim, but methods[1] is 'none'",
        ),
        (
            lambda g: g.update(defenses=["monitor"], backbones=[{"name": g["backbones"][0], "scan": False}]),
            "defenses[0] (monitor): needs an LMSanitator scan of every backbone, "
            "but backbones[0] (bert) has scan: false",
        ),
        (
            lambda g: g["methods"][0].update(head="keep"),
            "methods[0] (lora).head: 'keep' needs the attacker's published head, but attack(s) none",
        ),
        (lambda g: g.update(scan={"max_steps": 5}), "scan: unknown key(s) max_steps"),
        (
            lambda g: g.update(defenses=["monitor"], scan={"mining": {"stepz": 3}}),
            "bert).scan.mining: unknown mining config key(s) stepz",
        ),
        (lambda g: g.update(methods=["none"], defenses=["none"]), "nothing to measure"),
        (lambda g: g["defenses"][1].update(label="psim/a"), "defenses[1] (psim): 'label' must be letters"),
        (
            lambda g: g["defenses"].append({"name": "rap", "rap_word": "cf"}),
            "defenses[2] (rap): against attacks[1] (badnets): rap_word 'cf' is one of the attack's triggers",
        ),
    ],
)
def test_bad_grids_fail_before_any_cell_naming_the_entry(
    tmp_path, tiny_bert, toy_csv, capsys, change, expected
):
    grid = small_grid(tiny_bert, toy_csv)
    change(grid)
    path = write_grid(tmp_path, grid)
    results = tmp_path / "results"
    assert run_cli(["run", path, "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("peftshield: error: grid.json: ")
    assert expected in err
    assert not (results / "cells").exists()


def test_rap_entries_carry_their_word_and_refuse_any_trigger_of_the_grid(tmp_path, tiny_bert, toy_csv):
    from peftshield.defenses.rap import DEFAULT_RAP_WORD
    from peftshield.errors import PeftshieldError

    grid = small_grid(tiny_bert, toy_csv, defenses=["none", "rap"])
    (rap,) = [d for d in load_grid(write_grid(tmp_path, grid)).defenses if d.name == "rap"]
    assert rap.params["rap_word"] == DEFAULT_RAP_WORD  # resolved, so it is part of the cache key
    grid["attacks"][1]["recipe"]["triggers"] = [DEFAULT_RAP_WORD.upper()]  # uncased: the same token
    with pytest.raises(PeftshieldError, match="rap_word 'jj' is one of the attack's triggers"):
        load_grid(write_grid(tmp_path, grid))
    grid["defenses"][1] = {"name": "rap", "rap_word": "mn"}
    assert load_grid(write_grid(tmp_path, grid)).defenses[1].params["rap_word"] == "mn"


def test_unwritable_results_folder_fails_before_any_cell(tmp_path, tiny_bert, toy_csv, capsys):
    path = write_grid(tmp_path, small_grid(tiny_bert, toy_csv))
    (tmp_path / "afile").write_text("x")
    assert run_cli(["run", path, "--results", str(tmp_path / "afile" / "results")]) == 2
    assert "is not writable" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            assert run_cli(["run", path, "--results", str(locked / "results")]) == 2
            assert "is not writable" in capsys.readouterr().err
        finally:
            locked.chmod(0o700)


def test_a_results_file_as_folder_and_a_second_run_on_the_same_folder_are_refused(
    tmp_path, tiny_bert, toy_csv, capsys
):
    path = write_grid(tmp_path, small_grid(tiny_bert, toy_csv))
    (tmp_path / "afile").write_text("x")
    assert run_cli(["run", path, "--results", str(tmp_path / "afile")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    results = tmp_path / "busy"
    results.mkdir()
    with file_lock(results / RUN_LOCK) as held:
        assert held
        assert run_cli(["run", path, "--results", str(results), "--quiet"]) == 2
    assert "another 'peftshield bench run' is using" in capsys.readouterr().err
    assert not list((results / "cells").glob("*.json"))


def test_yaml_grids_are_read_and_validated(tmp_path, tiny_bert, toy_csv):
    yaml = pytest.importorskip("yaml")
    grid = small_grid(tiny_bert, toy_csv)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid), encoding="utf-8")
    assert len(expand(load_grid(path))) == 4
    grid["methods"][0]["config"]["epoch"] = 1
    path.write_text(yaml.safe_dump(grid), encoding="utf-8")
    with pytest.raises(Exception, match=r"grid.yaml: methods\[0\] \(lora\).config: unknown lora config key"):
        load_grid(path)


# ------------------------------------------------------------------------------------- running


def test_run_writes_one_row_per_cell_and_builds_each_artifact_once(reference):
    _, results = reference
    rows = rows_by_cell(results)
    assert len(rows) == 4 and not any("error" in r for r in rows.values())
    grid_file = json.loads((results / "grid.json").read_text())
    assert grid_file["benchmark"] == "grid" and len(grid_file["rows"]) == 4
    assert {"git", "versions", "machine", "started", "command"} <= set(grid_file["meta"])
    cells = grid_file["summary"]["cells"]
    assert {k: cells[k] for k in ("planned", "finished", "failed")} == {
        "planned": 4,
        "finished": 4,
        "failed": 0,
    }
    # cells with no backdoor to defend (evaluation.validity) are counted and named with their reason
    assert cells["no_backdoor"] == len(grid_file["summary"]["no_backdoor"])

    # content-addressed caching: badnets is needed by two cells, built once and reused once
    built = built_counts(results)
    assert all(n == 1 for n in built.values())
    assert Counter(kind for kind, _ in built) == {"poison": 1, "victim": 2, "defense": 2}
    assert len(list((results / "artifacts" / "poison").iterdir())) == 1
    reused = [e for e in events(results) if e["event"] == "reused" and e["kind"] == "poison"]
    assert len(reused) == 1
    done = Counter(e["cell"] for e in events(results) if e["event"] == "cell-done")
    assert sorted(done) == sorted(rows) and set(done.values()) == {1}

    by = {(r["attack"], r["defense"]): r for r in rows.values()}
    attacked, defended = by[("badnets", "none")], by[("badnets", "psim")]
    # every defence of one victim sees the same inputs: the undefended figures agree
    for key in ("cacc", "asr", "n_triggered"):
        assert attacked[key] == defended[key]
    assert attacked["stages"]["victim"]["folder"] == defended["stages"]["victim"]["folder"]
    assert defended["threshold"] == "calibrated@0.05" and defended["asr_convention"] == "psim"
    for key in ("cacc", "asr", "defended_cacc", "defended_asr_reject", "frr", "far", "auroc"):
        assert 0.0 <= defended[key] <= 1.0, key
    assert defended["defended_cacc"] <= defended["cacc"]
    assert defended["defended_asr_reject"] <= defended["asr"] and "defended_asr" not in defended
    roc = defended["roc"]
    assert roc["fpr"][0] == roc["tpr"][0] == 0.0 and roc["fpr"][-1] == roc["tpr"][-1] == 1.0
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    trade = defended["tradeoff"]
    assert len({len(v) for v in trade.values()}) == 1 and len(trade["threshold"]) > 2
    assert np.all(np.diff(trade["threshold"]) > 0) and np.all(np.diff(trade["frr"]) <= 0)
    assert trade["frr"][-1] == 0.0 and trade["asr"][-1] == pytest.approx(defended["asr"], abs=1e-5)
    assert defended["overhead_ratio"] > 1.0 and attacked["overhead_ratio"] == 1.0
    control = by[("none", "psim")]
    assert control["kind"] is None and set(control["by_attack"]) == {"badnets"}
    assert 0.0 <= control["by_attack"]["badnets"]["auroc"] <= 1.0


def test_rerun_skips_finished_cells_and_a_new_defence_setting_reuses_poison_and_victims(
    reference, tmp_path, tiny_bert, toy_csv
):
    _, original = reference
    results = tmp_path / "copy"
    shutil.copytree(original, results)
    before = len(events(results))
    grid = write_grid(tmp_path, small_grid(tiny_bert, toy_csv))
    assert run_cli(["run", grid, "--results", str(results), "--quiet"]) == 0
    assert [e for e in events(results)[before:] if e["event"] in ("built", "cell-start")] == []

    changed = small_grid(
        tiny_bert, toy_csv, defenses=["none", {"name": "psim", **FAST_PSIM, "target_frr": 0.1}]
    )
    assert (
        run_cli(
            [
                "run",
                write_grid(tmp_path, changed, "changed.json"),
                "--results",
                str(results),
                "--quiet",
                "--force",  # another grid's folder: refused without it (test_a_different_grid_...)
            ]
        )
        == 0
    )
    new = events(results)[before:]
    assert Counter(e["kind"] for e in new if e["event"] == "built") == {"defense": 2}
    assert len([e for e in new if e["event"] == "cell-done"]) == 2  # the two psim cells; "none" cells kept
    rows = json.loads((results / "grid.json").read_text())["rows"]
    assert sorted(r["threshold"] for r in rows if r["defense"] == "psim") == ["calibrated@0.1"] * 2


def _comparable_rows(results: Path) -> dict[str, dict]:
    return {cell: comparable(row) for cell, row in rows_by_cell(results).items()}


def _bench_process(grid: str, results: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable,
        "-m",
        "peftshield",
        "bench",
        "run",
        grid,
        "--results",
        str(results),
        "--quiet",
        *extra,
    ]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_killed_run_resumes_without_redoing_or_losing_a_cell(reference, tmp_path):
    grid, original = reference
    results = tmp_path / "killed"
    process = _bench_process(grid, results)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if list((results / "cells").glob("*.json")):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, process.stderr.read()
    finished_before = len(list((results / "cells").glob("*.json")))
    assert 1 <= finished_before < 4

    assert run_cli(["run", grid, "--results", str(results), "--quiet"]) == 0
    done = Counter(e["cell"] for e in events(results) if e["event"] == "cell-done")
    assert len(done) == 4 and set(done.values()) == {1}  # every cell done exactly once
    assert all(n == 1 for n in built_counts(results).values())  # no artifact built twice
    assert _comparable_rows(results) == _comparable_rows(original)
    assert not [p for p in (results / "artifacts").rglob(".*") if p.name.endswith(".partial")]


def test_two_jobs_give_the_results_of_one(reference, tmp_path):
    grid, original = reference
    results = tmp_path / "jobs2"
    process = _bench_process(grid, results, "--jobs", "2")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert _comparable_rows(results) == _comparable_rows(original)
    assert all(n == 1 for n in built_counts(results).values())  # the lock: no artifact built twice
    assert sum(built_counts(results).values()) == 5


def test_a_failing_cell_is_recorded_and_retried(tmp_path, tiny_bert, toy_csv, capsys):
    # The tiny tokenizer reads "ж" as [UNK]: the poisoning refuses a trigger the model cannot see,
    # which is found only when the stage runs (the grid's validation loads no tokenizer).
    recipe = {**FAST_BADNETS, "triggers": ["ж"]}
    grid = small_grid(
        tiny_bert, toy_csv, attacks=["none", {"name": "badnets", "corpus": toy_csv, "recipe": recipe}]
    )
    path = write_grid(tmp_path, grid)
    results = tmp_path / "results"
    assert run_cli(["run", path, "--results", str(results), "--quiet"]) == 1
    assert "FAILED: PeftshieldError" in capsys.readouterr().out
    rows = json.loads((results / "grid.json").read_text())["rows"]
    failed = [r for r in rows if "error" in r]
    assert len(rows) == 4 and len(failed) == 2 and all(r["attack"] == "badnets" for r in failed)
    assert all("trigger" in r["error"] for r in failed)
    assert run_cli(["run", path, "--results", str(results), "--quiet"]) == 1
    starts = Counter(e["cell"] for e in events(results) if e["event"] == "cell-start")
    assert sorted(starts.values()) == [1, 1, 2, 2]  # the failed cells ran again, the others did not


def test_plan_lists_cells_stages_and_what_is_cached(reference, tiny_bert, toy_csv, tmp_path, capsys):
    grid, results = reference
    assert run_cli(["plan", grid]) == 0
    out = capsys.readouterr().out
    assert "4 cells" in out and "4 to run" in out and "poison 1 (0 cached)" in out
    assert run_cli(["plan", grid, "--results", str(results), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["status"] for c in report["cells"]] == ["done"] * 4
    assert all(s["cached"] for c in report["cells"] for s in c["stages"])
    assert report["stages"]["poison"] == {"total": 1, "cached": 1} and report["estimate_seconds"] == 0


def test_monitor_chain_scans_each_backbone_and_watches_prefix_victims(
    tmp_path, tiny_bert, toy_csv, texts_csv
):
    grid = small_grid(
        tiny_bert,
        toy_csv,
        attacks=["none", {"name": "por", "corpus": texts_csv, "recipe": STRONG_POR}],
        methods=[{"name": "prefix", "config": FAST_PREFIX}],
        defenses=[{"name": "monitor", "threshold": 0.8}],
        scan={**SCAN, "texts": texts_csv},
    )
    results = tmp_path / "results"
    assert run_cli(["run", write_grid(tmp_path, grid), "--results", str(results), "--quiet"]) == 0
    by = {r["attack"]: r for r in rows_by_cell(results).values()}
    assert Counter(kind for kind, _ in built_counts(results)) == {
        "poison": 1,
        "victim": 2,
        "scan": 2,
        "defense": 2,
    }
    por = by["por"]
    assert por["scan_verdict"] == "backdoored" and por["n_pvs"] >= 1 and "inactive" not in por
    assert por["asr_convention"] == "lms" and por["asr"] == por["asr_lms"]
    assert por["threshold"] == 0.8 and por["auroc"] > 0.9
    assert por["defended_asr_reject"] < por["asr"]
    # the monitor reads the victim's own forward pass: little overhead
    assert por["overhead_ratio"] < 1.8
    control = by["none"]
    if control["scan_verdict"] == "clean":
        assert control["inactive"] and control["frr"] == 0.0


def test_cells_without_a_victim_measure_detection_only(tmp_path, tiny_bert, toy_csv):
    grid = small_grid(tiny_bert, toy_csv, methods=["none"], defenses=[{"name": "psim", **FAST_PSIM}])
    results = tmp_path / "results"
    assert run_cli(["run", write_grid(tmp_path, grid), "--results", str(results), "--quiet"]) == 0
    by = {r["attack"]: r for r in rows_by_cell(results).values()}
    assert set(by) == {"none", "badnets"}
    row = by["badnets"]
    assert row.get("cacc") is None and row["overhead_ratio"] is None and "victim" not in row["stages"]
    assert row["threshold"] == "calibrated@0.05" and isinstance(row["threshold_value"], float)
    assert 0.0 <= row["auroc"] <= 1.0 and row["far"] == pytest.approx(1.0 - row["recall"])
    assert row["n_triggered"] > 0 and row["roc"]["tpr"][-1] == 1.0


def test_adaptive_attack_cells_name_the_defence_they_target(tmp_path, tiny_bert, toy_csv):
    """Issue 13 item 6: an adaptive attack's rows carry ``adaptive: <defence>``; the papers' do not."""
    capped = {"name": "badnets-capped", "corpus": toy_csv, "recipe": FAST_BADNETS}
    attacks = [{"name": "badnets", "corpus": toy_csv, "recipe": FAST_BADNETS}, capped]
    grid = small_grid(
        tiny_bert, toy_csv, attacks=attacks, methods=["none"], defenses=[{"name": "psim", **FAST_PSIM}]
    )
    results = tmp_path / "results"
    assert run_cli(["run", write_grid(tmp_path, grid), "--results", str(results), "--quiet"]) == 0
    by = {r["attack"]: r for r in rows_by_cell(results).values()}
    assert by["badnets-capped"]["adaptive"] == "psim" and by["badnets-capped"]["kind"] == "task-specific"
    assert "adaptive" not in by["badnets"]
    assert by["badnets-capped"]["stages"]["poison"]["key"] != by["badnets"]["stages"]["poison"]["key"]


# ------------------------------------------------------------------------------- ONION's score memo


def test_score_memo_scores_each_distinct_text_once_and_charges_its_cost(tmp_path):
    from peftshield.grid.scorememo import ScoreMemo

    calls: list[str] = []

    def slow_length(texts: list[str]) -> tuple[np.ndarray, list[str]]:
        calls.extend(texts)
        time.sleep(0.01 * len(texts))
        return np.array([float(len(t)) for t in texts]), [t.upper() for t in texts]

    memo = ScoreMemo(tmp_path, "k1")
    scores, cleaned, seconds = memo.lookup(["aa", "b", "aa"], slow_length)
    assert scores.tolist() == [2.0, 1.0, 2.0] and cleaned == ["AA", "B", "AA"]
    assert sorted(calls) == ["aa", "b"]
    assert seconds >= 0.03  # three texts read, each charged what computing it cost
    again, cleaned, seconds_again = ScoreMemo(tmp_path, "k1").lookup(["b", "ccc"], slow_length)
    assert again.tolist() == [1.0, 3.0] and cleaned == ["B", "CCC"] and sorted(calls) == ["aa", "b", "ccc"]
    assert seconds_again >= 0.02
    plain = ScoreMemo(tmp_path, "k2")  # another defence has its own memo; a detector cleans nothing
    scores, cleaned, _ = plain.lookup(["b"], lambda texts: (slow_length(texts)[0], None))
    assert calls.count("b") == 2 and scores.tolist() == [1.0] and cleaned is None


def test_onion_is_fitted_once_for_the_grid_and_scores_each_text_once(tmp_path, tiny_bert, toy_csv):
    from peftshield.models.tiny_lm import build_tiny_llama

    lm = str(build_tiny_llama(tmp_path / "lm", seed=0))
    grid = small_grid(tiny_bert, toy_csv, defenses=[{"name": "onion", "lm": lm, "batch_size": 16}])
    results = tmp_path / "results"
    assert run_cli(["run", write_grid(tmp_path, grid), "--results", str(results), "--quiet"]) == 0
    rows = rows_by_cell(results)
    assert len(rows) == 2 and all("error" not in r for r in rows.values())
    onion_builds = [k for (kind, k) in built_counts(results) if kind == "defense"]
    assert len(onion_builds) == 1  # one fitting serves the clean and the poisoned backbone
    memo = json.loads((results / "artifacts" / "scores" / f"{onion_builds[0]}.json").read_text())
    by = {r["attack"]: r for r in rows.values()}
    # Distinct texts: the clean test split (shared) and the BadNets-triggered copies (read twice:
    # by the control's "badnets" set and by the BadNets cell), each scored and stored once.
    assert len(memo) == by["none"]["n_clean"] + by["badnets"]["n_triggered"]
    assert by["none"]["by_attack"]["badnets"]["auroc"] == pytest.approx(by["badnets"]["auroc"])
    assert all(r["overhead_ratio"] > 1.0 for r in rows.values())
    # ONION is also measured as the correction defence it is: the victim reads the cleaned texts
    for row in (by["badnets"], by["none"]):
        assert 0.0 <= row["corrected_cacc"] <= 1.0
    assert 0.0 <= by["badnets"]["corrected_asr"] <= 1.0
    assert 0.0 <= by["none"]["by_attack"]["badnets"]["corrected_asr"] <= 1.0
