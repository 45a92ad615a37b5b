"""Shapes reader: read a shapes image back into objects, and score it against its caption.

No learned model: plain image analysis that knows the shapes world's palette and geometry
(``mmgen.data.shapes``), so a score means the same thing for every checkpoint.

1. **Background** — the per-channel median of the border pixels (objects never cover much of it),
   named by the nearest background colour.
2. **Foreground** — a pixel is foreground when it is nearer to some object colour than to that
   background. Segmenting against the background rather than per colour keeps the blurred rim
   of an object (red on black fades through dark red) inside the object instead of making a
   ring-shaped component of some other colour.
3. **Objects** — 4-connected components of the foreground; components smaller than a fraction
   of a small object are noise and dropped.
4. **Attributes** — colour: nearest object colour to the median of the component's interior.
   Shape: each candidate shape is placed by the component's moments (its area sets the side,
   its centroid the position) and the one with the best IoU wins. Moments, unlike the bounding
   box, barely move when JPEG or blur adds a stray pixel or eats a triangle's apex.
   Size: the fitted side against the geometric mean of the small and large sides.
   Position: the 3×3 cell of the fitted box's centre.

Everything here is a pure function of its inputs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Union

import numpy as np
from PIL import Image

from mmgen.data.shapes import (
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SHAPE_CENTROID_DROP,
    SHAPE_FILL,
    SHAPES,
    SceneSpec,
    ShapesConfig,
    parse_caption,
    relations_between,
    shape_inside,
)

_OBJECT_NAMES = list(COLORS)
_OBJECT_RGB = np.array([COLORS[c] for c in _OBJECT_NAMES], dtype=np.float32)  # (K, 3)
_BACKGROUND_NAMES = list(BACKGROUNDS)
_BACKGROUND_RGB = np.array([BACKGROUNDS[c] for c in _BACKGROUND_NAMES], dtype=np.float32)  # (B, 3)

# Scores are keyed by these; each is True/False, or None when the prompt does not name it.
ATTRIBUTES: tuple[str, ...] = ("count", "color", "shape", "size", "position", "relation", "background", "exact")


@dataclass(frozen=True)
class ReadObject:
    """One object found in an image. ``bbox`` is ``(x0, y0, x1, y1)`` in pixels, end-exclusive."""

    shape: str
    color: str
    size: str
    cell: tuple[int, int]  # (row, col) of the 3×3 grid
    bbox: tuple[int, int, int, int]
    area: int  # pixels

    @property
    def position(self) -> str:
        return POSITIONS[self.cell[0]][self.cell[1]]


# --------------------------------------------------------------------------------------
# Image analysis
# --------------------------------------------------------------------------------------


def _to_pixels(image: Union[Image.Image, np.ndarray]) -> np.ndarray:
    """(H, W, 3) float32 RGB from a PIL image or a uint8 array."""
    if isinstance(image, Image.Image):
        if image.mode not in ("RGB", "RGBA", "L"):
            raise ValueError(f"expected an RGB image, got mode {image.mode!r}")
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image or an (H, W, 3) array, got {getattr(image, 'shape', type(image))}")
    if min(image.shape[:2]) < 8:
        raise ValueError(f"image of {image.shape[1]}×{image.shape[0]} px is too small to read")
    return image.astype(np.float32)


def _border(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])  # (N, 3)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean (H, W) mask.

    Returns ``(labels, n)``: labels in ``[0, n)`` on the mask and -1 elsewhere. Vectorised label
    propagation: every pixel takes the smallest pixel index among itself and its neighbours, then
    pointer-jumps to its label's label, which needs O(log diameter) rounds for convex blobs.
    """
    h, w = mask.shape
    none = h * w  # larger than every pixel index: neutral for min()
    labels = np.where(mask, np.arange(h * w).reshape(h, w), none)
    while True:
        spread = labels.copy()
        np.minimum(spread[1:], labels[:-1], out=spread[1:])
        np.minimum(spread[:-1], labels[1:], out=spread[:-1])
        np.minimum(spread[:, 1:], labels[:, :-1], out=spread[:, 1:])
        np.minimum(spread[:, :-1], labels[:, 1:], out=spread[:, :-1])
        spread = np.where(mask, spread, none)
        # A label is the index of a foreground pixel whose own label is no larger: follow it.
        flat = np.append(spread.ravel(), none)
        spread = flat[spread]
        if np.array_equal(spread, labels):
            break
        labels = spread
    roots, dense = np.unique(labels, return_inverse=True)
    dense = dense.reshape(h, w)
    n = len(roots) - int(roots[-1] == none)
    return np.where(mask, dense, -1), n


