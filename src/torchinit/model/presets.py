"""Named policies. Each is documented with its source and formula in docs/policies.md.

========== ===================================================================================
name       what
========== ===================================================================================
pytorch    torch's own per-layer ``reset_parameters`` distributions, as specs; any other
           module with parameters runs its own ``reset_parameters`` through routing
module     every module's own init code (``reset_parameters`` / ``_reset_parameters``,
           Hugging Face ``_init_weights``), routed through the keyed engine
kaiming    He normal, fan_in, gain of the auto-detected nonlinearity; zero biases; norms 1/0
xavier     Glorot uniform with the auto-detected gain; zero biases; norms 1/0
lecun      LeCun normal (truncated, variance 1/fan_in, JAX/Flax default); zero biases; norms 1/0
orthogonal (semi-)orthogonal times the auto-detected gain (Saxe et al.); zero biases; norms 1/0
gpt2       N(0, 0.02); residual output projections N(0, 0.02/sqrt(2 n_layer)); zero biases
llama      torchtitan: trunc_normal(0.02); output projections 0.02/sqrt(2 (layer+1));
           embeddings N(0, 1); output head std dim^-0.5 truncated at 3 std (a tied embedding/head too)
========== ===================================================================================
"""

from __future__ import annotations

import math
from typing import Any

from .errors import PolicyError
from .policy import Policy, Rule
from .registry import PRESETS, get_preset, preset_names

__all__ = ["PRESETS", "get_preset", "preset_names", "RESIDUAL_PROJECTIONS"]

#: Layers with a weight of shape (out, in, *k) and an optional bias.
_LAYERS = ("Linear", "_ConvNd", "Conv1D", "Bilinear")
_NORMS = ("_NormBase", "LayerNorm", "GroupNorm", "RMSNorm", "*LayerNorm", "*RMSNorm")
_EMBEDDINGS = ("Embedding", "EmbeddingBag")

#: Globs of the weights that write into the residual stream (scaled by depth in gpt2/llama).
RESIDUAL_PROJECTIONS = (
    "*.c_proj.weight", "*.out_proj.weight", "*.o_proj.weight", "*.down_proj.weight", "*.linear2.weight",
    "*.fc2.weight", "*.w2.weight", "*.wo.weight",
)


