"""AdamW with decay only on matrices, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from mmgen.training.config import TrainConfig

__all__ = ["build_optimizer", "lr_at", "param_groups"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weights with >= 2 dims (linear, embedding) decay; biases and norm gains do not.

    Tied parameters (GPT's head and token embedding) appear once.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters() already skips tied duplicates
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps
    )


def lr_at(cfg: TrainConfig, step: int, elapsed_s: Optional[float] = None) -> float:
    """The learning rate of optimiser step ``step`` (0-based): linear warmup, then cosine to ``lr * min_lr_ratio``.

    The cosine's progress is ``step / max_steps``; with ``max_time_s`` set it is the larger of
    that and ``elapsed_s / max_time_s`` (a schedule over wall time, for fixed-budget runs).
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = (step - cfg.warmup_steps) / span
    if cfg.max_time_s is not None and elapsed_s is not None:
        progress = max(progress, elapsed_s / cfg.max_time_s)
    progress = min(max(progress, 0.0), 1.0)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))
