"""Nonlinearity detection that does not depend on where the model lives: a meta-device view
of the model runs the forward (CPU, meta and sharded models give the same plan), inputs come
from the model's own signature and config, and a guess from registration order warns."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

import torchinit
from torchinit.core.gains import auto_gain

sys.path.insert(0, str(Path(__file__).parent))
import hf_models  # noqa: E402

transformers = pytest.importorskip("transformers")
transformers.utils.logging.set_verbosity_error()


def _on_meta(build):
    with torch.device("meta"):
        return build()


def _signature(p):
    return [(e.name, e.nonlinearity, e.param if hasattr(e, "param") else None, e.nonlinearity_source, e.gain, e.spec)
            for e in p.entries]


@pytest.mark.parametrize("preset", ["kaiming", "xavier", "orthogonal"])
@pytest.mark.parametrize("where", ["cpu", "meta"])
def test_vit_attention_output_is_linear_and_mlp_fc1_gets_gelu(preset, where):
    """ViT has no token inputs and fx cannot trace it: registration order gave the attention
    output projection the MLP's GELU gain and fc1 gain 1, without a word."""
    torch.manual_seed(0)
    m = hf_models.vit() if where == "cpu" else _on_meta(hf_models.vit)
    p = torchinit.plan(m, preset)
    for i in range(2):
        fc1, o = p[f"vit.layers.{i}.mlp.fc1.weight"], p[f"vit.layers.{i}.attention.o_proj.weight"]
        assert fc1.nonlinearity == "gelu" and fc1.gain == pytest.approx(auto_gain("gelu"))
        assert fc1.nonlinearity_source.startswith("hooks:")
        assert o.nonlinearity == "linear" and o.gain == 1.0
        assert p[f"vit.layers.{i}.mlp.fc2.weight"].nonlinearity == "linear"


@pytest.mark.parametrize("preset", ["kaiming", "xavier", "orthogonal"])
def test_t5_on_meta_plans_like_t5_on_cpu(preset):
    """T5's dummy forward failed on meta and registration order swapped wi / wo."""
    torch.manual_seed(0)
    cpu, meta = hf_models.t5(), _on_meta(hf_models.t5)
    pc, pm = torchinit.plan(cpu, preset), torchinit.plan(meta, preset)
    assert _signature(pm) == _signature(pc)
    for stack in ("encoder", "decoder"):
        ff = f"{stack}.block.0.layer.{1 if stack == 'encoder' else 2}.DenseReluDense"
        assert pm[f"{ff}.wi.weight"].nonlinearity == "relu" and pm[f"{ff}.wo.weight"].nonlinearity == "linear"
    assert not any("registration order" in n for n in pm.notes), pm.notes


_T5_FACTORY = """
import transformers

def build():
    cfg = transformers.T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2,
                                vocab_size=64)
    return transformers.T5ForConditionalGeneration(cfg)
"""


def test_cli_init_t5_writes_the_same_weights_with_and_without_meta(tmp_path):
    """docs/scale.md: --meta and --no-meta give the same file where the policy covers every tensor.
    On T5 8 of 50 tensors differed (wi / wo swapped on meta)."""
    from torchinit.cli import main

    (tmp_path / "t5model.py").write_text(_T5_FACTORY)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    common = ["init", f"{tmp_path / 't5model.py'}:build", "--policy", "kaiming", "--seed", "5", "-q"]
    assert main(common + ["--out", str(a)]) == 0
    assert main(common + ["--out", str(b), "--no-meta"]) == 0
    ta, tb = load_file(str(a)), load_file(str(b))
    assert sorted(ta) == sorted(tb)
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert differ == []


def test_meta_view_shares_ties_drops_hooks_and_leaves_the_model_alone():
    from torchinit.model.calls import meta_view

    m = hf_models.gpt2()
    calls = []
    m.transformer.h[0].register_forward_pre_hook(lambda mod, args: calls.append("pre"))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    v = meta_view(m)
    assert [n for n, _ in v.named_parameters()] == [n for n, _ in m.named_parameters()]
    assert all(t.is_meta and t.shape == m.get_parameter(n).shape for n, t in v.named_parameters())
    assert v.lm_head.weight is v.transformer.wte.weight  # tied stays tied
    assert type(v.transformer.h[0]) is type(m.transformer.h[0])
    v.eval()
    with torch.no_grad():
        out = v(input_ids=torch.zeros(1, 4, dtype=torch.long, device="meta"))
    assert out.logits.is_meta and out.logits.shape == (1, 4, 50257)
    assert calls == [] and m.training
    assert all(torch.equal(t, before[k]) for k, t in m.state_dict().items())
    assert all(not t.is_meta for t in m.parameters())


