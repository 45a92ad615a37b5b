"""VQ tokenizer: shapes, quantizer properties, dead-code restarts, checkpoints, a tiny overfit."""

from __future__ import annotations

import pytest

from mmgen.checkpoint import CheckpointError
import torch

from mmgen.config import ConfigError
from mmgen.models.vq import VQConfig, VQModel, codebook_perplexity, codebook_usage

TINY = dict(image_size=16, channels=8, num_res_blocks=1, mid_res_blocks=1, codebook_size=16, code_dim=4)


def tiny(**overrides) -> VQModel:
    torch.manual_seed(0)
    return VQModel(VQConfig(**{**TINY, **overrides}))


def images(n: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("mult, grid", [((1, 2), 4), ((1, 2, 2), 2)])
def test_encode_decode_shapes(mult, grid):
    model = tiny(channel_mult=mult).eval()
    assert model.config.grid_size == grid
    codes = model.encode(images(3))
    assert codes.shape == (3, grid, grid) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < model.config.codebook_size
    out = model.decode(codes)
    assert out.shape == (3, 3, 16, 16)
    assert float(out.min()) >= -1 and float(out.max()) <= 1
    recon, loss = model(images(3))
    assert recon.shape == (3, 3, 16, 16) and loss.dim() == 0
    assert {"loss", "recon", "commit", "codebook", "edge", "psnr", "usage", "perplexity"} <= set(model.last_metrics)


def test_forward_codes_match_encode():
    model = tiny().eval()
    x = images(2)
    recon, _ = model(x)
    torch.testing.assert_close(recon, model.decoder(model.quantizer.normalized_codebook()[model.encode(x)].permute(0, 3, 1, 2)))


def test_straight_through_gradient_reaches_encoder():
    model = tiny(beta=0.0, codebook_weight=0.0)  # only the reconstruction path carries gradient
    _, loss = model(images(2))
    loss.backward()
    grad = model.encoder.conv_in.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_codebook_helpers():
    codes = torch.tensor([[0, 0], [1, 1]])
    assert codebook_usage(codes, 4) == 0.5
    assert codebook_perplexity(codes, 4) == pytest.approx(2.0)


def _plant_dead_code(model: VQModel, dead: int) -> None:
    """Point code ``dead`` away from every encoder output so that nothing picks it."""
    x = images(4)
    model.train()
    model.quantizer.usage.zero_()
    with torch.no_grad():
        z = torch.nn.functional.normalize(model.encoder(x).permute(0, 2, 3, 1).reshape(-1, 4), dim=-1)
        model.quantizer.codebook.data[dead] = -z.mean(0) * 100  # far from the cluster of outputs
        model.quantizer.codebook.data[torch.arange(16) != dead] = z[: 15].clone()  # live codes on outputs
    model(x)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_restart_replaces_dead_code_and_keeps_live_ones(ema):
    model = tiny(restart_every=0, ema_decay=ema)
    _plant_dead_code(model, dead=3)
    usage = model.quantizer.usage.clone()
    assert usage[3] == 0
    before = model.quantizer.codebook.detach().clone()
    n = model.restart_dead_codes()
    after = model.quantizer.codebook.detach()
    dead = usage < 1
    assert n == int(dead.sum()) >= 1
    assert not torch.allclose(after[3], before[3])
    torch.testing.assert_close(after[~dead], before[~dead])  # live codes untouched
    # the restarted code is a recent encoder output, hence unit length
    assert torch.allclose(after[3].norm(), torch.tensor(1.0), atol=1e-5)
    assert int(model.quantizer.usage.sum()) == 0  # a new window starts


def test_restart_is_deterministic_for_a_seed():
    def run() -> torch.Tensor:
        model = tiny(restart_every=0)
        _plant_dead_code(model, dead=5)
        torch.manual_seed(123)
        model.restart_dead_codes()
        return model.quantizer.codebook.detach().clone()

    torch.testing.assert_close(run(), run(), rtol=0, atol=0)


def test_model_restarts_every_n_training_forwards():
    model = tiny(restart_every=3, codebook_size=64).train()
    for _ in range(2):
        model(images(1))
    assert "restarted" not in model.last_metrics
    model(images(1))
    assert model.last_metrics["restarted"] > 0  # 64 codes, 16 positions per image: many unused
    assert int(model.quantizer.usage.sum()) == 0
    model.eval()
    model(images(1))  # evaluation forwards neither count nor restart
    assert int(model.train_forwards) == 3


def test_save_load_round_trip_is_exact(tmp_path):
    model = tiny().eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    loaded = VQModel.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    x = images(3)
    codes = model.encode(x)
    assert torch.equal(loaded.encode(x), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))


def test_truncated_weights_error_names_file(tmp_path):
    tiny().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="model.safetensors"):
        VQModel.from_pretrained(tmp_path)


def test_missing_files_errors_name_the_file(tmp_path):
    tiny().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        VQModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        VQModel.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        VQModel.from_pretrained(tmp_path / "nope")


def test_mismatched_weights_are_rejected(tmp_path):
    tiny().save_pretrained(tmp_path)
    VQConfig(**{**TINY, "channels": 16}).to_json(tmp_path / "config.json")
    with pytest.raises(ValueError, match="model.safetensors"):
        VQModel.from_pretrained(tmp_path)


def test_config_rejects_unknown_key_and_bad_values():
    with pytest.raises(ConfigError, match="codebook_sise"):
        VQConfig.from_dict({"codebook_sise": 512})
    with pytest.raises(ConfigError):
        VQConfig(image_size=60, channel_mult=(1, 2, 4))  # 60 is not a multiple of 8


def test_bad_inputs_are_rejected():
    model = tiny().eval()
    with pytest.raises(ValueError, match="shape"):
        model.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model.decode(torch.full((1, 4, 4), 16))


def test_tiny_overfit_lowers_loss():
    torch.manual_seed(0)
    model = VQModel(VQConfig(**{**TINY, "restart_every": 10}))
    x = torch.zeros(4, 3, 16, 16) - 1
    x[0, 0, 2:8, 2:8] = 1  # flat coloured squares on black
    x[1, 1, 8:14, 4:12] = 1
    x[2, 2, 4:12, 8:14] = 1
    x[3, :, 6:10, 6:10] = 1
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        _, loss = model(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.4 * sum(losses[:5]) / 5


def _ddp_restart_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # same init on both ranks, as DDP would broadcast
        model = VQModel(VQConfig(**{**TINY, "restart_every": 2, "codebook_size": 64})).train()
        torch.manual_seed(100 + rank)  # ranks see different data and hold different RNG states
        for _ in range(2):
            model(images(2, seed=rank))
        assert model.last_metrics["restarted"] > 0
        torch.save(model.quantizer.codebook.detach().clone(), f"{out_dir}/codebook{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_restart_keeps_ranks_identical_under_distributed(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_restart_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    c0, c1 = torch.load(tmp_path / "codebook0.pt"), torch.load(tmp_path / "codebook1.pt")
    assert torch.equal(c0, c1)
