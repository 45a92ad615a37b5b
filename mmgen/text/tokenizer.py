"""TextTokenizer: a thin, documented wrapper over the Hugging Face ``tokenizers`` library.

One class covers every way text becomes ids in mmgen:

* **train** a new tokenizer on text files or an iterator of strings, in one of five kinds:

  ==============  =============================================================  ===================
  kind            what it is                                                     added by encode
  ==============  =============================================================  ===================
  ``"bpe"``       byte-level BPE (GPT-2 / RoBERTa): every string round-trips     nothing
  ``"wordpiece"`` BERT WordPiece, optional lowercasing                           ``[CLS] … [SEP]``
  ``"unigram"``   Unigram LM over ``▁``-marked words (T5 / SentencePiece style)  ``… </s>``
  ``"char"``      one token per Unicode code point (char-level GPT)              nothing
  ``"word"``      lowercased words and punctuation (small closed-vocab captions) ``… </s>``
  ==============  =============================================================  ===================

* **save / load** a ``tokenizer.json`` (plus a ``tokenizer_config.json`` sidecar that remembers
  which special token plays which role, in the keys ``transformers`` uses, so the same folder
  also loads with ``AutoTokenizer``), and **load a local Hugging Face folder**: ``tokenizer.json``,
  else ``vocab.txt`` (BERT WordPiece), else ``vocab.json`` + ``merges.txt`` (GPT-2 byte-level BPE);

* **encode / decode** single strings and padded batches, with truncation that warns.

Special tokens have *roles* (``pad``, ``unk``, ``mask``, ``bos``, ``eos``, ``cls``, ``sep``); the
``*_id`` properties answer ``None`` for a role a tokenizer does not have.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from tokenizers import (
    AddedToken,
    Encoding,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from mmgen.config import atomic_write_text

__all__ = ["KINDS", "ROLES", "TextTokenizer", "TokenizerFileError", "TruncationWarning"]

PathLike = Union[str, os.PathLike]

KINDS = ("bpe", "wordpiece", "unigram", "char", "word")
ROLES = ("pad", "unk", "mask", "bos", "eos", "cls", "sep")
TEMPLATES = ("default", "none", "cls_sep", "eos", "bos_eos")

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"  # the sidecar: roles of the special tokens (HF's keys)
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"  # older HF folders keep the roles here

# Per-kind defaults. Special tokens come first in the vocabulary, in this order, so ``pad`` is
# id 0 (the default ``TransformerConfig.pad_token_id``). Byte-level BPE has no ``unk``: every
# byte is in its alphabet, so no input is ever unknown.
_DEFAULT_SPECIALS: dict[str, dict[str, str]] = {
    "bpe": {"pad": "<pad>", "mask": "<mask>", "bos": "<s>", "eos": "</s>"},
    "wordpiece": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "unigram": {"pad": "<pad>", "unk": "<unk>", "mask": "<mask>", "bos": "<s>", "eos": "</s>"},
    "char": {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"},
    "word": {"pad": "<pad>", "unk": "<unk>", "mask": "<mask>", "bos": "<s>", "eos": "</s>"},
}
_DEFAULT_VOCAB_SIZE = {"bpe": 8000, "wordpiece": 8000, "unigram": 8000, "char": None, "word": None}
_DEFAULT_LOWERCASE = {"bpe": False, "wordpiece": True, "unigram": False, "char": False, "word": True}
# What ``encode(add_special_tokens=True)`` adds: BERT wraps in [CLS]/[SEP], T5-style encoders end
# in </s>; GPT-style kinds (bpe, char) add nothing, the caller places bos/eos between documents.
_DEFAULT_TEMPLATE = {"bpe": "none", "wordpiece": "cls_sep", "unigram": "eos", "char": "none", "word": "eos"}
_NEEDS_UNK = ("wordpiece", "unigram", "char", "word")

# Names by which a role is recognised when no config says which token plays it (a bare
# tokenizer.json, or a plain list of special tokens given to ``train``). Lower-cased.
_ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "pad": ("[pad]", "<pad>", "<|pad|>", "<|padding|>"),
    "unk": ("[unk]", "<unk>", "<|unk|>"),
    "mask": ("[mask]", "<mask>", "<|mask|>"),
    "bos": ("<s>", "<bos>", "<|bos|>", "[bos]", "<|startoftext|>", "<|endoftext|>"),
    "eos": ("</s>", "<eos>", "<|eos|>", "[eos]", "<|endoftext|>"),
    "cls": ("[cls]", "<cls>"),
    "sep": ("[sep]", "<sep>"),
}


class TokenizerFileError(ValueError):
    """A tokenizer file is missing a part, corrupt, or inconsistent; the message names the file."""


class TruncationWarning(UserWarning):
    """An input was longer than ``max_length`` and lost tokens at its end."""


class TextTokenizer:
    """Text ⇄ token ids, over a ``tokenizers.Tokenizer`` plus the roles of its special tokens.

    Build one with :meth:`train`, :meth:`from_file` or :meth:`from_pretrained`; the constructor
    is for wrapping a ``tokenizers.Tokenizer`` you already have.
    """

    def __init__(self, tokenizer: Tokenizer, special_tokens: Optional[Mapping[str, Optional[str]]] = None):
        """Wrap ``tokenizer``; ``special_tokens`` maps roles (see ``ROLES``) to token strings.

        Every named token must be in the vocabulary. Roles left out are recognised by name
        among the tokenizer's special tokens (``[PAD]``, ``<pad>``, ``</s>``, …).
        """
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        self._tok = tokenizer
        self._kind = _kind_of(tokenizer)
        given = dict(special_tokens or {})
        _check_roles(given)
        inferred = _infer_roles(self._special_token_strings())
        self._roles: dict[str, Optional[str]] = {r: given.get(r, inferred.get(r)) for r in ROLES}
        for role, token in self._roles.items():
            if token is not None and tokenizer.token_to_id(token) is None:
                raise ValueError(f"the {role} token {token!r} is not in the vocabulary")

    # ----------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        files_or_iterator: Union[PathLike, Iterable[PathLike], Iterable[str]],
        kind: str = "bpe",
        *,
        vocab_size: Optional[int] = None,
        min_frequency: int = 1,
        special_tokens: Union[Mapping[str, Optional[str]], Sequence[str], None] = None,
        lowercase: Optional[bool] = None,
        template: str = "default",
    ) -> "TextTokenizer":
        """Train a new tokenizer.

        Args:
            files_or_iterator: a text file path, a list of paths (``Path`` objects, or strings
                that all name existing files), or any other iterable of strings (the texts).
            kind: one of ``KINDS`` (see the module docstring).
            vocab_size: size of the vocabulary including special tokens. Default: 8000 for
                bpe/wordpiece/unigram; every character/word seen for char/word.
            min_frequency: a merge/word/character seen fewer times is left out (bpe, wordpiece,
                char, word; Unigram has no such knob).
            special_tokens: a mapping role → token that overrides the kind's defaults (``None``
                drops a role), or a list of token strings whose roles are recognised by name
                (unrecognised ones are kept as extra special tokens).
            lowercase: lowercase the input. Default: True for wordpiece and word.
            template: what ``encode(add_special_tokens=True)`` adds: ``"default"`` (per kind),
                ``"none"``, ``"cls_sep"`` (``[CLS] … [SEP]``), ``"eos"`` (``… </s>``) or
                ``"bos_eos"`` (``<s> … </s>``).
        """
        if kind not in KINDS:
            raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {list(KINDS)}")
        if vocab_size is None:
            vocab_size = _DEFAULT_VOCAB_SIZE[kind]
        if vocab_size is not None and not _is_positive_int(vocab_size):
            raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 0:
            raise ValueError(f"min_frequency must be a non-negative integer, got {min_frequency!r}")
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; expected one of {list(TEMPLATES)}")

        roles, extra = _resolve_specials(kind, special_tokens)
        if kind in _NEEDS_UNK and roles.get("unk") is None:
            raise ValueError(f"a {kind} tokenizer needs an unk token for text it has not seen")
        # Roles may share a token (GPT-2 uses <|endoftext|> as bos and eos): list each once.
        ordered = list(dict.fromkeys([t for r in _role_order(kind) if (t := roles.get(r)) is not None] + extra))
        if kind == "bpe" and vocab_size is not None and vocab_size < 256 + len(ordered):
            raise ValueError(
                f"byte-level BPE needs vocab_size >= 256 + {len(ordered)} special tokens "
                f"(the byte alphabet is always in the vocabulary), got {vocab_size}"
            )

        lowercase = _DEFAULT_LOWERCASE[kind] if lowercase is None else bool(lowercase)
        tok, trainer = _build_untrained(kind, vocab_size, min_frequency, ordered, roles.get("unk"), lowercase)
        seen = [0]  # texts consumed, counted on the way into the trainer

        def counted(texts: Iterator[str]) -> Iterator[str]:
            for text in texts:
                seen[0] += 1
                yield text

        tok.train_from_iterator(counted(_iter_texts(files_or_iterator)), trainer=trainer)
        if seen[0] == 0:
            raise ValueError("nothing to train on: the files or iterator held no text")
        # Trainers put special tokens into the vocabulary; registering them as added special
        # tokens too makes them match whole in raw text and lets decode skip them.
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ordered])

        if template == "default":
            template = _DEFAULT_TEMPLATE[kind]
            if template == "eos" and roles.get("eos") is None:
                template = "none"
            if template == "cls_sep" and (roles.get("cls") is None or roles.get("sep") is None):
                template = "none"
        _set_post_processor(tok, kind, template, roles)
        return cls(tok, roles)

    # ----------------------------------------------------------------------------------
    # Saving and loading
    # ----------------------------------------------------------------------------------

    def save(self, path_or_dir: PathLike) -> Path:
        """Write ``tokenizer.json`` and its ``tokenizer_config.json`` sidecar, atomically.

        A path ending in ``.json`` is the tokenizer file itself (the sidecar goes next to it as
        ``<stem>_config.json``); anything else is a folder. Returns the tokenizer file's path.
        """
        path = Path(path_or_dir)
        file = path if path.suffix == ".json" else path / TOKENIZER_FILE
        atomic_write_text(file, self._tok.to_str(pretty=True))
        sidecar = {
            # Lets transformers' AutoTokenizer load the same folder.
            "tokenizer_class": "PreTrainedTokenizerFast",
            # Keep decode's output exact in transformers too (no " ." → "." clean-up).
            "clean_up_tokenization_spaces": False,
            **{f"{role}_token": self._roles[role] for role in ROLES},
        }
        atomic_write_text(_sidecar_path(file), json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n")
        return file

    @classmethod
    def from_file(cls, path: PathLike) -> "TextTokenizer":
        """Load a ``tokenizer.json`` (any file ``tokenizers`` wrote), with roles from its sidecar.

        Roles come from ``<stem>_config.json`` next to the file (and, for ``tokenizer.json``,
        ``special_tokens_map.json``) when present, else are recognised by the tokens' names.
        """
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {file}")
        try:
            tok = Tokenizer.from_str(file.read_text(encoding="utf-8"))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON or schema
            raise TokenizerFileError(f"{file}: not a valid tokenizer file ({e})") from None
        sidecars = [_sidecar_path(file)]
        if file.name == TOKENIZER_FILE:
            sidecars.append(file.with_name(SPECIAL_TOKENS_MAP_FILE))
        roles = _read_roles(sidecars)
        _add_missing_specials(tok, roles)
        return cls(tok, roles)

    @classmethod
    def from_pretrained(cls, path_or_dir: PathLike) -> "TextTokenizer":
        """Load the tokenizer of a folder: ours, or a local Hugging Face one.

        Looks for, in order: ``tokenizer.json``; ``vocab.txt`` (BERT WordPiece, honouring
        ``do_lower_case`` / ``strip_accents`` / ``tokenize_chinese_chars`` from
        ``tokenizer_config.json``); ``vocab.json`` + ``merges.txt`` (GPT-2 byte-level BPE,
        honouring ``add_prefix_space``). Special-token roles come from
        ``tokenizer_config.json`` / ``special_tokens_map.json`` where present. A file path is
        handed to :meth:`from_file`.
        """
        path = Path(path_or_dir)
        if path.is_file():
            return cls.from_file(path)
        if not path.is_dir():
            raise FileNotFoundError(f"tokenizer folder not found: {path}")
        if (path / TOKENIZER_FILE).is_file():
            return cls.from_file(path / TOKENIZER_FILE)
        config = _read_json_object(path / CONFIG_FILE) if (path / CONFIG_FILE).is_file() else {}
        roles = _read_roles([path / CONFIG_FILE, path / SPECIAL_TOKENS_MAP_FILE])
        if (path / "vocab.txt").is_file():
            tok, roles = _bert_wordpiece_from_vocab(path / "vocab.txt", config, roles)
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            tok, roles = _gpt2_bpe_from_vocab(path / "vocab.json", path / "merges.txt", config, roles)
        else:
            raise FileNotFoundError(
                f"no tokenizer in {path}: expected {TOKENIZER_FILE}, vocab.txt, or vocab.json + merges.txt"
            )
        _add_added_tokens(tok, config)
        _add_missing_specials(tok, roles)
        return cls(tok, roles)

    # ----------------------------------------------------------------------------------
    # Encoding
    # ----------------------------------------------------------------------------------

    def encode(self, text: str, max_length: Optional[int] = None, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; longer than ``max_length`` (specials included) is truncated
        at the end, keeping the template's special tokens, with a :class:`TruncationWarning`."""
        _check_text(text, "text")
        _check_max_length(max_length)
        raw = self._tok.encode(text, add_special_tokens=False)
        ids, dropped = self._finish(raw, max_length, add_special_tokens)
        if dropped:
            warnings.warn(
                f"input truncated to max_length={max_length}: {dropped} token(s) dropped",
                TruncationWarning,
                stacklevel=2,
            )
        return ids

    def encode_batch(
        self,
        texts: Sequence[str],
        max_length: Optional[int] = None,
        padding: str = "longest",
        padding_side: str = "right",
        return_tensors: Optional[str] = "pt",
        add_special_tokens: bool = True,
        return_details: bool = False,
    ) -> dict[str, Any]:
        """Encode and pad a batch: ``{"input_ids", "attention_mask"}``, each ``(B, T)``.

        Args:
            padding: ``"longest"`` pads to the longest sequence of the batch, ``"max_length"``
                to ``max_length`` (which it then requires).
            padding_side: ``"right"`` (encoders, training) or ``"left"`` (batched generation,
                so every prompt ends at the last position).
            return_tensors: ``"pt"`` for ``torch.long`` tensors, ``None`` for lists of lists.

        ``attention_mask`` is 1 on real tokens and 0 on padding. Truncation warns once for the
        whole batch, unless ``return_details``: then the caller reports it, from three more lists
        (one entry per text): ``"dropped"`` (tokens cut off), ``"dropped_from"`` (the character
        where the cut-off text starts, or None) and ``"unknown"`` (the pieces of text that became
        the unk token). They come from the same encoding as the ids, so they describe exactly
        what the model reads.
        """
        self._check_batch_options(texts, max_length, padding, padding_side, return_tensors)
        rows, details = self._encode_rows(texts, max_length, add_special_tokens)
        n_truncated = sum(dropped > 0 for dropped in details["dropped"])
        if n_truncated and not return_details:
            warnings.warn(
                f"{n_truncated} of {len(rows)} input(s) truncated to max_length={max_length}: "
                f"{sum(details['dropped'])} token(s) dropped in all",
                TruncationWarning,
                stacklevel=2,
            )

        width = max_length if padding == "max_length" else max(len(r) for r in rows)
        input_ids, attention_mask = _pad_rows(rows, width, self.pad_id, padding_side)
        extra = details if return_details else {}
        if return_tensors == "pt":
            import torch  # only here: the tokenizer itself works without torch

            return {
                "input_ids": torch.tensor(input_ids, dtype=torch.long),  # (B, T)
                "attention_mask": torch.tensor(attention_mask, dtype=torch.long),  # (B, T)
                **extra,
            }
        return {"input_ids": input_ids, "attention_mask": attention_mask, **extra}

    def _check_batch_options(
        self, texts: Any, max_length: Any, padding: str, padding_side: str, return_tensors: Optional[str]
    ) -> None:
        """Refuse what :meth:`encode_batch` cannot do, before any text is encoded."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
        if len(texts) == 0:
            raise ValueError("texts is empty")
        for i, text in enumerate(texts):
            _check_text(text, f"texts[{i}]")
        _check_max_length(max_length)
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        if padding == "max_length" and max_length is None:
            raise ValueError("padding='max_length' needs max_length")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        if self.pad_id is None:
            raise ValueError("this tokenizer has no pad token, so it cannot pad a batch")

    def _encode_rows(
        self, texts: Sequence[str], max_length: Optional[int], add_special_tokens: bool
    ) -> tuple[list[list[int]], dict[str, list]]:
        """Each text's ids (truncated, template applied) and what :meth:`encode_batch` reports of
        them with ``return_details``: tokens dropped, where the dropped text starts, unknown pieces."""
        # The Rust side encodes the batch in parallel; truncation and templates are ours so
        # we can count what is dropped.
        raws = self._tok.encode_batch(list(texts), add_special_tokens=False)
        rows: list[list[int]] = []
        details: dict[str, list] = {"dropped": [], "dropped_from": [], "unknown": []}
        unk = self.unk_id
        for text, raw in zip(texts, raws):
            offsets = raw.offsets  # (start, end) characters of each token, read before truncating
            details["unknown"].append([text[a:b] for i, (a, b) in zip(raw.ids, offsets) if i == unk])
            ids, dropped = self._finish(raw, max_length, add_special_tokens)
            rows.append(ids)
            details["dropped"].append(dropped)
            details["dropped_from"].append(offsets[len(offsets) - dropped][0] if dropped else None)
        return rows, details

    def _finish(self, raw: Encoding, max_length: Optional[int], add_special_tokens: bool) -> tuple[list[int], int]:
        """Truncate a special-free encoding to leave room for the template, then apply it.

        Returns the ids and how many content tokens were dropped.
        """
        n_special = self._tok.num_special_tokens_to_add(is_pair=False) if add_special_tokens else 0
        dropped = 0
        if max_length is not None:
            budget = max_length - n_special
            if budget < 0:
                raise ValueError(f"max_length={max_length} leaves no room for the {n_special} special token(s)")
            dropped = max(0, len(raw) - budget)
            if dropped:
                raw.truncate(budget)
        return self._tok.post_process(raw, None, add_special_tokens).ids, dropped

    # ----------------------------------------------------------------------------------
    # Decoding and look-ups
    # ----------------------------------------------------------------------------------

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        """Text of a sequence of ids (a list, or a 1-D tensor/array)."""
        return self._tok.decode(self._check_ids(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Any, skip_special_tokens: bool = True) -> list[str]:
        """Texts of a batch of id sequences (a list of lists, or a 2-D tensor/array)."""
        rows = batch.tolist() if hasattr(batch, "tolist") else batch
        if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
            raise TypeError(f"expected a batch of id sequences, got {type(batch).__name__}")
        checked = [self._check_ids(row) for row in rows]
        return self._tok.decode_batch(checked, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Union[int, Sequence[int]]) -> Union[str, list[str]]:
        """Token string(s) of one id or a sequence of ids."""
        if isinstance(ids, int) and not isinstance(ids, bool):
            return self._tok.id_to_token(self._check_ids([ids])[0])
        return [self._tok.id_to_token(i) for i in self._check_ids(ids)]

    def token_to_id(self, token: str) -> Optional[int]:
        """Id of a token string, or None when it is not in the vocabulary."""
        if not isinstance(token, str):
            raise TypeError(f"token must be a str, got {type(token).__name__}")
        return self._tok.token_to_id(token)

    def get_vocab(self) -> dict[str, int]:
        """Token string → id, added tokens included."""
        return self._tok.get_vocab(with_added_tokens=True)

    def continuation_table(self) -> np.ndarray:
        """(vocab_size,) bools: which ids continue a word (WordPiece's "##" pieces); for whole-word masking."""
        if self.kind != "wordpiece":
            raise ValueError(f"whole-word masking needs a wordpiece tokenizer (its '##' pieces), not {self.kind}")
        table = np.zeros(self.vocab_size, dtype=bool)
        for token, i in self.get_vocab().items():
            table[i] = token.startswith("##")
        return table

    def _check_ids(self, ids: Any) -> list[int]:
        # tokenizers silently skips unknown ids; a wrong id is a bug worth hearing about.
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            raise TypeError(f"expected a sequence of token ids, got {type(ids).__name__}")
        size = self.vocab_size
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"token ids must be integers, got {i!r}")
            if not 0 <= i < size:
                raise ValueError(f"token id {i} is out of range for a vocabulary of {size}")
        return list(ids)

    # ----------------------------------------------------------------------------------
    # Properties
    # ----------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the embedding table needs this many rows)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def kind(self) -> str:
        """One of ``KINDS``, read off the tokenizer's model (so loaded tokenizers know it too)."""
        return self._kind

    @property
    def special_tokens(self) -> dict[str, str]:
        """Role → token string, for the roles this tokenizer has."""
        return {role: token for role, token in self._roles.items() if token is not None}

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of every special token (role or not), sorted."""
        added = self._tok.get_added_tokens_decoder()
        return sorted(i for i, token in added.items() if token.special)

    @property
    def backend(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (for what this wrapper does not cover)."""
        return self._tok

    def _role_id(self, role: str) -> Optional[int]:
        token = self._roles[role]
        return None if token is None else self._tok.token_to_id(token)

    pad_token = property(lambda self: self._roles["pad"], doc="Padding token, or None.")
    unk_token = property(lambda self: self._roles["unk"], doc="Unknown-text token, or None.")
    mask_token = property(lambda self: self._roles["mask"], doc="MLM mask token, or None.")
    bos_token = property(lambda self: self._roles["bos"], doc="Beginning-of-sequence token, or None.")
    eos_token = property(lambda self: self._roles["eos"], doc="End-of-sequence token, or None.")
    cls_token = property(lambda self: self._roles["cls"], doc="BERT [CLS] token, or None.")
    sep_token = property(lambda self: self._roles["sep"], doc="BERT [SEP] token, or None.")
    pad_id = property(lambda self: self._role_id("pad"), doc="Id of the padding token, or None.")
    unk_id = property(lambda self: self._role_id("unk"), doc="Id of the unknown-text token, or None.")
    mask_id = property(lambda self: self._role_id("mask"), doc="Id of the MLM mask token, or None.")
    bos_id = property(lambda self: self._role_id("bos"), doc="Id of the beginning-of-sequence token, or None.")
    eos_id = property(lambda self: self._role_id("eos"), doc="Id of the end-of-sequence token, or None.")
    cls_id = property(lambda self: self._role_id("cls"), doc="Id of the BERT [CLS] token, or None.")
    sep_id = property(lambda self: self._role_id("sep"), doc="Id of the BERT [SEP] token, or None.")

    def _special_token_strings(self) -> list[str]:
        added = self._tok.get_added_tokens_decoder()
        return [added[i].content for i in sorted(added) if added[i].special]

    def __repr__(self) -> str:
        return f"TextTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, special_tokens={self.special_tokens})"


