"""``mmgen generate`` and ``mmgen fill-mask``: the text pipelines from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from .checkpoint import CheckpointError


def generate_main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mmgen generate", description="Generate text with a GPT model folder.")
    p.add_argument("--model", required=True, help="GPT folder (ours or a local Hugging Face GPT-2 folder)")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    args = p.parse_args(argv)
    from .pipelines import TextGenerationPipeline

    try:
        pipe = TextGenerationPipeline.from_pretrained(args.model)
        kwargs = dict(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
            top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
        )
        if args.stream:
            print(args.prompt, end="", flush=True)
            printed = ""
            for text in pipe.stream(args.prompt, **kwargs):
                print(text[len(printed):], end="", flush=True)
                printed = text
            print()
        else:
            print(pipe(args.prompt, **kwargs)[0]["generated_text"])
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"mmgen generate: error: {e}", file=sys.stderr)
        return 1
    return 0


def fill_mask_main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mmgen fill-mask", description="Fill mask tokens with a BERT model folder.")
    p.add_argument("--model", required=True, help="BERT folder (ours or a local Hugging Face BERT folder)")
    p.add_argument("--text", required=True, help="text containing the mask token, e.g. [MASK]")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print the raw result as JSON")
    args = p.parse_args(argv)
    from .pipelines import FillMaskPipeline

    try:
        result = FillMaskPipeline.from_pretrained(args.model)(args.text, top_k=args.top_k)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"mmgen fill-mask: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    for rows in result if isinstance(result[0], list) else [result]:
        for r in rows:
            print(f"{r['score']:.3f}  {r['token_str']!r:>16}  {r['sequence']}")
        print()
    return 0
