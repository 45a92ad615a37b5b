"""Text corpora for GPT and BERT: UTF-8 files -> a cached, memory-mapped token array -> training windows.

* :func:`find_text_files` takes a ``.txt`` file or a folder (every ``*.txt`` below it, sorted).
* :func:`iter_text` decodes files in bounded chunks. Invalid UTF-8 raises :class:`TextDataError`
  naming the file, the byte offset and the line; with ``errors="replace"`` bad bytes become U+FFFD.
* :func:`prepare_corpus` tokenizes the files once (files joined by the tokenizer's ``eos`` token,
  when it has one) and caches the ids as a flat ``uint16``/``uint32`` file next to the data, in
  ``.mmgen-cache/``; the last ``val_fraction`` of the tokens is the validation split. Later runs
  memory-map the cache (keyed by file names, sizes, modification times, the tokenizer and the
  options) instead of tokenizing again.
* :class:`TokenWindows` (GPT) and :class:`MaskedTokenWindows` (BERT) are map-style datasets: item
  ``i`` is the window of ``block`` tokens starting at token ``i``. The trainer's sampler picks
  windows in a seeded random order, so batches are "random windows" with a resumable position.
* :func:`mask_tokens` is BERT's 80/10/10 masking as a pure function of the ids and a numpy RNG.

``python -m mmgen.data.text --source shakespeare [--from FILE]`` (also ``mmgen data text ...``)
puts Tiny Shakespeare at ``data/shakespeare/input.txt``, where the configs look for it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Sequence

import numpy as np
import torch

from mmgen.config import Config, ConfigError, atomic_write_text

__all__ = [
    "MaskedTextDataConfig",
    "MaskedTokenWindows",
    "TextDataConfig",
    "TextDataError",
    "TokenCorpus",
    "TokenWindows",
    "collate_windows",
    "find_text_files",
    "iter_text",
    "load_text_tokenizer",
    "main",
    "mask_tokens",
    "prepare_corpus",
]

CACHE_DIR_NAME = ".mmgen-cache"
_CACHE_VERSION = 1
_CHUNK_BYTES = 1 << 24  # decode and tokenize at most 16 MiB at a time
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_DEST = Path("data/shakespeare/input.txt")


class TextDataError(ValueError):
    """A text corpus cannot be used: missing, empty, or not valid UTF-8 (the message says where)."""


@dataclass(frozen=True)
class TextDataConfig(Config):
    """A text corpus for a language model (GPT)."""

    path: str = "data/shakespeare/input.txt"  # a UTF-8 .txt file, or a folder of them (searched recursively)
    tokenizer: Literal["char", "bpe", "wordpiece", "unigram", "word"] = "char"  # kind to train on the corpus
    tokenizer_path: Optional[str] = None  # use this trained tokenizer (folder or tokenizer.json) instead
    vocab_size: int = 2048  # for trained bpe / wordpiece / unigram tokenizers
    block_size: Optional[int] = None  # tokens per training window; default: the model's max_len
    val_fraction: float = 0.1  # the last fraction of the token stream is the validation split
    errors: Literal["strict", "replace"] = "strict"  # invalid UTF-8: fail with file and offset, or replace
    cache_dir: Optional[str] = None  # default: .mmgen-cache/ next to the data

    def __post_init__(self) -> None:
        super().__post_init__()  # Config: literal fields hold one of their values
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.block_size is not None and self.block_size < 2:
            raise ConfigError(f"data.block_size must be >= 2, got {self.block_size}")


@dataclass(frozen=True)
class MaskedTextDataConfig(TextDataConfig):
    """A text corpus for a masked language model (BERT): windows with 80/10/10 masking."""

    tokenizer: Literal["char", "bpe", "wordpiece", "unigram", "word"] = "wordpiece"
    # 40 % of the words, whole (BERT's 15 % of the pieces sat on the unigram plateau here:
    # docs/experiments.md); whole_word_mask needs a wordpiece tokenizer
    mlm_probability: float = 0.4  # fraction of (non-special) tokens the model must predict
    whole_word_mask: bool = True  # pick words, not pieces: every "##" piece of a picked word too

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.mlm_probability < 1.0:
            raise ConfigError(f"data.mlm_probability must be in (0, 1), got {self.mlm_probability}")


# --------------------------------------------------------------------------------------
# Files and decoding
# --------------------------------------------------------------------------------------


def find_text_files(path: str | os.PathLike) -> list[Path]:
    """``path`` itself when it is a file, else every ``*.txt`` below it, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file() and CACHE_DIR_NAME not in p.parts)
        if not files:
            raise TextDataError(f"no .txt files found in {path}")
        return files
    hint = ""
    if path.as_posix().endswith(SHAKESPEARE_DEST.as_posix()):
        hint = " (run `mmgen data text --source shakespeare` to put Tiny Shakespeare there)"
    raise TextDataError(f"text data not found: {path}{hint}")


