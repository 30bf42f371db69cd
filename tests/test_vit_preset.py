"""The "vit" preset: timm / Hugging Face ViT init, and the JAX-style option."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn

import torchinit as ti

transformers = pytest.importorskip("transformers")


class _Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).chunk(3, dim=-1)
        x = x + self.attn.proj(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), -1) @ v)
        return x + self.mlp.fc2(nn.functional.gelu(self.mlp.fc1(self.norm2(x))))


class TimmLikeViT(nn.Module):
    """timm's VisionTransformer layout: patch_embed.proj, cls_token, reg_token, pos_embed, blocks, norm, head."""

    def __init__(self, d: int = 32, patch: int = 8, image: int = 32, depth: int = 2, classes: int = 10):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, d, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.reg_token = nn.Parameter(torch.zeros(1, 4, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, d))
        self.blocks = nn.ModuleList(_Block(d) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        x = torch.cat([x, self.reg_token.expand(len(x), -1, -1)], 1)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


def _config(**kw):
    return transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  image_size=32, patch_size=8, num_labels=5, **kw)


def _models():
    torch.manual_seed(0)
    return {
        "hf-vit": lambda: transformers.ViTModel(_config(), use_mask_token=True),
        "hf-vit-cls": lambda: transformers.ViTForImageClassification(_config()),
        "timm-like": TimmLikeViT,
    }


def _vit(style: str, **options) -> ti.Policy:
    return ti.load_policy({"preset": "vit", "options": {"style": style, **options}})


def _ks(x: torch.Tensor, dist) -> float:
    return stats.kstest(x.detach().double().flatten().numpy(), dist.cdf).pvalue


def test_other_presets_leave_cls_token_and_position_embeddings_unmatched():
    # the gap the preset closes
    for preset in ("gpt2", "llama", "kaiming"):
        with pytest.raises(ti.PolicyError, match="cls_token"):
            ti.init_model(transformers.ViTModel(_config()), preset, seed=0, strict=True)


@pytest.mark.parametrize("style", ["timm", "jax"])
@pytest.mark.parametrize("name", list(_models()))
def test_every_tensor_covered_and_plan_on_meta_equals_plan_on_cpu(name, style):
    make = _models()[name]
    cpu = make()
    plan = ti.init_model(cpu, _vit(style), seed=4, strict=True)  # strict: a tensor no rule covers raises
    assert all(e.spec is not None for e in plan), [e.name for e in plan if e.spec is None]
    with torch.device("meta"):
        meta = make()
    assert ti.plan(meta, _vit(style)).to_dict() == ti.plan(make(), _vit(style)).to_dict()
    ti.materialize(meta, "cpu", _vit(style), seed=4)
    ref = cpu.state_dict()
    for k, v in meta.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_timm_style_stds():
    m = transformers.ViTForImageClassification(_config())
    plan = ti.init_model(m, _vit("timm"), seed=1, strict=True)
    # torch's trunc_normal_ bounds are absolute [-2, 2]: at std 0.02 that is a normal
    n02 = stats.norm(0, 0.02)
    linear = torch.cat([mod.weight.flatten() for mod in m.modules() if isinstance(mod, nn.Linear)])
    assert linear.numel() > 10_000 and _ks(linear, n02) > 1e-3
    emb = m.vit.embeddings
    tokens = torch.cat([emb.cls_token.flatten(), emb.position_embeddings.flatten(),
                        emb.patch_embeddings.projection.weight.flatten()])
    assert _ks(tokens, n02) > 1e-3
    assert _ks(tokens * 2, n02) < 1e-6  # the test can tell a wrong std
    biases = [p for n, p in m.named_parameters() if n.endswith("bias") and "layernorm" not in n]
    assert biases and all(torch.all(b == 0) for b in biases)
    assert plan["vit.embeddings.cls_token"].std == pytest.approx(0.02, rel=1e-6)


def test_timm_style_std_from_the_config_and_option():
    m = transformers.ViTModel(_config(initializer_range=0.05))
    assert ti.plan(m, _vit("timm"))["embeddings.position_embeddings"].spec.std_ == 0.05
    assert ti.plan(m, _vit("timm", std=0.01))["embeddings.cls_token"].spec.std_ == 0.01


