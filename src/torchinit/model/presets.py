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
           embeddings N(0, 1); output head std dim^-0.5 truncated at 3 std (a tied embedding/head too);
           relative-position attention biases trunc_normal(0.02), not the embeddings' N(0, 1)
rnn        xavier (layers); RNN/LSTM/GRU: weight_ih xavier uniform, weight_hh orthogonal per gate,
           biases 0, LSTM forget-gate bias 1
vit        timm/HF ViT: trunc_normal(0.02) Linear/patch-embed weights, cls_token, pos_embed; zero
           biases; ``style="jax"``: xavier uniform, N(0, 1e-6) MLP biases, lecun patch embed, zero head
========== ===================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from torch import nn

from .errors import PolicyError
from .policy import OUTPUT_HEAD, Policy, Rule
from .registry import PRESETS, get_preset, preset_names
from .selectors import OWN_INIT, module_matches

__all__ = ["PRESETS", "get_preset", "preset_names", "RESIDUAL_PROJECTIONS", "RELATIVE_POSITION_BIASES",
           "SSM_PARAMETERS", "experts_hint"]

#: Layers with a weight of shape (out, in, *k) and an optional bias.
_LAYERS = ("Linear", "_ConvNd", "Conv1D", "Bilinear")
_NORMS = ("_NormBase", "LayerNorm", "GroupNorm", "RMSNorm", "*LayerNorm", "*RMSNorm", "*RMSNormGated")  # Mamba2: gated
_EMBEDDINGS = ("Embedding", "EmbeddingBag")

#: Globs of the weights that write into the residual stream (scaled by depth in gpt2/llama).
RESIDUAL_PROJECTIONS = (
    "*.c_proj.weight", "*.out_proj.weight", "*.o_proj.weight", "*.down_proj.weight", "*.linear2.weight",
    "*.fc2.weight", "*.w2.weight", "*.wo.weight", "*.o.weight",  # T5: attention o, feed-forward wo
    # GPT-NeoX (attention.dense), Falcon and Bloom (self_attention.dense), their MLPs, GPT-J's MLP
    "*.attention.dense.weight", "*.self_attention.dense.weight", "*.dense_4h_to_h.weight", "*.mlp.fc_out.weight",
    # mixture-of-experts blocks whose experts are one 3-D tensor per projection (transformers 5)
    "*.experts.down_proj", "*.experts.w2",
)
#: Mixture-of-experts modules holding bare weight tensors (transformers 5's ``MixtralExperts``
#: with 3-D ``gate_up_proj`` / ``down_proj``, its ``MixtralTopKRouter``; ``*Router`` covers the
#: other models' routers). Their own init code draws N(0, initializer_range^2) everywhere.
_MOE = ("*Experts", "*Router")


def experts_hint(model: nn.Module, names: Iterable[str]) -> str:
    """For an error or warning about uncovered tensors: which of ``names`` belong to
    mixture-of-experts modules, and which presets cover them ("" when none does)."""
    hits: dict[str, str] = {}
    for n in names:
        try:
            mod = model.get_submodule(n.rpartition(".")[0])
        except AttributeError:
            continue
        if module_matches(mod, _MOE):  # as the presets' rules match them
            hits[n] = type(mod).__name__
    if not hits:
        return ""
    kinds = ", ".join(sorted(set(hits.values())))
    return (f"; {len(hits)} of them belong to mixture-of-experts modules ({kinds}): the gpt2, llama and module "
            "presets initialize those, a fan-based rule cannot (a fused 3-D expert tensor's layout differs between "
            "models: Mixtral stores (experts, out, in), GPT-OSS (experts, in, out))")


#: GPT-OSS's per-head attention sink logits (its init code: N(0, initializer_range^2))
_SINKS = ("*.self_attn.sinks",)
#: Relative-position biases, (buckets or offsets) x heads tables added to the attention logits:
#: T5-family (T5, mT5, UMT5, LongT5, Switch, UDOP, Pix2Struct, Pop2Piano) and MPNet
#: ``relative_attention_bias`` embeddings, CPM-Ant's raw parameter, WavLM's ``rel_attn_embed``,
#: Swin / BEiT / Data2Vec-vision / Donut / MaskFormer-Swin / CLAP ``relative_position_bias_table``.
#: Not embeddings: N(0, 1) would give every head a random positional preference of about one
#: logit before training, as large as the content logits 0.02 weights give (about 1.6 for T5 at
#: d_model 512, 0.2 where attention divides by sqrt(d_head)), where the reference inits start it
#: small (Hugging Face T5: std d_model^-0.5, 0.044 at 512; timm Swin: 0.02; HF Swin, BEiT: 0).
#: The presets with a std (gpt2, llama, vit) give them that std.
RELATIVE_POSITION_BIASES = ("*relative_attention_bias.weight", "*relative_attention_bias",
                            "*rel_attn_embed.weight", "*relative_position_bias_table")


