"""torchinit.coord_check: activation sizes stay put with width under muP and grow under
standard parametrization with Adam (Tensor Programs V, figure 5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
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
    # heads scale, head dim fixed: 1/sqrt(d_head) is a constant and the logits stay put under muP
    assert abs(runs["mup"].growth["transformer.h.0.attn:logits"]) < 0.25


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


# -- attention logits: muP's 1/d scale shows only in the pre-softmax scores ---------------------

class _Attn(nn.Module):  # Hugging Face-like: an int head_dim and a float scaling that attention_scale_ sets
    def __init__(self, d: int):
        super().__init__()
        self.head_dim, self.scaling = d, d ** -0.5  # one head: the head dim is the width
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        q, k, v = (p(x).unsqueeze(1) for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling)
        return self.o_proj(y.squeeze(1))


class _TinyLM(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(64, d), nn.Embedding(8, d)
        self.ln1, self.attn, self.ln2 = nn.LayerNorm(d), _Attn(d), nn.LayerNorm(d)
        self.head = nn.Linear(d, 64, bias=False)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        x = x + self.attn(self.ln1(x))
        return self.head(self.ln2(x))


def _zero_query_mup(base, delta):  # Tensor Programs V: query zero at init, so the logits are 0 at step 0
    return torchinit.MuP(base, delta).extend({"qualnames": "*q_proj.weight", "init": "zeros"})


def _lm_batch():
    g = torch.Generator().manual_seed(0)  # 16 tokens: few next to the widths, as muP's limit assumes
    return torch.randint(0, 64, (2, 8), generator=g), torch.randint(0, 64, (2, 8), generator=g)


def test_attention_logits_grow_without_mups_one_over_d_and_stay_put_with_it():
    with torch.device("meta"):
        base = _TinyLM(32)

    def one_over_d(w):
        model = _TinyLM(w)
        if not model.head.weight.is_meta:
            assert torchinit.MuP(base).attention_scale_(model) == (["attn"] if w != 32 else [])
        return model

    kw = {"parametrization": _zero_query_mup, "steps": 4, "lr": 1e-2}
    sqrt_d = torchinit.coord_check(_TinyLM, WIDTHS, _lm_batch(), **kw)
    one_d = torchinit.coord_check(one_over_d, WIDTHS, _lm_batch(), **kw)
    for r in (sqrt_d, one_d):
        assert r.groups["attn:logits"] == "attention logits"
        assert all(v == 0.0 for v in r.rms["attn:logits"][0])  # zero query: every logit 0 before training
    # 1/sqrt(d): q.k of trained, correlated q and k grows like d, the logits like sqrt(d)
    assert sqrt_d.growth["attn:logits"] > 0.3, sqrt_d.render(200)
    assert sqrt_d.unstable_layers == ["attn:logits"]  # no layer's output shows it
    assert one_d.stable and abs(one_d.growth["attn:logits"]) < 0.1, one_d.render(200)
    fig = sqrt_d.plot()
    assert [ax.get_title().split(" (")[0] for ax in fig.axes] == ["input", "hidden", "attention logits",
                                                                  "vector", "output"]


def test_zoo_gpt_with_a_growing_head_dim_shows_its_missing_one_over_d_in_the_logits_only():
    # zoo.GPT calls F.scaled_dot_product_attention without scale=: 1/sqrt(d), d = width (one head)
    r = torchinit.coord_check(lambda w: zoo.GPT(vocab_size=64, block_size=8, n_layer=1, n_head=1, n_embd=w),
                              WIDTHS, _lm_batch(), parametrization="mup", steps=5, lr=3e-2)
    assert r.unstable_layers == ["transformer.h.0.attn:logits"], r.render(200)
    ex = r.exponents["transformer.h.0.attn:logits"]
    assert abs(ex[0]) < 0.1 and ex[-1] > 0.4  # size-independent at init (random q, k), grows once trained


def test_zoo_gpt_attention_logits_are_recorded_per_block_and_deterministic():
    def run():
        return torchinit.coord_check(lambda w: zoo.GPT(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=w),
                                     (32, 64), _gpt_batch(), parametrization="sp", steps=2, lr=1e-3)

    r = run()
    assert run().rms == r.rms
    assert [n for n, g in r.groups.items() if g == "attention logits"] == ["transformer.h.0.attn:logits",
                                                                          "transformer.h.1.attn:logits"]
    assert all(v > 0 for n in ("transformer.h.0.attn:logits", "transformer.h.1.attn:logits") for v in r.rms[n][0])


def test_sdpa_logits_are_the_scores_the_softmax_sees():
    from torchinit.evidence.attention_logits import LogitRecorder

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    mask = torch.rand(5, 5, generator=g) > 0.3
    mask.fill_diagonal_(True)

    class Call(nn.Module):  # an attention call is filed under the module that makes it
        def forward(self, fn):
            return fn()

    call = Call()

    def rms_of(fn):
        rec = LogitRecorder(call)
        with rec:
            call(fn)
        rec.close()
        return rec.rms()["Call:logits"]

    def expected(s):
        return s[torch.isfinite(s)].pow(2).mean().sqrt().item()

    s = q @ k.transpose(-1, -2) * 0.7
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    assert rms_of(lambda: F.scaled_dot_product_attention(q, k, v, scale=0.7)) == pytest.approx(expected(s), rel=1e-6)
    assert rms_of(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.7)) == pytest.approx(
        expected(s.masked_fill(~causal, -math.inf)), rel=1e-6)
    assert rms_of(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)) == pytest.approx(
        expected((s / 0.7 / 2).masked_fill(~mask, -math.inf)), rel=1e-6)  # default scale 1/sqrt(4)
    # grouped-query attention: 3 query heads share 1 key head
    k1 = k[:, :1]
    assert rms_of(lambda: F.scaled_dot_product_attention(q, k1, v[:, :1], scale=0.7, enable_gqa=True)) == \
        pytest.approx(expected(q @ k1.transpose(-1, -2) * 0.7), rel=1e-6)


def test_multihead_attention_logits_are_its_scores():
    from torchinit.evidence.attention_logits import LogitRecorder, _mha_scores

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    rec = LogitRecorder(mha)
    for need_weights in (True, False):  # its two code paths (explicit softmax, fused attention) record once each
        rec.clear()
        with rec:
            _, w = mha(x, x, x, need_weights=need_weights, average_attn_weights=False)
        s = _mha_scores(mha, x, x)
        assert rec.rms() == {"MultiheadAttention:logits": pytest.approx(s.pow(2).mean().sqrt().item(), rel=1e-6)}
    _, w = mha(x, x, x, average_attn_weights=False)
    torch.testing.assert_close(s.softmax(-1).view(2, 4, 5, 5), w)  # the scores its softmax takes
    rec.close()


@pytest.mark.hf
def test_hugging_face_eager_and_sdpa_attention_record_the_same_logits():
    tr = pytest.importorskip("transformers")
    tr.utils.logging.set_verbosity_error()
    from torchinit.evidence.attention_logits import LogitRecorder

    def llama(impl):
        torch.manual_seed(0)
        return tr.LlamaForCausalLM(tr.LlamaConfig(
            vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=16, attn_implementation=impl))

    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    out = {}
    for impl in ("eager", "sdpa"):  # eager: the softmax's input, its causal mask (dtype min) left out; sdpa: q, k
        model = llama(impl)
        rec = LogitRecorder(model)
        with rec:
            model(ids)
        rec.close()
        out[impl] = rec.rms()
    assert list(out["eager"]) == ["model.layers.0.self_attn:logits", "model.layers.1.self_attn:logits"]
    assert out["sdpa"] == {n: pytest.approx(v, rel=1e-5) for n, v in out["eager"].items()}


def test_a_softmax_outside_attention_is_not_a_logit():
    class Gate(nn.Module):
        def forward(self, x):
            return torch.softmax(x, dim=-1)

    from torchinit.evidence.attention_logits import LogitRecorder

    gate = Gate()
    rec = LogitRecorder(gate)
    with rec:
        out = gate(torch.randn(2, 3, 4))
    assert rec.sums == {} and out.shape == (2, 3, 4)


def test_the_batch_gives_nonlinearity_detection_its_forward():
    # a model torch.fx cannot trace (a branch on the batch size) and with no config to build inputs
    # from: init_model ran without the check's own batch and guessed the gains from registration order
    import warnings

    class Net(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.out, self.act, self.inp = nn.Linear(w, 10), nn.ReLU(), nn.Linear(16, w)

        def forward(self, x):
            if x.shape[0] == 0:
                return x
            return self.out(self.act(self.inp(x)))

    g = torch.Generator().manual_seed(0)
    batch = torch.randn(8, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torchinit.NonlinearityWarning)
        torchinit.coord_check(Net, [8, 16], batch, parametrization="mup", steps=1, lr=1e-2)
