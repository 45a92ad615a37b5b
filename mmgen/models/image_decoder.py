"""The image decoder: a causal transformer over VQ codes, conditioned on text.

Codes are generated in the order :func:`generation_order` gives (raster, or a coarse sketch
first). Input at step i is the previous code (or the start token at i = 0) plus the 2-D position
of the code it must predict (and, in a non-raster order, the position of the code it holds); the
output at i is a distribution over the codebook for code i. :meth:`ImageDecoder.teacher_forcing`
turns a grid of codes into the inputs and targets of a training step, so callers never handle
the order themselves.
The text arrives through cross-attention (default) or as a prefix of projected encoder states.
A learned *null context* stands in for the text when a caption is dropped in training, and is
the unconditional branch of classifier-free guidance when sampling.

How a code is represented in and out is a config choice (``code_embedding``): a free vector and
output row per code ("table"), an MLP of its decoded pixels ("pixels"), or the sum of vectors
for its two-tone factors, dark colour, light colour and bitmap ("factors",
:mod:`mmgen.models.code_factors`), which lets the model draw codes it never saw as targets.
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


def generation_order(config: ImageDecoderConfig) -> torch.Tensor:
    """(N,) grid positions (raster indices) in the order the decoder generates them.

    "raster": 0, 1, ..., N - 1. "coarse": first the sketch, the positions whose row and column
    are ``coarse_offset`` modulo ``coarse_stride`` (by default the centre of each block), row by
    row, then every other one row by row.
    """
    index = torch.arange(config.num_codes)
    sketch = sketch_mask(config)
    return torch.cat([index[sketch], index[~sketch]])


def sketch_mask(config: ImageDecoderConfig) -> torch.Tensor:
    """(N,) bool in grid order: the codes of the coarse order's sketch (none in raster order)."""
    c = config
    index = torch.arange(c.num_codes)
    if c.code_order == "raster":
        return torch.zeros(c.num_codes, dtype=torch.bool)
    s = c.coarse_stride
    dr, dc = c.coarse_offset if c.coarse_offset is not None else (s // 2, s // 2)
    return (index // c.grid_w % s == dr) & (index % c.grid_w % s == dc)


class ImageDecoder(PretrainedMixin, nn.Module):
    config_class = ImageDecoderConfig

    def __init__(self, config: ImageDecoderConfig):
        super().__init__()
        c = self.config = config
        cross = c.conditioning == "cross"
        self.trunk = Transformer(c, context_dim=c.context_dim if cross else None)
        if c.grid_position == "learned":
            self.row_emb = nn.Embedding(c.grid_h, c.dim)
            self.col_emb = nn.Embedding(c.grid_w, c.dim)
            nn.init.normal_(self.row_emb.weight, std=0.02)
            nn.init.normal_(self.col_emb.weight, std=0.02)
        if not cross:
            self.prefix_proj = nn.Linear(c.context_dim, c.dim)
        self.null_context = nn.Parameter(torch.randn(1, 1, c.context_dim) * 0.02)  # (1, 1, Dc)
        if c.code_embedding == "pixels":
            # codes are described by what they look like: the VQ's decoded patch of each code
            # (set_code_pixels; saved with the weights) through one MLP, used for input and output
            self.trunk.tok_emb = None
            self.register_buffer("code_pixels", torch.zeros(c.codebook_size, c.code_patch_dim))
            self.code_mlp = nn.Sequential(nn.Linear(c.code_patch_dim, c.code_mlp_dim), nn.GELU(),
                                          nn.Linear(c.code_mlp_dim, c.dim), nn.LayerNorm(c.dim))
            # plus a free vector per input token (the start token's only one): it speeds up learning
            # and cannot hold an unseen code back, since only the output side scores codes
            self.code_in = nn.Embedding(c.vocab_size, c.dim)
            nn.init.normal_(self.code_in.weight, std=0.02)
            self.head = None
            self._table_cache: Optional[tuple[tuple, torch.Tensor]] = None
        elif c.code_embedding == "factors":
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
        order = generation_order(c)
        self.sketch_len = int(sketch_mask(c).sum())  # the first sketch_len steps draw the sketch
        rows, cols = order // c.grid_w, order % c.grid_w  # of the code predicted at each step
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.in_row_emb = self.in_col_emb = None
        if c.code_order != "raster":
            # out of raster order the code an input holds is not simply the one before its target:
            # its own position is added (row/column grid_h/grid_w: the start token, no position)
            self.in_row_emb = nn.Embedding(c.grid_h + 1, c.dim)
            self.in_col_emb = nn.Embedding(c.grid_w + 1, c.dim)
            nn.init.normal_(self.in_row_emb.weight, std=0.02)
            nn.init.normal_(self.in_col_emb.weight, std=0.02)
            self.register_buffer("in_rows", torch.cat([torch.tensor([c.grid_h]), rows[:-1]]), persistent=False)
            self.register_buffer("in_cols", torch.cat([torch.tensor([c.grid_w]), cols[:-1]]), persistent=False)

    # ------------------------------------------------------------------------------------------

    def teacher_forcing(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (B, N) in grid (raster) order -> the inputs (start token + every code but the
        last) and the targets of one teacher-forced forward, both (B, N) in generation order."""
        seq = codes[:, self.order]
        bos = torch.full_like(seq[:, :1], self.config.bos_id)
        return torch.cat([bos, seq[:, :-1]], dim=1), seq

    def to_grid(self, seq: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """The inverse of the generation order along ``dim``: values per step -> per grid position."""
        return torch.empty_like(seq).index_copy_(dim, self.order, seq)

    # ------------------------------------------------------------------------------------------

    def null_contexts(self, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The unconditional context for ``batch`` rows, padded to ``length``: states (B, L, Dc), mask (B, L)."""
        states = torch.zeros(batch, length, self.config.context_dim, dtype=self.null_context.dtype, device=self.null_context.device)
        states[:, :1] = self.null_context
        mask = torch.zeros(batch, length, dtype=torch.long, device=states.device)
        mask[:, 0] = 1
        return states, mask

    @torch.no_grad()
    def set_code_pixels(self, vq) -> None:
        """Fill ``code_pixels`` from a VQ: each code decoded alone (a 3 x 3 grid of it, centre patch)."""
        c, f = self.config, vq.config.downsample
        size = 3 * f * f + (vq.config.code_dim if c.code_latent else 0)
        if vq.config.codebook_size != c.codebook_size or size != c.code_patch_dim:
            raise ValueError(f"the VQ ({vq.config.codebook_size} codes, {f}x{f} patches) does not fit this decoder "
                             f"(codebook_size={c.codebook_size}, code_patch_dim={c.code_patch_dim}, needs {size})")
        codes = torch.arange(c.codebook_size, device=self.code_pixels.device)[:, None, None].expand(-1, 3, 3)
        pixels = torch.cat([vq.decode(chunk) for chunk in codes.split(256)])  # (K, 3, 3f, 3f)
        features = [pixels[:, :, f : 2 * f, f : 2 * f].reshape(c.codebook_size, -1).float()]
        if c.code_latent:
            features.append(vq.quantizer.normalized_codebook().to(features[0]))
        self.code_pixels.copy_(torch.cat(features, dim=1))

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
        """Non-canonical codes get -1e4 (finite, so guidance's cond - uncond stays 0 for them)."""
        drawn = self.code_canonical == torch.arange(len(self.code_canonical), device=logits.device)
        return logits.masked_fill(~drawn, -1e4)

    def code_vectors(self) -> torch.Tensor:
        """(K, D): each code's vector, the input embedding and the output row ("pixels" mode).
        Cached outside training while the weights are unchanged (decode steps would redo it)."""
        if self.training or torch.is_grad_enabled():
            return self.code_mlp(self._standard_pixels())
        key = tuple((p.data_ptr(), p._version) for p in self.code_mlp.parameters()) + (self.code_pixels._version,)
        if self._table_cache is None or self._table_cache[0] != key:
            self._table_cache = (key, self.code_mlp(self._standard_pixels()))
        return self._table_cache[1]

    def _standard_pixels(self) -> torch.Tensor:
        """Each pixel value standardised over the codebook: most patches are mostly background, and
        raw values left their vectors nearly alike at the start (training was ~3x slower)."""
        p = self.code_pixels
        return (p - p.mean(0)) / (p.std(0) + 0.05)

    def _grid_inputs(self, codes_in: torch.Tensor, start: int, vectors: Optional[torch.Tensor] = None):
        """Token + 2-D position embeddings for steps [start, start + T) of the generation order."""
        T = codes_in.shape[1]
        if self.config.code_embedding == "factors":
            x = F.embedding(codes_in, vectors)
        elif vectors is None:
            x = self.trunk.tok_emb(codes_in)  # (B, T, D)
        else:  # the start token has no patch: a zero row after the K code vectors
            table = F.pad(vectors, (0, 0, 0, 1))
            x = F.embedding(codes_in, table) + self.code_in(codes_in)
        rows, cols = self.rows[start : start + T], self.cols[start : start + T]
        if self.in_row_emb is not None:
            x = x + self.in_row_emb(self.in_rows[start : start + T]) + self.in_col_emb(self.in_cols[start : start + T])
        rope = None
        if self.config.grid_position == "learned":
            x = x + self.row_emb(rows) + self.col_emb(cols)
        else:
            rope = rope_2d(rows, cols, self.config.d_head, self.config.rope_theta)
        return x, rope

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
        """codes_in (B, T): start token then codes, for steps [start, start + T) of the generation
        order (:meth:`teacher_forcing` makes them from a grid of codes).

        context (B, Tc, Dc) with context_mask (B, Tc); labels (B, T) the codes to predict.
        Returns logits over the codebook (B, T, K) and the cross-entropy loss when labels are given.
        """
        c = self.config
        B = codes_in.shape[0]
        if context_mask is None:
            context_mask = torch.ones(context.shape[:2], dtype=torch.long, device=context.device)
        vectors = out_rows = None
        if c.code_embedding == "pixels":
            vectors = self.code_vectors()
        elif c.code_embedding == "factors":
            vectors, out_rows = self.factor_vectors()
        x, rope = self._grid_inputs(codes_in, start, vectors)
        if c.conditioning == "cross":
            h = self.trunk(inputs_embeds=x, rope=rope, context=context, context_mask=context_mask, cache=cache)
        else:
            h = self._forward_prefix(x, rope, context, context_mask, cache, start)
        if last_only:
            h = h[:, -1:]
        if c.code_embedding == "factors":
            logits = self._masked_to_canonical(h @ out_rows.t().to(h.dtype))
        else:
            logits = self.head(h) if vectors is None else h @ vectors.t().to(h.dtype)  # (B, T, K)
        loss = None
        if labels is not None:
            labels = self.canonical_codes(labels)  # with factors, a code's target is its canonical code
            loss = F.cross_entropy(logits.reshape(-1, c.codebook_size).float(), labels.reshape(-1), ignore_index=-100,
                                   reduction="mean" if c.sketch_loss_weight == 1.0 else "none")
            if c.sketch_loss_weight != 1.0:  # a weighted mean: sketch codes count sketch_loss_weight times
                weight = torch.where(torch.arange(start, start + labels.shape[1], device=labels.device) < self.sketch_len,
                                     c.sketch_loss_weight, 1.0).expand_as(labels) * (labels != -100)
                loss = (loss.view_as(labels) * weight).sum() / weight.sum().clamp(min=1e-8)
        return logits, loss

    def _forward_prefix(self, x, rope, context, context_mask, cache, start):
        """Prefix conditioning: [projected text states | grid tokens] through one causal stack."""
        B, T, _ = x.shape
        L = self.config.context_len
        if context.shape[1] > L:
            raise ValueError(f"context of {context.shape[1]} tokens is longer than context_len={L}")
        pad = L - context.shape[1]
        # the prefix always spans context_len positions, so grid position i sits at L + i
        context = F.pad(context, (0, 0, 0, pad))
        context_mask = F.pad(context_mask, (0, pad))
        grid_mask = torch.ones(B, start + T, dtype=context_mask.dtype, device=x.device)
        mask = torch.cat([context_mask, grid_mask], dim=1)  # (B, L + start + T)
        if rope is not None:  # prefix positions get no rotation (angle 0)
            cos, sin = rope
            rope = (F.pad(cos, (0, 0, L, 0), value=1.0), F.pad(sin, (0, 0, L, 0)))
        if cache is None or cache.pos == 0:
            x = torch.cat([self.prefix_proj(context), x], dim=1)
            h = self.trunk(inputs_embeds=x, rope=rope, attention_mask=mask, cache=cache)
            return h[:, L:]
        if rope is not None:
            rope = (rope[0][:, L:], rope[1][:, L:])
        return self.trunk(inputs_embeds=x, rope=rope, attention_mask=mask, cache=cache)

    def cache_len(self) -> int:
        """Positions a full-image KV cache needs."""
        c = self.config
        return c.num_codes + (c.context_len if c.conditioning == "prefix" else 0)
