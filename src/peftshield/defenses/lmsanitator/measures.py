"""Scale-aware measures shared by PV mining, filtering and calibration (LMSanitator §IV-B, made scale-aware).

Why the reference measures are rescaled
---------------------------------------
LMSanitator's mining code (``2-PV_mining_filtering/TOKEN/main.py``) compares raw output vectors:
``distance = MSE(output, clean_output)`` and ``diversity = -Entropy(softmax over the batch)`` for
each hidden unit, with fixed thresholds (``distance_th`` 0.1-0.6, ``div_th = -3.446`` for a batch
of 32, i.e. an entropy at most ``0.0197`` below its maximum ``ln 32``). Both numbers silently
assume the output scale of the backbones it was written for (the [CLS] state of BERT / RoBERTa,
per-unit spread of order 0.5-1). On ``minilm`` the pooled vector has a per-unit spread of about
0.16 across texts (docs/design.md), so a softmax over the batch is almost uniform for *any* batch: the
entropy sits within 0.015 of ``ln 32`` for clean texts already, the diversity filter passes
everything, and a raw ``distance_th`` means something else on every backbone.

What we do instead (documented in the package README and in each function below):

* :class:`OutputScale` holds the per-unit mean ``mu`` and spread ``sigma`` of the suspect
  backbone's own pooled outputs on the clean mining texts. ``sigma`` is floored at
  ``floor * median(sigma)`` because some units are (nearly) constant - all-MiniLM-L6-v2 has a
  unit with spread ~1e-32 - and dividing by it would let a negligible move dominate every measure.
* Every output is read in these units, ``z = (y - mu) / sigma``, before any measure is taken:
  - :func:`normalised_mse` - the reference distance, in units of the clean spread: two unrelated
    clean texts are ~2 apart; the PVs of a briefly POR-poisoned ``minilm`` (100 steps) sit ~16
    away from the clean outputs, those of the tiny test model ~65.
  - :func:`batch_entropy` / :func:`entropy_gap` - the reference diversity measure applied to ``z``.
    For clean texts the logits of each unit's softmax now have unit spread, so the entropy is about
    ``ln B - 0.5`` (measured gaps 0.41-0.51 on ``minilm``, batch 32); a batch that collapsed onto
    one vector (a PV) has entropy ``ln B``. The *gap* ``ln B - entropy`` is reported; for a small
    relative spread ``r`` (spread of the triggered batch / clean spread) it is about ``r^2 / 2``.
    The real POR triggers on ``minilm`` give gaps of 0.002-0.005 (``r`` about 0.08); the raw-unit
    reference measure put clean and triggered batches alike within 0.015 of ``ln 32``.
  - :func:`relative_spread` - that ``r`` itself, reported beside the gap for readability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Default floor of the per-unit spread, as a fraction of the median spread.
DEFAULT_SCALE_FLOOR = 0.25


@dataclass
class OutputScale:
    """Per-unit location and spread of a backbone's clean pooled outputs (the unit of every measure)."""

    mu: torch.Tensor
    sigma: torch.Tensor

    @classmethod
    def from_outputs(cls, outputs: torch.Tensor, floor: float = DEFAULT_SCALE_FLOOR) -> OutputScale:
        """Estimate the scale from clean outputs ``(n, hidden)``; ``sigma >= floor * median(sigma)``."""
        if outputs.ndim != 2 or outputs.shape[0] < 2:
            raise ValueError("the output scale needs at least two clean outputs of shape (n, hidden)")
        outputs = outputs.detach().float()
        mu = outputs.mean(0)
        sigma = outputs.std(0)
        median = sigma.median()
        if not float(median) > 0:
            raise ValueError("the clean outputs do not vary: every text gives the same vector")
        return cls(mu=mu, sigma=sigma.clamp_min(floor * float(median)))

    def normalise(self, outputs: torch.Tensor) -> torch.Tensor:
        """``(y - mu) / sigma`` for a vector or a batch of vectors."""
        return (outputs - self.mu) / self.sigma

    def to(self, device: torch.device | str) -> OutputScale:
        """The same scale on another device."""
        return OutputScale(mu=self.mu.to(device), sigma=self.sigma.to(device))


def normalised_mse(a: torch.Tensor, b: torch.Tensor, scale: OutputScale) -> torch.Tensor:
    """Mean squared difference of ``a`` and ``b`` in units of the clean spread (broadcasts).

    The reference distance loss is ``MSE(output, clean_output)`` on raw vectors; dividing each unit
    by the clean spread makes one threshold mean the same on every backbone. The mean (``mu``)
    cancels, so only ``sigma`` is applied.
    """
    return (((a - b) / scale.sigma) ** 2).mean()


def batch_entropy(z: torch.Tensor) -> torch.Tensor:
    """Entropy of a softmax taken over the BATCH for each unit, averaged over units (reference diversity).

    ``z`` is ``(batch, hidden)``, already normalised by :meth:`OutputScale.normalise`. The maximum
    is ``ln(batch)``, reached when every input gives the same vector. Differentiable.
    """
    logp = torch.log_softmax(z, dim=0)
    return -(logp.exp() * logp).sum(0).mean()


def entropy_gap(z: torch.Tensor) -> torch.Tensor:
    """``ln(batch) - batch_entropy(z)``: 0 for a collapsed batch, about 0.5 for clean texts.

    The reference keeps a PV when ``-entropy < div_th`` with ``div_th = -3.446`` for a batch of
    32, i.e. a gap below ``ln 32 - 3.446 = 0.0197``; the gap states the same rule without tying the
    number to the batch size.
    """
    return math.log(z.shape[0]) - batch_entropy(z)


def relative_spread(z: torch.Tensor) -> torch.Tensor:
    """RMS over units of the batch's per-unit spread, in clean-spread units (about 1 for clean texts)."""
    return z.var(0, unbiased=True).mean().sqrt()


def sign_agreement(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Fraction of units whose signs agree (``>= 0`` counts as +, as in the reference monitor).

    ``a`` ``(n, hidden)`` and ``b`` ``(m, hidden)`` give an ``(n, m)`` matrix; 1-D inputs are one row.
    """
    a2 = torch.atleast_2d(a) >= 0
    b2 = torch.atleast_2d(b) >= 0
    return (a2.unsqueeze(1) == b2.unsqueeze(0)).float().mean(-1)
