"""fp32 vs bf16 autocast on this machine, for the demo's models: which precision trains faster.

    python scripts/bench/precision.py [--threads 1] [--steps 10]

Times a training step (forward, backward, AdamW) of the demo's text-to-image model
(``configs/t2i_shapes.yaml``'s shapes, batch 32) and of the VQ (``VQConfig`` defaults, batch 32),
each in fp32 and under bf16 autocast, in one process, median of ``--steps`` steps after warm-up,
and says what ``train.mixed_precision: auto`` picks on this machine (bf16 only where it is native).
On an AMX CPU bf16 wins for the VQ (2x) and loses for the t2i model, which trains in fp32; on an
AVX2 CPU (no native bf16) bf16 is 8-12x slower for both, so ``auto`` configs train in fp32 there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _steps_per_s(make_step: Callable[[bool], Callable[[], None]], bf16: bool, steps: int, warmup: int = 2) -> float:
    step = make_step(bf16)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times)


def _training_step(model: torch.nn.Module, batch: dict, bf16: bool) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(**batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def t2i_step(bf16: bool, smoke: bool = False) -> Callable[[], None]:
    from mmgen.models.text_to_image import TextToImage
    from mmgen.training.config import load_experiment

    cfg = load_experiment(str(REPO / "configs" / "t2i_shapes.yaml"), []).model
    cfg = cfg.replace(text_vocab_size=cfg.text_vocab_size or 64).model_config()
    batch_size = 32
    if smoke:
        cfg = cfg.replace(image_decoder=cfg.image_decoder.replace(n_layers=1), text_encoder=cfg.text_encoder.replace(n_layers=1))
        batch_size = 2
    torch.manual_seed(0)
    model = TextToImage(cfg).train()
    ids = torch.randint(1, cfg.text_encoder.vocab_size, (batch_size, 16))
    codes = torch.randint(0, cfg.image_decoder.codebook_size, (batch_size, cfg.image_decoder.num_codes))
    return _training_step(model, {"text_ids": ids, "text_mask": torch.ones_like(ids), "codes": codes}, bf16)


def vq_step(bf16: bool, smoke: bool = False) -> Callable[[], None]:
    from mmgen.models.vq import VQConfig, VQModel

    cfg = VQConfig()
    torch.manual_seed(0)
    model = VQModel(cfg).train()
    images = torch.rand(2 if smoke else 32, 3, cfg.image_size, cfg.image_size) * 2 - 1
    return _training_step(model, {"images": images}, bf16)


def main(argv: Optional[list[str]] = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, 1 step: checks that it runs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = 1 if args.smoke else args.steps
    results = {}
    for name, make in (("text-to-image (t2i_shapes)", t2i_step), ("VQ (VQConfig defaults)", vq_step)):
        fp32 = _steps_per_s(lambda bf16: make(bf16, args.smoke), False, steps)
        bf16 = _steps_per_s(lambda bf16: make(bf16, args.smoke), True, steps)
        results[name] = {"fp32": fp32, "bf16": bf16}
        print(f"{name}: fp32 {fp32:.2f} steps/s, bf16 autocast {bf16:.2f} steps/s "
              f"({'bf16' if bf16 > fp32 else 'fp32'} faster, {max(bf16, fp32) / min(bf16, fp32):.2f}x), {args.threads} thread(s)")
    from mmgen.training.trainer import resolve_precision

    print(f"train.mixed_precision: auto -> {resolve_precision('auto')} on this machine")
    return results


if __name__ == "__main__":
    main()
