"""Presets on real Hugging Face heads and tables: an embedding tied to an output projection
under any name (BERT/RoBERTa MLM decoders) gets a spec sane in both roles; frozen tables kept."""

from __future__ import annotations

import pytest
import torch

import torchinit

T = pytest.importorskip("transformers")


def _bert_mlm():
    cfg = T.BertConfig(num_hidden_layers=1, hidden_size=768, num_attention_heads=12, intermediate_size=3072,
                       max_position_embeddings=32)
    return T.BertForMaskedLM(cfg).eval()


def _roberta_mlm():
    cfg = T.RobertaConfig(num_hidden_layers=1, hidden_size=768, num_attention_heads=12, intermediate_size=3072,
                          max_position_embeddings=40)
    return T.RobertaForMaskedLM(cfg).eval()


@pytest.mark.parametrize("build,head", [(_bert_mlm, "cls.predictions.decoder.weight"),
                                        (_roberta_mlm, "lm_head.decoder.weight")], ids=["bert", "roberta"])
@pytest.mark.parametrize("preset", ["llama", "gpt2"])
def test_tied_mlm_decoder_logits_of_order_one(build, head, preset):
    m = build()
    p = torchinit.plan(m, preset)
    emb = m.get_input_embeddings().weight
    assert m.get_output_embeddings().weight is emb  # the decoder IS the embedding (tied by identity)
    torchinit.init_model(m, preset, seed=0)
    with torch.no_grad():
        ids = torch.randint(5, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
        logits = m(input_ids=ids).logits
    assert logits.std().item() < 3  # N(0, 1) as the head gave ~28
    entry = next(e for e in p.entries if head in (e.name, *e.aliases))
    assert "tied embedding/head" in entry.rule  # the same rule under every name: no conflict
    if preset == "llama":  # the head's spec: dim^-0.5, truncated at 3 std
        assert entry.spec.std_ == pytest.approx(768 ** -0.5)


@pytest.mark.parametrize("preset", ["kaiming", "pytorch"])
def test_tied_mlm_decoder_conflict_is_noted_by_other_presets(preset):
    p = torchinit.plan(_bert_mlm(), preset)
    note = [n for n in p.notes if n.startswith("tied tensor 'bert.embeddings.word_embeddings.weight'")]
    assert note and "'cls.predictions.decoder.weight'" in note[0] and "disagree" in note[0]


_POS = "model.encoder.embed_positions.weight"  # Whisper's frozen sinusoidal table


def _whisper():
    from hf_models import whisper

    return whisper()


@pytest.mark.parametrize("preset", ["gpt2", "llama", "kaiming", "pytorch"])
def test_frozen_sinusoidal_table_is_kept_by_the_presets(preset):
    m = _whisper()
    table = m.get_parameter(_POS)
    assert not table.requires_grad
    before = table.detach().clone()
    p = torchinit.init_model(m, preset, seed=0)
    assert torch.equal(m.get_parameter(_POS), before)  # N(0, 0.02) / N(0, 1) overwrote the sinusoids
    assert _POS not in p.unmatched
    if preset != "pytorch":  # kept, with a note naming it
        assert _POS not in [e.name for e in p.entries]
        assert any(n.startswith(f"kept: frozen (requires_grad=False) {_POS!r}") and "embedding" in n
                   for n in p.notes), p.notes
    else:  # its own init code (Whisper's _init_weights recomputes the sinusoids) instead of N(0, 1)
        assert p[_POS].initializer == "module"


def test_frozen_table_is_initialized_when_a_rule_names_it():
    m = _whisper()
    p = torchinit.init_model(m, {"preset": "gpt2", "rules": [{"qualnames": _POS, "init": "zeros"}]}, seed=0)
    assert p[_POS].initializer == "zeros" and torch.all(m.get_parameter(_POS) == 0)
    assert not any("kept: frozen" in n for n in p.notes)


def test_frozen_table_on_meta_gets_its_own_code():
    ref = _whisper().get_parameter(_POS).detach().clone()
    with torch.device("meta"):
        m = _whisper()
    torchinit.materialize(m, policy="gpt2", seed=0)
    got = m.get_parameter(_POS)
    assert not got.requires_grad and torch.equal(got, ref)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_t5_attention_output_o_is_a_residual_projection_like_wo(preset):
    # T5 writes into the residual stream through SelfAttention.o / EncDecAttention.o and DenseReluDense.wo;
    # the presets scaled wo by depth and left o at the plain std
    cfg = T.T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2)
    p = torchinit.plan(T.T5ForConditionalGeneration(cfg), preset)
    for stack in ("encoder", "decoder"):
        for i in range(2):
            blk = f"{stack}.block.{i}.layer"
            wo = p[f"{blk}.{2 if stack == 'decoder' else 1}.DenseReluDense.wo.weight"]
            for q in [f"{blk}.0.SelfAttention.o.weight"] + ([f"{blk}.1.EncDecAttention.o.weight"] if stack == "decoder" else []):
                assert p[q].rule == wo.rule and p[q].spec == wo.spec, (q, p[q].spec, wo.spec)
            assert wo.spec.std < p[f"{blk}.0.SelfAttention.q.weight"].spec.std


def _meta(cls, cfg):
    with torch.device("meta"):
        return cls(cfg)


# (model, the block's attention output, its MLP output, its first projection): the residual
# projections of GPT-NeoX, Falcon, Bloom (attention dense, dense_4h_to_h) and GPT-J (fc_out)
_NEOX_LIKE = [
    (lambda: _meta(T.GPTNeoXForCausalLM, T.GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                                          intermediate_size=64)),
     "gpt_neox.layers.{i}.attention.dense", "gpt_neox.layers.{i}.mlp.dense_4h_to_h",
     "gpt_neox.layers.{i}.attention.query_key_value"),
    (lambda: _meta(T.FalconForCausalLM, T.FalconConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2)),
     "transformer.h.{i}.self_attention.dense", "transformer.h.{i}.mlp.dense_4h_to_h",
     "transformer.h.{i}.self_attention.query_key_value"),
    (lambda: _meta(T.BloomForCausalLM, T.BloomConfig(n_layer=2, hidden_size=32, n_head=2)),
     "transformer.h.{i}.self_attention.dense", "transformer.h.{i}.mlp.dense_4h_to_h",
     "transformer.h.{i}.self_attention.query_key_value"),
    (lambda: _meta(T.GPTJForCausalLM, T.GPTJConfig(n_layer=2, n_embd=32, n_head=2, rotary_dim=8)),
     "transformer.h.{i}.attn.out_proj", "transformer.h.{i}.mlp.fc_out", "transformer.h.{i}.attn.q_proj"),
]


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
@pytest.mark.parametrize("build, attn_out, mlp_out, first", _NEOX_LIKE, ids=["gpt_neox", "falcon", "bloom", "gptj"])
def test_residual_projections_of_neox_falcon_bloom_gptj_are_scaled_by_depth(preset, build, attn_out, mlp_out, first):
    # both outputs of every block write into the residual stream: both get the depth scaling
    # (NeoX/Falcon/Bloom got it on neither, GPT-J on its attention output only)
    p = torchinit.plan(build(), preset)
    for i in range(2):
        a, m, q = (p[f"{n.format(i=i)}.weight"] for n in (attn_out, mlp_out, first))
        assert a.rule == m.rule != q.rule, (a.rule, m.rule, q.rule)
        assert a.spec.std == m.spec.std < q.spec.std
