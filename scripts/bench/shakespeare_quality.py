"""Quality benchmark: char-level GPT on Tiny Shakespeare, validation loss against wall time.

    mmgen data text --source shakespeare            # once
    python scripts/bench/shakespeare_quality.py     # ~15 minutes on 2 CPU cores
    # or two processes of one thread each:
    OMP_NUM_THREADS=1 ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 \
        --num_machines 1 --mixed_precision no --dynamo_backend no scripts/bench/shakespeare_quality.py

Trains ``configs/gpt_shakespeare_char.yaml`` for a fixed wall-time budget (the cosine schedule
runs over that time), then prints the validation-loss curve, whether it beat the target
(nanoGPT's CPU "baby GPT" reaches 1.88), and a sample from the exported model. The whole wall
time, from start-up to the final evaluation, is what counts against the 15 minutes.

Extra ``--section.key=value`` arguments override the config (e.g. ``--model.n_layers=3``).
Results: ``<output_dir>/quality.json`` and ``quality.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

START = time.perf_counter()

try:
    import mmgen  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from mmgen.models.gpt import GPT
from mmgen.sampling import generate
from mmgen.text.tokenizer import TextTokenizer
from mmgen.training.cli import run

REPO = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs/gpt_shakespeare_char.yaml"))
    parser.add_argument("--budget-s", type=float, default=840.0, help="training wall time (train.max_time_s)")
    parser.add_argument("--target", type=float, default=1.88, help="validation loss to beat")
    parser.add_argument("--output-dir", default="runs/bench_shakespeare_char")
    parser.add_argument("--overwrite", action="store_true", help="delete the output folder of an earlier run first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args, overrides = parser.parse_known_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    # PartialState, unlike Accelerator, does not read ACCELERATE_USE_CPU: without it, two CPU
    # processes would each believe they are alone.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if args.overwrite and state.is_main_process:
        shutil.rmtree(out, ignore_errors=True)
    state.wait_for_everyone()
    summary = run(args.config, [*overrides, f"--train.output_dir={out}", f"--train.max_time_s={args.budget_s}",
                                "--train.max_steps=1000000"], resume=None)
    wall = time.perf_counter() - START
    if not state.is_main_process:  # under `accelerate launch`, one process reports
        return 0

    with open(out / "metrics.csv", newline="") as f:
        curve = [(float(r["elapsed_s"]), int(r["step"]), float(r["val_loss"])) for r in csv.DictReader(f) if r.get("val_loss")]
    first_below = next(((t, s) for t, s, v in curve if v < args.target), None)

    model = GPT.from_pretrained(out / "model").eval()
    tok = TextTokenizer.from_pretrained(out / "model")
    prompt = tok.encode("ROMEO:\n", add_special_tokens=False)
    with torch.no_grad():
        new = generate(model, torch.tensor([prompt]), max_new_tokens=model.config.max_len - len(prompt),
                       temperature=0.8, top_k=None, seed=0)
    sample = tok.decode(prompt + new[0].tolist())

    result = {
        "config": args.config, "overrides": overrides, "budget_s": args.budget_s, "wall_s": wall,
        "steps": summary["steps"], "final_val_loss": summary.get("val_loss"), "target": args.target,
        "passed": summary.get("val_loss", float("inf")) < args.target and wall < 900,
        "first_below_target": {"elapsed_s": first_below[0], "step": first_below[1]} if first_below else None,
        "num_processes": summary["num_processes"], "threads": torch.get_num_threads(), "curve": [{"elapsed_s": t, "step": s, "val_loss": v} for t, s, v in curve],
        "sample": sample,
    }
    (out / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"char-level GPT on Tiny Shakespeare, {summary['num_processes']} process(es) x {torch.get_num_threads()} "
        f"thread(s), budget {args.budget_s:.0f} s of training, {wall:.0f} s wall in all",
        "",
        "| wall time (s) | step | val loss |",
        "| ---: | ---: | ---: |",
        *[f"| {t:.0f} | {s} | {v:.4f} |" for t, s, v in curve],
        "",
        f"final val loss {summary.get('val_loss'):.4f} (target < {args.target}): {'PASS' if result['passed'] else 'FAIL'}"
        + (f"; first below the target at {first_below[0]:.0f} s (step {first_below[1]})" if first_below else ""),
        "",
        "sample (temperature 0.8, seed 0):",
        "",
        "```",
        sample,
        "```",
    ]
    (out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
