"""Procedural shapes: seeded images of coloured shapes with captions, and a held-out split.

The toy world every text-to-image experiment starts on. A *scene* is one or two flat-coloured
objects (circle, square, triangle) of a named colour and size, each in one cell of a 3×3 grid,
on a plain background. Two-object scenes carry a relation ("to the left of", "above", ...).
Everything is a pure function of a seed, so an index into :class:`ShapesDataset` always gives
the same image and caption.

Design choices that matter downstream:

* **Objects are big and flat.** A VQ tokenizer compresses 64×64 images ×8 or ×4; an earlier try
  with 9–10 px objects came back as blobs. Small is 0.22 and large 0.36 of the image side, colours
  are far apart in RGB, edges are hard (no anti-aliasing), and two objects always keep a gap.
* **The grid cell is unambiguous.** Outer cells are centred at ``edge_anchor`` (not 1/6) so a
  large object fits inside the image; jitter is small enough that the centre never leaves its cell.
* **Held-out compositions are geometric.** Some (colour, shape) pairs and some
  (shape, relation, shape) arrangements never occur in ``train``, whatever the caption says; the
  ``heldout`` split only holds scenes with at least one of them. See :func:`heldout_compositions`.
* **Captions are parseable.** :func:`parse_caption` reads back every phrasing :func:`caption`
  emits into a :class:`SceneSpec` naming exactly the attributes the caption names; the shapes
  reader (``mmgen.eval.shapes_reader``) scores generated images against that spec.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
from PIL import Image

from mmgen.config import Config, ConfigError, atomic_write_bytes
from mmgen.text.rewrite import PROMPT_REWRITES

# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Object colours, chosen far apart in RGB (closest pair, orange–yellow, is ~90 levels apart)
# so that nearest-colour classification survives VQ reconstruction and noise.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 80, 235),
    "yellow": (240, 220, 30),
    "purple": (150, 40, 200),
    "orange": (245, 130, 15),
    "white": (240, 240, 240),
}

# Backgrounds are dark: at least ~140 levels from every object colour, and darker (in luma) than
# all of them, so an object's edge stays visible where colour detail is lost (JPEG's chroma
# subsampling; a mid gray once made blue and purple objects nearly vanish).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "dark gray": (48, 48, 48),
    "navy": (15, 20, 70),
}

SIZES: tuple[str, ...] = ("small", "large")

# POSITIONS[row][col]; row 0 is the top of the image.
POSITIONS: tuple[tuple[str, ...], ...] = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
POSITION_CELLS: dict[str, tuple[int, int]] = {
    name: (row, col) for row, names in enumerate(POSITIONS) for col, name in enumerate(names)
}
POSITION_PHRASES: dict[str, str] = {
    "top left": "in the top left",
    "top": "at the top",
    "top right": "in the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}

# A relation is read "objects[0] <relation> objects[1]".
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
RELATION_PHRASES: dict[str, str] = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}
CONVERSE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

Split = Literal["train", "heldout"]
_SPLIT_STREAM = {"train": 0, "heldout": 1}  # keeps the two splits' random streams apart


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapesConfig(Config):
    """Knobs of the shapes world. Lengths are fractions of ``image_size`` so 32–128 px all work.

    The defaults are chosen for a ×8 VQ tokenizer: 72 px = a 9 × 9 grid of 8-px code patches, each
    3 × 3 grid cell is exactly 3 × 3 patches, large objects fill a cell (24 px) and small ones
    (16 px) sit at its centre, with no jitter. Every object therefore meets the patch grid the
    same way, and the whole world is drawn from about 750 distinct 8 × 8 patches (measured
    over 40 k images of both splits) instead of over 13 000 with free positions — a codebook
    can hold every patch exactly, so shapes survive the VQ round trip.
    """

    image_size: int = 72  # output images are image_size × image_size RGB (9 × 9 codes at ×8)
    p_two_objects: float = 0.5  # probability a scene has two objects (else one)
    small_size: float = 2 / 9  # side of a small object's bounding box, fraction of the image (16 px at 72)
    large_size: float = 1 / 3  # side of a large object's bounding box (24 px at 72: one grid cell)
    edge_anchor: float = 1 / 6  # centre of the outer grid cells (the middle cell is centred at 0.5)
    jitter: float = 0.0  # max uniform offset of an object's centre along each axis
    min_gap: float = 0.04  # least empty space between two objects' bounding boxes
    p_omit_size: float = 0.2  # probability a caption leaves sizes out
    heldout_seed: int = 0  # picks which compositions are held out of the train split
    n_heldout_color_shapes: int = 3  # held-out (colour, shape) pairs, one per shape at most
    n_heldout_relations: int = 2  # held-out (shape, relation, shape) arrangements

    def __post_init__(self) -> None:
        super().__post_init__()  # Config: literal fields hold one of their values
        if self.image_size < 16:
            raise ConfigError(f"image_size must be at least 16, got {self.image_size}")
        for name in ("p_two_objects", "p_omit_size"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.small_size < self.large_size:
            raise ConfigError(f"need 0 < small_size < large_size, got {self.small_size}, {self.large_size}")
        if self.jitter < 0 or self.min_gap < 0:
            raise ConfigError("jitter and min_gap must be non-negative")
        # A large object in an outer cell must fit in the image, and its centre must stay in its cell.
        if self.edge_anchor - self.jitter < self.large_size / 2:
            raise ConfigError(
                f"a large object ({self.large_size}) does not fit at edge_anchor={self.edge_anchor} "
                f"with jitter={self.jitter}: need edge_anchor - jitter >= large_size / 2"
            )
        if self.edge_anchor + self.jitter >= 1 / 3 or self.jitter >= 1 / 6:
            raise ConfigError(f"edge_anchor={self.edge_anchor} with jitter={self.jitter} leaves its grid cell")
        # Two large objects in opposite outer cells must keep min_gap, or some scenes cannot be drawn.
        if 1 - 2 * (self.edge_anchor + self.jitter) - self.large_size < self.min_gap:
            raise ConfigError("two large objects in opposite cells would be closer than min_gap")
        if not 0 <= self.n_heldout_color_shapes <= len(SHAPES):
            raise ConfigError(f"n_heldout_color_shapes must be in [0, {len(SHAPES)}]")
        if not 0 <= self.n_heldout_relations <= len(_RELATION_SLOTS):
            raise ConfigError(f"n_heldout_relations must be in [0, {len(_RELATION_SLOTS)}]")


# --------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeObject:
    """One object. ``center`` is (x, y) as fractions of the image side; ``cell`` is (row, col)."""

    shape: str
    color: str
    size: str
    cell: tuple[int, int]
    center: tuple[float, float]

    @property
    def position(self) -> str:
        return POSITIONS[self.cell[0]][self.cell[1]]

    def extent(self, config: ShapesConfig) -> float:
        """Side of the bounding box, as a fraction of the image."""
        return config.small_size if self.size == "small" else config.large_size

    def bbox(self, image_size: int, config: ShapesConfig) -> tuple[int, int, int, int]:
        """Integer pixel box ``(x0, y0, x1, y1)``, end-exclusive, clipped into the image."""
        side = max(2, round(self.extent(config) * image_size))
        x0 = min(max(round(self.center[0] * image_size - side / 2), 0), image_size - side)
        y0 = min(max(round(self.center[1] * image_size - side / 2), 0), image_size - side)
        return x0, y0, x0 + side, y0 + side


@dataclass(frozen=True)
class Scene:
    """One or two objects on a background; ``relation`` reads ``objects[0] <relation> objects[1]``."""

    objects: tuple[ShapeObject, ...]
    background: str
    relation: Optional[str] = None

    def spec(self) -> "SceneSpec":
        """The spec that names every attribute of this scene."""
        return SceneSpec(
            objects=tuple(ObjectSpec(o.shape, o.color, o.size, o.position) for o in self.objects),
            relation=self.relation,
            background=self.background,
        )


@dataclass(frozen=True)
class ObjectSpec:
    """What a caption says about one object; ``None`` means the caption does not say."""

    shape: str
    color: str
    size: Optional[str] = None
    position: Optional[str] = None


@dataclass(frozen=True)
class SceneSpec:
    """What a caption says about a scene, objects in caption order."""

    objects: tuple[ObjectSpec, ...]
    relation: Optional[str] = None
    background: Optional[str] = None


def relations_between(cell_a: tuple[int, int], cell_b: tuple[int, int]) -> set[str]:
    """Every relation "a <relation> b" that holds between two grid cells."""
    (row_a, col_a), (row_b, col_b) = cell_a, cell_b
    out = set()
    if col_a < col_b:
        out.add("left of")
    if col_a > col_b:
        out.add("right of")
    if row_a < row_b:
        out.add("above")
    if row_a > row_b:
        out.add("below")
    return out


def _dominant_cell_pairs(relation: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Cell pairs (a, b) where ``relation`` holds and is the clearer description.

    "a left of b" needs a's column left of b's, and the rows to differ by less than the columns,
    so nobody would rather call it "above". This is what a caption's relation promises.
    """
    cells = [(r, c) for r in range(3) for c in range(3)]
    pairs = []
    for a in cells:
        for b in cells:
            drow, dcol = b[0] - a[0], b[1] - a[1]
            if relation == "left of" and dcol > 0 and abs(drow) < dcol:
                pairs.append((a, b))
            elif relation == "right of" and dcol < 0 and abs(drow) < -dcol:
                pairs.append((a, b))
            elif relation == "above" and drow > 0 and abs(dcol) < drow:
                pairs.append((a, b))
            elif relation == "below" and drow < 0 and abs(dcol) < -drow:
                pairs.append((a, b))
    return pairs


