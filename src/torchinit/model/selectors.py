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


#: ``modules`` entry selecting the modules whose class has a ``reset_parameters`` / ``_reset_parameters``
#: of its own, not torch's (the ``pytorch`` preset runs that code, as the constructor does)
OWN_INIT = "@own_init"


@functools.lru_cache(maxsize=4096)
def own_init_code(cls: type) -> bool:
    """Whether ``cls`` has a ``reset_parameters`` / ``_reset_parameters`` that is not torch's: a
    zero-initialized ``nn.Linear`` subclass, a class of one's own named ``Linear`` (which rules
    naming torch's classes match by name), FSDP2's wrapper class of either."""
    return any(not str(getattr(getattr(cls, m, None), "__module__", "torch.")).startswith("torch.")
               for m in ("reset_parameters", "_reset_parameters") if getattr(cls, m, None) is not None)


@functools.lru_cache(maxsize=4096)
def _type_matches(cls: type, patterns: tuple[str | type, ...]) -> str | None:
    names = None
    for p in patterns:
        if p == OWN_INIT:
            if own_init_code(cls):
                return p
            continue
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


_GLOB = "*?["


@functools.lru_cache(maxsize=8)
def _preset_selectors(names: tuple[str, ...]) -> frozenset:
    """The selectors (modules, qualnames, params) of the registered presets' rules (default options):
    a preset carries rules for layers a model may not have, so those matching nothing say nothing."""
    from .registry import PRESETS

    out = set()
    for name in names:
        try:
            out.update((r.modules, r.qualnames, r.params) for r in PRESETS[name]().rules)
        except Exception:  # noqa: BLE001 - a preset that needs options: its rules are not skipped
            pass
    return frozenset(out)


def _near(word: str, names: Any) -> str | None:
    """A name of ``names`` that differs from ``word`` only by letter case or a plural 's'."""
    low = word.lower()
    for n in sorted(names):
        if n.lower() == low or n.lower() in (low[:-1] if low.endswith("s") else None, low + "s"):
            return n
    return None


def unused_rule_hints(model: nn.Module, rules: Sequence[Any], unused: Sequence[int], labels: Sequence[str]) -> list[str]:
    """For rules of the user's (not a preset's) that matched nothing: a hint when a literal ``modules``,
    ``params`` or ``qualnames`` name is not in the model but one differing only by case or a plural
    's' is (``Conv2D`` for ``Conv2d``, ``weights`` for ``weight``): the typo that silently leaves the
    preset's init in place."""
    from .registry import PRESETS

    hints: list[str] = []
    preset = None
    classes = qualified = relative = None
    for i in unused:
        r = rules[i]
        if preset is None:
            preset = _preset_selectors(tuple(PRESETS))
        if (r.modules, r.qualnames, r.params) in preset:
            continue
        if classes is None:
            classes = {c.__name__ for m in model.modules() for c in type(m).__mro__ if c is not object}
            qualified = {n for n, _ in model.named_parameters(remove_duplicate=False)}
            qualified |= {n for n, _ in model.named_buffers(remove_duplicate=False)}
            relative = {n.split(".", k)[-1] for n in qualified for k in range(n.count(".") + 1)}
        for field, words, names in (("modules", r.modules, classes), ("params", r.params, relative),
                                    ("qualnames", r.qualnames, qualified)):
            for w in words or ():
                if not isinstance(w, str) or any(c in w for c in _GLOB) or w.startswith("@"):
                    continue
                w = w[len("torch.nn."):] if w.startswith("torch.nn.") else w[len("nn."):] if w.startswith("nn.") else w
                near = None if w in names else _near(w, names)
                if near is not None:
                    hints.append(f"rule {labels[i]} matched nothing: {field} {w!r} is not in the model; did you "
                                 f"mean {near!r}?")
                    break
            else:
                continue
            break
    return hints
