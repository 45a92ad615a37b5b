"""The image decoder: a causal transformer over VQ codes, conditioned on text.

Codes are generated row by row. Input at step i is the previous code (or the start token at
i = 0) plus the 2-D position of the code it must predict; the output at i is a distribution over
the codebook for code i. :meth:`ImageDecoder.teacher_forcing` turns a grid of codes into the
inputs and targets of a training step. The text arrives through cross-attention. A learned *null
context* stands in for the text when a caption is dropped in training, and is the unconditional
branch of classifier-free guidance when sampling.

How a code is represented in and out is a config choice (``code_embedding``): a free vector and
output row per code ("table"), or the sum of vectors for its two-tone factors, dark colour, light
colour and bitmap ("factors", :mod:`mmgen.models.code_factors`), which lets the model draw codes
it never saw as targets.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import PretrainedMixin
from ..config import ImageDecoderConfig
from ..nn.kv_cache import KVCache
from ..nn.position import rope_2d
from .code_factors import FACTOR_NAMES
from .trunk import Transformer


class ImageDecoder(PretrainedMixin, nn.Module):
    config_class = ImageDecoderConfig

    def __init__(self, config: ImageDecoderConfig):
        super().__init__()
        c = self.config = config
        self.trunk = Transformer(c, context_dim=c.context_dim)
        if c.grid_position == "learned":
            self.row_emb = nn.Embedding(c.grid_h, c.dim)
            self.col_emb = nn.Embedding(c.grid_w, c.dim)
            nn.init.normal_(self.row_emb.weight, std=0.02)
            nn.init.normal_(self.col_emb.weight, std=0.02)
        self.null_context = nn.Parameter(torch.randn(1, 1, c.context_dim) * 0.02)  # (1, 1, Dc)
        if c.code_embedding == "factors":
            # codes are described by their source patch's two colours and bitmap (set_code_factors;
            # saved with the weights): one table and one output head per factor, summed
            self.trunk.tok_emb = None
            self.register_buffer("code_factors", torch.zeros(c.codebook_size, len(FACTOR_NAMES), dtype=torch.long))
            # canonical[k]: the code drawn for k's factors; only canonical codes get a logit
            self.register_buffer("code_canonical", torch.arange(c.codebook_size))
            self.factor_emb = nn.ModuleList(nn.Embedding(n, c.dim) for n in c.code_factor_sizes)
            self.factor_heads = nn.ModuleList(nn.Linear(c.dim, n, bias=False) for n in c.code_factor_sizes)
            self.start_emb = nn.Parameter(torch.zeros(c.dim))
            for m in (*self.factor_emb, *self.factor_heads):
                nn.init.normal_(m.weight, std=0.02)
            nn.init.normal_(self.start_emb, std=0.02)
            self.head = None
        else:
            self.head = nn.Linear(c.dim, c.codebook_size, bias=False)
            nn.init.normal_(self.head.weight, std=0.02)
        grid = torch.arange(c.num_codes)  # raster order: step i predicts code i
        self.register_buffer("rows", grid // c.grid_w, persistent=False)
        self.register_buffer("cols", grid % c.grid_w, persistent=False)

    # ------------------------------------------------------------------------------------------

    def teacher_forcing(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (B, N) -> the inputs (start token + every code but the last) and the targets of
        one teacher-forced forward, both (B, N)."""
        bos = torch.full_like(codes[:, :1], self.config.bos_id)
        return torch.cat([bos, codes[:, :-1]], dim=1), codes

    # ------------------------------------------------------------------------------------------

    def null_contexts(self, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The unconditional context for ``batch`` rows, padded to ``length``: states (B, L, Dc), mask (B, L)."""
        states = torch.zeros(batch, length, self.config.context_dim, dtype=self.null_context.dtype, device=self.null_context.device)
        states[:, :1] = self.null_context
        mask = torch.zeros(batch, length, dtype=torch.long, device=states.device)
        mask[:, 0] = 1
        return states, mask

    @torch.no_grad()
    def set_code_factors(self, factors: torch.Tensor, canonical: torch.Tensor) -> None:
        """Fill the "factors" description: ``factors`` (K, 3) ids and ``canonical`` (K,) codes, from
        :func:`mmgen.models.code_factors.two_tone_factors`."""
        c = self.config
        if factors.shape != self.code_factors.shape or canonical.shape != (c.codebook_size,):
            raise ValueError(f"factors {tuple(factors.shape)} / canonical {tuple(canonical.shape)} do not fit "
                             f"a {c.codebook_size}-code decoder")
        for j, (name, size) in enumerate(zip(FACTOR_NAMES, c.code_factor_sizes)):
            if int(factors[:, j].max()) >= size:
                raise ValueError(f"the VQ's codes need {int(factors[:, j].max()) + 1} {name}, but "
                                 f"code_factor_sizes allows {size}: raise model.image_decoder.code_factor_sizes")
        if bool((canonical[canonical] != canonical).any()):
            raise ValueError("canonical codes must map to themselves")
        self.code_factors.copy_(factors)
        self.code_canonical.copy_(canonical)

    def factor_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """("factors" mode) each code's input embedding (K + 1, D; the last row the start token's) and
        output row (K, D): its factors' vectors summed. Logits h . sum_j w_j[f_kj] equal the sum of
        per-factor scores, and gathering weight rows is far cheaper to train than gathering logits."""
        f = self.code_factors
        inputs = sum(emb.weight[f[:, j]] for j, emb in enumerate(self.factor_emb))
        outputs = sum(head.weight[f[:, j]] for j, head in enumerate(self.factor_heads))
        return torch.cat([inputs, self.start_emb[None]]), outputs

    def canonical_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """The codes the model draws for ``codes`` (negative ids, e.g. -100, pass through): in
        "factors" mode each code's canonical code, the only one with a logit; otherwise the same."""
        if self.config.code_embedding != "factors":
            return codes
        return torch.where(codes >= 0, self.code_canonical[codes.clamp(min=0)], codes)

    def _masked_to_canonical(self, logits: torch.Tensor) -> torch.Tensor:
        """With factors, non-canonical codes get -1e4 (finite, so guidance's cond - uncond stays 0
        for them); a table scores every code."""
        if self.config.code_embedding != "factors":
            return logits
        drawn = self.code_canonical == torch.arange(len(self.code_canonical), device=logits.device)
        return logits.masked_fill(~drawn, -1e4)

    def code_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each input token's embedding (K + 1, D; the last row the start token's) and each code's
        output row (K, D): the free tables, or with factors the factors' vectors summed."""
        if self.config.code_embedding == "factors":
            return self.factor_vectors()
        return self.trunk.tok_emb.weight, self.head.weight

    def _grid_inputs(self, codes_in: torch.Tensor, start: int, inputs: torch.Tensor):
        """Token + 2-D position embeddings for steps [start, start + T) of the raster order."""
        T = codes_in.shape[1]
        x = F.embedding(codes_in, inputs)  # (B, T, D)
        rows, cols = self.rows[start : start + T], self.cols[start : start + T]
        if self.config.grid_position == "rope":
            return x, rope_2d(rows, cols, self.config.d_head, self.config.rope_theta)
        return x + self.row_emb(rows) + self.col_emb(cols), None

    def forward(
        self,
        codes_in: torch.Tensor,
        context: torch.Tensor,
        context_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        start: int = 0,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """codes_in (B, T): start token then codes, for steps [start, start + T) of the raster
        order (:meth:`teacher_forcing` makes them from a grid of codes).

        context (B, Tc, Dc) with context_mask (B, Tc); labels (B, T) the codes to predict.
        Returns logits over the codebook (B, T, K) and the cross-entropy loss when labels are given.
        """
        if context_mask is None:
            context_mask = torch.ones(context.shape[:2], dtype=torch.long, device=context.device)
        inputs, outputs = self.code_vectors()
        x, rope = self._grid_inputs(codes_in, start, inputs)
        h = self.trunk(inputs_embeds=x, rope=rope, context=context, context_mask=context_mask, cache=cache)
        if last_only:
            h = h[:, -1:]
        logits = self._masked_to_canonical(h @ outputs.t().to(h.dtype))  # (B, T, K)
        loss = None
        if labels is not None:  # with factors, a code's target is its canonical code
            loss = F.cross_entropy(logits.reshape(-1, self.config.codebook_size).float(),
                                   self.canonical_codes(labels).reshape(-1), ignore_index=-100)
        return logits, loss
