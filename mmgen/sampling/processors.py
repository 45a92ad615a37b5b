"""Logits processors: pure functions from logits (B, V) to logits (B, V), and the final draw.

They compose in the order transformers uses: repetition penalty, guidance, temperature,
top-k, top-p, then a draw. Keeping them pure makes each one testable on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch


@dataclass(frozen=True)
class SamplingParams:
    """What a user chooses for sampling; validated once at the boundary."""

    temperature: float = 1.0  # 0 means greedy (argmax)
    top_k: Optional[int] = None  # keep the k most likely tokens (None or 0: all)
    top_p: Optional[float] = None  # keep the smallest set whose probability reaches p (None or 1: all)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already present (CTRL / transformers style)

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or math.isnan(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.temperature > 100:
            raise ValueError(f"temperature must be <= 100, got {self.temperature}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            raise ValueError(f"top_k must be a non-negative integer (0 = off), got {self.top_k}")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (self.repetition_penalty > 0) or self.repetition_penalty > 10:
            raise ValueError(f"repetition_penalty must be in (0, 10], got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def repetition_penalty(logits: torch.Tensor, previous: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive (multiply negative) logits of tokens in ``previous`` (B, T) by ``penalty``."""
    if penalty == 1.0 or previous.numel() == 0:
        return logits
    scores = logits.gather(1, previous)
    scores = torch.where(scores < 0, scores * penalty, scores / penalty)
    return logits.scatter(1, previous, scores)


def guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: move from the unconditional towards the conditional logits."""
    if scale == 1.0:
        return cond
    return uncond + scale * (cond - uncond)


def top_k_filter(logits: torch.Tensor, k: Optional[int]) -> torch.Tensor:
    if not k or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: Optional[float]) -> torch.Tensor:
    """Nucleus filtering: keep the most likely tokens until their probability reaches ``p`` (at least one)."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    # drop a token when the tokens before it already reach p; the first token is always kept
    drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def process(logits: torch.Tensor, params: SamplingParams, previous: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Apply penalty, temperature, top-k and top-p in that order (float32 for stable softmax)."""
    logits = logits.float()
    if previous is not None:
        logits = repetition_penalty(logits, previous, params.repetition_penalty)
    if params.greedy:
        return logits
    if params.temperature != 1.0:
        logits = logits / params.temperature
    return top_p_filter(top_k_filter(logits, params.top_k), params.top_p)


def draw(logits: torch.Tensor, params: SamplingParams, generators: Optional[Sequence[torch.Generator]] = None) -> torch.Tensor:
    """Pick one token per row (B,) from processed logits.

    Each row draws from its own generator (one uniform number by inverse CDF), so a row's result
    does not depend on which other rows share its batch.
    """
    if params.greedy:
        return logits.argmax(-1)
    probs = logits.softmax(-1)  # (B, V)
    if generators is None:
        u = torch.rand(probs.size(0), 1, device=probs.device)
    else:
        u = torch.stack([torch.rand((), generator=g) for g in generators]).to(probs.device)[:, None]
    cdf = probs.cumsum(-1)
    u = u * cdf[:, -1:]  # guards against the sum being a hair below 1
    return torch.searchsorted(cdf, u).clamp(max=probs.size(-1) - 1).squeeze(1)


_COMPILED_FORWARD: dict[type, Callable] = {}


def decode_step(model, compile: bool = False) -> Callable:
    """What a sampling loop calls for its one-token decode steps: ``model`` itself, or with
    ``compile`` its forward through ``torch.compile`` (dynamic shapes, so the cache length growing
    by one each step does not recompile). The compiled function is kept per model class (it
    takes the module as its first argument), so compiling once serves every later call and no
    model is kept alive by the cache. The prefill stays eager: it runs once per call.
    """
    if not compile:
        return model
    cls = type(model)
    if cls not in _COMPILED_FORWARD:
        _COMPILED_FORWARD[cls] = torch.compile(cls.forward, dynamic=True)
    forward = _COMPILED_FORWARD[cls]
    return lambda *args, **kwargs: forward(model, *args, **kwargs)


def make_generators(seed: int, n: int) -> list[torch.Generator]:
    """Per-sample CPU generators: row i uses ``seed + i`` (diffusers' habit)."""
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]