def _char_boundary(data: bytes) -> int:
    """An offset near the end of ``data`` that does not split a multi-byte UTF-8 character."""
    cut = len(data)
    while cut > 0 and data[cut - 1] & 0xC0 == 0x80:  # continuation bytes
        cut -= 1
    if cut > 0 and data[cut - 1] & 0xC0 == 0xC0:  # the lead byte of a possibly incomplete character
        cut -= 1
    return cut or len(data)


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def iter_text(path: str | os.PathLike, errors: str = "strict", chunk_bytes: int = _CHUNK_BYTES) -> Iterator[str]:
    """Decode a UTF-8 file in chunks that end at line breaks (so no character or line is split).

    Raises :class:`TextDataError` at the first invalid byte with the file, byte offset and line
    number, unless ``errors="replace"``.
    """
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be 'strict' or 'replace', got {errors!r}")
    path = Path(path)
    offset = 0  # byte offset of ``pending`` in the file
    lines_before = 0
    pending = b""
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_bytes)
            data = pending + block
            if not data:
                return
            if block:
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # a very long line: carry on reading
                    if len(data) < 4 * chunk_bytes:
                        pending = data
                        continue
                    cut = _char_boundary(data)
            else:
                cut = len(data)
            piece, pending = data[:cut], data[cut:]
            if offset == 0 and piece.startswith(b"\xef\xbb\xbf"):
                piece, offset = piece[3:], 3  # a UTF-8 byte-order mark is not text
            try:
                text = piece.decode("utf-8", errors=errors)
            except UnicodeDecodeError as e:
                bad = piece[e.start : e.end]
                raise TextDataError(
                    f"{path}: invalid UTF-8 at byte offset {offset + e.start} (line {lines_before + _line_of(piece, e.start)}, "
                    f"bytes {bad.hex(' ')}: {e.reason}); convert the file to UTF-8, or set data.errors=replace "
                    f"to replace invalid bytes with U+FFFD"
                ) from None
            lines_before += piece.count(b"\n")
            offset += len(piece)
            if text:
                yield text
            if not block:
                return


def _files_signature(files: Sequence[Path]) -> list[list[Any]]:
    out = []
    for p in files:
        st = p.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _cache_root(cfg: TextDataConfig, files: Sequence[Path]) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    base = Path(cfg.path)
    return (base if base.is_dir() else files[0].parent) / CACHE_DIR_NAME


