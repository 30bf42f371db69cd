"""Sharded init: real multi-process gloo groups (2 and 4 processes, started ONCE per
world size from a forkserver; every check runs inside that group). The gathered ``full_tensor()``
must be bitwise identical to single-process init with the same seed and policy,
computed in THIS (the parent) process."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist
from torch import nn

from _dist import rank_report

import torchinit
from torchinit import specs as S
from torchinit import zoo
from torchinit.core.gate_specs import GateConstant, OrthogonalPerGate

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed + gloo"),
]

SEED = 1234
GPT_KW = dict(n_layer=2, n_embd=24, n_head=2, vocab_size=37, block_size=8)  # 37 rows: uneven on 2 and 4 ranks
MLP_KW = dict(depth=3, width=10, in_features=7, out_features=5)

# (name, global shape, spec, dtype)
TENSORS = [
    ("even", (8, 6), S.Normal(0.0, 0.02), torch.float32),
    ("uneven", (7, 5), S.Uniform(-0.3, 0.3), torch.float32),
    ("tiny", (3, 5), S.TruncatedNormal(0.0, 1.0, -2.0, 2.0), torch.float32),  # an empty shard on 4 ranks
    ("conv", (5, 3, 3, 3), S.Normal(0.1, 1.0), torch.float32),
    ("bf16", (9, 4), S.Normal(0.0, 1.0), torch.bfloat16),
    ("const", (6, 2), S.Constant(0.5), torch.float32),
    ("ortho", (6, 4), S.Orthogonal(1.0), torch.float32),  # needs_whole_tensor
    ("ortho_wide", (3, 7), S.Orthogonal(2.0), torch.float32),
    ("eye", (5, 3), S.Eye(), torch.float32),
    ("sparse", (9, 5), S.Sparse(0.3, 0.5), torch.float32),
    ("delta", (6, 4, 3, 3), S.DeltaOrthogonal(1.0), torch.float32),
    ("dirac", (4, 2, 3, 3), S.Dirac(2), torch.float32),
    ("ortho_gates", (12, 3), OrthogonalPerGate(4, 1.5), torch.float32),  # issue 15: per-gate, whole tensor
    ("gate_const", (8, 2), GateConstant((0.0, 1.0, 0.0, 0.0)), torch.float32),
]


def _emb_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(11, 6, padding_idx=3), nn.Linear(6, 5))  # 11 rows: uneven

# placements per world size, written as ("S", d) / ("R",) / ("SS", d, split_factor)
PLACEMENTS = {
    2: {(2,): [[("S", 0)], [("S", 1)], [("R",)], [("SS", 0, 2)]]},  # SS: rank 0 holds chunks 0 and 2
    4: {
        (4,): [[("S", 0)], [("S", 1)]],
        (2, 2): [
            [("S", 0), ("S", 1)], [("S", 1), ("S", 0)], [("S", 0), ("S", 0)],
            [("R",), ("S", 1)], [("S", 0), ("R",)], [("SS", 0, 2), ("S", 0)],
        ],
    },
}


def _same_bits(a, b):
    """Bitwise equality (-0.0 != 0.0), same shape and dtype."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return torch.equal(a.contiguous().view(ints[a.element_size()]), b.contiguous().view(ints[b.element_size()]))


def _placements(desc):
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.placement_types import _StridedShard

    out = []
    for p in desc:
        if p[0] == "S":
            out.append(Shard(p[1]))
        elif p[0] == "SS":
            out.append(_StridedShard(p[1], split_factor=p[2]))
        else:
            out.append(Replicate())
    return out


def _references():
    """Single-process results, computed in the parent process."""
    from torchinit.keyed import Key, fill_

    tensors = {name: fill_(torch.empty(shape, dtype=dtype), spec, Key(SEED).child(name))
               for name, shape, spec, dtype in TENSORS}
    models = {}
    for label, name, kw, policy in (("gpt_gpt2", "gpt", GPT_KW, "gpt2"), ("gpt_pytorch", "gpt", GPT_KW, "pytorch"),
                                    ("mlp_kaiming", "mlp", MLP_KW, "kaiming")):
        m = zoo.build(name, **kw)
        torchinit.init_model(m, policy, seed=SEED, engine="keyed")
        models[label] = {k: v.clone() for k, v in m.state_dict().items()}
    m = _emb_model()
    torchinit.init_model(m, "pytorch", seed=SEED, engine="keyed")
    assert torch.all(m[0].weight[3] == 0)
    models["emb_pytorch"] = {k: v.clone() for k, v in m.state_dict().items()}
    return tensors, models


