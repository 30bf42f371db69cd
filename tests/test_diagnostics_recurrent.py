"""Recurrent layers in diagnose: measured like any layer, judged for saturation of their
gates and for the gradient through time."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchinit
from torchinit.diagnostics import LayerStats, Report, diagnose
from torchinit.evidence.diagnostics import verdicts as V
from torchinit.evidence.diagnostics.recurrent import _probe, _unroll

pytestmark = pytest.mark.usefixtures("one_thread")

H = 32


class Seq(nn.Module):
    """A recurrent layer read at its last step by a linear head (a sequence classifier)."""

    def __init__(self, cls, d=H, h=H, batch_first=True, **kw):
        super().__init__()
        self.rnn = cls(d, h, batch_first=batch_first, **kw)
        self.head = nn.Linear(h * (2 if kw.get("bidirectional") else 1), 4)

    def forward(self, x):
        y = self.rnn(x)[0]
        if isinstance(y, nn.utils.rnn.PackedSequence):
            y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True)
            return self.head(y[:, 0])
        return self.head(y[:, -1] if self.rnn.batch_first else y[-1])


def seq(n=32, t=10, d=H, seed=0):
    return torch.randn(n, t, d, generator=torch.Generator().manual_seed(seed))


def keras_init(model, cls):
    """Xavier input weights, orthogonal recurrent weights, zero biases, forget/update-gate bias 1."""
    torchinit.init_model(model, "xavier", seed=0)
    if cls in (nn.LSTM, nn.GRU):
        with torch.no_grad():
            model.rnn.bias_hh_l0[H:2 * H] = 1.0
    return model


def scaled(model, s):
    with torch.no_grad():
        for p in model.rnn.parameters():
            p.mul_(s)
    return model


def serious(rep):
    return [v for v in rep.verdicts if v.severity in ("warning", "error")]


@pytest.mark.parametrize("cls", [nn.RNN, nn.GRU, nn.LSTM])
def test_recurrent_layer_is_measured_like_any_layer(cls):
    torch.manual_seed(0)
    model = Seq(cls)
    rep = diagnose(model, seq())
    r = rep.layer("rnn")  # absent before: the report held only the Linear
    assert (r.kind, r.type, r.shape) == ("recurrent", cls.__name__, [32, 10, H])
    assert r.grad_std is not None and r.grad_std > 0 and r.cosine is not None
    assert r.time_steps == 10 and r.time_grad_ratio is not None and r.saturated is not None
    assert r.hist_range == [-1.0, 1.0]  # a tanh-bounded output
    assert [x.name for x in rep.layers] == ["rnn", "head"]
    assert all(p.grad is None for p in model.parameters())
    assert Report.from_json(rep.to_json()).to_json() == rep.to_json()


@pytest.mark.parametrize("cls", [nn.RNN, nn.GRU, nn.LSTM])
def test_healthy_small_recurrent_net_is_ok(cls):
    model = keras_init(Seq(cls), cls)
    rep = diagnose(model, seq())
    assert serious(rep) == [], [str(v) for v in rep.verdicts]


@pytest.mark.parametrize("cls", [nn.RNN, nn.GRU, nn.LSTM])
def test_weights_times_ten_saturate_the_gates(cls):
    torch.manual_seed(0)
    # an LSTM's sigmoid gates count as saturated beyond |z| > 3.6 (derivative < 10% of its
    # maximum): at x10 and unit inputs it sits at 50%, with inputs of std 2 well above
    x = seq() * (2.0 if cls is nn.LSTM else 1.0)
    rep = diagnose(scaled(Seq(cls), 10.0), x)
    (v,) = rep.by_kind("saturation")
    assert v.layer == "rnn" and f"1 {cls.__name__} (gates and tanh) layer(s)" in v.message
    assert v.value > 0.6 and "orthogonal recurrent weights" in v.fix
    healthy = diagnose(keras_init(Seq(cls), cls), x)
    assert healthy.layer("rnn").saturated < 0.2 and healthy.by_kind("saturation") == []


@pytest.mark.parametrize("cls", [nn.RNN, nn.GRU, nn.LSTM])
def test_tiny_weights_vanish_through_time(cls):
    torch.manual_seed(0)
    rep = diagnose(scaled(Seq(cls), 0.01), seq())
    (v,) = rep.by_kind("vanishing_through_time")
    assert v.layer == "rnn" and v.layers == ["rnn"] and v.value < 0.01
    assert "over 10 steps" in v.message and "forget-gate bias" in v.fix
    if cls is nn.RNN:  # no gate carries the state: the gradient is gone
        assert v.severity == "error"
    else:  # the gates pass half of it per step: 0.5 ** 9
        assert v.value == pytest.approx(0.5 ** 9, rel=0.2)


def test_chrono_init_keeps_the_gradient_over_a_long_sequence():
    t = 50
    model = keras_init(Seq(nn.LSTM), nn.LSTM)
    assert diagnose(model, seq(t=t)).by_kind("vanishing_through_time")  # forget bias 1 is not enough at 50 steps
    with torch.no_grad():
        b = torch.log(torch.linspace(1, t - 1, H))
        model.rnn.bias_hh_l0[H:2 * H] = b
        model.rnn.bias_hh_l0[:H] = -b
    assert diagnose(model, seq(t=t)).by_kind("vanishing_through_time") == []


@pytest.mark.parametrize("cls, kw", [(nn.RNN, {"num_layers": 2, "nonlinearity": "relu"}),
                                     (nn.GRU, {"num_layers": 2, "bidirectional": True}),
                                     (nn.LSTM, {"bias": False, "bidirectional": True}),
                                     (nn.LSTM, {"proj_size": 8, "num_layers": 2})])
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_unroll_is_the_module(cls, kw):
    torch.manual_seed(0)
    m = cls(6, 12, batch_first=True, **kw)
    x = torch.randn(5, 7, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = m(x)[0]
        got, sat = _unroll(m, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert (sat == []) == (kw.get("nonlinearity") == "relu")


def test_time_major_and_packed_inputs():
    torch.manual_seed(0)
    model = scaled(Seq(nn.LSTM, batch_first=False), 0.01)
    x = seq().transpose(0, 1)  # (T, N, D)
    rep = diagnose(model, x)
    r = rep.layer("rnn")
    assert r.shape == [10, 32, H] and r.time_steps == 10
    assert rep.by_kind("vanishing_through_time")
    # the samples are dim 1: the same cosine as the batch-first model's
    bf = Seq(nn.LSTM)
    bf.load_state_dict(model.state_dict())
    assert diagnose(bf, seq()).layer("rnn").cosine == pytest.approx(r.cosine, rel=1e-4)
    # a PackedSequence: measured on its data, probed on the steps every sample has
    packed = nn.utils.rnn.pack_padded_sequence(seq(n=4), torch.tensor([10, 8, 6, 6]), batch_first=True)
    rp = diagnose(Seq(nn.GRU), (packed,)).layer("rnn")
    assert rp.shape == [30, H] and rp.cosine is None and rp.time_steps == 6


class CellLoop(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.cell = cls(H, H)
        self.head = nn.Linear(H, 4)

    def forward(self, x):
        state = None
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
        h = state[0] if isinstance(state, tuple) else state
        return self.head(h)


@pytest.mark.parametrize("cls", [nn.RNNCell, nn.GRUCell, nn.LSTMCell])
def test_cells_are_judged_over_their_calls(cls):
    torch.manual_seed(0)
    model = CellLoop(cls)
    scaled_model = CellLoop(cls)
    with torch.no_grad():
        for p in scaled_model.cell.parameters():
            p.mul_(0.01)
    rep = diagnose(scaled_model, seq())
    names = [r.name for r in rep.layers if r.kind == "recurrent"]
    assert names == ["cell"] + [f"cell#{i}" for i in range(2, 11)]
    (v,) = rep.by_kind("vanishing_through_time")
    assert v.layer == "cell" and "over 10 steps" in v.message
    with torch.no_grad():
        for p in model.cell.parameters():
            p.mul_(10.0)
    (v,) = diagnose(model, seq()).by_kind("saturation")
    assert v.layer.startswith("cell") and f"{cls.__name__} (gates and tanh)" in v.message


def test_time_rules_on_hand_built_stats():
    def rec(name, q=None, steps=None, type_="LSTM", grad=None):
        return LayerStats(name=name, type=type_, kind="recurrent", shape=[8, 5, 4], mean=0.0, std=0.1, max_abs=1.0,
                          sq_mean=0.0, chan_var=0.01, grad_std=grad, time_grad_ratio=q, time_steps=steps)

    ctx = V._context([rec("a", 0.5 ** 9, 10), rec("b", 0.5, 10), rec("c", 1e3, 10)])
    (v,) = V._vanishing_through_time(ctx)
    assert (v.layer, v.severity) == ("a", "warning") and "x0.50 per step" in v.message
    assert "falls to 1% within 7 steps" in v.message
    (v,) = V._exploding_through_time(ctx)
    assert (v.layer, v.value) == ("c", 1e3)
    cells = [rec("cell", type_="LSTMCell", grad=1e-5)] + [rec(f"cell#{i}", type_="LSTMCell", grad=1.0)
                                                          for i in (2, 3)]
    (v,) = V._vanishing_through_time(V._context(cells))
    assert (v.layer, v.severity, v.value) == ("cell", "error", 1e-5)


def test_probe_needs_two_steps():
    m = nn.GRU(4, 4, batch_first=True)
    sat, ratio, steps = _probe(m, torch.randn(3, 1, 4))
    assert ratio is None and steps == 1 and 0 <= sat <= 1
    assert math.isfinite(_probe(m, torch.randn(3, 2, 4))[1])
