"""Emoji scenes: a small, real-looking image–caption data set from the Noto Color Emoji font.

Each image is one emoji on a plain background ("a cat face on a light blue background"), or
one or two smaller emoji at named places ("a cat face in the top right and a rocket at the
bottom on a light blue background"). The result is an :class:`~mmgen.data.folder.ImageCaptionFolder`:
PNG files plus ``metadata.jsonl``, with extra columns (the emoji, their names and positions,
the background) for evaluation.

Needs two Debian packages (or the same files elsewhere, passed by path):

* ``fonts-noto-color-emoji``: ``NotoColorEmoji.ttf``, a CBDT bitmap font. Its bitmaps exist
  at one size only, so glyphs are drawn at pixel size 109 with ``embedded_color=True`` and
  scaled down.
* ``unicode-data``: ``emoji/emoji-test.txt``, for CLDR names and groups ("Animals &
  Nature"). Without it, names come from Python's ``unicodedata`` and groups are unknown.

Only fully-qualified emoji of one code point (optionally followed by the emoji variation
selector U+FE0F) are used, and only those the font actually draws (blank renders are
skipped). The build is deterministic for a seed, font file and emoji list.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_PACKAGE = "fonts-noto-color-emoji"
EMOJI_TEST_PACKAGE = "unicode-data"
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto-emoji/NotoColorEmoji.ttf",
    "/usr/local/share/fonts/NotoColorEmoji.ttf",
    "/Library/Fonts/NotoColorEmoji.ttf",
)
EMOJI_TEST_CANDIDATES = (
    "/usr/share/unicode/emoji/emoji-test.txt",
    "/usr/share/unicode-data/emoji/emoji-test.txt",
    "/usr/share/unicode/emoji-test.txt",
)
FONT_PIXEL_SIZE = 109  # the only size at which the CBDT bitmaps of Noto Color Emoji exist
VARIATION_SELECTOR_16 = "\ufe0f"
SKIPPED_GROUPS = ("Component", "Flags")  # skin-tone swatches; flags are two code points anyway

# Fallback candidates when emoji-test.txt is missing: the main emoji blocks.
_FALLBACK_RANGES = ((0x1F300, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F900, 0x1F9FF), (0x1FA70, 0x1FAFF), (0x2600, 0x27BF))

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "light gray": (211, 211, 211),
    "light blue": (173, 216, 230),
    "light green": (170, 230, 170),
    "light yellow": (255, 250, 180),
    "pink": (255, 192, 203),
    "lavender": (215, 200, 245),
    "orange": (255, 170, 80),
    "dark blue": (25, 35, 110),
    "black": (0, 0, 0),
}

# Name -> (caption phrase, centre as a fraction of the side): a 3 x 3 grid.
POSITIONS: dict[str, tuple[str, tuple[float, float]]] = {
    "top left": ("in the top left", (1 / 6, 1 / 6)),
    "top": ("at the top", (1 / 2, 1 / 6)),
    "top right": ("in the top right", (5 / 6, 1 / 6)),
    "left": ("on the left", (1 / 6, 1 / 2)),
    "center": ("in the center", (1 / 2, 1 / 2)),
    "right": ("on the right", (5 / 6, 1 / 2)),
    "bottom left": ("in the bottom left", (1 / 6, 5 / 6)),
    "bottom": ("at the bottom", (1 / 2, 5 / 6)),
    "bottom right": ("in the bottom right", (5 / 6, 5 / 6)),
}


class EmojiResourceError(FileNotFoundError):
    """The emoji font (or another required file) is not installed."""


@dataclass(frozen=True)
class Emoji:
    char: str  # one code point, or one code point + U+FE0F
    name: str  # CLDR short name, e.g. "cat face"
    group: str  # e.g. "Animals & Nature"; "" when unknown
    subgroup: str = ""


# --------------------------------------------------------------------------------------
# Finding the files
# --------------------------------------------------------------------------------------


def find_emoji_font(path: str | os.PathLike | None = None) -> Path:
    """The Noto Color Emoji font file: ``path`` if given, else the usual places, else fontconfig."""
    if path is not None:
        if not Path(path).is_file():
            raise EmojiResourceError(f"emoji font not found: {path}")
        return Path(path)
    for candidate in FONT_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    try:
        found = subprocess.run(
            ["fc-match", "-f", "%{file}", "Noto Color Emoji"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found = ""
    if "emoji" in Path(found).name.lower() and Path(found).is_file():  # fc-match always answers something
        return Path(found)
    raise EmojiResourceError(
        f"the Noto Color Emoji font is not installed; install the Debian package {FONT_PACKAGE} "
        f"(apt-get install {FONT_PACKAGE}) or pass the path of NotoColorEmoji.ttf"
    )


def find_emoji_test(path: str | os.PathLike | None = None) -> Path | None:
    """``emoji-test.txt`` (Debian package ``unicode-data``), or ``None`` when not installed."""
    if path is not None:
        if not Path(path).is_file():
            raise EmojiResourceError(f"emoji-test.txt not found: {path}")
        return Path(path)
    return next((Path(c) for c in EMOJI_TEST_CANDIDATES if Path(c).is_file()), None)


# --------------------------------------------------------------------------------------
# The emoji list
# --------------------------------------------------------------------------------------


def _clean_name(name: str) -> str:
    return name.replace("\u201c", "").replace("\u201d", "").replace("\u2019", "'").strip()


def parse_emoji_test(text: str) -> list[Emoji]:
    """Fully-qualified single-code-point emoji from the text of ``emoji-test.txt``, in file order.

    A data line reads ``1F431 ; fully-qualified # 🐱 E0.6 cat face``; ``# group:`` and
    ``# subgroup:`` comment lines set the group of the lines below them.
    """
    out, group, subgroup = [], "", ""
    for line in text.splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#") and ";" in line and "#" in line:
            codes, rest = line.split(";", 1)
            status, comment = rest.split("#", 1)
            if status.strip() != "fully-qualified":
                continue
            points = [int(c, 16) for c in codes.split()]
            if len(points) == 2 and points[1] == ord(VARIATION_SELECTOR_16):
                points = points[:1]
            if len(points) != 1:
                continue
            # comment: " 🐱 E0.6 cat face"
            parts = comment.strip().split(" ", 2)
            if len(parts) < 3:
                continue
            char = chr(points[0]) + (VARIATION_SELECTOR_16 if codes.split()[-1].upper() == "FE0F" else "")
            out.append(Emoji(char, _clean_name(parts[2]), group, subgroup))
    return out


def _fallback_emoji() -> list[Emoji]:
    out = []
    for lo, hi in _FALLBACK_RANGES:
        for cp in range(lo, hi + 1):
            name = unicodedata.name(chr(cp), "")
            if name and not name.startswith("EMOJI MODIFIER"):
                out.append(Emoji(chr(cp), name.lower(), ""))
    return out


def _group_key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def load_emoji_list(
    groups: Sequence[str] | None = None,
    emoji_test: str | os.PathLike | None = None,
) -> list[Emoji]:
    """Candidate emoji (not yet checked against the font), optionally limited to ``groups``.

    Groups match case- and punctuation-insensitively ("animals & nature", "Animals-Nature").
    """
    path = find_emoji_test(emoji_test)
    if path is None:
        if groups:
            raise EmojiResourceError(
                f"emoji groups need emoji-test.txt; install the Debian package {EMOJI_TEST_PACKAGE} "
                f"(apt-get install {EMOJI_TEST_PACKAGE}) or pass its path"
            )
        return _fallback_emoji()
    emoji = [e for e in parse_emoji_test(path.read_text(encoding="utf-8")) if e.group not in SKIPPED_GROUPS]
    if groups:
        known = {_group_key(e.group): e.group for e in emoji}
        unknown = [g for g in groups if _group_key(g) not in known]
        if unknown:
            raise ValueError(f"unknown emoji group(s) {unknown}; known groups: {sorted(set(known.values()))}")
        wanted = {_group_key(g) for g in groups}
        emoji = [e for e in emoji if _group_key(e.group) in wanted]
    return emoji


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


class EmojiRenderer:
    """Draws emoji from a CBDT colour font at its native size, cropped to a square RGBA glyph."""

    def __init__(self, font_path: str | os.PathLike | None = None) -> None:
        self.font_path = find_emoji_font(font_path)
        try:
            self.font = ImageFont.truetype(str(self.font_path), FONT_PIXEL_SIZE)
        except OSError as e:
            raise EmojiResourceError(f"{self.font_path}: cannot open as a colour emoji font at size {FONT_PIXEL_SIZE} ({e})") from None
        self._cache: dict[str, Image.Image | None] = {}

    def glyph(self, char: str) -> Image.Image | None:
        """A square RGBA image of the emoji, or ``None`` when the font draws nothing for it."""
        if char not in self._cache:
            self._cache[char] = self._render(char)
        return self._cache[char]

    def _render(self, char: str) -> Image.Image | None:
        side = 2 * FONT_PIXEL_SIZE  # the bitmaps are 136 x 128; leave room
        canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((side // 8, side // 8), char, font=self.font, embedded_color=True)
        alpha = canvas.getchannel("A")
        box = alpha.point(lambda a: 255 if a >= 32 else 0).getbbox()  # ignore faint fringes
        if box is None:
            return None
        glyph = canvas.crop(box)
        w, h = glyph.size
        square = Image.new("RGBA", (max(w, h), max(w, h)), (0, 0, 0, 0))
        square.paste(glyph, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
        return square


# --------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------

_SPELLED_AN = set("AEFHILMNORSX")  # letters whose spoken name starts with a vowel sound
_SPOKEN_CAPS = {"TOP", "END", "NEW", "ON", "UP", "FREE", "COOL", "SOON", "BACK"}  # read as words
_A_BEFORE_VOWEL = ("uni", "use", "usu", "uti", "ewe", "eu", "one", "once")
_AN_BEFORE_CONSONANT = ("hour", "honest", "honor", "heir")
_MASS_NOUNS = {"tennis", "cooked rice", "curry rice", "spaghetti", "bread", "popcorn", "butter", "salt", "sushi", "oden", "broccoli", "garlic", "sake", "fire", "ice", "fog", "bacon", "cheese wedge", "yarn", "thread"}
_NO_ARTICLE = {"Mount Fuji", "Tokyo tower"}
_THE = {"Statue of Liberty", "milky way"}
_PLURAL_WORDS = {"people", "men", "women", "children", "feet", "teeth", "mice", "geese"}
_SINGULAR_WORDS = {"rhinoceros", "leftwards", "rightwards"}
_PLURAL_HEAD_SPLIT = (" and ", " with ", " of ", " in ", " on ", " at ", " for ", " without ")


def _takewhile_not_participle(words: Sequence[str]) -> list[str]:
    out = []
    for word in words:
        if word.endswith("ing"):
            break
        out.append(word)
    return out


def with_article(name: str) -> str:
    """``"cat face"`` -> ``"a cat face"``, ``"alarm clock"`` -> ``"an alarm clock"``, ``"eyes"`` -> ``"eyes"``."""
    if name in _THE:
        return f"the {name}"
    if not name or name in _NO_ARTICLE or name.lower() in _MASS_NOUNS:
        return name
    words = name.split()
    if len(words) == 1 and name[0].isupper() and name[1:].islower():  # "Aries", "Leo"
        return name
    # The head noun phrase: before "with"/"of"/... and before a participle ("person lifting weights").
    head = name
    for sep in _PLURAL_HEAD_SPLIT:
        head = head.split(sep)[0]
    head_words = head.split()
    head_words = head_words[:1] + [w for w in _takewhile_not_participle(head_words[1:])]
    last = head_words[-1].lower()
    if last in _PLURAL_WORDS or (last.endswith("s") and not last.endswith(("ss", "us", "is")) and last not in _SINGULAR_WORDS):
        return name  # "eyes", "two hearts", "people hugging"
    first = words[0].strip("!?.,")
    if first.isupper() and first.isalpha():
        if first in _SPOKEN_CAPS or len(first) > 3:
            an = first[0] in "AEIOU"
        else:
            an = first[0] in _SPELLED_AN
    else:
        lower = name.lower()
        if lower.startswith(_AN_BEFORE_CONSONANT):
            an = True
        elif lower.startswith(_A_BEFORE_VOWEL):
            an = False
        else:
            an = lower[0] in "aeiou"
    return f"{'an' if an else 'a'} {name}"


def scene_caption(names: Sequence[str], positions: Sequence[str | None], background: str) -> str:
    """``"a cat face in the top right and a rocket at the bottom on a light blue background"``.

    A position of ``None`` means a single emoji filling the centre, said without a place.
    """
    parts = []
    for name, position in zip(names, positions):
        phrase = with_article(name)
        if position is not None:
            phrase += " " + POSITIONS[position][0]
        parts.append(phrase)
    return f"{' and '.join(parts)} on {with_article(background)} background"


# --------------------------------------------------------------------------------------
# Building the folder
# --------------------------------------------------------------------------------------


def _pick_emoji(rng: random.Random, candidates: list[Emoji], renderer: EmojiRenderer, exclude: set[str]) -> Emoji:
    # Re-drawing on a blank render keeps the result a function of the seed alone: whether an
    # emoji renders is a fixed property of the font.
    for _ in range(10_000):
        emoji = candidates[rng.randrange(len(candidates))]
        if emoji.char not in exclude and renderer.glyph(emoji.char) is not None:
            return emoji
    raise RuntimeError("the emoji font draws none of the candidate emoji; is it a colour emoji font?")


def _paste(canvas: Image.Image, glyph: Image.Image, side: int, center: tuple[float, float]) -> None:
    size = max(1, round(side))
    small = glyph.resize((size, size), Image.Resampling.LANCZOS)  # Pillow resamples RGBA premultiplied
    x = round(center[0] - size / 2)
    y = round(center[1] - size / 2)
    canvas.alpha_composite(small, (x, y))


def render_scene(
    renderer: EmojiRenderer,
    chars: Sequence[str],
    positions: Sequence[str | None],
    background: tuple[int, int, int],
    image_size: int,
    scale: float = 0.7,
) -> Image.Image:
    """An RGB image with each emoji at its grid position (``None``: centred, ``scale`` of the side)."""
    canvas = Image.new("RGBA", (image_size, image_size), (*background, 255))
    for char, position in zip(chars, positions):
        glyph = renderer.glyph(char)
        if glyph is None:
            raise ValueError(f"the font draws nothing for {char!r}")
        if position is None:
            _paste(canvas, glyph, scale * image_size, (image_size / 2, image_size / 2))
        else:
            fx, fy = POSITIONS[position][1]
            _paste(canvas, glyph, 0.3 * image_size, (fx * image_size, fy * image_size))
    return canvas.convert("RGB")


def _draw_example(
    rng: random.Random, candidates: list[Emoji], renderer: EmojiRenderer, image_size: int, scene_fraction: float
) -> tuple[Image.Image, dict]:
    """One image and its metadata columns (all but ``file_name``), every choice drawn from ``rng``."""
    background = rng.choice(list(BACKGROUNDS))
    if rng.random() < scene_fraction:  # a scene: one or two small emoji at named places
        count = rng.choice((1, 2))
        positions: list[str | None] = list(rng.sample(list(POSITIONS), count))
    else:  # one large centred emoji
        count, positions = 1, [None]
    chosen: list[Emoji] = []
    for _ in range(count):
        chosen.append(_pick_emoji(rng, candidates, renderer, {e.char for e in chosen}))
    image = render_scene(
        renderer, [e.char for e in chosen], positions, BACKGROUNDS[background], image_size,
        scale=rng.uniform(0.55, 0.8),
    )
    columns = {
        "text": scene_caption([e.name for e in chosen], positions, background),
        "emoji": [e.char for e in chosen],
        "names": [e.name for e in chosen],
        "groups": [e.group for e in chosen],
        "positions": positions,
        "background": background,
    }
    return image, columns


def _write_synced(path: Path, text: str) -> None:
    """Write ``text`` and wait until it is on disk (the folder is renamed into place next)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``, replacing an old ``out`` only once ``tmp`` is in hand."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def build_emoji_folder(
    out_dir: str | os.PathLike,
    n_images: int,
    image_size: int = 64,
    seed: int = 0,
    groups: Sequence[str] | None = None,
    *,
    scene_fraction: float = 0.5,
    font_path: str | os.PathLike | None = None,
    emoji_test: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``n_images`` emoji images and ``metadata.jsonl`` to ``out_dir``; returns it.

    A ``scene_fraction`` of the images hold one or two small emoji at named grid places; the
    rest hold one large centred emoji. The folder is built under a temporary name beside
    ``out_dir`` and renamed when complete, so ``out_dir`` is never half-written. An existing
    ``out_dir`` is an error unless ``overwrite``.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if not 0.0 <= scene_fraction <= 1.0:
        raise ValueError(f"scene_fraction must be in [0, 1], got {scene_fraction}")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    renderer = EmojiRenderer(font_path)
    candidates = load_emoji_list(groups, emoji_test)
    if not candidates:
        raise ValueError("no candidate emoji")

    from tqdm.auto import tqdm  # imported late: keeps `--help` fast

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    lines = []
    try:
        for i in tqdm(range(n_images), desc="emoji images", unit="img", disable=not progress):
            rng = random.Random(f"emoji:{seed}:{i}")  # one stream per image: image i depends on (seed, i) only
            image, columns = _draw_example(rng, candidates, renderer, image_size, scene_fraction)
            file_name = f"{i:06d}.png"
            image.save(tmp / file_name, format="PNG")
            lines.append(json.dumps({"file_name": file_name, **columns}, ensure_ascii=False))
        _write_synced(tmp / "metadata.jsonl", "\n".join(lines) + "\n")
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------
# Command line: `mmgen data emoji`
# --------------------------------------------------------------------------------------