def _check_model(label, model, refs, failures):
    from torchinit.sharding import is_dtensor

    for k, v in model.state_dict().items():
        full = v.full_tensor() if is_dtensor(v) else v
        if not _same_bits(full, refs[label][k]):
            failures.append(f"{label}: {k} differs from single-process init")


def _worker(rank, world, init_method, refs, result_dir):
    failures: list[str] = []
    with rank_report(rank, result_dir, failures):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import Shard, distribute_tensor

        from torchinit.keyed import Key
        from torchinit.keyed import fill_ as keyed_fill_
        from torchinit.sharding import shard_fill_

        tensors, models = refs
        t0 = time.perf_counter()
        meshes = {shape: init_device_mesh("cpu", shape, mesh_dim_names=("a", "b")[: len(shape)])
                  for shape in PLACEMENTS[world]}

        # 1. raw DTensors: every placement x every tensor, through keyed.fill_ and shard_fill_
        for mshape, plist in PLACEMENTS[world].items():
            for i, desc in enumerate(plist):
                pl = _placements(desc)
                for name, shape, spec, dtype in TENSORS:
                    for how in ("fill_", "shard_fill_")[: 2 if i == 0 else 1]:  # fill_ delegates to shard_fill_
                        dt = distribute_tensor(torch.full(shape, float("nan"), dtype=dtype), meshes[mshape], pl,
                                               src_data_rank=None)
                        if how == "fill_":
                            keyed_fill_(dt, spec, Key(SEED).child(name))
                        else:
                            shard_fill_(dt, spec, Key(SEED).child(name))
                        if tuple(dt.placements) != tuple(pl):
                            failures.append(f"{name} {desc}: placements changed")
                        if not _same_bits(dt.full_tensor(), tensors[name]):
                            failures.append(f"{name} mesh {mshape} {desc} via {how}: full_tensor() != single-process")

        t1 = time.perf_counter()
        mesh1 = init_device_mesh("cpu", (world,))
        mesh_fsdp = meshes[(2, 2)] if world == 4 else mesh1  # 4 ranks: HSDP on a (2, 2) mesh

        # 2. FSDP2 fully_shard on an allocated zoo model, then init_model
        for label, name, kw, policy in (("gpt_gpt2", "gpt", GPT_KW, "gpt2"), ("mlp_kaiming", "mlp", MLP_KW, "kaiming")):
            torch.manual_seed(rank)  # the constructors' init differs per rank: init_model must overwrite it
            m = zoo.build(name, **kw)
            for mod in m.modules():
                if isinstance(mod, (nn.Linear, nn.Embedding)):
                    fully_shard(mod, mesh=mesh_fsdp)
            fully_shard(m, mesh=mesh_fsdp)
            torchinit.init_model(m, policy, seed=SEED, engine="keyed")
            _check_model(label, m, models, failures)
        m = _emb_model()  # Embedding with padding_idx: the padding row is zeroed on the rank holding it
        fully_shard(m[0], mesh=mesh_fsdp)
        fully_shard(m, mesh=mesh_fsdp)
        torchinit.init_model(m, "pytorch", seed=SEED, engine="keyed")
        _check_model("emb_pytorch", m, models, failures)

        # 3. meta + fully_shard + materialize (uneven vocab rows), then a forward pass
        for label, policy in (("gpt_gpt2", "gpt2"), ("gpt_pytorch", "pytorch")):
            with torch.device("meta"):
                m = zoo.build("gpt", **GPT_KW)
            for blk in m.transformer.h:
                fully_shard(blk, mesh=mesh_fsdp)
            fully_shard(m, mesh=mesh_fsdp)
            torchinit.materialize(m, "cpu", policy, seed=SEED, progress=False)
            _check_model(label, m, models, failures)
            emb = m.transformer.wte.weight
            if not (tuple(emb.placements)[-1] == Shard(0) and emb.to_local().shape[0] < 37):
                failures.append(f"{label}: embedding not sharded: {emb.placements} {emb.to_local().shape}")
            out = m(torch.zeros(1, 4, dtype=torch.long))
            if not torch.isfinite(out).all():
                failures.append(f"{label}: forward after materialize is not finite")

        # 4. the torch engine refuses DTensors with a message pointing to engine="keyed"
        m = zoo.build("mlp", **MLP_KW)
        fully_shard(m, mesh=mesh1)
        try:
            torchinit.init_model(m, "kaiming", seed=SEED, engine="torch")
            failures.append("torch engine accepted a DTensor model")
        except (TypeError, ValueError) as exc:
            if 'engine="keyed"' not in str(exc) and "engine='keyed'" not in str(exc):
                failures.append(f"torch-engine error does not mention engine='keyed': {exc}")

        # (4b: the model's own init code on sharded models: tests/test_routing_sharded.py)

        # 5. Partial placements are rejected, naming the tensor
        from torch.distributed.tensor import Partial
        from torch.distributed.tensor import DTensor

        part = DTensor.from_local(torch.zeros(4, 4), mesh1, [Partial()], run_check=False)
        try:
            shard_fill_(part, S.Normal(0, 1), Key(SEED).child("p"))
            failures.append("Partial placement accepted")
        except ValueError as exc:
            if "Partial" not in str(exc) or "'p'" not in str(exc):
                failures.append(f"Partial error message: {exc}")

        # 6. drop-ins without key= on DTensors: eye_ / dirac_ (no randomness) give the
        # single-process tensor from global indices (torch's own eye_ replaces the local shard
        # by a full-size matrix, its dirac_ writes zeros only); orthogonal_ / sparse_ refuse,
        # pointing to key=, and leave the shard as it was
        for fn, shape, kw in (("eye_", (5, 4), {}), ("dirac_", (6, 2, 3), {"groups": 3})):
            ref = getattr(torch.nn.init, fn)(torch.empty(shape), **kw)
            for pl in ([Shard(0)], [Shard(1)]):
                dt = distribute_tensor(torch.full(shape, float("nan")), mesh1, pl, src_data_rank=None)
                getattr(torchinit, fn)(dt, **kw)
                if not torch.equal(dt.full_tensor(), ref):
                    failures.append(f"torchinit.{fn} on a DTensor {pl}: differs from single-process")
        for fn, kw in (("orthogonal_", {}), ("sparse_", {"sparsity": 0.5}), ("orthogonal_per_gate_", {"gates": 2})):
            dt = distribute_tensor(torch.full((6, 4), 7.0), mesh1, [Shard(0)], src_data_rank=None)
            try:
                getattr(torchinit, fn)(dt, **kw)
                failures.append(f"torchinit.{fn} without key= accepted a DTensor")
            except TypeError as exc:
                if "key=" not in str(exc) or not bool((dt.to_local() == 7.0).all()):
                    failures.append(f"torchinit.{fn} on a DTensor: {exc} / shard changed")
        dist.barrier()
        if rank == 0 and os.environ.get("TORCHINIT_TEST_TIMING"):
            print(f"world {world}: raw DTensors {t1 - t0:.1f} s, models {time.perf_counter() - t1:.1f} s")


