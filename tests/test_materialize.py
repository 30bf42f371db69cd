"""materialize: meta model -> allocated and initialized, bitwise equal to init_model."""

import importlib
import mmap
import os

import pytest
from scipy import stats
import torch
from torch import nn

import torchinit
from torchinit import zoo

materialize_mod = importlib.import_module("torchinit.materialize")  # the module; torchinit.materialize is the function
plan_mod = importlib.import_module("torchinit.model.apply")  # materialize applies each batch with plan_mod._apply_plan

SMALL = {
    "mlp": dict(depth=4, width=16),
    "cnn": dict(channels=(4, 8)),
    "resnet": dict(widths=(4, 8), blocks=1),
    "gpt": dict(n_layer=2, n_embd=32, n_head=2, vocab_size=40, block_size=8),
}


def _meta(name, **kw):
    with torch.device("meta"):
        return zoo.build(name, **{**SMALL[name], **kw})


def _reference(name, policy, seed, dtype=None, **kw):
    model = zoo.build(name, **{**SMALL[name], **kw})
    if dtype is not None:
        model.to(dtype)
    torchinit.init_model(model, policy, seed=seed, engine="keyed")
    return model


def _bits(t):
    t = t.detach().contiguous()
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _assert_same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].device == sb[k].device, k
        assert torch.equal(_bits(sa[k]), _bits(sb[k])), k  # bitwise


@pytest.mark.parametrize("name,policy", [
    ("mlp", "pytorch"), ("mlp", "kaiming"), ("mlp", "module"), ("cnn", "pytorch"), ("cnn", "xavier"),
    ("resnet", "kaiming"), ("resnet", "module"), ("gpt", "gpt2"), ("gpt", "llama"), ("gpt", "pytorch"),
    ("gpt", "module"), ("mlp", "orthogonal"), ("cnn", "lecun"),
])
def test_materialize_equals_init_model(name, policy):
    model = _meta(name)
    plan = torchinit.materialize(model, "cpu", policy, seed=7, progress=False)
    assert not any(t.is_meta for t in model.state_dict().values())
    ref_plan = torchinit.init_model(_reference(name, policy, 7), policy, seed=7)
    assert plan.applied and plan.seed == 7 and plan.engine == "keyed"
    assert [e.to_dict() for e in plan.entries] == [e.to_dict() for e in ref_plan.entries]
    _assert_same_state(model, _reference(name, policy, 7))


def test_seed_and_policy_change_values():
    a, b, c = _meta("mlp"), _meta("mlp"), _meta("mlp")
    torchinit.materialize(a, policy="kaiming", seed=1, progress=False)
    torchinit.materialize(b, policy="kaiming", seed=2, progress=False)
    torchinit.materialize(c, policy="xavier", seed=1, progress=False)
    w = "layers.0.weight"
    assert not torch.equal(a.state_dict()[w], b.state_dict()[w])
    assert not torch.equal(a.state_dict()[w], c.state_dict()[w])


@pytest.mark.parametrize("policy", ["gpt2", "pytorch", "llama"])
def test_bfloat16_meta_model(policy):
    model = _meta("gpt").to(torch.bfloat16)
    torchinit.materialize(model, policy=policy, seed=3, progress=False)
    assert model.lm_head.weight.dtype == torch.bfloat16
    _assert_same_state(model, _reference("gpt", policy, 3, dtype=torch.bfloat16))


def test_returned_plan_shares_no_entry_with_the_given_plan():
    model = _meta("mlp")
    given = torchinit.plan(model, "kaiming")
    before = [e.to_dict() for e in given.entries]
    applied = torchinit.materialize(model, "cpu", given, seed=2, progress=False)
    assert applied.applied and not given.applied and applied.seed == 2 and applied.notes == given.notes
    assert all(a is not g for a, g in zip(applied.entries, given.entries))
    assert [e.to_dict() for e in applied.entries] == before == [e.to_dict() for e in given.entries]


