"""What a model kind is to the trainer: :class:`ModelKind` (its config classes and builders) and
:class:`TrainingData` (what its data builder hands the trainer).

This module imports nothing else of :mod:`mmgen.training`, so the kinds' modules
(``text_kinds``, ``image_kinds``), the registry that lists them and the trainer can all import it
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from mmgen.config import Config

__all__ = ["ModelKind", "TrainingData"]


@dataclass
class TrainingData:
    """What a model kind's data builder hands the trainer."""

    train: Dataset  # map-style; item -> dict of arrays, batched by collate_fn into model(**batch)
    val: Optional[Dataset] = None
    collate_fn: Callable[[list], dict[str, torch.Tensor]] = default_collate
    tokenizer: Any = None  # saved next to the exported model (tokenizer.json) when given
    sample_fn: Optional[Callable[..., str]] = None  # (model, data, train_config, generator) -> text to log
    unit: str = "tokens"  # what the throughput counts: "tokens" (input_ids) or "samples"
    info: dict[str, Any] = field(default_factory=dict)  # logged once at the start (corpus sizes, ...)
    model_fields: dict[str, Any] = field(default_factory=dict)  # what the data says the model needs (vocab_size)
    prepare_model: Optional[Callable[[nn.Module], None]] = None  # fills what the data knows into a fresh model


@dataclass(frozen=True)
class ModelKind:
    """One ``model.kind`` of an experiment YAML: the classes of its ``model`` and ``data`` sections and
    how to build a fresh model and its data from them. Model and data modules are imported inside
    the builders, so reading a config never imports model code."""

    name: str
    config_class: type[Config]  # the ``model`` section
    data_config_class: type[Config]  # the ``data`` section
    build_model: Callable[[Config], nn.Module]  # model config -> fresh model
    build_data: Callable[[Config, Config, int], TrainingData]  # (data config, model config, seed) -> data
    data_fields: tuple[str, ...] = ()  # model fields the data can decide when the YAML leaves them out
