"""The trainer in one process: configs and overrides, schedule, sampler, checkpoint limit, NaN guard."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_corpus
from torch import nn

from mmgen.config import ConfigError
from mmgen.training.checkpoints import list_checkpoints, resolve_checkpoint
from mmgen.training.config import ExperimentConfig, TrainConfig, load_experiment, parse_overrides
from mmgen.training.optim import lr_at, param_groups
from mmgen.training.registry import kinds
from mmgen.training.sampler import ShardedStreamSampler
from mmgen.training.trainer import Trainer, TrainingData, TrainingDiverged

REPO = Path(__file__).resolve().parents[1]


def reset_accelerate() -> None:
    """Accelerate keeps process-wide singletons; each in-process run needs a clean one."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    reset_accelerate()
    yield
    reset_accelerate()


def tiny_overrides(corpus: Path, out: Path, kind: str = "gpt", **train) -> list[str]:
    # bias=False: an attention key bias gets a true gradient of exactly 0 (softmax ignores a
    # constant shift), so Adam turns its rounding noise into lr-sized steps and any change of
    # summation order (sharding, accumulation) moves it by ~lr. Runs compared at 1e-5 leave it out.
    args = {
        "model.kind": kind, "model.max_len": 16, "model.dim": 32, "model.n_layers": 2, "model.n_heads": 2,
        "model.bias": False,
        "data.path": str(corpus), "train.output_dir": str(out), "train.batch_size": 8, "train.max_steps": 12,
        "train.warmup_steps": 2, "train.lr": 1e-2, "train.eval_every": 0, "train.eval_batches": 2,
        "train.log_every": 1, "train.checkpoint_every": 0, "train.tensorboard": False,
    }
    args.update({f"train.{k}": v for k, v in train.items()})
    return [f"--{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in args.items()]


def read_metrics(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------


def test_yaml_configs_load_with_overrides():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        exp = load_experiment(path)
        assert isinstance(exp, ExperimentConfig) and exp.kind in kinds(), path
    exp = load_experiment(REPO / "configs/gpt_shakespeare_char.yaml",
                          ["--train.lr=3e-4", "--model.n_layers", "3", "--train.betas=[0.8, 0.9]",
                           "--train.max_time_s=null", "--train.mixed_precision=no"])
    assert exp.train.lr == 3e-4 and isinstance(exp.train.lr, float)
    assert exp.model.n_layers == 3 and exp.train.betas == (0.8, 0.9)
    assert exp.train.max_time_s is None and exp.train.mixed_precision == "no"
    assert exp.from_data == ("vocab_size",)  # left to the tokenizer
    # the resolved YAML round-trips
    again = ExperimentConfig.from_dict(__import__("yaml").safe_load(exp.to_yaml()))
    assert again == exp


def test_yaml_reads_exponent_floats(tmp_path):
    cfg = tmp_path / "x.yaml"
    cfg.write_text("model: {kind: gpt}\ntrain: {lr: 1e-3, weight_decay: 0}\n")
    exp = load_experiment(cfg)
    assert exp.train.lr == 1e-3 and exp.train.weight_decay == 0.0


@pytest.mark.parametrize(
    "text, overrides, needle",
    [
        ("model: {kind: gpt, dimm: 3}\n", [], "model.dimm"),
        ("model: {kind: gpt}\ntrain: {lrr: 1}\n", [], "train.lrr"),
        ("model: {kind: gpt}\n", ["--train.lrr=1"], "train.lrr"),
        ("model: {kind: gpt}\n", ["--data.tokeniser=bpe"], "data.tokeniser"),
        ("model: {kind: gpt}\n", ["--trian.lr=1"], "trian"),
        ("model: {kind: gtp}\n", [], "gtp"),
        ("model: {dim: 3}\n", [], "model.kind"),
        ("model: {kind: gpt}\n", ["--train.lr=fast"], "train.lr"),
        ("model: {kind: gpt}\n", ["--train.mixed_precision=fp8"], "train.mixed_precision"),
        ("model: {kind: gpt}\n", ["--train.batch_size=10", "--train.grad_accum=3"], "grad_accum"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, overrides, needle):
    cfg = tmp_path / "x.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_experiment(cfg, overrides)


def test_override_syntax():
    assert parse_overrides(["--a.b=1", "--a.c", "x", "--d.e=true", "--f.g=null", "--h.i=3e-4"]) == {
        "a.b": 1, "a.c": "x", "d.e": True, "f.g": None, "h.i": 3e-4}
    for bad in (["lr=3"], ["--lr=3"], ["--train.lr"]):
        with pytest.raises(ConfigError):
            parse_overrides(bad)


def test_cli_reports_unknown_key_without_traceback(capsys):
    from mmgen.training.cli import main

    assert main(["--config", str(REPO / "configs/gpt_shakespeare_char.yaml"), "--train.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "train.lrr" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------
# Optimiser groups, schedule, sampler
# --------------------------------------------------------------------------------------


def test_weight_decay_only_on_matrices():
    from mmgen.config import GPTConfig
    from mmgen.models.gpt import GPT

    model = GPT(GPTConfig(vocab_size=50, max_len=8, dim=16, n_layers=1, n_heads=2))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n_unique = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_unique  # tied head counted once


def test_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(0.1)
    assert lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 10) == pytest.approx(1.0)
    assert lr_at(cfg, 60) == pytest.approx(0.55)
    assert lr_at(cfg, 110) == pytest.approx(0.1)
    timed = cfg.replace(max_time_s=100.0, max_steps=10**6)
    assert lr_at(timed, 20, elapsed_s=50.0) == pytest.approx(0.55)  # half the time: half the cosine


def test_sampler_shards_one_global_batch_and_resumes_mid_stream():
    n, B = 37, 8
    one = iter(ShardedStreamSampler(n, B, seed=3))
    two = [iter(ShardedStreamSampler(n, B, seed=3, rank=r, world_size=2, grad_accum=2)) for r in range(2)]
    stream = []
    for _ in range(12):  # past two epoch boundaries
        ref = next(one)
        parts = []
        for _a in range(2):
            parts += next(two[0]) + next(two[1])  # micro-step a: rank 0's slice, then rank 1's
        assert sorted(parts) == sorted(ref) and len(ref) == B
        stream += ref
    # each epoch is a permutation of the dataset
    assert sorted(stream[:n]) == list(range(n)) and sorted(stream[n : 2 * n]) == list(range(n))
    resumed = iter(ShardedStreamSampler(n, B, seed=3, start_sample=5 * B))
    assert [x for _ in range(7) for x in next(resumed)] == stream[5 * B :]


# --------------------------------------------------------------------------------------
# Whole runs in this process
# --------------------------------------------------------------------------------------


def run_in_process(corpus: Path, out: Path, **train) -> dict:
    from mmgen.training.cli import run

    return run(None, tiny_overrides(corpus, out, **train))


def test_run_exports_a_loadable_model_folder(tmp_path):
    from mmgen.models.gpt import GPT
    from mmgen.text.tokenizer import TextTokenizer

    corpus = write_corpus(tmp_path / "data/input.txt")
    summary = run_in_process(corpus, tmp_path / "run", max_steps=30, eval_every=10, ema_decay=0.9)
    assert summary["num_processes"] == 1 and summary["steps"] == 30
    assert summary["val_loss"] < 3.0 and summary["val_loss_ema"] < 3.5  # from ln(vocab) ~ 3.4 at init
    export = tmp_path / "run/model"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in export.iterdir()}
    model, tok = GPT.from_pretrained(export), TextTokenizer.from_pretrained(export)
    assert model.config.vocab_size == tok.vocab_size  # filled from the tokenizer
    from mmgen.pipelines import TextGenerationPipeline

    out = TextGenerationPipeline.from_pretrained(export)("The king", max_new_tokens=5, seed=0)
    assert out[0]["generated_text"].startswith("The king")
    rows = read_metrics(tmp_path / "run")
    assert [int(r["step"]) for r in rows if r["loss"]][:3] == [1, 2, 3]
    assert all(float(r["num_processes"]) == 1 for r in rows if r["loss"])
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "val_loss", "val_loss_ema"} <= set(rows[0])
    assert float(rows[-1]["val_loss"]) == pytest.approx(summary["val_loss"], rel=1e-5)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_native(tmp_path, monkeypatch, native):
    """``mixed_precision: auto`` trains in bf16 on hardware with native bf16 and in fp32 elsewhere
    (emulated bf16 made an AVX2 CPU's VQ steps ~8x slower), and the summary says which it used."""
    from mmgen.training import trainer

    monkeypatch.setattr(trainer, "native_bf16", lambda: native)
    assert trainer.resolve_precision("auto") == ("bf16" if native else "no")
    assert trainer.resolve_precision("no") == "no" and trainer.resolve_precision("bf16") == "bf16"
    corpus = write_corpus(tmp_path / "data/input.txt")
    summary = run_in_process(corpus, tmp_path / "run", max_steps=3, mixed_precision="auto")
    assert summary["mixed_precision"] == ("bf16" if native else "no") and summary["steps"] == 3


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    import builtins
    import io

    from mmgen.training import trainer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    real_open = builtins.open
    for flags, expected in (("fpu avx2 fma", False), ("fpu avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True)):
        fake = f"processor\t: 0\nflags\t\t: {flags}\n"
        monkeypatch.setattr(builtins, "open", lambda path, *a, **k: io.StringIO(fake) if path == "/proc/cpuinfo" else real_open(path, *a, **k))
        assert trainer.native_bf16() is expected, flags


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    from safetensors.torch import load_file

    corpus = write_corpus(tmp_path / "data/input.txt")
    run_in_process(corpus, tmp_path / "a", grad_accum=1)
    reset_accelerate()
    run_in_process(corpus, tmp_path / "b", grad_accum=4)
    a, b = load_file(tmp_path / "a/model/model.safetensors"), load_file(tmp_path / "b/model/model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)


def test_checkpoint_limit_keeps_exactly_the_last_k(tmp_path):
    corpus = write_corpus(tmp_path / "data/input.txt")
    out = tmp_path / "run"
    stale = out / "checkpoints/.tmp-step-00000001"  # left by a process killed mid-write
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial")
    run_in_process(corpus, out, max_steps=13, checkpoint_every=2, checkpoint_limit=3)
    steps = [s for s, _ in list_checkpoints(out / "checkpoints")]
    assert steps == [10, 12, 13]  # every 2 steps, plus the final one, limited to 3
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "latest", "step-00000010", "step-00000012", "step-00000013"]
    assert resolve_checkpoint("latest", out).name == "step-00000013"
    state = json.loads((out / "checkpoints/step-00000013/trainer_state.json").read_text())
    assert state["step"] == 13 and state["samples_seen"] == 13 * 8 and state["num_processes"] == 1
    reset_accelerate()
    with pytest.raises(ConfigError, match="already holds checkpoints.*--resume latest"):  # never overwritten silently
        run_in_process(corpus, out, max_steps=13, checkpoint_every=2, checkpoint_limit=3)


class PlantedNaN(nn.Module):
    """A tiny language model whose loss is NaN on chosen calls (counted from 0)."""

    def __init__(self, vocab: int, bad_calls: set[int]):
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)
        self.head = nn.Linear(8, vocab)
        self.bad_calls = bad_calls
        self.calls = 0

    def forward(self, input_ids, labels=None):
        logits = self.head(self.emb(input_ids))  # (B, T, V)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        if self.calls in self.bad_calls:
            loss = loss * float("nan")
        self.calls += 1
        return logits, loss


def nan_run(tmp_path: Path, bad_calls: set[int], max_bad_steps: int = 3, max_steps: int = 8):
    from mmgen.data.text import TokenWindows, collate_windows

    tokens = np.random.default_rng(0).integers(0, 11, size=500).astype(np.uint16)
    data = TrainingData(train=TokenWindows(tokens, 6), collate_fn=collate_windows)
    torch.manual_seed(0)
    model = PlantedNaN(11, bad_calls)
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=max_steps, batch_size=4, warmup_steps=0, lr=1e-2,
                      log_every=1, checkpoint_every=0, max_bad_steps=max_bad_steps, tensorboard=False, export=False)
    return model, Trainer(model, data, cfg)


def test_nan_guard_skips_a_planted_nan_step(tmp_path, capsys):
    model, trainer = nan_run(tmp_path, bad_calls={3})
    before = {}

    def snapshot(module, args):
        if module.calls == 3:
            before.update({k: v.detach().clone() for k, v in module.state_dict().items()})
        if module.calls == 4:  # the step after the NaN: the weights must not have moved
            for k, v in module.state_dict().items():
                assert torch.equal(v, before[k]), k

    model.register_forward_pre_hook(snapshot)
    summary = trainer.fit()
    assert summary["steps"] == 8 and math.isfinite(summary["train_loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "step 3: non-finite loss; update skipped (1 of train.max_bad_steps=3 in a row)" in capsys.readouterr().err
    rows = read_metrics(tmp_path / "run")
    assert [int(r["skipped_steps"]) for r in rows] == [0, 0, 0, 1, 0, 0, 0, 0]


def test_nan_guard_stops_after_k_in_a_row(tmp_path):
    _, trainer = nan_run(tmp_path, bad_calls={2, 3, 4}, max_bad_steps=3)
    with pytest.raises(TrainingDiverged, match=r"NaN/inf for 3 steps in a row.*max_bad_steps=3"):
        trainer.fit()


def test_time_budget_ends_the_run_and_checkpoints_it(tmp_path):
    corpus = write_corpus(tmp_path / "data/input.txt")
    out = tmp_path / "run"
    summary = run_in_process(corpus, out, max_steps=10**6, max_time_s=1.0, checkpoint_every=10**6, log_every=10**6)
    assert 1.0 <= summary["elapsed_s"] < 30 and 0 < summary["steps"] < 10**6
    rows = read_metrics(out)
    assert float([r for r in rows if r["lr"]][-1]["lr"]) == pytest.approx(1e-2 * 0.1, rel=0.2)  # the cosine ran over the time budget
    assert resolve_checkpoint("latest", out).name == f"step-{summary['steps']:08d}"  # the last step is saved


def test_bert_kind_trains_and_exports_for_fill_mask(tmp_path):
    from mmgen.pipelines import FillMaskPipeline
    from mmgen.training.cli import run

    corpus = write_corpus(tmp_path / "data/input.txt")
    args = tiny_overrides(corpus, tmp_path / "run", kind="bert", max_steps=6, sample_every=6)
    summary = run(None, args + ["--data.tokenizer=wordpiece", "--data.vocab_size=120", "--model.type_vocab_size=0"])
    assert math.isfinite(summary["val_loss"])
    assert "filled:" in (tmp_path / "run/samples.txt").read_text()
    fill = FillMaskPipeline.from_pretrained(tmp_path / "run/model")
    assert len(fill(f"the king {fill.mask_token} queen", top_k=3)) == 3
