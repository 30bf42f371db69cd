"""The model's own init code under ``keyed_init_mode`` on sharded models (issue 16): real
gloo groups of 2, 3 and 4 processes (one forkserver per world size). Every rank gathers
each tensor and compares it, bit for bit, with the same init code run by ONE process
(the parent) under the same mode: FSDP2 (meta -> fully_shard -> to_empty -> init code),
tensor parallel (Colwise/Rowwise, Shard(0)/Shard(1), Replicate), a 2-D mesh (FSDP over
TP: _StridedShard), FSDP2 with CPUOffloadPolicy, ``init_model``/``materialize`` with
``"module"``, and the init audit on shards."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback

import pytest
import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import _sharded_models as SM  # noqa: E402

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed + gloo"),
]


def _same_bits(a, b):
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return torch.equal(a.contiguous().view(ints[a.element_size()]), b.contiguous().view(ints[b.element_size()]))


def _gathered(model):
    from torchinit.sharding import is_dtensor

    out = {}
    for k, v in list(model.state_dict().items()) + [("freqs", model.freqs)]:
        out[k] = v.full_tensor() if is_dtensor(v) else v
    return out


def _compare(label, model, ref, failures):
    got = _gathered(model)
    for k, v in ref.items():
        if k not in got:
            failures.append(f"{label}: {k} missing from the sharded model")
        elif not _same_bits(got[k], v):
            failures.append(f"{label}: {k} differs from one process")


@contextlib.contextmanager
def _rank_report(rank, result_dir, failures):
    try:
        yield
    except Exception:
        failures.append(traceback.format_exc())
    finally:
        with open(os.path.join(result_dir, f"rank{rank}.txt"), "w") as fh:
            fh.write("\n".join(failures))
        if dist.is_initialized():
            dist.destroy_process_group()


def _fsdp(model, mesh, **kw):
    from torch.distributed.fsdp import fully_shard

    for mod in (model.fc1, model.fc2, model.emb):
        fully_shard(mod, mesh=mesh, **kw)
    fully_shard(model, mesh=mesh, **kw)
    return model


def _tp(model, mesh):
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    parallelize_module(model, mesh, {"fc1": ColwiseParallel(), "fc2": RowwiseParallel()})
    for name, pl in (("w", Replicate()), ("q", Shard(1)), ("c", Shard(0)), ("m", Shard(1))):
        old = getattr(model, name)
        setattr(model, name, nn.Parameter(distribute_tensor(old.detach(), mesh, [pl], src_data_rank=None)))
    return model


def _init(model, failures, label, skip_norm=False):
    import torchinit

    with torchinit.keyed_init_mode(model, seed=SM.SEED) as mode:
        model.init_weights(skip_norm=skip_norm)
    want = ["norm.weight"] if skip_norm else []
    if mode.missing() != want:
        failures.append(f"{label}: audit missing() = {mode.missing()}, expected {want}")
    return mode


def _worker(rank, world, init_method, refs, result_dir):
    failures: list[str] = []
    with _rank_report(rank, result_dir, failures):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
        from torch.distributed.device_mesh import init_device_mesh

        ref, ref_skip = refs
        mesh = init_device_mesh("cpu", (world,))

        # FSDP2, the usual flow: meta -> fully_shard -> to_empty -> the model's init code
        with torch.device("meta"):
            m = SM.OwnInit()
        _fsdp(m, mesh).to_empty(device="cpu")
        torch.manual_seed(rank)  # the global RNG differs per rank: nothing may depend on it
        _init(m, failures, "fsdp2")
        _compare("fsdp2", m, ref, failures)
        out = m(torch.randn(3, 10))  # the sharded model still runs
        if not torch.isfinite(out).all():
            failures.append("fsdp2: forward not finite")

        # the audit on shards: a skipped norm weight is named, and nothing else
        with torch.device("meta"):
            m = SM.OwnInit()
        _fsdp(m, mesh).to_empty(device="cpu")
        _init(m, failures, "fsdp2 skip", skip_norm=True)
        got = _gathered(m)
        for k, v in ref_skip.items():
            if k != "norm.weight" and not _same_bits(got[k], v):
                failures.append(f"fsdp2 skip: {k} differs from one process")

        if world in (2, 4):
            # tensor parallel on a 1-D mesh: Colwise (Shard(0)), Rowwise (Shard(1)), Replicate
            with torch.device("meta"):
                m = SM.OwnInit()
            _tp(m, mesh).to_empty(device="cpu")
            _init(m, failures, "tp")
            _compare("tp", m, ref, failures)

        if world == 4:
            # 2-D: FSDP over TP (fc1/fc2 weights get _StridedShard on the dp dim)
            mesh2 = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
            with torch.device("meta"):
                m = SM.OwnInit()
            _tp(m, mesh2["tp"])
            _fsdp(m, mesh2["dp"]).to_empty(device="cpu")
            from torch.distributed.tensor.placement_types import _StridedShard

            if not any(isinstance(p, _StridedShard) for p in m.fc1.weight.placements):
                failures.append(f"2-D: expected a _StridedShard, got {m.fc1.weight.placements}")
            _init(m, failures, "2-D")
            _compare("2-D", m, ref, failures)


def _run(world, fn, args, tmp_path):
    import multiprocessing

    import torch.multiprocessing as mp

    multiprocessing.set_forkserver_preload(["torch", "torch.distributed.fsdp", "torch.distributed.tensor", "torchinit"])
    init_method = f"file://{tmp_path / 'pg_init'}"
    mp.start_processes(fn, args=(world, init_method, *args, str(tmp_path)), nprocs=world, join=True,
                       start_method="forkserver")
    report = {r: (tmp_path / f"rank{r}.txt").read_text() for r in range(world)}
    bad = {r: txt for r, txt in report.items() if txt}
    assert not bad, "\n".join(f"rank {r}:\n{txt}" for r, txt in bad.items())


@pytest.mark.parametrize("world", [2, 3, 4])
def test_own_init_code_on_shards_equals_one_process(world, tmp_path):
    refs = (SM.reference(), SM.reference(skip_norm=True))
    _run(world, _worker, (refs,), tmp_path)
