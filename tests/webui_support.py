"""Helpers for the web UI tests: a tiny bundle with GPT and BERT folders, and an app on a free port."""

from __future__ import annotations

import contextlib
import shutil
import socket
from pathlib import Path
from typing import Iterator

import torch

WORDS = "the cat dog sat on a mat and ran to park big small red blue house tree sun moon".split()
CORPUS = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 3


def add_text_models(bundle: Path) -> Path:
    """Put tiny random GPT (``gpt/``) and BERT (``bert/``, WordPiece with [MASK]) folders into ``bundle``."""
    from mmgen.config import BERTConfig, GPTConfig
    from mmgen.models.bert import BERT
    from mmgen.models.gpt import GPT
    from mmgen.text.tokenizer import TextTokenizer

    torch.manual_seed(0)
    gpt_tok = TextTokenizer.train(CORPUS, kind="bpe", vocab_size=300)
    GPT(GPTConfig(vocab_size=gpt_tok.vocab_size, max_len=96, dim=32, n_layers=2, n_heads=4)).save_pretrained(bundle / "gpt")
    gpt_tok.save(bundle / "gpt")
    bert_tok = TextTokenizer.train(CORPUS, kind="wordpiece", vocab_size=80)
    BERT(BERTConfig(vocab_size=bert_tok.vocab_size, max_len=32, dim=32, n_layers=2, n_heads=4)).save_pretrained(bundle / "bert")
    bert_tok.save(bundle / "bert")
    return bundle


def full_bundle(tiny_bundle: Path, dest: Path) -> Path:
    """A copy of the tiny text-to-image bundle with GPT and BERT added (the shared fixture stays as it is)."""
    shutil.copytree(tiny_bundle, dest)
    return add_text_models(dest)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(demo, **launch_kwargs) -> Iterator[str]:
    """Launch ``demo`` with webui.app.launch on a free local port; yields its URL; closes it after."""
    from webui.app import launch

    port = free_port()
    launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def client(url: str, **kwargs):
    from gradio_client import Client

    return Client(url, analytics_enabled=False, verbose=False, **kwargs)