@pytest.mark.parametrize("name,keys", [
    ("vit", {"pixel_values": (1, 3, 32, 32)}),
    ("convnext", {"pixel_values": (1, 3, 32, 32)}),
    ("t5", {"input_ids": (1, 16), "decoder_input_ids": (1, 16)}),
    ("bart", {"input_ids": (1, 16), "decoder_input_ids": (1, 16)}),
    ("whisper", {"input_features": (1, 8, 32), "decoder_input_ids": (1, 16)}),
    ("gpt2", {"input_ids": (1, 16)}),
])
def test_dummy_inputs_come_from_the_signature_and_config(name, keys):
    from torchinit.model.calls import dummy_inputs

    build = dict(hf_models.HF_MODELS)[name]
    got = dummy_inputs(_on_meta(build))
    assert {k: tuple(v.shape) for k, v in got.items()} == keys
    assert all(v.is_meta for v in got.values())


def test_dummy_inputs_for_audio_and_clip_vision():
    from torchinit.model.calls import dummy_inputs

    with torch.device("meta"):
        w2v = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16))
        clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
            patch_size=8))
    assert {k: tuple(v.shape) for k, v in dummy_inputs(w2v).items()} == {"input_values": (1, 16000)}
    assert {k: tuple(v.shape) for k, v in dummy_inputs(clip).items()} == {"pixel_values": (1, 3, 32, 32)}
    p = torchinit.plan(clip, "kaiming")
    assert p["encoder.layers.0.mlp.fc1.weight"].nonlinearity.startswith("gelu")
    assert p["encoder.layers.0.self_attn.out_proj.weight"].nonlinearity == "linear"


class _Branchy(nn.Module):
    """Reads a value (``if x.abs().sum() > 0``): fx cannot trace it; on meta the read is answered."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        if x.abs().sum() > 0:
            x = x * 2
        return self.b(F.silu(self.a(x)))


def test_data_dependent_reads_on_meta_are_answered_and_noted():
    with torch.device("meta"):
        m = _Branchy()
    p = torchinit.plan(m, "kaiming", example_inputs=torch.randn(2, 4))
    assert p["a.weight"].nonlinearity == "silu" and p["b.weight"].nonlinearity == "linear"
    assert any("data-dependent reads" in n for n in p.notes), p.notes


class _Untraceable(nn.Module):
    """fx fails (a loop over a value), no config to build inputs from: order is all there is."""

    def __init__(self):
        super().__init__()
        self.attn_out = nn.Linear(4, 4)
        self.act = nn.GELU()  # registered before fc1, as in Hugging Face's ViT MLP
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x):
        for _ in range(int(x.shape[0] > 0)):
            x = self.attn_out(x)
        return self.fc2(self.act(self.fc1(x)))


def test_registration_order_guess_warns_naming_layers_and_the_fix():
    m = _Untraceable()
    with pytest.warns(UserWarning, match=r"GUESSED from module registration order: attn_out \(gelu\)") as rec:
        p = torchinit.plan(m, "kaiming")
    msg = str(rec[0].message)
    assert "example_inputs=" in msg and "--example-inputs" in msg and "fc1 (linear)" in msg
    assert rec[0].category is torchinit.NonlinearityWarning
    assert msg in p.notes


@pytest.mark.parametrize("call", ["init_model", "materialize"])
def test_init_model_and_materialize_warn_too(call):
    if call == "init_model":
        with pytest.warns(torchinit.NonlinearityWarning, match="attn_out"):
            torchinit.init_model(_Untraceable(), "kaiming", seed=0)
    else:
        with torch.device("meta"):
            m = _Untraceable()
        with pytest.warns(torchinit.NonlinearityWarning, match="attn_out"):
            torchinit.materialize(m, "cpu", "kaiming", seed=0, progress=False)


def test_example_inputs_give_execution_order_and_no_warning(recwarn):
    p = torchinit.plan(_Untraceable(), "kaiming", example_inputs=torch.randn(2, 4))
    assert p["attn_out.weight"].nonlinearity == "linear" and p["fc1.weight"].nonlinearity == "gelu"
    assert not [w for w in recwarn if issubclass(w.category, torchinit.NonlinearityWarning)]
    with torch.device("meta"):
        m = _Untraceable()
    assert _signature(torchinit.plan(m, "kaiming", example_inputs=torch.randn(2, 4))) == _signature(p)


class _NeedsValues(nn.Module):
    """A forward that cannot run on meta (nonzero: a data-dependent shape)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)

    def forward(self, x):
        x = x[torch.nonzero(x[:, 0] > -100).flatten()]
        for _ in range(int(x.shape[0] > 0)):
            x = self.act(self.fc1(x))
        return self.fc2(x)