@pytest.mark.parametrize("case", ["overflow", "float8"])
def test_errors_found_while_filling_are_apply_plans(case):
    """What the dry run does not check (a spec overflowing the dtype, a dtype the keyed engine
    cannot fill) raises, in a batch, the error apply_plan raises on an allocated copy, and the
    batch goes back to meta."""
    from torchinit.core import specs as S

    def build(device):
        with torch.device(device):
            m = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
        return m.to(torch.float16 if case == "overflow" else torch.float8_e4m3fn)

    p = torchinit.plan(build("meta"), "kaiming")
    for e in p.entries:
        if e.name == "1.weight":
            e.spec = S.Normal(0.0, 1e5) if case == "overflow" else e.spec
    with pytest.raises((ValueError, TypeError)) as expected:
        torchinit.apply_plan(build("cpu"), p, seed=0)
    model = build("meta")
    with pytest.raises(type(expected.value)) as got:
        torchinit.materialize(model, "cpu", p, seed=0, progress=False)
    assert str(got.value) == str(expected.value)
    assert all(t.is_meta for t in model.state_dict().values())  # one batch: all of it back on meta


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_tied_parameters_stay_tied(style):
    model = _meta("gpt", tie_weights=True, style=style)
    torchinit.materialize(model, policy="gpt2", seed=0, progress=False)
    emb = model.transformer.wte if style == "gpt2" else model.model.embed_tokens
    assert model.lm_head.weight is emb.weight and not emb.weight.is_meta
    _assert_same_state(model, _reference("gpt", "gpt2", 0, tie_weights=True, style=style))