def _publish_dir(tmp: Path, final: Path) -> None:
    """Move a completed folder into place; if another process won the race, keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        if final.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise


# --------------------------------------------------------------------------------------
# Tokenizer and token cache
# --------------------------------------------------------------------------------------


def load_text_tokenizer(cfg: TextDataConfig):
    """The tokenizer a text config names: loaded from ``tokenizer_path``, or trained once on the corpus and cached."""
    from mmgen.text.tokenizer import TextTokenizer

    if cfg.tokenizer_path:
        return TextTokenizer.from_pretrained(cfg.tokenizer_path)
    files = find_text_files(cfg.path)
    vocab_size = cfg.vocab_size if cfg.tokenizer in ("bpe", "wordpiece", "unigram") else None
    key = _digest({"v": _CACHE_VERSION, "files": _files_signature(files), "kind": cfg.tokenizer,
                   "vocab": vocab_size, "errors": cfg.errors})
    folder = _cache_root(cfg, files) / f"tokenizer-{cfg.tokenizer}-{key}"
    if (folder / "tokenizer.json").is_file():
        return TextTokenizer.from_pretrained(folder)
    texts = (text for f in files for text in iter_text(f, cfg.errors))
    tokenizer = TextTokenizer.train(texts, kind=cfg.tokenizer, vocab_size=vocab_size)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save(tmp)
    _publish_dir(tmp, folder)
    return tokenizer


@dataclass
class TokenCorpus:
    """A tokenized corpus: memory-mapped train and validation token arrays."""

    train: np.ndarray  # (N_train,) uint16 / uint32, memory-mapped
    val: np.ndarray  # (N_val,)
    meta: dict[str, Any]


def prepare_corpus(cfg: TextDataConfig, tokenizer) -> TokenCorpus:
    """Tokenize ``cfg.path`` once (cached) and memory-map the train/validation token arrays."""
    files = find_text_files(cfg.path)
    tok_digest = hashlib.sha256(tokenizer.backend.to_str().encode()).hexdigest()[:16]
    key = _digest({"v": _CACHE_VERSION, "files": _files_signature(files), "tokenizer": tok_digest,
                   "errors": cfg.errors, "val": cfg.val_fraction})
    folder = _cache_root(cfg, files) / f"tokens-{key}"
    if not (folder / "meta.json").is_file():
        _write_token_cache(folder, files, tokenizer, cfg)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    tokens = np.memmap(folder / "tokens.bin", dtype=np.dtype(meta["dtype"]), mode="r", shape=(meta["n_tokens"],))
    split = meta["n_train"]
    return TokenCorpus(train=tokens[:split], val=tokens[split:], meta=meta)


def _write_token_cache(folder: Path, files: Sequence[Path], tokenizer, cfg: TextDataConfig) -> None:
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    eos = tokenizer.eos_id
    n_tokens = 0
    with open(tmp / "tokens.bin", "wb") as out:
        for i, path in enumerate(files):
            if i > 0 and eos is not None:  # documents are separated by eos
                out.write(np.asarray([eos], dtype=dtype).tobytes())
                n_tokens += 1
            for text in iter_text(path, cfg.errors):
                ids = np.asarray(tokenizer.backend.encode(text, add_special_tokens=False).ids, dtype=dtype)
                out.write(ids.tobytes())
                n_tokens += len(ids)
        out.flush()
        os.fsync(out.fileno())
    if n_tokens < 2:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TextDataError(f"{cfg.path}: the corpus has {n_tokens} token(s); it needs text to train on")
    n_val = max(1, int(n_tokens * cfg.val_fraction))
    meta = {
        "version": _CACHE_VERSION,
        "dtype": np.dtype(dtype).name,
        "n_tokens": n_tokens,
        "n_train": n_tokens - n_val,
        "n_val": n_val,
        "files": [str(p) for p in files],
        "tokenizer_kind": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "errors": cfg.errors,
    }
    atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
    _publish_dir(tmp, folder)


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------


class TokenWindows(torch.utils.data.Dataset):
    """Item ``i``: ``{"input_ids", "labels"}``, the ``block`` tokens from position ``i`` (labels = ids; GPT shifts)."""

    def __init__(self, tokens: np.ndarray, block: int):
        if len(tokens) < block:
            raise TextDataError(f"the split has {len(tokens)} tokens, fewer than one window of {block}")
        self.tokens = tokens
        self.block = block

    def __len__(self) -> int:
        return len(self.tokens) - self.block + 1

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        ids = np.asarray(self.tokens[i : i + self.block], dtype=np.int64)  # (block,)
        return {"input_ids": ids, "labels": ids}


class MaskedTokenWindows(TokenWindows):
    """Item ``i``: a window with BERT masking; the mask is a function of ``(seed, i)``, so it is reproducible."""

    def __init__(self, tokens: np.ndarray, block: int, *, mask_id: int, vocab_size: int,
                 special_ids: Sequence[int] = (), probability: float = 0.15, seed: int = 0,
                 continues: Optional[np.ndarray] = None):
        super().__init__(tokens, block)
        self.continues = continues
        self.mask_id = mask_id
        self.vocab_size = vocab_size
        self.special_ids = tuple(special_ids)
        self.probability = probability
        self.seed = seed

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        ids = super().__getitem__(i)["input_ids"]
        rng = np.random.default_rng([self.seed, i])
        input_ids, labels = mask_tokens(ids, rng, mask_id=self.mask_id, vocab_size=self.vocab_size,
                                        special_ids=self.special_ids, probability=self.probability,
                                        continues=self.continues)
        return {"input_ids": input_ids, "labels": labels}


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, *, mask_id: int, vocab_size: int,
                special_ids: Sequence[int] = (), probability: float = 0.15,
                continues: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking of one sequence: pick ``probability`` of the non-special positions; of those,
    80 % become ``mask_id``, 10 % a random non-special token, 10 % stay. Returns ``(input_ids, labels)``
    with ``labels = -100`` where nothing is predicted. At least one position is picked when possible.

    With ``continues`` (vocab-sized bools: which tokens continue a word, WordPiece's "##" pieces)
    the draw is per word: a picked word has all its pieces picked (whole-word masking).
    """
    ids = np.asarray(ids, dtype=np.int64)  # (T,)
    special = np.isin(ids, np.asarray(special_ids, dtype=np.int64))
    draw = rng.random(ids.shape)
    if continues is not None:  # each piece takes its word's first piece's draw
        starts = ~continues[ids] | special
        starts[0] = True
        draw = draw[np.flatnonzero(starts)[np.cumsum(starts) - 1]]
    picked = (draw < probability) & ~special
    candidates = np.flatnonzero(~special)
    if not picked.any() and len(candidates):
        picked[rng.choice(candidates)] = True
    labels = np.where(picked, ids, -100)
    roll = rng.random(ids.shape)
    to_mask = picked & (roll < 0.8)
    to_random = picked & (roll >= 0.8) & (roll < 0.9)
    allowed = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), np.asarray(special_ids, dtype=np.int64))
    out = ids.copy()
    out[to_mask] = mask_id
    out[to_random] = rng.choice(allowed, size=int(to_random.sum()))
    return out, labels


