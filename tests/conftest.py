"""Shared test fixtures for the torchinit suite.

Global settings: matplotlib renders off-screen (``MPLBACKEND=Agg``), so tests and doc
samples that plot never need a display; W&B's process-wide state is reset after each test
that used it (``_wandb_teardown``).
"""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of ``t`` as an integer tensor (NaN-aware, -0.0 != 0.0)."""
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t.resolve_conj())  # a conjugated view: the values it reads as
    if t.dtype == torch.bool:
        return t.contiguous()
    return t.contiguous().view(_INT_OF_SIZE[t.element_size()])


def _assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.device == b.device, (a.device, b.device)
    if a.is_meta:
        return
    ba, bb = _bits(a), _bits(b)
    if not torch.equal(ba, bb):
        neq = (ba != bb).reshape(-1)
        i = int(neq.nonzero()[0])
        fa, fb = a.detach().reshape(-1), b.detach().reshape(-1)
        detail = f"first at flat index {i}: {fa[i].item()} vs {fb[i].item()}" if i < fa.numel() else ""
        raise AssertionError(f"{int(neq.sum())} of {neq.numel()} elements differ in their bits; {detail}")


@pytest.fixture(autouse=True)
def _wandb_teardown():
    """Reset W&B after a test that imported it: ``wandb.init`` keeps process-wide settings
    (its first run's mode), and a later test's offline run in the same worker then tried to
    log in (a doc sample's ``wandb.init(mode="offline")`` before the Lightning logger's test)."""
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None and hasattr(wandb, "teardown"):
        wandb.teardown()


@pytest.fixture
def same_bits():
    """``same_bits(a, b)`` asserts equal shape, dtype, device and bitwise-equal values."""
    return _assert_same_bits


@pytest.fixture
def restore_rng():
    """Restore the global torch RNG after the test (tests that reseed it stay isolated)."""
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: small tensors are as fast, and far faster
    (QR, matmul) when the machine's other core is busy."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture
def restore_backend():
    """Put the keyed engine's backend, thread count and chunk size back after the test."""
    from torchinit.keyed import backend as B

    b, t, c = B.get_backend(), B._num_threads, B.get_chunk_size()
    yield
    B.set_backend(b)
    B.set_num_threads(t)
    B.set_chunk_size(c)