def test_not_on_meta_is_an_error():
    model = zoo.build("mlp", **SMALL["mlp"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"no tensors on the meta device .* use torchinit.init_model"):
        torchinit.materialize(model, policy="kaiming", seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_partly_meta_fills_only_meta_tensors():
    model = _meta("mlp")
    loaded = nn.Linear(16, 16)
    keep_w, keep_b = loaded.weight.detach().clone(), loaded.bias.detach().clone()
    model.layers[0] = loaded  # e.g. loaded from a checkpoint with assign=True
    torchinit.materialize(model, policy="kaiming", seed=5, progress=False)
    assert torch.equal(model.layers[0].weight, keep_w) and torch.equal(model.layers[0].bias, keep_b)
    ref = _reference("mlp", "kaiming", 5)
    for k in ("layers.2.weight", "layers.2.bias", "layers.6.weight"):
        assert torch.equal(model.state_dict()[k], ref.state_dict()[k]), k


class _LegacyCtor(nn.Module):
    """A parameter made by the legacy constructor, as Wav2Vec2's masked_spec_embed: torch.Tensor(n)
    ignores `with torch.device("meta")`, so it is allocated, drawn from the global RNG."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.emb = nn.Parameter(torch.Tensor(4).uniform_())

    def reset_parameters(self):
        nn.init.uniform_(self.emb)


def test_partly_meta_warns_for_a_parameter_its_constructor_allocated():
    with torch.device("meta"):
        model = _LegacyCtor()
    assert not model.emb.is_meta and model.fc.weight.is_meta
    kept = model.emb.detach().clone()
    with pytest.warns(UserWarning, match=r"'emb' is already allocated \(not on meta\) while the rest of its module "
                                         r"is on meta.*not an init with seed=3"):
        p = torchinit.materialize(model, "cpu", "module", seed=3, progress=False)
    assert torch.equal(model.emb, kept) and any("'emb' is already allocated" in n for n in p.notes)
    with torch.device("meta"):
        model = _LegacyCtor()
    with pytest.warns(UserWarning, match=r"'emb' is already allocated"):  # no rule covers it: the same
        torchinit.materialize(model, "cpu", "kaiming", seed=3, progress=False)
    # the fix the warning gives: on meta, it gets init_model's values
    with torch.device("meta"):
        model = _LegacyCtor()
    model.emb = nn.Parameter(model.emb.to("meta"))
    torchinit.materialize(model, "cpu", "module", seed=3, progress=False)
    ref = _LegacyCtor()
    torchinit.init_model(ref, "module", seed=3)
    assert torch.equal(model.emb, ref.emb) and torch.equal(model.fc.weight, ref.fc.weight)


def test_validation_leaves_model_untouched():
    model = _meta("mlp")
    with pytest.raises(TypeError, match=r"seed must be an int, got '1'"):
        torchinit.materialize(model, policy="kaiming", seed="1")
    with pytest.raises(ValueError, match=r"device='meta' allocates nothing"):
        torchinit.materialize(model, "meta", policy="kaiming", seed=1)
    assert all(t.is_meta for t in model.state_dict().values())
    other = torchinit.plan(_meta("mlp", width=8), "kaiming")  # a plan made for another model
    with pytest.raises(ValueError, match=r"plan entry 'layers.0.weight': planned shape \(8, 8\) but the model's tensor has shape \(16, 16\)"):
        torchinit.materialize(model, policy=other, seed=1)
    assert all(t.is_meta for t in model.state_dict().values())


def test_failure_midway_puts_the_batch_back_on_meta(monkeypatch):
    model = _meta("mlp")
    real_apply = plan_mod._apply_plan
    calls = []

    def failing(m, plan, *, seed, engine, only=None, **kw):
        if not kw.get("dry_run"):  # a batch
            calls.append(1)
            if len(calls) == 2:
                raise MemoryError("simulated")
        return real_apply(m, plan, seed=seed, engine=engine, only=only, **kw)

    monkeypatch.setattr(plan_mod, "_apply_plan", failing)
    monkeypatch.setattr(materialize_mod, "BATCH_ELEMENTS", 1)  # one module per batch
    with pytest.raises(MemoryError):
        torchinit.materialize(model, policy="kaiming", seed=4, progress=False)
    state = model.state_dict()
    assert not state["layers.0.weight"].is_meta and state["layers.2.weight"].is_meta
    monkeypatch.setattr(plan_mod, "_apply_plan", real_apply)
    torchinit.materialize(model, policy="kaiming", seed=4, progress=False)  # finishes the job
    _assert_same_state(model, _reference("mlp", "kaiming", 4))


def test_uncovered_meta_tensor_is_an_error_before_allocation():
    model = _meta("mlp")
    model.register_buffer("mask", torch.empty(4, 4, device="meta"))  # no rule initializes it
    with pytest.raises(ValueError, match=r"no initializer in the plan for meta tensor\(s\) 'mask'"):
        torchinit.materialize(model, policy="kaiming", seed=0)
    assert all(t.is_meta for t in model.state_dict().values())


class WithConstructorBuffer(nn.Module):
    """A module whose buffer its constructor computes and its init code never writes
    (like a rotary embedding's inv_freq)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("freq", torch.arange(4.0))

    def reset_parameters(self):  # writes nothing: freq is the constructor's
        pass


def test_module_code_that_leaves_a_meta_tensor_unwritten_is_an_error(monkeypatch):
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4), WithConstructorBuffer())
    monkeypatch.setattr(materialize_mod, "BATCH_ELEMENTS", 1)  # one module per batch
    with pytest.raises(ValueError, match=r"ran for '1\.freq' but did not write them"):
        torchinit.materialize(model, policy="module", seed=0, progress=False)
    assert not model[0].weight.is_meta  # earlier batches are done
    assert model[1].freq.is_meta and model[1].lin.weight.is_meta  # the failed batch is back on meta
    model[1].freq = torch.arange(4.0)  # the user sets it, then finishes the job
    torchinit.materialize(model, policy="module", seed=0, progress=False)
    ref = nn.Sequential(nn.Linear(4, 4), WithConstructorBuffer())
    torchinit.init_model(ref, "module", seed=0)
    _assert_same_state(model, ref)


class HalfWritten(nn.Module):
    """Init code that draws only the first half of ``w``."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.empty(4, 4))

    def reset_parameters(self):
        with torch.no_grad():
            self.w[:2].normal_()


def test_module_code_that_writes_a_meta_tensor_in_part_is_an_error(monkeypatch):
    # the other half of the fresh tensor held garbage and materialize reported success
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4), HalfWritten())
    monkeypatch.setattr(materialize_mod, "BATCH_ELEMENTS", 1)  # one module per batch
    with pytest.raises(ValueError) as err:
        torchinit.materialize(model, policy="module", seed=0, progress=False)
    assert str(err.value) == (
        "materialize: the model's own init code (policy entry 'module') wrote only part of '1.w' (8 of 16 "
        "elements): freshly allocated, the elements it did not write would hold garbage. This batch was put back "
        "on meta, the earlier ones are done: give these tensors a rule (the whole tensor), or complete the init "
        "code, and call materialize again")
    assert not model[0].weight.is_meta and model[1].w.is_meta
    torchinit.materialize(model, policy={"preset": "module", "rules": [{"qualnames": "1.w", "init": "zeros"}]},
                          seed=0, progress=False)
    assert torch.equal(model[1].w, torch.zeros(4, 4))


class RecomputedBuffer(nn.Module):
    """A buffer no preset has a rule for, which the module's init code computes."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("freq", torch.empty(4))
        self.reset_parameters()

    def reset_parameters(self):
        self.lin.reset_parameters()
        with torch.no_grad():
            self.freq.copy_(torch.arange(4.0) ** 2)


def test_buffers_without_a_rule_get_their_module_init_code():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4), RecomputedBuffer())
    plan = torchinit.materialize(model, "cpu", "kaiming", seed=0, progress=False)
    assert torch.equal(model[1].freq, torch.arange(4.0) ** 2)
    assert any("1.freq" in n and "own init code" in n for n in plan.notes)
    ref = nn.Sequential(nn.Linear(4, 4), RecomputedBuffer())
    torchinit.init_model(ref, "kaiming", seed=0)  # kaiming's rules, not the module's code, set the weights
    _assert_same_state(model, ref)


