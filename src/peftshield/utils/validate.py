"""Parameter checks shared by the config dataclasses and the detectors (docs/design.md: configs validate
in ``__post_init__`` with a clear message).

Each check raises :class:`~peftshield.errors.PeftshieldError` with one message shape, so a number
that is wrong says the same thing wherever it is given: ``"<what>: <name> must be positive, got
<value>"`` (``what`` names the config, e.g. ``"lora config"``; empty for a detector parameter,
whose message has no prefix).
"""

from __future__ import annotations

import dataclasses
import math
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
    elif not math.isfinite(value):
        raise PeftshieldError(f"{_prefix(what)}{name} must be a finite number, got {value!r}")


def require_int_at_least(what: str, name: str, value: Any, minimum: int, *, optional: bool = False) -> None:
    """Refuse a ``value`` that is not an ``int >= minimum`` (``None`` passes when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PeftshieldError(f"{_prefix(what)}{name} must be an integer >= {minimum}, got {value!r}")


def non_finite_path(value: Any, path: str = "") -> str | None:
    """Where ``value`` holds a NaN or an infinity: ``""`` for ``value`` itself, ``"a.b[2]"`` for one
    nested in mappings and lists (JSON and YAML both read ``NaN`` / ``.inf``), ``None`` for none.
    """
    if isinstance(value, Real) and not isinstance(value, bool) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for where, item in items:
        found = non_finite_path(item, where)
        if found is not None:
            return found
    return None


def require_finite(what: str, name: str, value: Any) -> None:
    """Refuse a NaN or an infinity in ``value`` (a number, or numbers nested in lists and mappings).

    A non-finite setting silently disables the work it steers (an infinite learning rate trains a
    model to NaN, whose detector then never rejects), so it is never accepted (docs/design.md).
    """
    found = non_finite_path(value, name)
    if found is not None:
        raise PeftshieldError(f"{_prefix(what)}{found} must be a finite number, got {value!r}")


def require_finite_fields(what: str, config: Any) -> None:
    """:func:`require_finite` on every field of the dataclass instance ``config``; each config
    dataclass calls it first in ``__post_init__``.
    """
    for f in dataclasses.fields(config):
        require_finite(what, f.name, getattr(config, f.name))


def require_range(
    what: str, name: str, value: Any, low: float, high: float, *, high_open: bool = False
) -> None:
    """Refuse a ``value`` that is not a finite number in ``[low, high]`` (``[low, high)`` with
    ``high_open``)."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, Real)
        and math.isfinite(value)
        and low <= value
        and (value < high if high_open else value <= high)
    )
    if not ok:
        bracket = ")" if high_open else "]"
        raise PeftshieldError(f"{_prefix(what)}{name} must be in [{low:g}, {high:g}{bracket}, got {value!r}")


def require_string_list(what: str, name: str, value: Any) -> None:
    """Refuse a ``value`` that is not a non-empty list of non-empty strings (a bare string too:
    ``target_modules=query`` means ``["query"]`` to a user, a regular expression to peft)."""
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(item, str) and item.strip() for item in value)
    ):
        raise PeftshieldError(
            f'{_prefix(what)}{name} must be a non-empty list of names, e.g. ["query", "value"], got {value!r}'
        )
