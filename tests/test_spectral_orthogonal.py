"""spectral_norm's raw weight is planned as the weight, and its u/v are recomputed from what was
written; an orthogonal parametrization's original is never drawn (model/parametrized.py)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import torchinit

RAW = "0.parametrizations.weight.original"


def _net(kind: str = "spectral_norm", legacy: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
    if legacy:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            net[0] = nn.utils.spectral_norm(net[0])
    else:
        net[0] = getattr(parametrizations, kind)(net[0])
    return net


def _sigma(net: nn.Sequential) -> float:
    """The largest singular value of the weight the layer computes with in eval mode (no power step)."""
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, 64))  # the legacy hook sets .weight in the forward
        return float(torch.linalg.matrix_norm(net[0].weight, 2))


@pytest.mark.parametrize("legacy", [False, True], ids=["parametrizations", "legacy"])
@pytest.mark.parametrize("policy", [
    "kaiming", "gpt2", "pytorch",
    # before: the raw weight redrawn, u and v left from the constructor's weight: eval-mode sigma 60
    {"preset": "kaiming", "rules": [{"qualnames": ["*.original", "*.weight_orig"], "init": "normal",
                                     "args": {"std": 1.0}}]},
    # before: u and v drawn at random too (a glob selects buffers): sigma 288
    [{"qualnames": "*", "init": "normal", "args": {"std": 0.02}}],
], ids=["kaiming", "gpt2", "pytorch", "explicit", "catch-all"])
def test_spectral_norm_divides_by_the_norm_of_the_weight_written(policy, legacy):
    net = _net(legacy=legacy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before: the presets left the raw weight unmatched
        p = torchinit.init_model(net, policy, seed=0)
    raw = p[RAW if not legacy else "0.weight_orig"]
    assert raw.spec is not None
    if isinstance(policy, str):
        assert "(as '0.weight')" in raw.matched_as and "spectral_norm's raw weight" in raw.matched_as
    assert _sigma(net) == pytest.approx(1.0, abs=0.02)


def test_spectral_norm_from_meta_gives_what_init_model_gives():
    with torch.device("meta"):
        net = _net()
    torchinit.materialize(net, "cpu", "kaiming", seed=0)  # before: refused the raw weight and u, v
    ref = _net()
    torchinit.init_model(ref, "kaiming", seed=0)
    for (n, a), (_, b) in zip(net.state_dict().items(), ref.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6) if n.endswith(("_u", "_v")) else torch.equal(a, b), n
    assert _sigma(net) == pytest.approx(1.0, abs=0.02)


_KEEP = "{'qualnames': '0.parametrizations.weight.*', 'init': 'keep'}"


@pytest.mark.parametrize("name", [RAW, "0.parametrizations.weight.0.base"])
def test_no_rule_draws_an_orthogonal_parametrization(name):
    net = _net("orthogonal")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # before: a rule naming the original drew it, and the layer computed a zero weight
    with pytest.raises(torchinit.PolicyError) as err:
        torchinit.init_model(net, {"preset": "kaiming", "rules": [{"qualnames": name, "init": "normal"}]}, seed=0)
    assert str(err.value) == (
        f"policy 'kaiming': rule #14 normal on {name!r}: it computes the orthogonal '0.weight' "
        "(torch.nn.utils.parametrizations.orthogonal): the layer's weight is an orthogonal matrix whatever is drawn "
        "here, and a drawn value makes a different one (or none: zeros); initialize the layer before registering "
        f"the parametrization and accept these tensors with a 'keep' rule ({_KEEP})")
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_an_orthogonal_parametrization_is_named_and_kept():
    net = _net("orthogonal")
    w = net[0].weight.detach().clone()
    with pytest.warns(UserWarning) as caught:  # a catch-all glob passes it by: unmatched, and said so
        torchinit.init_model(net, [{"qualnames": "*", "init": "normal", "args": {"std": 0.02}}], seed=0)
    (msg,) = [str(c.message) for c in caught]
    assert msg.startswith(
        f"init_model: no rule of policy 'custom' covers 1 tensor(s): {RAW!r}; '0.weight' is orthogonal by "
        "parametrization (torch.nn.utils.parametrizations.orthogonal): no rule draws its original, accept it with a "
        f"'keep' rule ({_KEEP}); they keep their current values")
    assert torch.allclose(net[0].weight, w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torchinit.init_model(net, {"preset": "kaiming", "rules": [
            {"qualnames": "0.parametrizations.weight.*", "init": "keep"}]}, seed=0)
    assert torch.allclose(net[0].weight, w)


def test_module_code_cannot_write_the_raw_weight_and_the_warning_says_what_to_do():
    net = _net()
    with pytest.warns(UserWarning) as caught:
        torchinit.init_model(net, "module", seed=0)
    (msg,) = [str(w.message) for w in caught if "never wrote" in str(w.message)]
    assert msg.endswith(
        f". But {RAW!r} is the raw weight of spectral_norm's '0.weight' (divided by the largest singular value): "
        "init code that writes '0.weight' writes a temporary computed from them, which is lost. Give the weight a "
        "rule instead (e.g. {'qualnames': '0.weight', 'init': 'kaiming_normal'}): the raw weight gets its spec; "
        "strict=True makes this an error")
