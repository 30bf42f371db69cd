"""The model's own init code under ``keyed_init_mode`` on sharded models (issue 16): real
gloo groups of 2, 3 and 4 processes (one forkserver per world size). Every rank gathers
each tensor and compares it, bit for bit, with the same init code run by ONE process
(the parent) under the same mode: FSDP2 (meta -> fully_shard -> to_empty -> init code),
tensor parallel (Colwise/Rowwise, Shard(0)/Shard(1), Replicate), a 2-D mesh (FSDP over
TP: _StridedShard), FSDP2 with CPUOffloadPolicy, ``init_model``/``materialize`` with
``"module"``, and the init audit on shards."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import _sharded_models as SM  # noqa: E402
from _dist import rank_report  # noqa: E402

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
    if mode.partial():  # the box, row and slice writes all land on fully written tensors
        failures.append(f"{label}: audit partial() = {mode.partial()}, expected none")
    return mode


def _worker(rank, world, init_method, refs, result_dir):
    failures: list[str] = []
    with rank_report(rank, result_dir, failures):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
        from torch.distributed.device_mesh import init_device_mesh

        import torchinit

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

        rep = _init(m, failures, "fsdp2 skip again", skip_norm=True).report()
        if rep.missing != ["norm.weight"] or not rep["fc1.weight"].local or rep.conflicting:
            failures.append(f"fsdp2 skip: report {rep}")

        # tensors written only in part on shards: each rank counts the unwritten elements of its
        # shard; summed over the ranks they are those of one process (emb 78 - 6 [- 10], fc1 140 - 40)
        for kind in ("keyed", "track"):
            with torch.device("meta"):
                m = SM.OwnInit()
            _fsdp(m, mesh).to_empty(device="cpu")
            ctx = torchinit.keyed_init_mode(m, seed=SM.SEED) if kind == "keyed" else torchinit.track_init(m)
            with ctx as mode, torch.no_grad():
                m.emb.weight[3].zero_()
                if kind == "keyed":  # (torch's DTensor has no w[box] = scalar: track_init runs torch's op)
                    m.emb.weight[10:12, 1:] = 0.5
                nn.init.normal_(m.fc1.weight[5:9], std=3.0)
            part = mode.partial()
            counts = torch.tensor([part.get("emb.weight", 0), part.get("fc1.weight", 0)])
            dist.all_reduce(counts)
            want = [62 if kind == "keyed" else 72, 100]
            if counts.tolist() != want or set(part) - {"emb.weight", "fc1.weight"}:
                failures.append(f"{kind} partial on shards: {part}, summed {counts.tolist()}, expected {want}")

        # track_init on shards: torch's own RNG, the same audit with global names
        with torch.device("meta"):
            m = SM.OwnInit()
        _fsdp(m, mesh).to_empty(device="cpu")
        with torchinit.track_init(m) as audit, torch.no_grad():
            for mod in (m.fc1, m.fc2, m.emb):
                mod.reset_parameters()
        want = ["w", "q", "c", "m", "norm.weight", "norm.bias", "freqs"]
        if audit.missing() != want:
            failures.append(f"track_init on shards: missing() = {audit.missing()}, expected {want}")

        # a Partial placement: refused before the code runs, nothing written
        from torch.distributed.tensor import DTensor, Partial

        part = nn.Linear(4, 4)
        part.weight = nn.Parameter(DTensor.from_local(torch.full((4, 4), 7.0), mesh, [Partial()], run_check=False))
        bias0 = part.bias.detach().clone()
        for ctx in (lambda: torchinit.keyed_init_mode(part, seed=0), lambda: torchinit.track_init(part)):
            try:
                with ctx():
                    part.reset_parameters()
                failures.append("a Partial placement was accepted")
            except ValueError as exc:
                if "Partial" not in str(exc) or "'weight'" not in str(exc):
                    failures.append(f"Partial: unclear error {exc}")
            if not bool((part.weight.to_local() == 7.0).all()) or not torch.equal(part.bias, bias0):
                failures.append("Partial: the model was written before the error")

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


def _module_refs():
    """One process: "module" on zoo models (init_model and materialize), and every preset
    on a tiny HF Llama materialized from meta."""
    import torchinit
    from torchinit import zoo

    refs = {}
    for name, kw in (("gpt", SM.GPT_KW), ("mlp", dict(depth=3, width=10, in_features=7, out_features=5))):
        m = zoo.build(name, **kw)
        torchinit.init_model(m, "module", seed=SM.SEED)
        refs[name] = SM.state(m)
    for preset in sorted(torchinit.PRESETS):
        with torch.device("meta"):
            m = SM.llama()
        refs[f"llama/{preset}/plan"] = torchinit.materialize(m, "cpu", preset, seed=SM.SEED, progress=False)
        refs[f"llama/{preset}"] = SM.state(m)
    m = SM.gpt2()
    torchinit.init_model(m, "module", seed=SM.SEED)
    refs["gpt2/module"] = SM.state(m)
    m = SM.WeightNormed()
    with torchinit.keyed_init_mode(m, seed=SM.SEED):
        m.init_weights()
    refs["weight_norm"] = {k: v.detach().clone() for k, v in m.fc.state_dict().items()}
    return refs


def _check_state(label, model, ref, failures):
    got = SM.state(model)
    if sorted(got) != sorted(ref):
        failures.append(f"{label}: tensors {sorted(set(got) ^ set(ref))} on one side only")
    for k in ref:
        if k in got and not _same_bits(got[k], ref[k]):
            failures.append(f"{label}: {k} differs from one process")


def _check_plan(label, got, ref, failures):
    """The plan a sharded model gets (nonlinearity detection included) is the unsharded one's."""
    def sig(p):
        return [(e.name, e.nonlinearity, e.nonlinearity_source, e.gain, e.spec) for e in p.entries]

    diff = [(a, b) for a, b in zip(sig(got), sig(ref)) if a != b][:2]
    if diff or len(got.entries) != len(ref.entries):
        failures.append(f"{label}: plan differs from the unsharded model's: {diff}")


