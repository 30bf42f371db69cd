"""Structured, random-free fills shared by the engines (Dirac kernels)."""

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
