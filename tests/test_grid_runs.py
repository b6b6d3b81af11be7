"""How ``bench run`` starts and stops (issue 12): options and results folders checked before anything
is created, one grid per results folder, no worker outliving its driver, rows without machine
paths, and a summary that leaves inactive defences out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_grid import FAST_LORA, events, small_grid, write_grid

from peftshield.cli import main
from peftshield.grid.runner import summarize


def _one_cell_grid(tiny_bert: str, toy_csv: str, lr: float = 3e-2) -> dict:
    return {
        "name": "one",
        "sizes": {"max_train": 60, "max_eval": 20},
        "corpora": [toy_csv],
        "backbones": [tiny_bert],
        "attacks": ["none"],
        "methods": [{"name": "lora", "config": {**FAST_LORA, "lr": lr, "epochs": 1}}],
        "defenses": ["none"],
    }


def test_jobs_zero_fails_in_one_line_before_creating_anything(tmp_path, tiny_bert, toy_csv, capsys):
    grid = write_grid(tmp_path, _one_cell_grid(tiny_bert, toy_csv))
    results = tmp_path / "never"
    assert main(["bench", "run", grid, "--results", str(results), "--jobs", "0"]) == 2
    err = capsys.readouterr().err
    assert "--jobs must be a positive integer, got 0" in err and len(err.strip().splitlines()) == 1
    assert not results.exists()
    for bad, message in (
        (["--address", "auto"], "--address is for --executor ray"),
        (["--executor", "ray", "--cpus-per-task", "0"], "--cpus-per-task must be a positive number"),
    ):
        if "ray" in bad and not _has_ray():
            continue
        assert main(["bench", "run", grid, "--results", str(results), *bad]) == 2
        assert message in capsys.readouterr().err
        assert not results.exists()


def _has_ray() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def test_a_dangling_results_link_names_the_problem(tmp_path, tiny_bert, toy_csv, capsys):
    grid = write_grid(tmp_path, _one_cell_grid(tiny_bert, toy_csv))
    link = tmp_path / "results"
    link.symlink_to(tmp_path / "gone")
    assert main(["bench", "run", grid, "--results", str(link)]) == 2
    err = capsys.readouterr().err
    assert "is a symbolic link to" in err and "gone" in err and "does not exist" in err
    assert "File exists" not in err and not (tmp_path / "gone").exists()


def test_a_different_grid_is_refused_in_a_results_folder_unless_forced(tmp_path, tiny_bert, toy_csv, capsys):
    first = write_grid(tmp_path, _one_cell_grid(tiny_bert, toy_csv), "first.json")
    other = write_grid(tmp_path, _one_cell_grid(tiny_bert, toy_csv, lr=1e-2), "other.json")
    results = tmp_path / "results"
    assert main(["bench", "run", first, "--results", str(results), "--quiet"]) == 0
    assert main(["bench", "run", first, "--results", str(results), "--quiet"]) == 0  # the same grid: resumes
    stored = (results / "grid-config.json").read_text()
    before = sorted(p.name for p in (results / "cells").iterdir())
    capsys.readouterr()

    assert main(["bench", "run", other, "--results", str(results), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds the results of a different grid" in err and "--force" in err
    assert len(err.strip().splitlines()) == 1
    assert (results / "grid-config.json").read_text() == stored  # nothing was touched
    assert sorted(p.name for p in (results / "cells").iterdir()) == before

    assert main(["bench", "run", other, "--results", str(results), "--quiet", "--force"]) == 0
    grid_file = json.loads((results / "grid.json").read_text())
    assert len(grid_file["rows"]) == 1 and grid_file["rows"][0]["cell"] not in {Path(b).stem for b in before}
    assert len(list((results / "cells").iterdir())) == 2  # the first grid's cell file stays


def test_rows_hold_no_machine_paths(tmp_path, tiny_bert, toy_csv):
    grid = write_grid(tmp_path, _one_cell_grid(tiny_bert, toy_csv))
    results = tmp_path / "results"
    assert main(["bench", "run", grid, "--results", str(results), "--quiet"]) == 0
    data = json.loads((results / "grid.json").read_text())
    text = json.dumps(data["rows"])
    for folder in (Path(tiny_bert).parent, Path(toy_csv).parent, results, Path.home()):
        assert str(folder) not in text
    assert data["rows"][0]["config"]["corpus"] == "toy.csv" and data["meta"]["grid_file"] == "grid.json"
    # the recorded command names the results folder by a placeholder, not this machine's path
    assert str(results) not in data["meta"]["command"] and "--results <results>" in data["meta"]["command"]


def test_summary_by_defense_leaves_inactive_cells_out():
    base = {"corpus": "c", "backbone": "b", "attack": "por", "method": "lora", "seed": 0, "cacc": 0.8}
    rows = [
        {**base, "defense": "monitor", "asr": 1.0, "defended_asr_reject": 0.0, "defended_cacc": 0.78,
         "frr": 0.02},
        # a monitor with no PV passes everything: its figures are the undefended ones
        {**base, "defense": "monitor", "attack": "badnets", "asr": 1.0, "defended_asr_reject": 1.0,
         "defended_cacc": 0.8, "frr": 0.0, "inactive": "the scan found no PV"},
    ]  # fmt: skip
    monitor = summarize(rows, 2)["by_defense"]["monitor"]
    assert monitor["cells"] == 1 and monitor["inactive"] == 1
    assert monitor["mean_defended_asr_reject"] == 0.0 and monitor["mean_frr"] == 0.02
    assert monitor["mean_cacc_cost"] == pytest.approx(0.02)


# ------------------------------------------------------------------------------- orphaned workers


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_workers_and_the_resource_tracker_die_with_a_killed_driver(tmp_path, tiny_bert, toy_csv, sig):
    psutil = pytest.importorskip("psutil")
    grid = write_grid(tmp_path, small_grid(tiny_bert, toy_csv))
    results = tmp_path / "results"
    args = [sys.executable, "-m", "peftshield", "bench", "run", grid, "--results", str(results), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen(
        [*args, "--jobs", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    children: list = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            busy = {e["pid"] for e in events(results) if e["event"] in ("start", "cell-start")}
            children = _descendants(driver.pid)
            if busy - {driver.pid} and len(children) >= 3:  # two workers at work, and the tracker
                break
            time.sleep(0.05)
        assert driver.poll() is None, "the grid ended before the workers could be caught at work"
        names = [" ".join(c.cmdline()) for c in children]
        assert sum("resource_tracker" in n for n in names) == 1, names
        driver.send_signal(sig)
        driver.wait(timeout=30)
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, [" ".join(p.cmdline()) for p in alive]
        if sig == signal.SIGTERM:
            assert driver.returncode == 143
            assert "terminated" in driver.stderr.read()
    finally:
        for child in _descendants(driver.pid) + children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        if driver.poll() is None:
            driver.kill()
