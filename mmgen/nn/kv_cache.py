"""A preallocated key/value cache, owned by the caller (the sampler), never by a model.

Each layer's keys and values live in tensors allocated once for the longest sequence, so a
decode step writes one slice per layer and allocates nothing. One (B, H, max_len, Dh) tensor
per layer, rather than one 5-D tensor for all layers, keeps the per-step indexing to a single
slice. Cross-attention keys/values (of the text context, which never changes during sampling)
are computed once and kept per layer.
"""

from __future__ import annotations

from typing import Optional

import torch


class KVCache:
    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        # torch.empty, not zeros: a position is always written before it is read (update returns
        # only [:end]), and filling a large cache with zeros costs as much as several decode steps
        shape = (batch_size, n_heads, max_len, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]  # L × (B, H, max_len, Dh)
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len
        self.pos = 0  # number of positions already written (the same for every row)
        self.cross: list[Optional[tuple[torch.Tensor, torch.Tensor]]] = [None] * n_layers

    @classmethod
    def for_config(cls, config, batch_size: int, max_len: Optional[int] = None, dtype=torch.float32, device="cpu") -> "KVCache":
        """A cache sized for a TransformerConfig (max_len defaults to the config's)."""
        return cls(config.n_layers, batch_size, config.n_heads, max_len or config.max_len, config.d_head, dtype, device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H, T, Dh) at the current position; return all keys/values so far (views)."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions needed, cache holds {self.max_len}")
        keys, values = self.k[layer], self.v[layer]
        keys[:, :, self.pos : end] = k
        values[:, :, self.pos : end] = v
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, n: int) -> None:
        """Called by the trunk once every layer has written its n new positions."""
        self.pos += n

    def reset(self) -> None:
        self.pos = 0
        self.cross = [None] * len(self.cross)
