"""The error every policy, rule and preset problem raises, and the "did you mean" hint."""

from __future__ import annotations

import difflib
from typing import Iterable

__all__ = ["PolicyError"]


class PolicyError(ValueError):
    """A policy or rule is invalid. ``rule`` is the rule's index (or None), ``field``
    the field at fault; the message names both."""

    def __init__(self, message: str, *, rule: int | None = None, name: str | None = None,
                 field: str | None = None):
        super().__init__(message)
        self.rule = rule
        self.rule_name = name
        self.field = field


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