def _erode(mask: np.ndarray) -> np.ndarray:
    """Pixels whose four neighbours are all in the mask (the image edge counts as outside)."""
    padded = np.pad(mask, 1)
    return mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


@dataclass(frozen=True)
class _Fit:
    shape: str
    iou: float
    side: float  # pixels
    center: tuple[float, float]  # (x, y) of the fitted box, pixels


def _fit_shape(component: np.ndarray) -> _Fit:
    """The shape whose renderer outline, placed by the blob's area and centroid, overlaps it best."""
    ys, xs = np.nonzero(component)
    area = len(xs)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5  # centroid, pixel-centre coordinates
    best: Optional[_Fit] = None
    for shape in SHAPES:
        side = float(np.sqrt(area / SHAPE_FILL[shape]))
        box_x, box_y = cx - side / 2, cy - side / 2 - SHAPE_CENTROID_DROP[shape] * side  # top-left
        # Evaluate on a window around both the blob and the template, at pixel centres.
        y0, y1 = max(0, min(ys.min(), int(box_y) - 1)), min(component.shape[0], max(ys.max() + 1, int(box_y + side) + 2))
        x0, x1 = max(0, min(xs.min(), int(box_x) - 1)), min(component.shape[1], max(xs.max() + 1, int(box_x + side) + 2))
        v = (np.arange(y0, y1)[:, None] + 0.5 - box_y) / side  # (h, 1)
        u = (np.arange(x0, x1)[None, :] + 0.5 - box_x) / side  # (1, w)
        template = shape_inside(shape, u, v)
        crop = component[y0:y1, x0:x1]
        iou = float(np.logical_and(crop, template).sum() / np.logical_or(crop, template).sum())
        if best is None or iou > best.iou:
            best = _Fit(shape, iou, side, (box_x + side / 2, box_y + side / 2))
    assert best is not None
    return best


def read_background(image: Union[Image.Image, np.ndarray]) -> str:
    """Name of the background colour nearest to the median border colour."""
    median = np.median(_border(_to_pixels(image)), axis=0)
    return _BACKGROUND_NAMES[int(np.argmin(((_BACKGROUND_RGB - median) ** 2).sum(-1)))]


def read_scene(
    image: Union[Image.Image, np.ndarray],
    config: Optional[ShapesConfig] = None,
    min_area: float = 0.3,
) -> list[ReadObject]:
    """Find the objects in a shapes image, largest first.

    ``config`` gives the object sizes to compare against (default :class:`ShapesConfig`);
    components smaller than ``min_area`` × the area of a small triangle are ignored as noise.
    """
    config = config or ShapesConfig()
    pixels = _to_pixels(image)  # (H, W, 3)
    h, w, _ = pixels.shape
    side = min(h, w)

    background = np.median(_border(pixels), axis=0)  # (3,)
    dist_bg = ((pixels - background) ** 2).sum(-1)  # (H, W)
    dist_obj = ((pixels[:, :, None, :] - _OBJECT_RGB) ** 2).sum(-1).min(-1)  # (H, W)
    labels, n = connected_components(dist_obj < dist_bg)

    areas = np.bincount(labels.ravel() + 1, minlength=n + 1)[1:]  # (n,)
    smallest_object = 0.5 * (config.small_size * side) ** 2  # a small triangle
    size_threshold = np.sqrt(config.small_size * config.large_size) * side

    objects = []
    for k in np.flatnonzero(areas >= min_area * smallest_object):
        component = labels == k
        ys, xs = np.nonzero(component)
        fit = _fit_shape(component)
        # The rim may blend into the background; the interior holds the object's own colour.
        interior = _erode(component)
        colour = np.median(pixels[interior if interior.sum() >= 4 else component], axis=0)
        cx, cy = fit.center[0] / w, fit.center[1] / h
        objects.append(
            ReadObject(
                shape=fit.shape,
                color=_OBJECT_NAMES[int(np.argmin(((_OBJECT_RGB - colour) ** 2).sum(-1)))],
                size="large" if fit.side >= size_threshold else "small",
                cell=(min(max(int(3 * cy), 0), 2), min(max(int(3 * cx), 0), 2)),
                bbox=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                area=int(areas[k]),
            )
        )
    return sorted(objects, key=lambda o: -o.area)


