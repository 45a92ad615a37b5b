"""The trainable text-to-image model: text encoder → image decoder, as one module.

Training sees (caption token ids, VQ codes) pairs; a fraction of captions is replaced by the
decoder's learned null context so that the same model also learns the unconditional
distribution that classifier-free guidance needs. On disk it is two component folders,
``text_encoder/`` and ``image_decoder/``, as in the bundle layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..checkpoint import CheckpointError
from ..config import TextToImageConfig
from .image_decoder import ImageDecoder
from .text_encoder import TextEncoder


class TextToImage(nn.Module):
    def __init__(self, config: TextToImageConfig):
        super().__init__()
        self.config = config
        self.text_encoder = TextEncoder(config.text_encoder)
        self.image_decoder = ImageDecoder(config.image_decoder)
        if config.freeze_text_encoder:  # the encoder proper; the context's own parts (norm, places) still train
            self.text_encoder.trunk.requires_grad_(False)

    def train(self, mode: bool = True) -> "TextToImage":
        super().train(mode)
        if self.config.freeze_text_encoder:  # a frozen encoder runs as loaded: no dropout
            self.text_encoder.trunk.eval()
        return self

    def encode_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Caption ids (B, Tc) -> encoder states (B, Tc, Dc)."""
        states, _ = self.text_encoder(text_ids, text_mask)
        return states

    def forward(
        self, text_ids: torch.Tensor, text_mask: torch.Tensor, codes: torch.Tensor, **_: object
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """text_ids/text_mask (B, Tc), codes (B, N) -> logits (B, N, K), loss. Other batch keys
        (a batch may carry its captions' text) are ignored."""
        dec = self.image_decoder
        states = self.encode_text(text_ids, text_mask)
        context, context_mask = self.text_encoder.context(text_ids, states, text_mask)
        if self.training and dec.config.caption_dropout > 0:
            drop = torch.rand(codes.shape[0], device=codes.device) < dec.config.caption_dropout  # (B,)
            null, null_mask = dec.null_contexts(codes.shape[0], context.shape[1])
            context = torch.where(drop[:, None, None], null.to(context.dtype), context)
            context_mask = torch.where(drop[:, None], null_mask, context_mask)
        codes_in, labels = dec.teacher_forcing(codes)  # predict each code from the ones before it
        return dec(codes_in, context, context_mask, labels=labels)

    def save_pretrained(self, directory: str | os.PathLike, dtype: Optional[torch.dtype] = None) -> None:
        directory = Path(directory)
        self.text_encoder.save_pretrained(directory / "text_encoder", dtype=dtype)
        self.image_decoder.save_pretrained(directory / "image_decoder", dtype=dtype)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "TextToImage":
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"model folder not found: {directory}")
        encoder = TextEncoder.from_pretrained(directory / "text_encoder")
        decoder = ImageDecoder.from_pretrained(directory / "image_decoder")
        model = cls(TextToImageConfig(text_encoder=encoder.config, image_decoder=decoder.config))
        model.text_encoder, model.image_decoder = encoder, decoder
        return model
