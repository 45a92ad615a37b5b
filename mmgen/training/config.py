"""Experiment configs: ``model`` + ``data`` + ``train`` sections, YAML files and command-line overrides.

An experiment YAML maps 1:1 onto :class:`ExperimentConfig`::

    model:            # the fields of the kind's model config (e.g. GPTConfig), plus
      kind: gpt       # which registered model kind (see mmgen.training.registry) builds it
      dim: 192        # (vocab_size may be left out: it is then the tokenizer's size)
    data:             # the fields of the kind's data config (e.g. TextDataConfig)
      path: data/shakespeare/input.txt
    train:            # TrainConfig
      lr: 1.0e-3

``model.kind`` picks the config classes of the ``model`` and ``data`` sections, so every section
is typed and an unknown key anywhere fails with its dotted name (``train.lrr``). There are no
import paths in YAML: a kind is a name in the registry.

Overrides look like ``--train.lr=3e-4`` (or ``--train.lr 3e-4``); values are read with YAML
scalar typing (``3e-4`` is a float, ``true`` a bool, ``null`` None, ``[0.9, 0.95]`` a list).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import yaml

from mmgen.config import Config, ConfigError

__all__ = [
    "ExperimentConfig",
    "TrainConfig",
    "apply_overrides",
    "load_experiment",
    "load_yaml",
    "parse_overrides",
]

MixedPrecision = Literal["no", "bf16", "fp16", "auto"]


@dataclass(frozen=True)
class TrainConfig(Config):
    """How to train: steps, batch, optimiser, schedule, precision, logging and checkpoints."""

    output_dir: str = "runs/experiment"  # checkpoints/, model/ (the export), metrics.csv, tensorboard/
    seed: int = 1337  # model init, data order, MLM masks, dropout
    max_steps: int = 1000  # optimiser steps
    max_time_s: Optional[float] = None  # also stop after this much wall time; the cosine then runs over time
    batch_size: int = 32  # GLOBAL batch per optimiser step (all processes x accumulation steps)
    grad_accum: int = 1  # micro-steps per optimiser step on each process
    lr: float = 3e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 100  # linear warmup from 0 to lr
    weight_decay: float = 0.1  # AdamW decay, applied to >= 2-D weights only
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    # "auto": bf16 where the hardware computes it natively (trainer.native_bf16), else fp32. On a CPU with
    # AMX bf16 pays for convolutions (VQ 2x) but not small transformers; without it bf16 is emulated and
    # 8-12x slower (python scripts/bench/precision.py): measure.
    mixed_precision: MixedPrecision = "no"
    ema_decay: Optional[float] = None  # e.g. 0.999; the export then holds the EMA weights
    eval_every: int = 250  # steps between validation passes (0: only at the end)
    eval_batches: int = 20  # validation batches (of batch_size windows) per pass
    sample_every: int = 0  # steps between logged samples (0: never)
    sample_prompt: str = ""  # kind-specific: a GPT prompt, a BERT sentence with mask tokens
    sample_length: int = 200  # tokens to generate for a GPT sample
    log_every: int = 10  # steps between metric rows (CSV / TensorBoard)
    checkpoint_every: int = 500  # steps between checkpoints (0: none)
    checkpoint_limit: Optional[int] = 3  # keep this many newest checkpoints (None: all)
    max_bad_steps: int = 5  # stop after this many NaN/inf steps in a row
    num_workers: int = 0  # DataLoader worker processes per training process
    tensorboard: bool = True  # also log to TensorBoard when it is installed
    export: bool = True  # write <output_dir>/model at the end (config.json, model.safetensors, tokenizer.json)

    def __post_init__(self) -> None:
        super().__post_init__()  # Config: literal fields hold one of their values
        for name in ("max_steps", "batch_size", "grad_accum", "log_every", "max_bad_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "eval_batches", "sample_every", "checkpoint_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.checkpoint_limit is not None and self.checkpoint_limit < 1:
            raise ConfigError(f"train.checkpoint_limit must be >= 1 or null, got {self.checkpoint_limit}")
        if self.max_time_s is not None and self.max_time_s <= 0:
            raise ConfigError(f"train.max_time_s must be positive, got {self.max_time_s}")
        if self.grad_clip < 0:
            raise ConfigError(f"train.grad_clip must be >= 0, got {self.grad_clip}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"train.batch_size={self.batch_size} is not divisible by train.grad_accum={self.grad_accum}"
            )


@dataclass(frozen=True)
class ExperimentConfig(Config):
    """A whole experiment: which model kind, its config, its data, and how to train it."""

    kind: str  # registered model kind; written as ``model.kind`` in YAML
    model: Config  # the kind's model config class
    data: Config  # the kind's data config class
    train: TrainConfig = field(default_factory=TrainConfig)
    # Model fields the YAML left out that the data decides (vocab_size: the tokenizer's size).
    from_data: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any], _where: str = "") -> "ExperimentConfig":
        from mmgen.training.registry import get_kind

        if not isinstance(data, dict):
            raise ConfigError(f"an experiment config must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {"model", "data", "train"})
        if unknown:
            raise ConfigError(f"unknown key(s) for ExperimentConfig: {', '.join(unknown)}; known keys: data, model, train")
        model = dict(data.get("model") or {})
        if "kind" not in model:
            raise ConfigError("model.kind is missing: name a registered model kind (e.g. gpt, bert)")
        kind = get_kind(model.pop("kind"))
        from_data = tuple(k for k in kind.data_fields if k not in model)
        return cls(
            kind=kind.name,
            from_data=from_data,
            model=kind.config_class.from_dict(model, _where="model"),
            data=kind.data_config_class.from_dict(dict(data.get("data") or {}), _where="data"),
            train=TrainConfig.from_dict(dict(data.get("train") or {}), _where="train"),
        )

    def to_dict(self) -> dict[str, Any]:
        model = {k: v for k, v in self.model.to_dict().items() if k not in self.from_data}
        return {
            "model": {"kind": self.kind, **model},
            "data": self.data.to_dict(),
            "train": self.train.to_dict(),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)


# --------------------------------------------------------------------------------------
# YAML with the float rule people expect
# --------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 habits: ``3e-4`` is a float (1.1 wants ``3.0e-4``), and only
    true/false are booleans (1.1 also reads ``no``, ``off``, ``yes``, ``on``; ``mixed_precision: no``
    must stay the string "no")."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """A command-line value with YAML scalar typing (``3e-4`` float, ``true``, ``null``, ``[1, 2]``)."""
    try:
        return yaml.load(text, Loader=_Loader) if text != "" else ""
    except yaml.YAMLError:
        return text


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``["--train.lr=3e-4", "--model.dim", "128"]`` -> ``{"train.lr": 3e-4, "model.dim": 128}``."""
    out: dict[str, Any] = {}
    i = 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}: overrides look like --section.key=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"override --{key} has no value: write --{key}=VALUE")
            value = args[i + 1]
            i += 1
        if "." not in key:
            raise ConfigError(f"override --{key}: name a section and a key, e.g. --train.{key}=...")
        out[key] = parse_value(value)
        i += 1
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with dotted keys set (``{"train.lr": 1e-3}``); sections are created as needed."""
    out = _deep_copy(data)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def load_experiment(path: str | Path | None, overrides: Sequence[str] | dict[str, Any] = ()) -> ExperimentConfig:
    """Load a YAML experiment (or start from nothing with ``path=None``) and apply overrides."""
    data = load_yaml(path) if path is not None else {}
    if not isinstance(overrides, dict):
        overrides = parse_overrides(overrides)
    data = apply_overrides(data, overrides)
    try:
        return ExperimentConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _plain(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(v) for v in data]
    return data
