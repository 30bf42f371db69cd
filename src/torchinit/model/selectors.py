"""Selector matching for policy rules: name globs and module-class patterns, compiled and
cached once (a large model asks the same questions thousands of times while planning)."""

from __future__ import annotations

import fnmatch
import functools
import re
from typing import Any, Sequence

from torch import nn


@functools.lru_cache(maxsize=4096)
def _globs(patterns: tuple[str, ...]) -> Any:
    """``name -> any(fnmatch.fnmatchcase(name, p) for p in patterns)`` as one set lookup and one regex."""
    exact = frozenset(p for p in patterns if not any(c in p for c in "*?["))
    rx = re.compile("|".join(fnmatch.translate(p) for p in patterns if p not in exact) or "(?!)").match
    return lambda name: name in exact or rx(name) is not None


@functools.lru_cache(maxsize=4096)
def _class_names(cls: type) -> tuple[str, ...]:
    names = []
    for c in cls.__mro__:
        if c is object:
            break
        names.append(c.__name__)
        names.append(f"{c.__module__}.{c.__qualname__}")
    return tuple(names)


def module_matches(module: nn.Module, patterns: Sequence[str | type]) -> str | None:
    """The first pattern ``module`` matches (an instance of a class, or a class name /
    glob found in its MRO; ``"nn.X"`` and ``"torch.nn.X"`` mean ``X``)."""
    # the answer depends on the class alone: cached, as a large model asks it thousands of times
    return _type_matches(type(module), tuple(patterns))


@functools.lru_cache(maxsize=4096)
def _type_matches(cls: type, patterns: tuple[str | type, ...]) -> str | None:
    names = None
    for p in patterns:
        if isinstance(p, type):
            if issubclass(cls, p):
                return p.__name__
            continue
        if names is None:
            names = _class_names(cls)
        q = p
        for prefix in ("torch.nn.", "nn."):
            if q.startswith(prefix) and "." not in q[len(prefix):]:
                q = q[len(prefix):]
        if any(fnmatch.fnmatchcase(n, q) for n in names):
            return p
    return None


@functools.lru_cache(maxsize=4096)
def _local_only(params: tuple[str, ...]) -> bool:
    """Whether ``params`` can only match a module's own tensors: literal names without a dot
    (a name relative to an ancestor module always has one)."""
    return all(not any(c in p for c in "*?[.") for p in params)
