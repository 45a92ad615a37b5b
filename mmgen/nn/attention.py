"""Multi-head attention: self or cross, causal or not, with additive masks/biases and RoPE.

The fast path is PyTorch's ``scaled_dot_product_attention``. A manual path computes the same
thing step by step and keeps the attention weights (for visualisation, and as a reference in
tests); set ``record_weights = True`` on a module to use it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .kv_cache import KVCache
from .position import apply_rope


class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        n_heads: int,
        head_dim: int,
        bias: bool = True,
        scale: Optional[float] = None,
        dropout: float = 0.0,
        cross: bool = False,
        context_dim: Optional[int] = None,
    ):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.scale = scale if scale is not None else head_dim**-0.5
        self.cross = cross
        self.dropout = dropout
        inner = n_heads * head_dim
        if cross:
            self.q = nn.Linear(dim, inner, bias=bias)
            self.kv = nn.Linear(context_dim or dim, 2 * inner, bias=bias)  # fused K and V of the context
        else:
            self.qkv = nn.Linear(dim, 3 * inner, bias=bias)  # fused Q, K, V: one matmul instead of three
        self.out = nn.Linear(inner, dim, bias=bias)
        self.record_weights = False
        self.last_weights: Optional[torch.Tensor] = None  # (B, H, Tq, Tk) when record_weights

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b t (h d) -> b h t d", d=self.head_dim)

    def forward(
        self,
        x: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        is_causal: bool = False,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        context: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """x (B, T, D); bias additive, broadcastable to (B, H, T, Tk); context (B, Tc, Dc) for cross-attention."""
        if self.cross:
            q = self._split_heads(self.q(x))
            if cache is not None and cache.cross[layer] is not None:
                k, v = cache.cross[layer]  # the context never changes while sampling: project it once
            else:
                if context is None:
                    raise ValueError("cross-attention needs a context")
                k, v = (self._split_heads(t) for t in self.kv(context).chunk(2, dim=-1))
                if cache is not None:
                    cache.cross[layer] = (k, v)
        else:
            q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, d=self.head_dim).unbind(0)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            if cache is not None:
                k, v = cache.update(layer, k, v)  # (B, H, Tk, Dh) with Tk = past + T
        dropout_p = self.dropout if self.training else 0.0
        if self.record_weights:
            y = self._manual(q, k, v, bias, is_causal, dropout_p)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=dropout_p, is_causal=is_causal and bias is None, scale=self.scale
            )
        return self.out(rearrange(y, "b h t d -> b t (h d)"))

    def _manual(self, q, k, v, bias, is_causal, dropout_p) -> torch.Tensor:
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, Tq, Tk)
        if bias is not None:
            scores = scores + bias
        elif is_causal:
            Tq, Tk = scores.shape[-2:]
            future = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).triu(Tk - Tq + 1)
            scores = scores.masked_fill(future, float("-inf"))
        weights = scores.float().softmax(dim=-1).to(q.dtype)
        self.last_weights = weights.detach()
        return F.dropout(weights, dropout_p) @ v
