"""Nonlinearity detection does not depend on how the model is laid out: HF GPT-2 built on meta,
``fully_shard``-ed on 2 gloo ranks and materialized, gets the plan and (gathered) the tensors of
the same model unsharded, bit for bit; HF Llama's plan under FSDP2 and under tensor
parallelism equals the unsharded plan. Detection used to run a forward on the sharded meta
model, fail, fall back to registration order and swap the MLP gains (c_fc std 0.177, not 0.272)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _dist import rank_report

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.hf,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed + gloo"),
]
transformers = pytest.importorskip("transformers")

SEED = 77
PRESETS = ("kaiming", "xavier", "orthogonal")


def _meta(name):
    sys.path.insert(0, str(Path(__file__).parent))
    import hf_models

    with torch.device("meta"):
        return getattr(hf_models, name)()


def _gpt2():
    return _meta("gpt2")


def _signature(p):
    return [(e.name, e.nonlinearity, e.nonlinearity_source, e.gain, e.spec) for e in p.entries]


def _worker(rank, world, init_method, result_dir):
    failures: list[str] = []
    with rank_report(rank, result_dir, failures):
        import warnings

        import torchinit
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import DTensor

        transformers.utils.logging.set_verbosity_error()
        torch.set_num_threads(1)  # the single-process reference below runs under the same thread count
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
        mesh = init_device_mesh("cpu", (world,))
        for preset in PRESETS:
            ref_model = _gpt2()  # the same model, unsharded, in one process
            ref_plan = torchinit.materialize(ref_model, "cpu", preset, seed=SEED, progress=False)
            ref = {k: v.clone() for k, v in ref_model.state_dict().items()}
            m = _gpt2()
            for blk in m.transformer.h:
                fully_shard(blk, mesh=mesh)
            fully_shard(m, mesh=mesh)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                p = torchinit.materialize(m, "cpu", preset, seed=SEED, progress=False)
            guessed = [str(w.message)[:200] for w in caught if issubclass(w.category, torchinit.NonlinearityWarning)]
            if guessed:
                failures.append(f"{preset}: detection guessed on the sharded model: {guessed}")
            got, want = _signature(p), _signature(ref_plan)
            if got != want:
                diff = [(a, b) for a, b in zip(got, want) if a != b][:2]
                failures.append(f"{preset}: plan differs from the unsharded model's: {diff}")
            fc = p["transformer.h.0.mlp.c_fc.weight"]
            if fc.nonlinearity != "gelu_tanh" or p["transformer.h.0.mlp.c_proj.weight"].nonlinearity != "linear":
                failures.append(f"{preset}: MLP gains: c_fc {fc.nonlinearity} ({fc.nonlinearity_source})")
            for k, v in m.state_dict().items():
                full = v.full_tensor() if isinstance(v, DTensor) else v
                if not (full.dtype == ref[k].dtype and full.shape == ref[k].shape
                        and torch.equal(full.view(-1).view(torch.uint8), ref[k].view(-1).view(torch.uint8))):
                    failures.append(f"{preset}: gathered {k} differs from single-process materialize")
        # Llama's plan (detection) under FSDP2 and under tensor parallelism (Colwise / Rowwise
        # DTensor shards, input/output redistribution hooks) equals the unsharded model's
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        want = _signature(torchinit.plan(_meta("llama"), "kaiming"))
        for layout in ("fsdp2", "tp"):
            m = _meta("llama")
            if layout == "fsdp2":
                for blk in m.model.layers:
                    fully_shard(blk, mesh=mesh)
                fully_shard(m, mesh=mesh)
            else:
                for blk in m.model.layers:
                    parallelize_module(blk.mlp, mesh, {"gate_proj": ColwiseParallel(), "up_proj": ColwiseParallel(),
                                                       "down_proj": RowwiseParallel()})
            if not any(isinstance(p, DTensor) for p in m.parameters()):
                failures.append(f"llama/{layout}: no DTensor parameter: the layout was not applied")
            got = _signature(torchinit.plan(m, "kaiming"))
            if got != want:
                diff = [(a, b) for a, b in zip(got, want) if a != b][:2]
                failures.append(f"llama/{layout}: plan differs from the unsharded model's: {diff}")


def test_fsdp2_hf_gpt2_plans_and_initializes_like_the_unsharded_model(tmp_path):
    import multiprocessing

    import torch.multiprocessing as mp

    world = 2
    multiprocessing.set_forkserver_preload(["torch", "torch.distributed.fsdp", "torch.distributed.tensor",
                                            "torchinit", "transformers"])
    init_method = f"file://{tmp_path / 'pg_init'}"
    mp.start_processes(_worker, args=(world, init_method, str(tmp_path)), nprocs=world, join=True,
                       start_method="forkserver")
    report = {r: (tmp_path / f"rank{r}.txt").read_text() for r in range(world)}
    bad = {r: txt for r, txt in report.items() if txt}
    assert not bad, "\n".join(f"rank {r}:\n{txt}" for r, txt in bad.items())
