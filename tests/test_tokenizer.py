"""TextTokenizer: training each kind, save/load, Unicode round trips, truncation, padding, and
parity with ``transformers``' BERT and GPT-2 tokenizers loaded from the same local folders."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from mmgen.text import KINDS, TextTokenizer, TokenizerFileError, TruncationWarning

# A small corpus made here, so the tests run in any clone.
CORPUS = [
    "A red circle above a blue square.",
    "Two green triangles left of a small yellow star!",
    "The quick brown fox jumps over the lazy dog; the dog sleeps on.",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "Naïve café owners in Zürich serve crème brûlée.",
    "東京は日本の首都です。北京是中国的首都。",
    "Emoji: 😀 🚀 👩‍👩‍👧 and combining marks: e\u0301 a\u0308 n\u0303",
] * 20

SENTENCES = [
    "A red circle above a blue square.",
    "the DOG sleeps, the fox jumps",
    "Naïve café in Zürich: crème brûlée?",
    "東京は日本の首都です。",
    "unseen words: xylophone quixotic",
    "emoji 😀 🚀 and e\u0301",
    "  leading and trailing spaces  ",
    "",
]

# Small vocabularies keep training fast; byte-level BPE needs the 256 bytes plus specials.
VOCAB_SIZE = {"bpe": 400, "wordpiece": 200, "unigram": 120, "char": None, "word": None}

SHAKESPEARE = Path(__file__).parents[2] / "shared/data/tinyshakespeare.txt"


def train(kind: str, **kwargs) -> TextTokenizer:
    kwargs.setdefault("vocab_size", VOCAB_SIZE[kind])
    return TextTokenizer.train(CORPUS, kind, **kwargs)


@pytest.fixture(scope="module")
def trained() -> dict[str, TextTokenizer]:
    return {kind: train(kind) for kind in KINDS}


# --------------------------------------------------------------------------------------
# Training, special tokens, save/load
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_gives_identical_ids(trained, kind, tmp_path):
    tok = trained[kind]
    assert tok.kind == kind
    assert tok.pad_id == 0  # specials first, pad at 0 (the models' default pad_token_id)

    file = tok.save(tmp_path / "tok")
    assert file == tmp_path / "tok" / "tokenizer.json"
    assert (tmp_path / "tok" / "tokenizer_config.json").is_file()
    assert not [p.name for p in (tmp_path / "tok").iterdir() if p.name.startswith(".")]  # no temp files left

    for loaded in (TextTokenizer.from_pretrained(tmp_path / "tok"), TextTokenizer.from_file(file)):
        assert loaded.kind == kind
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.special_tokens == tok.special_tokens
        for text in SENTENCES:
            assert loaded.encode(text) == tok.encode(text)
            assert loaded.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)


def test_save_to_a_named_json_file_keeps_its_own_sidecar(trained, tmp_path):
    tok = trained["word"]
    tok.save(tmp_path / "captions.json")
    assert (tmp_path / "captions_config.json").is_file()
    assert TextTokenizer.from_file(tmp_path / "captions.json").special_tokens == tok.special_tokens


def test_special_token_defaults_and_templates(trained):
    bert = trained["wordpiece"]
    ids = bert.encode("a red circle")
    assert (ids[0], ids[-1]) == (bert.cls_id, bert.sep_id)
    assert bert.bos_id is None and bert.eos_id is None and bert.mask_token == "[MASK]"
    assert bert.encode("a red circle", add_special_tokens=False) == ids[1:-1]

    for kind in ("unigram", "word"):  # T5-style: … </s>
        tok = trained[kind]
        assert tok.encode("a red circle")[-1] == tok.eos_id
        assert tok.encode("") == [tok.eos_id]

    for kind in ("bpe", "char"):  # GPT-style: nothing added, the caller places bos/eos
        tok = trained[kind]
        assert tok.encode("") == []
        assert tok.encode("a red circle") == tok.encode("a red circle", add_special_tokens=False)
    assert trained["bpe"].unk_id is None  # bytes are never unknown
    assert trained["char"].mask_id is None

    ids = {role: getattr(trained["word"], f"{role}_id") for role in ("pad", "unk", "mask", "bos", "eos")}
    assert sorted(ids.values()) == [0, 1, 2, 3, 4]


def test_special_tokens_can_be_overridden_dropped_or_listed():
    tok = train("word", special_tokens={"mask": "[MASK]", "bos": None})
    assert tok.mask_token == "[MASK]" and tok.bos_id is None
    assert tok.convert_ids_to_tokens(tok.mask_id) == "[MASK]"

    gpt = train("bpe", special_tokens=["<|endoftext|>", "<|pad|>", "<|image|>"])
    assert gpt.bos_id == gpt.eos_id == gpt.token_to_id("<|endoftext|>")
    assert gpt.pad_id == gpt.token_to_id("<|pad|>")
    extra = gpt.token_to_id("<|image|>")
    assert extra is not None and extra in gpt.all_special_ids
    assert gpt.encode("a <|image|> b", add_special_tokens=False).count(extra) == 1

    framed = train("char", template="bos_eos")
    ids = framed.encode("abc")
    assert (ids[0], ids[-1], len(ids)) == (framed.bos_id, framed.eos_id, 5)


def test_train_from_files_keeps_newlines(tmp_path):
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    files[0].write_text("to be\nor not\n", encoding="utf-8")
    files[1].write_text("that is\tthe question\n", encoding="utf-8")
    for source in (files, [str(f) for f in files]):
        tok = TextTokenizer.train(source, "char")
        assert tok.token_to_id("\n") is not None and tok.token_to_id("\t") is not None
        assert tok.decode(tok.encode("to be or not\n")) == "to be or not\n"
    single = TextTokenizer.train(files[0], "word")
    assert single.encode("to be", add_special_tokens=False) == [single.token_to_id("to"), single.token_to_id("be")]


def test_word_kind_lowercases_and_splits_punctuation(trained):
    tok = trained["word"]
    assert tok.convert_ids_to_tokens(tok.encode("A RED circle!!", add_special_tokens=False)) == [
        "a", "red", "circle", "!", "!"
    ]
    assert tok.encode("a purple hexagon", add_special_tokens=False)[1:] == [tok.unk_id, tok.unk_id]
    assert tok.decode(tok.encode("A red circle.")) == "a red circle ."


# --------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------

UNICODE = [
    "",
    " ",
    "\n\n\t \r\n",
    "plain ascii, with punctuation!?",
    "  double  spaces  ",
    "Ünïcödé àccents — “quotes” … ellipsis",
    "e\u0301 a\u0308 n\u0303 (combining marks, not precomposed)",
    "\u00e9 vs e\u0301",
    "中文字符和日本語のテキスト、한국어",
    "😀🚀👩‍👩‍👧🏳️‍🌈 flags 🇫🇷🇯🇵 skin 👍🏽",
    "mathematical 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and 𝟘𝟙𝟚",
    "RTL: مرحبا بالعالم שלום",
    "control \x00\x01\x7f and zero-width \u200b\u200d\ufeff",
    "<s> literal-looking </s> tags",
]


def test_byte_level_bpe_round_trips_any_unicode_exactly(trained):
    tok = trained["bpe"]
    for text in UNICODE:
        ids = tok.encode(text)
        assert tok.decode(ids, skip_special_tokens=False if "<s>" in text else True) == text, text
        assert tok.unk_id is None or tok.unk_id not in ids


def test_char_kind_round_trips(trained):
    tok = trained["char"]
    for text in CORPUS[:7]:
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("q@")  # '@' never seen: unknown, and skipped as special on decode
    assert ids[-1] == tok.unk_id
    assert tok.decode(ids) == "q"


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="Tiny Shakespeare is not in this checkout")
def test_char_kind_on_tiny_shakespeare():
    text = SHAKESPEARE.read_text(encoding="utf-8")[:200_000]
    tok = TextTokenizer.train([text], "char")
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == len(set(text)) + len(tok.special_tokens)


@pytest.mark.parametrize("kind", ["wordpiece", "unigram", "word"])
def test_other_kinds_encode_any_unicode_without_error(trained, kind):
    tok = trained[kind]
    for text in UNICODE:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert isinstance(tok.decode(ids), str)


# --------------------------------------------------------------------------------------
# Truncation and padding
# --------------------------------------------------------------------------------------


def test_truncation_warns_with_the_number_of_dropped_tokens(trained):
    tok = trained["wordpiece"]
    full = tok.encode(CORPUS[2])
    with pytest.warns(TruncationWarning, match=rf"max_length=6: {len(full) - 6} token\(s\) dropped"):
        ids = tok.encode(CORPUS[2], max_length=6)
    # Content is cut, the template's [CLS] … [SEP] is kept.
    assert ids == full[:5] + [tok.sep_id]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tok.encode(CORPUS[2], max_length=len(full)) == full  # exactly fits: no warning

    with pytest.warns(TruncationWarning, match=r"1 of 2 input\(s\) truncated"):
        batch = tok.encode_batch(["a red", CORPUS[2]], max_length=6)
    assert batch["input_ids"].shape == (2, 6)

    with pytest.raises(ValueError, match="no room"):
        tok.encode("a", max_length=1)


def test_padding_right_and_left_with_masks(trained):
    tok = trained["word"]
    short, long = tok.encode("a red circle"), tok.encode("two green triangles left of a star")
    pad = tok.pad_id

    right = tok.encode_batch(["a red circle", "two green triangles left of a star"])
    width = len(long)
    assert right["input_ids"].dtype == torch.long and right["input_ids"].shape == (2, width)
    assert right["input_ids"][0].tolist() == short + [pad] * (width - len(short))
    assert right["attention_mask"][0].tolist() == [1] * len(short) + [0] * (width - len(short))
    assert right["input_ids"][1].tolist() == long and right["attention_mask"][1].tolist() == [1] * width

    left = tok.encode_batch(
        ["a red circle", "two green triangles left of a star"], padding_side="left", return_tensors=None
    )
    assert left["input_ids"][0] == [pad] * (width - len(short)) + short
    assert left["attention_mask"][0] == [0] * (width - len(short)) + [1] * len(short)

    fixed = tok.encode_batch(["a red circle"], max_length=10, padding="max_length", return_tensors=None)
    assert fixed["input_ids"] == [short + [pad] * (10 - len(short))]
    assert sum(fixed["attention_mask"][0]) == len(short)

    assert tok.decode_batch(right["input_ids"]) == ["a red circle", "two green triangles left of a star"]


def test_empty_strings_encode(trained):
    batch = trained["bpe"].encode_batch(["", "abc"], return_tensors=None)
    assert batch["attention_mask"][0] == [0] * len(batch["attention_mask"][0])
    assert trained["wordpiece"].encode_batch([""], return_tensors=None)["input_ids"] == [
        [trained["wordpiece"].cls_id, trained["wordpiece"].sep_id]
    ]


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


def test_invalid_arguments_raise_clear_errors(trained):
    with pytest.raises(ValueError, match="unknown tokenizer kind 'sentencepiece'"):
        TextTokenizer.train(CORPUS, "sentencepiece")
    for bad in (0, -5, 1.5):
        with pytest.raises(ValueError, match="vocab_size"):
            TextTokenizer.train(CORPUS, "wordpiece", vocab_size=bad)
    with pytest.raises(ValueError, match="256"):
        TextTokenizer.train(CORPUS, "bpe", vocab_size=100)
    with pytest.raises(ValueError, match="unknown special token role"):
        TextTokenizer.train(CORPUS, "word", special_tokens={"padding": "<pad>"})
    with pytest.raises(ValueError, match="needs an unk token"):
        TextTokenizer.train(CORPUS, "word", special_tokens={"unk": None})
    with pytest.raises(ValueError, match="template 'cls_sep' needs"):
        TextTokenizer.train(CORPUS, "word", template="cls_sep")
    with pytest.raises(TypeError, match="item 1"):
        TextTokenizer.train(["fine", 3], "char")
    with pytest.raises(ValueError, match="nothing to train on"):
        TextTokenizer.train(iter([]), "word")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        TextTokenizer.train(Path("missing.txt"), "char")

    tok = trained["word"]
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(b"bytes")
    with pytest.raises(TypeError, match="text must be a str"):
        tok.encode(None)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        tok.encode_batch(["ok", 7])
    with pytest.raises(TypeError, match="list of strings"):
        tok.encode_batch("one string")
    with pytest.raises(ValueError, match="padding_side"):
        tok.encode_batch(["a"], padding_side="middle")
    with pytest.raises(ValueError, match="padding must be"):
        tok.encode_batch(["a"], padding=True)
    with pytest.raises(ValueError, match="needs max_length"):
        tok.encode_batch(["a"], padding="max_length")
    with pytest.raises(ValueError, match="max_length"):
        tok.encode("a", max_length=0)
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([0, tok.vocab_size])
    with pytest.raises(TypeError, match="integers"):
        tok.decode(["a"])

    no_pad = train("bpe", special_tokens={"pad": None})
    with pytest.raises(ValueError, match="no pad token"):
        no_pad.encode_batch(["a", "bb"])


def test_missing_or_corrupt_files_are_named(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        TextTokenizer.from_file(tmp_path / "nowhere.json")
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        TextTokenizer.from_pretrained(tmp_path)

    corrupt = tmp_path / "corrupt"
    trained["word"].save(corrupt)
    text = (corrupt / "tokenizer.json").read_text(encoding="utf-8")
    (corrupt / "tokenizer.json").write_text(text[: len(text) // 2], encoding="utf-8")  # truncated
    with pytest.raises(TokenizerFileError, match=r"corrupt[/\\]tokenizer\.json"):
        TextTokenizer.from_pretrained(corrupt)

    bad_sidecar = tmp_path / "bad_sidecar"
    trained["word"].save(bad_sidecar)
    (bad_sidecar / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerFileError, match="tokenizer_config.json"):
        TextTokenizer.from_pretrained(bad_sidecar)

    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "vocab.json").write_text('{"a": 0}', encoding="utf-8")
    (gpt2 / "merges.txt").write_text("#version: 0.2\na b c\n", encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=r"merges\.txt:2"):
        TextTokenizer.from_pretrained(gpt2)
    (gpt2 / "vocab.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=r"vocab\.json"):
        TextTokenizer.from_pretrained(gpt2)


# --------------------------------------------------------------------------------------
# Parity with transformers (a test reference only)
# --------------------------------------------------------------------------------------

PARITY_SENTENCES = SENTENCES + [
    "Hello, World! HELLO world.",
    "Ünïcödé àccents — “quotes” … and 中文 mixed with English",
    "😀🚀👩‍👩‍👧 e\u0301 a\u0308",
    "a\tb\nc  d",
    "supercalifragilisticexpialidocious" * 5,  # longer than WordPiece's 100-char word limit
]


def _write_bert_vocab(folder: Path, tok: TextTokenizer) -> None:
    folder.mkdir()
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")


@pytest.mark.parametrize("lowercase", [True, False])
def test_parity_with_transformers_bert(trained, tmp_path, lowercase):
    transformers = pytest.importorskip("transformers")
    raw = tmp_path / "raw"
    _write_bert_vocab(raw, trained["wordpiece"] if lowercase else train("wordpiece", lowercase=False))
    (raw / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lowercase}), encoding="utf-8")
    reference = transformers.BertTokenizerFast.from_pretrained(raw)
    reference.save_pretrained(tmp_path / "hf")

    for folder in (raw, tmp_path / "hf"):  # vocab.txt, and the tokenizer.json save_pretrained writes
        ours = TextTokenizer.from_pretrained(folder)
        assert ours.kind == "wordpiece"
        assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (
            reference.pad_token_id, reference.unk_token_id, reference.cls_token_id,
            reference.sep_token_id, reference.mask_token_id,
        )
        for text in PARITY_SENTENCES:
            expected = reference(text)["input_ids"]
            assert ours.encode(text) == expected, text
            assert ours.encode(text, add_special_tokens=False) == reference(text, add_special_tokens=False)["input_ids"]
        batch = reference(PARITY_SENTENCES[:4], padding="longest", return_tensors="pt")
        mine = ours.encode_batch(PARITY_SENTENCES[:4])
        assert torch.equal(mine["input_ids"], batch["input_ids"])
        assert torch.equal(mine["attention_mask"], batch["attention_mask"])


def test_parity_with_transformers_gpt2(tmp_path):
    transformers = pytest.importorskip("transformers")
    # A GPT-2 style vocab.json + merges.txt, made by training a byte-level BPE.
    trained = train("bpe", special_tokens=["<|endoftext|>"], vocab_size=500)
    raw = tmp_path / "raw"
    raw.mkdir()
    trained.backend.model.save(str(raw))
    assert sorted(p.name for p in raw.iterdir()) == ["merges.txt", "vocab.json"]
    reference = transformers.GPT2TokenizerFast.from_pretrained(raw)
    reference.save_pretrained(tmp_path / "hf")

    for folder in (raw, tmp_path / "hf"):
        ours = TextTokenizer.from_pretrained(folder)
        assert ours.kind == "bpe"
        assert ours.vocab_size == len(reference)
        assert ours.eos_id == ours.bos_id == reference.eos_token_id
        for text in PARITY_SENTENCES + UNICODE:
            ids = reference(text)["input_ids"]
            assert ours.encode(text) == ids, text
            assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True) == text
        assert ours.encode("a<|endoftext|>b") == reference("a<|endoftext|>b")["input_ids"]


def test_transformers_loads_our_folder(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    for kind in KINDS:
        tok = trained[kind]
        tok.save(tmp_path / kind)
        reference = transformers.AutoTokenizer.from_pretrained(tmp_path / kind)
        assert reference.pad_token_id == tok.pad_id and reference.mask_token_id == tok.mask_id
        for text in SENTENCES:
            assert reference(text)["input_ids"] == tok.encode(text), (kind, text)
