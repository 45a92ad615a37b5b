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
    with pytest.raises(ConfigError, match=r"ImageDecoderConfig\.code_order: 'spiral'"):
        ImageDecoderConfig(code_order="spiral")
    assert TextEncoderConfig(position="rope").position == "rope"
    assert VQConfig().to_dict() == VQConfig.from_dict(VQConfig().to_dict()).to_dict()  # a config's own values pass
