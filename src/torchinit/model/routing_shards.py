"""Routed init code writing into DTensor shards (FSDP2, tensor parallel, 2-D meshes).

:func:`torchinit.keyed_init_mode` attributes a write to a model tensor and fills
what the write covers from global element indices. For a DTensor parameter the
write lands in this rank's local tensor: the region written is found in LOCAL
storage (the written tensor's local tensor is a box of the parameter's local
tensor, e.g. ``p``, ``p.data``, ``p[:, :k]``), and each part of it that the rank
holds is a box of the global tensor (:func:`torchinit.engines.dtensor.local_boxes`),
so :func:`fill_region_` gives it the values one process gives those global
indices. No collective communication.

Where one process computes a value from the whole tensor (``orthogonal_``'s QR,
``sparse_``'s per-column zeros, or an unkeyed fallback such as ``p.bernoulli_()``),
every rank computes the whole tensor, the same way, and keeps what it holds:
one full-size temporary and the full computation per rank for that tensor.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from ..core import specs as S
from ..engines.dtensor import is_dtensor, local_boxes

__all__ = ["storage_key", "check_mode_model", "dtensor_regions", "fill_dtensor_", "whole_tensor_fallback_",
           "copy_into_dtensor_", "ShardWriteError", "global_index", "index_box", "box_regions"]

Region = tuple[tuple[slice, ...], tuple[int, ...]]  # (slices into the base's local tensor, global offsets)


class ShardWriteError(ValueError):
    """A write into a sharded tensor that cannot be made equal to one process's."""


def storage_key(t: Tensor) -> int | None:
    """The address that identifies ``t``'s memory: its (local, for a DTensor) storage's."""
    try:
        local = t._local_tensor if is_dtensor(t) else t
        st = local.untyped_storage()
        return st.data_ptr() if st.nbytes() > 0 else None
    except Exception:  # fakes and other subclasses without a plain storage
        return None


def check_mode_model(model: nn.Module, what: str) -> None:
    """Refuse, before any code runs, a model the routed/audited code cannot write
    meaningfully: a DTensor with a ``Partial`` placement (no per-element values), and
    a model whose every tensor is still on the meta device (writes would store nothing)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} expects an nn.Module, got {type(model).__name__}")
    tensors = [(n, t) for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t is not None]
    for name, t in tensors:
        if is_dtensor(t):
            local_boxes(t, name)  # raises ValueError naming a Partial / unsupported placement
    if tensors and all(t.is_meta for _, t in tensors):
        raise ValueError(
            f"{what}: every parameter and buffer of the model is on the meta device (first: {tensors[0][0]!r}), "
            "so the init code would write nothing; allocate it first (model.to_empty(device=...), after "
            "fully_shard for FSDP2) or use torchinit.materialize(model, device, policy, seed=...)")


def _box_of(t: Tensor, base: Tensor) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(offsets, sizes) when ``t`` is a rectangular box of contiguous ``base``, else None."""
    if not base.is_contiguous() or base.dim() == 0:
        return None
    delta = t.storage_offset() - base.storage_offset()
    if delta < 0 or delta >= base.numel():
        return None
    shape, strides = tuple(base.shape), base.stride()
    idx = []
    rem = delta
    for st in strides:
        q, rem = divmod(rem, st) if st > 0 else (0, rem)
        idx.append(q)
    if rem != 0 or any(i >= s for i, s in zip(idx, shape)):
        return None
    sizes = [1] * len(shape)
    d = 0
    for size, st in zip(t.shape, t.stride()):
        if size == 1:
            continue
        while d < len(shape) and not (strides[d] == st and shape[d] > 1):
            d += 1
        if d == len(shape) or idx[d] + size > shape[d]:
            return None
        sizes[d] = size
        d += 1
    if math.prod(sizes) != t.numel():
        return None
    return tuple(idx), tuple(sizes)


def dtensor_regions(t: Tensor, base: Tensor) -> tuple[list[Region], bool] | None:
    """The parts of DTensor ``base`` that a write into ``t`` (``base``, an alias or a box
    view of it) covers on this rank, as boxes of ``base``'s local tensor with their
    global offsets, and whether ``t`` is the whole of ``base``; None when ``t``'s local
    tensor is not a box of ``base``'s."""
    tl, bl = t._local_tensor, base._local_tensor
    if tl.dtype != bl.dtype:
        return None
    boxes = local_boxes(base)
    if tuple(t.shape) == tuple(base.shape) and tl.storage_offset() == bl.storage_offset() \
            and tuple(tl.shape) == tuple(bl.shape) and tl.stride() == bl.stride():
        return [(tuple(slice(x.start or 0, (x.start or 0) + n) for x, n in zip(index, sizes)), offsets)
                for index, offsets, sizes in boxes if 0 not in sizes], True
    if tl.numel() == 0:
        return [], False
    if bl.numel() == 0:
        return None
    box = _box_of(tl, bl)
    if box is None:
        return None
    lo, ln = box
    out: list[Region] = []
    for index, offsets, sizes in boxes:
        sl, goff = [], []
        for s, o, n, a0, n0 in zip(index, offsets, sizes, lo, ln):
            ls = s.start or 0
            a, b = max(a0, ls), min(a0 + n0, ls + n)
            if a >= b:
                break
            sl.append(slice(a, b))
            goff.append(o + a - ls)
        else:
            out.append((tuple(sl), tuple(goff)))
    return out, False


def fill_dtensor_(base: Tensor, regions: list[Region], spec: S.Spec, key: Any) -> None:
    """Fill ``regions`` of ``base``'s local tensor with the keyed values of their global indices."""
    from ..engines.keyed import fill_region_

    gshape = tuple(base.shape)
    spec.check_shape(gshape)
    local = base._local_tensor
    for sl, goff in regions:
        fill_region_(local[sl], spec, key, gshape, goff)


