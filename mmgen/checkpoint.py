"""Model folders: ``config.json`` + ``model.safetensors``, loaded strictly, with errors for people.

No pickles anywhere: weights are safetensors, configs JSON. Tied weights (GPT's head and token
embedding) are stored once and re-tied on load. Every failure names the file and what is wrong
with it: missing, truncated/corrupt, a missing or unexpected tensor, or a shape mismatch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save
from torch import nn

from .config import Config, ConfigError, atomic_write_bytes

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

M = TypeVar("M", bound="PretrainedMixin")


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not match the model."""


def _unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied tensors kept once (under the first name that holds them)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict().items():
        key = tensor.untyped_storage().data_ptr() if tensor.numel() else id(tensor)
        if key in seen:
            continue
        seen.add(key)
        out[name] = tensor
    return out


def save_weights(model: nn.Module, path: str | os.PathLike, dtype: Optional[torch.dtype] = None) -> None:
    """Write the model's weights to a safetensors file atomically (optionally cast, e.g. to fp16)."""
    tensors = {}
    for name, t in _unique_state_dict(model).items():
        t = t.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous()
    atomic_write_bytes(Path(path), safetensors_save(tensors, metadata={"format": "pt"}))


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read every tensor of a safetensors file, turning library errors into a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error type for truncated/corrupt headers and data
        raise CheckpointError(
            f"{path}: cannot read safetensors file (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from None


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped tensor is an error naming it."""
    expected = model.state_dict()
    unique = _unique_state_dict(model)
    tied_aliases = set(expected) - set(unique)
    missing = sorted(set(unique) - set(state))
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    for name in sorted(set(state) & set(expected)):
        if tuple(state[name].shape) != tuple(expected[name].shape):
            problems.append(
                f"shape mismatch for {name}: file has {tuple(state[name].shape)}, model expects {tuple(expected[name].shape)}"
            )
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
    state = {k: v for k, v in state.items() if k not in tied_aliases}
    result = model.load_state_dict(state, strict=False)
    still_missing = set(result.missing_keys) - tied_aliases
    if still_missing:  # cannot happen after the checks above, but never load silently
        raise CheckpointError(f"{source}: missing tensors: {', '.join(sorted(still_missing))}")


class PretrainedMixin:
    """``save_pretrained(dir)`` / ``from_pretrained(dir)`` for a module built as ``cls(config)``.

    Subclasses set ``config_class``.
    """

    config_class: type[Config]

    def save_pretrained(self, directory: str | os.PathLike, dtype: Optional[torch.dtype] = None) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.to_json(directory / CONFIG_NAME)
        save_weights(self, directory / WEIGHTS_NAME, dtype=dtype)

    @classmethod
    def from_pretrained(cls: type[M], directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> M:
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"model folder not found: {directory}")
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise CheckpointError(f"{config_path}: missing (a model folder holds config.json and model.safetensors)")
        try:
            config = cls.config_class.from_json(config_path)
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
        model = cls(config)
        weights_path = directory / WEIGHTS_NAME
        state = read_safetensors(weights_path)
        dtype = next(iter(model.parameters())).dtype
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
        load_state_strict(model, state, str(weights_path))
        return model.to(map_location)
