"""fill_(): the keyed fill of a whole tensor (a DTensor is filled shard-locally)."""

from __future__ import annotations

from torch import Tensor

from ...core import specs as S
from .engine import _check_key, checked_spec, fill_region_
from .key import Key
from .shards import shard_fill_

__all__ = ["fill_"]


def fill_(tensor: Tensor, spec: S.Spec, key: Key) -> Tensor:
    r"""Fill the whole (logical) ``tensor`` in place with ``spec`` from ``key``; returns it.

    Element values depend only on (key, logical row-major index, spec, dtype
    class): never on memory layout (non-contiguous, channels_last), threads or
    backend. A DTensor is delegated to ``torchinit.sharding.shard_fill_`` (:mod:`.shards`), which
    fills each local shard with :func:`fill_region_`.
    """
    if type(tensor).__name__ == "DTensor":
        _check_key(key)
        checked_spec(spec)
        return shard_fill_(tensor, spec, key)
    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    return fill_region_(tensor, spec, key, tuple(tensor.shape), (0,) * tensor.dim())
