"""Sampling: pure logits processors and the prefill + decode loop shared by the generative models."""

from .generate import generate
from .processors import SamplingParams, draw, guidance, make_generators, process, top_k_filter, top_p_filter

__all__ = ["generate", "SamplingParams", "draw", "guidance", "make_generators", "process", "top_k_filter", "top_p_filter"]
