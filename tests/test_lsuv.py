"""LSUV postconditions, prior-probability biases and the data-dependent rule hook."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchinit
from torchinit import class_prior, data_init_, lsuv_, prior_bias_


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(depth=8, width=32, d_in=16, bias=True):
    layers, d = [], d_in
    for i in range(depth):
        layers += [nn.Linear(d, width, bias=bias), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 5))


def batch(n=64, d=16, seed=0, scale=3.0):
    return scale * torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def output_stds(model, inputs, types=(nn.Linear, nn.Conv2d)):
    """Output std of every Linear/Conv, measured independently with hooks."""
    out = {}
    def hook(n):
        def f(mod, args, y):
            out.setdefault(n, float(y.std()))
        return f

    hs = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, types)]
    with torch.no_grad():
        model(inputs)
    for h in hs:
        h.remove()
    return out


def test_every_layer_within_tol_including_the_first():
    torch.manual_seed(0)
    model, x = mlp(), batch()
    rep = lsuv_(model, x, tol=0.05)
    stds = output_stds(model, x)
    assert list(stds) == [l.name for l in rep.layers]  # forward order, all layers
    assert rep.layers[0].name == "0"
    for name, s in stds.items():
        assert abs(s - 1.0) < 0.05, (name, s)
    assert rep.converged
    # the input has std 3: the first layer needed rescaling (others skip it)
    assert rep.layers[0].initial_std > 1.5 and rep.layers[0].iterations >= 1
    for l in rep.layers:
        assert l.final_std == pytest.approx(stds[l.name], rel=1e-5)
    # biases zeroed, weights orthogonal up to the scale LSUV applied
    assert all(float(m.bias.detach().abs().max()) == 0 for m in model if isinstance(m, nn.Linear))
    w = model[2].weight
    gram = w @ w.T
    assert torch.allclose(gram / gram.diagonal().mean(), torch.eye(32), atol=1e-4)


def test_cnn_with_batchnorm_and_buffers_restored():
    torch.manual_seed(0)
    model = torchinit.zoo.build("cnn", channels=(4, 8), image_size=8)
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    rep = lsuv_(model, x)
    assert [l.name for l in rep.layers] == ["features.0", "features.3", "fc"]
    assert all(torch.equal(buffers[k], v) for k, v in model.named_buffers())
    assert all(abs(s - 1) < 0.1 for s in output_stds(model, x).values())


def test_deterministic_with_seed_and_independent_of_global_rng():
    x = batch()
    torch.manual_seed(1)
    a = mlp()
    lsuv_(a, x, seed=7)
    torch.manual_seed(2)
    b = mlp()
    torch.randn(100)
    lsuv_(b, x, seed=7)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = mlp()
    lsuv_(c, x, seed=8)
    assert not torch.equal(a[0].weight, c[0].weight)


def test_max_iter_bounds_the_rescalings():
    torch.manual_seed(0)
    model, x = mlp(depth=3), batch()
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.bias.normal_(0.0, 0.8)  # kept: scaling W alone cannot reach std 1 in one step
    rep = lsuv_(model, x, max_iter=1, zero_bias=False, tol=0.001)
    assert all(l.iterations <= 1 for l in rep.layers)
    assert not rep.converged
    assert "NO" in str(rep)


def test_center_corrects_bias_after_weights():
    torch.manual_seed(0)
    model, x = mlp(depth=3), batch() + 5.0
    rep = lsuv_(model, x, center=True)
    outs = {}
    def hook(n):
        def f(mod, args, y):
            outs.setdefault(n, y)
        return f

    hs = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    for l in rep.layers:
        y = outs[l.name]
        assert abs(float(y.mean())) < 1e-4
        assert abs(float(y.std()) - 1) < 0.1  # a scalar shift leaves the std alone
        assert l.bias_shift is not None


def test_module_selection_and_errors_leave_model_untouched():
    torch.manual_seed(0)
    model, x = mlp(depth=3), batch()
    rep = lsuv_(model, x, modules=["2", "4"])
    assert [l.name for l in rep.layers] == ["2", "4"]
    rep = lsuv_(model, x, modules=lambda n, m: n == "0")
    assert [l.name for l in rep.layers] == ["0"]
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="lsuv_: modules: the model has no module named 'nope'"):
        lsuv_(model, x, modules=["nope"])
    with pytest.raises(ValueError, match=r"lsuv_: module '1' \(ReLU\) has no floating-point weight to rescale"):
        lsuv_(model, x, modules=["1"])
    with pytest.raises(ValueError, match=r"lsuv_: tol must be in \(0, 1\), got 0"):
        lsuv_(model, x, tol=0)
    with pytest.raises(ValueError, match="lsuv_: max_iter must be an integer >= 1, got 0"):
        lsuv_(model, x, max_iter=0)
    # a dead layer (std 0) raises and the model is restored, pre-init included
    with torch.no_grad():
        model[2].bias.fill_(-1e6)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="output of layer '4' has std 0.0"):
        lsuv_(model, x, zero_bias=False)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))


def test_any_selected_module_with_a_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 4))
    x = batch()
    rep = lsuv_(model, x, modules=["0", "1", "3"])
    assert [l.name for l in rep.layers] == ["0", "1", "3"]
    assert all(abs(s - 1) < 0.1 for s in output_stds(model, x, (nn.Linear, nn.LayerNorm)).values())
    assert float(model[1].weight.detach().std()) < 1e-6  # a 1-D weight is rescaled, not orthogonalized


class _WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 8)
        self.unused = nn.Linear(8, 8)

    def forward(self, x):
        return self.a(x)


def test_unused_module_is_reported_as_skipped():
    rep = lsuv_(_WithUnused(), batch())
    assert [(l.name, l.skipped) for l in rep.layers] == [("a", None), ("unused", "not called by forward")]
    assert rep.converged


def test_prior_bias_sigmoid_and_softmax():
    head = nn.Linear(8, 3)
    prior_bias_(head, 0.01)
    assert torch.allclose(torch.sigmoid(head.bias), torch.full((3,), 0.01), atol=1e-7)
    assert float(head.bias.detach()[0]) == pytest.approx(-math.log(99))  # RetinaNet's -log((1-p)/p)
    p = torch.tensor([0.5, 0.3, 0.2])
    prior_bias_(head, p, activation="softmax")
    assert torch.allclose(torch.softmax(head.bias, 0), p, atol=1e-6)
    assert float(head.bias.detach().sum()) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="prior has 2 values but the bias has 3"):
        prior_bias_(head, [0.5, 0.5], activation="softmax")
    with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
        prior_bias_(head, 1.0)
    with pytest.raises(ValueError, match="a softmax prior must sum to 1"):
        prior_bias_(head, [0.5, 0.3, 0.3], activation="softmax")
    with pytest.raises(ValueError, match="has no bias tensor"):
        prior_bias_(nn.Linear(2, 2, bias=False), 0.1)


def test_class_prior_from_data():
    t = torch.tensor([0, 0, 0, 1, 2, 2, -100])
    p = class_prior(t)
    assert p.tolist() == pytest.approx([0.5, 1 / 6, 1 / 3])
    assert class_prior(t, 4, smoothing=1.0).tolist() == pytest.approx([4 / 10, 2 / 10, 3 / 10, 1 / 10])
    head = nn.Linear(4, 4)
    prior_bias_(head, class_prior(t, 4, smoothing=1.0), activation="softmax")
    assert torch.softmax(head.bias, 0).tolist() == pytest.approx([0.4, 0.2, 0.3, 0.1], abs=1e-6)
    with pytest.raises(ValueError, match="target 2 out of range for num_classes=2"):
        class_prior(t, 2)


def test_data_init_rule_runs_in_forward_order_on_fresh_passes():
    torch.manual_seed(0)
    model, x = mlp(depth=3), batch()
    seen = []

    def rule(name, module, inputs, output):
        seen.append((name, float(inputs[0].std())))
        module.weight.div_(output.std())  # a one-step LSUV
        return float(output.std())

    res = data_init_(model, x, rule)
    assert list(res) == ["0", "2", "4", "6"]
    assert [n for n, _ in seen] == ["0", "2", "4", "6"]
    # the input of layer 2 reflects the rescaled layer 0: relu(unit-std) has rms ~ 0.7
    assert 0.4 < seen[1][1] < 1.0
    with pytest.raises(TypeError, match="rule must be callable"):
        data_init_(model, x, None)


def test_layer_not_called_by_forward_is_left_unchanged():
    torch.manual_seed(0)
    model = _WithUnused()
    before = [p.clone() for p in model.unused.parameters()]
    rep = lsuv_(model, batch(), seed=0)
    assert rep.layers[1].skipped == "not called by forward"
    assert all(torch.equal(p, q) for p, q in zip(before, model.unused.parameters()))  # no orthogonal pre-init
    assert abs(output_stds(model, batch())["a"] - 1) < 0.1


def test_parametrized_weight_is_a_clear_error():
    from torch.nn.utils import parametrizations

    torch.manual_seed(0)
    model = mlp(depth=2)
    model[0] = parametrizations.weight_norm(model[0])
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"lsuv_: the weight of module '0' \(ParametrizedLinear\) is computed"):
        lsuv_(model, batch())
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
    rep = lsuv_(model, batch(), modules=["2", "4"])  # the other layers still work
    assert rep.converged


def test_batch_of_one_is_our_error_and_no_torch_warning(recwarn):
    # one sample into a one-output layer: std of a single value; torch would first warn
    # "degrees of freedom is <= 0"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
    before = [p.clone() for p in model.parameters()]
    msg = (r"lsuv_: output of layer '2' has shape \(1, 1\): 1 value\(s\), too few to measure a std; "
           r"pass a batch with more samples \(inputs has batch size 1\)")
    with pytest.raises(ValueError, match=msg):
        lsuv_(model, batch(n=1))
    assert recwarn.list == [], [str(w.message) for w in recwarn.list]
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))  # restored
