"""The trainer as users launch it, in real processes: two-process DDP on CPU, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_corpus
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "scripts/train.py"


def overrides(corpus: Path, out: Path, **train) -> list[str]:
    # bias=False: see tests/test_training.py (a zero-gradient key bias makes Adam amplify rounding noise)
    args = {
        "model.kind": "gpt", "model.max_len": 16, "model.dim": 32, "model.n_layers": 2, "model.n_heads": 2,
        "model.bias": False, "data.path": str(corpus), "train.output_dir": str(out), "train.batch_size": 8,
        "train.max_steps": 20, "train.warmup_steps": 2, "train.lr": 1e-2, "train.eval_every": 10,
        "train.eval_batches": 2, "train.log_every": 1, "train.checkpoint_every": 10, "train.tensorboard": False,
    }
    args.update({f"train.{k}": v for k, v in train.items()})
    return [f"--{k}={v}" for k, v in args.items()]


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "MMGEN_FAULT"}
    e.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TQDM_DISABLE="1", **extra)
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(args: list[str], *, fault: str | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    extra = {"MMGEN_FAULT": fault} if fault else {}
    return subprocess.run([sys.executable, str(TRAIN), *args], env=env(**extra), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model/model.safetensors")


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "the accelerate launcher is not installed next to this Python"
    corpus = write_corpus(tmp_path / "data/input.txt")
    # Two processes sum their gradients in another order, ~1e-9 apart. Adam divides by sqrt(v) + eps,
    # so with the default eps=1e-8 a weight whose gradient is about 0 moves by +-lr on that rounding
    # alone (2 of 3072 weights ended 1.5e-5 apart). eps=1e-4 keeps such steps proportional to the
    # gradient, so rounding stays rounding, while every real gradient (>= 1e-3 here) still trains.
    ok(train(overrides(corpus, tmp_path / "one", checkpoint_every=0, eps=1e-4)))
    two = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
         str(TRAIN), *overrides(corpus, tmp_path / "two", checkpoint_every=0, eps=1e-4)],
        env=env(ACCELERATE_USE_CPU="true"), cwd=REPO, capture_output=True, text=True, timeout=180,
    )
    ok(two)
    summary = json.loads((tmp_path / "two/train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["distributed_type"] == "MULTI_CPU", summary
    assert "on 2 process(es)" in two.stdout
    one_w, two_w = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert one_w.keys() == two_w.keys()
    for k in one_w:
        torch.testing.assert_close(two_w[k], one_w[k], atol=1e-5, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    one_s = json.loads((tmp_path / "one/train_summary.json").read_text())
    assert summary["val_loss"] == pytest.approx(one_s["val_loss"], abs=1e-5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """20 uninterrupted steps, with EMA and dropout (so RNG and EMA state matter on resume)."""
    root = tmp_path_factory.mktemp("resume")
    corpus = write_corpus(root / "data/input.txt")
    ok(train(overrides(corpus, root / "ref", ema_decay=0.9) + ["--model.dropout=0.1"]))
    return corpus, root


def resumed_run(corpus: Path, out: Path, fault: str, **train_kw) -> subprocess.CompletedProcess:
    args = overrides(corpus, out, ema_decay=0.9, **train_kw) + ["--model.dropout=0.1"]
    killed = train(args, fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (out / "model").exists() and not (out / "train_summary.json").exists()
    return ok(train(args + ["--resume", "latest"]))


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_exact(reference):
    corpus, root = reference
    out = root / "killed"
    resumed = resumed_run(corpus, out, fault="checkpoint_done:10")
    assert "resumed from" in resumed.stdout and "step-00000010" in resumed.stdout
    ref_w, w = weights(root / "ref"), weights(out)
    for k in ref_w:
        assert torch.equal(w[k], ref_w[k]), k  # bitwise, EMA export included
    ref_ckpt, ckpt = root / "ref/checkpoints/step-00000020", out / "checkpoints/step-00000020"
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(ref_ckpt / name), load_file(ckpt / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    ref_opt = torch.load(ref_ckpt / "optimizer.bin", weights_only=True)["state"]
    opt = torch.load(ckpt / "optimizer.bin", weights_only=True)["state"]
    assert all(torch.equal(ref_opt[i][s], opt[i][s]) for i in ref_opt for s in ref_opt[i])
    # the metrics read like one run: no duplicated steps from the killed process
    ref_rows = (root / "ref/metrics.csv").read_text().splitlines()
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == [r.split(",")[0] for r in ref_rows]


@pytest.mark.slow
def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(reference):
    corpus, root = reference
    out = root / "midway"
    args = overrides(corpus, out, ema_decay=0.9, checkpoint_every=5) + ["--model.dropout=0.1"]
    killed = train(args, fault="checkpoint_midway:10")
    assert killed.returncode == -signal.SIGKILL
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-00000005"
    partial = ckpts / ".tmp-step-00000010"
    assert (partial / "model.safetensors").is_file() and not (partial / "trainer_state.json").exists()
    assert not (ckpts / "step-00000010").exists()
    resumed = ok(train(args + ["--resume", "latest"]))
    assert "step-00000005" in resumed.stdout
    assert not partial.exists()  # cleaned up by the next checkpoint
    ref_w, w = weights(root / "ref"), weights(out)
    assert all(torch.equal(w[k], ref_w[k]) for k in ref_w)


def test_resume_names_a_missing_checkpoint(tmp_path):
    corpus = write_corpus(tmp_path / "data/input.txt")
    proc = train(overrides(corpus, tmp_path / "run") + ["--resume", str(tmp_path / "nope")])
    assert proc.returncode == 2 and "is not a complete checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_two_unsynchronised_cpu_processes_are_refused(tmp_path):
    """`accelerate launch --num_processes 2` on CPU without ACCELERATE_USE_CPU starts two lone
    processes that would each train on the whole batch; the trainer refuses to start."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    corpus = write_corpus(tmp_path / "data/input.txt")
    e = env()
    e.pop("ACCELERATE_USE_CPU", None)
    proc = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(TRAIN),
         *overrides(corpus, tmp_path / "run", max_steps=2)],
        env=e, cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    if torch.cuda.device_count() >= 2:
        pytest.skip("with two GPUs this launch is a real DDP run")
    assert proc.returncode != 0
    assert "the launcher started 2 processes but Accelerate sees 1" in proc.stderr
    assert not (tmp_path / "run/checkpoints").exists()