def _globs(preset: str, option: str, value: Any) -> tuple[str, ...]:
    """A glob option as a tuple: one string is one glob (``tuple("*.proj.weight")`` would be
    its characters, and the glob ``"*"`` among them matches every tensor)."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"preset {preset!r}: option {option!r} must be a glob or a list of globs, got {value!r}")
    return tuple(value)


def _norm_rules() -> list[Rule]:
    return [
        Rule("ones", modules=_NORMS, params="weight", name="norm weight"),
        Rule("zeros", modules=_NORMS, params="bias", name="norm bias"),
        Rule("zeros", modules="_NormBase", params=("running_mean", "num_batches_tracked"), name="norm stats 0"),
        Rule("ones", modules="_NormBase", params="running_var", name="norm running_var"),
    ]


def _mha_rules(weight_init: str = "xavier_uniform", weight_args: dict | None = None) -> list[Rule]:
    return [
        Rule(weight_init, weight_args or {}, modules="MultiheadAttention",
             params=("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"), name="mha in_proj"),
        Rule("zeros", modules="MultiheadAttention", params=("in_proj_bias", "out_proj.bias"), name="mha biases"),
        Rule("xavier_normal", modules="MultiheadAttention", params=("bias_k", "bias_v"), name="mha bias_k/v"),
    ]


def _rnn_rules() -> list[Rule]:
    # Keras defaults for recurrent layers: glorot_uniform input kernel, orthogonal
    # recurrent kernel, zero biases.
    return [
        Rule("xavier_uniform", modules=("RNNBase", "RNNCellBase"), params=("weight_ih*", "weight_hr*"),
             name="rnn input weights"),
        Rule("orthogonal", modules=("RNNBase", "RNNCellBase"), params="weight_hh*", name="rnn recurrent weights"),
        Rule("zeros", modules=("RNNBase", "RNNCellBase"), params="bias_*", name="rnn biases"),
    ]


def pytorch_preset() -> Policy:
    """torch's ``reset_parameters`` defaults (torch 2.x), written as rules.

    Linear/ConvNd/ConvTransposeNd: weight ``kaiming_uniform(a=sqrt(5))`` =
    U(+-1/sqrt(fan_in)) with torch's fans (for ConvTranspose the stored layout makes
    "fan_in" ``out/groups * k``); bias U(+-1/sqrt(fan_in)). Norms 1/0 (and running
    stats 0/1/0). Embedding N(0, 1) with the padding_idx row zeroed. RNN/LSTM/GRU
    (cells too): every tensor U(+-1/sqrt(hidden_size)). MultiheadAttention:
    xavier_uniform in_proj, zero in_proj_bias and out_proj.bias, xavier_normal
    bias_k/bias_v (out_proj.weight keeps Linear's default). nn.Transformer:
    xavier_uniform on every >1-D parameter. Anything else with parameters runs its
    own ``reset_parameters`` (routed through the keyed engine with engine="keyed").
    """
    rules = [
        Rule("module", name="own reset_parameters (fallback)"),
        Rule("kaiming_uniform", {"a": math.sqrt(5)}, modules=("Linear", "_ConvNd"), params="weight",
             name="layer weight"),
        Rule("fan_in_uniform", modules=("Linear", "_ConvNd"), params="bias", name="layer bias"),
        *_norm_rules(),
        Rule("normal", modules=_EMBEDDINGS, params="weight", name="embedding"),
        Rule("rnn_uniform", modules=("RNNBase", "RNNCellBase"), params="*", name="rnn"),
        *_mha_rules(),
        Rule("xavier_uniform", modules="Transformer", params="*", role="weight", name="transformer >1-D"),
    ]
    return Policy(tuple(rules), name="pytorch")


def module_preset() -> Policy:
    """Each module's own init code (``reset_parameters`` / ``_reset_parameters`` in
    post-order, then Hugging Face ``_init_weights``), routed through the keyed engine."""
    return Policy((Rule("module", name="own init code"),), name="module")


def _standard(name: str, weight: Rule, *, rnn: bool = True) -> Policy:
    rules = [
        weight,
        Rule("zeros", modules=_LAYERS, params="bias", name="layer bias"),
        *_norm_rules(),
        Rule("normal", modules=_EMBEDDINGS, params="weight", name="embedding"),
    ]
    if rnn:
        rules += _rnn_rules()
    rules += _mha_rules()
    return Policy(tuple(rules), name=name)


def kaiming_preset(mode: str = "fan_in", distribution: str = "normal") -> Policy:
    """He et al. 2015: ``std = gain / sqrt(fan_mode)``, gain of the auto-detected
    nonlinearity (sqrt(2) for ReLU, 1 before no activation), true fans (grouped and
    transposed convs corrected)."""
    if distribution not in ("normal", "uniform"):
        raise PolicyError(f"preset 'kaiming': distribution must be 'normal' or 'uniform', got {distribution!r}")
    w = Rule(f"kaiming_{distribution}", {"mode": mode, "nonlinearity": "auto", "fans": "module"},
             modules=_LAYERS, params="weight", name="layer weight")
    return _standard("kaiming", w)


def xavier_preset(distribution: str = "uniform") -> Policy:
    """Glorot & Bengio 2010: ``std = gain * sqrt(2 / (fan_in + fan_out))``, gain of the
    auto-detected nonlinearity, true fans."""
    if distribution not in ("normal", "uniform"):
        raise PolicyError(f"preset 'xavier': distribution must be 'normal' or 'uniform', got {distribution!r}")
    w = Rule(f"xavier_{distribution}", {"nonlinearity": "auto", "fans": "module"}, modules=_LAYERS,
             params="weight", name="layer weight")
    return _standard("xavier", w)


def lecun_preset(distribution: str = "truncated_normal") -> Policy:
    """LeCun (JAX/Flax default): variance ``1 / fan_in``; truncated normal at 2 std
    rescaled so the variance is exact. Right for SELU networks."""
    w = Rule("variance_scaling", {"scale": 1.0, "mode": "fan_in", "distribution": distribution, "fans": "module"},
             modules=_LAYERS, params="weight", name="layer weight")
    return _standard("lecun", w)


def orthogonal_preset() -> Policy:
    """Saxe et al. 2013: weights (flattened to (out, -1)) semi-orthogonal times the
    auto-detected gain."""
    w = Rule("orthogonal", {"nonlinearity": "auto"}, modules=_LAYERS, params="weight", name="layer weight")
    return _standard("orthogonal", w)


def gpt2_preset(std: float | None = None, n_layer: int | None = None,
                residual: tuple[str, ...] = RESIDUAL_PROJECTIONS) -> Policy:
    """GPT-2 (Radford et al. 2019; Hugging Face ``GPT2PreTrainedModel._init_weights``,
    nanoGPT): every Linear/Conv/Conv1D weight and embedding N(0, std^2), biases 0,
    norms 1/0; the residual output projections N(0, (std / sqrt(2 n_layer))^2).
    ``std`` defaults to the model's ``config.initializer_range`` (or ``init_std``, times
    ``initializer_factor``), else 0.02; ``n_layer`` to ``model.config.n_layer`` or the
    longest ModuleList. The plan's notes say which values came from the config."""
    std = "config" if std is None else std
    depth = {"std": std, "depth": "total"}
    if n_layer is not None:
        depth["n_layer"] = n_layer
    rules = [
        Rule("normal", {"std": std}, modules=_LAYERS, params="weight", name="layer weight"),
        Rule("zeros", modules=_LAYERS, params="bias", name="layer bias"),
        Rule("normal", {"std": std}, modules=_EMBEDDINGS, params="weight", name="embedding"),
        *_norm_rules(),
        Rule("normal", {"std": std}, modules="MultiheadAttention",
             params=("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"), name="mha in_proj"),
        Rule("zeros", modules="MultiheadAttention", params=("in_proj_bias", "out_proj.bias", "bias_k", "bias_v"),
             name="mha biases"),
        *_rnn_rules(),
        Rule("normal", depth, qualnames=_globs("gpt2", "residual", residual), role="weight",
             name="residual projection"),
        # an embedding tied to its output head, whatever the names (BERT's cls.predictions.decoder)
        Rule("normal", {"std": std}, role="tied_head", name="tied embedding/head"),
    ]
    return Policy(tuple(rules), name="gpt2", options={"std": None if std == "config" else std, "n_layer": n_layer})


