"""The T5-style text encoder that conditions the image decoder."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..checkpoint import PretrainedMixin
from ..config import TextEncoderConfig
from ..nn.norm import make_norm
from .trunk import Transformer


class TextEncoder(PretrainedMixin, nn.Module):
    config_class = TextEncoderConfig

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        if config.causal:
            raise ValueError("a text encoder is bidirectional (causal=False)")
        self.config = config
        self.trunk = Transformer(config)
        if config.context_embeddings:
            self.context_norm = make_norm(config.norm, config.dim, config.norm_eps, config.norm_bias)
        if config.context_positions:  # initialised like the token table, so both start on one scale
            self.context_pos = nn.Parameter(torch.randn(config.max_len, config.dim) * 0.02)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, None]:
        """input_ids (B, T) -> hidden states (B, T, D) (no loss: it trains through the model it conditions)."""
        return self.trunk(input_ids, attention_mask=attention_mask), None

    def context(
        self, input_ids: torch.Tensor, states: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What a decoder attends to, from this encoder's states (B, T, D) of ``input_ids`` (B, T):
        the states themselves, or with ``config.context_embeddings`` the states followed by the
        tokens' normalised input embeddings (plus their places with ``config.context_positions``):
        (B, 2T, D) with the mask (B, T) repeated."""
        if not self.config.context_embeddings:
            return states, attention_mask
        words = self.trunk.tok_emb(input_ids)
        if self.config.context_positions:
            words = words + self.context_pos[: input_ids.shape[1]]
        words = self.context_norm(words).to(states.dtype)
        return torch.cat([states, words], dim=1), torch.cat([attention_mask, attention_mask], dim=1)

    @torch.no_grad()
    def embed(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mean-pooled, L2-normalised sentence embeddings (B, D), e.g. for semantic search of prompts."""
        h, _ = self(input_ids, attention_mask)
        return mean_pool(h, torch.ones_like(input_ids) if attention_mask is None else attention_mask)


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """States (B, T, D) averaged over the mask's tokens (B, T), then L2-normalised: (B, D) in fp32."""
    pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)
