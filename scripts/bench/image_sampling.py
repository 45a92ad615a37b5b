"""Benchmark (b): sampling image codes, mmgen vs dalle-pytorch ``DALLE.generate_images``, guidance off and on.

    python scripts/bench/image_sampling.py [--threads 2] [--repeats 3] [--batch 1 8] [--scale 1 3]

Shapes in ``t2i_models.py`` (width 256, depth 6, 8 heads, 32 text tokens, 64 image tokens).
mmgen: text encoder once, then ``mmgen.sampling.image.sample_image_codes`` (prefill + one code
per step on a KV cache; with guidance, conditional and null-context rows in one doubled batch),
per-sample generators as the pipeline uses them. dalle-pytorch *as shipped*:
``generate_images(text, cond_scale=s, use_cache=True)``; with ``cond_scale=1`` it silently drops
the cache and recomputes the whole prefix every step, so a second peer column passes the cache
through (a two-line patch) to show what a fixed dalle-pytorch would do. Both sample from the full
codebook at temperature 1 (dalle's default ``filter_thres=0.5`` keeps more than all 512 image
logits, since the masked text logits fill the rest). Reported: image tokens per second.
"""

from __future__ import annotations

import argparse
import copy
from typing import Optional

import t2i_models
from _common import Result, add_common_args, cpu_ratio, report, setup, time_sides, try_import

import torch

from mmgen.sampling.image import sample_image_codes
from mmgen.sampling.processors import SamplingParams, make_generators


def run(
    batches=(1, 8), scales=(1.0, 3.0), threads: int = 2, repeats: int = 3, warmup: int = 1, smoke: bool = False,
    with_peer: bool = True,
) -> list[Result]:
    setup(threads)
    shape = t2i_models.SMOKE if smoke else t2i_models.FULL
    model = t2i_models.build_mmgen(shape).eval()
    encoder, decoder = model.text_encoder, model.image_decoder
    dalle_pytorch = try_import("dalle_pytorch") if with_peer else None
    dalle = fixed = None
    if dalle_pytorch is not None:
        dalle = t2i_models.build_dalle(dalle_pytorch, shape).eval()
        fixed = t2i_models.with_cache_passed_through(copy.deepcopy(dalle))
    n_codes = shape["grid"] ** 2
    params = SamplingParams(temperature=1.0)
    results = []
    for scale in scales:
        for batch in batches:
            ids, mask = t2i_models.text_batch(shape, batch)

            def mmgen_side():
                with torch.inference_mode():
                    context, _ = encoder(ids, mask)
                codes = sample_image_codes(
                    decoder, context, mask, params, guidance_scale=scale, generators=make_generators(0, batch)
                )
                assert codes.shape == (batch, n_codes) and bool((codes >= 0).all())

            sides = {"mmgen": mmgen_side}
            if dalle is not None:

                def peer_side(m=dalle):
                    images = m.generate_images(ids, cond_scale=scale, use_cache=True)
                    assert images.shape[0] == batch

                sides["peer"] = peer_side
                if scale == 1.0:
                    sides["peer_cached"] = lambda: peer_side(fixed)
            t = time_sides(sides, warmup, repeats)
            tokens = batch * n_codes
            extra = {}
            if "peer_cached" in t:
                extra["dalle-pytorch with its cache passed through"] = (
                    f"{tokens / t['peer_cached'].wall:,.0f} image tokens/s (mmgen / that = {t['peer_cached'].wall / t['mmgen'].wall:.2f}×)"
                )
            results.append(
                Result(
                    "image sampling", f"batch {batch}, guidance {'off' if scale == 1.0 else f'scale {scale:g}'}",
                    "image tokens/s", tokens / t["mmgen"].wall, None if dalle is None else tokens / t["peer"].wall,
                    "dalle-pytorch generate_images (as shipped)", extra, cpu_ratio(t),
                )
            )
    if dalle is not None:
        results[0].extra["parameters"] = (
            f"mmgen {t2i_models.n_params(model) / 1e6:.1f} M, dalle-pytorch {t2i_models.n_params(dalle, 'vae.') / 1e6:.1f} M (+ VAE)"
        )
        results[0].extra["dalle VAE decode inside generate_images"] = _vae_decode_ms(dalle, shape)
    return results


def _vae_decode_ms(dalle, shape: dict) -> str:
    import time

    codes = torch.randint(0, shape["codebook"], (8, shape["grid"] ** 2))
    with torch.no_grad():
        dalle.vae.decode(codes)
        t0 = time.perf_counter()
        dalle.vae.decode(codes)
    return f"{(time.perf_counter() - t0) * 1000:.1f} ms for 8 images (included in the peer's time)"


def main(argv: Optional[list[str]] = None) -> list[Result]:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--scale", type=float, nargs="+", default=[1.0, 3.0], help="guidance scales (1 = off)")
    parser.set_defaults(repeats=3)
    args = parser.parse_args(argv)
    results = run(args.batch, args.scale, args.threads, 1 if args.smoke else args.repeats, args.warmup, args.smoke)
    report(results, args.json)
    return results


if __name__ == "__main__":
    main()
