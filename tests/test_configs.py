"""The shipped YAML experiments hold only what differs from the dataclass defaults (the recipe)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mmgen.config import Config
from mmgen.training.config import TrainConfig, load_yaml
from mmgen.training.registry import get_kind

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
ALWAYS_NAMED = {"data.path"}  # where the data lives is said even when it is the default place


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def values_equal_to_defaults(cls: type[Config], section: dict, where: str) -> list[str]:
    """Dotted keys of ``section`` whose value is the default of ``cls`` (nested configs included)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    found = []
    for key, value in section.items():
        if key not in fields:
            continue  # unknown keys are the config loader's error, tested elsewhere
        default = _default(fields[key])
        if isinstance(default, Config) and isinstance(value, dict):
            found += values_equal_to_defaults(type(default), value, f"{where}.{key}")
        elif default is not dataclasses.MISSING and (value == default or isinstance(default, tuple) and list(default) == value):
            found.append(f"{where}.{key}={value!r}")
    return [k for k in found if k.split("=")[0] not in ALWAYS_NAMED]


def test_the_check_finds_a_repeated_default():
    from mmgen.config import TextToImageConfig

    section = {"text_encoder": {"n_layers": 2, "dim": 64}, "image_decoder": {"caption_dropout": 0.1}}
    assert values_equal_to_defaults(TextToImageConfig, section, "model") == [
        "model.text_encoder.n_layers=2", "model.image_decoder.caption_dropout=0.1"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_holds_only_what_differs_from_the_defaults(path):
    data = load_yaml(path)
    model = dict(data.get("model") or {})
    kind = get_kind(model.pop("kind"))
    repeated = (values_equal_to_defaults(kind.config_class, model, "model")
                + values_equal_to_defaults(kind.data_config_class, data.get("data") or {}, "data")
                + values_equal_to_defaults(TrainConfig, data.get("train") or {}, "train"))
    assert not repeated, f"{path.name} repeats the defaults: {repeated}"


def test_named_sizes_fill_width_depth_and_heads_under_the_keys_given():
    from mmgen.config import T2I_SIZES, ConfigError, TextToImageConfig

    tiny = TextToImageConfig.from_dict({"size": "tiny"})
    assert tiny == TextToImageConfig()  # the default is the shipped bundle's size
    base = TextToImageConfig.from_dict({"size": "base", "image_decoder": {"n_layers": 2}})
    dim, n_layers, n_heads = T2I_SIZES["base"]["text_encoder"]
    assert (base.text_encoder.dim, base.text_encoder.n_layers, base.text_encoder.n_heads) == (dim, n_layers, n_heads)
    assert base.image_decoder.context_dim == dim  # the decoder reads the encoder it is sized with
    assert (base.image_decoder.dim, base.image_decoder.n_layers) == (T2I_SIZES["base"]["image_decoder"][0], 2)
    assert "size" not in base.to_dict()  # a saved config.json holds the values, not the name
    with pytest.raises(ConfigError, match="model.size: 'huge'"):
        TextToImageConfig.from_dict({"size": "huge"})
