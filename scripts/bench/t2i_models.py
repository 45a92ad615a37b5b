"""The matched text-to-image models of benchmarks (b) and (d): mmgen's and dalle-pytorch's DALLE.

Both: transformer width 256, 8 heads of 32, 32 text tokens (vocabulary 1,024), 64 image tokens
(an 8 × 8 grid over a 512-code book). DALL-E is one causal stack of depth 6 over the 96 text +
image positions (as shipped: rotary embeddings, token shift, full attention). mmgen splits the
same job in two: a 2-layer T5-style text encoder over the 32 text tokens, and a 6-layer causal
image decoder over the 64 codes that cross-attends to the encoder states. Parameter counts are
printed next to the results. dalle-pytorch needs its VAE to exist; it gets the smallest
DiscreteVAE that yields an 8 × 8 grid (its decode runs inside ``generate_images`` as shipped, and
its cost is reported separately).
"""

from __future__ import annotations

from typing import Optional

import torch

from mmgen.config import ImageDecoderConfig, TextEncoderConfig, TextToImageConfig
from mmgen.models.text_to_image import TextToImage

FULL = dict(dim=256, depth=6, heads=8, text_len=32, text_vocab=1024, grid=8, codebook=512, encoder_layers=2)
SMOKE = dict(dim=64, depth=1, heads=2, text_len=8, text_vocab=64, grid=2, codebook=16, encoder_layers=1)


def build_mmgen(shape: dict) -> TextToImage:
    d = shape["dim"]
    n = shape["grid"] ** 2
    encoder = TextEncoderConfig(
        vocab_size=shape["text_vocab"], max_len=shape["text_len"], dim=d, n_layers=shape["encoder_layers"],
        n_heads=shape["heads"],
    )
    decoder = ImageDecoderConfig(
        codebook_size=shape["codebook"], vocab_size=shape["codebook"] + 1, grid_h=shape["grid"], grid_w=shape["grid"],
        context_dim=d, context_len=shape["text_len"], max_len=n, dim=d, n_layers=shape["depth"], n_heads=shape["heads"],
    )
    return TextToImage(TextToImageConfig(text_encoder=encoder, image_decoder=decoder))


def build_dalle(dalle_pytorch, shape: dict):
    """DALLE with default (as shipped) options at the matched size; its VAE is as small as it can be."""
    vae = dalle_pytorch.DiscreteVAE(
        image_size=shape["grid"] * 8, num_layers=3, num_tokens=shape["codebook"], codebook_dim=64, hidden_dim=16,
    )
    return dalle_pytorch.DALLE(
        dim=shape["dim"], vae=vae, num_text_tokens=shape["text_vocab"], text_seq_len=shape["text_len"],
        depth=shape["depth"], heads=shape["heads"], dim_head=shape["dim"] // shape["heads"],
    )


def with_cache_passed_through(dalle):
    """DALLE whose cond_scale == 1 path keeps the KV cache (as shipped it silently drops it)."""
    import types

    cls = type(dalle)

    def forward_with_cond_scale(self, *args, cond_scale=1, cache=None, **kwargs):
        if cond_scale == 1:
            return self(*args, cache=cache, **kwargs)
        return cls.forward_with_cond_scale(self, *args, cond_scale=cond_scale, cache=cache, **kwargs)

    dalle.forward_with_cond_scale = types.MethodType(forward_with_cond_scale, dalle)
    return dalle


def text_batch(shape: dict, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption ids (B, text_len), right-padded with 0, and their mask: lengths from a quarter to all of text_len."""
    g = torch.Generator().manual_seed(seed)
    T = shape["text_len"]
    ids = torch.randint(1, shape["text_vocab"], (batch, T), generator=g)
    lengths = torch.randint(max(1, T // 4), T + 1, (batch,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    return ids * mask, mask


def n_params(model, skip: Optional[str] = None) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if not (skip and name.startswith(skip)))
