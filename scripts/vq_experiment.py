"""Train a VQ tokenizer on procedural shapes under a wall-clock budget and report whether shapes survive.

Reports PSNR, codebook usage/perplexity and the fraction of images whose every object is read
back exactly (shape, colour, size, position) after encode → decode.

    python scripts/vq_experiment.py --minutes 12 --out runs/vq_shapes

Data: ``mmgen.data.shapes`` (train split; evaluation on other seeds). "exact" is the shapes
reader's (``mmgen.eval.shapes_reader``) verdict on the reconstruction against the scene's full spec.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from mmgen.data.shapes import SceneSpec, ShapesConfig, ShapesDataset
from mmgen.eval.shapes_reader import evaluate as evaluate_reader
from mmgen.models.vq import VQConfig, VQModel, codebook_perplexity, codebook_usage, psnr_from_mse

# ---- data ----------------------------------------------------------------------------


def make_dataset(n: int, size: int, split: str, seed: int) -> tuple[torch.Tensor, list[SceneSpec], ShapesConfig]:
    """``n`` rendered scenes as a (n, 3, size, size) uint8 tensor, with the specs that name them."""
    ds = ShapesDataset(split=split, seed=seed, image_size=size)
    images, specs = [], []
    for i in range(n):
        item = ds[i]
        images.append(torch.from_numpy(np.asarray(item["image"], dtype=np.uint8).copy()))
        specs.append(item["scene"].spec())
    return torch.stack(images).permute(0, 3, 1, 2).contiguous(), specs, ds.config  # (n, 3, size, size) uint8


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] → (B, H, W, 3) uint8, as a PNG would store them."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


# ---- training -------------------------------------------------------------------------


def evaluate(
    model: VQModel, images: torch.Tensor, specs: list[SceneSpec], shapes_config: ShapesConfig, batch: int, bf16: bool
) -> dict:
    """Round-trip ``images`` through the codes; PSNR, codebook use and what the shapes reader still sees."""
    model.eval()
    recons, codes = [], []
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(images), batch):
            c = model.encode(images[i : i + batch])
            codes.append(c)
            recons.append(model.decode(c).float())
    recon, codes_t = torch.cat(recons), torch.cat(codes)
    read_recon = evaluate_reader(zip(specs, to_uint8(recon)), shapes_config)
    read_orig = evaluate_reader(zip(specs, to_uint8(images)), shapes_config)
    model.train()
    return {
        "psnr": float(psnr_from_mse(((recon - images) ** 2).mean())),
        "usage": codebook_usage(codes_t, model.config.codebook_size),
        "perplexity": codebook_perplexity(codes_t, model.config.codebook_size),
        "exact": read_recon["exact"],
        **{k: round(read_recon[k], 3) for k in ("shape", "color", "size", "position") if k in read_recon},
        "exact_originals": read_orig["exact"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=12.0, help="wall-clock training budget")
    p.add_argument("--steps", type=int, default=0, help="also stop after this many steps (0: time only)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100, help="warmup steps")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on CPU")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-images", type=int, default=20000)
    p.add_argument("--eval-images", type=int, default=500)
    p.add_argument("--eval-every", type=float, default=2.0, help="minutes between evaluations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", type=json.loads, default={}, help='VQConfig overrides as JSON, e.g. \'{"codebook_size": 1024}\'')
    p.add_argument("--out", default=None, help="save the trained tokenizer here")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # tiny optimizer states otherwise slow CPU steps down
    torch.manual_seed(args.seed)
    cfg = VQConfig.from_dict(args.config)
    model = VQModel(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"config {json.dumps(cfg.to_dict())}\nparams {n_params / 1e6:.2f} M, grid {cfg.grid_size}x{cfg.grid_size}")

    t0 = time.time()
    train_x, _, _ = make_dataset(args.train_images, cfg.image_size, "train", seed=args.seed)
    eval_x, eval_specs, shapes_config = make_dataset(args.eval_images, cfg.image_size, "train", seed=10_000 + args.seed)
    eval_x = eval_x.float() / 127.5 - 1
    print(f"data {time.time() - t0:.1f}s")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    budget = args.minutes * 60
    g = torch.Generator().manual_seed(args.seed)
    step, start, next_eval = 0, time.time(), args.eval_every * 60
    while (elapsed := time.time() - start) < budget and not (args.steps and step >= args.steps):
        # cosine over the wall-clock budget (or the step budget, whichever runs out first) after a warmup
        frac = max(elapsed / budget, step / args.steps if args.steps else 0.0)
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * frac))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(train_x), (args.batch,), generator=g)
        x = train_x[idx].float() / 127.5 - 1  # (B, 3, S, S) in [-1, 1]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            _, loss = model(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            m = model.last_metrics
            print(
                f"step {step} {elapsed / 60:.1f}min {step / elapsed:.2f}it/s lr {lr:.2e} loss {m['loss']:.4f} "
                f"psnr {m['psnr']:.1f} usage {m['usage']:.2f} restarted {m.get('restarted', 0):.0f}",
                flush=True,
            )
        if elapsed > next_eval:
            print(f"eval @ {elapsed / 60:.1f}min: {evaluate(model, eval_x, eval_specs, shapes_config, 100, args.bf16)}", flush=True)
            next_eval += args.eval_every * 60
    minutes = (time.time() - start) / 60
    result = evaluate(model, eval_x, eval_specs, shapes_config, 100, args.bf16)
    print(f"final after {minutes:.1f} min, {step} steps: {json.dumps(result)}", flush=True)
    if args.out:
        model.save_pretrained(args.out)
        print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
