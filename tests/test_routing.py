"""Routing a model's own init code through the keyed engine (the "module" preset)."""

from __future__ import annotations

import copy

import pytest
import torch
from scipy import stats
from torch import nn

import torchinit
from torchinit import Rule
from torchinit import specs as S

keyed = pytest.importorskip("torchinit.keyed")
Key = keyed.Key


def _zoo_model():
    torch.manual_seed(0)
    return nn.ModuleDict({
        "conv": nn.Conv2d(3, 6, 3),
        "bn": nn.BatchNorm2d(6),
        "convt": nn.ConvTranspose2d(6, 4, 2, groups=2),
        "fc": nn.Linear(12, 7),
        "emb": nn.Embedding(11, 5, padding_idx=3),
        "lstm": nn.LSTM(5, 6, num_layers=2),
        "gru": nn.GRU(4, 3),
        "mha": nn.MultiheadAttention(8, 2, add_bias_kv=True),
        "enc": nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True),
        "tr": nn.Transformer(d_model=8, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=16,
                             batch_first=True),
    })


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_module_preset_equals_pytorch_preset_bitwise(same_bits):
    """Torch's own reset code, routed, draws exactly the specs the "pytorch" preset
    writes down: both give bitwise the same tensors, name by name."""
    a, b = _zoo_model(), _zoo_model()
    pa = torchinit.init_model(a, "module", seed=5)
    torchinit.init_model(b, "pytorch", seed=5)
    sa, sb = _state(a), _state(b)
    for k in sa:
        same_bits(sa[k], sb[k])
    assert pa.unmatched == []
    # what the code drew is recorded in the applied plan
    assert pa["fc.weight"].observed[-1] == S.kaiming((7, 12), a=5 ** 0.5)
    assert pa["mha.in_proj_weight"].observed[-1] == S.xavier((24, 8))


def test_module_preset_is_reproducible_and_seed_dependent(same_bits, restore_rng):
    a, b, c = _zoo_model(), _zoo_model(), _zoo_model()
    torch.manual_seed(1)
    torchinit.init_model(a, "module", seed=2)
    torch.manual_seed(99)
    torchinit.init_model(b, "module", seed=2)
    torchinit.init_model(c, "module", seed=3)
    sa, sb, sc = _state(a), _state(b), _state(c)
    for k in sa:
        same_bits(sa[k], sb[k])
    assert not torch.equal(sa["fc.weight"], sc["fc.weight"])
    assert not torch.equal(sa["lstm.weight_hh_l1"], sc["lstm.weight_hh_l1"])


def test_module_preset_statistics_match_torch_own_init():
    """Per parameter, the routed values follow the same law as torch's own init (KS)."""
    big = lambda: nn.ModuleDict({  # noqa: E731
        "fc": nn.Linear(64, 48), "conv": nn.Conv2d(8, 16, 3), "emb": nn.Embedding(40, 30),
        "lstm": nn.LSTM(16, 24), "mha": nn.MultiheadAttention(32, 4, add_bias_kv=True),
    })
    torch.manual_seed(0)
    ref = big()
    ours = big()
    torchinit.init_model(ours, "module", seed=0)
    checked = 0
    for (n, p), (_, q) in zip(ref.named_parameters(), ours.named_parameters()):
        x, y = p.detach().flatten().double().numpy(), q.detach().flatten().double().numpy()
        if x.std() == 0:
            assert (x == y).all(), n  # constants: identical
            continue
        if x.size < 30:
            continue
        assert stats.ks_2samp(x, y).pvalue > 1e-3, n
        checked += 1
    assert checked >= 10


