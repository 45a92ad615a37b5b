"""The one transformer stack: embeddings + N blocks + final norm.

GPT, BERT, the T5-style text encoder and the image decoder are thin wrappers around
:class:`Transformer`; they differ only in their config and in what they put on top.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TransformerConfig
from ..nn.attention import Attention
from ..nn.block import TransformerBlock
from ..nn.kv_cache import KVCache
from ..nn.norm import make_norm
from ..nn.position import RelativePositionBias, rope_1d, sinusoidal_table


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig, context_dim: Optional[int] = None):
        super().__init__()
        c = self.config = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.dim)
        if c.position == "learned":
            self.pos_emb = nn.Embedding(c.max_len, c.dim)
        elif c.position == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(c.max_len, c.dim), persistent=False)
        elif c.position == "relative":
            # T5: one bias table, computed once per forward and shared by every layer
            self.rel_bias = RelativePositionBias(c.n_heads, c.rel_buckets, c.rel_max_distance, bidirectional=not c.causal)
        self.type_emb = nn.Embedding(c.type_vocab_size, c.dim) if c.type_vocab_size else None
        # a stack without a norm gets an Identity, so forward has no branch for it (no parameters either)
        self.embed_norm = make_norm(c.norm, c.dim, c.norm_eps, c.norm_bias) if c.embed_norm else nn.Identity()
        self.blocks = nn.ModuleList(TransformerBlock(c, context_dim) for _ in range(c.n_layers))
        self.final_norm = make_norm(c.norm, c.dim, c.norm_eps, c.norm_bias) if c.final_norm else nn.Identity()
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch adds to the stream, so shrink its output projection
        for name, p in self.named_parameters():
            if name.endswith(("attn.out.weight", "ffn.fc_out.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        *,
        inputs_embeds: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        context: Optional[torch.Tensor] = None,
        context_mask: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
    ) -> torch.Tensor:
        """Run the stack; returns hidden states (B, T, D).

        input_ids (B, T) or inputs_embeds (B, T, D); position_ids (B|1, T), by default counting on
        from the cache position; attention_mask (B, past + T) with 1 for keys that may be attended
        (covers the cached past too); context (B, Tc, Dc) and context_mask (B, Tc) for cross-attention;
        rope: precomputed (cos, sin) for 2-D grids, else computed from position_ids when the config
        asks for RoPE.
        """
        past = cache.pos if cache is not None else 0
        x, rope = self.embed(input_ids, inputs_embeds, position_ids, token_type_ids, rope, past)
        B, T = x.shape[:2]
        bias, is_causal = self._attention_bias(B, T, past, attention_mask, x)
        context_bias = None if context_mask is None else _additive(context_mask[:, None, None, :].bool(), x.dtype)
        for i, block in enumerate(self.blocks):
            x = block(x, bias, is_causal, rope, context, context_bias, cache, layer=i)
        if cache is not None:
            cache.advance(T)
        return self.final_norm(x)

    def embed(
        self,
        input_ids: Optional[torch.Tensor],
        inputs_embeds: Optional[torch.Tensor],
        position_ids: Optional[torch.Tensor],
        token_type_ids: Optional[torch.Tensor],
        rope: Optional[tuple[torch.Tensor, torch.Tensor]],
        past: int,
    ) -> tuple[torch.Tensor, Optional[tuple[torch.Tensor, torch.Tensor]]]:
        """Token (+ position, + segment) embeddings (B, T, D), and the RoPE angles the blocks rotate by.

        Absolute positions are added here; RoPE is computed here from ``position_ids`` unless the caller
        passed its own (2-D grids); relative positions act later, as an attention bias.
        """
        c = self.config
        x = self.tok_emb(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        T = x.shape[1]
        if past + T > c.max_len:
            raise ValueError(f"sequence of {past + T} positions is longer than max_len={c.max_len}")
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=x.device)[None]  # (1, T)
        if c.position == "learned":
            x = x + self.pos_emb(position_ids)
        elif c.position == "sinusoidal":
            x = x + self.pos_table[position_ids]
        elif c.position == "rope" and rope is None:
            rope = rope_1d(position_ids, c.d_head, c.rope_theta)
        if self.type_emb is not None:
            x = x + self.type_emb(token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids))
        x = self.embed_norm(x)
        if c.dropout and self.training:  # no call at all when off: it would run on every decode step
            x = F.dropout(x, c.dropout, training=True)
        return x, rope

    def _attention_bias(
        self, B: int, T: int, past: int, attention_mask: Optional[torch.Tensor], x: torch.Tensor
    ) -> tuple[Optional[torch.Tensor], bool]:
        """The additive self-attention bias (B|1, H|1, T, past + T), or None with an is_causal flag.

        Masks are combined as booleans first and turned additive once, with the dtype's most
        negative finite value rather than -inf, so a fully padded row gives zeros, not NaNs.
        """
        c = self.config
        Tk = past + T
        has_rel = c.position == "relative"
        # a chunk after a cached past needs an explicit mask: SDPA's is_causal aligns top-left
        if attention_mask is None and not has_rel and not (c.causal and T > 1 and past > 0):
            # plain causal prefill uses SDPA's is_causal kernel; a single decode step needs no mask
            return None, c.causal and T > 1
        allowed = torch.ones(1, 1, T, Tk, dtype=torch.bool, device=x.device)
        if c.causal and T > 1:
            q_pos = torch.arange(past, Tk, device=x.device)[:, None]
            allowed = allowed & (torch.arange(Tk, device=x.device)[None, :] <= q_pos)
        if attention_mask is not None:
            if attention_mask.shape[-1] != Tk:
                raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions, expected {Tk}")
            allowed = allowed & attention_mask[:, None, None, :].bool()
        bias = _additive(allowed, x.dtype)
        if has_rel:
            rel = self.rel_bias(torch.arange(past, Tk, device=x.device), torch.arange(Tk, device=x.device))
            bias = bias + rel.to(x.dtype)  # (B|1, H, T, Tk)
        return bias, False

    def set_record_attention(self, on: bool = True) -> None:
        """Switch every attention layer to the manual path that keeps its weights (for visualisation)."""
        for m in self.modules():
            if isinstance(m, Attention):
                m.record_weights = on
                m.last_weights = None


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)
