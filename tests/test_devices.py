"""Devices, dtypes and torch.compile: the paths a GPU run takes.

The compiled decode step and the bf16 pipeline are checked on the CPU here (torch.compile
works there too); the CUDA tests at the bottom run only where a GPU is present.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import make_tiny_pipeline
from mmgen.config import GPTConfig
from mmgen.models.gpt import GPT
from mmgen.sampling import generate
from mmgen.sampling.image import sample_image_codes
from mmgen.sampling.processors import SamplingParams, make_generators

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=61, max_len=64, dim=32, n_layers=2, n_heads=4)).eval()


def _image_codes(pipe, compile: bool, guidance_scale: float = 2.0):
    states, mask = pipe.encode_prompts(["a red circle", "a blue square on the left"])
    return sample_image_codes(pipe.image_decoder, states, mask, SamplingParams(temperature=1.0, top_k=8),
                              guidance_scale, generators=make_generators(3, 2), compile=compile)


def test_compiled_text_decode_equals_eager():
    model = _gpt()
    prompt = torch.randint(1, 61, (2, 5))
    eager = generate(model, prompt, max_new_tokens=20, seed=7, top_k=10)
    compiled = generate(model, prompt, max_new_tokens=20, seed=7, top_k=10, compile=True)
    assert torch.equal(eager, compiled)


def test_compiled_image_sampling_equals_eager():
    pipe = make_tiny_pipeline()
    assert torch.equal(_image_codes(pipe, compile=False), _image_codes(pipe, compile=True))


def logits_before_and_after(pipe, device, dtype=None):
    """Decoder logits for fixed codes and prompt, before and after ``pipe.to(device, dtype)`` (on the CPU)."""
    codes = torch.randint(0, 32, (1, 16))
    out = []
    for move in (False, True):
        if move:
            pipe.to(device, dtype)
        states, mask = pipe.encode_prompts(["a red circle"])
        with torch.inference_mode():
            out.append(pipe.image_decoder(codes.to(pipe.device), states, mask)[0].float().cpu())
    return out


def test_pipeline_to_bf16_keeps_the_vq_in_fp32_and_stays_close():
    pipe = make_tiny_pipeline()
    ref, low = logits_before_and_after(pipe, "cpu", torch.bfloat16)
    assert next(pipe.image_decoder.parameters()).dtype == torch.bfloat16
    assert next(pipe.text_encoder.parameters()).dtype == torch.bfloat16
    assert next(pipe.vq.parameters()).dtype == torch.float32
    assert (low - ref).abs().max() < 0.05 * ref.std() + 0.02
    images = pipe(["a red circle"], num_images=2, seed=0).images
    assert [im.size for im in images] == [(16, 16)] * 2
    images = pipe(["a red circle"], num_images=2, seed=0).images
    assert [im.size for im in images] == [(16, 16)] * 2


def test_pipeline_to_rejects_integer_dtypes():
    with pytest.raises(ValueError, match="floating-point"):
        make_tiny_pipeline().to(dtype=torch.int8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_sample_cli_says_when_cuda_is_missing(tiny_bundle, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mmgen.cli", "sample", "--bundle", str(tiny_bundle), "--prompt", "a red circle",
                           "--device", "cuda", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr


# ---- CUDA ------------------------------------------------------------------------------------


@cuda
def test_cuda_fp32_logits_match_cpu():
    ref, out = logits_before_and_after(make_tiny_pipeline(), "cuda")
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@cuda
def test_cuda_bf16_sampling_runs_on_flash_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    pipe = make_tiny_pipeline().to("cuda", torch.bfloat16)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # raises if an attention call cannot use flash
        images = pipe(["a red circle", "a blue square"], num_images=2, guidance_scale=2.0, seed=0).images
    assert len(images) == 4


@cuda
def test_cuda_same_seed_same_image_at_batch_1_and_4():
    pipe = make_tiny_pipeline().to("cuda")
    one = pipe("a red circle", num_images=1, seed=5).images[0]
    four = pipe("a red circle", num_images=4, seed=5).images[0]
    assert one.tobytes() == four.tobytes()
    ranked = pipe("a red circle", num_images=2, seed=5, candidates=4).images  # reranking indexes on the GPU too
    assert len(ranked) == 2


@cuda
def test_cuda_compiled_image_sampling_equals_eager():
    pipe = make_tiny_pipeline().to("cuda")
    assert torch.equal(_image_codes(pipe, compile=False), _image_codes(pipe, compile=True))
