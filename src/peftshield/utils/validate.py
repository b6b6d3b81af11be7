"""Parameter checks shared by the config dataclasses and the detectors (docs/design.md: configs validate
in ``__post_init__`` with a clear message).

Each check raises :class:`~peftshield.errors.PeftshieldError` with one message shape, so a number
that is wrong says the same thing wherever it is given: ``"<what>: <name> must be positive, got
<value>"`` (``what`` names the config, e.g. ``"lora config"``; empty for a detector parameter,
whose message has no prefix).
"""

from __future__ import annotations

from numbers import Real
from typing import Any

from peftshield.errors import PeftshieldError


def _prefix(what: str) -> str:
    return f"{what}: " if what else ""


def require_positive(what: str, name: str, value: Any, *, integer: bool = False) -> None:
    """Refuse a ``value`` that is not a number ``> 0`` (with ``integer``: not an ``int >= 1``).

    Any real number counts (NumPy's too); booleans are refused although Python counts them as
    integers: ``epochs: true`` in a JSON config is a mistake, not one epoch.
    """
    if integer:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PeftshieldError(f"{_prefix(what)}{name} must be a positive integer, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, Real) or not value > 0:
        raise PeftshieldError(f"{_prefix(what)}{name} must be positive, got {value!r}")


def require_int_at_least(what: str, name: str, value: Any, minimum: int, *, optional: bool = False) -> None:
    """Refuse a ``value`` that is not an ``int >= minimum`` (``None`` passes when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PeftshieldError(f"{_prefix(what)}{name} must be an integer >= {minimum}, got {value!r}")
