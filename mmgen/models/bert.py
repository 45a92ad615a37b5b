"""BERT: a bidirectional post-norm transformer with a masked-language-model head."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import PretrainedMixin
from ..config import BERTConfig
from ..nn.ffn import ACTIVATIONS
from ..nn.norm import make_norm
from .trunk import Transformer


class BERT(PretrainedMixin, nn.Module):
    config_class = BERTConfig

    def __init__(self, config: BERTConfig):
        super().__init__()
        if config.causal:
            raise ValueError("BERT needs a bidirectional config (causal=False)")
        self.config = config
        self.trunk = Transformer(config)
        # MLM head: transform (dense + activation + norm), then a decoder tied to the embedding
        self.mlm_dense = nn.Linear(config.dim, config.dim)
        self.mlm_act = ACTIVATIONS[config.activation]
        self.mlm_norm = make_norm(config.norm, config.dim, config.norm_eps, config.norm_bias)
        self.mlm_decoder = nn.Linear(config.dim, config.vocab_size)
        if config.tie_embeddings:
            self.mlm_decoder.weight = self.trunk.tok_emb.weight
        nn.init.zeros_(self.mlm_decoder.bias)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Hidden states (B, T, D) of the trunk (what a text encoder initialised from BERT uses)."""
        return self.trunk(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """input_ids (B, T) -> MLM logits (B, T, V), loss over positions whose label is not -100."""
        h = self.encode(input_ids, attention_mask, token_type_ids)
        logits = self.mlm_decoder(self.mlm_norm(self.mlm_act(self.mlm_dense(h))))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=-100)
        return logits, loss
