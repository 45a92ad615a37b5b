"""Record (or check) what the shipped bundle produces, so a refactor can prove it changed nothing.

    python scripts/golden_outputs.py --write   # writes tests/golden/shipped_bundle.json
    python scripts/golden_outputs.py           # recomputes and compares (exit 1 on any difference)

It covers 20 text-to-image calls (prompts x seeds x sampling settings: the bundle's defaults,
sampling at temperature 1, guidance, top-p, candidates), a completion, the GPT (greedy and seeded
sampling) and the BERT (fill-mask top 5). Images are compared by the SHA-256 of their pixels;
tests/test_golden.py runs the same check in the suite.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "shipped_bundle.json"

T2I_CASES = [
    ("a red circle", 0, {}),
    ("a big blue square", 1, {}),
    ("a small green triangle in the top left", 2, {}),
    ("a yellow star at the bottom", 3, {}),
    ("a blue square and a yellow triangle", 4, {}),
    ("a red circle to the left of a blue square", 5, {}),
    ("a green triangle above a purple circle", 6, {}),
    ("a white circle below an orange square", 7, {}),
    ("a purple triangle", 8, {}),
    ("an orange circle in the middle", 9, {}),
    ("a red circle", 10, {"top_k": 0, "temperature": 1.0}),
    ("a blue square to the right of a red triangle", 11, {"top_k": 0, "temperature": 1.0}),
    ("a green circle", 12, {"top_k": 8, "temperature": 0.9}),
    ("a yellow square", 13, {"top_p": 0.9, "top_k": 0}),
    ("a red triangle", 14, {"guidance_scale": 3.0, "top_k": 0}),
    ("a blue circle", 15, {"guidance_scale": 2.0, "top_k": 4, "negative_prompt": "a red circle"}),
    ("a big orange star", 16, {"candidates": 4, "top_k": 0}),
    ("a small white square in the bottom right", 17, {"top_k": 0, "temperature": 1.2}),
    ("a purple circle above a green square", 18, {"num_images": 3, "top_k": 0}),
    ("an unknownword circle", 19, {}),
]
GPT_CASES = [("To be, or not to be", {"max_new_tokens": 40, "top_k": 1}),
             ("ROMEO:", {"max_new_tokens": 40, "top_k": 20, "temperature": 0.8, "seed": 3})]
BERT_CASES = ["to be or not to [MASK]", "the king is [MASK] .", "my lord , i [MASK] you ."]


def pixel_hash(image) -> str:
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def _images(result):
    return result.images if hasattr(result, "images") else result


def compute() -> dict:
    from mmgen.pipelines import DEMO_BUNDLE, FillMaskPipeline, TextGenerationPipeline, TextToImagePipeline

    torch.manual_seed(0)
    pipe = TextToImagePipeline.from_pretrained(DEMO_BUNDLE)
    out = {"t2i": [], "complete": None, "gpt": [], "bert": []}
    for prompt, seed, kwargs in T2I_CASES:
        images = _images(pipe(prompt, seed=seed, **kwargs))
        out["t2i"].append({"prompt": prompt, "seed": seed, "kwargs": kwargs, "pixels": [pixel_hash(i) for i in images]})
    source = _images(pipe("a red circle to the left of a blue square", seed=5))[0]
    done = _images(pipe.complete(source, 4, "a red circle to the left of a yellow star", seed=21, top_k=0))
    out["complete"] = [pixel_hash(i) for i in done]
    gpt = TextGenerationPipeline.from_pretrained(DEMO_BUNDLE / "gpt")
    for prompt, kwargs in GPT_CASES:
        out["gpt"].append({"prompt": prompt, "kwargs": kwargs, "text": gpt(prompt, **kwargs)[0]["generated_text"]})
    bert = FillMaskPipeline.from_pretrained(DEMO_BUNDLE / "bert")
    for text in BERT_CASES:
        rows = bert(text, top_k=5)
        out["bert"].append({"text": text, "tokens": [r["token"] for r in rows],
                            "scores": [round(r["score"], 5) for r in rows]})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"record the outputs into {GOLDEN.name}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    now = compute()
    if args.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(now, indent=1) + "\n")
        print(f"wrote {GOLDEN}")
        return 0
    before = json.loads(GOLDEN.read_text())
    same = before == now
    print("identical" if same else "DIFFERENT")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
