"""Images where they live: conversion between files, PIL images and tensors, and contact sheets.

* :func:`load_image` turns any file Pillow can read (every mode: RGBA, LA, P with transparency,
  L, 1-bit, CMYK, 16-bit greyscale, LAB, ...) into an RGB image of a fixed size: EXIF orientation
  applied, transparency composited on a background colour, shorter side resized and
  centre-cropped. Unreadable files raise :class:`ImageLoadError`, naming the file and the reason.
* :func:`image_to_tensor` / :func:`tensor_to_images`: RGB images <-> float pixels in [-1, 1], the
  range the VQ model reads and writes (torchvision's ``pil_to_tensor`` / ``to_pil_image`` do the
  layout; the scaling is ours, in the exact arithmetic the shipped bundle's outputs are pinned with).
* :func:`contact_sheet`: rows of images in one picture (``torchvision.utils.make_grid``).

The pipelines and the data sets both use these; this module knows no model and no data set.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Sequence
from typing import IO, Union

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps
from torchvision.transforms import functional as TF
from torchvision.utils import make_grid

ImageSource = Union[str, os.PathLike, bytes, IO[bytes]]
Size = Union[int, tuple[int, int]]  # an int is a square; a tuple is (width, height), as in PIL
RGB = tuple[int, int, int]


class ImageLoadError(ValueError):
    """An image file cannot be read: missing, not an image, corrupt or truncated."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot load image {path}: {reason}")
        self.path = path
        self.reason = reason


def _source_name(src: ImageSource) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, (bytes, bytearray)):
        return "<bytes>"
    return str(getattr(src, "name", "<file object>"))


def _target_size(size: Size) -> tuple[int, int]:
    width, height = (size, size) if isinstance(size, int) else size
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {size!r}")
    return int(width), int(height)


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit greyscale to 8-bit ``L`` by scaling the range, not by clipping.

    Pillow's own ``convert("L")`` clips ``I;16`` values at 255, which turns almost every
    16-bit photo white. ``I`` images (16-bit PNGs in older Pillow, many TIFFs) are read as
    16-bit data; ``F`` images as [0, 1] when they fit in it, else as [0, 255].
    """
    values = np.asarray(img).astype(np.float64)  # (H, W)
    if img.mode == "F":
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), mode="L")


@functools.cache
def _lab_to_srgb() -> ImageCms.ImageCmsTransform:
    return ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")


def to_rgb(img: Image.Image, background: RGB = (255, 255, 255)) -> Image.Image:
    """Convert an image of any mode to ``RGB``, compositing transparency on ``background``."""
    if img.mode.startswith("I") or img.mode == "F":
        img = _high_bit_depth_to_l(img)
    if img.mode == "LAB":  # convert("RGB") would reinterpret the channels, not convert colours
        return ImageCms.applyTransform(img, _lab_to_srgb())
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    has_alpha = img.mode in ("RGBA", "RGBa", "LA", "PA") or "transparency" in img.info
    try:
        if not has_alpha:
            return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, HSV, ...
        rgba = img.convert("RGBA")
    except ValueError:
        raise ValueError(f"unsupported image mode {img.mode!r}") from None
    canvas = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def resize_center_crop(img: Image.Image, size: Size) -> Image.Image:
    """Scale so the image covers ``size`` (shorter side fits), then crop the centre.

    The crop box is computed in source pixels and handed to ``resize(box=...)``, so there is
    one resampling step and no off-by-one from rounding an intermediate size (torchvision's
    ``resize`` + ``center_crop`` resamples to a rounded intermediate size, so its pixels differ).
    """
    width, height = _target_size(size)
    src_w, src_h = img.size
    scale = max(width / src_w, height / src_h)
    crop_w, crop_h = width / scale, height / scale  # the covered region, in source pixels
    left, top = (src_w - crop_w) / 2, (src_h - crop_h) / 2
    box = (left, top, left + crop_w, top + crop_h)
    if img.size == (width, height):
        return img
    return img.resize((width, height), Image.Resampling.BICUBIC, box=box)


def load_image(
    src: ImageSource,
    size: Size | None,
    background: RGB = (255, 255, 255),
) -> Image.Image:
    """Read an image file into an RGB :class:`PIL.Image.Image` of ``size``.

    Args:
        src: a path, the encoded bytes, or a binary file object.
        size: an int for a square, ``(width, height)``, or ``None`` to keep the size.
        background: RGB colour under transparent pixels (RGBA, LA, PA, P/L/RGB with a
            transparency key).

    EXIF orientation is applied before resizing. Raises :class:`ImageLoadError` when the
    file is missing, not an image, corrupt or truncated.
    """
    name = _source_name(src)
    target = _target_size(size) if size is not None else None
    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(src)
    try:
        with Image.open(src) as opened:
            if target is not None and opened.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the image is far larger
                # than needed; both sides stay >= the largest target side, so any EXIF
                # rotation still leaves enough pixels.
                side = max(target)
                opened.draft(None, (side, side))
            opened.load()
            img = opened
            try:
                ImageOps.exif_transpose(img, in_place=True)
            except Exception:  # a broken EXIF block: the pixels are still good
                pass
            img = to_rgb(img, background)
            if target is not None:
                img = resize_center_crop(img, target)
            if img is opened:
                img = img.copy()  # detach from the (closing) file
    except FileNotFoundError:
        raise ImageLoadError(name, "file not found") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(name, "not a recognised image format") from None
    except Exception as e:  # corrupt data surfaces as OSError, SyntaxError, ValueError, ...
        raise ImageLoadError(name, f"{type(e).__name__}: {e}") from None
    return img


def fit(img: Image.Image, size: Size, background: RGB = (255, 255, 255)) -> Image.Image:
    """An image of any mode as RGB of ``size``, the way :func:`load_image` prepares a file."""
    return resize_center_crop(to_rgb(img, background), size)


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [-1, 1]."""
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {img.mode!r}; use load_image or to_rgb")
    # x / 127.5 - 1, not to_tensor's x / 255 * 2 - 1: the two differ in the last float bit
    return TF.pil_to_tensor(img).float().div_(127.5).sub_(1.0)  # (3, H, W)


def tensor_to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """Float tensor (B, 3, H, W) in [-1, 1] -> RGB PIL images (the inverse of :func:`image_to_tensor`)."""
    # rounded, not truncated as to_pil_image does to floats, so an image survives the round trip
    codes = ((pixels.detach().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()  # (B, 3, H, W)
    return [TF.to_pil_image(c) for c in codes]


def contact_sheet(rows: Sequence[Sequence[Image.Image]], background: RGB = (255, 255, 255)) -> Image.Image:
    """Rows of equally sized RGB images side by side, no gaps; short rows end in ``background``."""
    if not rows or not any(rows):
        raise ValueError("a contact sheet needs at least one image")
    first = next(img for row in rows for img in row)
    width = max(len(row) for row in rows)
    blank = torch.tensor(background, dtype=torch.uint8)[:, None, None].expand(3, first.height, first.width)
    cells = [TF.pil_to_tensor(row[i]) if i < len(row) else blank for row in rows for i in range(width)]
    grid = make_grid(torch.stack(cells), nrow=width, padding=0)  # (3, rows * H, width * W), uint8 kept
    return TF.to_pil_image(grid)