# --------------------------------------------------------------------------------------
# Building tokenizers (training pipelines and Hugging Face vocab files)
# --------------------------------------------------------------------------------------


def _build_untrained(
    kind: str, vocab_size: Optional[int], min_frequency: int, specials: list[str], unk: Optional[str], lowercase: bool
) -> tuple[Tokenizer, trainers.Trainer]:
    """The pipeline (normalizer, pre-tokenizer, model, decoder) and trainer of one kind."""
    everything = 2**31 - 1  # "keep every character / word seen"
    common = dict(special_tokens=specials, show_progress=False)
    lower = [normalizers.Lowercase()] if lowercase else []
    if kind == "bpe":
        # GPT-2: split on a regex, then map every byte to a printable character, so the
        # alphabet is 256 symbols and any string (emoji, CJK, control bytes) round-trips.
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            **common,
        )
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=unk))
        # BertNormalizer strips accents when lowercasing, as BERT-uncased does.
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, **common)
    elif kind == "unigram":
        # SentencePiece style: words keep their leading space as "▁", so decode restores spacing.
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), *lower])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, unk_token=unk, **common)
    elif kind == "char":
        # One "word" per code point ([\s\S] also matches newlines); Fuse joins them back
        # without the spaces a WordLevel decode would put between tokens.
        tok = Tokenizer(models.WordLevel(unk_token=unk))
        if lower:
            tok.normalizer = normalizers.Sequence(lower)
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size or everything, min_frequency=min_frequency, **common)
    else:  # word
        # Decode joins tokens with single spaces ("a red circle ."): fine for closed captions.
        tok = Tokenizer(models.WordLevel(unk_token=unk))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), *lower])
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
        )
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size or everything, min_frequency=min_frequency, **common)
    return tok, trainer