_CELL_PAIRS = {rel: _dominant_cell_pairs(rel) for rel in RELATIONS}


# --------------------------------------------------------------------------------------
# Held-out compositions
# --------------------------------------------------------------------------------------

# A held-out relation is chosen per (unordered shape pair, axis) slot, with a random orientation,
# and is closed under the converse: holding out "circle left of square" also holds out
# "square right of circle" — it is the same picture.
_SHAPE_PAIRS = [(a, b) for i, a in enumerate(SHAPES) for b in SHAPES[i + 1 :]]
_RELATION_SLOTS = [(pair, axis) for pair in _SHAPE_PAIRS for axis in ("horizontal", "vertical")]


@dataclass(frozen=True)
class HeldOut:
    """Compositions that never occur in the train split."""

    color_shapes: frozenset[tuple[str, str]]  # (colour, shape)
    relations: frozenset[tuple[str, str, str]]  # (shape, relation, shape), closed under converse

    def contains(self, scene: Scene) -> bool:
        """True if any object or any geometric relation in ``scene`` is held out."""
        if any((o.color, o.shape) in self.color_shapes for o in scene.objects):
            return True
        if len(scene.objects) == 2:
            a, b = scene.objects
            return any((a.shape, rel, b.shape) in self.relations for rel in relations_between(a.cell, b.cell))
        return False

    def describe(self) -> list[str]:
        """Human-readable list, e.g. ``["red triangle", "circle left of square", ...]``."""
        pairs = [f"{c} {s}" for c, s in sorted(self.color_shapes)]
        rels = [f"{a} {r} {b}" for a, r, b in sorted(self.relations)]
        return pairs + rels