def test_module_code_writes_through_data_assignment_count_as_written():
    class DataAssign(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.empty(3, 3))

        def reset_parameters(self):
            self.w.data = torch.full((3, 3), 0.5)  # new storage, no torch call on the old one

    with torch.device("meta"):
        model = nn.Sequential(DataAssign())
    torchinit.materialize(model, policy="module", seed=0, progress=False)
    assert torch.equal(model[0].w.detach(), torch.full((3, 3), 0.5))


def test_progress_bar_only_when_asked_and_slow(capsys, monkeypatch):
    torchinit.materialize(_meta("mlp"), policy="kaiming", seed=0, progress=True)
    assert capsys.readouterr().err == ""  # fast: no bar even when allowed
    monkeypatch.setattr(materialize_mod, "PROGRESS_AFTER_S", 0.0)
    torchinit.materialize(_meta("mlp"), policy="kaiming", seed=0, progress=False)
    assert capsys.readouterr().err == ""
    torchinit.materialize(_meta("mlp"), policy="kaiming", seed=0, progress=True)
    assert "materialize" in capsys.readouterr().err


def test_allocates_module_by_module_once(monkeypatch):
    """Peak memory ~ model + one module: when a module is initialized, only the tensors
    initialized so far are allocated; every tensor is allocated exactly once."""
    model = _meta("gpt", tie_weights=True)
    ref = _reference("gpt", "gpt2", 0, tie_weights=True)  # before the spy: init_model applies plans too
    real_apply = plan_mod._apply_plan
    calls = []

    def spy(m, plan, *, seed, engine, only=None, **kw):
        allocated = {n for n, t in m.state_dict(keep_vars=True).items() if not t.is_meta}
        if kw.get("dry_run"):  # the validation dry run, before any allocation
            assert only is None and not allocated
            return real_apply(m, plan, seed=seed, engine=engine, **kw)
        names = {n for e in plan.entries for n in (e.name, *e.aliases)}
        assert allocated == set().union(*calls, names)  # nothing allocated ahead of its initialization
        calls.append(names)
        assert kw["restore_on_error"] is False  # fresh tensors: no snapshot copy
        return real_apply(m, plan, seed=seed, engine=engine, only=only, **kw)

    monkeypatch.setattr(plan_mod, "_apply_plan", spy)
    monkeypatch.setattr(materialize_mod, "BATCH_ELEMENTS", 1)  # one module per call
    torchinit.materialize(model, policy="gpt2", seed=0, progress=False)
    assert len(calls) > 10
    names = [n for c in calls for n in c]
    assert sorted(names) == sorted(model.state_dict())  # each once (both names of the tied weight)
    _assert_same_state(model, ref)


def test_large_tensors_are_prefaulted_and_still_equal_init_model(monkeypatch):
    """Tensors from 1 MiB up have their pages faulted in (madvise, contents unchanged)
    before the fill: by populate (with huge_pages=True, or for tensors the native kernel does
    not write), else by the native fill itself, each thread just ahead of its writes; the
    result is the same as init_model's."""
    from torchinit.keyed import backend as B

    if not B.native_available():
        pytest.skip("native kernel not built")
    seen, huges, prefaults = [], [], []
    native = B.native_module()
    monkeypatch.setattr(materialize_mod, "PREFAULT_MIN_BYTES", 4096)

    class Spy:  # the native module, with populate calls and the fills' prefault argument recorded
        def __getattr__(self, name):
            return getattr(native, name)

        def populate(self, ptr, nbytes, nthreads, huge=0):
            seen.append(nbytes)
            huges.append(huge)
            return native.populate(ptr, nbytes, nthreads, huge)

        def fill(self, *args):
            prefaults.append(args[16] if len(args) > 16 else 0)
            return native.fill(*args)

    monkeypatch.setattr(B, "native_module", lambda: Spy())
    model = _meta("gpt", n_embd=64, vocab_size=300)
    torchinit.materialize(model, "cpu", "gpt2", seed=3, progress=False, huge_pages=True)
    assert seen and max(seen) >= 300 * 64 * 4
    assert set(huges) == {materialize_mod._thp_size()}
    assert prefaults and set(prefaults) == {0}  # populated already
    _assert_same_state(model, _reference("gpt", "gpt2", 3, n_embd=64, vocab_size=300))

    huges.clear()
    prefaults.clear()
    model = _meta("gpt", n_embd=64, vocab_size=300)
    torchinit.materialize(model, "cpu", "gpt2", seed=3, progress=False)  # small pages by default (measured)
    assert set(huges) <= {0}
    assert prefaults and min(prefaults) > 0  # every random tensor: faulted in by its fill
    _assert_same_state(model, _reference("gpt", "gpt2", 3, n_embd=64, vocab_size=300))

    seen.clear()
    prefaults.clear()
    model = _meta("gpt", n_embd=64, vocab_size=300)
    torchinit.materialize(model, "cpu", {"rules": [{"init": "zeros"}]}, seed=3, progress=False)  # torch's fill_
    assert seen and max(seen) >= 300 * 64 * 4 and not prefaults
    assert all(float(t.abs().max()) == 0 for t in model.state_dict().values() if t.is_floating_point())


