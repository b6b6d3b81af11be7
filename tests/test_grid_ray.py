"""The Ray executor (issue 16) on a local Ray instance on loopback: the same rows as ``--jobs 1``,
a worker killed mid-cell retried with no cell lost or duplicated, and a resumed run that redoes
nothing finished. Skipped where the ``ray`` extra is not installed."""

from __future__ import annotations

import os
import shutil
from collections import Counter

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'peftshield[ray]'")

import test_grid  # noqa: E402
from test_grid import _comparable_rows, built_counts, events, rows_by_cell  # noqa: E402

from peftshield.grid.config import load_grid  # noqa: E402
from peftshield.grid.executors import RayExecutor  # noqa: E402
from peftshield.grid.runner import run_grid  # noqa: E402
from peftshield.grid.stages import CRASH_ONCE_ENV  # noqa: E402

#: The module-scoped ``--jobs 1`` run every test here compares with.
reference = test_grid.reference


@pytest.fixture(scope="module")
def marker(tmp_path_factory):
    """The crash hook's marker: the first cell to reach it (in any test) kills its worker once."""
    return tmp_path_factory.mktemp("crash") / "crashed-once"


@pytest.fixture(scope="module")
def cluster(marker):
    """One local Ray instance for the module (starting one takes seconds), bound to loopback, whose
    workers carry the crash hook (one worker dies once, mid-cell, in the first test)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": {CRASH_ONCE_ENV: str(marker)}},
    )
    yield
    ray.shutdown()


def _run(grid: str, results, **options):
    return run_grid(load_grid(grid), results, executor=RayExecutor(**options), progress=False)


def test_ray_gives_the_rows_of_one_local_job_though_a_worker_dies_mid_cell(
    cluster, marker, reference, tmp_path
):
    grid, original = reference
    results = tmp_path / "ray"
    summary = _run(grid, results, max_retries=2)
    assert marker.is_file()  # one worker did die, after its cell's stages, before its row
    assert summary.ran == 4 and summary.failed == 0
    log = events(results)
    starts = Counter(e["cell"] for e in log if e["event"] == "cell-start")
    done = Counter(e["cell"] for e in log if e["event"] == "cell-done")
    assert sorted(starts.values()) == [1, 1, 1, 2]  # the killed cell started twice ...
    assert len(done) == 4 and set(done.values()) == {1}  # ... and every cell finished exactly once
    assert len(rows_by_cell(results)) == 4
    assert _comparable_rows(results) == _comparable_rows(original)
    assert all(n == 1 for n in built_counts(results).values()) and sum(built_counts(results).values()) == 5
    # every build and every cell ran in a Ray worker, none in the driver
    pids = {e["pid"] for e in log if e["event"] in ("built", "cell-done")}
    assert pids and os.getpid() not in pids


def test_a_resumed_ray_run_redoes_no_finished_cell(cluster, reference, tmp_path):
    grid, original = reference
    results = tmp_path / "resumed"
    shutil.copytree(original, results)
    lost = sorted((results / "cells").glob("*.json"))[0]
    lost.unlink()  # as if the driver had been killed before this cell finished
    before = len(events(results))
    summary = _run(grid, results)
    assert summary.ran == 1 and summary.skipped == 3
    new = events(results)[before:]
    assert [e["cell"] for e in new if e["event"] == "cell-start"] == [lost.stem]
    assert not [e for e in new if e["event"] == "built"]  # every artifact was reused
    assert _comparable_rows(results) == _comparable_rows(original)
