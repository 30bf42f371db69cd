"""Where preset names are looked up: the presets module registers its factories here, so
policies resolve ``"kaiming"`` or ``{"preset": "gpt2"}`` without importing the presets
(which build policies: the import would run both ways)."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Literal

from .errors import PolicyError, _suggest

if TYPE_CHECKING:  # pragma: no cover
    from .policy import Policy

__all__ = ["PRESETS", "DEFAULT_POLICY", "PresetName", "get_preset", "preset_names", "register_preset"]

#: The built-in presets' names, for signatures (IDEs complete them; any registered name is accepted too).
PresetName = Literal["pytorch", "module", "kaiming", "xavier", "lecun", "orthogonal", "gpt2", "llama", "rnn",
                     "vit"]

#: The policy of plan(), init_model(), materialize() and the CLI when none is given: torch's own
#: per-layer defaults, what the model gets from its constructors anyway, so that leaving the policy
#: out never changes the recipe (plan(model) previews what materialize(model) then writes).
DEFAULT_POLICY = "pytorch"

#: name -> factory(**options) -> Policy, in registration order
PRESETS: dict[str, Callable[..., "Policy"]] = {}


def register_preset(name: str, factory: Callable[..., "Policy"]) -> None:
    """Make ``factory`` the preset ``name`` (a later registration replaces it)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a preset name must be a non-empty string, got {name!r}")
    PRESETS[name] = factory


def preset_names() -> list[str]:
    """The names of the presets, in registration order."""
    return list(PRESETS)


def get_preset(name: PresetName | str, **options: Any) -> "Policy":
    """The preset policy ``name`` built with ``options`` (see each factory)."""
    if not isinstance(name, str) or name not in PRESETS:
        raise PolicyError(f"unknown preset {name!r}{_suggest(str(name), PRESETS)}; presets: {', '.join(PRESETS)}")
    sig = inspect.signature(PRESETS[name])
    try:  # check the options against the signature only: a TypeError raised inside the factory propagates
        sig.bind(**options)
    except TypeError as exc:
        allowed = ", ".join(sig.parameters) or "none"
        raise PolicyError(f"preset {name!r}: bad options {sorted(options)} ({exc}); options: {allowed}") from None
    try:
        return PRESETS[name](**options)
    except PolicyError as exc:  # a bad option value fails in one of the preset's rules: name the option
        given = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise PolicyError(f"preset {name!r} with options {given}: {exc}", field="options") from None
