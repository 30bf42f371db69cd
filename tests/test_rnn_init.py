"""Recurrent layers: per-gate orthogonal weight_hh, the LSTM forget-gate bias, the "rnn" preset."""

from __future__ import annotations

import json

import pytest
import torch
from scipy import stats
from torch import nn

import torchinit as ti
from torchinit.core.gate_specs import GateConstant, OrthogonalPerGate
from torchinit.core.specs import spec_from_dict


def _max_gate_error(w: torch.Tensor, gates: int, gain: float = 1.0) -> float:
    """max |W_g W_g^T - gain^2 I| over the gate blocks of dim 0."""
    h = w.shape[0] // gates
    return max(float((b @ b.T - gain**2 * torch.eye(h, dtype=b.dtype)).abs().max())
               for b in w.detach().reshape(w.shape[0], -1).split(h))


# --------------------------------------------------------------------------- orthogonal_per_gate_

@pytest.mark.parametrize("gates", [4, 3, 1])
@pytest.mark.parametrize("engine", ["torch", "keyed"])
def test_every_gate_block_is_orthogonal(gates, engine):
    h = 16
    w = torch.empty(gates * h, h)
    kw = {"generator": torch.Generator().manual_seed(3)} if engine == "torch" else {"key": ti.Key(3, "w")}
    out = ti.orthogonal_per_gate_(w, gates, gain=1.0, **kw)
    assert out is w
    assert _max_gate_error(w, gates) < 1e-5


def test_whole_matrix_orthogonal_is_not_orthogonal_per_gate():
    # what the presets' recurrent rule gave before: columns of the stacked (4H, H) matrix
    # orthonormal, so each gate block has norm ~1/2 and W_g W_g^T is far from I
    w = ti.orthogonal_(torch.empty(64, 16), generator=torch.Generator().manual_seed(0))
    assert _max_gate_error(w, 4) > 0.3


def test_gain_scales_each_block():
    w = ti.orthogonal_per_gate_(torch.empty(12, 4), 3, gain=2.5, key=ti.Key(0, "w"))
    assert _max_gate_error(w, 3, gain=2.5) < 1e-4


def test_torch_engine_equals_torch_orthogonal_on_each_block_in_turn():
    w = torch.empty(40, 10)
    ti.orthogonal_per_gate_(w, 4, gain=1.5, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    ref = torch.cat([nn.init.orthogonal_(torch.empty(10, 10), gain=1.5, generator=g) for _ in range(4)])
    assert torch.equal(w, ref)


def test_keyed_blocks_are_the_child_keys_orthogonal():
    key = ti.Key(11, "lstm.weight_hh_l0")
    w = ti.orthogonal_per_gate_(torch.empty(24, 6), 4, key=key)
    for g, block in enumerate(w.split(6)):
        assert torch.equal(block, ti.orthogonal_(torch.empty(6, 6), key=key.child(f"gate{g}")))


def test_keyed_is_a_pure_function_of_the_key_and_thread_count_independent():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = ti.orthogonal_per_gate_(torch.empty(4 * 96, 96), 4, key=ti.Key(5, "w"))
        torch.set_num_threads(4)
        b = ti.orthogonal_per_gate_(torch.empty(4 * 96, 96), 4, key=ti.Key(5, "w"))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b)
    c = ti.orthogonal_per_gate_(torch.empty(4 * 96, 96), 4, key=ti.Key(6, "w"))
    assert not torch.equal(a, c)


def test_non_contiguous_and_half_precision():
    base = torch.empty(8, 24)
    w = base.t()  # (24, 8), not contiguous
    ti.orthogonal_per_gate_(w, 3, generator=torch.Generator().manual_seed(1))
    assert _max_gate_error(w, 3) < 1e-5
    h = ti.orthogonal_per_gate_(torch.empty(16, 4, dtype=torch.bfloat16), 4, key=ti.Key(0, "h"))
    assert _max_gate_error(h.float(), 4) < 2e-2


def test_rows_not_divisible_by_gates_is_refused_before_writing():
    w = torch.full((10, 3), 7.0)
    with pytest.raises(ValueError, match=r"dim 0 of shape \(10, 3\) \(10 rows\) is not divisible by gates=4"):
        ti.orthogonal_per_gate_(w, 4)
    with pytest.raises(ValueError, match=r"gates=4"):
        ti.orthogonal_per_gate_(w, 4, key=ti.Key(0))
    assert torch.all(w == 7.0)
    with pytest.raises(ValueError, match="gates must be a positive int, got 0"):
        ti.orthogonal_per_gate_(w, 0)
    with pytest.raises(ValueError, match="2 or more dimensions"):
        ti.orthogonal_per_gate_(torch.empty(8), 4)