def test_populate_leaves_memory_unchanged():
    from torchinit.keyed import backend as B

    if not B.native_available():
        pytest.skip("native kernel not built")
    t = torch.arange(3_000_000, dtype=torch.float32)
    before = t.clone()
    pop = B.native_module().populate
    for off, n in [(0, t.numel() * 4), (3, t.numel() * 4 - 5), (100, 10), (0, 0)]:
        for huge in (0, 1 << 21, 3):  # 3: not a power of two, ignored
            for threads in (1, 2, 5):
                assert pop(t.data_ptr() + off, n, threads, huge) in (True, False)
    assert torch.equal(t, before)


def test_populate_on_the_fill_pool_while_other_threads_fill():
    """populate runs its shares on the native fill's worker pool (or, while a fill in another
    thread holds the pool, on threads of its own): from several Python threads at once,
    populated memory keeps its contents and the fills in between write the same bits."""
    import threading

    from torchinit.core import specs as S
    from torchinit.keyed import backend as B, engine as E

    if not B.native_available():
        pytest.skip("native kernel not built")
    pop = B.native_module().populate
    spec, key = S.Normal(0.0, 0.02), torchinit.Key(3).child("w")
    ref = E.sample(spec, key, (600, 1000))
    errors = []

    def work(i):
        try:
            for r in range(6):
                t = torch.arange(2_000_000 + 4096 * i + r, dtype=torch.float32)
                assert pop(t.data_ptr(), t.numel() * 4, 1 + (i + r) % 4, (1 << 21) if r % 2 else 0) in (True, False)
                assert torch.equal(t, torch.arange(t.numel(), dtype=torch.float32))
                out = torch.empty(600, 1000)
                with B.prefaulting(4096 * (1 + r)):
                    E.fill_region_(out, spec, key, (600, 1000), (0, 0))
                assert torch.equal(out.view(torch.int32), ref.view(torch.int32))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads_before = B.get_num_threads()
    B.set_num_threads(3)
    try:
        ts = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        B.set_num_threads(None)
    assert not errors, errors[0]
    assert B.get_num_threads() == threads_before


def test_prefaulting_fills_give_the_same_values():
    """A native fill that faults its pages in ahead of its writes (backend.prefaulting) writes
    the same bits, for any piece size, thread count, chunk size and box, and nothing outside."""
    from torchinit.core import specs as S
    from torchinit.keyed import backend as B, engine as E

    if not B.native_available():
        pytest.skip("native kernel not built")
    key = torchinit.Key(7).child("w")
    threads, chunk = B.get_num_threads(), B.get_chunk_size()
    try:
        for dtype in (torch.float32, torch.bfloat16):
            for spec in (S.Normal(0.0, 0.02), S.Uniform(-0.1, 0.1)):
                for shape, offs, box in [((1_100_000,), (0,), (1_100_000,)), ((1500, 1100), (17, 3), (1400, 1090))]:
                    ref = E.sample(spec, key, shape, offsets=offs, sizes=box, dtype=dtype)
                    for n_threads, n_chunk, pf in [(1, 1 << 16, 1), (2, 1 << 16, 1 << 20), (5, 4099, 4096 * 3 + 5),
                                                   (3, 1 << 30, 1 << 40)]:
                        B.set_num_threads(n_threads)
                        B.set_chunk_size(n_chunk)
                        big = torch.full((box[0] * (box[-1] if len(box) > 1 else 1) + 4096,), 3.0, dtype=dtype)
                        out = big[2048:2048 + ref.numel()].view(box)
                        with B.prefaulting(pf):
                            E.fill_region_(out, spec, key, shape, offs)
                        assert torch.equal(out.view(-1).view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                                           ref.reshape(-1).view(torch.int16 if dtype == torch.bfloat16 else torch.int32))
                        assert bool((big[:2048] == 3).all()) and bool((big[2048 + ref.numel():] == 3).all())
    finally:
        B.set_num_threads(None)
        B.set_chunk_size(chunk)
    assert B.get_prefault() == 0 and B.get_num_threads() == threads


