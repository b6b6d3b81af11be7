"""Predefined output vectors (PVs) of task-agnostic backdoors.

A task-agnostic backdoor (POR, NeuBA, BToP) maps each trigger to a fixed vector of the frozen
backbone's output; whatever head a victim later puts on top then reads that vector and predicts
whatever class it happens to map to (LMSanitator, Wei et al. 2024). Three families:

- ``balanced`` (default): LMSanitator's six patterns. The hidden size ``H`` is cut into four blocks
  of ``H/4`` units, each block all ``+1`` or all ``-1``, with two ``+`` and two ``-`` blocks:
  (−,−,+,+), (−,+,−,+), (−,+,+,−), (+,−,−,+), (+,−,+,−), (+,+,−,−). Any two differ in exactly
  half the units. At most 6 vectors; ``H`` must be divisible by 4.
- ``random``: every unit ``±1`` drawn from a seeded generator; rows are redrawn until distinct.
- ``orthogonal``: the rows of a seeded random orthogonal matrix (QR of a Gaussian matrix, signs
  fixed by the diagonal of R), each row multiplied by ``sqrt(H)`` so that it has the Euclidean
  norm of a ``±1`` vector (root-mean-square unit value 1). The rows are exactly orthogonal, but
  their units are NOT ``±1``; a sign-based monitor sees their sign pattern. At most ``H`` vectors.
- ``clean``: an adaptive attacker's choice against LMSanitator (its limits section: PVs close to the
  clean output distribution): each PV is the clean backbone's own output for a seeded draw of
  distinct clean texts (:func:`clean_output_vectors`), so it sits inside the clean distribution
  that the scan's distance bar and the monitor's sign test are measured against.

Every family is multiplied by ``scale`` (1.0 in the reference code, which targets BERT's [CLS]).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from peftshield.errors import PeftshieldError

PV_FAMILIES: tuple[str, ...] = ("balanced", "random", "orthogonal", "clean")
PV_BLOCKS = 4


def balanced_sign_patterns() -> list[tuple[int, ...]]:
    """The six balanced 4-block sign patterns, in LMSanitator's order (− before +)."""
    return [p for p in itertools.product((-1, 1), repeat=PV_BLOCKS) if sum(p) == 0]


def check_pv_shape(family: str, n_vectors: int, hidden_size: int) -> None:
    """Raise :class:`PeftshieldError` when ``family`` cannot give ``n_vectors`` PVs of ``hidden_size``.

    Called before any training so that a bad backbone / trigger count fails in one line.
    """
    if family not in PV_FAMILIES:
        raise PeftshieldError(f"unknown PV family {family!r}; choose one of {', '.join(PV_FAMILIES)}")
    if n_vectors < 1:
        raise PeftshieldError("need at least one predefined vector (one per trigger)")
    if hidden_size < 1:
        raise PeftshieldError(f"hidden size must be positive, got {hidden_size}")
    if family == "balanced":
        if hidden_size % PV_BLOCKS:
            raise PeftshieldError(
                f"hidden size {hidden_size} is not divisible into {PV_BLOCKS} PV blocks; "
                "use pv_family=random or pv_family=orthogonal for this backbone"
            )
        if n_vectors > len(balanced_sign_patterns()):
            raise PeftshieldError(
                f"the balanced PV family has {len(balanced_sign_patterns())} patterns, "
                f"{n_vectors} triggers need more; use pv_family=random or orthogonal"
            )
    if family == "orthogonal" and n_vectors > hidden_size:
        raise PeftshieldError(f"{n_vectors} orthogonal vectors do not fit in hidden size {hidden_size}")
    if family == "random" and n_vectors > 2**hidden_size:
        raise PeftshieldError(f"{n_vectors} distinct ±1 vectors do not exist in hidden size {hidden_size}")


def predefined_vectors(
    family: str, n_vectors: int, hidden_size: int, *, seed: int = 0, scale: float = 1.0
) -> Any:
    """A float32 ``torch.Tensor`` ``(n_vectors, hidden_size)``; row ``k`` is trigger ``k``'s PV.

    LMSanitator's ``insert_backdoor.py`` scripts: six triggers, six balanced block
    patterns. ``seed`` fixes the ``random`` and ``orthogonal`` families (``balanced`` ignores it).
    """
    import torch

    check_pv_shape(family, n_vectors, hidden_size)
    if not scale > 0:
        raise PeftshieldError(f"pv_scale must be positive, got {scale}")
    if family == "clean":
        raise PeftshieldError(
            "the clean PV family is drawn from a backbone's outputs: use clean_output_vectors"
        )
    if family == "balanced":
        block = hidden_size // PV_BLOCKS
        patterns = balanced_sign_patterns()[:n_vectors]
        rows = np.asarray([np.repeat(p, block) for p in patterns], dtype=np.float64)
    elif family == "random":
        rng = np.random.default_rng(seed)
        rows = rng.choice((-1.0, 1.0), size=(n_vectors, hidden_size))
        # Two equal rows would make two triggers indistinguishable; redraw until all differ.
        while len({r.tobytes() for r in rows}) < n_vectors:
            rows = rng.choice((-1.0, 1.0), size=(n_vectors, hidden_size))
    else:
        rng = np.random.default_rng(seed)
        q, r = np.linalg.qr(rng.standard_normal((hidden_size, n_vectors)))
        q = q * np.sign(np.where(np.diag(r) == 0, 1.0, np.diag(r)))  # unique (Haar) orthogonal basis
        rows = q.T * np.sqrt(hidden_size)
    return torch.tensor(rows * scale, dtype=torch.float32)


def clean_output_vectors(outputs: Any, n_vectors: int, *, seed: int = 0, scale: float = 1.0) -> Any:
    """The ``clean`` family: ``n_vectors`` rows of ``outputs`` (clean pooled outputs), drawn with ``seed``.

    ``outputs`` is a ``(m, hidden)`` tensor of the clean backbone's pooled vectors for ``m``
    distinct clean texts; rows are drawn without replacement (an adaptive PV choice against
    LMSanitator, module docstring). Returns a float32 ``torch.Tensor`` ``(n_vectors, hidden)``.
    """
    import torch

    if not scale > 0:
        raise PeftshieldError(f"pv_scale must be positive, got {scale}")
    m = int(outputs.shape[0])
    if n_vectors < 1 or n_vectors > m:
        raise PeftshieldError(f"the clean PV family needs {n_vectors} clean outputs, got {m}")
    rows = np.random.default_rng(seed).choice(m, size=n_vectors, replace=False)
    return (outputs[torch.as_tensor(rows)].detach().float() * scale).cpu()