def test_gate_specs_round_trip_through_dicts_and_json():
    for spec in (OrthogonalPerGate(4, 1.5), GateConstant((0.0, 1.0, 0.0, 0.0))):
        assert spec_from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert GateConstant((0, 1, 0, 0)).mean == 0.25
    with pytest.raises(ValueError, match="values must be a non-empty sequence"):
        GateConstant(())


# --------------------------------------------------------------------------- forget-gate bias

def test_lstm_forget_bias_all_layers_and_directions():
    torch.manual_seed(0)
    m = nn.LSTM(5, 6, num_layers=3, bidirectional=True)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    assert ti.lstm_forget_bias_(m, 1.0) is m
    h = 6
    n_pairs = 0
    for name, p in m.named_parameters():
        if not name.startswith("bias_ih"):
            if not name.startswith("bias_hh"):
                assert torch.equal(p, before[name])
            continue
        hh = getattr(m, name.replace("bias_ih", "bias_hh"))
        assert torch.all(p[h:2 * h] == 1.0) and torch.all(hh[h:2 * h] == 0.0)
        assert torch.all(p[h:2 * h] + hh[h:2 * h] == 1.0)  # the forget bias torch adds up
        keep = torch.cat([torch.arange(0, h), torch.arange(2 * h, 4 * h)])
        assert torch.equal(p[keep], before[name][keep])
        n_pairs += 1
    assert n_pairs == 6


def test_lstm_forget_bias_cell_and_tensor():
    cell = nn.LSTMCell(3, 4)
    ti.lstm_forget_bias_(cell, 2.0)
    assert torch.all(cell.bias_ih[4:8] + cell.bias_hh[4:8] == 2.0)
    b = torch.zeros(12)
    assert ti.lstm_forget_bias_(b, 1.0) is b
    assert b.tolist() == [0.0] * 3 + [1.0] * 3 + [0.0] * 6


def test_lstm_forget_bias_refusals_write_nothing():
    with pytest.raises(TypeError, match="expected an nn.LSTM, nn.LSTMCell or a bias tensor, got GRU"):
        ti.lstm_forget_bias_(nn.GRU(3, 4))
    with pytest.raises(ValueError, match="built with bias=False"):
        ti.lstm_forget_bias_(nn.LSTM(3, 4, bias=False))
    t = torch.full((10,), 5.0)
    with pytest.raises(ValueError, match=r"4 \* hidden_size elements .* got shape \(10,\)"):
        ti.lstm_forget_bias_(t)
    assert torch.all(t == 5.0)
    with pytest.raises(ValueError, match="value must be a finite real number, got nan"):
        ti.lstm_forget_bias_(nn.LSTM(3, 4), float("nan"))


def test_lstm_bias_rule_in_a_policy():
    m = nn.LSTM(3, 4, num_layers=2)
    pol = ti.Policy((ti.Rule("zeros", modules="LSTM", params="*"),
                     ti.Rule("lstm_bias", {"forget": 2.0}, modules="LSTM", params="bias_ih*")))
    p = ti.init_model(m, pol, seed=0)
    assert m.bias_ih_l1.tolist() == [0.0] * 4 + [2.0] * 4 + [0.0] * 8
    assert p["bias_ih_l0"].spec == GateConstant((0.0, 2.0, 0.0, 0.0))
    with pytest.raises(ti.PolicyError, match="forget"):
        ti.Rule("lstm_bias", {"forget": "one"})
    # a GRU's bias is 3H = 12 rows here, divisible by 4: refused, not filled in the wrong gate
    gru_rule = ti.Policy((ti.Rule("zeros", modules="GRU", params="*"),
                          ti.Rule("lstm_bias", modules="GRU", params="bias_ih*")))
    with pytest.raises(ti.PolicyError, match=r"lstm_bias: expected an LSTM bias of 4 \* hidden_size rows .* "
                                             r"got shape \(12,\) in GRU \(hidden_size 4\)"):
        ti.plan(nn.GRU(3, 4), gru_rule)


# --------------------------------------------------------------------------- the "rnn" preset

