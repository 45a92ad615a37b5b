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
from .text_encoder import TextEncoder, mean_pool

WORD_ORDER_TEMPERATURE = 0.1  # of the word-order loss's cosine similarities


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
        self, text_ids: torch.Tensor, text_mask: torch.Tensor, codes: torch.Tensor,
        pair_rows: Optional[torch.Tensor] = None, converse_ids: Optional[torch.Tensor] = None,
        converse_mask: Optional[torch.Tensor] = None, mirror_ids: Optional[torch.Tensor] = None,
        mirror_mask: Optional[torch.Tensor] = None, **_: object,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """text_ids/text_mask (B, Tc), codes (B, N) in raster order -> logits (B, N, K) in the
        decoder's generation order, loss. ``pair_rows`` and the converse / mirror captions
        (:func:`mmgen.data.pretokenize.collate_codes`) feed the word-order loss
        (``config.word_order_loss_weight``), added in training only so validation losses compare."""
        dec = self.image_decoder
        states, states_mask = self.encode_text(text_ids, text_mask), text_mask
        context, text_mask = self.text_encoder.context(text_ids, states, text_mask)
        if self.training and self.config.context_words_dropout > 0:  # some rows read the states alone
            T = states.shape[1]
            hide = torch.rand(codes.shape[0], 1, device=codes.device) < self.config.context_words_dropout  # (B, 1)
            text_mask = torch.cat([text_mask[:, :T], text_mask[:, T:].masked_fill(hide, 0)], dim=1)
        if self.training and dec.config.caption_dropout > 0:
            drop = torch.rand(codes.shape[0], device=codes.device) < dec.config.caption_dropout  # (B,)
            null, null_mask = dec.null_contexts(codes.shape[0], context.shape[1])
            context = torch.where(drop[:, None, None], null.to(context.dtype), context)
            text_mask = torch.where(drop[:, None], null_mask, text_mask)
        codes_in, labels = dec.teacher_forcing(codes)  # predict each code from the ones before it
        logits, loss = dec(codes_in, context, text_mask, labels=labels)
        weight = self.config.word_order_loss_weight
        if self.training and weight and pair_rows is not None and loss is not None:
            pairs = torch.cat([converse_ids, mirror_ids]), torch.cat([converse_mask, mirror_mask])
            loss = loss + weight * self.word_order_loss(states[pair_rows], states_mask[pair_rows], *pairs)
        return logits, loss

    def word_order_loss(
        self, states: torch.Tensor, mask: torch.Tensor, pair_ids: torch.Tensor, pair_mask: torch.Tensor
    ) -> torch.Tensor:
        """InfoNCE over mean-pooled text states: each caption (states/mask (P, T, D)/(P, T)) against
        the P converses and then the P mirrors in ``pair_ids``/``pair_mask`` (2P, T'); the right
        answer for caption i is converse i. 0 (still in the graph, so every DDP process runs the
        same one) when P is 0."""
        P = states.shape[0]
        if P == 0:
            return states.sum() * 0.0
        anchors = mean_pool(states, mask)
        candidates = mean_pool(self.encode_text(pair_ids, pair_mask), pair_mask)
        logits = anchors @ candidates.T / WORD_ORDER_TEMPERATURE  # (P, 2P)
        return nn.functional.cross_entropy(logits, torch.arange(P, device=logits.device))

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
