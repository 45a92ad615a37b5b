"""What a shapes VQ's codes mean for text-to-image generalisation: four measurements.

    python scripts/vq_codes.py --vq runs/demo3/vq/model --codes runs/demo3/codes

1. **Unseen codes**: of held-out one-object images (colour–shape pairs the text-to-image model
   never trains on), the share that needs at least one code absent from every training target
   in ``--codes`` (a pretokenized train-split folder).
2. **Twin codes**: codes whose patch, decoded alone (centre of a 3 × 3 grid of the code), lies
   within L2 ``--twin`` of another code's; and the share of code occurrences in ``--codes`` that
   are such codes. A description of codes by their pixels cannot tell twins apart.
3. **Merging twins**: codes within each threshold merged into one class (union-find); the shapes
   reader's exact match after encode → merge → decode, on train and held-out images. It says
   which twins are true duplicates and which differ only in context.
4. **Two-tone factors** (``mmgen.models.code_factors``, ``code_embedding: factors``): codes
   described by the patch they encode most often (``--describe`` images drawn as the VQ's
   training images) as dark colour, light colour and bitmap. Reports the palette, bitmaps and
   distinct descriptions, the share of held-out one-object images needing a factor value absent
   from the training targets (where the unseen-code share of 1. is what a free code table
   faces), and the reader's exact match after encode → canonical code → decode.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def lone_patches(vq) -> torch.Tensor:
    """(K, 3·f·f): each code decoded alone, the centre patch of a 3 × 3 grid of it."""
    K, f = vq.config.codebook_size, vq.config.downsample
    codes = torch.arange(K)[:, None, None].expand(-1, 3, 3)
    with torch.inference_mode():
        pixels = torch.cat([vq.decode(chunk) for chunk in codes.split(256)])
    return pixels[:, :, f : 2 * f, f : 2 * f].reshape(K, -1).float()


def merge_classes(patches: torch.Tensor, threshold: float) -> torch.Tensor:
    """(K,) class id per code: codes whose lone patches are within ``threshold`` share a class."""
    K = patches.shape[0]
    parent = list(range(K))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    close = torch.nonzero(torch.cdist(patches, patches) < threshold)
    for i, j in close.tolist():
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return torch.tensor([find(i) for i in range(K)])


def main(argv: Optional[list[str]] = None) -> dict:
    from mmgen.data.folder import image_to_tensor, tensor_to_images
    from mmgen.data.shapes import ShapesDataset
    from mmgen.eval.shapes_reader import aggregate, score
    from mmgen.models.vq import VQModel

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vq", required=True, help="VQ model folder")
    p.add_argument("--codes", required=True, help="pretokenized train-split codes folder (codes.npy)")
    p.add_argument("--n", type=int, default=150, help="images per split for the merge test")
    p.add_argument("--twin", type=float, default=0.5, help="L2 distance under which two lone patches are twins")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--describe", type=int, default=4000, help="images describing the codes for the factors")
    args = p.parse_args(argv)
    vq = VQModel.from_pretrained(args.vq).eval()
    K, size = vq.config.codebook_size, vq.config.image_size
    train_codes = np.load(Path(args.codes) / "codes.npy")
    seen = np.zeros(K, dtype=bool)
    seen[np.unique(train_codes)] = True
    out: dict = {}

    def encode(images) -> torch.Tensor:
        with torch.inference_mode():
            return vq.encode(torch.stack([image_to_tensor(im) for im in images]))

    heldout = ShapesDataset(split="heldout", seed=777, image_size=size)
    singles = [it["image"] for it in (heldout[i] for i in range(4 * args.n)) if len(it["scene"].objects) == 1]
    codes = encode(singles).reshape(len(singles), -1).numpy()
    needs_unseen = (~seen[codes]).any(axis=1)
    out["heldout_single_needing_unseen_code"] = float(needs_unseen.mean())
    print(f"held-out one-object images needing a code absent from the training targets: "
          f"{needs_unseen.mean():.3f} of {len(singles)}")

    patches = lone_patches(vq)
    d = torch.cdist(patches, patches)
    d.fill_diagonal_(float("inf"))
    twins = (d.min(1).values < args.twin).numpy()
    counts = np.bincount(train_codes.ravel(), minlength=K)
    out["twin_codes"] = int(twins.sum())
    out["twin_occurrence_share"] = float(counts[twins].sum() / counts.sum())
    print(f"codes with a lone-patch twin within {args.twin}: {twins.sum()} of {K}; "
          f"their share of code occurrences in the training targets: {out['twin_occurrence_share']:.3f}")

    splits = {s: ShapesDataset(split=s, seed=4321, image_size=size) for s in ("train", "heldout")}
    items = {s: [ds[i] for i in range(args.n)] for s, ds in splits.items()}

    def exact_after(mapping: torch.Tensor) -> dict[str, float]:
        """The reader's exact match per split after encode -> ``mapping`` (code -> code) -> decode."""
        row = {}
        for s, its in items.items():
            with torch.inference_mode():
                recon = vq.decode(mapping[encode([it["image"] for it in its])]).clamp(-1, 1)
            row[s] = aggregate(score(it["scene"].spec(), im) for it, im in zip(its, tensor_to_images(recon)))["exact"]
        return row

    out["merge"] = {}
    for threshold in args.thresholds:
        classes = merge_classes(patches, threshold)
        row = {"classes": len(set(classes.tolist())), **exact_after(classes)}
        out["merge"][threshold] = row
        print(f"merge within {threshold}: {row['classes']} code classes; reader exact after the round trip "
              f"train {row['train']:.3f}, held-out {row['heldout']:.3f}")

    from mmgen.training.image_kinds import describe_codes

    described = describe_codes(vq, {"kind": "shapes", "seed": 0}, args.describe)
    factors, canonical = described["factors"], described["canonical"]
    seen_values = [set(factors[torch.from_numpy(seen), j].tolist()) for j in range(factors.shape[1])]
    unseen_value = np.array([[any(int(v) not in seen_values[j] for j, v in enumerate(factors[c].tolist())) for c in row]
                             for row in codes.tolist()])
    row = {"palette": len(described["palette"]), "bitmaps": len(described["masks"]),
           "descriptions": len(set(canonical.tolist())), "fidelity": described["fidelity"],
           "heldout_single_needing_unseen_factor": float(unseen_value.any(axis=1).mean()), **exact_after(canonical)}
    out["factors"] = row
    print(f"two-tone factors: {row['palette']} colours, {row['bitmaps']} bitmaps, {row['descriptions']} distinct "
          f"codes; held-out one-object images needing a factor absent from the training targets: "
          f"{row['heldout_single_needing_unseen_factor']:.3f}; reader exact after encode -> canonical -> decode "
          f"train {row['train']:.3f}, held-out {row['heldout']:.3f}; decoded images unchanged by the merge "
          f"(train-demo's check): {row['fidelity']:.3f}")
    return out


if __name__ == "__main__":
    main()
