"""Real architectures at real vocabulary sizes (tests/hf_models.py: GPT-2 50257 tied, Llama 32000
untied, Qwen2 151936 tied, T5 32128 encoder-decoder, BERT 30522 encoder-only, ViT, ConvNeXt,
ResNet, BART, Whisper; tiny hidden sizes, built from configs, no downloads; the heads' variants
where the architecture has one: ForMaskedLM, ForImageClassification, ForConditionalGeneration).

For each: the ``kaiming`` plan of the model built on meta equals the plan of the model built on
CPU, and every weight layer whose output reaches an activation gets that activation's gain
(every other one gain 1); the ``gpt2`` and ``llama`` presets give logits of std below 3 at init;
the ``module`` preset (``init_model`` and ``materialize`` from meta) gives each tensor the
distribution the model's own ``post_init()`` gives it."""

from __future__ import annotations

import math
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch
from scipy import stats

import torchinit
from torchinit.core.gains import auto_gain

sys.path.insert(0, str(Path(__file__).parent))
from hf_models import HF_IDS, HF_MODELS  # noqa: E402

pytestmark = pytest.mark.hf
transformers = pytest.importorskip("transformers")
transformers.utils.logging.set_verbosity_error()

# the activation after each weight layer, read from the models' source (patterns on the layer's
# qualified name); every weight layer no pattern names is followed by no activation
EXPECTED = {
    "gpt2": {r"mlp\.c_fc$": "gelu_tanh"},
    "llama": {r"mlp\.gate_proj$": "silu"},
    "qwen2_tied": {r"mlp\.gate_proj$": "silu"},
    "t5": {r"DenseReluDense\.wi$": "relu"},
    "bert": {r"intermediate\.dense$": "gelu", r"^cls\.predictions\.transform\.dense$": "gelu"},
    "vit": {r"mlp\.fc1$": "gelu"},
    "convnext": {r"\.pwconv1$": "gelu"},
    # conv -> BatchNorm -> ReLU; a block's last conv and its shortcut conv -> BatchNorm -> + -> ReLU
    "resnet": {r"\.convolution$": "relu"},
    "bart": {r"\.fc1$": "gelu"},
    "whisper": {r"\.fc1$": "gelu", r"^model\.encoder\.conv[12]$": "gelu"},
}

VOCAB = {"gpt2": 50257, "llama": 32000, "qwen2_tied": 151936, "t5": 32128, "bert": 30522, "bart": 50265,
         "whisper": 51865}


def _signature(p):
    return [(e.name, e.shape, e.rule, e.nonlinearity, e.nonlinearity_source, e.gain, e.spec) for e in p.entries]


def test_the_list_covers_the_architectures_the_issue_names():
    assert {"gpt2", "llama", "qwen2_tied", "t5", "bert", "vit"} <= set(HF_IDS)
    assert {"convnext", "resnet"} & set(HF_IDS) and {"whisper", "bart"} & set(HF_IDS)
    assert set(EXPECTED) == set(HF_IDS)


@pytest.mark.parametrize("name,build", HF_MODELS, ids=HF_IDS)
def test_kaiming_plan_on_meta_equals_cpu_and_gains_follow_the_activation(name, build):
    torch.manual_seed(0)
    cpu = build()
    with torch.device("meta"):
        meta = build()
    if name in VOCAB:  # the real vocabulary: the embedding is full size
        assert cpu.get_input_embeddings().weight.shape[0] == VOCAB[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error", torchinit.NonlinearityWarning)  # no guessing on any of them
        pc, pm = torchinit.plan(cpu, "kaiming"), torchinit.plan(meta, "kaiming")
    assert _signature(pm) == _signature(pc)
    assert [n for n in pm.notes if n.startswith("nonlinearity")] == [n for n in pc.notes if n.startswith("nonlinearity")]
    layers = [e for e in pm.entries if e.nonlinearity is not None and e.role == "weight"]
    assert len(layers) >= 4
    hit = {pat: 0 for pat in EXPECTED[name]}
    for e in layers:
        want = "linear"
        for pat, act in EXPECTED[name].items():
            if re.search(pat, e.module):
                want, hit[pat] = act, hit[pat] + 1
        assert e.nonlinearity == want, (e.name, e.nonlinearity_source)
        assert e.gain == pytest.approx(auto_gain(want)), e.name
        assert e.spec.std == pytest.approx(e.gain / math.sqrt(e.fans.fan_in), rel=1e-6), e.name  # He, fan_in
    assert all(hit.values()), hit  # every pattern named a layer of the model


def _inputs(name: str, model: torch.nn.Module) -> dict:
    """A small real batch for the model (seeded): token ids below the real vocabulary size,
    pixels for the vision models, log-mel features for Whisper; decoder inputs where the
    architecture has a decoder."""
    g = torch.Generator().manual_seed(0)
    cfg = model.config
    if name in ("vit", "convnext", "resnet"):
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=g)}
    if name == "whisper":
        return {"input_features": torch.randn(2, cfg.num_mel_bins, 2 * cfg.max_source_positions, generator=g),
                "decoder_input_ids": torch.randint(0, cfg.vocab_size, (2, 8), generator=g)}
    ids = torch.randint(0, cfg.vocab_size, (2, 8), generator=g)
    return {"input_ids": ids, "decoder_input_ids": ids} if name in ("t5", "bart") else {"input_ids": ids}


