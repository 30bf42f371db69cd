"""Hugging Face architectures built offline from small configs, for tests that import them.

Each entry of :data:`HF_MODELS` is ``(name, build)``: ``build()`` returns a freshly
initialized model from a config with tiny hidden sizes and the architecture's REAL
vocabulary size (only the embedding, and an untied head, is large). Build under
``with torch.device("meta"):`` for a meta model. No downloads: configs only.

Use it as ``@pytest.mark.parametrize("name,build", HF_MODELS, ids=HF_IDS)``; the list
is empty when transformers is not installed (pair it with ``pytest.importorskip``).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

try:
    import transformers as _T
except ImportError:  # the tests that use this skip
    _T = None

_SMALL = dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=16, intermediate_size=32)


def gpt2() -> nn.Module:  # decoder-only, tied head, vocab 50257
    cfg = _T.GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=32)
    return _T.GPT2LMHeadModel(cfg)


def llama() -> nn.Module:  # decoder-only, untied head, vocab 32000, SwiGLU
    cfg = _T.LlamaConfig(**_SMALL, num_key_value_heads=1, max_position_embeddings=32)
    return _T.LlamaForCausalLM(cfg)


def qwen2_tied() -> nn.Module:  # decoder-only, tied head, vocab 151936
    cfg = _T.Qwen2Config(**_SMALL, num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=True)
    return _T.Qwen2ForCausalLM(cfg)


def t5() -> nn.Module:  # encoder-decoder, vocab 32128, ReLU feed-forward (wi -> relu -> wo)
    cfg = _T.T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2)
    return _T.T5ForConditionalGeneration(cfg)


def bert() -> nn.Module:  # encoder-only, vocab 30522, GELU intermediate
    return _T.BertForMaskedLM(_T.BertConfig(**_SMALL, max_position_embeddings=32))


def vit() -> nn.Module:  # vision transformer: pixel_values, GELU MLP
    cfg = _T.ViTConfig(**_SMALL, image_size=32, patch_size=8, num_channels=3)
    return _T.ViTForImageClassification(cfg)


def convnext() -> nn.Module:  # convnet: depthwise conv -> norm -> pwconv1 -> GELU -> pwconv2
    cfg = _T.ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=32)
    return _T.ConvNextForImageClassification(cfg)


def resnet() -> nn.Module:  # convnet: conv -> batchnorm -> ReLU
    cfg = _T.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                          layer_type="basic")
    return _T.ResNetForImageClassification(cfg)


def bart() -> nn.Module:  # encoder-decoder, vocab 50265, GELU fc1 -> fc2
    cfg = _T.BartConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32)
    return _T.BartForConditionalGeneration(cfg)


def whisper() -> nn.Module:  # speech encoder-decoder: input_features, conv stem with GELU, vocab 51865
    cfg = _T.WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=8,
                           max_source_positions=16, max_target_positions=16)
    return _T.WhisperForConditionalGeneration(cfg)


HF_MODELS: list[tuple[str, Callable[[], nn.Module]]] = [] if _T is None else [
    ("gpt2", gpt2), ("llama", llama), ("qwen2_tied", qwen2_tied), ("t5", t5), ("bert", bert), ("vit", vit),
    ("convnext", convnext), ("resnet", resnet), ("bart", bart), ("whisper", whisper),
]
HF_IDS = [n for n, _ in HF_MODELS]
