"""The init audit (issue 16): ``keyed_init_mode(...).missing()/report()/raise_if_incomplete()``
and ``track_init`` (the same audit on torch's own RNG), and the bad inputs both refuse
before anything is written. The sharded audit runs in tests/test_routing_sharded.py."""

from __future__ import annotations

import os
import sys
import warnings

import pytest
import torch
from torch import nn

import torchinit

sys.path.insert(0, os.path.dirname(__file__))
import _sharded_models as SM  # noqa: E402


def test_audit_names_the_skipped_norm_weight_and_nothing_else():
    m = SM.OwnInit()
    with torchinit.keyed_init_mode(m, seed=0) as mode:
        m.init_weights(skip_norm=True)
    assert mode.missing() == ["norm.weight"]
    with pytest.raises(torchinit.IncompleteInitError, match=r"1 tensor\(s\) unwritten: 'norm.weight';"):
        mode.raise_if_incomplete()
    rep = mode.report()
    assert rep.missing == ["norm.weight"]
    assert "MISSING  norm.weight" in str(rep)
    # every other tensor was written once; the box write into w after xavier_normal_ is no
    # second whole-tensor spec
    assert rep["w"].writes == {("xavier_normal_", rep["w"].spec.describe()): 1,
                               ("uniform_", "Uniform(low=-1, high=1)"): 1}
    assert not rep["w"].conflicting
    assert rep["norm.bias"].writes == {("zero_", "Constant(value=0)"): 1}
    assert rep["c"].writes == {("copy_", ""): 1}
    assert rep.conflicting == []


def test_complete_init_passes_and_report_compares_std():
    m = nn.Sequential(nn.Linear(256, 512), nn.LayerNorm(512))
    with torchinit.keyed_init_mode(m, seed=3) as mode:
        for mod in m:
            mod.reset_parameters()
    mode.raise_if_incomplete()  # nothing missing: no error
    rep = mode.report()
    w = rep["0.weight"]
    assert w.promised_std == pytest.approx(1 / 256 ** 0.5 / 3 ** 0.5 * 1.0, rel=1e-6)  # kaiming_uniform_(a=sqrt 5)
    assert abs(w.measured_std / w.promised_std - 1) < 0.01
    assert rep["1.weight"].promised_std == 0.0 and rep["1.weight"].measured_std == 0.0


def test_report_flags_a_tensor_written_twice_with_different_specs():
    m = nn.Linear(4, 3)
    with torchinit.keyed_init_mode(m, seed=0) as mode:
        nn.init.normal_(m.weight, std=0.02)
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)
        nn.init.zeros_(m.bias)
    rep = mode.report()
    assert rep.conflicting == ["weight"]
    assert rep["weight"].count == 2 and rep["bias"].count == 2 and not rep["bias"].conflicting
    assert "CONFLICT weight" in str(rep)


def test_track_init_audits_torch_rng_code_without_changing_values():
    torch.manual_seed(7)
    plain = SM.OwnInit()
    torch.manual_seed(8)
    with torch.no_grad():
        plain.init_weights(skip_norm=True)
    torch.manual_seed(7)
    m = SM.OwnInit()
    torch.manual_seed(8)
    with torchinit.track_init(m) as audit, torch.no_grad():
        m.init_weights(skip_norm=True)
    for (k, a), b in zip(plain.state_dict().items(), m.state_dict().values()):
        assert torch.equal(a, b), k  # torch's own RNG, same values, nothing keyed
    assert audit.missing() == ["norm.weight"]
    assert audit.report()["fc2.weight"].writes == {("normal_", "Normal(mean=0, std=0.05)"): 1}
    with pytest.raises(torchinit.IncompleteInitError, match="'norm.weight'"):
        audit.raise_if_incomplete()


@pytest.mark.parametrize("ctx", ["keyed_init_mode", "track_init"])
def test_model_still_on_meta_is_refused(ctx):
    with torch.device("meta"):
        m = SM.OwnInit()
    enter = (lambda: torchinit.keyed_init_mode(m, seed=0)) if ctx == "keyed_init_mode" else (
        lambda: torchinit.track_init(m))
    with pytest.raises(ValueError, match=rf"{ctx}: every parameter and buffer of the model is on the meta device "
                                         r"\(first: 'w'\).*to_empty"):
        with enter():
            m.init_weights()


@pytest.mark.parametrize("ctx", ["keyed_init_mode", "track_init"])
def test_code_writing_outside_the_model_is_refused_before_it_writes(ctx):
    m, other = nn.Linear(3, 2), nn.Linear(5, 4)
    before = other.weight.detach().clone()
    enter = (lambda: torchinit.keyed_init_mode(m, seed=0)) if ctx == "keyed_init_mode" else (
        lambda: torchinit.track_init(m))
    with pytest.raises(ValueError, match=rf"{ctx}: torch.nn.init.normal_ writes into a Parameter of shape \(4, 5\) "
                                         rf"that is not a parameter or buffer of the model"):
        with enter():
            nn.init.normal_(other.weight)
    with pytest.raises(ValueError, match=r"bernoulli_ writes into a Parameter of shape \(4, 5\)"):
        with enter():
            other.weight.bernoulli_(0.5)
    assert torch.equal(other.weight, before)
    with enter():  # temporaries of the code itself stay fine (the fallback RNG / torch's)
        x = torch.empty(3).normal_()
    assert x.shape == (3,)


