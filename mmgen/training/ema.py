"""Exponential moving average of a model's floating-point parameters and buffers."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["EMA"]


class EMA:
    """``shadow = decay * shadow + (1 - decay) * param`` after every optimiser step, kept in fp32.

    The effective decay warms up as ``min(decay, (1 + n) / (10 + n))`` so early averages are not
    dominated by the random init. ``swapped_into(model)`` temporarily puts the averages into a
    model (for evaluation and export).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: t.detach().float().clone() for name, t in self._tensors(model)
        }

    @staticmethod
    def _tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
        """Floating-point parameters and buffers, tied tensors once."""
        seen: set[int] = set()
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_floating_point() and id(t) not in seen:
                seen.add(id(t))
                yield name, t

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for name, t in self._tensors(model):
            self.shadow[name].lerp_(t.detach().float(), 1.0 - decay)

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block, ``model`` holds the EMA weights; its own weights come back afterwards."""
        backup = {}
        with torch.no_grad():
            for name, t in self._tensors(model):
                backup[name] = t.detach().clone()
                t.copy_(self.shadow[name].to(t.dtype))
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, t in self._tensors(model):
                    t.copy_(backup[name])

    def save(self, path: Path) -> None:
        save_file({k: v.contiguous() for k, v in self.shadow.items()}, str(path),
                  metadata={"decay": repr(self.decay), "num_updates": str(self.num_updates)})

    def load(self, path: Path) -> None:
        from safetensors import safe_open

        tensors = load_file(str(path))
        if set(tensors) != set(self.shadow):
            missing = sorted(set(self.shadow) - set(tensors))
            unexpected = sorted(set(tensors) - set(self.shadow))
            raise ValueError(f"{path}: EMA tensors do not match the model (missing {missing}, unexpected {unexpected})")
        with safe_open(str(path), framework="pt") as f:
            self.num_updates = int(f.metadata()["num_updates"])
        for name, t in tensors.items():
            if t.shape != self.shadow[name].shape:
                raise ValueError(f"{path}: EMA tensor {name} has shape {tuple(t.shape)}, the model {tuple(self.shadow[name].shape)}")
            self.shadow[name].copy_(t)
