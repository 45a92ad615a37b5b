"""Text generation for GPT: one prefill over the prompt, then one-token decode steps on a KV cache."""

from __future__ import annotations

import threading
from typing import Callable, Optional, Sequence

import torch

from ..nn.kv_cache import KVCache
from .processors import SamplingParams, decode_step, draw, make_generators, process

StepCallback = Callable[[int, torch.Tensor], None]


def _check_lengths(input_ids: torch.Tensor, max_new_tokens: int, max_len: int) -> None:
    """Refuse a batch that is not (B, T), or a prompt whose new tokens would run past the model's positions."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if input_ids.dim() != 2 or input_ids.size(1) == 0:
        raise ValueError("input_ids must be (batch, length) with at least one token per row")
    T = input_ids.size(1)
    if T + max_new_tokens > max_len:
        raise ValueError(f"prompt ({T} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's {max_len} positions")


def _padding(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], max_new_tokens: int):
    """The mask over prompt + new tokens (B, T + n), the prompt's positions (B, T) and the first
    new token's (B, 1), for left-padded prompts; three Nones when no row is padded.

    Positions count from each row's first real token, so a padded prompt is read as if alone.
    """
    if attention_mask is None or bool(attention_mask.all()):
        return None, None, None  # no padding: skip masks entirely (faster kernels)
    B, T = input_ids.shape
    mask = torch.ones(B, T + max_new_tokens, dtype=torch.long, device=input_ids.device)
    mask[:, :T] = attention_mask
    positions = (attention_mask.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
    return mask, positions, positions[:, -1:] + 1


@torch.inference_mode()
def generate(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    repetition_penalty: float = 1.0,
    eos_token_id: Optional[int] = None,
    pad_token_id: int = 0,
    attention_mask: Optional[torch.Tensor] = None,
    seed: Optional[int] = None,
    generators: Optional[Sequence[torch.Generator]] = None,
    callback: Optional[StepCallback] = None,
    cancel: Optional[threading.Event] = None,
    compile: bool = False,
) -> torch.Tensor:
    """Sample up to ``max_new_tokens`` after each prompt row; returns the new tokens (B, n).

    Prompts of different lengths are passed left-padded with ``attention_mask`` (B, T) marking
    real tokens; positions then count from each row's first real token. A row that emits
    ``eos_token_id`` is finished: it gets ``pad_token_id`` afterwards and the loop stops when all
    rows are finished. ``callback(step, new_tokens)`` runs after every step (streaming);
    ``cancel`` (a threading.Event) is checked before every step and ends the loop early.
    ``compile`` runs the decode steps through ``torch.compile`` (see :func:`decode_step`).
    """
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
    _check_lengths(input_ids, max_new_tokens, model.config.max_len)
    B, T = input_ids.shape
    device = input_ids.device
    if generators is None and seed is not None:
        generators = make_generators(seed, B)
    mask, positions, next_position = _padding(input_ids, attention_mask, max_new_tokens)

    # Prefill: the whole prompt in one forward pass fills the cache and gives the first logits.
    dtype = next(model.parameters()).dtype
    cache = KVCache.for_config(model.config, B, max_len=T + max_new_tokens, dtype=dtype, device=device)
    logits, _ = model(
        input_ids, attention_mask=None if mask is None else mask[:, :T], position_ids=positions, cache=cache, last_only=True
    )
    # Decode: one token per step, each step reading the cache instead of the whole sequence.
    step_model = decode_step(model, compile)
    out = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    history = input_ids  # tokens seen so far, for the repetition penalty
    # Only track finished rows when there is an EOS to finish on: the check reads a tensor back
    # into Python (a device sync on GPU) and costs a few ops per step.
    finished = torch.zeros(B, dtype=torch.bool, device=device) if eos_token_id is not None else None
    for step in range(max_new_tokens):
        if cancel is not None and cancel.is_set():
            return out[:, :step]
        token = draw(process(logits[:, -1], params, history if repetition_penalty != 1.0 else None), params, generators)
        if finished is not None:
            token = token.masked_fill(finished, pad_token_id)
            finished |= token == eos_token_id
        out[:, step] = token
        if callback is not None:
            callback(step, out[:, : step + 1])
        if step == max_new_tokens - 1 or (finished is not None and bool(finished.all())):
            return out[:, : step + 1]
        if repetition_penalty != 1.0:
            history = torch.cat([history, token[:, None]], dim=1)
        step_mask = None if mask is None else mask[:, : T + step + 1]
        logits, _ = step_model(token[:, None], attention_mask=step_mask, position_ids=next_position, cache=cache, last_only=True)
        if next_position is not None:
            next_position = next_position + 1
    return out
