"""The transformer block: self-attention [+ cross-attention] + feed-forward, pre- or post-norm."""

from __future__ import annotations

from typing import Optional

import torch
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
        if c.cross_attention:
            self.cross_norm, self.cross_attn = norm(), attention(cross=True)
        self.ffn_norm, self.ffn = norm(), make_ffn(c.dim, c.d_ffn, c.activation, c.bias, c.dropout)
        self.dropout = nn.Dropout(c.dropout)

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
        sublayers = [(self.attn_norm, lambda h: self.attn(h, bias, is_causal, rope, cache=cache, layer=layer))]
        if hasattr(self, "cross_attn"):
            sublayers.append(
                (self.cross_norm, lambda h: self.cross_attn(h, context_bias, context=context, cache=cache, layer=layer))
            )
        sublayers.append((self.ffn_norm, self.ffn))
        for norm, f in sublayers:
            if self.pre_norm:
                x = x + self.dropout(f(norm(x)))
            else:
                x = norm(x + self.dropout(f(x)))
        return x
