"""MuP on FSDP2-sharded models (2 gloo processes from a forkserver): roles come from the
DTensors' global shapes, nothing is stored on the tensors, and the gathered weights are
bitwise those of single-process init with the same seed, computed in the parent."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from _dist import rank_report

import torchinit
from torchinit import zoo

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed + gloo"),
]

SEED = 77


def _gpt(w: int):
    return zoo.GPT(vocab_size=37, block_size=8, n_layer=2, n_head=2, n_embd=w)  # 37 rows: uneven on 2 ranks


def _mlp(w: int):
    return zoo.MLP(depth=3, width=w, in_features=7, out_features=5)


def _mups():
    with torch.device("meta"):
        return {"gpt": torchinit.MuP(_gpt(8), init="kaiming", readout="scaled"),
                "mlp": torchinit.MuP(_mlp(6), delta=_mlp(12))}


def _bits(t):
    return t.contiguous().view(torch.int32)


def _worker(rank, world, init_method, refs, result_dir):
    failures: list[str] = []
    with rank_report(rank, result_dir, failures):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import DTensor

        mesh = init_device_mesh("cpu", (world,))
        mups = _mups()
        # 1. meta + fully_shard + materialize
        with torch.device("meta"):
            m = _gpt(24)
        for blk in m.transformer.h:
            fully_shard(blk, mesh=mesh)
        fully_shard(m, mesh=mesh)
        p = torchinit.materialize(m, "cpu", mups["gpt"], seed=SEED, progress=False)
        if p["transformer.h.0.mlp.c_fc.weight"].args.get("mup_role") != "hidden":
            failures.append(f"gpt: role of c_fc is {p['transformer.h.0.mlp.c_fc.weight'].args}")
        # 2. allocated + fully_shard + init_model
        torch.manual_seed(0)
        m2 = _mlp(24)
        fully_shard(m2, mesh=mesh)
        torchinit.init_model(m2, mups["mlp"], seed=SEED)
        for label, model in (("gpt", m), ("mlp", m2)):
            sharded = 0
            for k, v in model.state_dict().items():
                if isinstance(v, DTensor):
                    sharded += 1
                    v = v.full_tensor()
                if not torch.equal(_bits(v), _bits(refs[label][k])):
                    failures.append(f"{label}: {k} differs from single-process init")
            if not sharded:
                failures.append(f"{label}: nothing was sharded")
        m(torch.randint(0, 37, (2, 8))).float().sum().backward()  # trains after init


def test_mup_through_materialize_and_init_model_on_fsdp2_equals_one_process(tmp_path):
    import multiprocessing

    import torch.multiprocessing as mp

    mups = _mups()
    ref_gpt = _gpt(24)
    torchinit.init_model(ref_gpt, mups["gpt"], seed=SEED)
    ref_mlp = _mlp(24)
    torchinit.init_model(ref_mlp, mups["mlp"], seed=SEED)
    assert torch.count_nonzero(ref_mlp.layers[4].weight) == 0  # the zero readout
    refs = {"gpt": {k: v.clone() for k, v in ref_gpt.state_dict().items()},
            "mlp": {k: v.clone() for k, v in ref_mlp.state_dict().items()}}
    world = 2
    multiprocessing.set_forkserver_preload(["torch", "torch.distributed.fsdp", "torch.distributed.tensor", "torchinit"])
    init_method = f"file://{tmp_path / 'pg_init'}"
    mp.start_processes(_worker, args=(world, init_method, refs, str(tmp_path)), nprocs=world, join=True,
                       start_method="forkserver")
    report = {r: (tmp_path / f"rank{r}.txt").read_text() for r in range(world)}
    bad = {r: txt for r, txt in report.items() if txt}
    assert not bad, "\n".join(f"rank {r}:\n{txt}" for r, txt in bad.items())