# materialize from meta for the language models (the LLM presets have no rule for ViT's cls_token or
# ConvNeXt's layer scale: materialize refuses those, naming them)
_LOGITS = [(n, b, "init_model") for n, b in HF_MODELS] + [(n, b, "materialize") for n, b in HF_MODELS if n in VOCAB]


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
@pytest.mark.parametrize("name,build,how", _LOGITS, ids=[f"{n}-{h}" for n, _, h in _LOGITS])
def test_llm_presets_give_logits_of_order_one(name, build, how, preset):
    # the output head (tied to the embedding or not, whatever the model calls it: lm_head, BERT's
    # cls.predictions.decoder, Whisper's proj_out) must not get the N(0, 1) of an embedding: logits
    # std would be sqrt(hidden) at init (4 here, 28 at BERT-base's 768); on meta too (materialize)
    torch.manual_seed(0)
    if how == "init_model":
        model = build()
        torchinit.init_model(model, preset, seed=0)
    else:
        with torch.device("meta"):
            model = build()
        torchinit.materialize(model, "cpu", preset, seed=0)
    model.eval()
    with torch.no_grad():
        logits = model(**_inputs(name, model)).logits
    std = logits.double().std().item()
    assert 0 < std < 3, (name, preset, std)


def _own_vs_module(ref: torch.nn.Module, model: torch.nn.Module) -> list[str]:
    """What differs between the model's own init (``ref``) and ``model``, tensor by tensor: a
    constant (norms, biases, zero rows) must be equal exactly; a random tensor must have the
    same distribution (two-sample KS, p > 1e-4, on at most 50k evenly spaced elements; seeds fixed) and, with >= 1000 elements, a std
    within 10% and a mean within 0.1 std of the reference."""
    ours = dict(model.named_parameters()) | dict(model.named_buffers())
    theirs = dict(ref.named_parameters()) | dict(ref.named_buffers())
    assert ours.keys() == theirs.keys()
    bad = []
    for n, r in theirs.items():
        if not r.is_floating_point() or r.numel() == 0:
            assert torch.equal(ours[n], r), n
            continue
        a, b = r.detach().double().flatten(), ours[n].detach().double().flatten()
        step = -(-a.numel() // 50_000)  # KS on every step-th element: 50k of a 2.4M-row embedding suffice
        if not torch.isfinite(b).all():
            bad.append(f"{n}: not finite (left unwritten)")
        elif bool((a == a[0]).all()):
            if not torch.equal(a, b):
                bad.append(f"{n}: constant {a[0].item():g} in the model's own init, here std {b.std().item():.3g} "
                           f"mean {b.mean().item():.3g}")
        elif (p := stats.ks_2samp(a[::step].numpy(), b[::step].numpy()).pvalue) < 1e-4:
            bad.append(f"{n}: KS p = {p:.2g} (std {b.std().item():.4g} vs {a.std().item():.4g})")
        elif a.numel() >= 1000:
            sa, sb = a.std().item(), b.std().item()
            if abs(sb - sa) > 0.1 * sa or abs(b.mean().item() - a.mean().item()) > 0.1 * sa:
                bad.append(f"{n}: std {sb:.4g} vs {sa:.4g}, mean {b.mean().item():.3g} vs {a.mean().item():.3g}")
    return bad


@pytest.mark.parametrize("how", ["init_model", "init_model-torch", "materialize"])
@pytest.mark.parametrize("name,build", HF_MODELS, ids=HF_IDS)
def test_module_preset_matches_the_models_own_init(name, build, how):
    torch.manual_seed(0)
    ref = build()  # the model's own init: post_init() at construction
    if how.startswith("init_model"):
        torch.manual_seed(1)
        model = build()
        with torch.no_grad():  # nothing of the construction's values may survive unnoticed
            for t in [*model.parameters(), *model.buffers()]:
                if t.is_floating_point():
                    t.fill_(float("nan"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            p = torchinit.init_model(model, "module", seed=0, engine="torch" if how.endswith("torch") else "keyed")
        # _init_weights writes every tensor: nothing to report as never written
        assert not [str(w.message) for w in caught if "never wrote" in str(w.message)]
        assert not [n for n in p.notes if "never wrote" in n]
    else:
        with torch.device("meta"):
            model = build()
        torchinit.materialize(model, "cpu", "module", seed=0)
    bad = _own_vs_module(ref, model)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name,build", HF_MODELS, ids=HF_IDS)
def test_pytorch_preset_fallback_to_module_code_reports_only_a_forgotten_parameter(name, build):
    # the pytorch preset runs the model's own init code for what torch's rules do not cover; it
    # covers everything there, and a parameter the model's _init_weights does not know is named
    model = build()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = torchinit.init_model(model, "pytorch", seed=0)
    assert not [str(w.message) for w in caught if "never wrote" in str(w.message)]
    assert not [n for n in p.notes if "never wrote" in n]
    path, mod = next((n, m) for n, m in model.named_modules() if n and not list(m.parameters(recurse=False))
                     and not isinstance(m, torch.nn.ModuleList) and list(m.parameters()))
    mod.extra_scale = torch.nn.Parameter(torch.full((3,), float("nan")))
    for preset in ("pytorch", "module"):
        with pytest.warns(UserWarning, match=re.escape(
                f"init_model: the model's own init code (plan entries 'module') never wrote 1 parameter(s) it "
                f"ran for: '{path}.extra_scale'; they keep their current values")):
            torchinit.init_model(model, preset, seed=0)
        assert torch.isnan(mod.extra_scale).all()