#: State-space (Mamba) parameters their model's own init code computes: the time-step bias
#: (the inverse softplus of a step drawn log-uniformly in [time_step_min, time_step_max]: a
#: Linear's bias in Mamba, FalconMamba and Jamba, a raw ``dt_bias`` in Mamba2, Bamba, Zamba2),
#: ``A_log = log(1..N)`` and ``D = 1``. A preset's layer-bias rule gave the bias zeros
#: (``softplus(0) = 0.69`` for every channel, where 0.001 to 0.1 is meant) or, under ``pytorch``,
#: U(+-1/sqrt(rank)): every preset runs the model's code for them (a module without such code
#: leaves them to the other rules; mamba_ssm marks its own ``_no_reinit``, which plan keeps).
SSM_PARAMETERS = ("*.dt_proj.bias", "*.dt_bias", "*.A_log", "*.D")


def _ssm_rules() -> list[Rule]:
    return [Rule("module", qualnames=SSM_PARAMETERS, name="state-space parameters (own init code)")]


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
        # torch's nn.Transformer (and subclasses) by its qualified name: the bare name "Transformer" also matched
        # any user class so named (torchtitan's models), whose every >1-D tensor, embeddings included, got xavier
        Rule("xavier_uniform", modules="torch.nn.modules.transformer.Transformer", params="*", role="weight",
             name="transformer >1-D"),
        # a class with an init method of its own (a zero-initialized nn.Linear subclass, a class of one's own
        # named Linear) gets what its constructor gives, that code: the rules above gave it torch's init
        Rule("module", modules=OWN_INIT, name="own init code"),
        *_ssm_rules(),
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
    rules += _mha_rules() + _ssm_rules()
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
    longest outermost ModuleList (not a block's experts). The plan's notes say which values
    came from the config.
    Relative-position attention biases (:data:`RELATIVE_POSITION_BIASES`: T5's
    ``relative_attention_bias``, Swin's ``relative_position_bias_table``, ...) N(0, std^2) too."""
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
        Rule("normal", {"std": std}, modules=_MOE, role="weight", name="moe experts and router"),
        Rule("zeros", modules=_MOE, role="bias", name="moe biases"),
        Rule("normal", {"std": std}, qualnames=_SINKS, name="attention sinks"),
        Rule("normal", {"std": std}, qualnames=RELATIVE_POSITION_BIASES, name="relative position bias"),
        Rule("normal", depth, qualnames=_globs("gpt2", "residual", residual), role="weight",
             name="residual projection"),
        # an embedding tied to its output head, whatever the names (BERT's cls.predictions.decoder)
        Rule("normal", {"std": std}, role="tied_head", name="tied embedding/head"),
        *_ssm_rules(),
    ]
    return Policy(tuple(rules), name="gpt2", options={"std": None if std == "config" else std, "n_layer": n_layer})


def llama_preset(std: float | None = None, depth_init: bool = True, cutoff: float | None = None,
                 residual: tuple[str, ...] = RESIDUAL_PROJECTIONS + ("*.w3.weight", "*.up_proj.weight"),
                 output: tuple[str, ...] = ("output.weight", "lm_head.weight", OUTPUT_HEAD)) -> Policy:
    """torchtitan's Llama init: Linear weights ``trunc_normal_(std=0.02)`` (torch's
    default ABSOLUTE bounds [-2, 2]: effectively untruncated; ``cutoff=k`` truncates
    at +-k std instead); output projections (wo, w2, w3 / o_proj, down_proj, up_proj)
    std ``0.02 / sqrt(2 (layer_id + 1))`` (``depth_init``) or ``0.02 / sqrt(2 n_layer)``;
    token embeddings N(0, 1); norms 1; the output head std ``dim^-0.5`` truncated
    at +-3 std (the head: ``output`` globs; ``"@output_head"``, the default's last, is the
    weight of ``model.get_output_embeddings()`` under any name, BERT's
    ``cls.predictions.decoder``, Whisper's ``proj_out``); biases 0. ``std`` defaults to the model's ``config.initializer_range`` (as
    for ``gpt2``), else 0.02. Relative-position attention biases (:data:`RELATIVE_POSITION_BIASES`:
    T5's ``relative_attention_bias`` is an ``nn.Embedding``) get the layer weights' truncated
    normal, not the embeddings' N(0, 1), which added to the attention logits would be as large as
    the content logits (see :data:`RELATIVE_POSITION_BIASES`)."""
    if not isinstance(depth_init, bool):  # "false" from a policy file was truthy: per-layer depth, silently
        raise PolicyError(f"preset 'llama': depth_init must be true or false, got {depth_init!r}")
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
        # a fused gate_up_proj is one tensor: the layer std (torchtitan scales its separate w3 by depth)
        Rule("trunc_normal", base, modules=_MOE, role="weight", name="moe experts and router"),
        Rule("zeros", modules=_MOE, role="bias", name="moe biases"),
        Rule("trunc_normal", base, qualnames=_SINKS, name="attention sinks"),
        Rule("trunc_normal", base, qualnames=RELATIVE_POSITION_BIASES, name="relative position bias"),
        Rule("trunc_normal", deep, qualnames=_globs("llama", "residual", residual), role="weight",
             name="output projection"),
        Rule("trunc_normal", {"std": "1/sqrt(fan_in)", "cutoff": 3.0}, qualnames=_globs("llama", "output", output),
             role="weight", name="output head"),
        # an embedding tied to an output projection gets the head's spec whatever the names (BERT's
        # cls.predictions.decoder, RoBERTa's lm_head.decoder): N(0, 1) as a head gives logits std ~sqrt(dim)
        Rule("trunc_normal", {"std": "1/sqrt(fan_in)", "cutoff": 3.0}, role="tied_head", name="tied embedding/head"),
        *_ssm_rules(),
    ]
    return Policy(tuple(rules), name="llama", options={"std": None if std == "config" else std,
                                                       "depth_init": depth_init, "cutoff": cutoff})