@pytest.mark.parametrize("bad", [-1, 1.5, "1M", True])
def test_prefaulting_refuses_a_bad_size(bad):
    from torchinit.keyed import backend as B

    with pytest.raises(ValueError, match=r"prefaulting: nbytes must be an int >= 0 \(0: off\), got "):
        with B.prefaulting(bad):
            pass
    assert B.get_prefault() == 0


def test_huge_pages_must_be_a_bool():
    model = _meta("mlp")
    with pytest.raises(TypeError, match=r"materialize: huge_pages must be True or False, got 'no'"):
        torchinit.materialize(model, "cpu", "gpt2", seed=0, huge_pages="no")
    assert all(p.is_meta for p in model.parameters())


def test_thp_size_reads_the_kernel_setting(monkeypatch, tmp_path):
    import builtins

    real_open = builtins.open
    files = {"enabled": "always [madvise] never\n", "hpage_pmd_size": "2097152\n"}

    def fake_open(path, *a, **k):
        if str(path).startswith("/sys/kernel/mm/transparent_hugepage/"):
            name = str(path).split("/sys/kernel/mm/transparent_hugepage/", 1)[1].replace("/", "_")
            if name not in files:
                raise FileNotFoundError(path)
            target = tmp_path / name
            target.write_text(files[name])
            return real_open(target, *a, **k)
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    sizes = ["hugepages-64kB", "hugepages-2048kB"]  # the multi-size huge pages (mTHP) the fake kernel has
    real_listdir = os.listdir
    monkeypatch.setattr(materialize_mod.os, "listdir",
                        lambda path: sizes + ["enabled", "hpage_pmd_size"] if "transparent_hugepage" in str(path)
                        else real_listdir(path))
    for enabled, size, expect in [("always [madvise] never", "2097152", 2097152),
                                  ("[always] madvise never", "2097152", 2097152),
                                  ("always madvise [never]", "2097152", 0),
                                  ("[madvise] never", "garbage", 0)]:
        files.update(enabled=enabled, hpage_pmd_size=size)
        materialize_mod._thp_size.cache_clear()
        assert materialize_mod._thp_size() == expect
    # huge pages off globally, but one multi-size huge page size enabled on its own: on
    files.update({"enabled": "always madvise [never]", "hpage_pmd_size": "2097152",
                  "hugepages-64kB_enabled": "always inherit [madvise] never", "hugepages-2048kB_enabled":
                  "always [inherit] madvise never"})
    materialize_mod._thp_size.cache_clear()
    assert materialize_mod._thp_size() == 2097152
    files["hugepages-64kB_enabled"] = "always inherit madvise [never]"  # inherit of never is never
    materialize_mod._thp_size.cache_clear()
    assert materialize_mod._thp_size() == 0
    del files["enabled"]
    materialize_mod._thp_size.cache_clear()
    assert materialize_mod._thp_size() == 0  # no THP support in the kernel
    monkeypatch.undo()
    materialize_mod._thp_size.cache_clear()


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
@pytest.mark.parametrize("policy", ["module", "pytorch", "kaiming"])
def test_zero_element_tensors_need_no_initializer(policy):
    def build():
        m = nn.Sequential(nn.Linear(0, 4), nn.Linear(4, 0), nn.Embedding(0, 3))
        m.register_buffer("nothing", torch.empty(0))  # no rule matches it: nothing to fill either
        return m

    with torch.device("meta"):
        model = build()
    torchinit.materialize(model, "cpu", policy, seed=0, progress=False)  # module code writes no element of them
    assert not any(t.is_meta for t in model.state_dict().values())
    ref = build()
    torchinit.init_model(ref, policy, seed=0)
    _assert_same_state(model, ref)


