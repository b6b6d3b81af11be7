"""Templates and verbalizers of prompt-based classification (docs/design.md, "Decoder backbones").

A template (``"Review: {text}\\nSentiment:"``) is applied to every text at tokenisation, by
:class:`TemplatedTokenizer`, so every stage that tokenises - tuning, attacks, each defence's
perturbed texts - sees the templated text and the answer position is the template's last token.
A verbalizer is one single-token word per class. This module imports no torch (the command line's
configs read it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from peftshield.errors import PeftshieldError

#: Template and verbalizer of a movie-review sentiment task (classes 0 = negative, 1 = positive).
DEFAULT_TEMPLATE = "Review: {text}\nSentiment:"
DEFAULT_VERBALIZER = (" negative", " positive")


def check_template(template: str) -> str:
    """A template must hold ``{text}`` exactly once and no other field."""
    import string

    if not isinstance(template, str):
        raise PeftshieldError(f"template must be a string, got {template!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise PeftshieldError(f"template {template!r} is malformed: {err}") from None
    if fields != ["text"]:
        raise PeftshieldError(f"template {template!r} must contain {{text}} exactly once and no other field")
    return template


def verbalizer_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The token id of each verbalizer word; each must be one token, and all must differ."""
    if len(words) < 2:
        raise PeftshieldError(f"a verbalizer needs one word per class (at least two), got {list(words)}")
    ids = []
    for word in words:
        pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            raise PeftshieldError(
                f"verbalizer word {word!r} is {len(pieces)} tokens for this tokenizer; each must be one token"
            )
        ids.append(int(pieces[0]))
    if len(set(ids)) != len(ids):
        raise PeftshieldError(f"verbalizer words {list(words)} do not map to distinct tokens")
    return ids


class TemplatedTokenizer:
    """A tokenizer that puts every text into a template before tokenising it (module docstring).

    Everything else is the wrapped tokenizer's, and so is a call with ``add_special_tokens=False``
    (a piece lookup, not a model input). Truncation never cuts the template: a text too long
    for ``max_length`` loses words from its end until the templated text fits, so the answer
    position is always the template's last token.
    """

    _OWN = ("inner", "template")

    def __init__(self, inner: Any, template: str) -> None:
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "template", check_template(template))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.__dict__["inner"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)

    def __copy__(self) -> TemplatedTokenizer:
        import copy

        return TemplatedTokenizer(copy.copy(self.inner), self.template)

    def __len__(self) -> int:
        return len(self.inner)

    def format(self, text: str) -> str:
        """The templated text."""
        return self.template.replace("{text}", text)

    def _fit(self, texts: list[str], max_length: int, add_special_tokens: bool) -> list[str]:
        """Each text templated, its last words dropped where the whole would exceed ``max_length``."""
        formatted = [self.format(t) for t in texts]
        if not formatted:
            return formatted
        lengths = [
            len(ids) for ids in self.inner(formatted, add_special_tokens=add_special_tokens)["input_ids"]
        ]
        out = []
        for text, whole, n in zip(texts, formatted, lengths, strict=True):
            if n <= max_length:
                out.append(whole)
                continue
            words = text.split()
            low, high = 0, len(words)  # the longest prefix of words that fits, by bisection
            while low < high:
                mid = (low + high + 1) // 2
                cand = self.format(" ".join(words[:mid]))
                size = len(self.inner(cand, add_special_tokens=add_special_tokens)["input_ids"])
                low, high = (mid, high) if size <= max_length else (low, mid - 1)
            out.append(self.format(" ".join(words[:low])))
        return out

    def __call__(self, texts: Any, *args: Any, **kwargs: Any) -> Any:
        """Tokenise the templated texts (the wrapped tokenizer's arguments and result).

        A call with ``add_special_tokens=False`` looks up pieces (a word's tokens, a length to sort
        by), not a model input: it gets the raw texts.
        """
        if not kwargs.get("add_special_tokens", True):
            return self.inner(texts, *args, **kwargs)
        single = isinstance(texts, str)
        raw = [texts] if single else list(texts)
        if kwargs.get("truncation") and kwargs.get("max_length"):
            formatted = self._fit(raw, int(kwargs["max_length"]), kwargs.get("add_special_tokens", True))
        else:
            formatted = [self.format(t) for t in raw]
        return self.inner(formatted[0] if single else formatted, *args, **kwargs)


def templated(tokenizer: Any, template: str | None) -> Any:
    """``tokenizer`` wrapped with ``template`` (as it is without one; never wrapped twice)."""
    if template is None:
        return tokenizer
    if isinstance(tokenizer, TemplatedTokenizer):
        tokenizer = tokenizer.inner
    return TemplatedTokenizer(tokenizer, template)
