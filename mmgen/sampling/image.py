"""Sampling VQ codes from the image decoder: prefill, then one code per step on a KV cache.

Classifier-free guidance runs the conditional and unconditional rows as one doubled batch, so
each step is a single forward. With ``guidance_scale == 1`` the unconditional half is skipped
entirely (it would not change the result).
"""

from __future__ import annotations

import threading
from typing import Callable, Optional, Sequence

import torch

from ..nn.kv_cache import KVCache
from .processors import SamplingParams, decode_step, draw, guidance, process

# callback(number of codes sampled so far, codes (B, N) with the unsampled tail set to -1)
CodesCallback = Callable[[int, torch.Tensor], None]


class Cancelled(RuntimeError):
    """Sampling was stopped by its cancel flag."""

    def __init__(self, step: int):
        super().__init__(f"generation cancelled after {step} codes")
        self.step = step


@torch.inference_mode()
def sample_image_codes(
    decoder,
    context: torch.Tensor,
    context_mask: torch.Tensor,
    params: SamplingParams,
    guidance_scale: float = 1.0,
    uncond_context: Optional[torch.Tensor] = None,
    uncond_mask: Optional[torch.Tensor] = None,
    generators: Optional[Sequence[torch.Generator]] = None,
    prefix_codes: Optional[torch.Tensor] = None,
    callback: Optional[CodesCallback] = None,
    callback_every: int = 8,
    cancel: Optional[threading.Event] = None,
    compile: bool = False,
) -> torch.Tensor:
    """Sample a full code grid for each row of ``context`` (B, Tc, Dc); returns codes (B, N).

    ``uncond_context``/``uncond_mask`` are the guidance's unconditional branch (a negative
    prompt's states); by default the decoder's learned null context. ``prefix_codes`` (B, k),
    the first k codes, are kept as they are and sampling continues after them (image
    completion). ``compile`` runs the decode steps through ``torch.compile``
    (:func:`mmgen.sampling.processors.decode_step`). Returns codes (B, N) in raster order.
    """
    cfg = decoder.config
    B, N = context.shape[0], cfg.num_codes
    use_cfg = guidance_scale != 1.0
    if use_cfg:
        if uncond_context is None:
            uncond_context, uncond_mask = decoder.null_contexts(B, context.shape[1])
        L = max(context.shape[1], uncond_context.shape[1])
        context = torch.cat([_pad_to(context, L), _pad_to(uncond_context.to(context.dtype), L)])  # (2B, L, Dc)
        context_mask = torch.cat([_pad_to(context_mask, L), _pad_to(uncond_mask, L)])
    rows = context.shape[0]

    codes = torch.full((B, N), -1, dtype=torch.long, device=context.device)  # -1: not sampled yet
    p = 0 if prefix_codes is None else prefix_codes.shape[1]
    if p >= N:
        raise ValueError(f"nothing to sample: {p} codes kept of {N}")
    if p:
        codes[:, :p] = prefix_codes
    bos = torch.full((B, 1), cfg.bos_id, dtype=torch.long, device=context.device)
    first = torch.cat([bos, codes[:, :p]], dim=1)  # (B, p + 1): start token + kept codes, one prefill
    dtype = next(decoder.parameters()).dtype
    cache = KVCache.for_config(cfg, rows, max_len=N, dtype=dtype, device=context.device)
    logits, _ = decoder(first.repeat(rows // B, 1), context, context_mask, cache=cache, start=0, last_only=True)
    step_decoder = decode_step(decoder, compile)
    for i in range(p, N):
        if cancel is not None and cancel.is_set():
            raise Cancelled(i)
        step_logits = logits[:, -1].float()  # (rows, K); guidance in fp32 whatever the model dtype
        if use_cfg:
            step_logits = guidance(step_logits[:B], step_logits[B:], guidance_scale)
        token = draw(process(step_logits, params), params, generators)  # (B,)
        codes[:, i] = token
        if callback is not None and ((i + 1 - p) % callback_every == 0 or i == N - 1):
            callback(i + 1, codes.clone())
        if i < N - 1:
            logits, _ = step_decoder(token[:, None].repeat(rows // B, 1), context, context_mask, cache=cache, start=i + 1, last_only=True)
    return codes


def _pad_to(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad dim 1 of (B, T, ...) to ``length``."""
    if x.shape[1] == length:
        return x
    pad = torch.zeros((x.shape[0], length - x.shape[1], *x.shape[2:]), dtype=x.dtype, device=x.device)
    return torch.cat([x, pad], dim=1)
