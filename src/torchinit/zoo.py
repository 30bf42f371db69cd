"""A small built-in model zoo used by the tests, the demo, the benchmarks and the CLI.

``build(name, **kwargs)`` returns a freshly constructed model (with torch's
default init; build it under ``torch.device("meta")`` to allocate nothing) and
``example_inputs(name, model, batch)`` a matching input batch.

========  ==========================================================================
name      model
========  ==========================================================================
mlp       deep ReLU MLP: ``depth`` Linear layers (default 30) of width ``width`` (256)
cnn       small CNN: 3 x (Conv2d, BatchNorm2d, ReLU), global average pool, Linear
resnet    small ResNet: stem + BasicBlocks (conv-BN-ReLU-conv-BN + shortcut, ReLU)
gpt       GPT-style decoder: token + position embeddings, ``n_layer`` pre-norm blocks
          (LayerNorm, causal self-attention, LayerNorm, GELU MLP), final LayerNorm, lm_head
========  ==========================================================================

Parameter names of ``gpt`` follow the usual conventions so that name-based
presets (``"gpt2"``, ``"llama"``) find the residual output projections:

* ``style="gpt2"`` (default, nanoGPT / GPT-2 names): ``transformer.wte``,
  ``transformer.wpe``, ``transformer.h.{i}.ln_1``, ``.attn.c_attn`` (fused qkv),
  ``.attn.c_proj``, ``.ln_2``, ``.mlp.c_fc``, ``.mlp.c_proj``, ``transformer.ln_f``,
  ``lm_head``;
* ``style="llama"`` (Llama / Hugging Face names): ``model.embed_tokens``,
  ``model.embed_positions``, ``model.layers.{i}.input_layernorm``,
  ``.self_attn.q_proj/k_proj/v_proj/o_proj``, ``.post_attention_layernorm``,
  ``.mlp.up_proj/down_proj``, ``model.norm``, ``lm_head``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ZOO", "build", "example_inputs", "MLP", "CNN", "ResNet", "BasicBlock", "GPT", "gpt_num_params"]


# ----------------------------------------------------------------------------------
# mlp
# ----------------------------------------------------------------------------------


class MLP(nn.Module):
    """Plain deep MLP: ``depth`` Linear layers, ReLU (or ``activation``) between them.

    Layers live in ``self.layers`` (an ``nn.Sequential``: Linear, act, Linear, act, ...,
    Linear), so ``layers.0`` is the first Linear and ``layers.{2*(depth-1)}`` the last.
    """

    def __init__(
        self,
        depth: int = 30,
        width: int = 256,
        in_features: int | None = None,
        out_features: int = 10,
        bias: bool = True,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        _check_int("depth", depth, 1)
        _check_int("width", width, 1)
        if in_features is not None:
            _check_int("in_features", in_features, 1)
        _check_int("out_features", out_features, 1)
        acts: dict[str, Callable[[], nn.Module]] = {
            "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid,
            "silu": nn.SiLU, "selu": nn.SELU, "leaky_relu": nn.LeakyReLU,
        }
        if activation not in acts:
            raise ValueError(f"zoo 'mlp': unknown activation {activation!r}; choose from {sorted(acts)}")
        self.in_features = width if in_features is None else int(in_features)
        self.out_features = int(out_features)
        dims = [self.in_features] + [width] * (depth - 1) + [self.out_features]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
            if i < depth - 1:
                layers.append(acts[activation]())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


# ----------------------------------------------------------------------------------
# cnn
# ----------------------------------------------------------------------------------


class CNN(nn.Module):
    """Small CNN: ``len(channels)`` blocks of Conv2d(3x3) -> BatchNorm2d -> ReLU (stride 2
    after the first), global average pooling, Linear classifier."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: tuple[int, ...] | list[int] = (16, 32, 64),
        num_classes: int = 10,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("num_classes", num_classes), ("image_size", image_size)):
            _check_int(name, v, 1)
        _check_ints("channels", channels)
        self.in_channels = int(in_channels)
        self.image_size = int(image_size)
        blocks: list[nn.Module] = []
        c_in = self.in_channels
        for i, c in enumerate(channels):
            blocks += [
                nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
            ]
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


