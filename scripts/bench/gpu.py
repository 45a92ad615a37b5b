"""GPU benchmark: training MFU and sampling latency of the GPU-sized text-to-image model.

    python scripts/bench/gpu.py                                  # configs/t2i_base_gpu.yaml on cuda
    python scripts/bench/gpu.py --batch 64 --compile --json out.json
    python scripts/bench/gpu.py --device cpu --smoke             # tiny shapes: checks that it runs

Training: the config's TextToImage with random weights, random caption ids (full length) and
codes of its grid, AdamW, bf16 autocast, ``--steps`` timed steps after ``--warmup`` steps
(``torch.cuda.synchronize`` around them). **MFU** = model FLOPs per step / (seconds per step ×
peak dense bf16 FLOP/s of the device: ``--peak-tflops``, default 989 for an H100 SXM).
Model FLOPs follow PaLM's convention: 3 × forward, forward = 2 × (matmul weights × the tokens
they apply to) + attention (QKᵀ and AV over full, not causally halved, lengths); no
recomputation counted. :func:`train_flops_per_sample` is checked against
``torch.utils.flop_counter`` in ``tests/test_bench.py``.

Sampling: 16 images × the config's grid (256 codes) with guidance 3 (32 rows), the transformers in
bf16, wall time of one pipeline call without VQ decoding (``sample_image_codes``), median of
``--repeats``; with ``--compile`` the decode step is compiled (in the warm-up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mmgen.config import TextToImageConfig  # noqa: E402
from mmgen.models.text_to_image import TextToImage  # noqa: E402

H100_BF16_TFLOPS = 989.0  # dense bf16, H100 SXM (H200: the same compute)


def _linear_weights(module: nn.Module, select=lambda name: True) -> int:
    return sum(m.weight.numel() for name, m in module.named_modules() if isinstance(m, nn.Linear) and select(name))


def train_flops_per_sample(model: TextToImage, text_len: int) -> float:
    """Model FLOPs of one training sample (forward + backward = 3 × forward), PaLM's convention."""
    enc, dec = model.text_encoder, model.image_decoder
    ec, dc = enc.config, dec.config
    n, t = dc.num_codes, text_len
    inner_enc, inner_dec = ec.n_heads * ec.d_head, dc.n_heads * dc.d_head
    forward = 2 * _linear_weights(enc) * t + ec.n_layers * 2 * 2 * t * t * inner_enc  # encoder + its attention
    head = dec.head.weight.numel() if dec.head is not None else dc.codebook_size * dc.dim
    forward += 2 * head * n  # logits only for the code positions
    c = 2 * t if ec.context_embeddings else t  # the decoder's context: the states (+ each word's embedding)
    is_kv = lambda name: name.endswith("cross_attn.kv")  # noqa: E731  (applied to the context rows)
    forward += 2 * _linear_weights(dec.trunk, lambda name: not is_kv(name)) * n
    forward += 2 * _linear_weights(dec.trunk, is_kv) * c
    forward += dc.n_layers * 2 * 2 * (n * n + n * c) * inner_dec  # self- and cross-attention
    return 3.0 * forward


