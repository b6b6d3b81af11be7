"""Device selection for ``--device auto|cpu|cuda``: a GPU is used when present, never assumed."""

from __future__ import annotations

from peftshield.errors import PeftshieldError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto"):
    """Return the torch device for ``name``; ``auto`` picks CUDA when available, else the CPU."""
    import torch

    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise PeftshieldError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PeftshieldError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)