@lru_cache(maxsize=16)
def heldout_compositions(config: ShapesConfig) -> HeldOut:
    """The held-out compositions of ``config``, a pure function of ``config.heldout_seed``.

    Held-out (colour, shape) pairs use distinct shapes and distinct colours, so every colour and
    every shape is still seen in training — only the combination is new.
    """
    rng = np.random.default_rng([config.heldout_seed, 0xC0FFEE])
    colors = list(COLORS)
    shapes = rng.permutation(len(SHAPES))[: config.n_heldout_color_shapes]
    picked_colors = rng.permutation(len(colors))[: config.n_heldout_color_shapes]
    color_shapes = frozenset((colors[c], SHAPES[s]) for c, s in zip(picked_colors, shapes))

    relations = set()
    for slot in rng.permutation(len(_RELATION_SLOTS))[: config.n_heldout_relations]:
        (a, b), axis = _RELATION_SLOTS[slot]
        if rng.random() < 0.5:
            a, b = b, a
        rel = "left of" if axis == "horizontal" else "above"
        relations.add((a, rel, b))
        relations.add((b, CONVERSE[rel], a))
    return HeldOut(color_shapes, frozenset(relations))


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------


def _cell_center(cell: tuple[int, int], config: ShapesConfig) -> tuple[float, float]:
    anchors = (config.edge_anchor, 0.5, 1.0 - config.edge_anchor)
    return anchors[cell[1]], anchors[cell[0]]  # (x, y)


