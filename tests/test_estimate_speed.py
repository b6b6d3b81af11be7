"""The cost model's machine scaling (grid/estimate.py, docs/design.md "Cost model").

The unit costs describe one reference machine; the printed estimate is scaled by this CPU's
measured matrix-multiply rate. These tests pin the arithmetic and the guards, not a speed.
"""

from __future__ import annotations

import math

import pytest

from peftshield.grid import estimate


def test_the_probe_measures_a_finite_positive_rate_in_about_its_budget():
    import time

    start = time.perf_counter()
    rate = estimate.measured_gflops(seconds=0.05)
    assert math.isfinite(rate) and rate > 0
    assert time.perf_counter() - start < 2.0


def test_the_slowdown_is_the_reference_over_the_measured_rate(monkeypatch):
    monkeypatch.setattr(estimate, "measured_gflops", lambda seconds=0.25: estimate.REFERENCE_GFLOPS / 4)
    assert estimate.cpu_slowdown("cpu") == pytest.approx(4.0)
    assert estimate.cpu_slowdown("cuda") == 1.0  # a GPU is not measured by a CPU product


@pytest.mark.parametrize("bad", [float("nan"), 0.0, -3.0, float("inf")])
def test_a_broken_measurement_never_scales_the_estimate(monkeypatch, bad):
    monkeypatch.setattr(estimate, "measured_gflops", lambda seconds=0.25: bad)
    assert estimate.cpu_slowdown("cpu") == 1.0


def test_the_printed_estimate_says_when_and_how_much_it_was_scaled():
    assert estimate.scaled_minutes(600, 1.0) == "10.0 min"
    assert estimate.scaled_minutes(600, 1.02) == "10.2 min"
    text = estimate.scaled_minutes(600, 2.5)
    assert text.startswith("25.0 min") and "2.5x" in text


def test_bench_plan_prints_the_scaled_estimate(monkeypatch, capsys):
    import argparse

    from peftshield.commands.bench import plan_command

    monkeypatch.setattr(estimate, "measured_gflops", lambda seconds=0.25: estimate.REFERENCE_GFLOPS / 3)
    monkeypatch.setattr("peftshield.utils.device.resolve_device", lambda name="auto": _Cpu())
    assert plan_command(argparse.Namespace(grid="default", results=None, json=False)) == 0
    out = capsys.readouterr().out
    assert "3.0x the reference machine's time" in out


class _Cpu:
    type = "cpu"
