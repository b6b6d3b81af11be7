"""Strict construction from JSON objects: an unknown key is an error that names the known ones.

The one implementation of docs/design.md's config rule ("reject unknown keys with a clear message";
OpenBackdoor's silent ``**kwargs`` is the anti-pattern): every config, record and parameter set
built from user JSON goes through :func:`check_keys` or :func:`from_dict`, so a typo reads the same
everywhere: ``unknown lora config key(s) rank (did you mean 'r'?); known: ...``.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Collection, Iterable, Mapping
from typing import Any, TypeVar

from peftshield.errors import PeftshieldError

T = TypeVar("T")


def suggestion(word: str, options: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``options`` to ``word``, else ``""``."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_keys(
    given: Iterable[Any], known: Collection[str], *, what: str = "", noun: str = "key"
) -> str | None:
    """The error message for the keys of ``given`` not in ``known`` (None when there are none).

    ``what`` names the object (``"lora config"``); ``noun`` what its entries are (``"parameter"``).
    Known keys are listed in the order given; the first unknown key gets a suggestion.
    """
    bad = sorted(str(k) for k in given if k not in known)
    if not bad:
        return None
    subject = f"{what} {noun}" if what else noun
    listed = ", ".join(known) or "none"
    return f"unknown {subject}(s) {', '.join(bad)}{suggestion(bad[0], known)}; known: {listed}"


def check_keys(given: Iterable[Any], known: Collection[str], *, what: str = "", noun: str = "key") -> None:
    """Raise :class:`~peftshield.errors.PeftshieldError` with :func:`unknown_keys`'s message, if any."""
    message = unknown_keys(given, known, what=what, noun=noun)
    if message:
        raise PeftshieldError(message)


def from_dict(
    cls: type[T],
    data: Any,
    what: str,
    *,
    ignore: Collection[str] = (),
) -> T:
    """Build the dataclass ``cls`` from the JSON object ``data``, strictly.

    Refused with a one-line :class:`~peftshield.errors.PeftshieldError` naming ``what``: ``data``
    that is not an object, an unknown key (with a suggestion and the known keys), a missing key
    without a default, and a value the constructor rejects with a
    ``TypeError``. Keys in ``ignore`` (e.g. a registry's discriminator such as ``method``) are
    dropped first. Validation of values stays in ``cls.__post_init__``.
    """
    if not isinstance(data, Mapping):
        raise PeftshieldError(f"{what} must be a JSON object, got {type(data).__name__}")
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    names = [f.name for f in fields]
    given = {k: v for k, v in data.items() if k not in ignore}
    check_keys(given, sorted(names), what=what)
    required = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [n for n in required if n not in given]
    if missing:
        raise PeftshieldError(f"{what}: missing key(s) {', '.join(missing)}")
    try:
        return cls(**given)
    except TypeError as err:  # e.g. a string compared with a number in __post_init__
        raise PeftshieldError(f"{what}: {err}") from None