def test_a_meta_forward_that_fails_falls_back_to_the_allocated_model_with_example_inputs():
    p = torchinit.plan(_NeedsValues(), "kaiming", example_inputs=torch.randn(3, 4))
    assert p["fc1.weight"].nonlinearity == "tanh"
    assert any("meta-device forward on example_inputs failed" in n for n in p.notes)
    with torch.device("meta"):
        m = _NeedsValues()
    with pytest.warns(torchinit.NonlinearityWarning, match="fc1"):
        torchinit.plan(m, "kaiming", example_inputs=torch.randn(3, 4))


_UNTRACEABLE_FACTORY = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn_out = nn.Linear(4, 4)
        self.act = nn.GELU()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x=None, *, ids=None):  # no input_ids: torchinit cannot make inputs itself
        if ids is not None:
            x = ids.float()[..., :4]
        for _ in range(int(x.shape[0] > 0)):
            x = self.attn_out(x)
        return self.fc2(self.act(self.fc1(x)))


def build():
    return Block()
"""


def _cli_plan(tmp_path, capsys, *extra):
    import json

    from torchinit.cli import main

    (tmp_path / "blockmodel.py").write_text(_UNTRACEABLE_FACTORY)
    rc = main(["plan", f"{tmp_path / 'blockmodel.py'}:build", "--policy", "kaiming", "--json", *extra])
    out, err = capsys.readouterr()
    doc = json.loads(out) if rc == 0 else None
    nl = {e["name"]: e["nonlinearity"] for e in doc["entries"]} if doc else None
    return rc, nl, err


@pytest.mark.parametrize("inputs", ["2x4", "ids:2x6", "torch.randn(3, 4)", "(torch.randn(3, 4),)",
                                    "{'ids': torch.zeros(1, 5, dtype=torch.long)}"])
def test_cli_example_inputs_give_execution_order(tmp_path, capsys, inputs):
    with pytest.warns(torchinit.NonlinearityWarning, match="--example-inputs"):
        rc, nl, _ = _cli_plan(tmp_path, capsys)
    assert rc == 0 and nl["attn_out.weight"] == "gelu"  # the guess the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error", torchinit.NonlinearityWarning)
        rc, nl, _ = _cli_plan(tmp_path, capsys, "--example-inputs", inputs)
    assert rc == 0 and nl["attn_out.weight"] == "linear" and nl["fc1.weight"] == "gelu"


def test_cli_init_takes_example_inputs_with_and_without_meta(tmp_path):
    from torchinit.cli import main

    (tmp_path / "blockmodel.py").write_text(_UNTRACEABLE_FACTORY)
    outs = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for out, flag in zip(outs, ["--meta", "--no-meta"]):
        with warnings.catch_warnings():
            warnings.simplefilter("error", torchinit.NonlinearityWarning)
            assert main(["init", f"{tmp_path / 'blockmodel.py'}:build", "--policy", "kaiming", "--seed", "1", "-q",
                         "--example-inputs", "2x4", "--out", str(out), flag]) == 0
    ta, tb = (load_file(str(o)) for o in outs)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert float(ta["fc1.weight"].std()) > 1.2 * float(ta["attn_out.weight"].std())  # GELU's gain on fc1 only


@pytest.mark.parametrize("text,match", [
    ("2x", "neither a shape"), ("torch.nope(1)", "AttributeError"), ("'abc'", "must give a tensor"),
    ("__import__('os')", "NameError"),
])
def test_cli_bad_example_inputs_is_one_clear_error(tmp_path, capsys, text, match):
    rc, _, err = _cli_plan(tmp_path, capsys, "--example-inputs", text)
    assert rc == 2 and "--example-inputs" in err and match in err


def test_parse_example_inputs_shapes():
    from torchinit.cli._models import parse_example_inputs

    x = parse_example_inputs("2x3x8x8")
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    assert torch.equal(x, parse_example_inputs("2x3x8x8"))  # seeded: the same plan every run
    d = parse_example_inputs("input_ids:1x16, attention_mask:1x16,pixel_values:1x3x4x4")
    assert {k: (tuple(v.shape), v.dtype) for k, v in d.items()} == {
        "input_ids": ((1, 16), torch.long), "attention_mask": ((1, 16), torch.long),
        "pixel_values": ((1, 3, 4, 4), torch.float32)}
    assert parse_example_inputs(None) is None


class _ShortcutBlock(nn.Module):
    """ResNet's block with a projection shortcut: the shortcut conv runs AFTER conv2 and before
    the ReLU both feed. Execution order gave conv2 "linear (next layer: shortcut)"; data flow
    follows conv2 -> bn -> + -> ReLU. The loop over a value keeps fx out."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.shortcut = nn.Conv2d(2, 4, 1)
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 3)
        self.gate = nn.Linear(4, 4)

    def forward(self, x):
        for _ in range(int(x.shape[0] > 0)):
            h = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        y = self.act(h + self.shortcut(x)).mean((2, 3))
        g = self.gate(y)  # runs, then an activation of ANOTHER tensor: not g's activation
        return self.head(g * torch.tanh(y))


