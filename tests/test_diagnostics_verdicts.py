"""Verdicts as a user reads them: one line per kind, fixes for the nonlinearity at hand,
the tensor at fault named."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchinit.diagnostics import diagnose

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(act, depth=10, width=64):
    layers = []
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, width))


def batch(n=64, d=64, seed=1):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def serious(rep):
    return [v for v in rep.verdicts if v.severity in ("warning", "error")]


def test_zero_initialized_mlp_gives_one_symmetry_verdict_naming_the_layers():
    model = mlp(nn.ReLU)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
    rep = diagnose(model, batch())
    # not nine symmetry lines, nor dead units / "wrong_nonlinearity gain 0.00" that follow from them
    (v,) = serious(rep)
    assert (v.kind, v.severity, v.layer) == ("symmetry", "error", "0.weight")
    hidden = [f"{i}.weight" for i in range(0, 18, 2)]
    assert v.layers == hidden and v.message.startswith("9 weight tensors are all zero or constant: 0.weight, 2.weight")
    assert not rep.by_kind("wrong_nonlinearity") and not rep.by_kind("dead_units")
    # the per-layer findings stay in the JSON
    (d,) = [d for d in json.loads(rep.to_json())["verdicts"] if d["severity"] == "error"]
    assert [x["layer"] for x in d["details"]] == hidden
    assert "every unit of 8 computes the same function" in d["details"][4]["message"]


def test_zero_layer_explains_only_what_follows_it():
    model = mlp(nn.ReLU)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i, m in enumerate(model):
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.3 / 8, generator=g)  # too small from the first layer on
                m.bias.zero_()
        model[10].weight.zero_()
    rep = diagnose(model, batch())
    assert {v.kind for v in serious(rep)} >= {"symmetry", "vanishing"}
    assert rep.by_kind("vanishing")[0].layer == "0"  # starts before the zero layer: kept


def test_default_transformer_encoder_copies_are_one_line():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), 6,
                                enable_nested_tensor=False)
    rep = diagnose(enc, torch.randn(8, 10, 32, generator=torch.Generator().manual_seed(0)))
    (v,) = rep.by_kind("symmetry")
    assert len(v.layers) == 5 * 4 and len(v.details) == 20
    assert v.message.startswith("20 weight tensors are identical to another parameter: ")
    assert "and 14 more" in v.message and "pytorch issue 86274" in v.message


@pytest.mark.parametrize("act, wanted", [(nn.Tanh, "tanh gain 5/3"), (nn.Sigmoid, "gain 1 for sigmoid")])
def test_too_small_init_in_a_saturating_net_is_told_xavier_not_relu_kaiming(act, wanted):
    model = mlp(act)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.3 / 8, generator=g)
                m.bias.zero_()
    rep = diagnose(model, batch())
    found = [v for v in serious(rep) if v.kind in ("vanishing", "vanishing_gradients")]
    assert found
    for v in found:
        assert wanted in v.fix and "'xavier'" in v.fix
        assert "relu" not in v.fix.lower() and "kaiming" not in v.fix


def test_gelu_net_is_told_its_own_gain():
    model = mlp(nn.GELU)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.3 / 8, generator=g)
                m.bias.zero_()
    (v,) = diagnose(model, batch()).by_kind("vanishing")
    assert "gain of the GELU that follows" in v.fix


class RawParam(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(64, 64, generator=torch.Generator().manual_seed(0)) / 8)

    def forward(self, x):
        return F.relu(x @ self.w)


def test_nan_parameter_is_named_not_the_activation_call():
    model = nn.Sequential(nn.Linear(64, 64), RawParam(), nn.Linear(64, 4))
    with torch.no_grad():
        model[1].w[3, 3] = float("nan")
    rep = diagnose(model, batch())
    (v,) = rep.by_kind("nonfinite")
    assert (v.layer, v.layers) == ("1.w", ["1.w"])
    assert v.message == "1 parameter(s) contain NaN or inf: 1.w; layer outputs are non-finite from 1:relu on."
    assert v.fix.startswith("re-initialize 1.w")


def _gpt2(std=None, width=256):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=width, n_head=4, vocab_size=1000,
                                                             n_positions=64))
    if std is not None:
        with torch.no_grad():
            for n, p in m.named_parameters():
                if p.dim() == 2 and "wte" not in n and "wpe" not in n:
                    p.normal_(0, std, generator=torch.Generator().manual_seed(1))
    return m, {"input_ids": torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(2))}


def test_hugging_face_gpt2_activation_and_conv1d_fans_are_read():
    m, ids = _gpt2(width=64)
    rep = diagnose(m, ids, progress=False)
    by = {r.name: r for r in rep.layers}
    # NewGELUActivation is an activation: the MLP's first projection is followed by it
    assert by["transformer.h.0.mlp.act"].kind == "activation"
    assert by["transformer.h.0.mlp.c_fc"].next_act == "gelu_tanh"
    assert not by["transformer.h.0.mlp.c_fc"].residual  # the GELU formula's sum ends no branch
    # Conv1D stores (in, out): its gain sqrt(mean(w^2) * fan_in) reads fan_in = 64, not 192
    p = next(q for q in rep.params if q.name == "transformer.h.0.attn.c_attn.weight")
    assert p.gain == pytest.approx(0.02 * 64 ** 0.5, rel=0.05)


@pytest.mark.parametrize("std, width, kind", [(None, 16, None), (None, 256, None), (1.0, 256, "exploding"),
                                               (1e-4, 256, "vanishing")])
def test_hugging_face_gpt2_scale_errors_are_named_at_the_projection(std, width, kind):
    # width 16 at GPT-2's std 0.02: gains of 0.08 on the normalized inputs, a recipe, not vanishing
    m, ids = _gpt2(std, width)
    rep = diagnose(m, ids, progress=False)
    signal = [v for v in rep.verdicts if v.kind in ("vanishing", "exploding")]
    if kind is None:
        assert signal == []
    else:  # the projections are at fault, not the tied head (which a cross-block comparison blamed)
        (v,) = signal
        assert (v.kind, v.layer) == (kind, "transformer.h.0.attn.c_attn")
