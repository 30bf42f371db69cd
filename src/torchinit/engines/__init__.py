"""Layer 2, engines: how values are drawn for a spec.

* :mod:`.torch_engine`: torch's own generator, bitwise as ``torch.nn.init``;
* :mod:`.keyed`: the counter-based keyed engine (C kernel and reference backend),
  every value a pure function of (key, element index, spec);
* :mod:`.dtensor`: where a DTensor's shard sits in the global tensor, used to fill
  shards locally (:mod:`.keyed.shards`);
* :mod:`.structured`: random-free fills both engines share.

Engines import only :mod:`torchinit.core`.
"""

from . import keyed
from .torch_engine import torch_fill_

__all__ = ["keyed", "torch_fill_"]
