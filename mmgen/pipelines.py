"""Pipelines: the user-facing API. Load a folder, call with a prompt, get results.

* :class:`TextGenerationPipeline` (GPT) returns ``[{"generated_text": ...}]`` like transformers'
  ``text-generation`` pipeline.
* :class:`FillMaskPipeline` (BERT) returns ``[{"score", "token", "token_str", "sequence"}]`` like
  transformers' ``fill-mask`` pipeline.

A model folder is ours (``config.json`` with ``_class`` + ``model.safetensors`` +
``tokenizer.json``) or a local Hugging Face GPT-2 / BERT folder.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import torch

from .checkpoint import CheckpointError
from .sampling import SamplingParams, generate
from .sampling.streaming import stream
from .text.tokenizer import TextTokenizer

MAX_PROMPT_CHARS = 20_000  # refuse absurd inputs before tokenizing them


def load_text_model(folder: str | os.PathLike):
    """Our GPT/BERT folder (by the config's ``_class``) or a local HF GPT-2/BERT folder (by ``model_type``)."""
    from .models.bert import BERT
    from .models.gpt import GPT
    from .models.hf import load_hf

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing (is {folder} a model folder?)")
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: not valid JSON ({e})") from None
    if "model_type" in data:
        return load_hf(folder)
    classes = {"GPTConfig": GPT, "BERTConfig": BERT}
    cls = classes.get(data.get("_class"))
    if cls is None:
        raise CheckpointError(f"{config_path}: holds a {data.get('_class')!r}, expected one of {sorted(classes)}")
    return cls.from_pretrained(folder).eval()


def _check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}")
    return prompt


