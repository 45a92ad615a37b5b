"""Benchmark (a): text decode, mmgen GPT + ``mmgen.sampling.generate`` vs transformers' GPT-2 ``generate``.

    python scripts/bench/text_decode.py [--threads 2] [--repeats 5] [--batch 1 8]

Both sides hold the same weights (the transformers model is saved to a temporary folder and
loaded into mmgen with ``mmgen.models.hf.load_gpt2``), sample with temperature 1 and top-k 50
(transformers' default top-k), use a KV cache, and never stop early (no EOS), so both produce
exactly ``new_tokens`` tokens per row. Reported: new tokens per second over the whole call
(prefill of an 8-token prompt included).
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Optional

from _common import Result, add_common_args, cpu_ratio, report, setup, time_sides, try_import

import torch

from mmgen.config import GPTConfig
from mmgen.models.gpt import GPT
from mmgen.sampling import generate

FULL = dict(dim=256, n_layers=6, n_heads=8, vocab_size=1024, max_len=512, new_tokens=256, prompt_len=8)
SMOKE = dict(dim=32, n_layers=2, n_heads=4, vocab_size=64, max_len=64, new_tokens=8, prompt_len=4)
TOP_K = 50


def build(shape: dict, with_peer: bool = True):
    """(mmgen GPT, transformers GPT2LMHeadModel or None) with identical weights, in eval mode."""
    transformers = try_import("transformers") if with_peer else None
    if transformers is None:
        config = GPTConfig(
            vocab_size=shape["vocab_size"], max_len=shape["max_len"], dim=shape["dim"],
            n_layers=shape["n_layers"], n_heads=shape["n_heads"],
        )
        return GPT(config).eval(), None
    from mmgen.models.hf import load_gpt2

    hf_config = transformers.GPT2Config(
        vocab_size=shape["vocab_size"], n_positions=shape["max_len"], n_embd=shape["dim"],
        n_layer=shape["n_layers"], n_head=shape["n_heads"],
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=None, pad_token_id=0,
    )
    peer = transformers.GPT2LMHeadModel(hf_config).eval()
    with tempfile.TemporaryDirectory() as folder:
        peer.save_pretrained(folder)
        ours = load_gpt2(folder).eval()
    return ours, peer


def run(
    batches=(1, 8), threads: int = 2, repeats: int = 5, warmup: int = 1, smoke: bool = False, with_peer: bool = True,
    compile: bool = False,
) -> list[Result]:
    setup(threads)
    shape = SMOKE if smoke else FULL
    ours, peer = build(shape, with_peer)
    n = shape["new_tokens"]
    results = []
    for batch in batches:
        prompt = torch.randint(1, shape["vocab_size"], (batch, shape["prompt_len"]))

        def mmgen_side():
            out = generate(ours, prompt, max_new_tokens=n, temperature=1.0, top_k=TOP_K)
            assert out.shape == (batch, n)

        sides = {"mmgen": mmgen_side}
        if compile:  # the same loop with torch.compile'd decode steps (compiled in the warm-up)
            sides["mmgen_compiled"] = lambda: generate(ours, prompt, max_new_tokens=n, temperature=1.0, top_k=TOP_K,
                                                       compile=True)
        if peer is not None:
            mask = torch.ones_like(prompt)

            def peer_side():
                with torch.inference_mode():
                    out = peer.generate(
                        prompt, attention_mask=mask, do_sample=True, temperature=1.0, top_k=TOP_K,
                        max_new_tokens=n, min_new_tokens=n, use_cache=True, pad_token_id=0,
                    )
                assert out.shape == (batch, prompt.shape[1] + n)

            sides["peer"] = peer_side
        t = time_sides(sides, warmup, repeats)
        results.append(
            Result(
                "text decode", f"batch {batch}, {n} new tokens", "tokens/s", batch * n / t["mmgen"].wall,
                None if peer is None else batch * n / t["peer"].wall, "transformers GPT2LMHeadModel.generate",
                cpu_ratio=cpu_ratio(t),
            )
        )
        if compile:
            compiled = t["mmgen_compiled"]
            results.append(
                Result(
                    "text decode", f"batch {batch}, {n} new tokens, compiled decode step", "tokens/s",
                    batch * n / compiled.wall, None if peer is None else batch * n / t["peer"].wall,
                    "transformers GPT2LMHeadModel.generate",
                    cpu_ratio=None if peer is None else t["peer"].cpu / compiled.cpu,
                )
            )
    return results


def main(argv: Optional[list[str]] = None) -> list[Result]:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--compile", action="store_true", help="also time mmgen with torch.compile'd decode steps")
    args = parser.parse_args(argv)
    results = run(args.batch, args.threads, 1 if args.smoke else args.repeats, args.warmup, args.smoke,
                  compile=args.compile)
    report(results, args.json)
    return results


if __name__ == "__main__":
    main()
