"""The keyed engine: counter-based, name-keyed random initialization.

Every value is a pure function of (key, logical row-major element index, spec):
bit-identical for any thread count, chunk size, region/sharding, memory layout
and backend (native C kernel or the pure-torch reference that runs on any
device). The stream (Philox4x32-10 + fixed IEEE transforms) is specified in
docs/keyed-stream.md and versioned by :data:`STREAM_VERSION`.

>>> import torch, torchinit
>>> w = torch.empty(4, 3)
>>> torchinit.keyed.fill_(w, torchinit.specs.Normal(0, 0.02), torchinit.Key(0).child("fc.weight"))  # doctest: +SKIP
"""

from typing import Sequence

from ._constants import STREAM_VERSION
from .backend import get_backend, get_chunk_size, get_num_threads, native_available, set_backend, set_chunk_size, set_num_threads
from .fill import fill_
from .engine import fill_region_, sample
from .key import Key

__all__ = [
    "Key",
    "fill_",
    "fill_region_",
    "sample",
    "STREAM_VERSION",
    "get_backend",
    "set_backend",
    "native_available",
    "set_num_threads",
    "get_num_threads",
    "set_chunk_size",
    "get_chunk_size",
    "philox4x32",
]


def philox4x32(counter: Sequence[int], key: Sequence[int]) -> tuple[int, int, int, int]:
    """One Philox4x32-10 block: ``counter`` 4 uint32 words, ``key`` 2 uint32 words (reference backend)."""
    import torch

    from .reference import philox4x32 as _ph

    if len(counter) != 4 or len(key) != 2:
        raise ValueError("philox4x32 needs a 4-word counter and a 2-word key")
    for w in (*counter, *key):
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w < 2**32:
            raise ValueError(f"philox4x32: words must be ints in [0, 2**32), got {w!r}")
    c = [torch.tensor([w], dtype=torch.int64, device="cpu") for w in counter]
    out = _ph(*c, key[0], key[1])
    return tuple(int(x.item()) for x in out)