@pytest.fixture(scope="module")
def refs():
    return _references()


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_init_equals_single_process(world, refs, tmp_path):
    import multiprocessing

    import torch.multiprocessing as mp

    # forkserver: torch is imported once in a clean server process (no OpenMP state, unlike
    # fork) and each rank forks from it: ~0.1 s per group instead of seconds per rank.
    multiprocessing.set_forkserver_preload(["torch", "torch.distributed.fsdp", "torch.distributed.tensor", "torchinit"])
    init_method = f"file://{tmp_path / 'pg_init'}"
    mp.start_processes(_worker, args=(world, init_method, refs, str(tmp_path)), nprocs=world, join=True,
                       start_method="forkserver")
    report = {r: (tmp_path / f"rank{r}.txt").read_text() for r in range(world)}
    bad = {r: txt for r, txt in report.items() if txt}
    assert not bad, "\n".join(f"rank {r}:\n{txt}" for r, txt in bad.items())


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.act = nn.ReLU()

    def forward(self, x):
        return x + self.act(self.fc(x))


# name -> (builder, blocks to fully_shard before the root, example input)
_FSDP_DETECT_MODELS = {
    "gpt": (lambda: zoo.build("gpt", **GPT_KW), lambda m: list(m.transformer.h),
            lambda: torch.randint(0, GPT_KW["vocab_size"], (2, GPT_KW["block_size"]))),
    "mlp": (lambda: zoo.build("mlp", **MLP_KW), lambda m: [m.layers], lambda: torch.randn(3, MLP_KW["in_features"])),
    "cnn": (lambda: zoo.build("cnn", channels=(4, 8), image_size=8), lambda m: [m.features],
            lambda: torch.randn(2, 3, 8, 8)),
    "residual": (lambda: nn.Sequential(_Residual(), _Residual(), nn.Linear(6, 2)), lambda m: list(m)[:2],
                 lambda: torch.randn(3, 6)),
}
_DETECT_PRESETS = ("kaiming", "xavier", "lecun", "orthogonal")


