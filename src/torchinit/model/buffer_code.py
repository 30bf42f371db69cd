"""Buffers a policy has no rule for, given to their module's own init code.

A rotary embedding's ``inv_freq``, a causal mask, BERT's ``position_ids``: buffers the
constructor computes, which no preset has a rule for. Where they are fresh memory
(``materialize`` of a meta model, or ``init_model`` after ``to_empty``) keeping them keeps
garbage, silently; their module's own init code recomputes them where it can (a Hugging
Face model's ``_init_weights`` does in transformers 5). :func:`with_own_code` re-makes a
plan so that such tensors get that code; code that leaves one unwritten is reported by
the caller (a note for buffers, an error from ``materialize``).
"""

from __future__ import annotations

import glob
import warnings
from collections.abc import Iterable
from typing import Any

from torch import nn

from .policy import Rule, load_policy
from .resolve import plan as _plan

__all__ = ["non_persistent_buffers", "uncovered", "with_own_code"]


def uncovered(plan_obj: Any, names: Iterable[str]) -> list[str]:
    """The ``names`` no entry of ``plan_obj`` initializes (no spec and no module code), sorted."""
    covered: set[str] = set()
    for e in plan_obj.entries:
        if getattr(e, "spec", None) is not None or getattr(e, "initializer", None) == "module":
            covered.add(e.name)
            covered.update(getattr(e, "aliases", ()) or ())
    return sorted(set(names) - covered)


def non_persistent_buffers(model: nn.Module) -> list[str]:
    """Qualified names of the buffers registered ``persistent=False``: never in a state dict,
    so never loaded from a checkpoint; what they hold comes from the constructor."""
    out = []
    for mname, mod in model.named_modules():
        for b in sorted(mod._non_persistent_buffers_set):
            if mod._buffers.get(b) is not None:
                out.append(f"{mname}.{b}" if mname else b)
    return out


def with_own_code(model: nn.Module, policy: Any, plan_obj: Any, names: Iterable[str], example_inputs: Any,
                  who: str, why: str) -> Any:
    """``plan_obj`` (the plan of ``policy``), re-made so that each of ``names`` it leaves
    uninitialized (buffers, frozen parameters) gets its module's own init code where the
    module has some, at the lowest priority; returns it unchanged when none does. A note
    names them, with ``why`` (e.g. "fresh memory would hold garbage")."""
    wanted = uncovered(plan_obj, names)
    if not wanted:
        return plan_obj
    buffers = {n for n, _ in model.named_buffers(remove_duplicate=False)}
    pol = load_policy(policy)
    for role, group in (("buffer", [n for n in wanted if n in buffers]), (None, [n for n in wanted if n not in buffers])):
        if group:
            pol = pol + Rule("module", qualnames=tuple(glob.escape(n) for n in group), role=role, priority=-1,
                             name=f"{who}: {'buffers' if role else 'frozen tables'} without a rule, own init code")
    with warnings.catch_warnings():  # the first plan gave them: the same model, one more rule
        warnings.simplefilter("ignore")
        new = _plan(model, pol, example_inputs)
    still = set(uncovered(new, wanted))
    got = [n for n in wanted if n not in still]
    if not got:
        return plan_obj
    new.notes.append(f"{who}: {len(got)} buffer(s)/frozen table(s) the policy has no rule for ({', '.join(got[:3])}"
                     f"{', ...' if len(got) > 3 else ''}) are initialized by their module's own init code ({why})")
    return new