class _Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = nn.GRU(16, 8, num_layers=2, bidirectional=True, batch_first=True)
        self.rnn = nn.RNN(16, 8, num_layers=2, batch_first=True)
        self.cell = nn.LSTMCell(8, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, _ = self.gru(y)
        y, _ = self.rnn(y)
        return self.fc(y)


_GATES = {"lstm": 4, "gru": 3, "rnn": 1, "cell": 4}


def _check_rnn_preset(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        mod = name.split(".")[0]
        if ".weight_hh" in name:
            assert _max_gate_error(p, _GATES[mod]) < 1e-5, name
        elif ".bias_ih" in name and mod in ("lstm", "cell"):
            hh = model.get_parameter(name.replace("bias_ih", "bias_hh"))
            assert torch.all(p[8:16] + hh[8:16] == 1.0), name
            assert torch.all(p[:8] == 0) and torch.all(p[16:] == 0), name
        elif ".bias" in name or name == "fc.bias":
            assert torch.all(p == 0), name


def test_rnn_preset_on_lstm_gru_rnn():
    m = _Recurrent()
    plan = ti.init_model(m, "rnn", seed=0, strict=True)
    _check_rnn_preset(m)
    # weight_ih: xavier uniform with torch's fans of the stacked (gates*H, in) matrix
    w = m.lstm.weight_ih_l1
    bound = (6.0 / (w.shape[0] + w.shape[1])) ** 0.5
    assert stats.kstest(w.detach().flatten().double().numpy(), "uniform", args=(-bound, 2 * bound)).pvalue > 1e-3
    e = plan["lstm.weight_hh_l0_reverse"]
    assert e.spec == OrthogonalPerGate(4, 1.0)
    assert e.std == pytest.approx(8 ** -0.5)  # one H x H orthogonal block per gate: 1/sqrt(H)
    assert "OrthogonalPerGate(gates=4" in e.spec.describe()
    text = plan.to_json()
    assert "orthogonal_per_gate" in text and "gate_constant" in text
    assert ti.Plan.from_json(text).to_dict() == plan.to_dict()
    m(torch.randn(2, 5, 6))  # the model still runs


def test_rnn_preset_torch_engine_and_options():
    m = _Recurrent()
    ti.init_model(m, ti.load_policy({"preset": "rnn", "options": {"input_init": "lecun_uniform"}}), seed=1,
                  engine="torch")
    _check_rnn_preset(m)
    with pytest.raises(ti.PolicyError, match="input_init must be one of"):
        ti.load_policy({"preset": "rnn", "options": {"input_init": "kaiming"}})


def test_rnn_preset_keyed_deterministic_across_thread_counts_and_on_meta():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = _Recurrent()
        ti.init_model(a, "rnn", seed=9)
        torch.set_num_threads(3)
        b = _Recurrent()
        ti.init_model(b, "rnn", seed=9)
    finally:
        torch.set_num_threads(threads)
    with torch.device("meta"):
        c = _Recurrent()
    assert ti.plan(c, "rnn").to_dict() == ti.plan(_Recurrent(), "rnn").to_dict()
    ti.materialize(c, "cpu", "rnn", seed=9)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
        assert torch.equal(sa[k], sc[k]), k
    _check_rnn_preset(c)


def test_orthogonal_per_gate_rule_needs_gates_outside_rnns():
    pol = ti.Policy((ti.Rule("orthogonal_per_gate", modules="Linear", params="weight"),
                     ti.Rule("zeros", modules="Linear", params="bias")))
    with pytest.raises(ti.PolicyError, match=r"cannot tell the gates of a tensor of shape \(6, 4\) in Linear"):
        ti.plan(nn.Linear(4, 6), pol)
    pol = ti.Policy((ti.Rule("orthogonal_per_gate", {"gates": 2}, modules="Linear", params="weight"),
                     ti.Rule("zeros", modules="Linear", params="bias")))
    lin = nn.Linear(3, 6)
    ti.init_model(lin, pol, seed=0)
    assert _max_gate_error(lin.weight, 2) < 1e-5


def test_diagnose_promises_the_per_gate_std():
    # without the per-gate rule in diagnostics, weight_hh had no promised std (the spec's std depends on the shape)
    m = _Recurrent()
    plan = ti.init_model(m, "rnn", seed=0)
    report = ti.diagnose(m, torch.randn(4, 7, 6), plan=plan)
    hh = [p for p in report.params if ".weight_hh" in p.name]
    assert len(hh) == 11  # lstm 4, gru 4, rnn 2, cell 1
    for p in hh:
        assert p.promised_std == pytest.approx(8 ** -0.5), p.name
        assert p.std == pytest.approx(p.promised_std, rel=0.05), p.name