def _kind_of(tok: Tokenizer) -> str:
    """Which of ``KINDS`` a tokenizer is, from its model (and, for WordLevel, its decoder)."""
    spec = json.loads(tok.to_str())
    model_type = spec["model"]["type"]
    if model_type == "WordLevel":
        decoder = spec.get("decoder") or {}
        return "char" if decoder.get("type") == "Fuse" else "word"
    return {"BPE": "bpe", "WordPiece": "wordpiece", "Unigram": "unigram"}[model_type]


def _set_post_processor(tok: Tokenizer, kind: str, template: str, roles: Mapping[str, Optional[str]]) -> None:
    """Install what ``encode(add_special_tokens=True)`` adds around a sequence."""
    needed = {"cls_sep": ("cls", "sep"), "eos": ("eos",), "bos_eos": ("bos", "eos"), "none": ()}[template]
    missing = [r for r in needed if roles.get(r) is None]
    if missing:
        raise ValueError(f"template {template!r} needs the special token role(s) {missing}")
    tokens = {r: roles[r] for r in needed}
    ids = [(t, tok.token_to_id(t)) for t in dict.fromkeys(tokens.values())]
    if template == "cls_sep":
        cls, sep = tokens["cls"], tokens["sep"]
        post = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1", special_tokens=ids
        )
    elif template == "eos":
        eos = tokens["eos"]
        post = processors.TemplateProcessing(
            single=f"$A:0 {eos}:0", pair=f"$A:0 {eos}:0 $B:1 {eos}:1", special_tokens=ids
        )
    elif template == "bos_eos":
        bos, eos = tokens["bos"], tokens["eos"]
        post = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0 {eos}:0", pair=f"{bos}:0 $A:0 {eos}:0 $B:1 {eos}:1", special_tokens=ids
        )
    else:
        post = None
    if kind == "bpe":
        # ByteLevel post-processing only fixes offsets; ids are unaffected.
        byte_level = processors.ByteLevel(trim_offsets=False)
        post = byte_level if post is None else processors.Sequence([byte_level, post])
    if post is not None:
        tok.post_processor = post


