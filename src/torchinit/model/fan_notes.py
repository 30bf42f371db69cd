"""What plan() says about fans: where a rule's fans differ from the other convention's.

* ``fans: module`` (the true fans) on grouped or transposed weights, where
  ``torch.nn.init`` counts otherwise: a note per rule (a recipe ported from torch gets the
  other std).
* ``fans: torch`` (the default of ``kaiming_*``/``xavier_*``, and ``std: 1/sqrt(fan_in)``)
  on a Hugging Face ``Conv1D``, stored ``(in, out)`` for ``x @ w``: torch's rule reads its
  dims swapped (GPT-2's ``c_fc`` (768, 3072): fan_in 3072, not 768; std half the intended,
  its ``c_proj`` twice), which nobody means, as torch has no such layer. A note and a
  ``UserWarning`` naming the tensors and both stds; a rule that says ``fans: torch`` itself
  gets the note only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..core.fans import Fans, compute_fans, torch_fans

__all__ = ["fans_notes", "record_fans"]

#: (rule label, init, mode) -> [(tensor, fan used, other fan, std)]
Hits = dict[tuple[str, str, str], list[tuple[str, float, float, float]]]


def record_fans(true_fans: Hits, swapped: Hits, label: str, init: str, args: Mapping[str, Any], explicit: bool,
                mod: nn.Module, q: str, shape: tuple[int, ...], fans: Fans | None, std: float | None) -> None:
    """Record ``q`` when the fan its std divides by differs between the conventions:
    in ``true_fans`` under ``fans: module``, in ``swapped`` under torch's fans on a ``Conv1D``
    (``explicit``: the rule says ``fans: torch`` itself)."""
    if fans is None or std is None:
        return
    # the fan the std divides by: kaiming and variance_scaling by mode, xavier the average, lecun and
    # std "1/sqrt(fan_in)" fan_in
    mode = ("fan_avg" if init.startswith("xavier") else "fan_in" if init.startswith("lecun")
            or init in ("normal", "trunc_normal", "fan_in_uniform") else args.get("mode", "fan_in"))
    kind = args.get("fans", "torch")
    if kind == "module":
        n_used, n_other = fans.select(mode), torch_fans(shape).select(mode)
        if n_used != n_other and n_other > 0:
            true_fans.setdefault((label, init, mode), []).append((q, n_used, n_other, std))
    elif kind == "torch" and type(mod).__name__ == "Conv1D" and len(shape) == 2:
        n_used, n_other = fans.select(mode), compute_fans(shape, "x@w").select(mode)
        if n_used != n_other and n_other > 0:
            swapped.setdefault((label, init, mode, explicit), []).append((q, n_used, n_other, std))


def _shown(hits: list, mode: str, fmt: str = "{n}: {mode} {a:g} vs {b:g}, std {sd:.4g} vs {sd2:.4g}") -> str:
    shown = "; ".join(fmt.format(n=n, mode=mode, a=a, b=b, sd=sd, sd2=sd * math.sqrt(a / b)) for n, a, b, sd in hits[:3])
    return shown + (f"; and {len(hits) - 3} more" if len(hits) > 3 else "")


def fans_notes(true_fans: Hits, swapped: Hits) -> tuple[list[str], list[str]]:
    """(notes, warnings) for what :func:`record_fans` found."""
    notes, warns = [], []
    for (rname, init, mode), hits in true_fans.items():
        notes.append(
            f"rule {rname!r} ({init}, {mode}) uses true fans (fans: module): on {len(hits)} grouped/transposed "
            f"weight(s) the {mode} differs from torch.nn.init.{init}_'s, which counts every group "
            f"({_shown(hits, mode)}); a recipe ported from torch gets the second std: give the rule args fans: torch "
            "for it")
    for (rname, init, mode, explicit), hits in swapped.items():
        msg = (f"rule {rname!r} ({init}, {mode}) uses torch's fans (fans: torch{'' if explicit else ', the default'}) "
               f"on {len(hits)} Hugging Face Conv1D weight(s), stored (in, out) for x @ w: torch's rule reads them "
               f"swapped, so the {mode} is not the layer's ("
               f"{_shown(hits, mode, '{n}: {mode} {a:g} (true {b:g}), std {sd:.4g} (true fans: {sd2:.4g})')}); "
               "give the rule args fans: module for the layer's fans")
        notes.append(msg)
        if not explicit:
            warns.append(msg + " (or fans: torch to keep these)")
    return notes, warns
