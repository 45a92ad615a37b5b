"""``mmgen eval vq``, ``mmgen eval t2i`` and ``mmgen eval text``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mmgen eval", description="Evaluate a VQ tokenizer, a text-to-image bundle or a GPT/BERT.")
    sub = p.add_subparsers(dest="what", required=True)
    v = sub.add_parser("vq", help="PSNR, SSIM, codebook usage/perplexity, shapes-reader round trip, side-by-side PNG")
    v.add_argument("--vq", required=True, help="VQ model folder")
    v.add_argument("--data", default="shapes", help="'shapes' or an image-caption folder")
    v.add_argument("--n", type=int, default=500, help="held-out images to evaluate")
    v.add_argument("--out", default="outputs/eval_vq", help="folder for the report and the PNG")
    t = sub.add_parser("t2i", help="shapes fidelity of a bundle on seen and held-out compositions, and a direction "
                                   "probe (is the prompt more likely than its mirror on true pictures)")
    t.add_argument("--bundle", default=None, help="bundle folder (default: the shipped demo bundle)")
    t.add_argument("--n", type=int, default=50, help="prompts per group")
    t.add_argument("--guidance-scale", type=float, default=None)
    t.add_argument("--temperature", type=float, default=None)
    t.add_argument("--top-k", type=int, default=None)
    t.add_argument("--top-p", type=float, default=None)
    t.add_argument("--candidates", type=int, default=None, help="images sampled per prompt, the most likely kept")
    t.add_argument("--prompt-seed", type=int, default=1234,
                   help="which prompts: 1234 is the bundle's reported evaluation, 999 the prompts train-demo's search tunes on")
    t.add_argument("--out", default="outputs/eval_t2i", help="folder for the report and the contact sheet")
    x = sub.add_parser("text", help="a GPT's nats per character / token, or a BERT's top-1 / top-5 on whole-word "
                                    "masks, on the held-out tail of a corpus")
    x.add_argument("--model", required=True, help="GPT or BERT folder (e.g. mmgen/assets/demo/bert)")
    x.add_argument("--data", default="data/shakespeare/input.txt",
                   help="UTF-8 corpus; its tail is held out (get Tiny Shakespeare with `mmgen data text`)")
    x.add_argument("--tail", type=float, default=0.05, help="held-out fraction at the end of the corpus")
    x.add_argument("--n", type=int, default=500, help="BERT: whole words to mask")
    x.add_argument("--out", default="outputs/eval_text", help="folder for report.json")
    args = p.parse_args(argv)
    from ..checkpoint import CheckpointError
    from ..config import atomic_write_text

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if args.what == "vq":
            report = _eval_vq(args, out)
        elif args.what == "text":
            from .text import evaluate_text_model, format_text_report

            if not Path(args.data).is_file():
                raise FileNotFoundError(f"--data {args.data}: no such file (Tiny Shakespeare: `mmgen data text --source shakespeare`)")
            report = evaluate_text_model(args.model, args.data, tail=args.tail, n=args.n)
            print(format_text_report(report))
        else:
            from ..pipelines import TextToImagePipeline, default_bundle
            from .t2i import evaluate_t2i, format_report

            pipe = TextToImagePipeline.from_pretrained(args.bundle or default_bundle())
            report = evaluate_t2i(
                pipe, n_per_group=args.n, seed=args.prompt_seed, contact_sheet=str(out / "contact_sheet.png"),
                guidance_scale=args.guidance_scale, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                candidates=args.candidates,
            )
            print(format_report(report))
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"mmgen eval: error: {e}", file=sys.stderr)
        return 1
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'report.json'}")
    return 0


def _eval_vq(args, out: Path) -> dict:
    import torch

    from ..data.folder import ImageCaptionFolder, image_to_tensor
    from ..data.shapes import ShapesDataset
    from ..models.vq import VQModel
    from .t2i import evaluate_vq, shapes_reader_roundtrip, side_by_side

    vq = VQModel.from_pretrained(args.vq)
    size = vq.config.image_size
    if args.data == "shapes":
        ds = ShapesDataset(split="heldout", seed=999, image_size=size)
        images = torch.stack([image_to_tensor(ds[i]["image"]) for i in range(args.n)])
    else:
        folder = ImageCaptionFolder(args.data, image_size=size)
        images = torch.stack([folder[i]["image"] for i in range(min(args.n, len(folder)))])
    metrics, recon = evaluate_vq(vq, images)
    if args.data == "shapes":
        metrics["shapes_reader"] = shapes_reader_roundtrip(vq, n=min(args.n, 500))
    side_by_side(images, recon, str(out / "reconstructions.png"))
    for k, v in metrics.items():
        print(f"{k}: {v}")
    return metrics