class TextGenerationPipeline:
    """GPT text generation: ``pipe("To be", max_new_tokens=50, seed=0)``."""

    def __init__(self, model, tokenizer: TextTokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "TextGenerationPipeline":
        model = load_text_model(folder)
        if type(model).__name__ != "GPT":
            raise CheckpointError(f"{folder}: holds a {type(model).__name__}, text generation needs a GPT")
        return cls(model, TextTokenizer.from_pretrained(folder))

    def _encode_prompt(self, prompt: str, max_new_tokens: int) -> list[int]:
        ids = self.tokenizer.encode(_check_prompt(prompt), add_special_tokens=False)
        if not ids:
            start = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id
            if start is None:
                raise ValueError("the prompt is empty and this tokenizer has no start token; type some text")
            ids = [start]
        room = self.model.config.max_len - max_new_tokens
        if room < 1:
            raise ValueError(f"max_new_tokens must be below the model's {self.model.config.max_len} positions")
        if len(ids) > room:
            warnings.warn(f"prompt truncated to its last {room} tokens ({len(ids) - room} dropped) to fit the model")
            ids = ids[-room:]
        return ids

    def __call__(
        self,
        prompt: Union[str, list[str]],
        max_new_tokens: int = 50,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        repetition_penalty: float = 1.0,
        seed: Optional[int] = None,
        return_full_text: bool = True,
        callback: Optional[Callable[[int, list[str]], None]] = None,
        cancel: Optional[threading.Event] = None,
    ) -> Union[list[dict], list[list[dict]]]:
        """Generate after each prompt. A list of prompts is batched (left padding); row i uses ``seed + i``.

        ``callback(step, texts_so_far)`` streams the new text of every row after each token.
        """
        SamplingParams(temperature, top_k, top_p, repetition_penalty)  # validate before any work
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("no prompt given")
        encoded = [self._encode_prompt(p, max_new_tokens) for p in prompts]
        T = max(len(e) for e in encoded)
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        ids = torch.full((len(encoded), T), pad, dtype=torch.long)
        mask = torch.zeros(len(encoded), T, dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, T - len(e) :] = torch.tensor(e)
            mask[i, T - len(e) :] = 1
        on_step = None
        if callback is not None:
            on_step = lambda step, toks: callback(step, self.tokenizer.decode_batch(toks.tolist()))  # noqa: E731
        new = generate(
            self.model, ids, max_new_tokens, temperature, top_k, top_p, repetition_penalty,
            eos_token_id=self.tokenizer.eos_id, pad_token_id=pad, attention_mask=mask,
            seed=seed, callback=on_step, cancel=cancel,
        )
        texts = self.tokenizer.decode_batch(new.tolist())
        results = [[{"generated_text": (p + t) if return_full_text else t}] for p, t in zip(prompts, texts)]
        return results[0] if isinstance(prompt, str) else results

    def stream(self, prompt: str, **kwargs) -> Iterator[str]:
        """Yield the generated continuation as it grows (closing the iterator cancels generation)."""

        def run(emit, cancel):
            return self(prompt, callback=lambda step, texts: emit(texts[0]), cancel=cancel, return_full_text=False, **kwargs)

        for kind, value in stream(run):
            if kind == "partial":
                yield value


class FillMaskPipeline:
    """BERT mask filling: ``pipe("the [MASK] sat on the mat", top_k=5)``."""

    def __init__(self, model, tokenizer: TextTokenizer):
        if tokenizer.mask_id is None:
            raise ValueError("this tokenizer has no mask token; fill-mask needs one")
        self.model = model.eval()
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> "FillMaskPipeline":
        model = load_text_model(folder)
        if type(model).__name__ != "BERT":
            raise CheckpointError(f"{folder}: holds a {type(model).__name__}, mask filling needs a BERT")
        return cls(model, TextTokenizer.from_pretrained(folder))

    @property
    def mask_token(self) -> str:
        return self.tokenizer.mask_token

    @torch.inference_mode()
    def __call__(self, text: str, top_k: int = 5, return_attention: bool = False) -> Union[list[dict], list[list[dict]]]:
        """Top-k candidates for each mask token in ``text``.

        One mask: a list of ``{"score", "token", "token_str", "sequence"}``; several masks: one such
        list per mask (as transformers does). With ``return_attention`` the result is a pair
        ``(candidates, attention)`` where attention maps each mask to ``[(token_str, weight), ...]``
        (last layer, averaged over heads).
        """
        _check_prompt(text)
        if not isinstance(top_k, int) or not 1 <= top_k <= 100:
            raise ValueError(f"top_k must be an integer in [1, 100], got {top_k}")
        if self.mask_token not in text:
            raise ValueError(f"the text has no mask token; write {self.mask_token} where a word should be filled in")
        ids = self.tokenizer.encode(text, max_length=self.model.config.max_len)
        positions = [i for i, t in enumerate(ids) if t == self.tokenizer.mask_id]
        if not positions:
            raise ValueError("every mask token was cut off by truncation; shorten the text")
        input_ids = torch.tensor([ids])
        trunk = self.model.trunk
        trunk.set_record_attention(return_attention)
        try:
            logits, _ = self.model(input_ids)
            attention = trunk.blocks[-1].attn.last_weights if return_attention else None
        finally:
            trunk.set_record_attention(False)
        probs = logits[0, positions].float().softmax(-1)  # (M, V)
        scores, tokens = probs.topk(min(top_k, probs.size(-1)), dim=-1)
        results = []
        for m, pos in enumerate(positions):
            rows = []
            for score, token in zip(scores[m].tolist(), tokens[m].tolist()):
                filled = list(ids)
                filled[pos] = token
                rows.append(
                    {
                        "score": score,
                        "token": token,
                        "token_str": self.tokenizer.decode([token], skip_special_tokens=False),
                        # as transformers does: other masks stay visible when there are several
                        "sequence": self.tokenizer.decode(filled, skip_special_tokens=len(positions) == 1),
                    }
                )
            results.append(rows)
        out = results[0] if len(results) == 1 else results
        if not return_attention:
            return out
        token_strs = self.tokenizer.convert_ids_to_tokens(ids)
        weights = attention[0].mean(0)  # (T, T) averaged over heads
        attn = {pos: list(zip(token_strs, weights[pos].tolist())) for pos in positions}
        return out, attn
