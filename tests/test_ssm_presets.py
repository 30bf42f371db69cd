"""State-space (Mamba) parameters get their model's own init code under every preset
(presets.SSM_PARAMETERS); tensors marked ``_no_reinit`` (mamba_ssm) are kept."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import torchinit

transformers = pytest.importorskip("transformers")
transformers.utils.logging.set_verbosity_error()

_SSM = ("dt_proj.bias", "dt_bias", "A_log", ".D")


def _mamba():
    torch.manual_seed(0)
    return transformers.MambaModel(transformers.MambaConfig(
        hidden_size=16, state_size=4, num_hidden_layers=2, vocab_size=64, expand=2, conv_kernel=4, time_step_rank=4))


def _mamba2():
    torch.manual_seed(0)
    return transformers.Mamba2Model(transformers.Mamba2Config(
        hidden_size=32, state_size=8, num_hidden_layers=2, vocab_size=64, expand=2, conv_kernel=4, num_heads=4,
        head_dim=16, n_groups=1, chunk_size=16))


def _ssm(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if any(s in k for s in _SSM)}


@pytest.mark.parametrize("preset", ["pytorch", "kaiming", "xavier", "lecun", "orthogonal", "gpt2", "llama", "vit",
                                    "rnn"])
def test_every_preset_gives_the_time_step_bias_the_model_code(preset):
    ref = _mamba()
    torchinit.init_model(ref, "module", seed=0)
    model = _mamba()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before: A_log and D unmatched under all but pytorch
        p = torchinit.init_model(model, preset, seed=0)
    e = p["layers.0.mixer.dt_proj.bias"]
    # before: zeros (dt = softplus(0) = 0.69 on every channel), under pytorch U(+-1/sqrt(4)): dt 0.48 to 0.97
    assert e.initializer == "module" and e.rule.endswith("state-space parameters (own init code)")
    got, want = _ssm(model), _ssm(ref)
    assert sorted(got) == sorted(want) and len(got) == 6
    for k in got:
        assert torch.equal(got[k], want[k]), k
    dt = nn.functional.softplus(model.layers[0].mixer.dt_proj.bias.detach())
    assert 0.001 <= float(dt.min()) and float(dt.max()) <= 0.1 + 1e-6


@pytest.mark.parametrize("build", [_mamba, _mamba2], ids=["mamba", "mamba2"])
def test_materialize_from_meta(build):
    ref = build()
    torchinit.init_model(ref, "module", seed=0)
    with torch.device("meta"):
        model = build()
    # before: Mamba2's gated RMSNorm weight had no rule, and materialize refused it
    torchinit.materialize(model, "cpu", "gpt2", seed=0)
    got, want = _ssm(model), _ssm(ref)
    assert len(got) == 6 and all(torch.equal(got[k], want[k]) for k in got)
    assert all(bool((m.weight == 1).all()) for n, m in model.named_modules() if type(m).__name__.endswith("Gated"))


class _Mixer(nn.Module):
    """mamba_ssm's Mamba keeps its time-step bias from the constructor, marked _no_reinit."""

    def __init__(self):
        super().__init__()
        self.in_proj = nn.Linear(8, 16)
        self.dt_proj = nn.Linear(4, 16)
        with torch.no_grad():
            self.dt_proj.bias.fill_(-4.0)
        self.dt_proj.bias._no_reinit = True

    def forward(self, x):
        return self.dt_proj(self.in_proj(x)[..., :4])


@pytest.mark.parametrize("preset", ["pytorch", "gpt2", "kaiming"])
def test_a_tensor_marked_no_reinit_is_kept_unless_a_rule_names_it(preset):
    m = nn.Sequential(_Mixer())
    p = torchinit.init_model(m, preset, seed=0, example_inputs=torch.zeros(1, 8))
    assert bool((m[0].dt_proj.bias == -4.0).all())  # before: zeros, or U(+-1/2)
    assert "0.dt_proj.bias" not in [e.name for e in p.entries] and p.unmatched == []
    (note,) = [n for n in p.notes if "_no_reinit" in n]
    assert note.startswith("kept: '0.dt_proj.bias' (Linear) is marked _no_reinit (its constructor computed it, as "
                           "mamba_ssm's time-step bias); rule ")
    assert note.endswith("would have overwritten it. A rule naming it (qualnames: '0.dt_proj.bias') initializes it")
    torchinit.init_model(m, {"preset": preset, "rules": [{"qualnames": "0.dt_proj.bias", "init": "zeros"}]}, seed=0,
                         example_inputs=torch.zeros(1, 8))
    assert bool((m[0].dt_proj.bias == 0).all())
