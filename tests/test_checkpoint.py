"""Our own model folders: exact round trips, and errors that name the file and the tensor."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmgen.checkpoint import CheckpointError
from mmgen.config import BERTConfig, GPTConfig, TextEncoderConfig
from mmgen.models.bert import BERT
from mmgen.models.gpt import GPT
from mmgen.models.text_encoder import TextEncoder

TINY = dict(vocab_size=61, max_len=32, dim=32, n_layers=2, n_heads=4)


@pytest.mark.parametrize("cls,cfg", [(GPT, GPTConfig), (BERT, BERTConfig), (TextEncoder, TextEncoderConfig)])
def test_save_load_round_trip_is_exact(tmp_path, cls, cfg):
    torch.manual_seed(0)
    model = cls(cfg(**TINY)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    loaded = cls.from_pretrained(tmp_path).eval()
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    ids = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids)[0], loaded(ids)[0])


def test_tied_weights_stored_once_and_retied(tmp_path):
    model = GPT(GPTConfig(**TINY))
    model.save_pretrained(tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    loaded = GPT.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.trunk.tok_emb.weight


def test_fp16_storage_loads_into_fp32_model(tmp_path):
    model = GPT(GPTConfig(**TINY))
    model.save_pretrained(tmp_path, dtype=torch.float16)
    assert load_file(tmp_path / "model.safetensors")["trunk.tok_emb.weight"].dtype == torch.float16
    loaded = GPT.from_pretrained(tmp_path)
    assert loaded.trunk.tok_emb.weight.dtype == torch.float32
    assert (loaded.trunk.tok_emb.weight - model.trunk.tok_emb.weight).abs().max() < 1e-3


def test_truncated_weights_name_the_file(tmp_path):
    GPT(GPTConfig(**TINY)).save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated or corrupt"):
        GPT.from_pretrained(tmp_path)


def test_garbage_weights_name_the_file(tmp_path):
    GPT(GPTConfig(**TINY)).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        GPT.from_pretrained(tmp_path)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        GPT.from_pretrained(tmp_path / "nope")
    GPT(GPTConfig(**TINY)).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        GPT.from_pretrained(tmp_path)


def test_missing_extra_and_misshaped_tensors_are_named(tmp_path):
    GPT(GPTConfig(**TINY)).save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    good = load_file(path)

    state = dict(good)
    del state["trunk.blocks.1.ffn.fc_in.bias"]
    save_file(state, path)
    with pytest.raises(CheckpointError, match=r"missing tensors: trunk\.blocks\.1\.ffn\.fc_in\.bias"):
        GPT.from_pretrained(tmp_path)

    state = dict(good, **{"trunk.blocks.0.extra": torch.zeros(2)})
    save_file(state, path)
    with pytest.raises(CheckpointError, match=r"unexpected tensors: trunk\.blocks\.0\.extra"):
        GPT.from_pretrained(tmp_path)

    state = dict(good, **{"trunk.final_norm.weight": torch.zeros(5)})
    save_file(state, path)
    with pytest.raises(CheckpointError, match=r"shape mismatch for trunk\.final_norm\.weight"):
        GPT.from_pretrained(tmp_path)


def test_config_of_another_model_is_refused(tmp_path):
    BERT(BERTConfig(**TINY)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="BERTConfig"):
        GPT.from_pretrained(tmp_path)


def test_literal_fields_are_checked_however_a_config_is_made():
    from mmgen.config import ConfigError, ImageDecoderConfig
    from mmgen.models.vq import VQConfig

    with pytest.raises(ConfigError, match=r"TextEncoderConfig\.position: 'sideways' is not one of"):
        TextEncoderConfig(position="sideways")  # directly, not only through from_dict / YAML
    with pytest.raises(ConfigError, match=r"GPTConfig\.norm: 'batchnorm'"):
        GPTConfig(**TINY).replace(norm="batchnorm")
    with pytest.raises(ConfigError, match=r"ImageDecoderConfig\.code_embedding: 'spiral'"):
        ImageDecoderConfig(code_embedding="spiral")
    assert TextEncoderConfig(position="rope").position == "rope"
    assert VQConfig().to_dict() == VQConfig.from_dict(VQConfig().to_dict()).to_dict()  # a config's own values pass


def test_old_configs_load_and_removed_options_are_named(tmp_path):
    """A config.json written before the redesign holds every removed option at its "off" value and
    still loads; one that used a removed option is refused with its name and the commit that has it."""
    import json

    from mmgen.config import REMOVED_IN, ConfigError, ImageDecoderConfig, TextToImageConfig

    old = {**ImageDecoderConfig().to_dict(), "rel_direction_init": 0.0, "conditioning": "cross", "code_order": "raster",
           "coarse_stride": 3, "coarse_offset": None, "sketch_loss_weight": 1.0, "code_patch_dim": 192,
           "code_latent": False, "code_mlp_dim": 256}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"_class": "ImageDecoderConfig", **old}))
    assert ImageDecoderConfig.from_json(path) == ImageDecoderConfig()
    path.write_text(json.dumps({"_class": "ImageDecoderConfig", **old, "code_order": "coarse"}))
    with pytest.raises(ConfigError, match=rf"code_order='coarse'.*removed.*{REMOVED_IN}"):
        ImageDecoderConfig.from_json(path)
    with pytest.raises(ConfigError, match="model.word_order_loss_weight=0.5: this option was removed"):
        TextToImageConfig.from_dict({"word_order_loss_weight": 0.5}, _where="model")
    assert TextToImageConfig.from_dict({"word_order_loss_weight": 0.0, "context_words_dropout": 0}) == TextToImageConfig()
    with pytest.raises(ConfigError, match="rel_direction_init=2.0"):
        GPTConfig.from_dict({**TINY, "rel_direction_init": 2.0})