def build_parser(prog: str = "mmgen data emoji") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Build an image-caption folder (PNG files + metadata.jsonl) of emoji scenes from the\n"
            "Noto Color Emoji font: one large emoji on a plain background, or one or two smaller\n"
            "emoji at named places. Needs the Debian packages fonts-noto-color-emoji and unicode-data."
        ),
        epilog=f"example:\n  {prog} --out data/emoji --n 5000 --size 64 --groups 'Animals & Nature' 'Food & Drink'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="folder to create (must not exist unless --overwrite)")
    parser.add_argument("--n", type=int, default=5000, metavar="N", help="number of images (default: %(default)s)")
    parser.add_argument("--size", type=int, default=64, metavar="PX", help="image side in pixels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same folder (default: %(default)s)")
    parser.add_argument("--groups", nargs="+", default=None, metavar="GROUP",
                        help="emoji-test.txt groups to draw from, e.g. 'Animals & Nature' (default: all but Component and Flags; see --list-groups)")
    parser.add_argument("--scene-fraction", type=float, default=0.5, metavar="F",
                        help="fraction of images with one or two emoji at named places rather than one large centred emoji (default: %(default)s)")
    parser.add_argument("--font", type=Path, default=None, metavar="TTF", help="path of NotoColorEmoji.ttf (default: usual places, then fc-match)")
    parser.add_argument("--emoji-test", type=Path, default=None, metavar="FILE",
                        help="path of emoji-test.txt (default: /usr/share/unicode/emoji/emoji-test.txt)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--list-groups", action="store_true", help="print the emoji groups with their sizes and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mmgen data emoji``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.list_groups:
            counts = Counter(e.group or "(unknown)" for e in load_emoji_list(None, args.emoji_test))
            for group, count in counts.items():
                print(f"{count:5d}  {group}")
            return 0
        if args.out is None:
            parser.error("--out is required")
        out = build_emoji_folder(
            args.out, args.n, image_size=args.size, seed=args.seed, groups=args.groups,
            scene_fraction=args.scene_fraction, font_path=args.font, emoji_test=args.emoji_test,
            overwrite=args.overwrite, progress=not args.no_progress,
        )
    except (EmojiResourceError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.n} images and metadata.jsonl to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