class Custom(nn.Module):
    """Init code with every awkward pattern: .data writes, views, trunc_normal_,
    orthogonal_, random factories."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.empty(6, 5))
        self.v = nn.Parameter(torch.empty(4, 4))
        self.t = nn.Parameter(torch.empty(300))
        self.o = nn.Parameter(torch.empty(5, 3))
        self.r = nn.Parameter(torch.empty(3, 4))
        self.reset_parameters()

    def reset_parameters(self):
        self.w.data.normal_(0.0, 2.0)
        self.w.data[:, 1:3].uniform_(-1.0, 1.0)
        nn.init.kaiming_uniform_(self.v)
        self.v.data[2].normal_(5.0, 0.1)
        nn.init.trunc_normal_(self.t, std=0.02, a=-0.04, b=0.04)
        nn.init.orthogonal_(self.o, gain=2.0)
        with torch.no_grad():
            self.r.copy_(torch.randn(3, 4) * 3)


def test_data_writes_and_views_take_the_keyed_values_of_their_box(same_bits):
    m = nn.Sequential(Custom())
    torchinit.init_model(m, "module", seed=4)
    c = m[0]
    full = keyed.sample(S.Normal(0.0, 2.0), Key(4).child("0.w"), (6, 5))
    box = keyed.sample(S.Uniform(-1.0, 1.0), Key(4).child("0.w"), (6, 5), offsets=(0, 1), sizes=(6, 2))
    expect = full.clone()
    expect[:, 1:3] = box
    same_bits(c.w.detach(), expect)
    v = keyed.sample(S.kaiming((4, 4)), Key(4).child("0.v"), (4, 4))
    v[2] = keyed.sample(S.Normal(5.0, 0.1), Key(4).child("0.v"), (4, 4), offsets=(2, 0), sizes=(1, 4))[0]
    same_bits(c.v.detach(), v)
    same_bits(c.t.detach(), keyed.sample(S.TruncatedNormal(0.0, 0.02, -0.04, 0.04), Key(4).child("0.t"), (300,)))
    o = c.o.detach()
    assert torch.allclose(o.T @ o, 4 * torch.eye(3), atol=1e-5)  # orthogonal_ routed whole, gain kept
    same_bits(o, keyed.sample(S.Orthogonal(2.0), Key(4).child("0.o"), (5, 3)))


def test_unattributed_draws_use_a_deterministic_fallback_and_spare_the_global_rng(same_bits):
    a, b = nn.Sequential(Custom()), nn.Sequential(Custom())
    torch.manual_seed(0)
    state = torch.get_rng_state()
    torchinit.init_model(a, "module", seed=4)
    assert torch.equal(torch.get_rng_state(), state)  # routed code never touches the global RNG
    torch.manual_seed(12345)
    torchinit.init_model(b, "module", seed=4)
    same_bits(a[0].r.detach(), b[0].r.detach())
    c = nn.Sequential(Custom())
    torchinit.init_model(c, "module", seed=5)
    assert not torch.equal(a[0].r, c[0].r)
    assert 2.0 < float(a[0].r.detach().std()) < 4.5


def test_user_apply_function_under_keyed_mode_equals_the_policy(same_bits):
    def weights_init(m):
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight.data, 0.0, 0.01)
            m.bias.data.zero_()

    build = lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))  # noqa: E731
    a, b = build(), build()
    with torchinit.keyed_init_mode(a, seed=8):
        a.apply(weights_init)
    torchinit.init_model(b, [
        Rule("kaiming_normal", {"mode": "fan_out", "nonlinearity": "relu"}, modules="Conv2d", params="weight"),
        Rule("zeros", role="bias"),
        Rule("normal", {"std": 0.01}, modules="Linear", params="weight"),
    ], seed=8)
    for (n, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        same_bits(x.detach(), y.detach())


def test_writes_to_meta_tensors_are_skipped_without_drawing():
    """A meta tensor (allocated by materialize in a later batch) holds no data: routed init
    calls and in-place writes on it return it untouched and draw nothing, so they use no
    fallback stream (whose per-scope counters would otherwise shift)."""
    net = nn.Linear(3, 3)
    meta = torch.empty(4, 5, device="meta")
    with torchinit.keyed_init_mode(net, seed=0) as mode:
        assert nn.init.normal_(meta) is meta
        assert nn.init.kaiming_uniform_(meta, a=1.0) is meta
        assert meta.uniform_() is meta and meta.zero_() is meta and meta.bernoulli_(0.5) is meta
    assert mode.log.fallback == {} and mode.log.specs == {}


def test_init_functions_are_restored_after_the_context():
    originals = {n: getattr(nn.init, n) for n in ("trunc_normal_", "orthogonal_", "xavier_uniform_")}
    net = nn.Linear(3, 3)
    with pytest.raises(RuntimeError, match="boom"):
        with torchinit.keyed_init_mode(net, seed=0):
            assert nn.init.trunc_normal_ is not originals["trunc_normal_"]
            raise RuntimeError("boom")
    for n, f in originals.items():
        assert getattr(nn.init, n) is f


def test_module_preset_adding_a_layer_leaves_others_unchanged(same_bits):
    a = nn.ModuleDict({"x": nn.Linear(4, 4), "y": nn.LSTM(4, 3)})
    b = nn.ModuleDict({"new": nn.Conv1d(2, 2, 1), "y": nn.LSTM(4, 3), "x": nn.Linear(4, 4)})
    torchinit.init_model(a, "module", seed=1)
    torchinit.init_model(b, "module", seed=1)
    for k, v in a.state_dict().items():
        same_bits(v, b.state_dict()[k])


def test_module_preset_torch_engine_reruns_torch_code(same_bits, restore_rng):
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3), nn.Embedding(6, 2, padding_idx=0))
    ref = copy.deepcopy(net)
    torch.manual_seed(21)
    for m in ref.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    torchinit.init_model(net, "module", seed=21, engine="torch")
    for k, v in ref.state_dict().items():
        same_bits(v, net.state_dict()[k])


def test_module_code_leaves_kept_and_excluded_tensors_alone(same_bits):
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    before = _state(net)
    pol = torchinit.get_preset("module") + Rule("keep", qualnames="1.bias")
    p = torchinit.init_model(net, pol, seed=0)
    assert p["1.bias"].initializer == "keep"
    same_bits(net[1].bias.detach(), before["1.bias"])
    assert not torch.equal(net[1].weight, before["1.weight"])
    net2 = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    before2 = _state(net2)
    torchinit.apply_plan(net2, torchinit.plan(net2, "module"), seed=0, only=["0.weight"])
    after2 = _state(net2)
    for k in ("0.bias", "1.weight", "1.bias"):
        same_bits(after2[k], before2[k])
    same_bits(after2["0.weight"], _state(net)["0.weight"])


from torch.nn.init import kaiming_uniform_ as _early_kaiming_uniform_  # noqa: E402  (taken before any mode)
from torch.nn.init import normal_ as _early_normal_  # noqa: E402


class KeywordInit(nn.Module):
    """Init code that hands the tensor over by keyword, through references taken before the
    routing patched torch.nn.init, and with keyword bounds."""

    def __init__(self):
        super().__init__()
        for n in "abcdefgh":
            self.register_parameter(n, nn.Parameter(torch.empty(5, 4)))
        self.z = nn.Parameter(torch.empty(5))
        with torch.no_grad():
            self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(tensor=self.a, mean=0.5, std=2.0)
        self.b.data.uniform_(-0.3, 0.7)
        torch.nn.init.trunc_normal_(tensor=self.c)
        _early_normal_(tensor=self.d, std=0.02)
        _early_normal_(self.e, 1.0, 3.0)
        self.f.uniform_(**{"from": -1.0, "to": 1.0})
        _early_kaiming_uniform_(tensor=self.g, a=5 ** 0.5)
        torch.nn.init.xavier_normal_(tensor=self.h, gain=2.0)
        torch.nn.init.constant_(tensor=self.z, val=0.25)


KEYWORD_SPECS = {
    "a": S.Normal(0.5, 2.0), "b": S.Uniform(-0.3, 0.7), "c": S.TruncatedNormal(0.0, 1.0, -2.0, 2.0),
    "d": S.Normal(0.0, 0.02), "e": S.Normal(1.0, 3.0), "f": S.Uniform(-1.0, 1.0),
    "g": S.kaiming((5, 4), a=5 ** 0.5), "h": S.xavier((5, 4), 2.0, "normal"),
}


def test_keyword_form_init_calls_are_keyed(same_bits, restore_rng):
    """Every form of the same call takes the keyed values, whatever torch's global RNG."""
    for global_seed in (1, 2):
        m = nn.Sequential(KeywordInit())
        torch.manual_seed(global_seed)
        p = torchinit.init_model(m, "module", seed=7)
        for n, spec in KEYWORD_SPECS.items():
            same_bits(getattr(m[0], n).detach(), keyed.sample(spec, Key(7).child(f"0.{n}"), (5, 4)))
            assert p[f"0.{n}"].observed[-1] == spec
        same_bits(m[0].z.detach(), torch.full((5,), 0.25))
    with torch.device("meta"):
        meta = nn.Sequential(KeywordInit())
    torchinit.materialize(meta, "cpu", "module", seed=7, progress=False)
    for k, v in meta.state_dict().items():
        same_bits(v, m.state_dict()[k])