def test_a_buffer_replaced_by_assignment_is_not_missing():
    class Rope(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.register_buffer("freqs", torch.empty(4), persistent=False)

        def init_weights(self):
            self.freqs = torch.arange(4.0)  # torchtitan's freqs_cis: recomputed by assignment
            self.lin.reset_parameters()

    m = Rope()
    with torchinit.keyed_init_mode(m, seed=0) as mode:
        m.init_weights()
    assert mode.missing() == []
    assert mode.report()["freqs"].writes == {("assigned", "a new tensor"): 1}


@pytest.mark.parametrize("ctx", ["keyed", "track"])
def test_a_tensor_written_in_part_is_reported_with_its_unwritten_count(ctx):
    with torch.device("meta"):
        m = nn.Linear(8, 8)
    m.to_empty(device="cpu")
    enter = (lambda: torchinit.keyed_init_mode(m, seed=0)) if ctx == "keyed" else (lambda: torchinit.track_init(m))
    with enter() as mode, torch.no_grad():
        nn.init.normal_(m.weight)
        m.bias[:4].zero_()  # bias[4:] keeps whatever to_empty left there
    assert mode.missing() == []
    assert mode.partial() == {"bias": 4}
    with pytest.raises(torchinit.IncompleteInitError, match=r"only in part: 'bias' \(4 element\(s\) unwritten\)"):
        mode.raise_if_incomplete()
    rep = mode.report()
    assert rep.partial == {"bias": 4} and rep["bias"].unwritten == 4
    assert "PARTIAL  bias: zero_(Constant(value=0)); 4 element(s) never written" in str(rep)

    # parts that together cover the tensor: boxes, strided views, w[index] = v, a boolean mask
    with enter() as mode, torch.no_grad():
        m.bias[:4].zero_()
        m.bias[4:].fill_(1.0)
        m.weight[torch.arange(8) % 2 == 0] = 1.0  # even rows
        m.weight.t()[1::2].zero_()  # odd columns: 16 of them in odd rows
    assert mode.partial() == {"weight": 16}
    with enter() as mode, torch.no_grad():
        m.weight[:, ::2] = 0.0
        m.weight.t()[1::2][:3].zero_()  # columns 1, 3, 5
        m.weight[1::2, 7] = 2.0  # column 7, odd rows
        m.bias.zero_()
    assert mode.partial() == {"weight": 4}
    with enter() as mode, torch.no_grad():
        m.weight[:4].normal_()
        m.weight[4:] = 0.0
        m.bias[:] = 1.0
    assert mode.partial() == {} and mode.missing() == []
    mode.raise_if_incomplete()


class _Forgetful(nn.Module):
    """Init code that writes ``w`` and forgets the learned ``gate``; the buffer ``inv_freq``
    is the constructor's to compute, ``empty`` holds nothing, ``head.weight`` is tied to ``emb``."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.empty(4, 4))
        self.gate = nn.Parameter(torch.full((4,), float("nan")))
        self.empty = nn.Parameter(torch.empty(0, 3))
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, 4, 2).float() / 4), persistent=False)
        self.emb = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 5, bias=False)
        self.head.weight = self.emb.weight

    def reset_parameters(self):
        nn.init.normal_(self.w)


_GATE_MSG = ("the model's own init code (plan entries 'module') never wrote 1 parameter(s) it ran for: 'gate'; "
             "they keep their current values (the constructor's, or whatever memory held after to_empty()). "
             "Give them a rule (e.g. {'qualnames': 'gate', 'init': 'zeros'}) or, if their current values are the "
             "intended init, accept them with a 'keep' rule ({'qualnames': 'gate', 'init': 'keep'})")
_GATE_NOTE = ("kept: the model's own init code never wrote parameter(s) 'gate': they keep their current values "
              "(give them a rule, or a 'keep' rule to accept them)")
_INV_FREQ_NOTE = ("kept: the model's own init code never wrote buffer(s)/frozen table(s) 'inv_freq': they keep the "
                  "values their constructor computed (materialize from meta refuses them)")


def _never_wrote(caught) -> list[str]:
    return [str(w.message) for w in caught if "never wrote" in str(w.message)]


@pytest.mark.parametrize("engine", ["keyed", "torch"])
@pytest.mark.parametrize("preset", ["module", "pytorch"])
def test_init_model_names_a_parameter_its_init_code_never_wrote(preset, engine):
    # it used to keep the NaN gate without a word (materialize refused the same model on meta)
    m = _Forgetful()
    inv_freq = m.inv_freq.clone()
    with pytest.warns(UserWarning) as caught:
        p = torchinit.init_model(m, preset, seed=0, engine=engine)
    assert _never_wrote(caught) == [f"init_model: {_GATE_MSG}; strict=True makes this an error"]
    assert [n for n in p.notes if "never wrote" in n] == [_GATE_NOTE, _INV_FREQ_NOTE]
    assert torch.isnan(m.gate).all() and torch.equal(m.inv_freq, inv_freq)  # kept, as said
    assert m.w.std() > 0.5  # the code's own write happened


def test_a_keep_rule_accepts_the_current_values_and_apply_plan_warns_too():
    m = _Forgetful()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: the user accepted the gate's value
        p = torchinit.init_model(m, {"preset": "module", "rules": [{"qualnames": "gate", "init": "keep"}]}, seed=0)
    assert p["gate"].initializer == "keep" and [n for n in p.notes if "never wrote" in n] == [_INV_FREQ_NOTE]
    with pytest.warns(UserWarning) as caught:
        applied = torchinit.apply_plan(m, torchinit.plan(m, "module"), seed=0)
    assert _never_wrote(caught) == [f"apply_plan: {_GATE_MSG}"]
    assert _GATE_NOTE in applied.notes


@pytest.mark.parametrize("engine", ["keyed", "torch"])
def test_strict_refuses_a_parameter_init_code_never_wrote_and_writes_nothing(engine):
    m = nn.Sequential(_Forgetful(), nn.Linear(4, 4))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    msg = _GATE_MSG.replace("'gate'", "'0.gate'")
    with pytest.raises(torchinit.PolicyError) as err:
        torchinit.init_model(m, "pytorch", seed=0, engine=engine, strict=True)
    assert str(err.value) == f"init_model: {msg}; nothing was written (strict=True)"
    for k, v in m.state_dict().items():  # the code's write to w undone, the Linear's spec not drawn
        assert torch.equal(v, before[k]) or (torch.isnan(v).all() and torch.isnan(before[k]).all()), k


def test_a_weight_normed_linear_is_named_its_originals_are_never_written():
    # Linear.reset_parameters writes the parametrized (computed) weight, not the originals
    m = nn.Sequential(torch.nn.utils.parametrizations.weight_norm(nn.Linear(4, 4)))
    before = m[0].parametrizations.weight.original1.detach().clone()
    with pytest.warns(UserWarning) as caught:
        torchinit.init_model(m, "module", seed=0)
    assert [w.split("; they keep")[0] for w in _never_wrote(caught)] == [
        ("init_model: the model's own init code (plan entries 'module') never wrote 2 parameter(s) it ran for: "
         "'0.parametrizations.weight.original0', '0.parametrizations.weight.original1'")]
    assert torch.equal(m[0].parametrizations.weight.original1, before)


class _Half(nn.Module):
    """Init code that writes half of ``w`` (and all of ``b``): the other half keeps its value."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.full((4, 4), 7.0))
        self.b = nn.Parameter(torch.ones(4))

    def reset_parameters(self):
        with torch.no_grad():
            self.w[:2].normal_()
        nn.init.zeros_(self.b)


_HALF_MSG = ("the model's own init code (plan entries 'module') wrote only part of 1 parameter(s), leaving elements "
             "unwritten: w (8 of 16 elements); those elements keep their current values (the constructor's, or "
             "whatever memory held after to_empty()). Give them a rule (e.g. {'qualnames': 'w', 'init': 'zeros'}) "
             "or, if their current values are the intended init, accept them with a 'keep' rule "
             "({'qualnames': 'w', 'init': 'keep'})")


@pytest.mark.parametrize("engine", ["keyed", "torch"])
def test_init_model_names_a_parameter_its_init_code_wrote_only_in_part(engine):
    # it used to pass as written: the other half kept 7.0 (after to_empty(): garbage) without a word
    m = _Half()
    with pytest.warns(UserWarning) as caught:
        p = torchinit.init_model(m, "module", seed=0, engine=engine)
    assert [str(w.message) for w in caught if "only part" in str(w.message)] == [
        f"init_model: {_HALF_MSG}; strict=True makes this an error"]
    assert [n for n in p.notes if "in part" in n] == [
        "kept in part: the model's own init code wrote only part of parameter(s) w (8 of 16 elements): the other "
        "elements keep their current values"]
    assert torch.equal(m.w[2:], torch.full((2, 4), 7.0)) and not torch.equal(m.w[:2], torch.full((2, 4), 7.0))
    with pytest.raises(torchinit.PolicyError) as err:
        torchinit.init_model(_Half(), "module", seed=0, engine=engine, strict=True)
    assert str(err.value) == f"init_model: {_HALF_MSG}; nothing was written (strict=True)"
    fresh = _Half()
    with pytest.raises(torchinit.PolicyError):
        torchinit.init_model(fresh, "module", seed=0, engine=engine, strict=True)
    assert torch.equal(fresh.w, torch.full((4, 4), 7.0)) and torch.equal(fresh.b, torch.ones(4))  # undone


def test_a_whole_write_then_a_partial_one_is_complete():
    class PaddedEmbedding(nn.Module):  # the padding row zeroed after a whole draw: nothing to report
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.full((5, 3), 7.0))

        def reset_parameters(self):
            with torch.no_grad():
                nn.init.normal_(self.weight)
                self.weight[0].zero_()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = torchinit.init_model(PaddedEmbedding(), "module", seed=0)
    assert not [n for n in p.notes if "kept" in n]