def _draw_looks(rng: np.random.Generator) -> tuple[str, str, str]:
    """(shape, colour, size), uniformly."""
    return SHAPES[rng.integers(len(SHAPES))], list(COLORS)[rng.integers(len(COLORS))], SIZES[rng.integers(len(SIZES))]


def _place(rng: np.random.Generator, looks: tuple[str, str, str], cell: tuple[int, int], config: ShapesConfig) -> ShapeObject:
    cx, cy = _cell_center(cell, config)
    dx, dy = rng.uniform(-config.jitter, config.jitter, size=2)
    return ShapeObject(*looks, cell=cell, center=(float(cx + dx), float(cy + dy)))


def _separated(a: ShapeObject, b: ShapeObject, config: ShapesConfig) -> bool:
    """True if the boxes keep at least ``min_gap`` of empty space along some axis."""
    half = (a.extent(config) + b.extent(config)) / 2
    gap_x = abs(a.center[0] - b.center[0]) - half
    gap_y = abs(a.center[1] - b.center[1]) - half
    return max(gap_x, gap_y) >= config.min_gap


def _sample_candidate(rng: np.random.Generator, config: ShapesConfig, n_objects: int) -> Scene:
    """One scene with ``n_objects`` objects, before the split's held-out constraint."""
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    if n_objects == 1:
        cell = (int(rng.integers(3)), int(rng.integers(3)))
        return Scene((_place(rng, _draw_looks(rng), cell, config),), background)

    relation = RELATIONS[rng.integers(len(RELATIONS))]
    looks_a, looks_b = _draw_looks(rng), _draw_looks(rng)
    while looks_b[:2] == looks_a[:2]:  # a caption must tell the two apart by colour or shape
        looks_b = _draw_looks(rng)
    # Only the layout is redrawn until the objects keep apart, so sizes stay uniform: two large
    # objects just end up in non-adjacent cells. Opposite outer cells always fit (checked by
    # ShapesConfig), so this ends quickly.
    pairs = _CELL_PAIRS[relation]
    for _ in range(1000):
        cell_a, cell_b = pairs[rng.integers(len(pairs))]
        a, b = _place(rng, looks_a, cell_a, config), _place(rng, looks_b, cell_b, config)
        if _separated(a, b, config):
            return Scene((a, b), background, relation)
    raise RuntimeError("could not place two objects apart; the config constrains the layout too tightly")


