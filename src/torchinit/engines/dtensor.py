"""Where a DTensor's local shard sits in the global tensor (boxes of global indices),
for any placement torchinit fills shard-locally; no engine, no randomness.

``Shard(d)`` / ``Replicate()`` give one box per rank (torch.chunk semantics, even or
uneven, possibly empty); ``_StridedShard`` (FSDP2 over a tensor-parallel dim) a union
of boxes; ``Partial()`` is rejected. The engines use these boxes to fill shards.
"""
from __future__ import annotations

import itertools
import sys
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["is_dtensor", "local_boxes", "check_no_dtensor", "zero_rows_"]


def is_dtensor(t: object) -> bool:
    """True if ``t`` is a ``torch.distributed.tensor.DTensor`` (False when distributed is unavailable)."""
    mod = sys.modules.get("torch.distributed.tensor")
    if mod is None:  # not imported: no DTensor can exist (and importing it costs ~1 s)
        return False
    dtensor_cls = getattr(mod, "DTensor", None)
    return dtensor_cls is not None and isinstance(t, dtensor_cls)


def check_no_dtensor(tensor: Tensor, name: str, engine: str = "torch") -> None:
    """Raise ``TypeError`` if ``tensor`` (parameter ``name``) is a DTensor: the torch
    engine draws from a per-rank generator, so sharded results would differ from
    single-process init (on CPU meshes every shard even gets the SAME values)."""
    if is_dtensor(tensor):
        raise TypeError(
            f"parameter {name!r} is a DTensor (sharded); engine={engine!r} cannot initialize it so that the "
            f"gathered tensor equals single-process init (torch's RNG is per rank). Use engine=\"keyed\", "
            f"which fills each shard from its global indices"
        )


def _runs(indices: Sequence[int]) -> list[tuple[int, int, int]]:
    """Group sorted-by-position global ``indices`` into runs of consecutive values:
    ``[(local_start, global_start, length), ...]``."""
    out: list[tuple[int, int, int]] = []
    for pos, g in enumerate(indices):
        if out and out[-1][1] + out[-1][2] == g:
            ls, gs, n = out[-1]
            out[-1] = (ls, gs, n + 1)
        else:
            out.append((pos, g, 1))
    return out


def _strided_cls() -> type | None:
    try:
        from torch.distributed.tensor.placement_types import _StridedShard
    except ImportError:  # pragma: no cover - older torch
        return None
    return _StridedShard


def _placements_checked(dtensor: Tensor, name: str):
    from torch.distributed.tensor.placement_types import Partial, Replicate, Shard

    placements = tuple(dtensor.placements)
    strided = _strided_cls()
    for p in placements:
        if strided is not None and isinstance(p, strided):
            continue
        if isinstance(p, Partial):
            raise ValueError(
                f"{name!r}: cannot initialize a DTensor with a Partial placement {placements}: a partial sum "
                f"has no per-element values; redistribute to Shard/Replicate first"
            )
        if not isinstance(p, (Shard, Replicate)):
            raise ValueError(f"{name!r}: unsupported DTensor placement {p!r} in {placements}")
    return placements


def local_boxes(dtensor: Tensor, name: str = "tensor") -> list[tuple[tuple[slice, ...], tuple[int, ...], tuple[int, ...]]]:
    """The boxes of the global tensor that this rank's local shard holds.

    Returns a list of ``(local_index, global_offsets, sizes)``: ``local[local_index]``
    holds the global box starting at ``global_offsets`` with extent ``sizes``.
    One box for Shard/Replicate placements; several for ``_StridedShard``.
    No collective communication.
    """
    from torch.distributed.tensor import distribute_tensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    from torch.distributed.tensor.placement_types import Replicate, Shard

    placements = _placements_checked(dtensor, name)
    mesh = dtensor.device_mesh
    gshape = tuple(dtensor.shape)
    local = dtensor._local_tensor
    strided_cls = _strided_cls()
    if strided_cls is None or not any(isinstance(p, strided_cls) for p in placements):
        lshape, offsets = compute_local_shape_and_global_offset(gshape, mesh, placements)
        if tuple(lshape) != tuple(local.shape):  # pragma: no cover - defensive
            raise RuntimeError(f"{name}: local shape {tuple(local.shape)} != computed {tuple(lshape)}")
        return [(tuple(slice(None) for _ in gshape), tuple(int(o) for o in offsets), tuple(int(s) for s in lshape))]

    # Strided shards: per tensor dim, shard an index vector the same way.
    per_dim: list[list[tuple[int, int, int]]] = []
    for d, size in enumerate(gshape):
        mapped = []
        for p in placements:
            if isinstance(p, strided_cls) and p.dim == d:
                mapped.append(strided_cls(0, split_factor=p.split_factor))
            elif isinstance(p, Shard) and p.dim == d:
                mapped.append(Shard(0))
            else:
                mapped.append(Replicate())
        idx = torch.arange(size, device=local.device)
        got = distribute_tensor(idx, mesh, mapped, src_data_rank=None).to_local().tolist()
        if len(got) != local.shape[d]:  # pragma: no cover - defensive
            raise RuntimeError(f"{name}: dim {d}: {len(got)} indices for a local size {local.shape[d]}")
        per_dim.append(_runs(got))
    boxes = []
    for combo in itertools.product(*per_dim):
        index = tuple(slice(ls, ls + n) for ls, _, n in combo)
        boxes.append((index, tuple(gs for _, gs, _ in combo), tuple(n for _, _, n in combo)))
    return boxes


def zero_rows_(tensor: Tensor, rows: Sequence[int]) -> Tensor:
    """Zero the global rows ``rows`` (dim 0, negative indices allowed) of ``tensor``;
    for a DTensor each rank zeroes the rows it holds (no communication). Returns ``tensor``."""
    with torch.no_grad():
        if not is_dtensor(tensor):
            for r in rows:
                tensor[r].fill_(0)
            return tensor
        n = tensor.shape[0]
        local = tensor._local_tensor
        for index, offsets, sizes in local_boxes(tensor):
            for r in rows:
                g = r % n if n else r
                if offsets[0] <= g < offsets[0] + sizes[0]:
                    local[index][g - offsets[0]].fill_(0)
    return tensor
