"""Shard-local initialization of DTensors (FSDP2, tensor parallel, 2-D meshes).

The keyed engine computes every element as a pure function of
``(key, global element index, spec)``. A rank that holds the box
``[o_0, o_0 + s_0) x [o_1, o_1 + s_1) x ...`` of a tensor of global shape ``G``
therefore fills its local tensor with ``fill_region_(local, spec, key, G, o)``
and gets exactly the values single-process init puts there: the gathered
``full_tensor()`` is bitwise identical to ``fill_(torch.empty(G), spec, key)``
for every sharding, with no collective communication.

* ``Shard(d)`` / ``Replicate()`` on any number of mesh dimensions, even or
  uneven shards (torch.chunk semantics; a rank may hold an empty shard): the
  local tensor is one box whose offsets come from
  ``torch.distributed.tensor._utils.compute_local_shape_and_global_offset``.
* ``_StridedShard`` (FSDP2 over a tensor-parallel dim): the local tensor is a
  union of boxes; each dimension's global indices are found by sharding an
  index vector the same way (locally, ``src_data_rank=None``: no
  communication), and each box is filled separately.
* ``Partial()``: rejected (a partial sum has no per-element values to draw).
* Specs with ``needs_whole_tensor``: ``Orthogonal`` and ``DeltaOrthogonal``
  values depend on the whole matrix (a QR), so EVERY rank computes the full
  tensor with the keyed engine and keeps its own box. Cost per such parameter:
  one temporary full-size tensor and the full computation on every rank (an
  orthogonal 4096x4096 fp32 weight: 64 MiB and one QR per rank). ``Sparse``
  zero positions depend on whole columns: each rank draws them for all rows of
  its own columns only. The results are still bitwise identical to
  single-process init.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...core.specs import Spec
from ..dtensor import check_no_dtensor, is_dtensor, local_boxes, zero_rows_
from .engine import fill_region_, sample
from .key import Key

# the layout helpers are re-exported: torchinit.sharding (this module) is a documented path
__all__ = ["is_dtensor", "shard_fill_", "local_boxes", "check_no_dtensor", "zero_rows_"]


def shard_fill_(dtensor: Tensor, spec: Spec, key: "Key", *, name: str | None = None) -> Tensor:
    """Fill the local shard of ``dtensor`` with the values single-process keyed init
    gives those global indices; returns ``dtensor``. No collective communication.

    ``full_tensor()`` afterwards equals ``keyed.fill_(torch.empty(shape), spec, key)``
    bitwise, for Shard(d)/Replicate/_StridedShard placements on any mesh, even or
    uneven. ``Orthogonal``/``DeltaOrthogonal`` compute the full tensor on every
    rank (memory: one full-size temporary; compute: the whole QR per rank).
    ``Partial`` placements raise ``ValueError``.
    """
    label = name or (key.path if getattr(key, "path", "") else "tensor")
    if not is_dtensor(dtensor):
        raise TypeError(f"shard_fill_ expects a DTensor for {label!r}, got {type(dtensor).__name__}")
    gshape = tuple(dtensor.shape)
    spec.check_shape(gshape)
    boxes = local_boxes(dtensor, label)
    with torch.no_grad():
        local = dtensor._local_tensor
        if local.numel() == 0:
            return dtensor
        if spec.needs_whole_tensor and len(boxes) > 1:  # compute the whole tensor once, not per box
            full = sample(spec, key, gshape, dtype=local.dtype, device=local.device)
            for index, offsets, sizes in boxes:
                src = full[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))]
                local[index].copy_(src)
            del full
            return dtensor
        if len(boxes) == 1:
            fill_region_(local, spec, key, gshape, boxes[0][1])
            return dtensor
        for index, offsets, sizes in boxes:
            if 0 in sizes:
                continue
            fill_region_(local[index], spec, key, gshape, offsets)
    return dtensor
