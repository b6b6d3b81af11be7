"""How labels spell numbers: one spelling for the grid's budget labels and the report that reads them."""

from __future__ import annotations


def lr_text(lr: float) -> str:
    """A learning rate as a label spells it: ``5e-05`` -> ``5e-5``, ``0.0001`` -> ``1e-4``, ``2.5e-5``."""
    mantissa, exponent = f"{float(lr):e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def budget_label(lr: float, epochs: int) -> str:
    """A training budget's label, ``lr<LR>x<EPOCHS>`` (``lr5e-5x3``): what the retention rows call it."""
    return f"lr{lr_text(lr)}x{int(epochs)}"
