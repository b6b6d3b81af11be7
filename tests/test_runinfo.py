"""Provenance: the machine line of a result file names the CPU and the kernels that made it."""

import torch

from peftshield.utils import runinfo


def test_machine_description_names_cpu_threads_and_kernels():
    text = runinfo.machine_description()
    assert f"kernels {torch.backends.cpu.get_cpu_capability()}" in text
    assert f"torch threads {torch.get_num_threads()}" in text
    assert runinfo.cpu_model() in text


def test_cpu_model_reads_proc_cpuinfo(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t: avx2\n")
    real_path = runinfo.Path
    monkeypatch.setattr(runinfo, "Path", lambda p: info if p == "/proc/cpuinfo" else real_path(p))
    assert runinfo.cpu_model() == "Example CPU 9000"


def test_run_metadata_records_machine_and_versions():
    meta = runinfo.run_metadata("peftshield demo")
    assert meta["command"] == "peftshield demo"
    assert meta["machine"] == runinfo.machine_description()
    assert set(meta["versions"]) >= {"torch", "transformers", "peft"}