_RNNS = ("RNNBase", "RNNCellBase")


def _rnn_gate_rules(input_init: str, forget_bias: float) -> list[Rule]:
    return [
        Rule(input_init, modules=_RNNS, params=("weight_ih*", "weight_hr*"), name="rnn input weights"),
        Rule("orthogonal_per_gate", modules=_RNNS, params="weight_hh*", name="rnn recurrent weights per gate"),
        Rule("zeros", modules=_RNNS, params="bias_*", name="rnn biases"),
        Rule("lstm_bias", {"forget": forget_bias}, modules=("LSTM", "LSTMCell"), params="bias_ih*",
             name="lstm forget-gate bias"),
    ]


def rnn_preset(input_init: str = "xavier_uniform", forget_bias: float = 1.0) -> Policy:
    """Recurrent networks: RNN/LSTM/GRU (and cells) ``weight_ih`` (and an LSTM's projection
    ``weight_hr``) ``input_init`` (xavier_uniform, xavier_normal, lecun_uniform or lecun_normal),
    ``weight_hh`` an independent orthogonal matrix per gate block (each gate's ``W W^T = I``),
    biases 0 except an LSTM's forget gate: ``bias_ih[H:2H] = forget_bias`` (``bias_hh`` 0, so
    the sum torch adds is ``forget_bias``; Jozefowicz et al. 2015). Other layers as ``xavier``."""
    inits = ("xavier_uniform", "xavier_normal", "lecun_uniform", "lecun_normal")
    if input_init not in inits:
        raise PolicyError(f"preset 'rnn': input_init must be one of {', '.join(inits)}, got {input_init!r}")
    if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float)) or not math.isfinite(forget_bias):
        raise PolicyError(f"preset 'rnn': forget_bias must be a finite number, got {forget_bias!r}")
    w = Rule("xavier_uniform", {"nonlinearity": "auto", "fans": "module"}, modules=_LAYERS, params="weight",
             name="layer weight")
    base = _standard("rnn", w, rnn=False)
    return Policy(base.rules + tuple(_rnn_gate_rules(input_init, float(forget_bias))), name="rnn",
                  options={"input_init": input_init, "forget_bias": forget_bias})