def _module_worker(rank, world, init_method, refs_path, result_dir):
    failures: list[str] = []
    refs = torch.load(refs_path, weights_only=False)
    with rank_report(rank, result_dir, failures):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

        import torchinit
        from torchinit import zoo

        mesh = init_device_mesh("cpu", (world,))
        torch.manual_seed(rank)

        # init_model(..., "module") and materialize(..., "module") on FSDP2-sharded zoo models
        for name, kw in (("gpt", SM.GPT_KW), ("mlp", dict(depth=3, width=10, in_features=7, out_features=5))):
            for meta in (False, True):
                if meta:
                    with torch.device("meta"):
                        m = zoo.build(name, **kw)
                else:
                    m = zoo.build(name, **kw)
                for mod in m.modules():
                    if isinstance(mod, (nn.Linear, nn.Embedding)):
                        fully_shard(mod, mesh=mesh)
                fully_shard(m, mesh=mesh)
                if meta:
                    torchinit.materialize(m, "cpu", "module", seed=SM.SEED, progress=False)
                else:
                    torchinit.init_model(m, "module", seed=SM.SEED)
                _check_state(f"{name}/module/{'materialize' if meta else 'init_model'}", m, refs[name], failures)

        # HF Llama under FSDP2, materialized with every preset: the rotary inv_freq (computed in
        # __init__, a meta buffer here) is recomputed by the model's own code, never garbage
        inv = SM.llama_inv_freq()
        for preset in sorted(torchinit.PRESETS):
            with torch.device("meta"):
                m = SM.llama()
            for layer in m.model.layers:
                fully_shard(layer, mesh=mesh)
            fully_shard(m, mesh=mesh)
            label = f"llama/{preset}"
            # every preset by name, detection included: the plan of the sharded model must be the
            # unsharded one's (issue 19), so the gathered tensors equal one process bit for bit
            plan = torchinit.materialize(m, "cpu", preset, seed=SM.SEED, progress=False)
            _check_plan(label, plan, refs[f"{label}/plan"], failures)
            _check_state(label, m, refs[label], failures)
            if not torch.equal(m.model.rotary_emb.inv_freq, inv):
                failures.append(f"{label}: inv_freq {m.model.rotary_emb.inv_freq} != {inv}")
            out = m(torch.zeros(1, 4, dtype=torch.long)).logits
            if not torch.isfinite(out).all():
                failures.append(f"{label}: forward not finite")

        # HF GPT-2 under FSDP2, "module" from meta and on allocated shards: fully_shard's class swap
        # made transformers take the model for custom code and skip the init of modules with no
        # parameter of their own (GPT2Attention/GPT2MLP rescale c_proj: std 0.02 was left)
        for meta in (True, False):
            if meta:
                with torch.device("meta"):
                    m = SM.gpt2()
            else:
                m = SM.gpt2()
            for block in m.transformer.h:
                fully_shard(block, mesh=mesh)
            fully_shard(m, mesh=mesh)
            if meta:
                torchinit.materialize(m, "cpu", "module", seed=SM.SEED, progress=False)
            else:
                torchinit.init_model(m, "module", seed=SM.SEED)
            _check_state(f"gpt2/module/{'materialize' if meta else 'init_model'}", m, refs["gpt2/module"], failures)

        # a draw into a sharded weight_norm layer's computed weight: lost, as in one process (it was
        # refused as a DTensor outside the model: HF Wav2Vec2's init code under FSDP2), and counted
        m = SM.WeightNormed()
        fully_shard(m, mesh=mesh)
        try:
            with torchinit.keyed_init_mode(m, seed=SM.SEED):
                m.init_weights()
            _check_state("weight_norm", m.fc, refs["weight_norm"], failures)
        except Exception as exc:
            failures.append(f"weight_norm: {type(exc).__name__}: {exc}")

        # FSDP2 with CPUOffloadPolicy: no identical shards, no hang, equal to one process
        with torch.device("meta"):
            m = SM.OwnInit()
        _fsdp(m, mesh, offload_policy=CPUOffloadPolicy(pin_memory=False)).to_empty(device="cpu")
        _init(m, failures, "fsdp2 cpu offload")
        _compare("fsdp2 cpu offload", m, refs["own"], failures)
        local = m.fc1.weight.to_local()
        shards = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(shards, local.contiguous())
        if any(torch.equal(shards[0], s) for s in shards[1:]):
            failures.append("fsdp2 cpu offload: ranks hold identical shards")


