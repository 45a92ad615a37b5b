"""`mmgen train-demo` end to end with budgets of seconds: every stage runs, the text-to-image
stage really is data-parallel over two processes, the bundle loads and draws, and --reuse keeps
finished stages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TINY = ["--vq-minutes", "0.05", "--t2i-minutes", "0.1", "--n-images", "200", "--gpt-minutes", "0",
        "--bert-minutes", "0", "--tune-minutes", "0", "--eval-n", "2", "--threads", "1"]


def train_demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmgen.cli", "train-demo", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = train_demo("--out", str(out), "--processes", "2", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_every_stage_runs_and_the_bundle_draws(demo_run):
    from mmgen.pipelines import TextToImagePipeline

    out, proc = demo_run
    for stage in ("vq", "codes", "t2i", "tune", "bundle", "done"):
        assert f"[train-demo] {stage}" in proc.stdout
    pipe = TextToImagePipeline.from_pretrained(out / "bundle")
    (image,) = pipe("a red circle", num_images=1, seed=0)
    assert image.size == (72, 72)
    index = json.loads((out / "bundle" / "model_index.json").read_text())
    assert set(index["eval"]["summary"]) == {"single_seen", "single_heldout", "relation_seen", "relation_heldout"}
    assert index["training"]["timings_s"]["t2i"] > 0


def test_text_to_image_stage_ran_on_two_processes(demo_run):
    out, _ = demo_run
    summary = json.loads((out / "t2i" / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["steps"] > 0
    record = json.loads((out / "bundle" / "model_index.json").read_text())["training"]["t2i"]
    assert record["processes"] == 2 and record["summary"]["num_processes"] == 2


def test_non_empty_out_needs_reuse_and_reuse_keeps_finished_stages(demo_run):
    out, _ = demo_run
    refused = train_demo("--out", str(out), *TINY)
    assert refused.returncode == 2 and "--reuse" in refused.stderr
    vq_weights = out / "vq" / "model" / "model.safetensors"
    before = vq_weights.stat().st_mtime_ns
    again = train_demo("--out", str(out), "--reuse", "--processes", "2", *TINY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert vq_weights.stat().st_mtime_ns == before  # the VQ was not trained again
    logs = again.stdout + again.stderr
    assert "training VQModel" not in logs and "training TextToImage" not in logs
