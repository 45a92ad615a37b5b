"""One trainer for every model kind, on Hugging Face Accelerate.

A model is any ``nn.Module`` whose ``forward(**batch)`` returns ``(output, loss)``; it may expose
``last_metrics: dict[str, float]`` for extra columns. The trainer owns everything around it:

* **batches**: a :class:`~mmgen.training.sampler.ShardedStreamSampler` gives every process its
  slice of the same global batch, so results do not depend on the number of processes, and the
  data position is one number (samples seen) that a checkpoint records;
* **the step**: gradient accumulation (``no_sync`` on all but the last micro-step), mixed
  precision through Accelerate, global-norm clipping, AdamW (decay on >= 2-D weights only),
  warmup + cosine, EMA;
* **the NaN guard**: a step whose loss (on any process) or gradient norm is not finite is skipped
  with a warning; ``max_bad_steps`` in a row stop training with :class:`TrainingDiverged`;
* **logging**: a tqdm bar (loss, lr, tokens/s), ``metrics.csv``, TensorBoard, periodic
  validation and samples;
* **checkpoints** every N steps (atomic, limited, exact resume) and the **export** of a model
  folder at the end (``config.json`` + ``model.safetensors`` + ``tokenizer.json``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from mmgen.config import ConfigError, atomic_write_text
from mmgen.training.checkpoints import (
    checkpoint_dir,
    list_checkpoints,
    read_trainer_state,
    resolve_checkpoint,
    save_checkpoint,
)
from mmgen.training.config import ExperimentConfig, TrainConfig
from mmgen.training.ema import EMA
from mmgen.training.metrics import MetricsLogger
from mmgen.training.optim import build_optimizer, lr_at
from mmgen.training.sampler import ShardedStreamSampler, position_of

__all__ = ["Trainer", "TrainingData", "TrainingDiverged", "make_accelerator"]

STATE_FORMAT = 1


class TrainingDiverged(RuntimeError):
    """The loss or gradients were NaN/inf for too many steps in a row."""


@dataclass
class TrainingData:
    """What a model kind's data builder hands the trainer."""

    train: Dataset  # map-style; item -> dict of arrays, batched by collate_fn into model(**batch)
    val: Optional[Dataset] = None
    collate_fn: Callable[[list], dict[str, torch.Tensor]] = default_collate
    tokenizer: Any = None  # saved next to the exported model (tokenizer.json) when given
    sample_fn: Optional[Callable[..., str]] = None  # (model, data, train_config, generator) -> text to log
    unit: str = "tokens"  # what the throughput counts: "tokens" (input_ids) or "samples"
    info: dict[str, Any] = field(default_factory=dict)  # logged once at the start (corpus sizes, ...)
    model_fields: dict[str, Any] = field(default_factory=dict)  # what the data says the model needs (vocab_size)
    prepare_model: Optional[Callable[[nn.Module], None]] = None  # fills what the data knows into a fresh model


