"""The error every policy, rule and preset problem raises, and the "did you mean" hint."""

from __future__ import annotations

import difflib
from typing import Iterable

__all__ = ["PolicyError"]

#: Longest message a PolicyError keeps: values from a file end up in messages, and a
#: message must stay readable (and cheap) whatever the file holds.
_MAX_MESSAGE = 2000


class PolicyError(ValueError):
    """A policy or rule is invalid. ``rule`` is the rule's index (or None), ``field``
    the field at fault; the message names both."""

    def __init__(self, message: str, *, rule: int | None = None, name: str | None = None,
                 field: str | None = None):
        if len(message) > _MAX_MESSAGE:  # keep the start (file, rule, field) and the end (the complaint)
            cut = len(message) - 1800
            message = f"{message[:1200]} ...[{cut:,} characters cut]... {message[-600:]}"
        super().__init__(message)
        self.rule = rule
        self.rule_name = name
        self.field = field


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _short(value: object, limit: int = 80, *, quote: bool = True) -> str:
    """``repr(value)`` (``str`` without ``quote``), cut to about ``limit`` characters: a value
    read from a file may be any size, a message must not be."""
    text = repr(value) if quote else str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text):,} characters)"
