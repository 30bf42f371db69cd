"""Structured, random-free fills shared by the engines (Dirac kernels, per-gate constants)."""

from __future__ import annotations

from torch import Tensor


def _dirac_(tensor: Tensor, groups: int) -> Tensor:
    if tensor.is_meta:
        return tensor
    sizes = tensor.shape
    out_chans_per_grp = sizes[0] // groups
    min_dim = min(out_chans_per_grp, sizes[1])
    centre = tuple(s // 2 for s in sizes[2:])
    tensor.zero_()
    for g in range(groups):
        for d in range(min_dim):
            tensor[(g * out_chans_per_grp + d, d) + centre] = 1
    return tensor


def _gate_constant_(tensor: Tensor, values: tuple[float, ...]) -> Tensor:
    """Block ``g`` of dim 0 (``size(0) / len(values)`` rows) set to ``values[g]``; any strides."""
    if tensor.is_meta:
        return tensor
    h = tensor.shape[0] // len(values)
    for g, v in enumerate(values):
        tensor[g * h:(g + 1) * h].fill_(v)
    return tensor