def _writes(net):
    """The same kind of write, in every form init code may use, into ``net``'s tensors."""
    import torch.nn.functional as F

    w, b = net.weight, net.bias
    return {
        "constant_(tensor=)": lambda: nn.init.constant_(tensor=w, val=0.0),
        "zeros_(tensor=)": lambda: nn.init.zeros_(tensor=w),
        "eye_(tensor=)": lambda: nn.init.eye_(tensor=w),  # torch.eye(..., out=tensor)
        "dirac_(tensor=)": lambda: nn.init.dirac_(tensor=w.view(3, 4, 1)),
        "normal_(tensor=)": lambda: nn.init.normal_(tensor=w, mean=0, std=1),
        "early normal_(tensor=)": lambda: _early_normal_(tensor=w),
        "trunc_normal_(tensor=)": lambda: nn.init.trunc_normal_(tensor=w),
        "orthogonal_(tensor=)": lambda: nn.init.orthogonal_(tensor=w),
        "torch.fill_(input=)": lambda: torch.fill_(input=w, value=3.0),
        "torch.zero_(input=)": lambda: torch.zero_(input=w),
        "randn(out=)": lambda: torch.randn(3, 4, out=w.data),
        "add(out=)": lambda: torch.add(b, 1, out=b.data),
        "relu(inplace=True)": lambda: F.relu(w.data, inplace=True),
        "dropout(x, p, True, True)": lambda: F.dropout(w.data, 0.5, True, True),
        "*=": lambda: w.data.__imul__(0),
        "setitem": lambda: w.data.__setitem__(0, 5.0),
        ".data =": lambda: setattr(w, "data", torch.zeros(3, 4)),
        "bernoulli_": lambda: w.data.bernoulli_(0.5),
        "_foreach_mul_": lambda: torch._foreach_mul_([w.data, b.data], 0.0),
    }


def test_every_form_of_a_write_is_recorded_and_skipped_when_protected():
    net = nn.Linear(4, 3)
    with torch.no_grad():
        net.weight.fill_(-1.0)
        net.bias.fill_(-2.0)
    before = _state(net)
    for label in _writes(net):
        with torchinit.keyed_init_mode(net, seed=0, protect={"weight", "bias"}):
            _writes(net)[label]()
        for k, v in _state(net).items():
            assert torch.equal(v, before[k]), (label, k)
        free = copy.deepcopy(net)
        with torchinit.keyed_init_mode(free, seed=0) as mode:
            _writes(free)[label]()
        assert mode.log.written & {"weight", "bias"}, label
