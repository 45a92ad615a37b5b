"""Benchmark (c): mmgen TextEncoder vs transformers' T5EncoderModel, inference and forward + backward.

    python scripts/bench/text_encoder.py [--threads 2] [--repeats 5]

T5 v1.0 layout (relu FFN, relative-position buckets, RMSNorm, no biases): width 256, 4 layers,
8 heads of 32, FFN 1,024, vocabulary 1,024. Both sides hold the same weights (the T5 model is
saved to a temporary folder and loaded with ``mmgen.models.hf.load_t5_encoder``) and get the
same batch of 32 captions × 32 tokens with a padding mask (lengths 8..32, like real captions).
Inference runs under ``torch.inference_mode``; forward + backward backpropagates the sum of the
output states (no optimizer). Reported: tokens per second (padding included).
"""

from __future__ import annotations

import argparse
from typing import Optional

from _common import Result, add_common_args, cpu_ratio, report, setup, time_sides, try_import

import torch

from mmgen.config import TextEncoderConfig
from mmgen.models.text_encoder import TextEncoder

FULL = dict(dim=256, n_layers=4, n_heads=8, ffn_dim=1024, vocab_size=1024, batch=32, length=32)
SMOKE = dict(dim=32, n_layers=1, n_heads=4, ffn_dim=64, vocab_size=64, batch=2, length=8)


def build(shape: dict, with_peer: bool = True):
    """(mmgen TextEncoder, transformers T5EncoderModel or None) with identical weights."""
    transformers = try_import("transformers") if with_peer else None
    if transformers is None:
        config = TextEncoderConfig(
            vocab_size=shape["vocab_size"], dim=shape["dim"], n_layers=shape["n_layers"], n_heads=shape["n_heads"],
            ffn_dim=shape["ffn_dim"], activation="relu",
        )
        return TextEncoder(config), None
    import tempfile

    from mmgen.models.hf import load_t5_encoder

    hf_config = transformers.T5Config(
        vocab_size=shape["vocab_size"], d_model=shape["dim"], d_kv=shape["dim"] // shape["n_heads"],
        d_ff=shape["ffn_dim"], num_layers=shape["n_layers"], num_heads=shape["n_heads"],
        feed_forward_proj="relu", dropout_rate=0.0, is_encoder_decoder=False, use_cache=False,
    )
    peer = transformers.T5EncoderModel(hf_config)
    with tempfile.TemporaryDirectory() as folder:
        peer.save_pretrained(folder)
        ours = load_t5_encoder(folder)
    return ours, peer


def inputs(shape: dict) -> tuple[torch.Tensor, torch.Tensor]:
    B, T = shape["batch"], shape["length"]
    ids = torch.randint(1, shape["vocab_size"], (B, T))
    lengths = torch.randint(max(1, T // 4), T + 1, (B,))
    lengths[0] = T  # at least one full row
    mask = (torch.arange(T)[None] < lengths[:, None]).long()  # (B, T), right padding
    return ids * mask, mask


def run(threads: int = 2, repeats: int = 5, warmup: int = 1, smoke: bool = False, with_peer: bool = True) -> list[Result]:
    setup(threads)
    shape = SMOKE if smoke else FULL
    ours, peer = build(shape, with_peer)
    ids, mask = inputs(shape)
    tokens = ids.numel()
    results = []
    for mode in ("inference", "forward + backward"):
        train = mode != "inference"
        ours.train(train)

        def mmgen_side():
            if train:
                ours.zero_grad(set_to_none=True)
                ours(ids, mask)[0].sum().backward()
            else:
                with torch.inference_mode():
                    ours(ids, mask)

        sides = {"mmgen": mmgen_side}
        if peer is not None:
            peer.train(train)

            def peer_side():
                if train:
                    peer.zero_grad(set_to_none=True)
                    peer(input_ids=ids, attention_mask=mask).last_hidden_state.sum().backward()
                else:
                    with torch.inference_mode():
                        peer(input_ids=ids, attention_mask=mask)

            sides["peer"] = peer_side
        t = time_sides(sides, warmup, repeats)
        results.append(
            Result(
                "text encoder", f"{mode}, batch {shape['batch']}×{shape['length']}", "tokens/s", tokens / t["mmgen"].wall,
                None if peer is None else tokens / t["peer"].wall, "transformers T5EncoderModel",
                cpu_ratio=cpu_ratio(t),
            )
        )
    return results


def main(argv: Optional[list[str]] = None) -> list[Result]:
    args = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args(argv)
    results = run(args.threads, 1 if args.smoke else args.repeats, args.warmup, args.smoke)
    report(results, args.json)
    return results


if __name__ == "__main__":
    main()
