"""Automatic nonlinearity detection: torch.fx, forward-hook fallback, registration order."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchinit
from torchinit.gains import second_moment_gain
from torchinit.nonlinearity import auto_gain, detect_nonlinearities


@pytest.mark.parametrize("act, name, param, gain", [
    (nn.ReLU(), "relu", None, math.sqrt(2)),
    (nn.LeakyReLU(0.2), "leaky_relu", 0.2, math.sqrt(2 / 1.04)),
    (nn.Tanh(), "tanh", None, 5 / 3),
    (nn.Sigmoid(), "sigmoid", None, 1.0),
    (nn.SELU(), "selu", None, 1.0),  # LeCun for self-normalizing nets, not torch's 3/4
    (nn.GELU(), "gelu", None, second_moment_gain("gelu")),
    (nn.GELU(approximate="tanh"), "gelu_tanh", None, second_moment_gain("gelu_tanh")),
    (nn.SiLU(), "silu", None, second_moment_gain("silu")),
    (nn.Mish(), "mish", None, second_moment_gain("mish")),
])
def test_fx_finds_the_activation_through_norm_dropout_pool(act, name, param, gain):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.1), nn.MaxPool2d(2), act,
                        nn.Flatten(), nn.Linear(4, 2))
    p = torchinit.plan(net, "kaiming")
    e = p["0.weight"]
    assert (e.nonlinearity, e.nonlinearity_source.split(":")[0]) == (name, "fx")
    assert e.gain == pytest.approx(gain)
    if param is not None:
        assert e.args["a"] == pytest.approx(param)
    assert p["6.weight"].nonlinearity == "linear" and p["6.weight"].nonlinearity_source == "fx: output"


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        y = torch.tanh(y + x)  # residual add, then the activation
        y = y.mean((2, 3))
        return self.out(F.leaky_relu(self.fc(y), 0.3))


def test_fx_follows_functional_activations_and_residual_adds():
    det, notes = detect_nonlinearities(Residual())
    assert det["conv1"].nonlinearity == "relu" and det["conv1"].via == "F.relu"
    assert det["conv2"].nonlinearity == "tanh"
    assert (det["fc"].nonlinearity, det["fc"].param) == ("leaky_relu", 0.3)
    assert det["out"].nonlinearity == "linear"
    assert notes == ["nonlinearity: detected by torch.fx symbolic tracing"]


class _MyLinear(nn.Linear):
    """A Linear subclass defined outside torch.nn (LoRA-style wrappers, Hugging Face's Conv1D)."""


class _Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class _NewGELUActivation(nn.Module):  # Hugging Face's GPT-2 activation
    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class _MyLayerNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return self.weight * (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)


def test_fx_keeps_custom_layers_and_activations_as_calls():
    """fx traces through modules defined outside torch.nn: a Linear subclass's call was
    lost ("not called") and a custom Swish / NewGELU was read from its inner sigmoid / tanh."""
    net = nn.Sequential(_MyLinear(8, 8), nn.ReLU(), nn.Linear(8, 8), _Swish(), nn.Linear(8, 8),
                        _NewGELUActivation(), nn.Linear(8, 8), _MyLayerNorm(8), nn.Tanh(), nn.Linear(8, 2))
    det, notes = detect_nonlinearities(net)
    assert notes == ["nonlinearity: detected by torch.fx symbolic tracing"]
    assert (det["0"].nonlinearity, det["0"].via) == ("relu", "1 (ReLU)")
    assert det["2"].nonlinearity == "silu" and det["4"].nonlinearity == "gelu_tanh"
    assert det["6"].nonlinearity == "tanh"  # through the custom LayerNorm
    p = torchinit.plan(net, "kaiming")
    assert p["0.weight"].gain == pytest.approx(math.sqrt(2))
    assert p["2.weight"].gain == pytest.approx(second_moment_gain("silu"))


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 6)
        self.act = nn.SELU()
        self.c = nn.Linear(6, 2)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x):
        h = self.a(x)
        h = torch.tanh(h) if h.sum() > -1e9 else h
        h = self.act(self.bn(self.b(h)))
        return self.c(h)


def test_hooks_fallback_on_example_inputs_sees_functions_and_modules(same_bits):
    m = Untraceable()
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    p = torchinit.plan(m, "kaiming", example_inputs=torch.randn(5, 4))
    assert p["a.weight"].nonlinearity == "tanh" and p["a.weight"].nonlinearity_source == "hooks: F.tanh"
    assert p["b.weight"].nonlinearity == "selu" and p["b.weight"].nonlinearity_source == "hooks: act (SELU)"
    assert p["c.weight"].nonlinearity == "linear"
    assert any("torch.fx tracing failed (TraceError" in n for n in p.notes)
    # detection ran in eval mode and restored it; the BatchNorm stats did not move
    assert m.training and m.bn.training
    for k, v in m.state_dict().items():
        same_bits(v, before[k])