def _bert_wordpiece_from_vocab(
    vocab_file: Path, config: Mapping[str, Any], roles: dict[str, Optional[str]]
) -> tuple[Tokenizer, dict[str, Optional[str]]]:
    """The pipeline ``transformers.BertTokenizerFast`` builds from a ``vocab.txt``."""
    lines = vocab_file.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    vocab: dict[str, int] = {}
    for token in lines:
        vocab.setdefault(token.rstrip("\r"), len(vocab))
    if not vocab:
        raise TokenizerFileError(f"{vocab_file}: the vocabulary is empty")
    roles = {**{"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}, **roles}
    unk = roles["unk"]
    if unk is None or unk not in vocab:
        raise TokenizerFileError(f"{vocab_file}: the unk token {unk!r} is not in the vocabulary")
    tok = Tokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),
        lowercase=config.get("do_lower_case", True),
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    _add_missing_specials(tok, roles, mark_existing=True)
    template = "cls_sep" if roles.get("cls") and roles.get("sep") else "none"
    _set_post_processor(tok, "wordpiece", template, roles)
    return tok, roles


def _gpt2_bpe_from_vocab(
    vocab_file: Path, merges_file: Path, config: Mapping[str, Any], roles: dict[str, Optional[str]]
) -> tuple[Tokenizer, dict[str, Optional[str]]]:
    """The pipeline ``transformers.GPT2TokenizerFast`` builds from ``vocab.json`` + ``merges.txt``."""
    vocab = _read_json_object(vocab_file)
    if not vocab or not all(isinstance(v, int) for v in vocab.values()):
        raise TokenizerFileError(f"{vocab_file}: expected a non-empty mapping of token → integer id")
    merges = []
    for n, line in enumerate(merges_file.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip() or (n == 1 and line.startswith("#version")):
            continue
        pair = line.split(" ")
        if len(pair) != 2:
            raise TokenizerFileError(f"{merges_file}:{n}: expected two space-separated tokens, got {line!r}")
        merges.append((pair[0], pair[1]))
    # GPT-2 has one special token for everything but padding.
    roles = {**{"unk": "<|endoftext|>", "bos": "<|endoftext|>", "eos": "<|endoftext|>"}, **roles}
    tok = Tokenizer(
        models.BPE(vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space", False)))
    tok.decoder = decoders.ByteLevel()
    _add_missing_specials(tok, roles, mark_existing=True)
    _set_post_processor(tok, "bpe", "bos_eos" if config.get("add_bos_token") else "none", roles)
    return tok, roles


def _add_missing_specials(tok: Tokenizer, roles: Mapping[str, Optional[str]], mark_existing: bool = False) -> None:
    """Make every role token a special token: added when missing (as ``transformers`` does),
    and, with ``mark_existing``, marked special when it is a plain vocabulary entry."""
    tokens = dict.fromkeys(t for t in roles.values() if t is not None)
    todo = [t for t in tokens if mark_existing or tok.token_to_id(t) is None]
    if todo:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in todo])


def _add_added_tokens(tok: Tokenizer, config: Mapping[str, Any]) -> None:
    """Tokens a Hugging Face ``tokenizer_config.json`` lists under ``added_tokens_decoder``."""
    added = config.get("added_tokens_decoder") or {}
    for _, spec in sorted(added.items(), key=lambda kv: int(kv[0])):
        if isinstance(spec, dict) and "content" in spec:
            token = AddedToken(spec["content"], special=bool(spec.get("special", False)), normalized=False)
            (tok.add_special_tokens if token.special else tok.add_tokens)([token])


# --------------------------------------------------------------------------------------
# Special-token roles
# --------------------------------------------------------------------------------------


def _role_order(kind: str) -> list[str]:
    return list(_DEFAULT_SPECIALS[kind]) + [r for r in ROLES if r not in _DEFAULT_SPECIALS[kind]]


def _check_roles(roles: Mapping[str, Any]) -> None:
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown special token role(s) {unknown}; known roles: {list(ROLES)}")
    for role, token in roles.items():
        if token is not None and (not isinstance(token, str) or not token):
            raise TypeError(f"the {role} token must be a non-empty str or None, got {token!r}")


def _resolve_specials(
    kind: str, special_tokens: Union[Mapping[str, Optional[str]], Sequence[str], None]
) -> tuple[dict[str, Optional[str]], list[str]]:
    """Roles (kind defaults, then the caller's overrides) and extra special tokens."""
    roles: dict[str, Optional[str]] = dict(_DEFAULT_SPECIALS[kind])
    extra: list[str] = []
    if special_tokens is None:
        pass
    elif isinstance(special_tokens, Mapping):
        _check_roles(special_tokens)
        roles.update(special_tokens)
    elif isinstance(special_tokens, Sequence) and not isinstance(special_tokens, str):
        if not all(isinstance(t, str) and t for t in special_tokens):
            raise TypeError("special_tokens must be non-empty strings")
        # A list replaces the defaults, as it does in the tokenizers trainers.
        roles = _infer_roles(special_tokens)
        extra = [t for t in special_tokens if t not in roles.values()]
    else:
        raise TypeError(
            f"special_tokens must be a mapping role → token or a list, got {type(special_tokens).__name__}"
        )
    return roles, extra


def _infer_roles(tokens: Iterable[str]) -> dict[str, Optional[str]]:
    """Roles recognised by name; the first matching token wins."""
    roles: dict[str, Optional[str]] = {}
    for token in tokens:
        for role, names in _ROLE_NAMES.items():
            if role not in roles and token.lower() in names:
                roles[role] = token
    return roles


def _read_roles(files: Sequence[Path]) -> dict[str, Optional[str]]:
    """Roles from Hugging Face style config files; earlier files win.

    A key present with ``null`` means "this tokenizer has no such token" and is kept, so the
    name-based guess does not override it. Values may be strings or ``{"content": …}`` objects.
    """
    roles: dict[str, Optional[str]] = {}
    for file in files:
        if not file.is_file():
            continue
        data = _read_json_object(file)
        for role in ROLES:
            key = f"{role}_token"
            if role in roles or key not in data:
                continue
            value = data[key]
            if isinstance(value, dict):
                value = value.get("content")
            if value is not None and not isinstance(value, str):
                raise TokenizerFileError(f"{file}: {key} must be a string, got {value!r}")
            roles[role] = value or None
    return roles


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _sidecar_path(tokenizer_file: Path) -> Path:
    """``tokenizer.json`` → ``tokenizer_config.json``; ``x.json`` → ``x_config.json``."""
    return tokenizer_file.with_name(f"{tokenizer_file.stem}_config.json")


def _read_json_object(file: Path) -> dict[str, Any]:
    from ..config import read_json

    return read_json(file, TokenizerFileError)


def _iter_texts(source: Union[PathLike, Iterable[PathLike], Iterable[str]]) -> Iterator[str]:
    """Texts to train on. Files are read line by line *keeping* newlines (a char-level
    tokenizer must learn "\\n"); anything else must be an iterable of strings."""
    if isinstance(source, (str, os.PathLike)):
        files = [Path(source)]
    elif isinstance(source, (list, tuple)) and source and all(_is_file_ref(s) for s in source):
        files = [Path(s) for s in source]
    elif isinstance(source, Iterable) and not isinstance(source, (bytes, Mapping)):
        return _checked_texts(source)
    else:
        raise TypeError(f"expected a file path, a list of paths or an iterable of strings, got {type(source).__name__}")
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"training file not found: {file}")
    return _lines_of(files)


def _is_file_ref(item: Any) -> bool:
    return isinstance(item, os.PathLike) or (isinstance(item, str) and "\n" not in item and Path(item).is_file())


def _lines_of(files: Sequence[Path]) -> Iterator[str]:
    for file in files:
        with open(file, encoding="utf-8") as f:
            yield from f


def _checked_texts(texts: Iterable[Any]) -> Iterator[str]:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"training texts must be strings; item {i} is a {type(text).__name__}")
        yield text


def _pad_rows(rows: Sequence[list[int]], width: int, pad_id: int, side: str) -> tuple[list[list[int]], list[list[int]]]:
    """Rows padded to ``width`` with ``pad_id`` on ``side`` ("right" or "left"), and their
    attention masks (1 on real tokens, 0 on padding)."""
    input_ids, attention_mask = [], []
    for ids in rows:
        pad = [pad_id] * (width - len(ids))
        real, zeros = [1] * len(ids), [0] * len(pad)
        input_ids.append(ids + pad if side == "right" else pad + ids)
        attention_mask.append(real + zeros if side == "right" else zeros + real)
    return input_ids, attention_mask


def _check_text(text: Any, name: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")


def _check_max_length(max_length: Any) -> None:
    if max_length is not None and not _is_positive_int(max_length):
        raise ValueError(f"max_length must be a positive integer or None, got {max_length!r}")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
