"""Pre-tokenisation: encode a dataset's images into VQ codes once, so text-to-image training
never runs the VQ encoder per step (LlamaGen's habit).

A codes folder holds::

    codes.npy        (N, h*w) uint16 codes in raster order (memory-mapped when read)
    captions.jsonl   one {"text": ...} per image, same order
    meta.json        source, VQ config, grid, count

It is written to a temporary folder and renamed when complete, so a killed run never leaves a
half-written dataset behind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import atomic_write_text


def encode_dataset(
    vq,
    items: Dataset,
    out_dir: str | Path,
    batch_size: int = 256,
    source: Optional[dict] = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Encode every ``{"image": tensor (3,H,W) in [-1,1], "caption": str}`` of ``items`` into a codes folder."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if out_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{out_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = len(items)
    grid = vq.config.grid_size
    codes = np.lib.format.open_memmap(tmp / "codes.npy", mode="w+", dtype=np.uint16, shape=(n, grid * grid))
    if vq.config.codebook_size > np.iinfo(np.uint16).max:
        raise ValueError("codebook too large for uint16 codes")
    loader = DataLoader(items, batch_size=batch_size, shuffle=False, collate_fn=_collate_images)
    captions = []
    vq.eval()
    done = 0
    with torch.inference_mode():
        for images, texts in tqdm(loader, desc="encoding images", unit="batch", disable=not progress):
            batch_codes = vq.encode(images).reshape(len(texts), -1)  # (B, h*w)
            codes[done : done + len(texts)] = batch_codes.cpu().numpy().astype(np.uint16)
            captions.extend(texts)
            done += len(texts)
    codes.flush()
    del codes
    with open(tmp / "captions.jsonl", "w", encoding="utf-8") as f:
        for text in captions:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    meta = {"count": n, "grid": grid, "codebook_size": vq.config.codebook_size, "vq_config": vq.config.to_dict(), "source": source or {}}
    atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def _collate_images(batch: list[dict[str, Any]]):
    return torch.stack([b["image"] for b in batch]), [b["caption"] for b in batch]


def read_captions(folder: str | Path) -> list[str]:
    """The captions of a codes folder (``captions.jsonl``), one per code row."""
    return [json.loads(line)["text"] for line in (Path(folder) / "captions.jsonl").read_text(encoding="utf-8").splitlines()]


class CodesDataset(Dataset):
    """A codes folder as training items ``{"text_ids", "codes"}`` (caption tokenized on the fly).

    ``captions``: the folder's captions as the caller already read them (e.g. rewritten,
    ``data.caption_rewrite``), instead of reading ``captions.jsonl`` again.
    """

    def __init__(self, folder: str | Path, tokenizer, context_len: int, captions: Optional[Sequence[str]] = None):
        folder = Path(folder)
        for name in ("codes.npy", "captions.jsonl", "meta.json"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: missing; build the folder with `mmgen data pretokenize`")
        self.codes = np.load(folder / "codes.npy", mmap_mode="r")
        self.captions = list(captions) if captions is not None else read_captions(folder)
        if len(self.captions) != len(self.codes):
            raise ValueError(f"{folder}: {len(self.codes)} code rows but {len(self.captions)} captions")
        self.meta = json.loads((folder / "meta.json").read_text())
        self.tokenizer = tokenizer
        self.context_len = context_len

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"text_ids": self._encode(self.captions[index]),
                "codes": torch.from_numpy(self.codes[index].astype(np.int64))}

    def _encode(self, text: str) -> torch.Tensor:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a too-long caption is truncated; the trainer has no one to tell per item
            return torch.tensor(self.tokenizer.encode(text, max_length=self.context_len), dtype=torch.long)


def pad_rows(rows: Sequence[Sequence[int] | torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> ids (B, T) padded to the longest with ``pad_id``, mask (B, T)."""
    ids = torch.full((len(rows), max((len(r) for r in rows), default=1)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def collate_codes(batch: list[dict[str, Any]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad captions to the longest in the batch (``text_ids``, ``text_mask`` (B, T)); codes (B, h*w)
    are all the same length."""
    ids, mask = pad_rows([b["text_ids"] for b in batch], pad_id)
    return {"text_ids": ids, "text_mask": mask, "codes": torch.stack([b["codes"] for b in batch])}


class _ShapesImages(Dataset):
    def __init__(self, n: int, split: str, seed: int, image_size: int, **overrides: Any):
        from .folder import image_to_tensor
        from .shapes import ShapesDataset

        self.ds = ShapesDataset(split=split, seed=seed, length=n, image_size=image_size, **overrides)
        self.to_tensor = image_to_tensor
        # what meta.json records as the codes' source: enough to draw the same images again
        self.source = {"kind": "shapes", "split": split, "seed": seed, "n": n, **overrides}

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.ds[i]
        return {"image": self.to_tensor(item["image"]), "caption": item["caption"]}


def main(argv: Optional[Iterable[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="mmgen data pretokenize",
        description="Encode images into VQ codes once (codes.npy + captions.jsonl + meta.json).",
    )
    p.add_argument("--vq", required=True, help="trained VQ model folder")
    p.add_argument("--source", choices=["shapes", "folder"], default="shapes", help="procedural shapes, or an image-caption folder")
    p.add_argument("--path", help="image-caption folder (metadata.jsonl) for --source folder")
    p.add_argument("--split", default="train", help="shapes split: train or heldout")
    p.add_argument("--n", type=int, default=50_000, help="number of shapes images")
    p.add_argument("--seed", type=int, default=0, help="shapes dataset seed")
    p.add_argument("--two-objects", type=float, default=None, metavar="P",
                   help="share of shapes scenes with two objects (default: the shapes world's, 0.5)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(list(argv) if argv is not None else None)
    from ..checkpoint import CheckpointError
    from ..models.vq import VQModel

    try:
        vq = VQModel.from_pretrained(args.vq)
        size = vq.config.image_size
        if args.source == "shapes":
            world = {} if args.two_objects is None else {"p_two_objects": args.two_objects}
            items = _ShapesImages(args.n, args.split, args.seed, size, **world)
            source = items.source
        else:
            if not args.path:
                p.error("--path is required with --source folder")
            from .folder import ImageCaptionFolder

            items = ImageCaptionFolder(args.path, image_size=size)
            source = {"kind": "folder", "path": str(args.path)}
        out = encode_dataset(vq, items, args.out, batch_size=args.batch_size, source=source, overwrite=args.overwrite)
    except (CheckpointError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"mmgen data pretokenize: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