def global_index(t: Tensor, regions: list[Region], full: bool) -> tuple[slice, ...] | None:
    """``t`` (a box view of the base found in local storage) as an index into the base's
    global tensor, or None when its place cannot be found locally (no local element, a
    view that drops dimensions, a strided shard)."""
    if full:
        return tuple(slice(0, n) for n in t.shape)
    if len(regions) != 1 or t.dim() != len(regions[0][1]):
        return None
    tboxes = local_boxes(t)
    if len(tboxes) != 1:
        return None
    # the single region starts at t's local element 0, which is t's global element tboxes[0][1]
    return tuple(slice(g - o, g - o + n) for g, o, n in zip(regions[0][1], tboxes[0][1], t.shape))


def index_box(index: Any, shape: tuple[int, ...]) -> tuple[tuple, tuple[int, ...], tuple[int, ...]] | None:
    """A basic index (ints and step-1 slices) of a tensor of ``shape`` as a global index with
    explicit bounds, and the box it selects (offsets, sizes); None for anything else."""
    idx = index if isinstance(index, tuple) else (index,)
    if len(idx) > len(shape):
        return None
    gindex, offs, sizes = [], [], []
    for d, n in enumerate(shape):
        i = idx[d] if d < len(idx) else slice(None)
        if isinstance(i, int) and not isinstance(i, bool):
            if not -n <= i < n:
                return None
            gindex.append(i % n)
            offs.append(i % n)
            sizes.append(1)
        elif isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step != 1:
                return None
            stop = max(stop, start)
            gindex.append(slice(start, stop))
            offs.append(start)
            sizes.append(stop - start)
        else:
            return None
    return tuple(gindex), tuple(offs), tuple(sizes)


def box_regions(base: Tensor, offsets: tuple[int, ...], sizes: tuple[int, ...]) -> list[Region]:
    """The parts of the global box (``offsets``, ``sizes``) of ``base`` this rank holds."""
    out: list[Region] = []
    for index, goff, gsz in local_boxes(base):
        sl, go = [], []
        for s, o, n, a0, n0 in zip(index, goff, gsz, offsets, sizes):
            ls = s.start or 0
            a, b = max(a0, o), min(a0 + n0, o + n)
            if a >= b:
                break
            sl.append(slice(ls + a - o, ls + b - o))
            go.append(a)
        else:
            out.append((tuple(sl), tuple(go)))
    return out


def _box_of_index(gindex: tuple) -> tuple[tuple[int, ...], tuple[int, ...]]:
    offs = tuple(i if isinstance(i, int) else i.start for i in gindex)
    sizes = tuple(1 if isinstance(i, int) else i.stop - i.start for i in gindex)
    return offs, sizes


def whole_tensor_fallback_(t: Tensor, base: Tensor, regions: list[Region], gindex: tuple | None, name: str,
                           run: Callable[[Tensor], Any]) -> bool:
    """An unkeyed write (``run(x)`` writes into ``x`` what one process's code writes into
    ``t``, which is ``base[gindex]`` globally), run on every rank over a full-size
    temporary of ``base``; each rank keeps its part. Equal to one process when ``run`` is
    deterministic (the routed fallback seeds it). Returns False when this rank holds
    nothing of ``t`` (``run`` was not called)."""
    if not regions:
        return False
    if gindex is None:
        raise ShardWriteError(
            f"{name!r}: cannot run this write on a view of the sharded tensor so that it equals one process "
            f"(the view's place in the global tensor is not known locally); write the whole tensor, or a "
            f"view that keeps its dimensions")
    whole = torch.zeros(tuple(base.shape), dtype=base.dtype, device=base._local_tensor.device)
    run(whole[gindex])
    local = base._local_tensor
    for sl, goff in regions:
        local[sl].copy_(whole[tuple(slice(g, g + (s.stop - s.start)) for g, s in zip(goff, sl))])
    return True


def copy_into_dtensor_(base: Tensor, regions: list[Region], gindex: tuple | None, t: Any, src: Tensor,
                       name: str) -> None:
    """``t.copy_(src)`` for a plain ``src`` (broadcast to ``t``'s shape, as one process does;
    ``t`` may also be that shape itself)."""
    if not regions:
        return
    if gindex is None:
        raise ShardWriteError(
            f"{name!r}: cannot copy a plain tensor into this view of the sharded tensor (its place in the global "
            f"tensor is not known locally); copy into the whole tensor instead")
    offs, sizes = _box_of_index(gindex)
    shape = tuple(t.shape) if isinstance(t, Tensor) else tuple(t)
    src = src.detach().to(device=base._local_tensor.device, dtype=base.dtype).expand(shape).reshape(sizes)
    local = base._local_tensor
    for sl, goff in regions:
        box = tuple(slice(g - o, g - o + (s.stop - s.start)) for g, o, s in zip(goff, offs, sl))
        local[sl].copy_(src[box])


@contextlib.contextmanager
def parametrized_outputs(model: nn.Module, table: dict[int, Any]) -> Iterator[None]:
    """While init code runs, record in ``table`` (id -> weakref) each weight a parametrization of
    ``model`` computes (``weight_norm``'s ``g * v / ||v||``, read as ``layer.weight``). Init code
    that draws into it (Hugging Face Wav2Vec2 / HuBERT's ``pos_conv_embed``) writes a temporary
    that is lost, in one process as on shards: a sharded one is that, not another model's DTensor."""
    from torch.nn.utils import parametrize

    def hook(mod, args, out):
        if isinstance(out, Tensor):
            table[id(out)] = weakref.ref(out)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, parametrize.ParametrizationList)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        table.clear()