# ----------------------------------------------------------------------------------
# resnet
# ----------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if stride != 1 or c_in != c_out:
            self.downsample: nn.Module = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        else:
            self.downsample = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNet(nn.Module):
    """Small ResNet (CIFAR-style): 3x3 stem, stages of ``blocks`` BasicBlocks with
    ``widths`` channels (stride 2 from the second stage), average pool, Linear."""

    def __init__(
        self,
        in_channels: int = 3,
        widths: tuple[int, ...] | list[int] = (16, 32, 64),
        blocks: int = 2,
        num_classes: int = 10,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        _check_int("blocks", blocks, 1)
        for name, v in (("in_channels", in_channels), ("num_classes", num_classes), ("image_size", image_size)):
            _check_int(name, v, 1)
        _check_ints("widths", widths, nonempty=True)
        self.in_channels = int(in_channels)
        self.image_size = int(image_size)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages: list[nn.Module] = []
        c_in = widths[0]
        for s, w in enumerate(widths):
            layer = [BasicBlock(c_in, w, stride=1 if s == 0 else 2)]
            layer += [BasicBlock(w, w) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layer))
            c_in = w
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.pool(x), 1))


# ----------------------------------------------------------------------------------
# gpt
# ----------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; fused ``c_attn`` (gpt2 style) or separate
    ``q_proj``/``k_proj``/``v_proj`` (llama style), output projection ``c_proj`` / ``o_proj``."""

    def __init__(self, n_embd: int, n_head: int, bias: bool, style: str) -> None:
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"zoo 'gpt': n_embd={n_embd} must be divisible by n_head={n_head}")
        self.n_head = n_head
        self.style = style
        if style == "gpt2":
            self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
            self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        else:
            self.q_proj = nn.Linear(n_embd, n_embd, bias=bias)
            self.k_proj = nn.Linear(n_embd, n_embd, bias=bias)
            self.v_proj = nn.Linear(n_embd, n_embd, bias=bias)
            self.o_proj = nn.Linear(n_embd, n_embd, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        if self.style == "gpt2":
            q, k, v = self.c_attn(x).split(C, dim=2)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        h = self.n_head
        q, k, v = (t.view(B, T, h, C // h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y) if self.style == "gpt2" else self.o_proj(y)


class MLPBlock(nn.Module):
    """Transformer MLP: up projection, GELU, down projection
    (``c_fc``/``c_proj`` in gpt2 style, ``up_proj``/``down_proj`` in llama style)."""

    def __init__(self, n_embd: int, hidden: int, bias: bool, style: str) -> None:
        super().__init__()
        self.style = style
        if style == "gpt2":
            self.c_fc = nn.Linear(n_embd, hidden, bias=bias)
            self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        else:
            self.up_proj = nn.Linear(n_embd, hidden, bias=bias)
            self.down_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        if self.style == "gpt2":
            return self.c_proj(self.act(self.c_fc(x)))
        return self.down_proj(self.act(self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm decoder block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, n_embd: int, n_head: int, hidden: int, bias: bool, style: str) -> None:
        super().__init__()
        attn = CausalSelfAttention(n_embd, n_head, bias, style)
        mlp = MLPBlock(n_embd, hidden, bias, style)
        if style == "gpt2":
            self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
            self.attn = attn
            self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
            self.mlp = mlp
        else:
            self.input_layernorm = nn.LayerNorm(n_embd, bias=bias)
            self.self_attn = attn
            self.post_attention_layernorm = nn.LayerNorm(n_embd, bias=bias)
            self.mlp = mlp
        self.style = style

    def forward(self, x: Tensor) -> Tensor:
        if self.style == "gpt2":
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class GPT(nn.Module):
    """GPT-style decoder-only language model.

    Parameter count (gpt2 style, bias=True, untied):
    ``V*d + P*d + n_layer*(12 d^2 + 13 d) + 2 d + d*V`` with ``hidden = 4 d``
    (``- d*V`` when ``tie_weights``). GPT-2 XL sizes (``n_layer=48, n_embd=1600,
    n_head=25, vocab_size=50257, block_size=1024, tie_weights=True``) give 1.56 B.
    """

    def __init__(
        self,
        vocab_size: int = 512,
        block_size: int = 64,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 128,
        mlp_ratio: float = 4.0,
        bias: bool = True,
        tie_weights: bool = False,
        style: str = "gpt2",
    ) -> None:
        super().__init__()
        if style not in ("gpt2", "llama"):
            raise ValueError(f"zoo 'gpt': style must be 'gpt2' or 'llama', got {style!r}")
        for name, v in (("vocab_size", vocab_size), ("block_size", block_size), ("n_layer", n_layer),
                        ("n_head", n_head), ("n_embd", n_embd)):
            _check_int(name, v, 1)
        self.vocab_size, self.block_size, self.n_layer = vocab_size, block_size, n_layer
        self.n_embd, self.style = n_embd, style
        hidden = int(round(mlp_ratio * n_embd)) if isinstance(mlp_ratio, (int, float)) else 0
        if isinstance(mlp_ratio, bool) or hidden < 1:
            raise ValueError(f"zoo 'gpt': mlp_ratio must be a positive number (hidden size >= 1), got {mlp_ratio!r}")
        blocks = nn.ModuleList(Block(n_embd, n_head, hidden, bias, style) for _ in range(n_layer))
        if style == "gpt2":
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(vocab_size, n_embd),
                wpe=nn.Embedding(block_size, n_embd),
                h=blocks,
                ln_f=nn.LayerNorm(n_embd, bias=bias),
            ))
            tok = self.transformer.wte
        else:
            self.model = nn.ModuleDict(dict(
                embed_tokens=nn.Embedding(vocab_size, n_embd),
                embed_positions=nn.Embedding(block_size, n_embd),
                layers=blocks,
                norm=nn.LayerNorm(n_embd, bias=bias),
            ))
            tok = self.model.embed_tokens
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        if tie_weights:
            self.lm_head.weight = tok.weight

    @property
    def dummy_inputs(self) -> dict[str, Tensor]:
        """One sequence of zero tokens: the forward of nonlinearity detection (torch.fx cannot trace
        ``forward``, which checks the length), without which presets guessed the gains."""
        return {"idx": torch.zeros(1, min(16, self.block_size), dtype=torch.long)}

    def forward(self, idx: Tensor) -> Tensor:
        B, T = idx.shape
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.block_size}")
        pos = torch.arange(T, device=idx.device)
        if self.style == "gpt2":
            m = self.transformer
            x = m.wte(idx) + m.wpe(pos)
            for blk in m.h:
                x = blk(x)
            x = m.ln_f(x)
        else:
            m = self.model
            x = m.embed_tokens(idx) + m.embed_positions(pos)
            for blk in m.layers:
                x = blk(x)
            x = m.norm(x)
        return self.lm_head(x)


def gpt_num_params(vocab_size: int = 512, block_size: int = 64, n_layer: int = 4, n_embd: int = 128,
                   mlp_ratio: float = 4.0, bias: bool = True, tie_weights: bool = False, **_: Any) -> int:
    """Number of parameters ``build("gpt", ...)`` creates (without allocating anything)."""
    d, h = n_embd, int(round(mlp_ratio * n_embd))
    # attention 4 d^2 (+ 4d bias), MLP 2 d h (+ h + d bias), two LayerNorms 2d (+ 2d bias)
    per_block = 4 * d * d + 2 * d * h + (h + 9 * d if bias else 2 * d)
    total = vocab_size * d + block_size * d + n_layer * per_block + (2 * d if bias else d)
    return total + (0 if tie_weights else vocab_size * d)


# ----------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------

_BUILDERS: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "cnn": CNN, "resnet": ResNet, "gpt": GPT}

#: Names :func:`build` accepts.
ZOO: list[str] = list(_BUILDERS)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"zoo: {name} must be an integer >= {minimum}, got {value!r}")


def _check_ints(name: str, values: Any, minimum: int = 1, nonempty: bool = False) -> None:
    if (not isinstance(values, (list, tuple)) or (nonempty and not values)
            or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in values)):
        raise ValueError(f"zoo: {name} must be a {'non-empty ' if nonempty else ''}list of integers >= {minimum}, "
                         f"got {values!r}")


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build zoo model ``name`` (one of :data:`ZOO`) with constructor ``kwargs``.

    The model is built on the current default device: wrap the call in
    ``with torch.device("meta"):`` to allocate no storage (then
    :func:`torchinit.materialize` it).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown zoo model {name!r}; available: {', '.join(ZOO)}")
    import inspect

    sig = inspect.signature(_BUILDERS[name])
    try:  # check the kwargs against the signature only: a TypeError raised while building propagates
        sig.bind(**kwargs)
    except TypeError as exc:
        raise TypeError(f"zoo {name!r}: {exc}; accepted keyword arguments: {', '.join(sig.parameters)}") from None
    return _BUILDERS[name](**kwargs)


def example_inputs(name: str, model: nn.Module, batch: int = 8, *, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> Tensor:
    """A random input batch of size ``batch`` for zoo model ``name`` built as ``model``.

    mlp: ``N(0, 1)`` of shape (batch, in_features); cnn/resnet: ``N(0, 1)`` images
    (batch, C, image_size, image_size); gpt: token ids (batch, min(block_size, 32)).
    """
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None and not p.is_meta else "cpu"
    if name == "mlp":
        return torch.randn(batch, model.in_features, generator=generator).to(device)
    if name in ("cnn", "resnet"):
        s = model.image_size
        return torch.randn(batch, model.in_channels, s, s, generator=generator).to(device)
    if name == "gpt":
        t = min(model.block_size, 32)
        return torch.randint(0, model.vocab_size, (batch, t), generator=generator).to(device)
    raise ValueError(f"unknown zoo model {name!r}; available: {', '.join(ZOO)}")