def test_module_initializer_and_hf_llama_on_fsdp2(tmp_path):
    """init_model/materialize with "module" on sharded models (refused before issue 16) and
    HF Llama under FSDP2 with every preset (issue 19: inv_freq made every preset fail)."""
    pytest.importorskip("transformers")
    refs = _module_refs()
    refs["own"] = SM.reference()
    # through a file: as process arguments every tensor costs a file descriptor, and with the
    # rnn and vit presets they passed the forkserver's limit ("too many fds")
    torch.save(refs, tmp_path / "refs.pt")
    _run(2, _module_worker, (str(tmp_path / "refs.pt"),), tmp_path)


class _Convs(nn.Module):
    """Conv weights with uneven channel counts (7 over 2 ranks), 1-D, 2-D and 3-D kernels."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(4, 7, 5)
        self.c2 = nn.Conv2d(6, 10, 3)
        self.c3 = nn.Conv3d(3, 6, (3, 2, 4))
        self.c4 = nn.Conv2d(5, 9, 3)


def _dirac_init(m):
    nn.init.dirac_(m.c1.weight)
    nn.init.dirac_(m.c2.weight, groups=2)
    nn.init.dirac_(m.c3.weight, groups=3)
    nn.init.dirac_(m.c4.weight[2:8])  # a view: torch's Dirac of the view's own shape, in place
    for c in (m.c1, m.c2, m.c3, m.c4):
        nn.init.zeros_(c.bias)


def _dirac_reference():
    import torchinit

    torch.manual_seed(0)
    m = _Convs()
    m.c4.weight.data.fill_(3.0)  # what the view leaves alone
    with torchinit.keyed_init_mode(m, seed=SM.SEED):
        _dirac_init(m)
    return {k: v.clone() for k, v in m.state_dict().items()}


def _dirac_worker(rank, world, init_method, ref, result_dir):
    failures: list[str] = []
    with rank_report(rank, result_dir, failures):
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import Shard, distribute_tensor

        import torchinit

        mesh = init_device_mesh("cpu", (world,))
        for layout in ("fsdp2", "shard1", "shard2"):
            torch.manual_seed(rank)
            m = _Convs()
            m.c4.weight.data.fill_(3.0)
            if layout == "fsdp2":
                for c in (m.c1, m.c2, m.c3, m.c4):
                    fully_shard(c, mesh=mesh)
            else:
                dim = int(layout[-1])
                for c in (m.c1, m.c2, m.c3, m.c4):
                    c.weight = nn.Parameter(distribute_tensor(c.weight.detach(), mesh, [Shard(dim)]))
            for c in (m.c1, m.c2, m.c3):  # garbage in what the init must overwrite
                c.weight.data.normal_()
            with torchinit.keyed_init_mode(m, seed=SM.SEED) as mode:
                _dirac_init(m)
            got = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in m.state_dict().items()}
            for k, v in ref.items():
                if not _same_bits(got[k], v):
                    failures.append(f"dirac/{layout}: {k} differs from one process")
            # one routed write per weight, audited as Dirac (not a zero_ plus a __setitem__ per one)
            rep = mode.report()
            for name, groups in (("c1.weight", 1), ("c2.weight", 2), ("c3.weight", 3)):
                writes = dict(rep[name].writes)
                if writes != {("dirac_", f"Dirac(groups={groups})"): 1}:
                    failures.append(f"dirac/{layout}: {name} audited as {writes}")
            if mode.missing():
                failures.append(f"dirac/{layout}: missing {mode.missing()}")


def test_dirac_on_shards_is_routed_and_equals_one_process(tmp_path):
    """torch.nn.init.dirac_ on DTensors under keyed_init_mode (FSDP2 uneven Shard(0), Shard(1),
    Shard(2), a view of a weight) is one routed write per tensor: each rank writes its part
    from global indices, gathered equal to one process bit for bit."""
    _run(2, _dirac_worker, (_dirac_reference(),), tmp_path)


@pytest.mark.parametrize("shape,groups", [((10, 6, 3, 3), 2), ((7, 4, 5), 1), ((6, 3, 3, 2, 4), 3),
                                          ((4, 9, 2, 2), 4), ((8, 2, 3), 4)])
def test_dirac_region_is_the_box_of_the_whole_tensor(shape, groups):
    """fill_region_ with Dirac writes a box from its global indices (no full temporary):
    every box equals that box of torch's dirac_ of the whole tensor, in every dtype."""
    from torchinit.core import specs as S
    from torchinit.engines.keyed import Key, fill_region_

    full = torch.nn.init.dirac_(torch.empty(shape), groups)
    g = torch.Generator().manual_seed(len(shape) * 7 + groups)
    for _ in range(30):
        offs = [int(torch.randint(0, n, (1,), generator=g)) for n in shape]
        sizes = [int(torch.randint(0, n - o + 1, (1,), generator=g)) for n, o in zip(shape, offs)]
        for dt in (torch.float32, torch.bfloat16, torch.float64):
            out = torch.full(sizes, 7.0, dtype=dt)
            fill_region_(out, S.Dirac(groups), Key(0), shape, offs)
            assert torch.equal(out, full[tuple(slice(o, o + s) for o, s in zip(offs, sizes))].to(dt)), (offs, sizes)