@pytest.mark.parametrize("where", ["cpu", "meta"])
def test_detection_follows_data_flow_not_execution_order(where):
    with torch.device(where):
        m = _ShortcutBlock()
    p = torchinit.plan(m, "kaiming", example_inputs=torch.randn(2, 2, 6, 6))
    got = {n: p[f"{n}.weight"].nonlinearity for n in ("conv1", "conv2", "shortcut", "gate", "head")}
    assert got == {"conv1": "relu", "conv2": "relu", "shortcut": "relu", "gate": "linear", "head": "linear"}
    assert p["conv2.weight"].nonlinearity_source == "hooks: act (ReLU)"


class _UntilDone(nn.Module):
    """Loops until a value changes: on meta every read answers True, so the loop never ends."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)

    def forward(self, x):
        while (x.abs() > 1e-3).any():
            x = x / 2
        return self.fc2(self.act(self.fc1(x)))


def test_a_loop_on_meta_values_ends_and_falls_back():
    p = torchinit.plan(_UntilDone(), "kaiming", example_inputs=torch.randn(2, 4))  # the real forward
    assert p["fc1.weight"].nonlinearity == "relu"
    assert any("more than 1024 data-dependent reads" in n for n in p.notes), p.notes
    with torch.device("meta"):
        m = _UntilDone()
    with pytest.warns(torchinit.NonlinearityWarning, match="fc1"):
        torchinit.plan(m, "kaiming", example_inputs=torch.randn(2, 4))


class _Offloaded(nn.Module):
    """fx-proof (a loop over a value) MLP whose fc1 carries old-style weight_norm (a pre-hook that
    computes the weight) and whose fc2 has an accelerate-style forward set on the instance,
    bound to the real module."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.utils.weight_norm(nn.Linear(4, 8))
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(8, 2)
        self.real_calls = 0
        orig = self.fc2.forward

        def offload_forward(*args, _m=self.fc2, **kwargs):  # functools.partial(new_forward, module) in accelerate
            self.real_calls += 1
            return orig(*args, **kwargs)

        self.fc2.forward = offload_forward

    def forward(self, x):
        for _ in range(int(x.shape[0] > 0)):
            x = self.act(self.fc1(x))
        return self.fc2(x)


def test_meta_view_keeps_weight_norm_and_drops_forwards_bound_to_the_model():
    from torchinit.model.nonlinearity import detect_nonlinearities

    m = _Offloaded()
    det, notes = detect_nonlinearities(m, torch.randn(2, 4))
    assert det["fc1"].nonlinearity == "silu" and det["fc2"].nonlinearity == "linear"
    assert notes[-1].startswith("nonlinearity: detected from the data flow of a meta-device forward"), notes
    assert m.real_calls == 0  # the model's own (offloading) forward never ran


class _PackedLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.lstm = nn.Embedding(50, 8), nn.LSTM(8, 16, batch_first=True, num_layers=2)
        self.fc, self.out = nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, ids, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(self.emb(ids), lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.out(F.relu(self.fc(h[-1])))


def test_packed_sequence_lengths_stay_on_cpu_so_meta_plans_like_cpu():
    # pack_padded_sequence refuses meta lengths: the meta forward failed, a CPU model ran itself but a
    # meta model fell back to registration order (fc "linear"), so materialize drew other weights
    ex = (torch.randint(0, 50, (4, 7), generator=torch.Generator().manual_seed(0)), torch.tensor([7, 3, 5, 2]))
    cpu = _PackedLSTM()
    meta = _on_meta(_PackedLSTM)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torchinit.NonlinearityWarning)
        p_cpu, p_meta = torchinit.plan(cpu, "kaiming", example_inputs=ex), torchinit.plan(meta, "kaiming",
                                                                                           example_inputs=ex)
        torchinit.init_model(cpu, "rnn", seed=0, example_inputs=ex)
        torchinit.materialize(meta, "cpu", "rnn", seed=0, example_inputs=ex)
    assert p_meta["fc.weight"].nonlinearity == p_cpu["fc.weight"].nonlinearity == "relu"
    assert p_meta["out.weight"].nonlinearity == "linear"
    assert all(torch.equal(a, b) for a, b in zip(cpu.state_dict().values(), meta.state_dict().values()))