def test_registration_order_fallback_without_inputs_is_labelled():
    with pytest.warns(torchinit.NonlinearityWarning, match=r"GUESSED .*: b \(selu\)"):
        p = torchinit.plan(Untraceable(), "kaiming")
    assert p["b.weight"].nonlinearity == "selu" and p["b.weight"].nonlinearity_source.startswith("order:")
    # registration order cannot see torch.tanh in forward: a.weight looks linear; the plan says why
    assert p["a.weight"].nonlinearity == "linear"
    assert any("registration order" in n for n in p.notes)


def test_auto_gain_choices():
    assert auto_gain("relu") == pytest.approx(math.sqrt(2))
    assert auto_gain("selu") == 1.0
    assert auto_gain("gelu") == pytest.approx(1 / math.sqrt(0.4252214826))
    assert auto_gain("leaky_relu", 0.1) == pytest.approx(math.sqrt(2 / 1.01))


def test_auto_on_a_non_layer_parameter_defaults_to_linear():
    class P(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.empty(8, 4))

        def forward(self, x):
            return x @ self.table

    e = torchinit.plan(P(), [torchinit.Rule("kaiming_normal", {"nonlinearity": "auto"}, params="table")])["table"]
    assert e.nonlinearity == "linear" and e.nonlinearity_source == "default: not a Linear/Conv layer"
    assert e.std == pytest.approx(1 / math.sqrt(4))


@pytest.mark.parametrize("act, expect", [
    (nn.ReLU(), ("relu", None)), (nn.ReLU6(), ("relu", None)), (nn.Tanh(), ("tanh", None)),
    (nn.Sigmoid(), ("sigmoid", None)), (nn.SELU(), ("selu", None)), (nn.SiLU(), ("silu", None)),
    (nn.Mish(), ("mish", None)), (nn.ELU(), ("elu", None)), (nn.Softplus(), ("softplus", None)),
    (nn.Hardswish(), ("hardswish", None)), (nn.LeakyReLU(0.3), ("leaky_relu", 0.3)),
    (nn.PReLU(init=0.1), ("leaky_relu", pytest.approx(0.1))), (nn.GELU(), ("gelu", None)),
    (nn.GELU(approximate="tanh"), ("gelu_tanh", None)), (nn.Linear(2, 2), None), (nn.Identity(), None),
])
def test_activation_of_module_names_every_torch_activation(act, expect):
    from torchinit.nonlinearity import activation_of_module

    assert activation_of_module(act) == expect


class _HookedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.act = nn.GELU()
        self.calls = 0

    def forward(self, x):
        return x + self.act(self.fc(x))


def test_fx_detection_runs_no_module_hooks_and_changes_no_state():
    """fx traces a non-leaf module through Module.__call__, with its hooks: FSDP2's pre-forward
    hook lazily initializes a fully_shard-ed block as a root there, and a user's hook runs on
    proxies. Detection calls the class's forward alone: no module, global or user hook runs."""
    net = nn.Sequential(_HookedBlock(), _HookedBlock(), nn.Linear(6, 2))
    calls = []

    def pre(mod, args):
        calls.append("pre")
        mod.calls += 1  # state a hook may change
        if isinstance(args[0], torch.fx.Proxy):
            raise RuntimeError("a hook ran on fx proxies")

    def post(mod, args, out):
        calls.append("post")

    for blk in net[:2]:
        blk.register_forward_pre_hook(pre)
        blk.register_forward_hook(post)
    handle = nn.modules.module.register_module_forward_pre_hook(lambda mod, args: calls.append("global"))
    try:
        det, notes = detect_nonlinearities(net)
    finally:
        handle.remove()
    assert calls == [] and [blk.calls for blk in net[:2]] == [0, 0]
    assert notes == ["nonlinearity: detected by torch.fx symbolic tracing"]
    assert det["0.fc"].nonlinearity == "gelu" and det["0.fc"].via == "0.act (GELU)"
    assert det["1.fc"].nonlinearity == "gelu" and det["2"].nonlinearity == "linear"
    y = net(torch.randn(2, 6))  # the hooks still work on a real call
    assert y.shape == (2, 2) and calls.count("pre") == 2 and calls.count("post") == 2


