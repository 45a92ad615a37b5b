"""Shared fixtures: tiny randomly initialised components, built in seconds, no downloads."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Test models are tiny and overhead-bound: one intra-op thread is as fast as two and does not
# collapse when other processes (a second test worker, a training subprocess) share the cores.
torch.set_num_threads(1)

CAPTIONS = [
    "a small red circle", "a large blue square", "a green triangle in the top left",
    "a yellow circle to the left of a purple square", "a white triangle above an orange circle",
]


def make_tiny_pipeline(seed: int = 0, **text_encoder):
    """A TextToImagePipeline with random weights: 16×16 images, 4×4 codes (×4 VQ), codes as a table
    (random weights have no two-tone factors); ``text_encoder`` options (e.g.
    ``context_embeddings=False``) go to its TextEncoderConfig."""
    from mmgen.config import ImageDecoderConfig, TextEncoderConfig
    from mmgen.models.image_decoder import ImageDecoder
    from mmgen.models.text_encoder import TextEncoder
    from mmgen.models.vq import VQConfig, VQModel
    from mmgen.pipelines import TextToImagePipeline
    from mmgen.text.tokenizer import TextTokenizer

    torch.manual_seed(seed)
    tok = TextTokenizer.train(CAPTIONS * 4, kind="word", vocab_size=200)
    enc = TextEncoder(TextEncoderConfig(vocab_size=tok.vocab_size, max_len=16, dim=32, n_layers=1, n_heads=4,
                                        **text_encoder))
    dec = ImageDecoder(
        ImageDecoderConfig(
            codebook_size=32, vocab_size=33, grid_h=4, grid_w=4, context_dim=32, context_len=12,
            max_len=16, dim=32, n_layers=2, n_heads=4, code_embedding="table",
        )
    )
    vq = VQModel(VQConfig(image_size=16, channels=8, channel_mult=(1, 2), codebook_size=32, code_dim=4, mid_res_blocks=1))
    return TextToImagePipeline(tok, enc, dec, vq, defaults={"guidance_scale": 1.0, "top_k": 8}, model_id="tiny-test")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A tiny bundle folder on disk (what the web UI and CLI tests load)."""
    path = tmp_path_factory.mktemp("tiny_bundle")
    make_tiny_pipeline().save_pretrained(path)
    return path


def write_corpus(path: Path, n_lines: int = 400) -> Path:
    """A small deterministic English-like text file for training tests."""
    rng = random.Random(0)
    words = "the king and queen of a castle sing to my lord while we walk in green fields".split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))).capitalize() + "." for _ in range(n_lines)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
