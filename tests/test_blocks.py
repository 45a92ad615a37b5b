"""The shared blocks against references: a manual attention, an uncached decode, known formulas."""

from __future__ import annotations

import math

import pytest
import torch

from mmgen.config import BERTConfig, ConfigError, GPTConfig, TextEncoderConfig, TransformerConfig
from mmgen.models.bert import BERT
from mmgen.models.gpt import GPT
from mmgen.models.text_encoder import TextEncoder
from mmgen.models.trunk import Transformer
from mmgen.nn.attention import Attention
from mmgen.nn.kv_cache import KVCache
from mmgen.nn.norm import LayerNorm, RMSNorm
from mmgen.nn.position import apply_rope, relative_position_bucket, rope_1d, rope_2d, sinusoidal_table

TINY = dict(vocab_size=61, max_len=48, dim=32, n_layers=2, n_heads=4)


def test_rmsnorm_computes_in_fp32_and_matches_formula():
    x = torch.randn(3, 5, 16)
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    expected = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert torch.allclose(norm(x), expected, atol=1e-6)
    # in bf16 the statistic is still taken in fp32: a large input must not overflow to inf
    big = torch.full((1, 16), 3e4, dtype=torch.bfloat16)
    assert torch.isfinite(norm.to(torch.bfloat16)(big)).all()


def test_layernorm_without_bias_has_no_bias_parameter():
    assert LayerNorm(8, bias=False).bias is None
    assert len(list(LayerNorm(8, bias=True).parameters())) == 2


@pytest.mark.parametrize("cross", [False, True])
def test_sdpa_path_equals_manual_path(cross):
    torch.manual_seed(0)
    attn = Attention(32, 4, 8, bias=True, cross=cross, context_dim=24).eval()
    x = torch.randn(2, 7, 32)
    ctx = torch.randn(2, 5, 24) if cross else None
    Tk = 5 if cross else 7
    bias = torch.randn(2, 4, 7, Tk)
    for kwargs in ({"bias": bias}, {"is_causal": not cross}):
        fast = attn(x, context=ctx, **kwargs)
        attn.record_weights = True
        slow = attn(x, context=ctx, **kwargs)
        attn.record_weights = False
        assert (fast - slow).abs().max() < 1e-5
        assert attn.last_weights.shape == (2, 4, 7, Tk)
        assert torch.allclose(attn.last_weights.sum(-1), torch.ones(2, 4, 7), atol=1e-5)


def test_manual_attention_matches_textbook_formula():
    torch.manual_seed(1)
    attn = Attention(16, 2, 8, bias=False, scale=0.3)
    attn.record_weights = True
    x = torch.randn(1, 4, 16)
    y = attn(x, is_causal=True)
    q, k, v = attn.qkv(x).view(1, 4, 3, 2, 8).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) * 0.3
    scores = scores.masked_fill(torch.ones(4, 4).triu(1).bool(), -math.inf)
    expected = attn.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 4, 16))
    assert torch.allclose(y, expected, atol=1e-6)


def test_rope_rotates_by_relative_offset():
    # <rope(q, m), rope(k, n)> depends only on m - n
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        cq, sq = rope_1d(torch.tensor([m]), 16)
        ck, sk = rope_1d(torch.tensor([n]), 16)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    assert torch.allclose(score(3, 1), score(10, 8), atol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2), atol=1e-3)


def test_rope_2d_depends_on_row_and_column_offsets():
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(a, b):
        ca, sa = rope_2d(torch.tensor([a[0]]), torch.tensor([a[1]]), 16)
        cb, sb = rope_2d(torch.tensor([b[0]]), torch.tensor([b[1]]), 16)
        return (apply_rope(q, ca, sa) * apply_rope(k, cb, sb)).sum()

    assert torch.allclose(score((2, 5), (1, 1)), score((4, 7), (3, 3)), atol=1e-5)
    assert not torch.allclose(score((2, 5), (1, 1)), score((2, 6), (1, 1)), atol=1e-3)
    assert not torch.allclose(score((2, 5), (1, 1)), score((3, 5), (1, 1)), atol=1e-3)


def test_relative_buckets_are_exact_near_and_logarithmic_far():
    rel = torch.arange(-200, 201)
    b = relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    assert b.min() >= 0 and b.max() <= 31
    assert len(set(b[(rel >= 0) & (rel < 8)].tolist())) == 8  # exact for small offsets
    assert b[rel == 5].item() != b[rel == -5].item()  # direction matters in an encoder
    assert b[rel == 150].item() == b[rel == 200].item()  # saturates past max_distance
    causal = relative_position_bucket(rel, bidirectional=False, num_buckets=32, max_distance=128)
    assert (causal[rel > 0] == 0).all()  # future offsets collapse in a decoder