_TORCH_LAYERS = {
    "mha": lambda: nn.MultiheadAttention(8, 2, add_bias_kv=True),
    "encoder": lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2,
                                             enable_nested_tensor=False),
    "decoder": lambda: nn.TransformerDecoder(nn.TransformerDecoderLayer(8, 2, 16, batch_first=True), 1),
    "transformer": lambda: nn.Transformer(8, 2, 1, 1, 16, batch_first=True),
    "prelu": lambda: nn.Sequential(nn.Linear(4, 4), nn.PReLU(4, init=0.3)),
}


@pytest.mark.parametrize("policy", ["module", "pytorch"])
@pytest.mark.parametrize("name", sorted(_TORCH_LAYERS))
def test_module_code_passing_the_tensor_by_keyword_materializes(name, policy):
    """torch.nn.init.constant_ reaches the routing mode as constant_(tensor=..., val=...) with no
    positional argument (MultiheadAttention's in_proj_bias / out_proj.bias, PReLU's weight):
    the write must be seen, else materialize calls the tensor unwritten."""
    with torch.device("meta"):
        model = _TORCH_LAYERS[name]()
    torchinit.materialize(model, "cpu", policy, seed=0, progress=False)
    ref = _TORCH_LAYERS[name]()
    torchinit.init_model(ref, policy, seed=0)
    _assert_same_state(model, ref)


def test_module_code_keyword_writes_leave_allocated_tensors_alone():
    """Partly meta: only in_proj_weight (and the Linear) are on meta. MultiheadAttention's
    _reset_parameters also writes constant_(in_proj_bias, 0.) and constant_(out_proj.bias, 0.),
    which reach the routing by keyword: those writes to allocated tensors must be skipped."""
    with torch.device("meta"):
        model = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 3))
    torch.manual_seed(0)
    model[0].in_proj_bias = nn.Parameter(torch.randn(24))
    model[0].out_proj = nn.Linear(8, 8)
    before = {k: v.clone() for k, v in model.state_dict().items() if not v.is_meta}
    assert sorted(before) == ["0.in_proj_bias", "0.out_proj.bias", "0.out_proj.weight"]
    torchinit.materialize(model, "cpu", "module", seed=0, progress=False)
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(_bits(after[k]), _bits(v)), k
    ref = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 3))
    torchinit.init_model(ref, "module", seed=0)
    for k in ("0.in_proj_weight", "1.weight", "1.bias"):
        assert torch.equal(_bits(after[k]), _bits(ref.state_dict()[k])), k


def test_uncovered_meta_tensors_error_names_rules_that_matched_nothing():
    model = _meta("mlp")
    with pytest.raises(ValueError, match=r"no initializer in the plan for meta tensor\(s\) .*"
                                         r"rules that matched nothing: #0 typo"):
        torchinit.materialize(model, "cpu", [{"name": "typo", "modules": "Linaer", "init": "zeros"}], seed=0)
    assert all(t.is_meta for t in model.state_dict().values())


def test_one_default_policy_everywhere():
    # issue 15: plan() and init_model() defaulted to kaiming, materialize() and the CLI to pytorch
    import argparse
    import inspect

    from torchinit.cli.plan_cmd import add_model_args
    from torchinit.model.registry import DEFAULT_POLICY

    assert DEFAULT_POLICY == "pytorch"
    for fn in (torchinit.plan, torchinit.init_model, torchinit.materialize):
        assert inspect.signature(fn).parameters["policy"].default == DEFAULT_POLICY, fn.__name__
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    assert parser.parse_args(["mlp"]).policy == DEFAULT_POLICY


def test_plan_then_materialize_with_the_defaults_writes_what_the_plan_said():
    def build():
        return nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 4, 256), nn.ReLU(),
                             nn.Linear(256, 128))

    with torch.device("meta"):
        model = build()
    preview = torchinit.plan(model)  # the default policy
    applied = torchinit.materialize(model, "cpu", seed=3)  # the default policy
    assert applied.policy == preview.policy == "pytorch"
    assert [(e.name, e.spec) for e in applied] == [(e.name, e.spec) for e in preview]
    # and the values follow the previewed specs: torch's U(+-1/sqrt(fan_in)), not kaiming's N(0, 2/fan_in)
    for name, t in model.named_parameters():
        lo, hi = preview[name].bounds
        assert lo <= t.min().item() and t.max().item() <= hi, name
        if t.numel() >= 1000:
            assert stats.kstest(t.detach().double().flatten().numpy(), stats.uniform(lo, hi - lo).cdf).pvalue > 1e-4
    # the same on an allocated model with init_model's default
    ref = build()
    torchinit.init_model(ref, seed=3)
    for (n, a), (_, b) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), n


