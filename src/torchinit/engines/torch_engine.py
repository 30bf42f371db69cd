"""The torch engine: fills a spec with torch's own sampling primitives, in the
same order and with the same calls as ``torch.nn.init``, so results, generator
state and errors are bitwise identical to the installed torch.

Known torch traps kept for parity (documented in docs/initializers.md):

* ``sparse_`` draws its zero positions with ``torch.randperm`` on the GLOBAL
  generator even when ``generator=`` is given, one Python loop step per column.
* ``trunc_normal_`` in torch 2.13 uses rejection sampling whose RNG consumption
  depends on the data; older releases used an erfinv transform. We call the
  installed torch's own routine so the parity holds for any version.

Not kept: on a sharded DTensor, torch's ``eye_`` replaces the local shard by a
full-size matrix and ``dirac_`` writes zeros only; both are filled here from the
shard's global indices (no randomness involved, so this is the one right answer).
``orthogonal_`` / ``sparse_`` without ``key=`` raise: torch either fails mid-way or
gives each rank an unrelated matrix, whose gathered whole is not orthogonal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.specs import (
    Constant,
    DeltaOrthogonal,
    Dirac,
    Eye,
    Normal,
    Orthogonal,
    Sparse,
    Spec,
    TruncatedNormal,
    Uniform,
)
from ..core.gate_specs import GateConstant, OrthogonalPerGate
from .structured import _dirac_, _gate_constant_

__all__ = ["torch_fill_"]


def _orthogonal_matrix(rows: int, cols: int, like: Tensor, generator) -> Tensor:
    """Haar-distributed (rows, cols) semi-orthogonal matrix, torch's algorithm."""
    flattened = like.new_empty((rows, cols)).normal_(0, 1, generator=generator)
    if rows < cols:
        flattened.t_()
    q, r = torch.linalg.qr(flattened)
    # sign(diag(R)) makes Q Haar distributed (Mezzadri 2007)
    q *= torch.diag(r, 0).sign()
    if rows < cols:
        q.t_()
    return q


