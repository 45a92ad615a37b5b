"""Text pipelines against transformers' own pipelines, on the same random tiny models."""

from __future__ import annotations

import threading

import pytest
import torch

transformers = pytest.importorskip("transformers")

from mmgen.checkpoint import CheckpointError  # noqa: E402
from mmgen.pipelines import FillMaskPipeline, TextGenerationPipeline  # noqa: E402
from mmgen.text.tokenizer import TextTokenizer  # noqa: E402

WORDS = "the cat dog sat on a mat and ran to park big small red blue house tree sun moon".split()


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ".", ","]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizerFast.from_pretrained(path)  # reads the vocab.txt just written
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )
    model = transformers.BertForMaskedLM(cfg).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model, tok


def test_fill_mask_matches_transformers_pipeline(bert_folder):
    path, model, tok = bert_folder
    ref = transformers.pipeline("fill-mask", model=model, tokenizer=tok, device="cpu")
    ours = FillMaskPipeline.from_pretrained(path)
    for text in ["the cat sat on the [MASK] .", "a [MASK] dog ran to the park"]:
        expected = ref(text, top_k=4)
        got = ours(text, top_k=4)
        assert [r["token"] for r in got] == [r["token"] for r in expected]
        assert [r["token_str"] for r in got] == [r["token_str"] for r in expected]
        assert [r["sequence"] for r in got] == [r["sequence"] for r in expected]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(got, expected)) < 1e-5


def test_fill_mask_several_masks_and_attention(bert_folder):
    path, *_ = bert_folder
    pipe = FillMaskPipeline.from_pretrained(path)
    out, attention = pipe("the [MASK] sat on the [MASK]", top_k=3, return_attention=True)
    assert len(out) == 2 and all(len(rows) == 3 for rows in out)
    for rows in out:
        assert all(a["score"] >= b["score"] for a, b in zip(rows, rows[1:]))
    (pos, weights), _ = attention.items()
    assert abs(sum(w for _, w in weights) - 1) < 1e-4  # a distribution over the input tokens
    assert weights[0][0] == "[CLS]"


def test_fill_mask_errors_are_clear(bert_folder):
    path, *_ = bert_folder
    pipe = FillMaskPipeline.from_pretrained(path)
    with pytest.raises(ValueError, match=r"no mask token.*\[MASK\]"):
        pipe("no mask here")
    with pytest.raises(ValueError, match="top_k"):
        pipe("the [MASK]", top_k=0)
    with pytest.raises(CheckpointError, match="needs a GPT"):
        TextGenerationPipeline.from_pretrained(path)


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 3
    ours_tok = TextTokenizer.train(corpus, kind="bpe", vocab_size=300)
    ours_tok.save(path)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=ours_tok.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(path)
    return path, model, ours_tok


def test_text_generation_greedy_matches_transformers(gpt2_folder):
    path, model, tok = gpt2_folder
    pipe = TextGenerationPipeline.from_pretrained(path)
    prompt = "the cat sat"
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)[0, ids.shape[1]:]
    out = pipe(prompt, max_new_tokens=12, temperature=0)
    assert out[0]["generated_text"] == prompt + tok.decode(ref.tolist())


def test_text_generation_batch_seeds_stream_and_cancel(gpt2_folder):
    path, *_ = gpt2_folder
    pipe = TextGenerationPipeline.from_pretrained(path)
    single = pipe("the dog", max_new_tokens=10, seed=5)[0]["generated_text"]
    batch = pipe(["a much longer prompt about the dog", "the dog"], max_new_tokens=10, seed=4)
    assert batch[1][0]["generated_text"] == single  # row 1 uses seed 4 + 1, left padding changes nothing
    parts = list(pipe.stream("the dog", max_new_tokens=10, seed=5))
    assert len(parts) == 10 and "the dog" + parts[-1] == single
    cancel = threading.Event()
    steps = []

    def cb(step, texts):
        steps.append(step)
        cancel.set()

    pipe("the dog", max_new_tokens=10, callback=cb, cancel=cancel)
    assert steps == [0]


def test_text_generation_errors_are_clear(gpt2_folder):
    path, *_ = gpt2_folder
    pipe = TextGenerationPipeline.from_pretrained(path)
    with pytest.raises(ValueError, match="max_new_tokens"):
        pipe("x", max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        pipe("x", temperature=-0.5)
    with pytest.raises(ValueError, match="characters"):
        pipe("x" * 100_000)
    with pytest.warns(UserWarning, match="truncated"):
        pipe("the cat " * 60, max_new_tokens=4)
