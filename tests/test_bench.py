"""The speed benchmarks in smoke shapes: they run, give well-formed results, and say when a peer is missing.

Timings are not checked (they are benchmarks, not tests); the peers (transformers,
dalle-pytorch) are optional, so every benchmark also runs with its peer hidden.
"""

from __future__ import annotations

import builtins
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "scripts" / "bench"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import gpu  # noqa: E402
import image_sampling  # noqa: E402
import text_decode  # noqa: E402
import text_encoder  # noqa: E402
import train_step  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    yield
    torch.set_num_threads(1)  # the benchmarks set their own thread count; restore the suite's


@pytest.fixture
def no_peers(monkeypatch):
    """Make transformers and dalle_pytorch fail to import, as on a machine without the dev extras."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.split(".")[0] in ("transformers", "dalle_pytorch"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(_common.importlib, "import_module", lambda name: fake_import(name))


def _well_formed(results, n, peer_expected):
    assert len(results) == n
    for r in results:
        assert isinstance(r, _common.Result)
        assert r.bench and r.case and r.unit.endswith("/s")
        assert math.isfinite(r.mmgen) and r.mmgen > 0
        if peer_expected:
            assert r.peer is not None and r.peer > 0 and r.ratio == pytest.approx(r.mmgen / r.peer)
            assert r.cpu_ratio is not None and r.cpu_ratio > 0
        else:
            assert r.peer is None and r.ratio is None and r.cpu_ratio is None
    table = _common.format_table(results)
    assert table.count("\n| ") == n + 1  # separator + one row per result
    return table


def _has(module: str) -> bool:
    try:
        _common.try_import(module)
    except Exception:
        return False
    return module in sys.modules


@pytest.mark.parametrize("with_peer", [True, False])
def test_text_decode_smoke(with_peer):
    if with_peer:
        pytest.importorskip("transformers")
    results = text_decode.run(batches=(1, 2), threads=1, repeats=1, warmup=0, smoke=True, with_peer=with_peer)
    _well_formed(results, 2, with_peer)


def test_text_decode_compiled_rows():
    pytest.importorskip("transformers")
    results = text_decode.run(batches=(1,), threads=1, repeats=1, warmup=1, smoke=True, compile=True)
    _well_formed(results, 2, True)
    assert results[1].case.endswith("compiled decode step") and results[1].peer == results[0].peer


def test_text_decode_copies_the_peer_weights():
    pytest.importorskip("transformers")
    ours, peer = text_decode.build(text_decode.SMOKE)
    ids = torch.randint(0, text_decode.SMOKE["vocab_size"], (2, 6))
    with torch.no_grad():
        assert torch.allclose(ours(ids)[0], peer(ids).logits, atol=1e-4)


def test_text_encoder_smoke_and_same_weights():
    pytest.importorskip("transformers")
    _well_formed(text_encoder.run(threads=1, repeats=1, warmup=0, smoke=True), 2, True)
    ours, peer = text_encoder.build(text_encoder.SMOKE)
    ids, mask = text_encoder.inputs(text_encoder.SMOKE)
    with torch.no_grad():
        theirs = peer(input_ids=ids, attention_mask=mask).last_hidden_state
        real = mask.bool()
        assert torch.allclose(ours.eval()(ids, mask)[0][real], theirs[real], atol=1e-4)


def test_image_sampling_smoke():
    with_peer = _has("dalle_pytorch")
    results = image_sampling.run(batches=(1,), scales=(1.0, 3.0), threads=1, repeats=1, warmup=0, smoke=True, with_peer=with_peer)
    _well_formed(results, 2, with_peer)


def test_train_step_smoke_with_memory():
    with_peer = _has("transformers")
    results = train_step.run(kinds=("gpt",), threads=1, repeats=1, warmup=0, smoke=True, memory=True, with_peer=with_peer)
    _well_formed(results, 1, with_peer)
    memory = {k: v for k, v in results[0].extra.items() if k.startswith("peak memory")}
    assert len(memory) == (2 if with_peer else 1)
    assert all(v.endswith(")") and "MB" in v for v in memory.values())


def test_train_step_t2i_smoke():
    with_peer = _has("dalle_pytorch")
    _well_formed(train_step.run(kinds=("t2i",), threads=1, repeats=1, warmup=0, smoke=True, memory=False, with_peer=with_peer), 1, with_peer)


def test_missing_peers_print_how_to_install(no_peers, capsys):
    text_decode.run(batches=(1,), threads=1, repeats=1, warmup=0, smoke=True)
    out = capsys.readouterr().out
    assert "peer not installed: transformers (pip install transformers)" in out
    assert "not installed" in out  # the table says so too

    results = image_sampling.run(batches=(1,), scales=(1.0,), threads=1, repeats=1, warmup=0, smoke=True)
    out = capsys.readouterr().out
    assert "peer not installed: dalle_pytorch" in out and "--no-deps dalle-pytorch==1.6.6" in out
    _well_formed(results, 1, peer_expected=False)

    results = train_step.run(kinds=("gpt", "t2i"), threads=1, repeats=1, warmup=0, smoke=True, memory=False)
    _well_formed(results, 2, peer_expected=False)
    _well_formed(text_encoder.run(threads=1, repeats=1, warmup=0, smoke=True), 2, peer_expected=False)


def test_mmgen_bench_cli(capsys):
    from mmgen.cli import main

    assert main(["bench", "text_encoder", "--smoke", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "torch " in out and "| text encoder |" in out
    with pytest.raises(SystemExit):
        main(["bench", "no_such_benchmark"])


def test_dropout_still_applies_in_training_only():
    """The decode-speed edits skip dropout calls when off; with dropout on, training must still drop."""
    from mmgen.config import GPTConfig
    from mmgen.models.gpt import GPT

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, max_len=16, dim=32, n_layers=2, n_heads=4, dropout=0.5))
    ids = torch.randint(0, 32, (2, 8))
    model.train()
    assert not torch.equal(model(ids)[0], model(ids)[0])
    model.eval()
    assert torch.equal(model(ids)[0], model(ids)[0])


# ---- GPU benchmark (runs for real only on CUDA; its FLOP count and smoke mode are checked here) ----


def test_gpu_mfu_flop_count_matches_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from mmgen.models.text_to_image import TextToImage

    cfg = gpu.load_model_config("", smoke=True)
    torch.manual_seed(0)
    model = TextToImage(cfg).train()
    model.image_decoder.config = model.image_decoder.config.replace(caption_dropout=0.0)
    ids = torch.randint(1, 64, (3, 8))
    codes = torch.randint(0, 16, (3, 4))
    with FlopCounterMode(display=False) as counter:
        _, loss = model(ids, torch.ones_like(ids), codes)
        loss.backward()
    ours = gpu.train_flops_per_sample(model, text_len=8) * 3
    assert ours == pytest.approx(counter.get_total_flops(), rel=0.05)


def test_gpu_benchmark_smoke_on_cpu(tmp_path):
    out = gpu.main(["--device", "cpu", "--smoke", "--json", str(tmp_path / "gpu.json")])
    for part in ("training", "sampling"):
        assert all(math.isfinite(v) and v > 0 for v in out[part].values() if isinstance(v, float))
    assert 0 < out["training"]["mfu"] < 1 and (tmp_path / "gpu.json").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_benchmark_says_when_there_is_no_gpu(capsys):
    assert gpu.main([]) == {}
    assert "no CUDA device" in capsys.readouterr().out


def test_precision_benchmark_smoke():
    import precision

    results = precision.main(["--smoke"])
    assert len(results) == 2
    for r in results.values():
        assert r["fp32"] > 0 and r["bf16"] > 0


def test_vq_codes_analysis_on_a_tiny_vq(tmp_path):
    import numpy as np

    sys.path.insert(0, str(BENCH.parent))
    import vq_codes

    from mmgen.models.vq import VQConfig, VQModel

    torch.manual_seed(0)
    vq = VQModel(VQConfig(image_size=16, channels=8, channel_mult=(1, 2), codebook_size=32, code_dim=4, mid_res_blocks=1))
    vq.save_pretrained(tmp_path / "vq")
    (tmp_path / "codes").mkdir()
    np.save(tmp_path / "codes" / "codes.npy", np.arange(16).reshape(1, 16))  # codes 16..31 never a target
    out = vq_codes.main(["--vq", str(tmp_path / "vq"), "--codes", str(tmp_path / "codes"), "--n", "4",
                         "--thresholds", "0.0", "100.0", "--describe", "12"])
    assert 0.0 <= out["heldout_single_needing_unseen_code"] <= 1.0
    assert 0 <= out["twin_codes"] <= 32 and 0.0 <= out["twin_occurrence_share"] <= 1.0
    assert out["merge"][0.0]["classes"] == 32  # nothing is within distance 0 of another code
    assert out["merge"][100.0]["classes"] == 1  # everything is within 100
    f = out["factors"]
    assert 1 <= f["descriptions"] <= 32 and 0.0 <= f["heldout_single_needing_unseen_factor"] <= 1.0
    assert 0.0 <= f["train"] <= 1.0 and 0.0 <= f["heldout"] <= 1.0 and 0.0 <= f["fidelity"] <= 1.0