def collate_windows(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack equal-length windows: ``{"input_ids": (B, T), "labels": (B, T)}`` as int64 tensors."""
    return {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in samples[0]}


# --------------------------------------------------------------------------------------
# `mmgen data text`
# --------------------------------------------------------------------------------------


def _install_shakespeare(dest: Path, source: Optional[str]) -> int:
    if dest.is_file() and source is None:
        print(f"Tiny Shakespeare is already at {dest} ({dest.stat().st_size:,} bytes)")
        return 0
    if source is not None:
        src = Path(source)
        if not src.is_file():
            print(f"error: --from {src}: no such file", file=sys.stderr)
            return 2
        data = src.read_bytes()
    else:
        try:
            with urllib.request.urlopen(SHAKESPEARE_URL, timeout=15) as response:
                data = response.read()
        except OSError as e:
            print(
                f"error: could not download Tiny Shakespeare from {SHAKESPEARE_URL} ({e}).\n"
                f"If you are offline, copy a local file instead:\n"
                f"  mmgen data text --source shakespeare --from PATH/TO/tinyshakespeare.txt",
                file=sys.stderr,
            )
            return 1
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        print(f"error: {source or SHAKESPEARE_URL}: invalid UTF-8 at byte offset {e.start}", file=sys.stderr)
        return 1
    from mmgen.config import atomic_write_bytes

    atomic_write_bytes(dest, data)
    n_lines = data.count(b"\n")
    print(f"wrote {dest} ({len(data):,} bytes, {n_lines:,} lines)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``mmgen data text --source shakespeare [--from FILE] [--dest PATH]``."""
    parser = argparse.ArgumentParser(
        prog="mmgen data text",
        description="Put a text corpus where the configs expect it (Tiny Shakespeare: data/shakespeare/input.txt).",
    )
    parser.add_argument("--source", required=True, choices=["shakespeare"], help="which corpus")
    parser.add_argument("--from", dest="from_path", metavar="FILE",
                        help="copy this local file instead of downloading (for offline machines)")
    parser.add_argument("--dest", type=Path, default=SHAKESPEARE_DEST, help=f"where to write it (default: {SHAKESPEARE_DEST})")
    args = parser.parse_args(argv)
    return _install_shakespeare(args.dest, args.from_path)


if __name__ == "__main__":
    sys.exit(main())
