"""The T5-style text encoder that conditions the image decoder."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..checkpoint import PretrainedMixin
from ..config import TextEncoderConfig
from .trunk import Transformer


class TextEncoder(PretrainedMixin, nn.Module):
    config_class = TextEncoderConfig

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        if config.causal:
            raise ValueError("a text encoder is bidirectional (causal=False)")
        self.config = config
        self.trunk = Transformer(config)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, None]:
        """input_ids (B, T) -> hidden states (B, T, D) (no loss: it trains through the model it conditions)."""
        return self.trunk(input_ids, attention_mask=attention_mask), None

    @torch.no_grad()
    def embed(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mean-pooled, L2-normalised sentence embeddings (B, D), e.g. for semantic search of prompts."""
        h, _ = self(input_ids, attention_mask)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)
