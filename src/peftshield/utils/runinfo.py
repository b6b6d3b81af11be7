"""Provenance recorded beside every artifact and benchmark result: versions, git hash, machine."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

_PACKAGES = ("peftshield", "torch", "transformers", "peft", "safetensors", "numpy")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages whose behaviour shapes our numbers."""
    versions: dict[str, str] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def git_state(cwd: str | os.PathLike | None = None) -> tuple[str, bool]:
    """Return (commit hash, dirty flag) of the checkout holding this package, or ("unknown", False)."""
    where = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return commit, bool(status)
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; else what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    """A short description of the hardware the numbers were measured on.

    It names the CPU model and the vector instruction set torch's kernels use (for example
    ``AVX512``): virtual-token victims trained with the same seed, code and thread count differ on
    machines whose kernels round differently (bench/README.md, "Reproduction on the grid"), so a
    result file must say which kernels made it.
    """
    import torch

    text = (
        f"{platform.system()} {platform.machine()}, {cpu_model()}, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()}, kernels {torch.backends.cpu.get_cpu_capability()}"
    )
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def run_metadata(command: str | None = None) -> dict:
    """The ``meta`` block of a result file (docs/design.md, benchmark result files)."""
    commit, dirty = git_state()
    return {
        "git": commit,
        "dirty": dirty,
        "versions": package_versions(),
        "machine": machine_description(),
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command,
    }