def load_model_config(config_path: str, smoke: bool) -> TextToImageConfig:
    """The ``model`` section of an experiment YAML as a TextToImageConfig (text vocabulary 4,096),
    or with ``smoke`` the tiny shapes the other benchmarks smoke-test with (``t2i_models.SMOKE``)."""
    if smoke:
        import t2i_models

        return t2i_models.build_mmgen(t2i_models.SMOKE).config
    from mmgen.training.config import load_experiment

    experiment = load_experiment(config_path, [])
    model_cfg = experiment.model
    if model_cfg.text_vocab_size is None:
        model_cfg = model_cfg.replace(text_vocab_size=4096)
    return model_cfg.model_config()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_training(cfg: TextToImageConfig, device: torch.device, batch: int, steps: int, warmup: int,
                   compile: bool) -> dict:
    torch.manual_seed(0)
    model = TextToImage(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    t = cfg.text_encoder.max_len
    dec = cfg.image_decoder
    ids = torch.randint(1, cfg.text_encoder.vocab_size, (batch, t), device=device)
    mask = torch.ones_like(ids)
    codes = torch.randint(0, dec.codebook_size, (batch, dec.num_codes), device=device)
    forward = torch.compile(model) if compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step():
        with autocast:
            _, loss = forward(ids, mask, codes)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    flops = train_flops_per_sample(model, t) * batch
    return {"batch": batch, "seconds_per_step": seconds, "samples_per_s": batch / seconds,
            "image_tokens_per_s": batch * dec.num_codes / seconds, "model_tflops_per_step": flops / 1e12,
            "achieved_tflops": flops / seconds / 1e12,
            "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}


def bench_sampling(cfg: TextToImageConfig, device: torch.device, images: int, guidance: float, repeats: int,
                   compile: bool) -> dict:
    from mmgen.sampling.image import sample_image_codes
    from mmgen.sampling.processors import SamplingParams, make_generators

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = TextToImage(cfg).to(device=device, dtype=dtype).eval()
    t = cfg.text_encoder.max_len
    ids = torch.randint(1, cfg.text_encoder.vocab_size, (images, t), device=device)
    mask = torch.ones_like(ids)
    params = SamplingParams(temperature=1.0, top_k=64)

    def call():
        with torch.inference_mode():
            states = model.encode_text(ids, mask)
            return sample_image_codes(model.image_decoder, states, mask, params, guidance,
                                      generators=make_generators(0, images), compile=compile)

    call()  # warm-up (and compile)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        codes = call()
        _sync(device)
        times.append(time.perf_counter() - start)
    assert codes.shape == (images, cfg.image_decoder.num_codes)
    seconds = statistics.median(times)
    return {"images": images, "codes_per_image": cfg.image_decoder.num_codes, "guidance_scale": guidance,
            "dtype": str(dtype).replace("torch.", ""), "seconds": seconds,
            "image_tokens_per_s": images * cfg.image_decoder.num_codes / seconds}


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "configs" / "t2i_base_gpu.yaml"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=32, help="training micro-batch on this device (default 32)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="torch.compile the training model and the decode step")
    p.add_argument("--peak-tflops", type=float, default=H100_BF16_TFLOPS,
                   help="the device's peak dense bf16 TFLOP/s (default: H100 SXM, 989)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, few steps: checks that it runs")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: no CUDA device here; run it where there is one (or --device cpu --smoke to check it runs)")
        return {}
    if args.smoke:
        args.batch, args.steps, args.warmup, args.images, args.repeats = 2, 1, 1, 2, 1
    cfg = load_model_config(args.config, args.smoke)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    train = bench_training(cfg, device, args.batch, args.steps, args.warmup, args.compile)
    train["mfu"] = train["achieved_tflops"] / args.peak_tflops
    sample = bench_sampling(cfg, device, args.images, args.guidance_scale, args.repeats, args.compile)
    result = {"device": name, "torch": torch.__version__, "config": "smoke" if args.smoke else args.config,
              "compile": args.compile, "peak_tflops": args.peak_tflops, "training": train, "sampling": sample}
    print(f"device {name}, torch {torch.__version__}, {train['parameters_m']:.0f} M parameters, compile {args.compile}")
    print(f"training: batch {train['batch']}, {train['seconds_per_step'] * 1e3:.1f} ms/step, "
          f"{train['image_tokens_per_s']:,.0f} image tokens/s, {train['achieved_tflops']:.1f} TFLOP/s, "
          f"MFU {train['mfu'] * 100:.1f} % (of {args.peak_tflops:.0f})")
    print(f"sampling: {sample['images']} images x {sample['codes_per_image']} codes, guidance {sample['guidance_scale']}, "
          f"{sample['dtype']}: {sample['seconds']:.2f} s ({sample['image_tokens_per_s']:,.0f} image tokens/s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
