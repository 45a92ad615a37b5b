"""``mmgen eval text``: how well a GPT predicts held-out text, and how well a BERT fills whole words.

Both read the **tail** of a corpus (by default the last 5 % of Tiny Shakespeare's characters),
which lies inside the last 10 % of tokens that training keeps as its validation split.

* GPT: the mean negative log-likelihood of every tail token after the first, in nats per token and
  per character (the figure that compares tokenizers: a char model's tokens are characters).
  Windows of ``max_len`` tokens slide by half a window; each token is scored once, with at least
  half a window of context (except at the very start).
* BERT: ``n`` alphabetic words of the tail, each masked whole (every one of its pieces becomes the
  mask token) inside a window of ``max_len`` tokens around it. Top-1 is right when every piece's
  first candidate is the word's piece, top-5 when every piece is among its five. ``punctuation``
  is the share of masks whose first candidate is punctuation (never right: only words are masked).
"""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path

import numpy as np
import torch

from .t2i import wilson_interval

DEFAULT_TAIL = 0.05


def held_out_tail(path: str | Path, fraction: float = DEFAULT_TAIL) -> str:
    """The last ``fraction`` of the characters of a UTF-8 text file, started at a line."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    text = Path(path).read_text(encoding="utf-8")
    tail = text[int(len(text) * (1 - fraction)):]
    newline = tail.find("\n")
    return tail[newline + 1:] if 0 <= newline < len(tail) - 1 else tail


@torch.inference_mode()
def evaluate_gpt(model, tokenizer, text: str, batch_size: int = 16) -> dict:
    """Nats per token and per character of ``text`` under ``model`` (see the module docstring)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) < 2:
        raise ValueError("the held-out text has fewer than two tokens")
    block = model.config.max_len
    half = max(1, block // 2)
    starts = list(range(0, max(1, len(ids) - block) + 1, half))
    if starts[-1] + block < len(ids):
        starts.append(len(ids) - block)
    model.eval()
    total, scored = 0.0, 0
    done = 0  # every target position below this is already scored
    windows = []
    for s in starts:
        window = ids[s : s + block]
        first = max(done, s + 1)  # score targets at positions first .. s+len-1
        windows.append((window, first - s))
        done = s + len(window)
    for i in range(0, len(windows), batch_size):
        batch = windows[i : i + batch_size]
        width = max(len(w) for w, _ in batch)
        input_ids = torch.zeros(len(batch), width, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, (window, first) in enumerate(batch):
            input_ids[row, : len(window)] = torch.tensor(window)
            labels[row, first : len(window)] = torch.tensor(window[first:])
        logits, _ = model(input_ids)
        logp = logits[:, :-1].float().log_softmax(-1)
        target = labels[:, 1:]
        keep = target != -100
        total -= logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)[keep].sum().item()
        scored += int(keep.sum())
    first_chars = len(tokenizer.decode(ids[:1]))
    chars = max(1, len(text) - first_chars)
    return {
        "tokens": scored,
        "chars": chars,
        "nats_per_token": round(total / scored, 4),
        "nats_per_char": round(total / chars, 4),
        "bits_per_char": round(total / chars / math.log(2), 4),
    }


def is_punctuation(text: str) -> bool:
    text = text.strip()
    return bool(text) and all(unicodedata.category(c).startswith("P") or c in "$^`|~<>+=" for c in text)


def _words(pieces: list[str]) -> list[tuple[int, int]]:
    """(start, end) token spans of the alphabetic words in a WordPiece token list."""
    spans = []
    i = 0
    while i < len(pieces):
        j = i + 1
        while j < len(pieces) and pieces[j].startswith("##"):
            j += 1
        if pieces[i].isalpha():
            spans.append((i, j))
        i = j
    return spans


@torch.inference_mode()
def evaluate_bert(model, tokenizer, text: str, n: int = 500, seed: int = 0, batch_size: int = 32) -> dict:
    """Top-1 / top-5 accuracy on ``n`` whole-word masks in ``text`` (see the module docstring)."""
    if tokenizer.mask_id is None:
        raise ValueError("this tokenizer has no mask token")
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    spans = _words(pieces)
    if not spans:
        raise ValueError("the held-out text has no words to mask")
    rng = np.random.default_rng(seed)
    chosen = [spans[int(k)] for k in rng.choice(len(spans), size=min(n, len(spans)), replace=False)]
    block = model.config.max_len
    model.eval()
    top1 = top5 = punct = multi = 0
    for i in range(0, len(chosen), batch_size):
        batch = chosen[i : i + batch_size]
        input_ids = torch.zeros(len(batch), block, dtype=torch.long)
        lengths, where = [], []
        for row, (a, b) in enumerate(batch):
            s = min(max(0, (a + b) // 2 - block // 2), max(0, len(ids) - block))
            window = list(ids[s : s + block])
            for p in range(a - s, b - s):
                window[p] = tokenizer.mask_id
            input_ids[row, : len(window)] = torch.tensor(window)
            lengths.append(len(window))
            where.append(range(a - s, b - s))
        mask = torch.zeros(len(batch), block, dtype=torch.long)
        for row, length in enumerate(lengths):
            mask[row, :length] = 1
        logits, _ = model(input_ids, attention_mask=mask)
        best = logits.float().topk(5, dim=-1).indices  # (B, T, 5)
        for row, (a, b) in enumerate(batch):
            cand = best[row, list(where[row])]  # (pieces, 5)
            truth = torch.tensor(ids[a:b]).unsqueeze(-1)
            top1 += bool((cand[:, 0:1] == truth).all())
            top5 += bool((cand == truth).any(-1).all())
            punct += is_punctuation(tokenizer.decode([int(cand[0, 0])], skip_special_tokens=False))
            multi += b - a > 1
    m = len(chosen)
    return {
        "masks": m,
        "top1": round(top1 / m, 4),
        "top5": round(top5 / m, 4),
        "punctuation": round(punct / m, 4),
        "multi_piece_words": round(multi / m, 4),
        "top1_ci95": [round(x, 3) for x in wilson_interval(top1, m)],
    }


def evaluate_text_model(folder: str | Path, data: str | Path, tail: float = DEFAULT_TAIL, n: int = 500,
                        seed: int = 0) -> dict:
    """The report of ``mmgen eval text`` for a GPT or BERT folder."""
    from ..pipelines import load_text_model
    from ..text import TextTokenizer

    model = load_text_model(folder).float()
    tokenizer = TextTokenizer.from_pretrained(folder)
    text = held_out_tail(data, tail)
    kind = type(model).__name__
    report = {"model": str(folder), "kind": kind, "data": str(data), "held_out_chars": len(text), "tail_fraction": tail}
    if kind == "BERT":
        report.update(evaluate_bert(model, tokenizer, text, n=n, seed=seed))
    else:
        report.update(evaluate_gpt(model, tokenizer, text))
    return report


def format_text_report(report: dict) -> str:
    head = f"{report['kind']} {report['model']} on the last {report['held_out_chars']:,} characters of {report['data']}"
    if report["kind"] == "BERT":
        return (f"{head}\n  whole-word masks: {report['masks']}  top-1 {report['top1']:.3f} "
                f"(95 % {report['top1_ci95'][0]:.3f}-{report['top1_ci95'][1]:.3f})  top-5 {report['top5']:.3f}  "
                f"punctuation answers {report['punctuation']:.3f}  (words of several pieces: {report['multi_piece_words']:.3f})")
    return (f"{head}\n  {report['nats_per_char']:.4f} nats/char ({report['bits_per_char']:.3f} bits/char), "
            f"{report['nats_per_token']:.4f} nats/token over {report['tokens']:,} tokens")


