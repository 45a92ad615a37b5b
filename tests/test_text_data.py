"""Text corpora: UTF-8 errors with offsets, the memory-mapped token cache, windows, MLM masking, `mmgen data text`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmgen.data import text as textdata
from mmgen.data.text import (
    MaskedTokenWindows,
    TextDataConfig,
    TextDataError,
    TokenWindows,
    collate_windows,
    find_text_files,
    iter_text,
    load_text_tokenizer,
    mask_tokens,
    prepare_corpus,
)

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare.txt"


def test_invalid_utf8_names_file_offset_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes("héllo\nwörld\n".encode() + b"ab\xffcd\n")
    with pytest.raises(TextDataError) as e:
        list(iter_text(path))
    msg = str(e.value)
    assert str(path) in msg and "byte offset 16" in msg and "line 3" in msg and "data.errors=replace" in msg
    assert "".join(iter_text(path, errors="replace")) == "héllo\nwörld\nab\ufffdcd\n"
    # through the corpus builder too, and the error comes before any cache is published
    cfg = TextDataConfig(path=str(path))
    with pytest.raises(TextDataError, match="byte offset 16"):
        load_text_tokenizer(cfg)
    assert load_text_tokenizer(cfg.replace(errors="replace")).token_to_id("\ufffd") is not None


def test_chunked_decoding_never_splits_a_character(tmp_path):
    path = tmp_path / "a.txt"
    text = ("é" * 50 + "\n") * 3 + "ü€" * 40  # a last line without a newline, longer than a chunk
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # with a byte-order mark
    assert "".join(iter_text(path, chunk_bytes=7)) == text
    bad = tmp_path / "b.txt"
    bad.write_bytes(("é" * 20).encode() + b"\xc3")  # truncated at the end
    with pytest.raises(TextDataError, match="byte offset 40"):
        list(iter_text(bad, chunk_bytes=8))


def test_folder_corpus_is_tokenized_once_and_memory_mapped(tmp_path, monkeypatch):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("abc abc abc\n" * 50)
    (root / "sub/b.txt").write_text("xyz xyz\n" * 50)
    (root / "ignored.md").write_text("not text data")
    assert [p.name for p in find_text_files(root)] == ["a.txt", "b.txt"]
    cfg = TextDataConfig(path=str(root), tokenizer="char", val_fraction=0.2)
    tok = load_text_tokenizer(cfg)
    corpus = prepare_corpus(cfg, tok)
    n = 50 * 12 + 1 + 50 * 8  # both files, one eos between them
    assert len(corpus.train) + len(corpus.val) == n and len(corpus.val) == int(n * 0.2)
    assert isinstance(corpus.train, np.memmap) and corpus.train.dtype == np.uint16
    ids = np.concatenate([corpus.train, corpus.val])
    assert tok.decode(ids[:12].tolist()) == "abc abc abc\n"
    assert ids[600] == tok.eos_id and tok.decode(ids[601:609].tolist()) == "xyz xyz\n"
    assert (root / ".mmgen-cache").is_dir()

    def fail(*a, **k):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(textdata, "_write_token_cache", fail)
    again = prepare_corpus(cfg, load_text_tokenizer(cfg))  # cache hit for tokenizer and tokens
    assert np.array_equal(again.train, corpus.train)


def test_missing_and_empty_corpora(tmp_path):
    with pytest.raises(TextDataError, match="mmgen data text --source shakespeare"):
        find_text_files(tmp_path / "data/shakespeare/input.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextDataError, match="no .txt files"):
        find_text_files(tmp_path / "empty")


def test_windows_and_collate():
    tokens = np.arange(20, dtype=np.uint16)
    ds = TokenWindows(tokens, 5)
    assert len(ds) == 16
    batch = collate_windows([ds[0], ds[15]])
    assert batch["input_ids"].tolist() == [[0, 1, 2, 3, 4], [15, 16, 17, 18, 19]]
    assert batch["labels"].tolist() == batch["input_ids"].tolist()  # GPT shifts internally
    with pytest.raises(TextDataError):
        TokenWindows(tokens[:3], 5)


def test_mlm_masking_80_10_10():
    rng = np.random.default_rng(0)
    vocab, mask_id, specials = 100, 3, [0, 1, 2, 3]
    ids = rng.integers(4, vocab, size=200_000)
    ids[::50] = 1  # special tokens are never picked
    masked, labels = mask_tokens(ids, np.random.default_rng(1), mask_id=mask_id, vocab_size=vocab,
                                 special_ids=specials, probability=0.15)
    picked = labels != -100
    assert not picked[::50].any()
    assert np.array_equal(labels[picked], ids[picked]) and np.array_equal(masked[~picked], ids[~picked])
    assert picked.mean() == pytest.approx(0.15 * 0.98, abs=0.005)
    as_mask = masked[picked] == mask_id
    kept = masked[picked] == ids[picked]
    assert as_mask.mean() == pytest.approx(0.8, abs=0.01)
    assert kept.mean() == pytest.approx(0.1 + 0.1 / 96, abs=0.01)  # 10 % kept (+ random draws of itself)
    assert not np.isin(masked[picked & (masked != mask_id)], [0, 1, 2]).any()
    # pure: same input and seed, same output; at least one position even in a tiny window
    again = mask_tokens(ids, np.random.default_rng(1), mask_id=mask_id, vocab_size=vocab, special_ids=specials)
    assert np.array_equal(again[0], masked) and np.array_equal(again[1], labels)
    _, few = mask_tokens(np.array([5, 6]), np.random.default_rng(0), mask_id=mask_id, vocab_size=vocab,
                         special_ids=specials, probability=1e-9)
    assert (few != -100).sum() == 1


def test_whole_word_masking_picks_every_piece_of_a_word():
    from mmgen.text import TextTokenizer

    text = "the unbelievable kingdom of the undiscovered country, from whose bourn no traveller returns\n" * 40
    tok = TextTokenizer.train([text], kind="wordpiece", vocab_size=75)
    continues = tok.continuation_table()
    assert continues.any() and not continues[tok.token_to_id("the")]
    ids = np.array(tok.encode(text, add_special_tokens=False))
    word = np.cumsum(~continues[ids]) - 1  # the word each piece belongs to
    assert word.max() + 1 < len(ids)  # some words have several pieces
    _, labels = mask_tokens(ids, np.random.default_rng(0), mask_id=tok.mask_id, vocab_size=tok.vocab_size,
                            special_ids=tok.all_special_ids, probability=0.3, continues=continues)
    picked = labels != -100
    by_word = np.bincount(word, weights=picked) / np.bincount(word)
    assert set(np.unique(by_word)) <= {0.0, 1.0}  # a word is picked whole or not at all
    assert by_word.mean() == pytest.approx(0.3, abs=0.05)
    with pytest.raises(ValueError, match="wordpiece"):
        TextTokenizer.train([text], kind="char").continuation_table()


def test_masked_windows_are_reproducible():
    tokens = np.random.default_rng(0).integers(4, 50, size=300).astype(np.uint16)
    ds = MaskedTokenWindows(tokens, 32, mask_id=3, vocab_size=50, special_ids=[0, 1, 2, 3], seed=7)
    a, b = ds[10], ds[10]
    assert np.array_equal(a["input_ids"], b["input_ids"]) and (a["labels"] != -100).any()


def test_data_text_command(tmp_path, capsys, monkeypatch):
    src = tmp_path / "src.txt"
    src.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    dest = tmp_path / "data/shakespeare/input.txt"
    assert textdata.main(["--source", "shakespeare", "--from", str(src), "--dest", str(dest)]) == 0
    assert dest.read_text() == src.read_text()

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(textdata.urllib.request, "urlopen", offline)
    assert textdata.main(["--source", "shakespeare", "--dest", str(tmp_path / "other.txt")]) == 1
    err = capsys.readouterr().err
    assert "--from" in err and "network is unreachable" in err
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe")
    assert textdata.main(["--source", "shakespeare", "--from", str(bad), "--dest", str(tmp_path / "x.txt")]) == 1


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="Tiny Shakespeare is not next to the repository")
def test_tiny_shakespeare_char_corpus(tmp_path):
    cfg = TextDataConfig(path=str(SHAKESPEARE), tokenizer="char", cache_dir=str(tmp_path / "cache"))
    tok = load_text_tokenizer(cfg)
    corpus = prepare_corpus(cfg, tok)
    assert tok.vocab_size == 65 + 4  # 65 characters + pad, unk, bos, eos
    assert len(corpus.train) + len(corpus.val) == 1_115_394  # one token per character
    assert len(corpus.val) == 111_539
    assert tok.decode(corpus.train[:14].tolist()) == "First Citizen:"