def test_sinusoidal_table_formula():
    t = sinusoidal_table(10, 8)
    assert torch.allclose(t[3, 2], torch.tensor(math.sin(3 / 10000 ** (2 / 8))))
    assert torch.allclose(t[3, 3], torch.tensor(math.cos(3 / 10000 ** (2 / 8))))


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope", "relative"])
def test_cached_decoding_equals_uncached_logits_every_step(position):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY, position=position)).eval()
    ids = torch.randint(0, 61, (2, 12))
    with torch.no_grad():
        full, _ = model(ids)
        cache = KVCache.for_config(model.config, 2)
        prefix, _ = model(ids[:, :5], cache=cache)
        assert (prefix - full[:, :5]).abs().max() < 1e-5
        for t in range(5, 12):
            step, _ = model(ids[:, t : t + 1], cache=cache)
            assert (step[:, 0] - full[:, t]).abs().max() < 1e-5, f"step {t}"


def test_cached_chunk_after_past_uses_causal_mask():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY)).eval()
    ids = torch.randint(0, 61, (1, 10))
    with torch.no_grad():
        full, _ = model(ids)
        cache = KVCache.for_config(model.config, 1)
        model(ids[:, :4], cache=cache)
        chunk, _ = model(ids[:, 4:], cache=cache)
    assert (chunk - full[:, 4:]).abs().max() < 1e-5


def test_cross_attention_cache_reuses_context_projection():
    torch.manual_seed(0)
    cfg = TransformerConfig(**TINY, cross_attention=True)
    trunk = Transformer(cfg, context_dim=20).eval()
    ids, ctx = torch.randint(0, 61, (2, 6)), torch.randn(2, 3, 20)
    ctx_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with torch.no_grad():
        full = trunk(ids, context=ctx, context_mask=ctx_mask)
        cache = KVCache.for_config(cfg, 2)
        first = trunk(ids[:, :2], context=ctx, context_mask=ctx_mask, cache=cache)
        rest = [trunk(ids[:, t : t + 1], context=None, context_mask=ctx_mask, cache=cache) for t in range(2, 6)]
    assert (torch.cat([first, *rest], 1) - full).abs().max() < 1e-5


def test_padding_does_not_change_real_positions():
    torch.manual_seed(0)
    model = BERT(BERTConfig(**TINY)).eval()
    ids = torch.randint(1, 61, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    with torch.no_grad():
        a, _ = model(ids)
        b, _ = model(padded, attention_mask=mask)
    assert (a - b[:, :6]).abs().max() < 1e-5


def test_text_encoder_fully_padded_row_is_finite():
    model = TextEncoder(TextEncoderConfig(**TINY)).eval()
    ids = torch.randint(0, 61, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    with torch.no_grad():
        h, _ = model(ids, mask)
    assert torch.isfinite(h).all()
    emb = model.embed(ids, mask)
    assert abs(emb[0].norm().item() - 1) < 1e-5  # unit length for a real prompt
    assert emb[1].abs().sum() == 0  # an all-padding row pools to zeros, not NaN


def test_gpt_head_is_tied_and_residual_init_is_scaled():
    model = GPT(GPTConfig(**TINY))
    assert model.lm_head.weight is model.trunk.tok_emb.weight
    out_std = model.trunk.blocks[0].attn.out.weight.std().item()
    assert abs(out_std - 0.02 / math.sqrt(2 * 2)) < 0.004


def test_config_rejects_unknown_and_bad_values():
    with pytest.raises(ConfigError, match="n_layer"):
        GPTConfig.from_dict({"n_layer": 2})
    with pytest.raises(ConfigError, match="not divisible"):
        GPTConfig(dim=30, n_heads=4)
    with pytest.raises(ConfigError, match="activation"):
        GPTConfig.from_dict({"activation": "swish-ish"})
    cfg = GPTConfig.from_dict({"dim": 64, "n_heads": 4, "dropout": 0})
    assert cfg.dim == 64 and isinstance(cfg.dropout, float)


def test_config_json_round_trip(tmp_path):
    cfg = TextEncoderConfig(**TINY, head_dim=16)
    cfg.to_json(tmp_path / "c.json")
    assert TextEncoderConfig.from_json(tmp_path / "c.json") == cfg
    with pytest.raises(ConfigError, match="TextEncoderConfig"):
        GPTConfig.from_json(tmp_path / "c.json")


def test_sequence_longer_than_max_len_is_a_clear_error():
    model = GPT(GPTConfig(**TINY))
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 49, dtype=torch.long))