def test_materialize_inside_a_meta_device_context():
    # a model built under `with torch.device("meta"):` and materialized in the same block: the keyed
    # engine's scratch tensors went to meta and the fill failed (".item() cannot be called on meta tensors")
    pol = [{"init": "trunc_normal", "args": {"std": 0.01731, "cutoff": 2.5}, "role": "weight"},
           {"init": "orthogonal", "modules": "LSTM", "params": "weight_hh*"}, {"init": "zeros", "role": "bias"}]

    def build():
        return nn.Sequential(nn.Linear(8, 8), nn.LSTM(8, 4))

    with torch.device("meta"):
        inside = build()
        torchinit.materialize(inside, "cpu", pol, seed=3)
        w = torch.empty(6, 5, device="cpu")
        torchinit.trunc_normal_(w, std=0.01737, a=-0.03, b=0.03, key=torchinit.Key(1))
    with torch.device("meta"):
        outside = build()
    torchinit.materialize(outside, "cpu", pol, seed=3)
    assert all(a.device.type == "cpu" and torch.equal(a, b)
               for a, b in zip(inside.state_dict().values(), outside.state_dict().values()))
    assert torch.equal(w, torchinit.trunc_normal_(torch.empty(6, 5), std=0.01737, a=-0.03, b=0.03,
                                                  key=torchinit.Key(1)))


def test_materialize_hf_module_code_inside_a_meta_device_context():
    # Whisper's own init code computes its sinusoids with device-less factories: under the user's
    # torch.device("meta") they were meta tensors and copy_ failed ("Cannot copy out of meta tensor")
    pytest.importorskip("transformers")
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    import hf_models

    with torch.device("meta"):
        inside = hf_models.whisper()
        torchinit.materialize(inside, "cpu", "module", seed=3)
    with torch.device("meta"):
        outside = hf_models.whisper()
    torchinit.materialize(outside, "cpu", "module", seed=3)
    a, b = inside.state_dict(), outside.state_dict()
    assert all(a[k].device.type == "cpu" and torch.equal(a[k], b[k]) for k in b)
    assert a["model.encoder.embed_positions.weight"].abs().max() > 0.5  # the sinusoids, not zeros


def _vma_flags(lo: int, hi: int) -> list[tuple[int, int, set[str]]]:
    """The VMAs of this process that overlap [lo, hi), with their VmFlags (/proc/self/smaps)."""
    out, cur = [], None
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                a, b = (int(x, 16) for x in head.split("-"))
                cur = (a, b) if a < hi and b > lo else None
            elif head == "VmFlags:" and cur is not None:
                out.append((cur[0], cur[1], set(line.split()[1:])))
    return out


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")
@pytest.mark.parametrize("start,nbytes", [(3 * 4096 + 100, (9 << 20) + 5 * 4096 - 93),  # whole 2 MiB pages inside
                                          ((12 << 20) + 10, (3 << 19) + 400),  # none
                                          (5 * 4096 + 1, 3 * 4096)])  # a few small pages
def test_populate_advises_exactly_the_whole_pages_of_the_range_for_huge_pages(start, nbytes):
    """With huge=..., populate advises MADV_HUGEPAGE on all whole pages of the range, not only
    its huge-page-aligned interior (the kernel never maps a folio past the advised range, and
    the smaller multi-size huge pages (mTHP) can then back the ends too), and on nothing
    outside them. Checked on a fresh anonymous mapping, whose VMA carries no earlier advice."""
    import ctypes

    from torchinit.keyed import backend as B

    if not B.native_available():
        pytest.skip("native kernel not built")
    page = os.sysconf("SC_PAGESIZE")
    buf = mmap.mmap(-1, 16 << 20)
    try:
        base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        try:
            buf.madvise(mmap.MADV_HUGEPAGE, 15 << 20, page)  # probe, on a page the test does not look at
        except (AttributeError, OSError) as exc:
            pytest.skip(f"madvise(MADV_HUGEPAGE) not available here: {exc}")
        lo, hi = base + start, base + start + nbytes
        a, b = -(-lo // page) * page, hi // page * page
        assert B.native_module().populate(lo, hi - lo, 2, 1 << 21) in (True, False)
        assert bytes(buf[start:start + nbytes]) == bytes(nbytes)  # contents unchanged (zeros)
        advised = [(v0, v1) for v0, v1, flags in _vma_flags(base, base + (15 << 20)) if "hg" in flags]
        assert advised == [(a, b)], ([(hex(x), hex(y)) for x, y in advised], hex(a), hex(b))
    finally:
        buf.close()
