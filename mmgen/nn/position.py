"""Position information: learned/sinusoidal absolute tables, T5 relative-position buckets, RoPE (1-D and 2-D).

Absolute positions are *added* to token embeddings (by the trunk); relative positions become an
*additive attention bias*; RoPE *rotates* queries and keys inside attention. Each is a small
pure function or module so the trunk can pick one by name.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """The fixed table of "Attention is all you need": (max_len, dim), sin on even, cos on odd dims."""
    position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (L, 1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (D/2,)
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div[: dim // 2])
    return table


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucketing of (key - query) offsets: exact for small offsets, logarithmic up to max_distance.

    Bidirectional (encoder) buckets spend half the buckets on each direction; causal (decoder)
    buckets only distinguish how far in the past a key is.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # log-spaced buckets for larger distances; clamp(min=1) only avoids log(0) where is_small anyway
    large = max_exact + (
        torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """Learned per-head bias for each relative-position bucket (T5). One instance is shared by all layers."""

    def __init__(self, n_heads: int, num_buckets: int, max_distance: int, bidirectional: bool):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.embedding = nn.Embedding(num_buckets, n_heads)

    def forward(self, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
        """q_positions (Tq,), k_positions (Tk,) -> additive bias (1, H, Tq, Tk)."""
        relative = k_positions[None, :] - q_positions[:, None]  # (Tq, Tk)
        buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)  # (1, H, Tq, Tk)


# ---------------------------------------------------------------------------------------------
# RoPE. We use the "rotate half" layout: dimension j is paired with j + Dh/2.
# ---------------------------------------------------------------------------------------------


def _inv_freq(n_pairs: int, theta: float, device=None) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(n_pairs, dtype=torch.float32, device=device) / n_pairs))


def _cos_sin(angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.cat([angles, angles], dim=-1)  # (..., T, Dh): the same angle for both halves of a pair
    return angles.cos(), angles.sin()


def rope_1d(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B, T) or (T,) -> cos, sin of shape (B|1, T, head_dim)."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    positions = positions if positions.dim() == 2 else positions[None]
    angles = positions.float()[..., None] * _inv_freq(head_dim // 2, theta, positions.device)  # (B, T, Dh/2)
    return _cos_sin(angles)


def rope_2d(
    rows: torch.Tensor, cols: torch.Tensor, head_dim: int, theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D RoPE for image grids: half of the rotation pairs encode the row, half the column.

    rows, cols (B, T) or (T,) -> cos, sin (B|1, T, head_dim).
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    rows = rows if rows.dim() == 2 else rows[None]
    cols = cols if cols.dim() == 2 else cols[None]
    inv = _inv_freq(head_dim // 4, theta, rows.device)  # (Dh/4,)
    angles = torch.cat([rows.float()[..., None] * inv, cols.float()[..., None] * inv], dim=-1)  # (B, T, Dh/2)
    return _cos_sin(angles)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, Dh); cos/sin (B|1, T, Dh)."""
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)  # (B|1, 1, T, Dh)
    return x * cos + _rotate_half(x) * sin
