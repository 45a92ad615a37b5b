"""Text model kinds for the trainer: ``gpt`` (next-token prediction) and ``bert`` (masked language
modelling), both on a text corpus (:mod:`mmgen.data.text`) with a trained or loaded tokenizer.

Listed in :data:`mmgen.training.registry.KINDS`.
"""

from __future__ import annotations

import torch
from torch import nn

from mmgen.config import BERTConfig, Config, ConfigError, GPTConfig
from mmgen.data.text import MaskedTextDataConfig, TextDataConfig
from mmgen.training.kind import ModelKind, TrainingData

__all__ = ["BERT_KIND", "GPT_KIND", "sample_bert", "sample_gpt"]


def _text_setup(data_cfg: TextDataConfig, model_cfg: Config):
    from mmgen.data.text import load_text_tokenizer, prepare_corpus

    tokenizer = load_text_tokenizer(data_cfg)
    if tokenizer.pad_id is not None and tokenizer.pad_id != model_cfg.pad_token_id:
        raise ConfigError(f"model.pad_token_id={model_cfg.pad_token_id} but the tokenizer's pad id is {tokenizer.pad_id}")
    block = data_cfg.block_size or model_cfg.max_len
    if block > model_cfg.max_len:
        raise ConfigError(f"data.block_size={block} exceeds model.max_len={model_cfg.max_len}")
    corpus = prepare_corpus(data_cfg, tokenizer)
    info = {"tokens": f"{len(corpus.train):,} train / {len(corpus.val):,} val",
            "vocabulary": f"{tokenizer.vocab_size} ({tokenizer.kind})", "block": block}
    return tokenizer, corpus, block, info


def _build_gpt_data(data_cfg: TextDataConfig, model_cfg: GPTConfig, seed: int) -> TrainingData:
    from mmgen.data.text import TokenWindows, collate_windows

    tokenizer, corpus, block, info = _text_setup(data_cfg, model_cfg)
    return TrainingData(train=TokenWindows(corpus.train, block), val=TokenWindows(corpus.val, block),
                        collate_fn=collate_windows, tokenizer=tokenizer, sample_fn=sample_gpt, info=info,
                        model_fields={"vocab_size": tokenizer.vocab_size})


def _build_bert_data(data_cfg: MaskedTextDataConfig, model_cfg: BERTConfig, seed: int) -> TrainingData:
    from mmgen.data.text import MaskedTokenWindows, collate_windows

    tokenizer, corpus, block, info = _text_setup(data_cfg, model_cfg)
    if tokenizer.mask_id is None:
        raise ConfigError(f"data.tokenizer={data_cfg.tokenizer} has no mask token; BERT needs one (use wordpiece)")
    common = dict(mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
                  special_ids=tokenizer.all_special_ids, probability=data_cfg.mlm_probability)
    if data_cfg.whole_word_mask:
        common["continues"] = tokenizer.continuation_table()
    return TrainingData(train=MaskedTokenWindows(corpus.train, block, seed=seed, **common),
                        val=MaskedTokenWindows(corpus.val, block, seed=seed + 1, **common),
                        collate_fn=collate_windows, tokenizer=tokenizer, sample_fn=sample_bert, info=info,
                        model_fields={"vocab_size": tokenizer.vocab_size})


def _build_gpt(cfg: GPTConfig) -> nn.Module:
    from mmgen.models.gpt import GPT

    return GPT(cfg)


def _build_bert(cfg: BERTConfig) -> nn.Module:
    from mmgen.models.bert import BERT

    return BERT(cfg)


def sample_gpt(model: nn.Module, data: TrainingData, train_cfg, generator: torch.Generator) -> str:
    """Continue ``train.sample_prompt`` (default: a newline) for ``train.sample_length`` tokens."""
    from mmgen.sampling import generate

    tokenizer = data.tokenizer
    ids = tokenizer.encode(train_cfg.sample_prompt or "\n", add_special_tokens=False) or [tokenizer.eos_id or 0]
    ids = ids[-(model.config.max_len - 1):]
    n_new = min(train_cfg.sample_length, model.config.max_len - len(ids))
    device = next(model.parameters()).device
    new = generate(model, torch.tensor([ids], device=device), max_new_tokens=n_new, temperature=1.0,
                   generators=[generator])
    # a model.vocab_size above the tokenizer's leaves rows no text maps to; skip them if drawn
    return tokenizer.decode([i for i in ids + new[0].tolist() if i < tokenizer.vocab_size])


def sample_bert(model: nn.Module, data: TrainingData, train_cfg, generator: torch.Generator) -> str:
    """Fill the masks of ``train.sample_prompt`` (or of the first validation window) with the top guesses."""
    tokenizer = data.tokenizer
    if train_cfg.sample_prompt:
        ids = torch.tensor([tokenizer.encode(train_cfg.sample_prompt)])
        truth = None
    else:
        item = data.val[0]
        ids, truth = torch.from_numpy(item["input_ids"][None]), item["labels"]
    device = next(model.parameters()).device
    logits, _ = model(ids.to(device))  # (1, T, V)
    masked = (ids[0] == tokenizer.mask_id).nonzero().flatten().tolist()
    filled = ids[0].clone()
    lines = []
    for pos in masked:
        top = logits[0, pos].float().softmax(-1).topk(3)
        filled[pos] = top.indices[0]
        guesses = ", ".join(f"{tokenizer.decode([int(i)])!r} {float(p):.2f}" for p, i in zip(top.values, top.indices))
        want = f" (truth {tokenizer.decode([int(truth[pos])])!r})" if truth is not None else ""
        lines.append(f"  position {pos}: {guesses}{want}")
    masked_text = tokenizer.decode(ids[0].tolist(), skip_special_tokens=False)
    return f"input:  {masked_text}\nfilled: {tokenizer.decode(filled.tolist())}\n" + "\n".join(lines)


GPT_KIND = ModelKind("gpt", GPTConfig, TextDataConfig, _build_gpt, _build_gpt_data, data_fields=("vocab_size",))
BERT_KIND = ModelKind("bert", BERTConfig, MaskedTextDataConfig, _build_bert, _build_bert_data, data_fields=("vocab_size",))
