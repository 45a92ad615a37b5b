"""`mmgen eval text`: a GPT's nats per character and a BERT's whole-word accuracy, on made data."""

from __future__ import annotations

import json

import pytest
import torch

from mmgen.config import BERTConfig, GPTConfig
from mmgen.eval.cli import main as eval_main
from mmgen.eval.text import _words, evaluate_bert, evaluate_gpt, held_out_tail, is_punctuation
from mmgen.models.bert import BERT
from mmgen.models.gpt import GPT
from mmgen.text import TextTokenizer

LINES = [f"the {w} of the {v}, and {w} is {v}." for w in ("king", "queen", "duke", "lord") for v in ("night", "day", "sword")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "input.txt"
    path.write_text("\n".join(LINES * 20) + "\n", encoding="utf-8")
    return path


def test_held_out_tail_starts_at_a_line_and_is_the_end(corpus):
    text = corpus.read_text()
    tail = held_out_tail(corpus, 0.1)
    assert text.endswith(tail) and text[len(text) - len(tail) - 1] == "\n"
    assert 0.08 * len(text) < len(tail) <= 0.1 * len(text)
    with pytest.raises(ValueError, match="fraction"):
        held_out_tail(corpus, 1.5)


def test_gpt_score_equals_the_models_loss_when_the_text_fits_one_window():
    tok = TextTokenizer.train(LINES, kind="char")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, max_len=64, dim=32, n_layers=2, n_heads=2)).eval()
    text = LINES[0]
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
    _, loss = model(ids, labels=ids)
    report = evaluate_gpt(model, tok, text)
    assert report["tokens"] == ids.size(1) - 1
    assert report["nats_per_token"] == pytest.approx(loss.item(), abs=1e-4)
    assert report["nats_per_char"] == pytest.approx(report["nats_per_token"], abs=1e-4)  # chars are tokens


def test_gpt_scores_every_token_once_across_sliding_windows():
    tok = TextTokenizer.train(LINES, kind="char")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, max_len=16, dim=32, n_layers=1, n_heads=2)).eval()
    text = " ".join(LINES[:3])
    report = evaluate_gpt(model, tok, text, batch_size=3)
    assert report["tokens"] == len(tok.encode(text, add_special_tokens=False)) - 1


def _bert_that_always_says(tok, word: str) -> BERT:
    torch.manual_seed(0)
    model = BERT(BERTConfig(vocab_size=tok.vocab_size, max_len=32, dim=32, n_layers=1, n_heads=2, tie_embeddings=False))
    with torch.no_grad():
        model.mlm_decoder.bias[tok.token_to_id(word)] = 1e4
    return model.eval()


def test_bert_accuracy_and_punctuation_count_what_the_model_answers():
    tok = TextTokenizer.train(LINES, kind="wordpiece", vocab_size=200)
    text = " ".join(LINES)
    words = [tok.decode(tok.encode(text, add_special_tokens=False)[a:b]) for a, b in
             _words(tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False)))]
    the = _bert_that_always_says(tok, "the")
    report = evaluate_bert(the, tok, text, n=len(words))
    assert report["masks"] == len(words)
    assert report["top1"] == pytest.approx(words.count("the") / len(words), abs=1e-3)
    assert report["punctuation"] == 0.0
    comma = evaluate_bert(_bert_that_always_says(tok, ","), tok, text, n=len(words))
    assert comma["top1"] == 0.0 and comma["punctuation"] == 1.0


def test_punctuation_is_told_from_words():
    assert is_punctuation(",") and is_punctuation("?!") and is_punctuation(" ; ")
    assert not is_punctuation("king") and not is_punctuation("") and not is_punctuation("o'")


def test_cli_writes_a_report_and_says_when_the_corpus_is_missing(tmp_path, corpus, capsys):
    tok = TextTokenizer.train(LINES, kind="char")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, max_len=32, dim=32, n_layers=1, n_heads=2))
    model.save_pretrained(tmp_path / "gpt")
    tok.save(tmp_path / "gpt")
    assert eval_main(["text", "--model", str(tmp_path / "gpt"), "--data", str(corpus), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["kind"] == "GPT" and report["nats_per_char"] > 0
    assert eval_main(["text", "--model", str(tmp_path / "gpt"), "--data", str(tmp_path / "nope.txt")]) == 1
    assert "no such file" in capsys.readouterr().err