def native_bf16() -> bool:
    """Whether this machine computes bf16 natively: a CUDA GPU that supports it, or a CPU with AMX or
    AVX512-BF16. Elsewhere bf16 is emulated; on an AVX2 CPU a bf16-autocast training step of the VQ is
    ~8x slower than fp32 (python scripts/bench/precision.py)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        return "amx_bf16" in flags or "avx512_bf16" in flags
    except OSError:  # not Linux: ask oneDNN (True on AVX512 without native bf16 too)
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False


def resolve_precision(mixed_precision: str) -> str:
    """``train.mixed_precision`` as Accelerate takes it: ``auto`` becomes bf16 or no (see :func:`native_bf16`)."""
    if mixed_precision == "auto":
        return "bf16" if native_bf16() else "no"
    return mixed_precision


def make_accelerator(cfg: TrainConfig):
    """The Accelerator for a train config (mixed precision from the config, not the launcher)."""
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=resolve_precision(cfg.mixed_precision), step_scheduler_with_optimizer=False)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        # e.g. `accelerate launch --num_processes 2` on a CPU machine without ACCELERATE_USE_CPU:
        # every process would train alone on the whole batch and they would overwrite each other.
        raise ConfigError(
            f"the launcher started {launched} processes but Accelerate sees {accelerator.num_processes} "
            f"({accelerator.distributed_type.name}). On CPU use: ACCELERATE_USE_CPU=true accelerate launch "
            f"--multi_gpu --num_processes {launched} --num_machines 1 ... (`--cpu` runs one process)"
        )
    return accelerator


def _count_units(batch: dict[str, torch.Tensor], unit: str) -> int:
    if unit == "tokens" and "input_ids" in batch:
        return int(batch["input_ids"].numel())
    first = next(iter(batch.values()))
    return int(first.shape[0])


class Trainer:
    """Train ``model`` on ``data`` as ``config`` says; :meth:`fit` runs (or resumes) the whole run."""

    def __init__(self, model: nn.Module, data: TrainingData, config: TrainConfig, *,
                 accelerator=None, experiment: Optional[ExperimentConfig] = None):
        self.model = model
        self.data = data
        self.config = config
        self.accelerator = accelerator if accelerator is not None else make_accelerator(config)
        self.experiment = experiment
        self.output_dir = Path(config.output_dir)

    # ----------------------------------------------------------------------------------

    def _log(self, message: str, warning: bool = False) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(message, file=sys.stderr if warning else sys.stdout)

    def _loader(self, dataset: Dataset, sampler: ShardedStreamSampler) -> DataLoader:
        # An own generator: creating a DataLoader iterator must not draw from the global torch
        # RNG (dropout's), or a resumed run would draw differently from an uninterrupted one.
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=self.data.collate_fn,
                          num_workers=self.config.num_workers, generator=torch.Generator())

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = self.accelerator.device
        return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    # ----------------------------------------------------------------------------------

    def fit(self, resume: Optional[str] = None) -> dict[str, Any]:
        """Train until ``max_steps`` (or ``max_time_s``); ``resume`` is ``"latest"``, a checkpoint name or path.

        Returns the run summary (also written to ``<output_dir>/train_summary.json``).
        """
        acc, cfg = self.accelerator, self.config
        world, rank = acc.num_processes, acc.process_index
        if cfg.batch_size % (world * cfg.grad_accum):
            raise ConfigError(
                f"train.batch_size={cfg.batch_size} (the global batch) must be divisible by "
                f"processes x train.grad_accum = {world} x {cfg.grad_accum}"
            )
        if cfg.ema_decay is not None and acc.distributed_type.name in ("FSDP", "DEEPSPEED"):
            raise ConfigError("train.ema_decay is not supported with sharded (FSDP/DeepSpeed) training")
        micro = cfg.batch_size // (world * cfg.grad_accum)
        out = self.output_dir
        if acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            if self.experiment is not None:
                atomic_write_text(out / "config.yaml", self.experiment.to_yaml())

        model = self.model
        optimizer = build_optimizer(model, cfg)
        model, optimizer = acc.prepare(model, optimizer)
        unwrapped = acc.unwrap_model(model)
        ema = EMA(unwrapped, cfg.ema_decay) if cfg.ema_decay is not None else None

        step, samples_seen, elapsed, bad_in_a_row = 0, 0, 0.0, 0
        resumed_from = None
        existing = list_checkpoints(checkpoint_dir(out))
        if not resume and existing:
            raise ConfigError(
                f"train.output_dir={out} already holds checkpoints (newest: {existing[-1][1].name}); continue "
                f"with --resume latest, or pick another train.output_dir (nothing there is overwritten)"
            )
        if resume:
            path = resolve_checkpoint(resume, out)
            if path is None:
                self._log(f"--resume {resume}: no checkpoint in {out / 'checkpoints'} yet; starting from scratch")
            else:
                acc.load_state(str(path))
                state = read_trainer_state(path)
                step, samples_seen = int(state["step"]), int(state["samples_seen"])
                elapsed, bad_in_a_row = float(state["elapsed_s"]), int(state["bad_steps_in_a_row"])
                if ema is not None:
                    if not (path / "ema.safetensors").is_file():
                        raise FileNotFoundError(f"{path}: no ema.safetensors, but train.ema_decay is set")
                    ema.load(path / "ema.safetensors")
                consequence = {
                    "num_processes": "the data order and global batch are unchanged, but per-process RNG "
                                     "states (dropout) are not all restored",
                    "seed": "the data order from here on differs",
                    "batch_size": "the data position is kept (samples seen), the schedule and steps differ",
                }
                for key, now in (("num_processes", world), ("seed", cfg.seed), ("batch_size", cfg.batch_size)):
                    if state.get(key) != now:
                        self._log(f"note: the checkpoint was written with {key}={state.get(key)}, now {now}: "
                                  f"{consequence[key]}", warning=True)
                resumed_from = str(path)
                self._log(f"resumed from {path} at step {step} ({samples_seen:,} samples seen)")

        data = self.data
        sampler = ShardedStreamSampler(len(data.train), cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world,
                                       grad_accum=cfg.grad_accum, start_sample=samples_seen)
        batches = iter(self._loader(data.train, sampler))
        metrics = MetricsLogger(out, enabled=acc.is_main_process, resume_step=step if resumed_from else None,
                                tensorboard=cfg.tensorboard)
        n_params = sum(p.numel() for p in unwrapped.parameters())
        self._log(
            f"training {type(unwrapped).__name__} ({n_params / 1e6:.2f} M parameters) on {world} process(es) "
            f"[{acc.distributed_type.name}, {acc.device}, mixed precision {acc.mixed_precision}]; global batch "
            f"{cfg.batch_size} = {world} processes x {cfg.grad_accum} accumulation x {micro}; "
            f"{len(data.train):,} training samples" + "".join(f"; {k} {v}" for k, v in data.info.items())
        )

        def trainer_state() -> dict[str, Any]:
            epoch, index = position_of(samples_seen, len(data.train))
            return {
                "format": STATE_FORMAT, "step": step, "samples_seen": samples_seen, "epoch": epoch, "index": index,
                "elapsed_s": elapsed, "bad_steps_in_a_row": bad_in_a_row, "num_processes": world,
                "seed": cfg.seed, "batch_size": cfg.batch_size,
                "experiment": self.experiment.to_dict() if self.experiment is not None else None,
            }

        def checkpoint() -> None:
            save_checkpoint(acc, out, step, trainer_state(),
                            write_extra=(lambda d: ema.save(d / "ema.safetensors")) if ema is not None else None,
                            limit=cfg.checkpoint_limit)
            self._log(f"step {step}: checkpoint saved")

        # A run that ends on its time budget counts seconds on the bar (with the step in the postfix),
        # so the bar fills and its ETA is the budget's, not that of max_steps it will never reach.
        by_time = cfg.max_time_s is not None
        bar = tqdm(total=cfg.max_time_s if by_time else cfg.max_steps, initial=min(elapsed, cfg.max_time_s) if by_time else step,
                   disable=not acc.is_main_process, dynamic_ncols=True, desc="train",
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]"
                   if by_time else None)
        t0 = time.perf_counter() - elapsed  # the clock continues across resumes
        interval = {"loss": 0.0, "steps": 0, "units": 0.0, "t": time.perf_counter(), "skipped": 0}
        last_loss, last_val, last_ckpt_step = float("nan"), None, step
        try:
            while step < cfg.max_steps and not (by_time and elapsed >= cfg.max_time_s):
                lr = lr_at(cfg, step, elapsed)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                model.train()
                loss_sum, nonfinite, units = 0.0, 0, 0
                for a in range(cfg.grad_accum):
                    batch = self._to_device(next(batches))
                    sync = a == cfg.grad_accum - 1
                    with contextlib.nullcontext() if sync else acc.no_sync(model):
                        _, loss = model(**batch)
                        if loss is None:
                            raise ValueError(f"{type(unwrapped).__name__} returned no loss: the batch has no labels")
                        value = float(loss.detach())
                        if math.isfinite(value):
                            loss_sum += value
                        else:
                            nonfinite += 1
                        acc.backward(loss / cfg.grad_accum)
                    units += _count_units(batch, data.unit)
                grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                grad_norm = float(grad_norm)
                # One collective per step: loss, NaN count, throughput, and rank 0's clock (so
                # every process takes the same time-based decisions).
                local_clock = time.perf_counter() - t0 if rank == 0 else 0.0
                stats = torch.tensor([loss_sum, nonfinite, units, local_clock], dtype=torch.float64, device=acc.device)
                loss_sum, nonfinite, units, elapsed = acc.reduce(stats, reduction="sum").tolist()
                fp16_overflow = acc.mixed_precision == "fp16" and nonfinite == 0  # the grad scaler's business
                if nonfinite > 0 or (not math.isfinite(grad_norm) and not fp16_overflow):
                    optimizer.zero_grad(set_to_none=True)
                    bad_in_a_row += 1
                    interval["skipped"] += 1
                    what = "loss" if nonfinite > 0 else "gradient norm"
                    self._log(f"warning: step {step}: non-finite {what}; update skipped "
                              f"({bad_in_a_row} of train.max_bad_steps={cfg.max_bad_steps} in a row)", warning=True)
                    if bad_in_a_row >= cfg.max_bad_steps:
                        raise TrainingDiverged(
                            f"training stopped at step {step}: the {what} was NaN/inf for {bad_in_a_row} steps in a row "
                            f"(train.max_bad_steps={cfg.max_bad_steps}). Lower train.lr, raise train.warmup_steps, "
                            f"use train.mixed_precision=bf16 instead of fp16, or check the data; resume from the last "
                            f"good checkpoint with --resume latest."
                        )
                else:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    bad_in_a_row = 0
                    if ema is not None:
                        ema.update(unwrapped)
                    last_loss = loss_sum / (world * cfg.grad_accum)
                    interval["loss"] += last_loss
                    interval["steps"] += 1
                step += 1
                samples_seen += cfg.batch_size
                interval["units"] += units

                now = time.perf_counter()
                rate = interval["units"] / max(now - interval["t"], 1e-9)
                if by_time:
                    bar.update(min(elapsed, cfg.max_time_s) - bar.n)
                else:
                    bar.update(1)
                bar.set_postfix(**({"step": f"{step:,}"} if by_time else {}), loss=f"{last_loss:.4f}", lr=f"{lr:.2e}",
                                **{f"{data.unit[:3]}/s": f"{rate:,.0f}"})
                done = step >= cfg.max_steps or (by_time and elapsed >= cfg.max_time_s)

                if step % cfg.log_every == 0 or done:
                    row = {
                        "loss": interval["loss"] / interval["steps"] if interval["steps"] else float("nan"),
                        "lr": lr, "grad_norm": grad_norm, f"{data.unit}_per_s": rate, "elapsed_s": elapsed,
                        "epoch": samples_seen / len(data.train), "skipped_steps": interval["skipped"],
                        "num_processes": world,
                    }
                    row.update({k: float(v) for k, v in getattr(unwrapped, "last_metrics", {}).items()})
                    metrics.log(step, row)
                    interval.update(loss=0.0, steps=0, units=0.0, t=time.perf_counter(), skipped=0)

                if data.val is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or done):
                    last_val = self._evaluate(unwrapped, ema)
                    metrics.log(step, {**last_val, "elapsed_s": elapsed})
                    self._log(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_val.items())
                              + f" ({elapsed:.0f} s)")
                    interval["t"] = time.perf_counter()
                if data.sample_fn is not None and cfg.sample_every and (step % cfg.sample_every == 0 or done):
                    self._sample(unwrapped, ema, step, metrics)
                    interval["t"] = time.perf_counter()
                if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or done) and step != last_ckpt_step:
                    checkpoint()
                    last_ckpt_step = step
                    interval["t"] = time.perf_counter()
        finally:
            bar.close()
            metrics.close()

        export_dir = self._export(model, unwrapped, ema) if cfg.export else None
        summary = {
            "num_processes": world, "distributed_type": acc.distributed_type.name,
            "mixed_precision": acc.mixed_precision, "steps": step, "samples_seen": samples_seen,
            "elapsed_s": elapsed, "train_loss": last_loss,
            **(last_val or {}), "resumed_from": resumed_from, "export": str(export_dir) if export_dir else None,
        }
        if acc.is_main_process:
            atomic_write_text(out / "train_summary.json", json.dumps(summary, indent=2) + "\n")
        acc.wait_for_everyone()
        return summary

    # ----------------------------------------------------------------------------------

    @torch.no_grad()
    def _evaluate(self, model: nn.Module, ema: Optional[EMA]) -> dict[str, float]:
        """Mean loss over the same ``eval_batches`` validation batches every time, on every process."""
        results = {"val_loss": self._val_loss(model)}
        if ema is not None:
            with ema.swapped_into(model):
                results["val_loss_ema"] = self._val_loss(model)
        return results

    def _val_loss(self, model: nn.Module) -> float:
        """``eval_batches`` global batches, each process taking its share in micro-batches (as in training),
        so the estimate does not depend on the number of processes or accumulation steps."""
        acc, cfg = self.accelerator, self.config
        was_training = model.training
        model.eval()
        sampler = ShardedStreamSampler(len(self.data.val), cfg.batch_size, seed=cfg.seed + 1, rank=acc.process_index,
                                       world_size=acc.num_processes, grad_accum=cfg.grad_accum)
        total, count = 0.0, 0
        for _, batch in zip(range(cfg.eval_batches * cfg.grad_accum), self._loader(self.data.val, sampler)):
            _, loss = model(**self._to_device(batch))
            total += float(loss)
            count += 1
        stats = acc.reduce(torch.tensor([total, count], dtype=torch.float64, device=acc.device), reduction="sum")
        model.train(was_training)
        return float(stats[0] / max(stats[1], 1))

    def _sample(self, model: nn.Module, ema: Optional[EMA], step: int, metrics: MetricsLogger) -> None:
        acc = self.accelerator
        if acc.is_main_process and acc.distributed_type.name not in ("FSDP", "DEEPSPEED"):
            generator = torch.Generator(device="cpu").manual_seed(self.config.seed + step)  # never the global RNG
            was_training = model.training
            model.eval()
            with torch.no_grad(), (ema.swapped_into(model) if ema is not None else contextlib.nullcontext()):
                text = self.data.sample_fn(model, self.data, self.config, generator)
            model.train(was_training)
            with open(self.output_dir / "samples.txt", "a", encoding="utf-8") as f:
                f.write(f"=== step {step} ===\n{text}\n\n")
            metrics.text(step, "sample", text)
            self._log(f"step {step} sample:\n{text}\n")
        acc.wait_for_everyone()

    def _export(self, model: nn.Module, unwrapped: nn.Module, ema: Optional[EMA]) -> Path:
        """Write ``<output_dir>/model`` (config.json, model.safetensors, tokenizer.json) atomically."""
        acc = self.accelerator
        acc.wait_for_everyone()
        sharded = acc.distributed_type.name in ("FSDP", "DEEPSPEED")
        full_state = acc.get_state_dict(model) if sharded else None  # a collective under FSDP
        final = self.output_dir / "model"
        if acc.is_main_process:
            tmp = self.output_dir / ".tmp-model"
            shutil.rmtree(tmp, ignore_errors=True)
            if sharded:
                target = type(unwrapped)(unwrapped.config)
                target.load_state_dict(full_state)
            else:
                target = unwrapped
            with ema.swapped_into(target) if ema is not None else contextlib.nullcontext():
                target.save_pretrained(tmp)
            if self.data.tokenizer is not None:
                self.data.tokenizer.save(tmp)
            old = self.output_dir / ".old-model"
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            self._log(f"exported {'EMA ' if ema is not None else ''}weights to {final}")
        acc.wait_for_everyone()
        return final