#: Class token, position embeddings and distillation token of timm (``cls_token``, ``pos_embed``,
#: ``dist_token``), Hugging Face (``position_embeddings``, DeiT's ``distillation_token``) and torchvision
#: (``class_token``, ``pos_embedding``) ViTs.
_VIT_TOKENS = ("cls_token", "class_token", "dist_token", "distillation_token")
_VIT_POS = ("pos_embed", "position_embeddings", "pos_embedding")
_VIT_HEADS = ("head.weight", "classifier.weight", "heads.head.weight")
#: MLP biases (timm ``blocks.N.mlp.fc1/fc2``, HF ``intermediate.dense`` / ``layer.N.output.dense``).
_VIT_MLP_BIASES = ("*mlp.*bias", "*.intermediate.dense.bias", "*.output.dense.bias")


def vit_preset(style: str = "timm", std: float | None = None, head_bias: float = 0.0) -> Policy:
    """Vision transformers (timm ``init_weights_vit_timm`` / Hugging Face ``ViTPreTrainedModel``).

    ``style="timm"``: Linear and patch-embedding conv weights, ``cls_token`` / ``pos_embed`` /
    ``position_embeddings`` (and ``dist_token``, torchvision's ``class_token`` / ``pos_embedding``)
    trunc_normal(std) with torch's absolute bounds [-2, 2]; biases 0; norms 1/0; ``mask_token`` 0;
    ``reg_token`` N(0, 1e-6); relative-position bias tables (Swin, BEiT: :data:`RELATIVE_POSITION_BIASES`)
    trunc_normal(std), as timm's Swin. ``std`` defaults to ``config.initializer_range``, else 0.02.
    ``style="jax"`` (timm ``init_weights_vit_jax``, the original JAX ViT): Linear weights xavier
    uniform, biases 0 except the MLP's N(0, 1e-6); patch embedding lecun normal (truncated,
    variance 1/fan_in), bias 0; the classifier head weight 0 and bias ``head_bias``;
    ``pos_embed`` trunc_normal(std); ``cls_token`` N(0, 1e-6). Recurrent layers as ``kaiming``."""
    if style not in ("timm", "jax"):
        raise PolicyError(f"preset 'vit': style must be 'timm' or 'jax', got {style!r}")
    if isinstance(head_bias, bool) or not isinstance(head_bias, (int, float)) or not math.isfinite(head_bias):
        raise PolicyError(f"preset 'vit': head_bias must be a finite number, got {head_bias!r}")
    std = "config" if std is None else std
    tn = {"std": std}
    rules = [
        Rule("trunc_normal", tn, modules=_LAYERS, params="weight", name="layer weight"),
        Rule("zeros", modules=_LAYERS, params="bias", name="layer bias"),
        *_norm_rules(),
        Rule("trunc_normal", tn, modules=_EMBEDDINGS, params="weight", name="embedding"),
        Rule("trunc_normal", tn, modules="MultiheadAttention",
             params=("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"), name="mha in_proj"),
        Rule("zeros", modules="MultiheadAttention", params=("in_proj_bias", "out_proj.bias", "bias_k", "bias_v"),
             name="mha biases"),
        *_rnn_rules(),
        Rule("trunc_normal", tn, params=_VIT_POS, name="position embedding"),
        Rule("trunc_normal", tn, params=_VIT_TOKENS, name="class token"),
        Rule("zeros", params="mask_token", name="mask token"),
        Rule("normal", {"std": 1e-6}, params="reg_token", name="register tokens"),
        Rule("trunc_normal", tn, qualnames=RELATIVE_POSITION_BIASES, name="relative position bias"),
    ]
    if style == "jax":
        rules += [
            Rule("xavier_uniform", modules=("Linear", "Conv1D"), params="weight", name="linear weight (jax)"),
            Rule("xavier_uniform", modules="MultiheadAttention",
                 params=("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"),
                 name="mha in_proj (jax)"),
            Rule("lecun_normal", modules="_ConvNd", params="weight", name="patch embedding (jax)"),
            Rule("normal", {"std": 1e-6}, qualnames=_VIT_MLP_BIASES, name="mlp bias (jax)"),
            Rule("zeros", qualnames="*.attention.output.dense.bias", name="attention output bias (jax)"),
            Rule("normal", {"std": 1e-6}, params=_VIT_TOKENS, name="class token (jax)"),
            Rule("zeros", qualnames=_VIT_HEADS, name="head weight (jax)"),
            Rule("constant", {"val": float(head_bias)}, qualnames=tuple(h[:-6] + "bias" for h in _VIT_HEADS),
                 name="head bias (jax)"),
        ]
    rules += _ssm_rules()
    return Policy(tuple(rules), name="vit", options={"style": style, "std": None if std == "config" else std,
                                                     "head_bias": head_bias})


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
    "rnn": rnn_preset,
    "vit": vit_preset,
})