def torch_fill_(tensor: Tensor, spec: Spec, generator: torch.Generator | None = None) -> Tensor:
    """Fill ``tensor`` in place with ``spec`` using torch's RNG; returns ``tensor``."""
    from .dtensor import is_dtensor

    # element-wise draws and constants on a DTensor: torch's own DTensor ops, as in torch
    if is_dtensor(tensor) and not isinstance(spec, Constant) and (not spec.random or spec.needs_whole_tensor):
        return _dtensor_fill_(tensor, spec)
    with torch.no_grad():
        if isinstance(spec, Uniform):
            return tensor.uniform_(spec.low, spec.high, generator=generator)
        if isinstance(spec, Normal):
            return tensor.normal_(spec.mean_, spec.std_, generator=generator)
        if isinstance(spec, TruncatedNormal):
            from torch.nn.init import _no_grad_trunc_normal_

            if tensor.is_complex():
                # torch writes normals, then fails comparing complex numbers: raise the
                # same error from a scratch tensor so the tensor is left untouched. The
                # scratch has the tensor's strides and conjugate bit, so torch draws and
                # fails exactly as on the tensor (same RNG use, same error for expanded
                # or conjugated views).
                scratch = torch.empty_strided(tensor.size(), tensor.stride(), dtype=tensor.dtype,
                                              device=tensor.device)
                if tensor.is_conj():
                    scratch = scratch.conj()
                scratch = _no_grad_trunc_normal_(scratch, spec.mean_, spec.std_, spec.a, spec.b, generator=generator)
                return tensor.copy_(scratch)
            return _no_grad_trunc_normal_(tensor, spec.mean_, spec.std_, spec.a, spec.b, generator=generator)
        if isinstance(spec, Constant):
            return tensor.fill_(spec.value)
        if isinstance(spec, Eye):
            torch.eye(*tensor.shape, out=tensor, requires_grad=tensor.requires_grad)
            return tensor
        if isinstance(spec, Dirac):
            return _dirac_(tensor, spec.groups)
        if isinstance(spec, Orthogonal):
            if tensor.numel() == 0 or tensor.is_meta:
                return tensor
            rows = tensor.size(0)
            q = _orthogonal_matrix(rows, tensor.numel() // rows, tensor, generator)
            target = tensor.view_as(q)
            # torch copies, then multiplies in place (same dtype, same bits); scaling q
            # first means a bad gain raises torch's error before anything is written.
            q.mul_(spec.gain)
            target.copy_(q)
            return tensor
        if isinstance(spec, OrthogonalPerGate):
            return _orthogonal_per_gate_(tensor, spec, generator)
        if isinstance(spec, GateConstant):
            return _gate_constant_(tensor, spec.values)
        if isinstance(spec, DeltaOrthogonal):
            if tensor.numel() == 0 or tensor.is_meta:
                return tensor
            out_c, in_c = tensor.shape[:2]
            # LAPACK's QR has no float16/bfloat16 kernels: draw and factor in float32, then
            # round once (torch.nn.init.orthogonal_ raises there; this extra need not)
            like = tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.new_empty(0, dtype=torch.float32)
            q = _orthogonal_matrix(out_c, in_c, like, generator).mul_(spec.gain)  # before any write
            tensor.zero_()
            # (k - 1) // 2: torch's padding="same" pads (k - 1) // 2 on the left, so the
            # delta there maps each pixel to itself (k // 2 shifts by one pixel per layer
            # for even k, and the signal leaks out at the border); JAX's convention
            centre = tuple((s - 1) // 2 for s in tensor.shape[2:])
            tensor[(slice(None), slice(None)) + centre] = q
            return tensor
        if isinstance(spec, Sparse):
            if tensor.is_meta:
                return tensor
            import math

            rows, cols = tensor.shape
            num_zeros = math.ceil(spec.sparsity * rows)
            tensor.normal_(0, spec.std_, generator=generator)
            for col_idx in range(cols):
                # torch ignores `generator` here: randperm uses the global RNG.
                zero_indices = torch.randperm(rows)[:num_zeros]
                tensor[zero_indices, col_idx] = 0
            return tensor
    raise TypeError(f"the torch engine cannot fill spec {spec!r}")


def _orthogonal_per_gate_(tensor: Tensor, spec: OrthogonalPerGate, generator) -> Tensor:
    """One orthogonal block per gate, drawn in gate order: the same generator use and bits as
    ``torch.nn.init.orthogonal_`` on each block in turn (for float32/float64 tensors)."""
    if tensor.numel() == 0 or tensor.is_meta:
        return tensor
    rows = tensor.size(0)
    h, cols = rows // spec.gates, tensor.numel() // rows
    # LAPACK's QR has no float16/bfloat16 kernels: draw and factor in float32, then round once
    like = tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.new_empty(0, dtype=torch.float32)
    blocks = [_orthogonal_matrix(h, cols, like, generator).mul_(spec.gain) for _ in range(spec.gates)]
    # every block is drawn before the first write: a failing QR leaves the tensor untouched
    tensor.copy_(torch.cat(blocks).view(tensor.shape))
    return tensor


def _dtensor_fill_(tensor: Tensor, spec: Spec) -> Tensor:
    """``spec`` on a sharded DTensor, where torch's own calls go wrong (module docstring)."""
    if not spec.random:  # eye / dirac: a function of the global index alone
        from .keyed import Key
        from .keyed.shards import shard_fill_

        return shard_fill_(tensor, spec.checked(), Key(0))
    # random and needing the whole tensor (orthogonal, delta-orthogonal, sparse)
    raise TypeError(
        f"{type(spec).__name__} init of a DTensor (shape {tuple(tensor.shape)}) needs the whole tensor, and "
        f"torch's per-rank generator would give each shard an unrelated part; pass key=torchinit.Key(seed, name) "
        f"(keyed engine: every rank computes the same whole tensor and keeps its shard)")
