"""Prompt rewrites by name: what a bundle declares in ``model_index.json`` (``"prompt_rewrite"``).

A model trained on rewritten captions (``data.caption_rewrite``) must read every prompt through
the same rewrite, so the bundle names it and :class:`~mmgen.pipelines.TextToImagePipeline` looks
the name up here. The table maps each name to where its function lives (``"module:function"``),
as diffusers' ``model_index.json`` names a component's library and class: the module is imported
only when a rewrite is first used, so this registry, and the pipeline reading it, depend on no
data world (``mmgen.data`` may import ``mmgen.text``, never the other way round).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Callable

Rewrite = Callable[[str], str]

_LOCATIONS: dict[str, str] = {
    # "a red circle below a blue square" -> "a blue square above a red circle" (shapes grammar)
    "canonical_relations": "mmgen.data.shapes:canonical_caption",
}


class _Rewrites(Mapping[str, Rewrite]):
    """Name -> rewrite function, resolved on first use."""

    def __init__(self, locations: dict[str, str]) -> None:
        self._locations = locations

    def __getitem__(self, name: str) -> Rewrite:
        if name not in self._locations:
            raise KeyError(f"unknown prompt rewrite {name!r}; this mmgen knows {sorted(self._locations)}")
        module, _, function = self._locations[name].partition(":")
        return getattr(importlib.import_module(module), function)

    def __iter__(self) -> Iterator[str]:
        return iter(self._locations)

    def __len__(self) -> int:
        return len(self._locations)


PROMPT_REWRITES: Mapping[str, Rewrite] = _Rewrites(_LOCATIONS)
