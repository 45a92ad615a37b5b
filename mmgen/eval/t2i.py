"""Text-to-image evaluation on the shapes world, scored by the shapes reader.

Four prompt groups: single objects of seen compositions, single objects of held-out
compositions, and two-object relation prompts (seen and held-out). Each prompt is the most
specific phrasing of a scene (it names colour, shape, size and position, or the relation), so
"exact" means every attribute the prompt names is right. Beside the model we report:

* the **oracle**: the reader on the ground-truth renders of the same scenes;
* the **VQ ceiling**: the reader on those renders after a VQ encode → decode round trip;
* a **random-caption baseline**: the model's images scored against a shuffled prompt.

And one test that samples nothing, the **direction probe**: on each ground-truth image (its VQ
codes), is the prompt more likely under the model than the same prompt with every direction word
mirrored ("left of" <-> "right of", "above" <-> "below", "top" <-> "bottom")? A model that reads
"a red circle to the left of a blue square" scores its picture above "... to the right of ...";
one that treats the caption as a bag of words cannot tell them apart and sits at 0.5. It needs no
sampling, so it is far less noisy than exact match, and it separates "does not understand the
relation" from "understands it but draws something else".
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from ..data.shapes import ShapesDataset, phrasings, render
from ..images import contact_sheet
from ..text.directions import mirror_prompt
from .shapes_reader import aggregate, read_scene, score

GROUPS = {
    "single_seen": ("train", 1),
    "single_heldout": ("heldout", 1),
    "relation_seen": ("train", 2),
    "relation_heldout": ("heldout", 2),
}


def _named(spec) -> int:
    return sum(v is not None for o in spec.objects for v in (o.size, o.position)) + (spec.relation is not None)


def eval_prompts(n_per_group: int, seed: int = 1234, image_size: int = 64) -> dict[str, list[tuple[str, Any, Any]]]:
    """(prompt, spec, scene) triples per group, deterministic for a seed (disjoint from training seeds)."""
    out = {}
    for group, (split, n_objects) in GROUPS.items():
        ds = ShapesDataset(split=split, seed=seed, image_size=image_size)
        items, i = [], 0
        while len(items) < n_per_group:
            scene, _ = ds.scene(i)
            i += 1
            if len(scene.objects) != n_objects:
                continue
            # relation prompts say the relation; every prompt names as many attributes as it can
            text, spec = max(phrasings(scene), key=lambda ts: (ts[1].relation is not None, _named(ts[1])))
            items.append((text, spec, scene))
        out[group] = items
    return out


def ground_truth(pipe, scenes) -> tuple[list, torch.Tensor]:
    """The renders of ``scenes`` at the pipeline's size and their VQ codes (B, N): what the oracle
    reads, the VQ round trip decodes and the direction probe scores."""
    from ..data.folder import image_to_tensor

    images = [render(scene, pipe.image_size[0]) for scene in scenes]
    with torch.inference_mode():
        codes = pipe.vq.encode(torch.stack([image_to_tensor(im) for im in images]))
    return images, codes.reshape(len(images), -1)


def direction_probe(pipe, prompts: list[str], codes: torch.Tensor, batch_size: int = 32) -> dict[str, Any]:
    """Share of images (``codes`` (B, N), ground truth) whose prompt the model finds more likely than
    the prompt mirrored (:func:`mirror_prompt`), over the prompts mirroring changes. A tie counts half:
    a model blind to direction words scores 0.5."""
    keep = [i for i, p in enumerate(prompts) if mirror_prompt(p) != p]
    if not keep:
        return {"n": 0}
    wins = []
    for start in range(0, len(keep), batch_size):
        rows = keep[start : start + batch_size]
        chunk = codes[rows].to(pipe.device)
        true = pipe.log_likelihood(*pipe.encode_prompts([prompts[i] for i in rows]), chunk)
        mirrored = pipe.log_likelihood(*pipe.encode_prompts([mirror_prompt(prompts[i]) for i in rows]), chunk)
        wins += ((true > mirrored).float() + 0.5 * (true == mirrored).float()).tolist()  # a tie: half a win
    return {"prefers_prompt": float(np.mean(wins)), "n": len(wins)}


def misses(scenes, images, top: int = 5) -> list[list[Any]]:
    """What one-object images drew instead of the colour and shape asked for: the ``top`` most
    frequent ``[asked, drawn, count]`` (``asked`` and ``drawn`` as "green circle"; ``drawn`` is
    "nothing" when the reader finds no object), over the scenes whose single object came out in
    another colour or shape. A held-out pair drawn as a seen one ("green circle" -> "green square")
    is the model's prior winning over the words; scenes with more than one object are skipped."""
    tally: Counter[tuple[str, str]] = Counter()
    for scene, image in zip(scenes, images):
        if len(scene.objects) != 1:
            continue
        asked = f"{scene.objects[0].color} {scene.objects[0].shape}"
        found = read_scene(image)
        drawn = f"{found[0].color} {found[0].shape}" if found else "nothing"
        if drawn != asked:
            tally[asked, drawn] += 1
    ranked = sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [[asked, drawn, count] for (asked, drawn), count in ranked]


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a share ``successes / n`` (95 % for z = 1.96).

    What one evaluation's exact match can tell apart: at n = 50 a measured 0.46 is anywhere in
    0.33-0.60, so two runs 0.28 and 0.46 apart may differ by chance alone. Unlike the normal
    approximation it stays inside [0, 1] and is not zero-width at 0 or n successes."""
    if n <= 0:
        raise ValueError(f"need at least one trial, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate_t2i(
    pipe,
    n_per_group: int = 50,
    seed: int = 1234,
    sample_seed: int = 0,
    batch_size: int = 32,
    contact_sheet: Optional[str] = None,
    progress: bool = True,
    probe: bool = True,
    **sampling: Any,
) -> dict[str, Any]:
    """Generate one image per prompt and score it; returns per-group accuracies and the references,
    and (``probe``) the :func:`direction_probe`, which does not depend on the sampling settings."""
    from tqdm import tqdm

    size = pipe.image_size[0]
    prompts = eval_prompts(n_per_group, seed, size)
    rng = random.Random(seed)
    results: dict[str, Any] = {}
    sheet_rows = []
    for group, items in tqdm(prompts.items(), desc="evaluating", disable=not progress):
        images = []
        for start in range(0, len(items), batch_size):
            chunk = [t for t, _, _ in items[start : start + batch_size]]
            images += pipe(chunk, num_images=1, seed=sample_seed + start, **sampling).images
        truth, codes = ground_truth(pipe, [scene for _, _, scene in items])
        roundtrip = pipe.decode_codes(codes)
        specs = [spec for _, spec, _ in items]
        shuffled = specs[:]
        rng.shuffle(shuffled)
        results[group] = {
            "model": aggregate(score(s, im) for s, im in zip(specs, images)),
            "oracle": aggregate(score(s, im) for s, im in zip(specs, truth)),
            "vq_ceiling": aggregate(score(s, im) for s, im in zip(specs, roundtrip)),
            "random_caption": aggregate(score(s, im) for s, im in zip(shuffled, images)),
        }
        if GROUPS[group][1] == 1:
            results[group]["misses"] = misses([scene for _, _, scene in items], images)
        if probe:
            results[group]["direction_probe"] = direction_probe(pipe, [t for t, _, _ in items], codes)
        model = results[group]["model"]
        if "exact" in model:
            lo, hi = wilson_interval(round(model["exact"] * model["n_exact"]), model["n_exact"])
            model["exact_ci95"] = [round(lo, 3), round(hi, 3)]
        sheet_rows.append(images[:8])
    results["summary"] = {g: round(results[g]["model"]["exact"], 3) for g in GROUPS}
    if contact_sheet:
        _contact_sheet(sheet_rows, contact_sheet)
    return results


def _contact_sheet(rows: list[list[Image.Image]], path: str) -> None:
    from ..pipelines import save_png

    save_png(contact_sheet(rows), path, metadata={})


def format_report(results: dict[str, Any]) -> str:
    """A plain-text table: exact match and per-attribute accuracy for each group and reference,
    and the model's exact match as a 95 % interval (:func:`wilson_interval`).

    ``count`` is the share of images with exactly as many objects as the prompt names: a greedy
    decoder that leaves the second of two objects out shows there, not in the attributes."""
    attrs = ["exact", "count", "color", "shape", "size", "position", "relation"]
    lines = [f"{'group':<18}{'source':<16}" + "".join(f"{a:>10}" for a in attrs) + f"{'exact_95%':>14}"]
    for group in GROUPS:
        for source in ("model", "oracle", "vq_ceiling", "random_caption"):
            r = results[group][source]
            cells = "".join(f"{r[a]:>10.3f}" if a in r else f"{'-':>10}" for a in attrs)
            ci = "{:.2f}-{:.2f}".format(*r["exact_ci95"]) if "exact_ci95" in r else "-"
            lines.append(f"{group:<18}{source:<16}{cells}{ci:>14}")
    for group in GROUPS:
        if results[group].get("misses"):
            lines.append(f"{group} most often drawn instead: "
                         + ", ".join(f"{asked} -> {drawn} {count}" for asked, drawn, count in results[group]["misses"]))
    probes = [(g, results[g].get("direction_probe", {})) for g in GROUPS]
    if any(p.get("n") for _, p in probes):
        lines.append("direction probe (ground truth more likely under the prompt than under it mirrored; chance 0.5): "
                     + ", ".join(f"{g} {p['prefers_prompt']:.3f} (n={p['n']})" for g, p in probes if p.get("n")))
    return "\n".join(lines)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> float:
    """Mean SSIM of two image batches (B, C, H, W) in [-1, 1] (uniform window, per channel)."""
    a, b = (a + 1) / 2, (b + 1) / 2
    c1, c2 = 0.01**2, 0.03**2
    pool = lambda x: torch.nn.functional.avg_pool2d(x, window, 1)  # noqa: E731
    mu_a, mu_b = pool(a), pool(b)
    var_a = pool(a * a) - mu_a**2
    var_b = pool(b * b) - mu_b**2
    cov = pool(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def evaluate_vq(vq, images: torch.Tensor, batch_size: int = 128) -> dict[str, float]:
    """PSNR, SSIM, codebook usage and perplexity of a VQ on images (N, 3, H, W) in [-1, 1]."""
    from ..models.vq import codebook_perplexity, codebook_usage, psnr_from_mse

    recon, codes = [], []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            c = vq.encode(images[i : i + batch_size])
            codes.append(c)
            recon.append(vq.decode(c).clamp(-1, 1))
    recon_t, codes_t = torch.cat(recon), torch.cat(codes)
    mse = ((recon_t - images) ** 2).mean(dim=(1, 2, 3))
    return {
        "psnr": float(psnr_from_mse(mse).mean()),
        "ssim": ssim(recon_t, images),
        "codebook_usage": codebook_usage(codes_t, vq.config.codebook_size),
        "codebook_perplexity": codebook_perplexity(codes_t, vq.config.codebook_size),
        "n_images": len(images),
    }, recon_t


def side_by_side(originals: torch.Tensor, recon: torch.Tensor, path: str, n: int = 16) -> None:
    """A PNG with originals on the top row and reconstructions below."""
    from ..data.folder import tensor_to_images

    _contact_sheet([tensor_to_images(originals[:n]), tensor_to_images(recon[:n])], path)


def shapes_reader_roundtrip(vq, n: int = 200, seed: int = 4321, split: str = "train") -> dict[str, Any]:
    """The shapes reader's exact match on fresh renders after a VQ encode → decode."""
    from ..data.folder import image_to_tensor, tensor_to_images

    ds = ShapesDataset(split=split, seed=seed, image_size=vq.config.image_size)
    items = [ds[i] for i in range(n)]
    images = torch.stack([image_to_tensor(it["image"]) for it in items])
    with torch.inference_mode():
        recon = vq.decode(vq.encode(images)).clamp(-1, 1)
    return aggregate(score(it["scene"].spec(), im) for it, im in zip(items, tensor_to_images(recon)))


__all__ = ["evaluate_t2i", "evaluate_vq", "format_report", "shapes_reader_roundtrip", "side_by_side", "ssim", "eval_prompts", "np"]
