"""GPT: a causal transformer with a language-model head tied to the token embedding."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import PretrainedMixin
from ..config import GPTConfig
from ..nn.kv_cache import KVCache
from .trunk import Transformer


class GPT(PretrainedMixin, nn.Module):
    config_class = GPTConfig

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not config.causal:
            raise ValueError("GPT needs a causal config (causal=True)")
        self.config = config
        self.trunk = Transformer(config)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.trunk.tok_emb.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """input_ids (B, T) -> logits (B, T, V) (or (B, 1, V) with last_only), loss.

        ``labels`` are aligned with ``input_ids`` (as in transformers): the model shifts them, and
        positions labelled -100 are ignored.
        """
        h = self.trunk(input_ids, position_ids=position_ids, attention_mask=attention_mask, cache=cache)
        if last_only:
            h = h[:, -1:]  # while decoding only the last position's logits are needed
        logits = self.lm_head(h)  # (B, T, V)
        loss = None
        if labels is not None:
            # shift the labels, not the logits: slicing (B, T, V) logits would copy them
            targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T): position t predicts token t + 1
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100)
        return logits, loss