def sample_scene(rng: np.random.Generator, config: ShapesConfig, split: Split = "train") -> Scene:
    """Draw a scene of ``split`` by rejection: train scenes avoid every held-out composition,
    held-out scenes contain at least one."""
    if split not in _SPLIT_STREAM:
        raise ValueError(f"unknown split {split!r}; expected one of {list(_SPLIT_STREAM)}")
    heldout = heldout_compositions(config)
    want_heldout = split == "heldout"
    if want_heldout and not (heldout.color_shapes or heldout.relations):
        raise ValueError("the heldout split is empty: config holds out no compositions")
    # Draw the object count first: rejecting whole scenes would favour one-object scenes, which
    # never collide and are held out less often.
    n_objects = 2 if rng.random() < config.p_two_objects else 1
    if want_heldout and not heldout.color_shapes:
        n_objects = 2  # only a relation can make the scene held out
    for _ in range(10_000):
        scene = _sample_candidate(rng, config, n_objects)
        if heldout.contains(scene) == want_heldout:
            return scene
    raise RuntimeError(f"could not sample a {split} scene; the held-out definition leaves too little")


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Which points ``(u, v)`` lie in ``shape`` inscribed in the unit box (v grows downwards).

    The one definition of each shape: the renderer draws it and the reader fits it.
    """
    in_box = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if shape == "square":
        return in_box
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "triangle":  # apex up, base along the bottom edge; centroid at v = 2/3
        return in_box & (np.abs(u - 0.5) <= v / 2)
    raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")


# Fraction of its box a shape fills, and how far below the box centre its centroid lies
# (fraction of the side): what the reader needs to turn a blob's moments into a box.
SHAPE_FILL: dict[str, float] = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
SHAPE_CENTROID_DROP: dict[str, float] = {"circle": 0.0, "square": 0.0, "triangle": 1 / 6}


def shape_mask(shape: str, height: int, width: int) -> np.ndarray:
    """Boolean (height, width) mask of ``shape`` inscribed in a box of that many pixels."""
    v = (np.arange(height, dtype=np.float32) + 0.5)[:, None] / height  # (H, 1) pixel centres in (0, 1)
    u = (np.arange(width, dtype=np.float32) + 0.5)[None, :] / width  # (1, W)
    return np.broadcast_to(shape_inside(shape, u, v), (height, width))


@lru_cache(maxsize=256)
def _cached_mask(shape: str, side: int) -> np.ndarray:
    return shape_mask(shape, side, side)


def render(scene: Scene, image_size: int = 64, config: Optional[ShapesConfig] = None) -> Image.Image:
    """Draw ``scene`` as an ``image_size`` × ``image_size`` RGB image with flat colours."""
    config = config or ShapesConfig()
    canvas = np.empty((image_size, image_size, 3), dtype=np.uint8)  # (H, W, 3)
    canvas[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.bbox(image_size, config)
        canvas[y0:y1, x0:x1][_cached_mask(obj.shape, x1 - x0)] = COLORS[obj.color]
    return Image.fromarray(canvas, mode="RGB")


# --------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------


def _noun_phrase(obj: ObjectSpec) -> str:
    """ "a small red circle", "an orange square in the top left": the attributes ``obj`` names."""
    words = [w for w in (obj.size, obj.color, obj.shape) if w]
    article = "an" if words[0][0] in "aeiou" else "a"
    phrase = " ".join([article, *words])
    return f"{phrase} {POSITION_PHRASES[obj.position]}" if obj.position else phrase


@dataclass(frozen=True)
class _Template:
    """A caption form. Fields: ``{a}``, ``{b}`` (noun phrases), ``{rel}``, ``{bg}``.

    A caption names the relation or background exactly when its text has the field, positions
    when ``positions`` is set; sizes are named or not independently of the template.
    """

    text: str
    positions: bool = False
    told_from_b: bool = False  # "b <converse relation> a": the same picture, from the other object


_ONE_OBJECT_TEMPLATES = (
    _Template("{a}"),
    _Template("{a}", positions=True),
    _Template("{a} on a {bg} background"),
    _Template("{a} on a {bg} background", positions=True),
    _Template("an image of {a}", positions=True),
    _Template("there is {a}", positions=True),
)
_TWO_OBJECT_TEMPLATES = (
    _Template("{a} {rel} {b}"),
    _Template("{a} {rel} {b}", told_from_b=True),
    _Template("{a} {rel} {b} on a {bg} background"),
    _Template("an image of {a} {rel} {b}"),
    _Template("{a} and {b}", positions=True),
    _Template("{a} and {b}"),
)


def _templates(scene: Scene) -> tuple[_Template, ...]:
    return _ONE_OBJECT_TEMPLATES if len(scene.objects) == 1 else _TWO_OBJECT_TEMPLATES


def _phrase(scene: Scene, template: _Template, name_size: bool) -> tuple[str, SceneSpec]:
    """The caption ``template`` writes for ``scene``, and the spec of exactly what it names."""
    objects = [
        ObjectSpec(o.shape, o.color, o.size if name_size else None, o.position if template.positions else None)
        for o in scene.objects
    ]
    relation = scene.relation
    if template.told_from_b:
        objects.reverse()
        relation = CONVERSE[relation]
    phrases = [_noun_phrase(o) for o in objects] + [""]
    text = template.text.format(
        a=phrases[0], b=phrases[1], rel=RELATION_PHRASES.get(relation, ""), bg=scene.background
    )
    spec = SceneSpec(
        tuple(objects),
        relation if "{rel}" in template.text else None,
        scene.background if "{bg}" in template.text else None,
    )
    return text, spec


def phrasings(scene: Scene) -> list[tuple[str, SceneSpec]]:
    """Every caption the generator can write for ``scene``, each with the spec of what it names."""
    return [_phrase(scene, t, name_size) for t in _templates(scene) for name_size in (True, False)]


def caption(scene: Scene, rng: np.random.Generator, p_omit_size: float = 0.2) -> str:
    """A random caption of ``scene``: a random template, sizes left out with ``p_omit_size``."""
    templates = _templates(scene)
    template = templates[rng.integers(len(templates))]
    return _phrase(scene, template, name_size=rng.random() >= p_omit_size)[0]


# --------------------------------------------------------------------------------------
# Parsing captions back
# --------------------------------------------------------------------------------------


def _alternation(words) -> str:
    # Longest first so "top left" wins over "top".
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def _object_pattern(k: int) -> str:
    return (
        rf"an? (?:(?P<size{k}>{_alternation(SIZES)}) )?(?P<color{k}>{_alternation(COLORS)}) "
        rf"(?P<shape{k}>{_alternation(SHAPES)})(?: (?P<pos{k}>{_alternation(POSITION_PHRASES.values())}))?"
    )


_OPENINGS = ("an image of ", "a picture of ", "there is ")
_CAPTION_RE = re.compile(
    rf"^(?:{'|'.join(_OPENINGS)})?{_object_pattern(0)}"
    rf"(?: (?:(?P<rel>{_alternation(RELATION_PHRASES.values())})|and) {_object_pattern(1)})?"
    rf"(?: on an? (?P<bg>{_alternation(BACKGROUNDS)}) background)?$"
)
_POSITION_BY_PHRASE = {phrase: name for name, phrase in POSITION_PHRASES.items()}
_RELATION_BY_PHRASE = {phrase: name for name, phrase in RELATION_PHRASES.items()}


def parse_caption(text: str) -> SceneSpec:
    """Read a shapes caption into the attributes it names.

    Accepts every phrasing :func:`caption` writes, case- and whitespace-insensitive, with an
    optional final full stop. Raises ``ValueError`` on anything else.
    """
    normalized = " ".join(text.lower().strip().rstrip(".").split())
    match = _CAPTION_RE.match(normalized)
    if match is None:
        raise ValueError(
            f"cannot read {text!r} as a shapes caption; expected e.g. "
            "'a small red circle to the left of a large blue square'"
        )
    objects = []
    for k in (0, 1):
        if match[f"shape{k}"] is None:
            continue
        pos = match[f"pos{k}"]
        objects.append(
            ObjectSpec(
                shape=match[f"shape{k}"],
                color=match[f"color{k}"],
                size=match[f"size{k}"],
                position=_POSITION_BY_PHRASE[pos] if pos else None,
            )
        )
    rel = match["rel"]
    return SceneSpec(tuple(objects), _RELATION_BY_PHRASE[rel] if rel else None, match["bg"])


def converse_caption(text: str) -> Optional[str]:
    """The same picture told from the other object: "a red circle to the left of a blue square" ->
    "a blue square to the right of a red circle" (opening words and background kept).

    ``None`` when ``text`` names no relation or is not a shapes caption. The converse and the
    mirror (:func:`mmgen.text.directions.mirror_prompt`: "a red circle to the right of a blue square")
    hold the same words and describe mirror-image pictures, a pair a bag of words cannot tell apart:
    the word-order loss trains on it (``TextToImageConfig.word_order_loss_weight``).
    """
    try:
        spec = parse_caption(text)
    except ValueError:
        return None
    if spec.relation is None:
        return None
    normalized = " ".join(text.lower().split())
    head = next((p for p in _OPENINGS if normalized.startswith(p)), "")
    a, b = (_noun_phrase(o) for o in spec.objects)
    tail = f" on a {spec.background} background" if spec.background else ""
    return f"{head}{b} {RELATION_PHRASES[CONVERSE[spec.relation]]} {a}{tail}"


def canonical_caption(text: str) -> str:
    """The caption told so that its first object is the one drawn first in raster order:
    "right of" and "below" become their converse ("a red circle below a blue square" -> "a blue
    square above a red circle"); every other text is returned unchanged.

    A canonical two-object caption names first the object a decoder drawing row by row meets
    first: always for "above", and for "left of" whenever the two share a row (about three scenes
    in four; in the rest the left object sits a row lower). So the first object's looks can be taken
    from the caption's first noun phrase whichever relation is named, instead of from the first or
    the second depending on the relation word. The two captions describe the same pictures
    (:func:`converse_caption`), so nothing is lost; the pipeline applies the same rewrite to
    prompts (``data.caption_rewrite``).
    """
    try:
        relation = parse_caption(text).relation
    except ValueError:
        return text
    return converse_caption(text) if relation in ("right of", "below") else text


# Rewrites of captions (training) and prompts (sampling) by name, as bundles record them: the one
# registry lives in mmgen.text.rewrite (the pipeline reads it without importing this module).
CAPTION_REWRITES = PROMPT_REWRITES


# --------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------


class ShapesDataset:
    """Endless, seeded map-style dataset of ``{"image", "caption", "scene"}`` items.

    Item ``i`` is a pure function of ``(seed, split, i)`` — it uses its own
    ``np.random.default_rng([seed, split, i])`` — so workers, resumption and shuffling never
    change what an index means. ``len()`` is virtual (``length``), which is all a torch
    ``DataLoader`` needs; the default collate cannot batch :class:`Scene` objects, so pass a
    ``collate_fn`` (or use ``transform`` and drop the scene there).

    Config fields can be given directly as keyword overrides::

        ShapesDataset(split="heldout", seed=0, image_size=48)
    """

    def __init__(
        self,
        split: Split = "train",
        seed: int = 0,
        config: Optional[ShapesConfig] = None,
        length: int = 1_000_000_000,
        transform: Optional[Callable[[Image.Image], Any]] = None,
        **overrides: Any,
    ) -> None:
        if split not in _SPLIT_STREAM:
            raise ValueError(f"unknown split {split!r}; expected one of {list(_SPLIT_STREAM)}")
        if length <= 0:
            raise ValueError(f"length must be positive, got {length}")
        config = config or ShapesConfig()
        if overrides:
            config = ShapesConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        self.split = split
        self.seed = seed
        self.length = length
        self.transform = transform
        self.heldout = heldout_compositions(config)

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> tuple[Scene, np.random.Generator]:
        """The scene at ``index`` and the generator, positioned to draw its caption."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        rng = np.random.default_rng([self.seed, _SPLIT_STREAM[self.split], index])
        return sample_scene(rng, self.config, self.split), rng

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene, rng = self.scene(int(index))
        image = render(scene, self.config.image_size, self.config)
        return {
            "image": self.transform(image) if self.transform else image,
            "caption": caption(scene, rng, self.config.p_omit_size),
            "scene": scene,
        }


# --------------------------------------------------------------------------------------
# Writing a folder: `mmgen data shapes`
# --------------------------------------------------------------------------------------


def write_shapes_folder(
    out_dir: str | os.PathLike,
    n_images: int,
    split: Split = "train",
    seed: int = 0,
    config: Optional[ShapesConfig] = None,
    overwrite: bool = False,
) -> Path:
    """Write items ``0 .. n_images-1`` of a :class:`ShapesDataset` as an image–caption folder.

    The folder holds PNGs, a ``metadata.jsonl`` (``file_name``, ``text`` and the full ``scene``
    per line, the layout ``mmgen.data.folder`` reads) and ``shapes_config.json``. It is built
    under a temporary name and renamed when complete, so ``out_dir`` is never half-written.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    dataset = ShapesDataset(split, seed=seed, config=config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        lines = []
        for i in range(n_images):
            item = dataset[i]
            file_name = f"{i:06d}.png"
            item["image"].save(tmp / file_name, format="PNG")
            record = {"file_name": file_name, "text": item["caption"], "split": split, "seed": seed, "index": i}
            lines.append(json.dumps({**record, "scene": dataclasses.asdict(item["scene"])}))
        atomic_write_bytes(tmp / "metadata.jsonl", ("\n".join(lines) + "\n").encode("utf-8"))
        dataset.config.to_json(tmp / "shapes_config.json")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``mmgen data shapes``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="mmgen data shapes",
        description="Write an image-caption folder (PNG files + metadata.jsonl) of procedural shapes scenes.",
        epilog="example:\n  mmgen data shapes --out data/shapes-heldout --split heldout --n 1000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to create")
    parser.add_argument("--n", type=int, default=5000, metavar="N", help="number of images (default: %(default)s)")
    parser.add_argument("--split", choices=list(_SPLIT_STREAM), default="train", help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same folder (default: %(default)s)")
    parser.add_argument("--size", type=int, default=64, metavar="PX", help="image side in pixels (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    try:
        config = ShapesConfig(image_size=args.size)
        out = write_shapes_folder(args.out, args.n, args.split, args.seed, config, args.overwrite)
    except (ConfigError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.n} {args.split} images and metadata.jsonl to {out}")
    print("held out of train: " + ", ".join(heldout_compositions(config).describe()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
