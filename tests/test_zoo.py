"""The built-in model zoo: shapes, parameter counts, conventions the presets rely on."""

import pytest
import torch
from torch import nn

from torchinit import zoo


@pytest.mark.parametrize("name", zoo.ZOO)
def test_build_forward_and_meta(name):
    torch.manual_seed(0)
    model = zoo.build(name)
    x = zoo.example_inputs(name, model, batch=3, generator=torch.Generator().manual_seed(1))
    y = model(x)
    assert y.shape[0] == 3 and torch.isfinite(y).all()
    with torch.device("meta"):
        meta = zoo.build(name)
    assert all(t.is_meta for t in meta.state_dict().values())
    # same structure on meta as on cpu
    assert [(n, t.shape, t.dtype) for n, t in meta.state_dict().items()] == [
        (n, t.shape, t.dtype) for n, t in model.state_dict().items()
    ]


def test_mlp_default_is_30_relu_layers_of_width_256():
    m = zoo.build("mlp")
    linears = [l for l in m.modules() if isinstance(l, nn.Linear)]
    assert len(linears) == 30
    assert all(l.out_features == 256 for l in linears[:-1]) and linears[0].in_features == 256
    assert sum(isinstance(l, nn.ReLU) for l in m.modules()) == 29
    assert isinstance(m.layers[0], nn.Linear) and isinstance(m.layers[1], nn.ReLU)


def test_cnn_and_resnet_have_batchnorm_and_residual():
    cnn, res = zoo.build("cnn"), zoo.build("resnet")
    assert sum(isinstance(l, nn.BatchNorm2d) for l in cnn.modules()) == 3
    assert any(isinstance(l, nn.BatchNorm2d) for l in res.modules())
    # residual add: with bn2 zeroed, a block computes relu(x + 0) on an identity shortcut
    block = zoo.BasicBlock(8, 8).eval()
    nn.init.zeros_(block.bn2.weight)
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(block(x), torch.relu(x))


@pytest.mark.parametrize("kw", [
    {}, {"bias": False}, {"tie_weights": True}, {"style": "llama"},
    {"style": "llama", "bias": False, "mlp_ratio": 3.0, "n_layer": 2, "n_embd": 48, "n_head": 3},
])
def test_gpt_param_count_formula(kw):
    with torch.device("meta"):
        m = zoo.build("gpt", **kw)
    assert sum(p.numel() for p in m.parameters()) == zoo.gpt_num_params(**kw)


def test_gpt_is_causal():
    torch.manual_seed(0)
    m = zoo.build("gpt", n_layer=2, n_embd=32, n_head=2, vocab_size=50, block_size=16).eval()
    idx = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(0))
    idx2 = idx.clone()
    idx2[:, 6:] = (idx2[:, 6:] + 1) % 50
    a, b = m(idx), m(idx2)
    assert torch.equal(a[:, :6], b[:, :6])
    assert not torch.equal(a[:, 6:], b[:, 6:])


def test_gpt_conventional_names_and_tying():
    gpt2 = dict(zoo.build("gpt", n_layer=2).named_parameters())
    for n in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.1.attn.c_attn.weight",
              "transformer.h.1.attn.c_proj.weight", "transformer.h.1.mlp.c_fc.weight",
              "transformer.h.1.mlp.c_proj.weight", "transformer.ln_f.weight", "lm_head.weight"):
        assert n in gpt2, n
    llama = dict(zoo.build("gpt", n_layer=2, style="llama").named_parameters())
    for n in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
              "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.up_proj.weight",
              "model.layers.0.mlp.down_proj.weight", "model.norm.weight", "lm_head.weight"):
        assert n in llama, n
    tied = zoo.build("gpt", tie_weights=True)
    assert tied.lm_head.weight is tied.transformer.wte.weight


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown zoo model 'vit'; available: mlp, cnn, resnet, gpt"):
        zoo.build("vit")
    with pytest.raises(TypeError, match=r"zoo 'mlp': .*unexpected keyword argument 'layers'.*accepted keyword arguments: depth"):
        zoo.build("mlp", layers=3)
    with pytest.raises(ValueError, match=r"n_embd=10 must be divisible by n_head=4"):
        zoo.build("gpt", n_embd=10, n_head=4)
    with pytest.raises(ValueError, match=r"depth must be an integer >= 1, got 0"):
        zoo.build("mlp", depth=0)


@pytest.mark.parametrize("name,kwargs,msg", [
    ("resnet", {"widths": []}, r"widths must be a non-empty list of integers >= 1, got \[\]"),
    ("resnet", {"widths": [0, 4]}, r"widths must be a non-empty list of integers >= 1"),
    ("cnn", {"channels": [-1]}, r"channels must be a list of integers >= 1"),
    ("cnn", {"channels": 8}, r"channels must be a list of integers >= 1, got 8"),
    ("cnn", {"num_classes": -2}, r"num_classes must be an integer >= 1, got -2"),
    ("mlp", {"in_features": -3}, r"in_features must be an integer >= 1, got -3"),
    ("mlp", {"out_features": 0}, r"out_features must be an integer >= 1, got 0"),
    ("gpt", {"mlp_ratio": -1}, r"mlp_ratio must be a positive number"),
])
def test_bad_sizes_are_value_errors_not_torch_errors(name, kwargs, msg):
    # the CLI turns ValueError into a one-line message; torch's RuntimeError would be a traceback
    with pytest.raises(ValueError, match=msg):
        zoo.build(name, **kwargs)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_gpt_gains_are_detected_not_guessed(style):
    # torch.fx cannot trace GPT.forward (it checks the sequence length) and no forward could run, so
    # presets guessed the activations from registration order: mlp.c_fc "linear", mlp.c_proj "gelu"
    import warnings

    import torchinit

    with torch.device("meta"):
        model = zoo.build("gpt", n_layer=1, n_embd=32, n_head=2, style=style)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torchinit.NonlinearityWarning)
        p = torchinit.plan(model, "kaiming")
    up, down = ("c_fc", "c_proj") if style == "gpt2" else ("up_proj", "down_proj")
    blocks = "transformer.h" if style == "gpt2" else "model.layers"
    assert p[f"{blocks}.0.mlp.{up}.weight"].nonlinearity == "gelu"
    assert p[f"{blocks}.0.mlp.{down}.weight"].nonlinearity == "linear"
