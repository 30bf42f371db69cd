"""Fan computation: how many inputs feed one output (fan_in) and how many outputs
one input feeds (fan_out), for every common weight layout.

torch's ``_calculate_fan_in_and_fan_out`` assumes the layout ``(out, in, *kernel)``
and applies it to every tensor. That is right for ``nn.Linear`` and ``nn.ConvNd``
fan_in, but wrong for:

* weights used as ``x @ w`` (layout ``(in, out)``, as in JAX/Flax and many
  hand-written models): torch swaps fan_in and fan_out;
* transposed convolutions, stored ``(in, out/groups, *kernel)``: torch's
  "fan_in" is really ``out/groups * prod(kernel)``;
* grouped and depthwise convolutions, stored ``(out, in/groups, *kernel)``:
  fan_in is right, fan_out is ``groups`` times too large.

:func:`compute_fans` handles each by name, :func:`module_fans` picks the right
one for a module's weight.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

__all__ = ["Fans", "compute_fans", "torch_fans", "module_fans", "LAYOUTS"]

#: Layout names understood by :func:`compute_fans`.
LAYOUTS = ("torch", "x@w", "conv", "conv_transpose")


@dataclass(frozen=True)
class Fans:
    """fan_in / fan_out of a weight, with the receptive field they include."""

    fan_in: int
    fan_out: int
    receptive_field: int = 1

    @property
    def fan_avg(self) -> float:
        """(fan_in + fan_out) / 2."""
        return (self.fan_in + self.fan_out) / 2.0

    def select(self, mode: str) -> float:
        """The denominator of variance scaling for ``mode``.

        fan_in, fan_out, fan_avg = (fan_in + fan_out) / 2,
        fan_geo_avg = sqrt(fan_in * fan_out).
        """
        if mode == "fan_in":
            return self.fan_in
        if mode == "fan_out":
            return self.fan_out
        if mode == "fan_avg":
            return self.fan_avg
        if mode == "fan_geo_avg":
            return (self.fan_in * self.fan_out) ** 0.5
        raise ValueError(
            f"Mode {mode} not supported, please use one of "
            "['fan_in', 'fan_out', 'fan_avg', 'fan_geo_avg']"
        )

    def to_dict(self) -> dict:
        """``{"fan_in", "fan_out", "receptive_field"}`` as a plain dict."""
        return {"fan_in": self.fan_in, "fan_out": self.fan_out, "receptive_field": self.receptive_field}


def _shape(x: torch.Tensor | Sequence[int]) -> tuple[int, ...]:
    try:  # int(3.5) would silently truncate a bad dimension
        shape = tuple(operator.index(s) for s in (x.shape if isinstance(x, torch.Tensor) else x))
    except TypeError:
        shape = None
    if shape is None or any(s < 0 for s in shape):
        raise ValueError(f"shape must be a sequence of non-negative ints, got {x!r}")
    return shape


def torch_fans(shape: torch.Tensor | Sequence[int]) -> Fans:
    """Fans exactly as ``torch.nn.init._calculate_fan_in_and_fan_out`` computes them.

    ``fan_in = size(1) * prod(size(2:))``, ``fan_out = size(0) * prod(size(2:))``.
    Raises torch's ``ValueError`` for fewer than 2 dimensions.
    """
    shape = _shape(shape)
    if len(shape) < 2:
        raise ValueError(
            "Fan in and fan out can not be computed for tensor with fewer than 2 dimensions"
        )
    receptive = 1
    for s in shape[2:]:
        receptive *= s
    return Fans(shape[1] * receptive, shape[0] * receptive, receptive)


def compute_fans(
    shape: torch.Tensor | Sequence[int],
    layout: str = "torch",
    *,
    groups: int = 1,
    in_axis: int | None = None,
    out_axis: int | None = None,
) -> Fans:
    """Fans of a weight of the given shape and layout.

    Layouts:

    * ``"torch"``: ``(out, in, *kernel)`` as torch stores Linear/Conv weights;
      identical to torch's own rule (``groups`` is ignored, as in torch).
    * ``"conv"``: ``(out, in/groups, *kernel)``; fan_in = ``in/groups * k``,
      fan_out = ``out/groups * k`` (each input channel feeds only its group).
    * ``"conv_transpose"``: ``(in, out/groups, *kernel)`` as ConvTransposeNd
      stores it; fan_in = ``in/groups * k``, fan_out = ``out/groups * k``
      (stride ignored, as every library does).
    * ``"x@w"``: ``(..., in, out)`` for weights used as ``x @ w`` (JAX layout:
      in_axis=-2, out_axis=-1, leading dims are receptive field).

    ``in_axis``/``out_axis`` override the layout with JAX's general rule:
    ``fan_in = shape[in_axis] * r``, ``fan_out = shape[out_axis] * r`` where r is
    the product of every other dimension.
    """
    shape = _shape(shape)
    if len(shape) < 2:
        raise ValueError(
            "Fan in and fan out can not be computed for tensor with fewer than 2 dimensions"
        )
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if in_axis is not None or out_axis is not None:
        if in_axis is None or out_axis is None:
            raise ValueError("in_axis and out_axis must be given together")
        nd = len(shape)
        for name, ax in (("in_axis", in_axis), ("out_axis", out_axis)):
            # an out-of-range axis would silently wrap around (JAX raises an IndexError)
            if isinstance(ax, bool) or not isinstance(ax, int) or not -nd <= ax < nd:
                raise ValueError(f"{name} must be an int in [-{nd}, {nd}) for shape {shape}, got {ax!r}")
        ia, oa = in_axis % nd, out_axis % nd
        if ia == oa:
            raise ValueError(f"in_axis and out_axis must differ, both are {in_axis} for shape {shape}")
        receptive = 1
        for i, s in enumerate(shape):
            if i not in (ia, oa):
                receptive *= s
        return Fans(shape[ia] * receptive, shape[oa] * receptive, receptive)
    if layout == "torch":
        return torch_fans(shape)
    if layout == "x@w":
        return compute_fans(shape, in_axis=-2, out_axis=-1)
    receptive = 1
    for s in shape[2:]:
        receptive *= s
    if layout == "conv":
        if shape[0] % groups:
            raise ValueError(f"out channels {shape[0]} (dim 0) not divisible by groups={groups}")
        return Fans(shape[1] * receptive, shape[0] // groups * receptive, receptive)
    if layout == "conv_transpose":
        if shape[0] % groups:
            raise ValueError(f"in channels {shape[0]} (dim 0) not divisible by groups={groups}")
        return Fans(shape[0] // groups * receptive, shape[1] * receptive, receptive)
    raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")


def module_fans(module: nn.Module, param: str = "weight") -> Fans:
    """The true fans of ``module.<param>`` given the module type.

    ConvTransposeNd and grouped ConvNd get their corrected layouts, Hugging Face's
    ``Conv1D`` (GPT-2's projections: ``(in, out)``, applied as ``x @ w``) the ``"x@w"``
    layout; any other module's weight uses torch's ``(out, in, *kernel)`` convention.
    """
    w = getattr(module, param, None)
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"{type(module).__name__} has no tensor named {param!r}")
    if type(module).__name__ == "Conv1D" and not isinstance(module, nn.Conv1d) and w.dim() == 2:
        return compute_fans(w.shape, "x@w")  # matched by name: core does not import transformers
    groups = int(getattr(module, "groups", 1) or 1)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return compute_fans(w.shape, "conv_transpose", groups=groups)
    if isinstance(module, nn.modules.conv._ConvNd):
        return compute_fans(w.shape, "conv", groups=groups)
    return compute_fans(w.shape, "torch")
