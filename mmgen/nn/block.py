"""The transformer block: self-attention [+ cross-attention] + feed-forward, pre- or post-norm."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TransformerConfig
from .attention import Attention
from .ffn import make_ffn
from .kv_cache import KVCache
from .norm import make_norm


class TransformerBlock(nn.Module):
    """Pre-norm (GPT-2, T5): x + f(norm(x)).  Post-norm (BERT): norm(x + f(x))."""

    def __init__(self, config: TransformerConfig, context_dim: Optional[int] = None):
        super().__init__()
        c = config
        self.pre_norm = c.pre_norm

        def norm() -> nn.Module:
            return make_norm(c.norm, c.dim, c.norm_eps, c.norm_bias)

        def attention(cross: bool) -> Attention:
            return Attention(c.dim, c.n_heads, c.d_head, c.bias, c.attn_scale, c.dropout, cross, context_dim)

        self.attn_norm, self.attn = norm(), attention(cross=False)
        self.has_cross = c.cross_attention
        if c.cross_attention:
            self.cross_norm, self.cross_attn = norm(), attention(cross=True)
        self.ffn_norm, self.ffn = norm(), make_ffn(c.dim, c.d_ffn, c.activation, c.bias, c.dropout)
        self.dropout = c.dropout  # on each residual branch, in training only

    def forward(
        self,
        x: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        is_causal: bool = False,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        context: Optional[torch.Tensor] = None,
        context_bias: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D)."""
        # Written out sublayer by sublayer (no closures, no dropout call when it is off): while
        # decoding one token this forward runs once per layer per step, and Python overhead counts.
        if self.pre_norm:
            x = x + self._drop(self.attn(self.attn_norm(x), bias, is_causal, rope, cache=cache, layer=layer))
            if self.has_cross:
                x = x + self._drop(self.cross_attn(self.cross_norm(x), context_bias, context=context, cache=cache, layer=layer))
            return x + self._drop(self.ffn(self.ffn_norm(x)))
        x = self.attn_norm(x + self._drop(self.attn(x, bias, is_causal, rope, cache=cache, layer=layer)))
        if self.has_cross:
            x = self.cross_norm(x + self._drop(self.cross_attn(x, context_bias, context=context, cache=cache, layer=layer)))
        return self.ffn_norm(x + self._drop(self.ffn(x)))

    def _drop(self, h: torch.Tensor) -> torch.Tensor:
        return F.dropout(h, self.dropout, training=True) if self.dropout and self.training else h
