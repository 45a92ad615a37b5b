"""Benchmark (d): one training step (forward, backward, AdamW), mmgen vs its peers.

    python scripts/bench/train_step.py [--threads 2] [--repeats 3] [--model gpt t2i] [--no-memory]

* ``gpt``: mmgen GPT vs transformers' GPT2LMHeadModel (6 layers, 8 heads, width 256, vocabulary
  1,024, 512 positions; the same weights), batch 16 × 256, next-token loss. Tokens/s.
* ``t2i``: mmgen text-to-image (text encoder + image decoder, ``t2i_models.py``) vs dalle-pytorch
  DALLE at the matched size, batch 8 captions of 32 tokens + 8 × 8 code grids. Image tokens/s.

Both sides: ``torch.optim.AdamW(lr=3e-4)`` with torch's default implementation (foreach), no
dropout, fp32, ``zero_grad(set_to_none=True)`` each step. Peak memory is measured in a fresh
subprocess per side: the resident set's high-water mark (Linux ``VmHWM``, reset through
``/proc/self/clear_refs`` once the models and batch exist) over two training steps, minus the
resident set just before them — i.e. what training adds on top of the built model (activations,
gradients, optimizer state). Falls back to ``ru_maxrss`` where ``clear_refs`` is unavailable.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import t2i_models
import text_decode
from _common import Result, add_common_args, cpu_ratio, report, setup, time_sides, try_import

import torch

GPT_BATCH = dict(full=(16, 256), smoke=(2, 8))
T2I_BATCH = dict(full=8, smoke=2)


def _stepper(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    return step


def build_steps(kind: str, smoke: bool, with_peer: bool = True) -> tuple[dict[str, Callable[[], None]], int, str, str]:
    """{"mmgen": step, "peer": step (when installed)}, tokens per step, unit, peer name."""
    size = "smoke" if smoke else "full"
    if kind == "gpt":
        ours, peer = text_decode.build(text_decode.SMOKE if smoke else text_decode.FULL, with_peer)
        B, T = GPT_BATCH[size]
        ids = torch.randint(0, ours.config.vocab_size, (B, T))
        steps = {"mmgen": _stepper(ours, lambda: ours(ids, labels=ids)[1])}
        if peer is not None:
            steps["peer"] = _stepper(peer, lambda: peer(input_ids=ids, labels=ids).loss)
        return steps, B * T, "tokens/s", "transformers GPT2LMHeadModel"
    if kind == "t2i":
        shape = t2i_models.SMOKE if smoke else t2i_models.FULL
        B = T2I_BATCH[size]
        n_codes = shape["grid"] ** 2
        ids, mask = t2i_models.text_batch(shape, B)
        codes = torch.randint(0, shape["codebook"], (B, n_codes))
        ours = t2i_models.build_mmgen(shape)
        steps = {"mmgen": _stepper(ours, lambda: ours(ids, mask, codes)[1])}
        dalle_pytorch = try_import("dalle_pytorch") if with_peer else None
        if dalle_pytorch is not None:
            dalle = t2i_models.build_dalle(dalle_pytorch, shape)
            steps["peer"] = _stepper(dalle, lambda: dalle(ids, codes, return_loss=True))
        return steps, B * n_codes, "image tokens/s", "dalle-pytorch DALLE"
    raise ValueError(f"unknown model kind {kind!r}; expected 'gpt' or 't2i'")


# ---- peak memory, one fresh process per side ----------------------------------------------


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def measure_peak_growth_mb(step: Callable[[], None], n_steps: int = 2) -> tuple[float, str]:
    """(peak resident-set growth in MB over ``n_steps`` calls, method)."""
    import resource

    baseline = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        method = "VmHWM"
    except OSError:
        method = "ru_maxrss (includes any earlier peak: an upper bound)"
    for _ in range(n_steps):
        step()
    peak = _status_kb("VmHWM") if method == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak - baseline) / 1024, method


def _probe(kind: str, side: str, smoke: bool, threads: int) -> None:
    """Subprocess entry: build, measure one side, print one JSON line."""
    setup(threads)
    steps, *_ = build_steps(kind, smoke, with_peer=side == "peer")
    mb, method = measure_peak_growth_mb(steps[side])
    print(json.dumps({"peak_mb": mb, "method": method}))


def peak_memory(kind: str, side: str, smoke: bool, threads: int) -> Optional[dict]:
    cmd = [sys.executable, __file__, "--probe", kind, side, "--threads", str(threads)] + (["--smoke"] if smoke else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        print(f"memory probe {kind}/{side} failed: {done.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(lines[-1])


# ---- the benchmark ------------------------------------------------------------------------


def run(
    kinds=("gpt", "t2i"), threads: int = 2, repeats: int = 3, warmup: int = 1, smoke: bool = False,
    memory: bool = True, with_peer: bool = True,
) -> list[Result]:
    setup(threads)
    results = []
    for kind in kinds:
        steps, tokens, unit, peer_name = build_steps(kind, smoke, with_peer)
        t = time_sides(steps, warmup, repeats)
        extra = {}
        if memory:
            for side in steps:
                probe = peak_memory(kind, side, smoke, threads)
                if probe is not None:
                    extra[f"peak memory added by training, {side}"] = f"{probe['peak_mb']:.0f} MB ({probe['method']})"
        case = f"batch {GPT_BATCH['smoke' if smoke else 'full'][0]}×{GPT_BATCH['smoke' if smoke else 'full'][1]}" if kind == "gpt" else (
            f"batch {T2I_BATCH['smoke' if smoke else 'full']}"
        )
        results.append(
            Result(
                f"train step ({kind})", case + ", AdamW", unit, tokens / t["mmgen"].wall,
                tokens / t["peer"].wall if "peer" in t else None, peer_name, extra, cpu_ratio(t),
            )
        )
    return results


def main(argv: Optional[list[str]] = None) -> list[Result]:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--model", nargs="+", default=["gpt", "t2i"], choices=["gpt", "t2i"])
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--probe", nargs=2, metavar=("KIND", "SIDE"), help=argparse.SUPPRESS)
    parser.set_defaults(repeats=3)
    args = parser.parse_args(argv)
    if args.probe:
        _probe(*args.probe, args.smoke, args.threads)
        return []
    results = run(args.model, args.threads, 1 if args.smoke else args.repeats, args.warmup, args.smoke, not args.no_memory)
    report(results, args.json)
    return results


if __name__ == "__main__":
    main()
