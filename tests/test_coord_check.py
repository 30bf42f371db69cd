"""torchinit.coord_check: activation sizes stay put with width under muP and grow under
standard parametrization with Adam (Tensor Programs V, figure 5)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchinit
from torchinit import zoo

WIDTHS = (32, 64, 128, 256)


def _mlp(w: int) -> nn.Module:
    return zoo.MLP(depth=4, width=w, in_features=16, out_features=10)


def _gpt(w: int) -> nn.Module:  # head dim fixed at 16: 1/sqrt(d_head) is muP's scale up to a constant
    return zoo.GPT(vocab_size=64, block_size=8, n_layer=1, n_head=w // 16, n_embd=w)


def _mlp_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 16, generator=g), torch.randint(0, 10, (64,), generator=g)


def _gpt_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 64, (4, 8), generator=g), torch.randint(0, 64, (4, 8), generator=g)


@pytest.fixture(scope="module")
def mlp_runs():
    return {p: torchinit.coord_check(_mlp, WIDTHS, _mlp_batch(), parametrization=p, steps=3, lr=1e-2)
            for p in ("mup", "sp")}


def test_mlp_is_stable_under_mup_and_not_under_sp(mlp_runs):
    mup, sp = mlp_runs["mup"], mlp_runs["sp"]
    assert mup.stable, mup.render()
    assert not sp.stable, sp.render()
    # under SP with Adam the hidden and output layers grow after the first update, the input layer does not
    assert set(sp.unstable_layers) >= {"layers.4", "layers.6"}
    assert sp.growth["layers.6"] > 0.5 and abs(sp.growth["layers.0"]) < 0.1
    assert all(abs(g) < 0.1 for g in mup.growth.values())
    assert mup.groups == {"layers.0": "input", "layers.2": "hidden", "layers.4": "hidden", "layers.6": "output"}


def test_small_transformer_is_stable_under_mup_and_not_under_sp():
    runs = {p: torchinit.coord_check(_gpt, (32, 64, 128), _gpt_batch(), parametrization=p, steps=3, lr=1e-2)
            for p in ("mup", "sp")}
    assert runs["mup"].stable, runs["mup"].render()
    assert not runs["sp"].stable, runs["sp"].render()
    assert "lm_head" in runs["sp"].unstable_layers


def test_zero_readout_has_no_exponent_at_step_0(mlp_runs):
    ex = mlp_runs["mup"].exponents["layers.6"]
    assert math.isnan(ex[0]) and all(math.isfinite(e) for e in ex[1:])
    assert all(v == 0.0 for v in mlp_runs["mup"].rms["layers.6"][0])


def test_same_seed_same_result(mlp_runs):
    again = torchinit.coord_check(_mlp, WIDTHS, _mlp_batch(), parametrization="mup", steps=3, lr=1e-2)
    assert again.rms == mlp_runs["mup"].rms and again.losses == mlp_runs["mup"].losses


def test_a_mup_factory_is_used():
    calls = []

    def factory(base, delta):
        calls.append((base.layers[0].weight.shape, delta.layers[0].weight.shape, base.layers[0].weight.is_meta))
        return torchinit.MuP(base, delta, init="gpt2", readout="scaled")

    r = torchinit.coord_check(_mlp, (16, 32), _mlp_batch(), parametrization=factory, steps=2, lr=1e-3)
    assert calls == [(torch.Size([16, 16]), torch.Size([32, 16]), True)]
    assert r.parametrization == "muP (gpt2, readout=scaled)"
    assert all(math.isfinite(e) for e in r.exponents["layers.6"])  # a scaled readout is not zero at step 0


def test_table_plot_and_html(mlp_runs, tmp_path):
    sp = mlp_runs["sp"]
    text = sp.render(width=200)
    assert "NOT stable (3 layers grow)" in text and "GROWS" in text and "layers.4" in text
    fig = sp.plot(tmp_path / "cc.png")
    assert [ax.get_title().split(" (")[0] for ax in fig.axes] == ["input", "hidden", "output"]
    assert len(fig.axes[1].get_lines()) == 3  # one line per step
    assert (tmp_path / "cc.png").stat().st_size > 1000
    html = sp.to_html()
    assert html.startswith("<section class='coord-check'>") and "data:image/png;base64," in html
    assert html.count("<tr>") == 1 + 4
    # embedded in the diagnostics report page
    from torchinit.diagnostics import save_comparison

    model = _mlp(32)
    rep = torchinit.diagnose(model, _mlp_batch()[0])
    page = save_comparison({"mlp": rep}, tmp_path / "report", sections=[html]).read_text()
    assert page.index("class='verdicts'") < page.index(html) < page.index("</body>")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"widths must be at least two distinct positive ints, got \[32\]"):
        torchinit.coord_check(_mlp, [32], _mlp_batch(), lr=1e-2)
    with pytest.raises(ValueError, match="optimizer must be one of adam, adamw, sgd, got 'rmsprop'"):
        torchinit.coord_check(_mlp, WIDTHS, _mlp_batch(), lr=1e-2, optimizer="rmsprop")
    with pytest.raises(ValueError, match="parametrization must be 'mup', 'sp' or a"):
        torchinit.coord_check(_mlp, WIDTHS, _mlp_batch(), lr=1e-2, parametrization="ntk")
    with pytest.raises(TypeError, match="the parametrization factory must return a MuP, got str"):
        torchinit.coord_check(_mlp, WIDTHS, _mlp_batch(), lr=1e-2, parametrization=lambda b, d: "kaiming")


def test_the_callers_global_rng_is_left_as_it_was():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    torchinit.coord_check(_mlp, (16, 32), _mlp_batch(), parametrization="sp", steps=1, lr=1e-3)
    assert torch.equal(torch.rand(3), expected)


class _Conv1x(nn.Module):  # a kernel dim that grows with width: muP has no role for it
    def __init__(self, w: int):
        super().__init__()
        self.c = nn.Conv1d(4, 4, kernel_size=w // 8 + 1, padding="same")
        self.fc = nn.Linear(4 * 8, 3)

    def forward(self, x):
        return self.fc(self.c(x).flatten(1))


def test_sp_check_of_a_model_muP_cannot_type_puts_its_layers_in_one_group():
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(8, 4, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
    r = torchinit.coord_check(_Conv1x, (16, 32), batch, parametrization="sp", steps=2, lr=1e-3)
    assert r.groups == {"c": "layers", "fc": "layers"}
    assert [ax.get_title().split(" (")[0] for ax in r.plot().axes] == ["layers"]
    with pytest.raises(ValueError, match=r"'c.weight' \(shape \(4, 4, 3\), base \(4, 4, 3\), delta \(4, 4, 5\)\): dim 2 scales"):
        torchinit.coord_check(_Conv1x, (16, 32), batch, parametrization="mup", steps=2, lr=1e-3)