class _LinearReLU(nn.Linear):
    def forward(self, x):
        return F.relu(super().forward(x))  # the layer's own activation


class _FuncLinear(nn.Module):
    """Applies its weight with F.linear (not a layer module) and then a ReLU."""

    def __init__(self, n):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n, n))

    def forward(self, x):
        return F.relu(F.linear(x, self.w))


class _InnerActNet(nn.Module):
    def __init__(self, dynamic):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8), _LinearReLU(8, 8), nn.Linear(8, 8)
        self.e, self.f = _FuncLinear(8), nn.Linear(8, 8)
        self.dynamic = dynamic

    def forward(self, x):
        if self.dynamic and x.sum() > 1e9:  # data-dependent: fx cannot trace it
            x = -x
        return self.f(self.e(self.c(self.b(self.a(x)))))


@pytest.mark.parametrize("dynamic", [False, True], ids=["fx", "hooks"])
def test_activation_inside_a_layers_own_forward_follows_that_layer(dynamic):
    det, notes = detect_nonlinearities(_InnerActNet(dynamic), torch.randn(4, 8))
    source = "hooks" if dynamic else "fx"
    assert notes[-1].startswith("nonlinearity: detected " + ("from the data flow" if dynamic else "by torch.fx"))
    assert det["b"].nonlinearity == "relu" and det["b"].via == "F.relu in b's forward"
    assert det["a"].nonlinearity == "linear"  # followed by b's own linear map
    # c feeds a weight applied with F.linear, not the ReLU after it
    assert det["c"].nonlinearity == "linear" and det["c"].source == source
    assert det["f"].nonlinearity == "linear"


class _ModuleActLinear(nn.Linear):
    def __init__(self, *a):
        super().__init__(*a)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(super().forward(x))  # an activation MODULE ends the layer's forward


class _DynamicNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.z, self.a, self.c = nn.Linear(8, 8), _ModuleActLinear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        if x.sum() > 1e9:  # fx cannot trace it: hooks
            x = -x
        return self.c(self.a(self.z(x)))


def test_activation_module_inside_a_layers_forward_in_hook_mode():
    det, notes = detect_nonlinearities(_DynamicNet(), torch.randn(4, 8))
    assert "forward hooks" in notes[-1]
    assert det["z"].nonlinearity == "linear" and det["a"].nonlinearity == "relu"
    assert det["a"].via == "a.act (ReLU) in a's forward"


def test_example_inputs_the_model_rejects_are_named_as_such():
    # fx cannot trace this forward, the meta forward fails on the inputs, then the model itself ran on
    # them: its own RuntimeError came out of plan() with nothing saying example_inputs were at fault
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.act, self.out = nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 10)

        def forward(self, x):
            if x.shape[0] == 0:
                return x
            return self.out(self.act(self.inp(x)))

    net = Net()
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(ValueError, match=r"nonlinearity detection: the model's forward fails on example_inputs "
                                         r"\(RuntimeError: mat1 and mat2 shapes cannot be multiplied \(4x9 and 16x8\)\); "
                                         r"pass inputs its forward accepts, or give the rules an explicit nonlinearity$"):
        torchinit.init_model(net, "kaiming", seed=0, example_inputs=torch.randn(4, 9))
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    p = torchinit.plan(net, "kaiming", example_inputs=torch.randn(4, 16))
    assert p["inp.weight"].nonlinearity == "relu"


def test_guess_warning_names_the_failed_forward_on_example_inputs():
    # on a meta model the failed forward falls back to registration order; the warning said "no forward
    # ran" and "Pass example inputs" to a caller who had passed them
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.out, self.act, self.inp = nn.Linear(8, 10), nn.ReLU(), nn.Linear(16, 8)

        def forward(self, x):
            if x.shape[0] == 0:
                return x
            return self.out(self.act(self.inp(x)))

    with torch.device("meta"):
        net = Net()
    with pytest.warns(torchinit.NonlinearityWarning) as rec:
        torchinit.plan(net, "kaiming", example_inputs=torch.randn(4, 9))
    (msg,) = [str(w.message) for w in rec if isinstance(w.message, torchinit.NonlinearityWarning)]
    assert msg.startswith("nonlinearity: execution order unknown (torch.fx could not trace the model and a "
                          "meta-device forward on example_inputs failed (RuntimeError: a and b must have same "
                          "reduction dim, but got [4, 9] X [16, 8].)), so the activation after 2 layer(s) was GUESSED")
    assert "Pass example inputs its forward accepts on meta: plan(model, example_inputs=...)" in msg