def _detection_signature(p):
    return [(e.name, e.nonlinearity, e.nonlinearity_source, e.gain, e.spec) for e in p.entries]


def _detect_worker(rank, world, init_method, result_dir):
    failures: list[str] = []
    with rank_report(rank, result_dir, failures):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for name, (build, blocks, example) in _FSDP_DETECT_MODELS.items():
            for i, preset in enumerate(_DETECT_PRESETS):
                meta = i % 2 == 1  # init_model and materialize, alternately
                ref = _detection_signature(torchinit.plan(build(), preset))
                if meta:
                    with torch.device("meta"):
                        m = build()
                else:
                    m = build()
                for blk in blocks(m):
                    fully_shard(blk, mesh=mesh)
                fully_shard(m, mesh=mesh)
                calls: list[str] = []  # a user's hook must not run during detection either
                blocks(m)[0].register_forward_pre_hook(lambda mod, args: calls.append("pre"))
                blocks(m)[0].register_forward_hook(lambda mod, args, out: calls.append("post"))
                label = f"{name}/{preset}/{'materialize' if meta else 'init_model'}"
                if meta:
                    p = torchinit.materialize(m, "cpu", preset, seed=SEED, progress=False)
                else:
                    p = torchinit.init_model(m, preset, seed=SEED)
                if calls:
                    failures.append(f"{label}: module hooks ran during init: {calls}")
                got = _detection_signature(p)
                if got != ref:
                    diff = [(a, b) for a, b in zip(got, ref) if a != b][:2]
                    failures.append(f"{label}: plan differs from the unsharded model's: {diff} {p.notes[:1]}")
                try:  # FSDP's lazy init happens here, with the real root
                    m(example()).float().sum().backward()
                except Exception as exc:
                    failures.append(f"{label}: forward+backward after init: {type(exc).__name__}: {exc}")


def test_nonlinearity_detection_on_fsdp_models_runs_no_hooks(tmp_path):
    """fx detection traces non-leaf modules without Module.__call__: FSDP2's pre-forward hook
    would lazily initialize a fully_shard-ed block as its own root (the model's first forward
    then raised "FSDP state has already been lazily initialized"). Detection on the sharded
    model equals the unsharded model's, and the model trains afterwards."""
    import multiprocessing

    import torch.multiprocessing as mp

    world = 2
    multiprocessing.set_forkserver_preload(["torch", "torch.distributed.fsdp", "torch.distributed.tensor", "torchinit"])
    init_method = f"file://{tmp_path / 'pg_init'}"
    mp.start_processes(_detect_worker, args=(world, init_method, str(tmp_path)), nprocs=world, join=True,
                       start_method="forkserver")
    report = {r: (tmp_path / f"rank{r}.txt").read_text() for r in range(world)}
    bad = {r: txt for r, txt in report.items() if txt}
    assert not bad, "\n".join(f"rank {r}:\n{txt}" for r, txt in bad.items())
