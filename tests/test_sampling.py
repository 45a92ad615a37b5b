"""Sampling: pure processors against transformers' own, and the generation loop's promises."""

from __future__ import annotations

import threading

import pytest
import torch

from mmgen.config import GPTConfig
from mmgen.models.gpt import GPT
from mmgen.sampling import SamplingParams, generate, guidance, top_k_filter, top_p_filter
from mmgen.sampling.processors import draw, make_generators, repetition_penalty

TINY = dict(vocab_size=61, max_len=64, dim=32, n_layers=2, n_heads=4)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(**TINY)).eval()


def test_processors_match_transformers():
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    prev = torch.randint(0, 50, (4, 7))
    assert torch.equal(top_k_filter(logits, 5), tf.TopKLogitsWarper(5)(None, logits.clone()))
    for p in (0.3, 0.9):
        ours = torch.isinf(top_p_filter(logits, p))
        theirs = torch.isinf(tf.TopPLogitsWarper(p)(None, logits.clone()))
        assert torch.equal(ours, theirs)
    ref = tf.RepetitionPenaltyLogitsProcessor(1.3)(prev, logits.clone())
    assert torch.allclose(repetition_penalty(logits, prev, 1.3), ref)


def test_top_p_keeps_at_least_one_token():
    logits = torch.tensor([[10.0, 0.0, 0.0]])
    kept = ~torch.isinf(top_p_filter(logits, 0.01))
    assert kept.sum() == 1 and kept[0, 0]


def test_guidance_scale_one_is_conditional_and_formula():
    cond, uncond = torch.randn(2, 9), torch.randn(2, 9)
    assert torch.equal(guidance(cond, uncond, 1.0), cond)
    assert torch.allclose(guidance(cond, uncond, 3.0), uncond + 3 * (cond - uncond))


def test_draw_follows_the_distribution():
    probs = torch.tensor([0.1, 0.6, 0.3])
    gens = make_generators(0, 1)
    params = SamplingParams(temperature=1.0)
    counts = torch.zeros(3)
    for _ in range(3000):
        counts[draw(probs.log()[None], params, gens)] += 1
    assert torch.allclose(counts / 3000, probs, atol=0.03)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
    ],
)
def test_bad_parameters_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_top_k_one_equals_greedy(model):
    prompt = torch.randint(0, 61, (2, 5))
    greedy = generate(model, prompt, max_new_tokens=15, temperature=0)
    topk1 = generate(model, prompt, max_new_tokens=15, temperature=1.3, top_k=1, seed=7)
    assert torch.equal(greedy, topk1)


def test_greedy_equals_argmax_of_uncached_forward(model):
    prompt = torch.randint(0, 61, (1, 4))
    out = generate(model, prompt, max_new_tokens=10, temperature=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(10):
            seq = torch.cat([seq, model(seq)[0][:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq[:, 4:])


def test_same_seed_same_text_and_rows_do_not_depend_on_batch(model):
    prompt = torch.randint(0, 61, (1, 4))
    a = generate(model, prompt, max_new_tokens=20, top_p=0.9, seed=123)
    b = generate(model, prompt, max_new_tokens=20, top_p=0.9, seed=123)
    c = generate(model, prompt, max_new_tokens=20, top_p=0.9, seed=124)
    assert torch.equal(a, b) and not torch.equal(a, c)
    batch = generate(model, prompt.repeat(3, 1), max_new_tokens=20, top_p=0.9, seed=123)
    assert torch.equal(batch[0], a[0])  # row i uses seed + i, whatever the batch
    assert torch.equal(batch[1], c[0])


def test_left_padded_batch_equals_separate_runs(model):
    short, long = torch.randint(1, 61, (1, 3)), torch.randint(1, 61, (1, 7))
    padded = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long], 0)
    mask = torch.tensor([[0] * 4 + [1] * 3, [1] * 7])
    batch = generate(model, padded, attention_mask=mask, max_new_tokens=12, temperature=0)
    assert torch.equal(batch[0], generate(model, short, max_new_tokens=12, temperature=0)[0])
    assert torch.equal(batch[1], generate(model, long, max_new_tokens=12, temperature=0)[0])


def test_eos_stops_a_row_and_the_loop(model):
    prompt = torch.randint(0, 61, (1, 4))
    free = generate(model, prompt, max_new_tokens=12, temperature=0)[0]
    eos = int(free[3])
    stopped = generate(model, prompt, max_new_tokens=12, temperature=0, eos_token_id=eos)[0]
    assert stopped.tolist() == free[: free.tolist().index(eos) + 1].tolist()


def test_streaming_callback_and_cancel(model):
    prompt = torch.randint(0, 61, (1, 4))
    seen = []
    cancel = threading.Event()

    def on_step(step, tokens):
        seen.append(tokens.shape[1])
        if step == 4:
            cancel.set()

    out = generate(model, prompt, max_new_tokens=30, seed=0, callback=on_step, cancel=cancel)
    assert seen == [1, 2, 3, 4, 5]
    assert out.shape[1] == 5


def test_too_long_request_is_refused(model):
    with pytest.raises(ValueError, match="exceeds"):
        generate(model, torch.zeros(1, 60, dtype=torch.long), max_new_tokens=10)
