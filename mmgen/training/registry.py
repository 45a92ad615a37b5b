"""Model kinds the trainer knows: ``model.kind`` -> :class:`~mmgen.training.kind.ModelKind`.

``model.kind`` in an experiment YAML is looked up in :data:`KINDS`; nothing in a YAML file is an
import path. A new model kind is a ``ModelKind`` in its own module (as ``text_kinds`` and
``image_kinds``), added to the dict below::

    ModelKind(name="vq", config_class=VQConfig, data_config_class=ShapesImagesDataConfig,
              build_model=_build_vq,         # model config -> fresh model
              build_data=_build_vq_data)     # (data_cfg, model_cfg, seed) -> TrainingData

The kinds' modules never import this one: the dict is built here, from them.
"""

from __future__ import annotations

from mmgen.config import ConfigError
from mmgen.training.image_kinds import T2I_KIND, VQ_KIND
from mmgen.training.kind import ModelKind
from mmgen.training.text_kinds import BERT_KIND, GPT_KIND

__all__ = ["KINDS", "ModelKind", "get_kind", "kinds"]

KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (GPT_KIND, BERT_KIND, VQ_KIND, T2I_KIND)}


def get_kind(name: str) -> ModelKind:
    if name not in KINDS:
        raise ConfigError(f"model.kind: unknown kind {name!r}; known kinds: {', '.join(sorted(KINDS))}")
    return KINDS[name]


def kinds() -> list[str]:
    return sorted(KINDS)