def llama_preset(std: float | None = None, depth_init: bool = True, cutoff: float | None = None,
                 residual: tuple[str, ...] = RESIDUAL_PROJECTIONS + ("*.w3.weight", "*.up_proj.weight"),
                 output: tuple[str, ...] = ("output.weight", "lm_head.weight")) -> Policy:
    """torchtitan's Llama init: Linear weights ``trunc_normal_(std=0.02)`` (torch's
    default ABSOLUTE bounds [-2, 2]: effectively untruncated; ``cutoff=k`` truncates
    at +-k std instead); output projections (wo, w2, w3 / o_proj, down_proj, up_proj)
    std ``0.02 / sqrt(2 (layer_id + 1))`` (``depth_init``) or ``0.02 / sqrt(2 n_layer)``;
    token embeddings N(0, 1); norms 1; the output head std ``dim^-0.5`` truncated
    at +-3 std; biases 0. ``std`` defaults to the model's ``config.initializer_range`` (as
    for ``gpt2``), else 0.02."""
    std = "config" if std is None else std
    base = {"std": std} if cutoff is None else {"std": std, "cutoff": cutoff}
    deep = dict(base, depth="per_layer" if depth_init else "total")
    rules = [
        Rule("trunc_normal", base, modules=_LAYERS, params="weight", name="layer weight"),
        Rule("zeros", modules=_LAYERS, params="bias", name="layer bias"),
        Rule("normal", {"std": 1.0}, modules=_EMBEDDINGS, params="weight", name="embedding"),
        *_norm_rules(),
        Rule("trunc_normal", base, modules="MultiheadAttention",
             params=("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"), name="mha in_proj"),
        Rule("zeros", modules="MultiheadAttention", params=("in_proj_bias", "out_proj.bias", "bias_k", "bias_v"),
             name="mha biases"),
        *_rnn_rules(),
        Rule("trunc_normal", deep, qualnames=_globs("llama", "residual", residual), role="weight",
             name="output projection"),
        Rule("trunc_normal", {"std": "1/sqrt(fan_in)", "cutoff": 3.0}, qualnames=_globs("llama", "output", output),
             role="weight", name="output head"),
        # an embedding tied to an output projection gets the head's spec whatever the names (BERT's
        # cls.predictions.decoder, RoBERTa's lm_head.decoder): N(0, 1) as a head gives logits std ~sqrt(dim)
        Rule("trunc_normal", {"std": "1/sqrt(fan_in)", "cutoff": 3.0}, role="tied_head", name="tied embedding/head"),
    ]
    return Policy(tuple(rules), name="llama", options={"std": None if std == "config" else std,
                                                       "depth_init": depth_init, "cutoff": cutoff})


# the presets register where policies look names up (torchinit.model.registry)
PRESETS.update({
    "pytorch": pytorch_preset,
    "module": module_preset,
    "kaiming": kaiming_preset,
    "xavier": xavier_preset,
    "lecun": lecun_preset,
    "orthogonal": orthogonal_preset,
    "gpt2": gpt2_preset,
    "llama": llama_preset,
})
