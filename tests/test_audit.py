"""The init audit (issue 16): ``keyed_init_mode(...).missing()/report()/raise_if_incomplete()``
and ``track_init`` (the same audit on torch's own RNG), and the bad inputs both refuse
before anything is written. The sharded audit runs in tests/test_routing_sharded.py."""

from __future__ import annotations

import os
import sys

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