# --------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------


def _checks(spec: SceneSpec, matched: tuple[Optional[ReadObject], ...]) -> dict[str, Optional[bool]]:
    """Per-attribute correctness of one assignment of read objects to the spec's objects."""
    out: dict[str, Optional[bool]] = {}
    for attr in ("color", "shape", "size", "position"):
        named = [(want, got) for want, got in zip(spec.objects, matched) if getattr(want, attr) is not None]
        out[attr] = None if not named else all(
            got is not None and getattr(got, attr) == getattr(want, attr) for want, got in named
        )
    if spec.relation is None:
        out["relation"] = None
    else:
        a, b = matched[0], matched[1]
        out["relation"] = a is not None and b is not None and spec.relation in relations_between(a.cell, b.cell)
    return out


def score(
    spec: Union[SceneSpec, str],
    image: Union[Image.Image, np.ndarray],
    config: Optional[ShapesConfig] = None,
) -> dict[str, Optional[bool]]:
    """Check an image against a prompt (a :class:`SceneSpec` or a caption to parse).

    Returns one entry per name in :data:`ATTRIBUTES`: True/False, or None for attributes the
    prompt does not name. Spec objects are matched to read objects by the assignment that gets
    the most attributes right. ``relation`` holds when the matched objects' cells satisfy it;
    ``count`` asks for exactly as many objects as the prompt names; ``exact`` is count and every
    named attribute right.
    """
    if isinstance(spec, str):
        spec = parse_caption(spec)
    read = read_scene(image, config)
    k = len(spec.objects)
    candidates = read[: max(k, 6)]  # the largest blobs; bounds the permutations on noisy images
    padded = candidates + [None] * max(0, k - len(candidates))

    best: Optional[dict[str, Optional[bool]]] = None
    for matched in itertools.permutations(padded, k):
        checks = _checks(spec, matched)
        if best is None or sum(v is True for v in checks.values()) > sum(v is True for v in best.values()):
            best = checks
    assert best is not None

    result: dict[str, Optional[bool]] = {"count": len(read) == k, **best}
    result["background"] = None if spec.background is None else read_background(image) == spec.background
    result["exact"] = all(v is not False for v in result.values())
    return {name: result[name] for name in ATTRIBUTES}


def aggregate(scores: Iterable[dict[str, Optional[bool]]]) -> dict[str, Any]:
    """Mean of each attribute over the scores that name it (``n`` counts the scores;
    ``n_<attribute>`` how many named it). Attributes nobody named are left out."""
    scores = list(scores)
    out: dict[str, Any] = {"n": len(scores)}
    for name in ATTRIBUTES:
        named = [s[name] for s in scores if s.get(name) is not None]
        if named:
            out[name] = float(np.mean(named))
            out[f"n_{name}"] = len(named)
    return out


def evaluate(
    pairs: Iterable[tuple[Union[SceneSpec, str], Union[Image.Image, np.ndarray]]],
    config: Optional[ShapesConfig] = None,
) -> dict[str, Any]:
    """Score many (prompt, image) pairs and aggregate; see :func:`score` and :func:`aggregate`."""
    return aggregate(score(spec, image, config) for spec, image in pairs)