def test_jax_style_stds():
    m = TimmLikeViT(d=64, depth=2)
    ti.init_model(m, _vit("jax", head_bias=-math.log(10)), seed=2, strict=True)
    for blk in m.blocks:
        for lin in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
            fo, fi = lin.weight.shape
            b = math.sqrt(6 / (fi + fo))
            assert _ks(lin.weight, stats.uniform(-b, 2 * b)) > 1e-3
        mlp_bias = torch.cat([blk.mlp.fc1.bias, blk.mlp.fc2.bias])
        assert _ks(mlp_bias, stats.norm(0, 1e-6)) > 1e-3
        assert torch.all(blk.attn.qkv.bias == 0) and torch.all(blk.attn.proj.bias == 0)
    # lecun normal patch embedding: truncated at 2 untruncated stds, variance exactly 1/fan_in
    w = m.patch_embed.proj.weight
    s = 1 / math.sqrt(3 * 8 * 8) / 0.87962566103423978
    assert _ks(w, stats.truncnorm(-2, 2, scale=s)) > 1e-3
    assert float(w.detach().std()) == pytest.approx(1 / math.sqrt(192), rel=0.05)
    assert torch.all(m.patch_embed.proj.bias == 0)
    assert torch.all(m.head.weight == 0) and torch.allclose(m.head.bias, torch.full((10,), -math.log(10)))
    assert _ks(m.cls_token, stats.norm(0, 1e-6)) > 1e-3
    assert _ks(m.reg_token, stats.norm(0, 1e-6)) > 1e-3
    assert _ks(m.pos_embed, stats.norm(0, 0.02)) > 1e-3


def test_jax_style_on_hugging_face_vit():
    m = transformers.ViTForImageClassification(_config())
    plan = ti.init_model(m, _vit("jax"), seed=3, strict=True)
    mlp_biases = [e.name for e in plan if e.name.endswith("bias") and isinstance(e.spec, ti.specs.Normal)]
    assert mlp_biases and all(("mlp" in n or "intermediate" in n or ".output." in n) for n in mlp_biases)
    assert "attention" not in " ".join(mlp_biases)
    assert torch.all(m.classifier.weight == 0) and torch.all(m.classifier.bias == 0)
    assert isinstance(plan["vit.embeddings.patch_embeddings.projection.weight"].spec, ti.specs.TruncatedNormal)
    out = m(pixel_values=torch.randn(2, 3, 32, 32)).logits
    assert torch.all(out == 0)  # zero head: logits exactly 0 at init (JAX ViT)


def test_vit_option_errors():
    with pytest.raises(ti.PolicyError, match="style must be 'timm' or 'jax', got 'flax'"):
        _vit("flax")
    with pytest.raises(ti.PolicyError, match="head_bias must be a finite number"):
        _vit("jax", head_bias=float("inf"))


def test_deit_distillation_token_is_covered():
    # HF DeiT names timm's dist_token "distillation_token": the preset left it unmatched (materialize refused)
    cfg = transformers.DeiTConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=16, intermediate_size=32,
                                  image_size=32, patch_size=8, num_labels=5)
    m = transformers.DeiTForImageClassificationWithTeacher(cfg)
    p = ti.init_model(m, "vit", seed=0, strict=True)
    e = p["deit.embeddings.distillation_token"]
    assert e.rule.endswith("class token") and e.spec == ti.specs.TruncatedNormal(0.0, 0.02, -2.0, 2.0)
    assert 0 < m.deit.embeddings.distillation_token.abs().max().item() < 0.1
    with torch.device("meta"):
        meta = transformers.DeiTForImageClassificationWithTeacher(cfg)
    ti.materialize(meta, "cpu", "vit", seed=0)
    assert torch.equal(meta.deit.embeddings.distillation_token, m.deit.embeddings.distillation_token)
    p = ti.plan(m, {"preset": "vit", "options": {"style": "jax"}})
    assert p["deit.embeddings.distillation_token"].spec == ti.specs.Normal(0.0, 1e-6)
