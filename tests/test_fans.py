"""Fans: torch's rule reproduced exactly, and the layouts torch gets wrong (x @ w,
grouped and transposed convolutions) checked against the connectivity of the
real layers (how many inputs reach one output, how many outputs one input reaches)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.init import _calculate_fan_in_and_fan_out

from torchinit import Fans, compute_fans, module_fans, torch_fans

TORCH_SHAPES = [
    (1, 1), (3, 5), (5, 3), (7, 1), (0, 4), (4, 0), (16, 8, 3), (16, 8, 3, 3), (2, 3, 4, 5, 6),
    (8, 1, 7, 7), (4, 4, 1, 1), (3, 2, 0, 2), (1, 1, 1, 1, 1, 1), (10, 20, 2, 2, 2, 2),
]


@pytest.mark.parametrize("shape", TORCH_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_torch_layout_equals_torch(shape):
    t = torch.empty(shape)
    expected = _calculate_fan_in_and_fan_out(t)
    for fans in (torch_fans(shape), torch_fans(t), compute_fans(shape), compute_fans(t, "torch"),
                 compute_fans(shape, "torch", groups=4)):  # torch ignores groups, so does "torch"
        assert (fans.fan_in, fans.fan_out) == expected
        assert type(fans.fan_in) is int and type(fans.fan_out) is int
        assert fans.receptive_field == math.prod(shape[2:])


@pytest.mark.parametrize("shape", [(4,), (), (0,)])
def test_fewer_than_two_dims(shape):
    with pytest.raises(ValueError) as theirs:
        _calculate_fan_in_and_fan_out(torch.empty(shape))
    for fn in (torch_fans, compute_fans):
        with pytest.raises(ValueError) as ours:
            fn(shape)
        assert str(ours.value) == str(theirs.value)


def _jax_fans(shape, in_axis=-2, out_axis=-1):
    # jax.nn.initializers._compute_fans with batch_axis=()
    in_size, out_size = shape[in_axis], shape[out_axis]
    receptive = math.prod(shape) / in_size / out_size
    return in_size * receptive, out_size * receptive


@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (3, 3, 8, 16), (2, 4, 6), (7, 2, 3, 4, 5)])
def test_x_at_w_layout_is_jax_default(shape):
    f = compute_fans(shape, "x@w")
    assert (f.fan_in, f.fan_out) == _jax_fans(shape)
    if len(shape) == 2:
        # torch's own rule on w.T (what torch's docstring asks you to pass by hand)
        assert (f.fan_in, f.fan_out) == _calculate_fan_in_and_fan_out(torch.empty(shape).T)
        # semantics: y = x @ w, every output sums shape[0] inputs
        x = torch.zeros(1, shape[0], requires_grad=True)
        (x @ torch.ones(shape))[0, 0].backward()
        assert int((x.grad != 0).sum()) == f.fan_in


@pytest.mark.parametrize("shape, in_axis, out_axis", [
    ((3, 5), 0, 1), ((3, 5), 1, 0), ((3, 3, 8, 16), 2, 3), ((3, 3, 8, 16), -1, -2),
    ((16, 8, 3, 3), 1, 0), ((2, 4, 6), 0, 2), ((2, 4, 6), -3, 1),
])
def test_in_axis_out_axis(shape, in_axis, out_axis):
    f = compute_fans(shape, in_axis=in_axis, out_axis=out_axis)
    assert (f.fan_in, f.fan_out) == _jax_fans(shape, in_axis, out_axis)
    assert f.receptive_field == math.prod(shape) // shape[in_axis] // shape[out_axis]


def test_in_out_axis_on_torch_layout_equals_torch():
    shape = (16, 8, 3, 3)
    assert compute_fans(shape, in_axis=1, out_axis=0) == torch_fans(shape)


# --- connectivity of real layers ------------------------------------------------

def _connectivity(layer: nn.Module, in_channels: int, spatial: tuple[int, ...]):
    """(inputs reaching one interior output, outputs reached by one interior input)."""
    with torch.no_grad():
        layer.weight.fill_(1.0)
    x = torch.zeros((1, in_channels) + spatial, requires_grad=True)
    y = layer(x)
    centre_out = (0, 0) + tuple(s // 2 for s in y.shape[2:])
    y[centre_out].backward()
    fan_in = int((x.grad != 0).sum())
    delta = torch.zeros((1, in_channels) + spatial)
    delta[(0, 0) + tuple(s // 2 for s in spatial)] = 1.0
    with torch.no_grad():
        fan_out = int((layer(delta) != 0).sum())
    return fan_in, fan_out


CONVS = [
    ("conv1d", lambda: nn.Conv1d(6, 4, 3, bias=False), 6, (9,)),
    ("conv2d", lambda: nn.Conv2d(6, 4, 3, bias=False), 6, (9, 9)),
    ("conv2d_groups4", lambda: nn.Conv2d(8, 16, 3, groups=4, bias=False), 8, (9, 9)),
    ("conv2d_groups2_rect", lambda: nn.Conv2d(4, 6, (3, 5), groups=2, bias=False), 4, (9, 11)),
    ("conv1d_depthwise", lambda: nn.Conv1d(8, 8, 5, groups=8, bias=False), 8, (11,)),
    ("conv1d_depthwise_mult2", lambda: nn.Conv1d(4, 8, 5, groups=4, bias=False), 4, (11,)),
    ("conv3d_groups2", lambda: nn.Conv3d(4, 2, 3, groups=2, bias=False), 4, (7, 7, 7)),
    ("convT1d", lambda: nn.ConvTranspose1d(6, 4, 3, bias=False), 6, (9,)),
    ("convT2d", lambda: nn.ConvTranspose2d(3, 5, 3, bias=False), 3, (9, 9)),
    ("convT2d_groups2", lambda: nn.ConvTranspose2d(8, 6, 3, groups=2, bias=False), 8, (9, 9)),
    ("convT2d_groups4_rect", lambda: nn.ConvTranspose2d(8, 4, (3, 5), groups=4, bias=False), 8, (9, 11)),
]


@pytest.mark.parametrize("make, in_channels, spatial", [pytest.param(*c[1:], id=c[0]) for c in CONVS])
def test_module_fans_match_connectivity(make, in_channels, spatial):
    layer = make()
    fans = module_fans(layer)
    assert (fans.fan_in, fans.fan_out) == _connectivity(layer, in_channels, spatial)
    # and the explicit layout names give the same
    layout = "conv_transpose" if isinstance(layer, nn.modules.conv._ConvTransposeNd) else "conv"
    assert compute_fans(layer.weight.shape, layout, groups=layer.groups) == fans


def test_torch_fan_quirks_documented():
    # ConvTranspose2d(in=8, out=6, k=3, groups=2) stores (8, 3, 3, 3): torch's "fan_in" is
    # out/groups * k = 27, the true fan_in is in/groups * k = 36
    ct = nn.ConvTranspose2d(8, 6, 3, groups=2)
    assert _calculate_fan_in_and_fan_out(ct.weight) == (27, 72)
    assert module_fans(ct) == Fans(36, 27, 9)
    # Conv2d(8, 16, 3, groups=4) stores (16, 2, 3, 3): fan_in right, fan_out 4x too large
    c = nn.Conv2d(8, 16, 3, groups=4)
    assert _calculate_fan_in_and_fan_out(c.weight) == (18, 144)
    assert module_fans(c) == Fans(18, 36, 9)


def test_module_fans_linear_and_others():
    lin = nn.Linear(12, 5)
    assert module_fans(lin) == Fans(12, 5, 1) == torch_fans(lin.weight)
    emb = nn.Embedding(10, 4)  # any other module: torch's rule on the named tensor
    assert module_fans(emb) == Fans(4, 10, 1)
    mha = nn.MultiheadAttention(8, 2)
    assert module_fans(mha, "in_proj_weight") == Fans(8, 24, 1)
    with pytest.raises(ValueError, match=r"Linear has no tensor named 'kernel'"):
        module_fans(lin, "kernel")
    with pytest.raises(ValueError, match=r"ReLU has no tensor named 'weight'"):
        module_fans(nn.ReLU())
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        module_fans(nn.LayerNorm(4))


@pytest.mark.parametrize("kwargs, match", [
    ({"layout": "nchw"}, r"unknown layout 'nchw'; use one of torch, x@w, conv, conv_transpose"),
    ({"layout": "conv", "groups": 0}, r"groups must be a positive int, got 0"),
    ({"layout": "conv", "groups": True}, r"groups must be a positive int, got True"),
    ({"layout": "conv", "groups": 2.0}, r"groups must be a positive int, got 2.0"),
    ({"layout": "conv", "groups": 4}, r"out channels 6 \(dim 0\) not divisible by groups=4"),
    ({"layout": "conv_transpose", "groups": 4}, r"in channels 6 \(dim 0\) not divisible by groups=4"),
    ({"in_axis": 0}, r"in_axis and out_axis must be given together"),
    ({"out_axis": 1}, r"in_axis and out_axis must be given together"),
    ({"in_axis": 1, "out_axis": -2}, r"in_axis and out_axis must differ, both are 1"),
    # out of range: used to wrap around silently (5 % 3 == 2)
    ({"in_axis": 5, "out_axis": 0}, r"in_axis must be an int in \[-3, 3\) for shape \(6, 2, 3\), got 5"),
    ({"in_axis": 0, "out_axis": -4}, r"out_axis must be an int in \[-3, 3\) for shape \(6, 2, 3\), got -4"),
    ({"in_axis": 1.0, "out_axis": 0}, r"in_axis must be an int in \[-3, 3\) for shape \(6, 2, 3\), got 1.0"),
])
def test_compute_fans_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_fans((6, 2, 3), **kwargs)


@pytest.mark.parametrize("shape", [(3.5, 4), (-3, 4), (2, "4"), 5])
def test_bad_shapes_are_refused(shape):
    # int(3.5) used to truncate silently; a negative dimension gave a negative fan
    for fn in (torch_fans, compute_fans):
        with pytest.raises(ValueError, match=r"shape must be a sequence of non-negative ints"):
            fn(shape)


def test_fans_select():
    f = Fans(100, 400, 1)
    assert [f.select(m) for m in ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")] == [100, 400, 250.0, 200.0]
    assert f.fan_avg == 250.0
    assert f.to_dict() == {"fan_in": 100, "fan_out": 400, "receptive_field": 1}
    with pytest.raises(ValueError, match=r"Mode fan_sum not supported, please use one of \['fan_in', 'fan_out', 'fan_avg', 'fan_geo_avg'\]"):
        f.select("fan_sum")


class Conv1D(nn.Module):
    """Hugging Face's GPT-2 ``Conv1D`` as it stores its weight: ``(in, out)``, used as ``x @ w``."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))


def test_module_fans_of_hugging_face_conv1d_read_its_x_at_w_layout():
    c = Conv1D(192, 64)  # 64 inputs, 192 outputs: torch's rule would say fan_in 192
    assert _calculate_fan_in_and_fan_out(c.weight) == (192, 64)
    assert module_fans(c) == Fans(64, 192, 1) == compute_fans(c.weight.shape, "x@w")
    # torch's own Conv1d is not Hugging Face's Conv1D
    assert module_fans(nn.Conv1d(4, 8, 3)) == Fans(12, 24, 3)


def test_module_fans_of_the_real_hugging_face_conv1d():
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    assert module_fans(pytorch_utils.Conv1D(192, 64)) == Fans(64, 192, 1)
