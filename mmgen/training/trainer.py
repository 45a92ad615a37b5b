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
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
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
from mmgen.training.kind import TrainingData
from mmgen.training.metrics import MetricsLogger
from mmgen.training.optim import build_optimizer, lr_at
from mmgen.training.sampler import ShardedStreamSampler, position_of

__all__ = ["Trainer", "TrainingData", "TrainingDiverged", "make_accelerator"]

STATE_FORMAT = 1


class TrainingDiverged(RuntimeError):
    """The loss or gradients were NaN/inf for too many steps in a row."""


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


_RESUME_CONSEQUENCE = {  # what differs when a run resumes with another value of the key
    "num_processes": "the data order and global batch are unchanged, but per-process RNG "
                     "states (dropout) are not all restored",
    "seed": "the data order from here on differs",
    "batch_size": "the data position is kept (samples seen), the schedule and steps differ",
}


@dataclass
class _Run:
    """The prepared objects of a run: the model and optimizer as Accelerate wraps them, the bare
    model (for its config, metrics and export) and the EMA."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    unwrapped: nn.Module
    ema: Optional[EMA]


@dataclass
class _Progress:
    """Where a run stands (what a checkpoint records, and resuming reads back) and what it last measured."""

    step: int = 0
    samples_seen: int = 0
    elapsed: float = 0.0  # training seconds, continued across resumes (rank 0's clock)
    bad_in_a_row: int = 0  # non-finite steps in a row (the NaN guard)
    resumed_from: Optional[str] = None
    last_ckpt_step: int = 0  # the step of the newest checkpoint (never written twice)
    last_loss: float = float("nan")
    last_val: Optional[dict[str, float]] = None


@dataclass
class _Interval:
    """What the next metrics row averages, and the throughput's clock (restarted after validation,
    samples and checkpoints, whose time is not training time)."""

    loss: float = 0.0
    steps: int = 0
    units: float = 0.0
    skipped: int = 0
    t: float = field(default_factory=time.perf_counter)

    def reset(self) -> None:
        self.loss, self.steps, self.units, self.skipped, self.t = 0.0, 0, 0.0, 0, time.perf_counter()


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
        micro = self._setup_output()
        run = self._prepare()
        progress = self._resume(resume, run.ema)
        cfg, acc = self.config, self.accelerator
        sampler = ShardedStreamSampler(len(self.data.train), cfg.batch_size, seed=cfg.seed, rank=acc.process_index,
                                       world_size=acc.num_processes, grad_accum=cfg.grad_accum,
                                       start_sample=progress.samples_seen)
        batches = iter(self._loader(self.data.train, sampler))
        metrics = MetricsLogger(self.output_dir, enabled=acc.is_main_process,
                                resume_step=progress.step if progress.resumed_from else None, tensorboard=cfg.tensorboard)
        self._announce(run.unwrapped, micro)
        bar = self._progress_bar(progress)
        t0 = time.perf_counter() - progress.elapsed  # the clock continues across resumes
        interval = _Interval()
        try:
            while not self._done(progress):
                lr, grad_norm = self._step(run, batches, progress, interval, t0)
                rate = interval.units / max(time.perf_counter() - interval.t, 1e-9)
                self._update_bar(bar, progress, lr, rate)
                self._log_metrics(run, metrics, progress, interval, lr, grad_norm, rate)
                self._evaluate_sample_checkpoint(run, metrics, progress, interval)
        finally:
            bar.close()
            metrics.close()
        export_dir = self._export(run.model, run.unwrapped, run.ema) if cfg.export else None
        return self._finish(progress, export_dir)

    # setup ------------------------------------------------------------------------------

    def _setup_output(self) -> int:
        """Check the batch layout, create the output folder with the experiment's config.yaml;
        returns the micro-batch (samples per process per accumulation step)."""
        acc, cfg = self.accelerator, self.config
        world = acc.num_processes
        if cfg.batch_size % (world * cfg.grad_accum):
            raise ConfigError(
                f"train.batch_size={cfg.batch_size} (the global batch) must be divisible by "
                f"processes x train.grad_accum = {world} x {cfg.grad_accum}"
            )
        if cfg.ema_decay is not None and acc.distributed_type.name in ("FSDP", "DEEPSPEED"):
            raise ConfigError("train.ema_decay is not supported with sharded (FSDP/DeepSpeed) training")
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if self.experiment is not None:
                atomic_write_text(self.output_dir / "config.yaml", self.experiment.to_yaml())
        return cfg.batch_size // (world * cfg.grad_accum)

    def _prepare(self) -> "_Run":
        """The optimizer, the model and optimizer as Accelerate wraps them, and the EMA (if any)."""
        optimizer = build_optimizer(self.model, self.config)
        model, optimizer = self.accelerator.prepare(self.model, optimizer)
        unwrapped = self.accelerator.unwrap_model(model)
        ema = EMA(unwrapped, self.config.ema_decay) if self.config.ema_decay is not None else None
        return _Run(model=model, optimizer=optimizer, unwrapped=unwrapped, ema=ema)

    def _resume(self, resume: Optional[str], ema: Optional[EMA]) -> "_Progress":
        """Where training starts: step 0, or the state of the checkpoint ``resume`` names (loaded into
        the prepared model, optimizer, scheduler, RNGs and EMA). A folder that holds checkpoints is
        never trained into from scratch."""
        acc, cfg, out = self.accelerator, self.config, self.output_dir
        existing = list_checkpoints(checkpoint_dir(out))
        if not resume and existing:
            raise ConfigError(
                f"train.output_dir={out} already holds checkpoints (newest: {existing[-1][1].name}); continue "
                f"with --resume latest, or pick another train.output_dir (nothing there is overwritten)"
            )
        progress = _Progress()
        if not resume:
            return progress
        path = resolve_checkpoint(resume, out)
        if path is None:
            self._log(f"--resume {resume}: no checkpoint in {out / 'checkpoints'} yet; starting from scratch")
            return progress
        acc.load_state(str(path))
        state = read_trainer_state(path)
        progress = _Progress(step=int(state["step"]), samples_seen=int(state["samples_seen"]),
                             elapsed=float(state["elapsed_s"]), bad_in_a_row=int(state["bad_steps_in_a_row"]),
                             resumed_from=str(path), last_ckpt_step=int(state["step"]))
        if ema is not None:
            if not (path / "ema.safetensors").is_file():
                raise FileNotFoundError(f"{path}: no ema.safetensors, but train.ema_decay is set")
            ema.load(path / "ema.safetensors")
        for key, now in (("num_processes", acc.num_processes), ("seed", cfg.seed), ("batch_size", cfg.batch_size)):
            if state.get(key) != now:
                self._log(f"note: the checkpoint was written with {key}={state.get(key)}, now {now}: "
                          f"{_RESUME_CONSEQUENCE[key]}", warning=True)
        self._log(f"resumed from {path} at step {progress.step} ({progress.samples_seen:,} samples seen)")
        return progress

    def _announce(self, unwrapped: nn.Module, micro: int) -> None:
        acc, cfg, data = self.accelerator, self.config, self.data
        world = acc.num_processes
        n_params = sum(p.numel() for p in unwrapped.parameters())
        self._log(
            f"training {type(unwrapped).__name__} ({n_params / 1e6:.2f} M parameters) on {world} process(es) "
            f"[{acc.distributed_type.name}, {acc.device}, mixed precision {acc.mixed_precision}]; global batch "
            f"{cfg.batch_size} = {world} processes x {cfg.grad_accum} accumulation x {micro}; "
            f"{len(data.train):,} training samples" + "".join(f"; {k} {v}" for k, v in data.info.items())
        )

    def _progress_bar(self, progress: "_Progress") -> tqdm:
        # A run that ends on its time budget counts seconds on the bar (with the step in the postfix),
        # so the bar fills and its ETA is the budget's, not that of max_steps it will never reach.
        cfg = self.config
        by_time = cfg.max_time_s is not None
        return tqdm(total=cfg.max_time_s if by_time else cfg.max_steps,
                    initial=min(progress.elapsed, cfg.max_time_s) if by_time else progress.step,
                    disable=not self.accelerator.is_main_process, dynamic_ncols=True, desc="train",
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]"
                    if by_time else None)

    def _done(self, progress: "_Progress") -> bool:
        cfg = self.config
        return progress.step >= cfg.max_steps or (cfg.max_time_s is not None and progress.elapsed >= cfg.max_time_s)

    # the step ---------------------------------------------------------------------------

    def _step(self, run: "_Run", batches, progress: "_Progress", interval: "_Interval", t0: float) -> tuple[float, float]:
        """One optimiser step (``grad_accum`` micro-steps), or a skipped one when the loss or gradient
        norm is not finite; returns the step's learning rate and gradient norm."""
        acc, cfg = self.accelerator, self.config
        lr = lr_at(cfg, progress.step, progress.elapsed)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        run.model.train()
        loss_sum, nonfinite, units = self._accumulate(run, batches)
        grad_norm = float(acc.clip_grad_norm_(run.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf))
        # One collective per step: loss, NaN count, throughput, and rank 0's clock (so
        # every process takes the same time-based decisions).
        local_clock = time.perf_counter() - t0 if acc.process_index == 0 else 0.0
        stats = torch.tensor([loss_sum, nonfinite, units, local_clock], dtype=torch.float64, device=acc.device)
        loss_sum, nonfinite, units, progress.elapsed = acc.reduce(stats, reduction="sum").tolist()
        fp16_overflow = acc.mixed_precision == "fp16" and nonfinite == 0  # the grad scaler's business
        if nonfinite > 0 or (not math.isfinite(grad_norm) and not fp16_overflow):
            self._skip_step(run, progress, interval, "loss" if nonfinite > 0 else "gradient norm")
        else:
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            progress.bad_in_a_row = 0
            if run.ema is not None:
                run.ema.update(run.unwrapped)
            progress.last_loss = loss_sum / (acc.num_processes * cfg.grad_accum)
            interval.loss += progress.last_loss
            interval.steps += 1
        progress.step += 1
        progress.samples_seen += cfg.batch_size
        interval.units += units
        return lr, grad_norm

    def _accumulate(self, run: "_Run", batches) -> tuple[float, int, int]:
        """Forward and backward over ``grad_accum`` micro-batches (gradients synced on the last only);
        returns this process's sum of finite losses, count of non-finite ones, and units seen."""
        acc, cfg = self.accelerator, self.config
        loss_sum, nonfinite, units = 0.0, 0, 0
        for a in range(cfg.grad_accum):
            batch = self._to_device(next(batches))
            sync = a == cfg.grad_accum - 1
            with contextlib.nullcontext() if sync else acc.no_sync(run.model):
                _, loss = run.model(**batch)
                if loss is None:
                    raise ValueError(f"{type(run.unwrapped).__name__} returned no loss: the batch has no labels")
                value = float(loss.detach())
                if math.isfinite(value):
                    loss_sum += value
                else:
                    nonfinite += 1
                acc.backward(loss / cfg.grad_accum)
            units += _count_units(batch, self.data.unit)
        return loss_sum, nonfinite, units

    def _skip_step(self, run: "_Run", progress: "_Progress", interval: "_Interval", what: str) -> None:
        """The NaN guard: drop this step's gradients; stop with TrainingDiverged after max_bad_steps in a row."""
        cfg = self.config
        run.optimizer.zero_grad(set_to_none=True)
        progress.bad_in_a_row += 1
        interval.skipped += 1
        self._log(f"warning: step {progress.step}: non-finite {what}; update skipped "
                  f"({progress.bad_in_a_row} of train.max_bad_steps={cfg.max_bad_steps} in a row)", warning=True)
        if progress.bad_in_a_row >= cfg.max_bad_steps:
            raise TrainingDiverged(
                f"training stopped at step {progress.step}: the {what} was NaN/inf for {progress.bad_in_a_row} steps "
                f"in a row (train.max_bad_steps={cfg.max_bad_steps}). Lower train.lr, raise train.warmup_steps, "
                f"use train.mixed_precision=bf16 instead of fp16, or check the data; resume from the last "
                f"good checkpoint with --resume latest."
            )

    # logging, evaluation, checkpoints ---------------------------------------------------

    def _update_bar(self, bar: tqdm, progress: "_Progress", lr: float, rate: float) -> None:
        cfg = self.config
        by_time = cfg.max_time_s is not None
        if by_time:
            bar.update(min(progress.elapsed, cfg.max_time_s) - bar.n)
        else:
            bar.update(1)
        bar.set_postfix(**({"step": f"{progress.step:,}"} if by_time else {}), loss=f"{progress.last_loss:.4f}",
                        lr=f"{lr:.2e}", **{f"{self.data.unit[:3]}/s": f"{rate:,.0f}"})

    def _log_metrics(self, run: "_Run", metrics: MetricsLogger, progress: "_Progress", interval: "_Interval",
                     lr: float, grad_norm: float, rate: float) -> None:
        """Every ``log_every`` steps (and at the end), a metrics row averaging the steps since the last."""
        if progress.step % self.config.log_every and not self._done(progress):
            return
        row = {
            "loss": interval.loss / interval.steps if interval.steps else float("nan"),
            "lr": lr, "grad_norm": grad_norm, f"{self.data.unit}_per_s": rate, "elapsed_s": progress.elapsed,
            "epoch": progress.samples_seen / len(self.data.train), "skipped_steps": interval.skipped,
            "num_processes": self.accelerator.num_processes,
        }
        row.update({k: float(v) for k, v in getattr(run.unwrapped, "last_metrics", {}).items()})
        metrics.log(progress.step, row)
        interval.reset()

    def _evaluate_sample_checkpoint(self, run: "_Run", metrics: MetricsLogger, progress: "_Progress",
                                    interval: "_Interval") -> None:
        """The periodic work between steps: validation, samples, checkpoints (each also at the end).
        Their time is not training time: the throughput's clock restarts after each."""
        cfg, data, step = self.config, self.data, progress.step
        done = self._done(progress)
        if data.val is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or done):
            progress.last_val = self._evaluate(run.unwrapped, run.ema)
            metrics.log(step, {**progress.last_val, "elapsed_s": progress.elapsed})
            self._log(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in progress.last_val.items())
                      + f" ({progress.elapsed:.0f} s)")
            interval.t = time.perf_counter()
        if data.sample_fn is not None and cfg.sample_every and (step % cfg.sample_every == 0 or done):
            self._sample(run.unwrapped, run.ema, step, metrics)
            interval.t = time.perf_counter()
        if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or done) and step != progress.last_ckpt_step:
            self._checkpoint(run.ema, progress)
            progress.last_ckpt_step = step
            interval.t = time.perf_counter()

    def _trainer_state(self, progress: "_Progress") -> dict[str, Any]:
        """What a checkpoint's trainer_state.json records beside Accelerate's state."""
        cfg = self.config
        epoch, index = position_of(progress.samples_seen, len(self.data.train))
        return {
            "format": STATE_FORMAT, "step": progress.step, "samples_seen": progress.samples_seen, "epoch": epoch,
            "index": index, "elapsed_s": progress.elapsed, "bad_steps_in_a_row": progress.bad_in_a_row,
            "num_processes": self.accelerator.num_processes, "seed": cfg.seed, "batch_size": cfg.batch_size,
            "experiment": self.experiment.to_dict() if self.experiment is not None else None,
        }

    def _checkpoint(self, ema: Optional[EMA], progress: "_Progress") -> None:
        save_checkpoint(self.accelerator, self.output_dir, progress.step, self._trainer_state(progress),
                        write_extra=(lambda d: ema.save(d / "ema.safetensors")) if ema is not None else None,
                        limit=self.config.checkpoint_limit)
        self._log(f"step {progress.step}: checkpoint saved")

    def _finish(self, progress: "_Progress", export_dir: Optional[Path]) -> dict[str, Any]:
        """The run summary, written to ``train_summary.json`` by the main process."""
        acc = self.accelerator
        summary = {
            "num_processes": acc.num_processes, "distributed_type": acc.distributed_type.name,
            "mixed_precision": acc.mixed_precision, "steps": progress.step, "samples_seen": progress.samples_seen,
            "elapsed_s": progress.elapsed, "train_loss": progress.last_loss,
            **(progress.last_val or {}), "resumed_from": progress.resumed_from,
            "export": str(export_dir) if export_dir else None,
        }
        if acc.is_main_process:
            atomic_write_text(self.output_dir / "train_summary.json", json.dumps(summary, indent=2) + "\n")
        acc.wait_for_everyone()
        return summary

    # evaluation, samples, export --------------------------------------------------------

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
