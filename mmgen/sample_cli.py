"""``mmgen sample``: generate images from a bundle and write PNGs that carry their parameters."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Optional

from .checkpoint import CheckpointError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmgen sample",
        description="Generate images from a text prompt. Each PNG carries its generation parameters "
        "(an A1111-style 'parameters' text chunk and a JSON 'mmgen' chunk); read them back with "
        "`mmgen sample --info FILE.png` or mmgen.pipelines.read_png_metadata.",
    )
    p.add_argument("--bundle", default=None, help="bundle folder (default: the shipped demo bundle)")
    p.add_argument("--prompt", action="append", help="prompt (repeat for several)")
    p.add_argument("--negative-prompt", default=None, help="what to steer away from (used when guidance != 1)")
    p.add_argument("--num-images", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (default: the bundle's)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the bundle's)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely codes (default: the bundle's)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold in (0, 1]")
    p.add_argument("--candidates", type=int, default=None,
                   help="sample this many per image and keep the one the model finds most likely (default: the bundle's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i")
    p.add_argument("--out", default="outputs", help="folder for the PNGs (created if needed)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="weights of the transformers (bf16 on a GPU halves memory traffic; default fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (the first call compiles)")
    p.add_argument("--info", metavar="PNG", help="print the generation parameters stored in a PNG and exit")
    return p


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "image"


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .pipelines import TextToImagePipeline, default_bundle, read_png_metadata, save_png

    if args.info:
        meta = read_png_metadata(args.info)
        if not meta:
            print(f"{args.info}: no mmgen or A1111 parameters found")
            return 1
        for k, v in meta.items():
            print(f"{k}: {v}")
        return 0
    if not args.prompt:
        print("mmgen sample: error: give at least one --prompt", file=sys.stderr)
        return 2
    try:
        import warnings

        import torch

        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: no CUDA device is available here (use --device cpu)")
        pipe = TextToImagePipeline.from_pretrained(args.bundle or default_bundle())
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
        pipe.to(args.device, dtype)
        pipe.compile = args.compile
        warnings.filterwarnings("ignore", message="(Negative prompt|Prompt) truncated")  # the notices below say it
        out = Path(args.out)
        written = []
        for prompt in args.prompt:
            result = pipe(
                prompt, negative_prompt=args.negative_prompt, num_images=args.num_images,
                guidance_scale=args.guidance_scale, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, seed=args.seed, candidates=args.candidates,
            )
            for notice in result.notices:
                print(f"mmgen sample: note: {notice}", file=sys.stderr)
            for i, img in enumerate(result.images):
                written.append(save_png(img, out / f"{_slug(prompt)}-{args.seed + i}.png"))
    except (CheckpointError, ValueError, RuntimeError) as e:
        print(f"mmgen sample: error: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0
