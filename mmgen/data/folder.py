"""Image–caption data on disk: image loading, caption folders and tar shards.

Three layers, each usable alone:

* :func:`load_image` turns any file Pillow can read (every mode: RGBA, LA, P with
  transparency, L, 1-bit, CMYK, 16-bit greyscale, ...) into an RGB image of a fixed size:
  EXIF orientation applied, transparency composited on a background colour, shorter side
  resized and centre-cropped. Unreadable, corrupt or truncated files raise
  :class:`ImageLoadError`, which names the file and says what is wrong.
* :class:`ImageCaptionFolder` is a map-style dataset over a folder in Hugging Face's
  ``imagefolder`` layout: images next to a ``metadata.jsonl`` whose lines are
  ``{"file_name": "cat.png", "text": "a cat"}`` (a ``caption`` column is accepted too).
  Missing files, images without a caption and corrupt images are reported, never silently
  kept, and a corrupt image never stops a training run.
* :class:`TarShardDataset` streams WebDataset-style tar shards (``000001.png`` +
  ``000001.txt`` grouped by basename) for data larger than memory, split across
  distributed ranks and DataLoader workers; :func:`write_tar_shards` writes them.

Problems in the data are reported with :class:`DataWarning`, so that a caller can turn
them into errors with ``warnings.simplefilter("error", DataWarning)``.
"""

from __future__ import annotations

import glob
import io
import json
import os
import random
import re
import tarfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

# The image helpers live with the other image code; they are re-exported here for the data sets.
from mmgen.images import (  # noqa: F401
    RGB,
    ImageLoadError,
    ImageSource,
    Size,
    image_to_tensor,
    load_image,
    resize_center_crop,
    tensor_to_images,
    to_rgb,
)

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")
CAPTION_COLUMNS = ("text", "caption")  # tried in this order when no column is named
_MAX_LISTED = 20  # how many file names a warning spells out before "... and N more"


class DataWarning(UserWarning):
    """Something in a data set was skipped or is suspicious (missing, corrupt, uncaptioned)."""


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        shown += f", ... and {len(names) - _MAX_LISTED} more"
    return shown


# --------------------------------------------------------------------------------------
# Integrity
# --------------------------------------------------------------------------------------


def verify_image(path: str | os.PathLike) -> str | None:
    """A cheap integrity check: ``None`` when the file looks fine, else the reason.

    ``Image.verify`` checks structure and checksums without decoding every pixel (PNG chunks
    and CRCs, for example); it does not catch everything (a truncated JPEG passes), which
    is why datasets also handle :class:`ImageLoadError` at load time.
    """
    try:
        with Image.open(path) as img:
            img.verify()
    except FileNotFoundError:
        return "file not found"
    except Image.UnidentifiedImageError:
        return "not a recognised image format"
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


# --------------------------------------------------------------------------------------
# Image–caption folders (Hugging Face imagefolder layout)
# --------------------------------------------------------------------------------------


@dataclass
class FolderReport:
    """What :class:`ImageCaptionFolder` found, by file name relative to the root."""

    listed: int = 0  # lines in metadata.jsonl
    kept: int = 0  # usable image–caption pairs
    missing: list[str] = field(default_factory=list)  # listed, but no such file
    uncaptioned: list[str] = field(default_factory=list)  # image not listed, or empty caption
    duplicates: list[str] = field(default_factory=list)  # listed more than once (first kept)
    corrupt: dict[str, str] = field(default_factory=dict)  # file name -> reason

    @property
    def ok(self) -> bool:
        return not (self.missing or self.uncaptioned or self.duplicates or self.corrupt)


def _read_metadata(path: Path, caption_column: str | None) -> list[tuple[str, str]]:
    """``(file_name, caption)`` per line; a caption of "" when the line has none."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from None
            if not isinstance(record, dict) or not isinstance(record.get("file_name"), str):
                raise ValueError(f'{path}:{lineno}: each line needs a "file_name" string, got {line.strip()[:80]}')
            columns = (caption_column,) if caption_column else CAPTION_COLUMNS
            caption = next((record[c] for c in columns if c in record), "")
            if not isinstance(caption, str):
                raise ValueError(f"{path}:{lineno}: caption must be a string, got {caption!r}")
            rows.append((record["file_name"], caption.strip()))
    return rows


def _image_files(root: Path) -> list[str]:
    """Image files under root (recursive, hidden files and folders left out), relative, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


class ImageCaptionFolder(Dataset):
    """Map-style dataset over ``root/metadata.jsonl`` and the images it names.

    Items are ``{"image": FloatTensor (3, H, W) in [-1, 1], "caption": str}`` (``image`` is an
    RGB PIL image with ``return_pil=True``).

    On construction the folder is checked and every problem is reported in one
    :class:`DataWarning` per kind and in :attr:`report`:

    * files listed in the metadata that do not exist (dropped);
    * images in the folder with no metadata line, or with an empty caption (dropped);
    * images that fail a cheap :func:`verify_image` pass (dropped; ``verify=False`` skips
      the pass for very large folders).

    Some damage only shows when the pixels are decoded (a truncated JPEG). Such an item is
    replaced by the next loadable index, deterministically, recorded in
    ``report.corrupt`` and warned about once, so a training run never stops on a bad file.
    Inside DataLoader workers each worker records into its own copy of the report.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: Size = 64,
        *,
        return_pil: bool = False,
        background: RGB = (255, 255, 255),
        caption_column: str | None = None,
        verify: bool = True,
    ) -> None:
        self.root = Path(root)
        self.image_size = image_size
        self.return_pil = return_pil
        self.background = tuple(background)
        metadata = self.root / "metadata.jsonl"
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        if not metadata.is_file():
            raise FileNotFoundError(
                f'{metadata} not found; an image folder needs one line {{"file_name": ..., "text": ...}} per image'
            )
        rows = _read_metadata(metadata, caption_column)
        self.report = FolderReport(listed=len(rows))
        on_disk = set(_image_files(self.root))
        listed: set[str] = set()
        root_resolved = self.root.resolve()
        self.items: list[tuple[str, str]] = []  # (file name relative to root, caption)
        for file_name, caption in rows:
            rel = Path(file_name).as_posix()
            if rel in listed:
                self.report.duplicates.append(rel)
                continue
            listed.add(rel)
            path = (self.root / rel).resolve()
            if not path.is_relative_to(root_resolved) or not path.is_file():
                self.report.missing.append(rel)
            elif not caption:
                self.report.uncaptioned.append(rel)
            else:
                self.items.append((rel, caption))
        self.report.uncaptioned.extend(sorted(on_disk - listed))
        if verify:
            checked = []
            for rel, caption in self.items:
                reason = verify_image(self.root / rel)
                if reason is None:
                    checked.append((rel, caption))
                else:
                    self.report.corrupt[rel] = reason
            self.items = checked
        self.report.kept = len(self.items)
        self._warn_about_report()
        if not self.items:
            raise ValueError(f"{self.root}: no usable image–caption pairs ({self.report.listed} lines in metadata.jsonl)")

    def _warn_about_report(self) -> None:
        where = f"ImageCaptionFolder({self.root})"
        r = self.report
        if r.missing:
            warnings.warn(f"{where}: {len(r.missing)} of {r.listed} listed files are missing: {_listing(r.missing)}", DataWarning, stacklevel=3)
        if r.duplicates:
            warnings.warn(f"{where}: {len(r.duplicates)} files are listed more than once (first line kept): {_listing(r.duplicates)}", DataWarning, stacklevel=3)
        if r.uncaptioned:
            warnings.warn(f"{where}: {len(r.uncaptioned)} images have no caption and are left out: {_listing(r.uncaptioned)}", DataWarning, stacklevel=3)
        if r.corrupt:
            details = [f"{name} ({reason})" for name, reason in r.corrupt.items()]
            warnings.warn(f"{where}: {len(r.corrupt)} corrupt images are left out: {_listing(details)}", DataWarning, stacklevel=3)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.items)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        for step in range(n):
            rel, caption = self.items[(index + step) % n]
            if rel in self.report.corrupt:
                continue
            try:
                img = load_image(self.root / rel, self.image_size, self.background)
            except ImageLoadError as e:
                self.report.corrupt[rel] = e.reason
                warnings.warn(f"ImageCaptionFolder({self.root}): skipping corrupt image {rel} ({e.reason}); using the next item instead", DataWarning, stacklevel=2)
                continue
            return {"image": img if self.return_pil else image_to_tensor(img), "caption": caption}
        raise RuntimeError(f"ImageCaptionFolder({self.root}): every image failed to load; see report.corrupt")


# --------------------------------------------------------------------------------------
# WebDataset-style tar shards
# --------------------------------------------------------------------------------------


def expand_shards(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """A list of shard paths from a list, a glob (``data/*.tar``) or a brace range.

    Brace ranges follow WebDataset: ``data/shard-{000000..000009}.tar`` (zero padding is
    kept). Ranges are expanded before globbing, so both can be combined. Paths from a
    pattern are sorted and must exist; a pattern that matches nothing is an error.
    """
    if not isinstance(shards, (str, os.PathLike)):
        out = [os.fspath(s) for s in shards]
        if not out:
            raise ValueError("empty list of tar shards")
        return out
    pattern = os.fspath(shards)
    expanded = [pattern]
    brace = re.compile(r"\{(\d+)\.\.(\d+)\}")
    while any(brace.search(p) for p in expanded):
        nxt = []
        for p in expanded:
            m = brace.search(p)
            if m is None:
                nxt.append(p)
                continue
            lo, hi = m.group(1), m.group(2)
            width = len(lo) if lo.startswith("0") else 0
            for i in range(int(lo), int(hi) + 1):
                nxt.append(p[: m.start()] + str(i).zfill(width) + p[m.end() :])
        expanded = nxt
    out = []
    for p in expanded:
        matches = sorted(glob.glob(p)) if glob.has_magic(p) else ([p] if os.path.exists(p) else [])
        if not matches:
            raise FileNotFoundError(f"no tar shard matches {p}")
        out.extend(matches)
    return out


def _split_member_name(name: str) -> tuple[str, str] | None:
    """``dir/000001.seg.png`` -> (``dir/000001``, ``seg.png``): key up to the first dot of the basename."""
    directory, _, base = name.rpartition("/")
    if base.startswith(".") or "." not in base:
        return None
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _iter_groups(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream ``(key, {extension: bytes})`` from one tar file, grouping consecutive members."""
    key, group = None, {}
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            split = _split_member_name(member.name)
            if split is None:
                continue
            member_key, ext = split
            if member_key != key and group:
                yield key, group
                group = {}
            key = member_key
            f = tar.extractfile(member)
            group[ext] = f.read() if f is not None else b""
    if group:
        yield key, group


@dataclass
class ShardStats:
    """Counts from the current iterator of a :class:`TarShardDataset` (this process only)."""

    samples: int = 0  # yielded
    corrupt: list[str] = field(default_factory=list)  # "shard:key" whose image failed to load
    uncaptioned: list[str] = field(default_factory=list)  # image without a (non-empty) .txt
    without_image: list[str] = field(default_factory=list)  # members with no image extension
    damaged_shards: dict[str, str] = field(default_factory=dict)  # shard -> why reading stopped


class TarShardDataset(IterableDataset):
    """Stream image–caption pairs from WebDataset-style tar shards.

    A sample is the run of consecutive members sharing a key (``000123.png`` +
    ``000123.txt``); images may be ``png``, ``jpg``/``jpeg``, ``webp`` and the other
    :data:`IMAGE_EXTENSIONS`. Items are ``{"image": FloatTensor (3, H, W) in [-1, 1] (or
    PIL), "caption": str}``.

    Sharding: the shard list (shuffled per epoch when ``shuffle_buffer > 0``, with the same
    order on every rank) is split ``shards[rank::world_size]`` and then, inside each rank,
    across DataLoader workers. Every (rank, worker) therefore reads disjoint shards; there
    should be at least ``world_size * num_workers`` shards, and a warning says when some get
    none. Ranks may see different numbers of samples when shards differ in size; a trainer
    that needs equal steps per rank should cap the steps per epoch.

    Samples pass through a shuffle buffer of ``shuffle_buffer`` encoded samples (0: stream
    order). The order is a deterministic function of ``seed``, the epoch
    (:meth:`set_epoch`), the rank and the worker.

    Corrupt images, images without a caption and damaged shards are skipped, counted in
    :attr:`stats` and reported with :class:`DataWarning`; iteration never raises on them.
    """

    def __init__(
        self,
        shards: str | os.PathLike | Sequence[str | os.PathLike],
        image_size: Size = 64,
        *,
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        return_pil: bool = False,
        background: RGB = (255, 255, 255),
    ) -> None:
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.shards = expand_shards(shards)
        self.image_size = image_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.return_pil = return_pil
        self.background = tuple(background)
        self.epoch = 0
        self.stats = ShardStats()

    def set_epoch(self, epoch: int) -> None:
        """Change the shard order and shuffle of the next iteration (call on every rank)."""
        self.epoch = epoch

    def shards_for(self, worker_id: int = 0, num_workers: int = 1) -> list[str]:
        """The shards one (rank, worker) reads this epoch, in reading order."""
        order = list(self.shards)
        if self.shuffle_buffer > 0:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)  # same order on every rank
        return order[self.rank :: self.world_size][worker_id::num_workers]

    def _warn(self, message: str) -> None:
        warnings.warn(f"TarShardDataset: {message}", DataWarning, stacklevel=3)

    def _raw_samples(self, shards: list[str]) -> Iterator[tuple[str, bytes, str]]:
        """(``shard:key``, encoded image, caption) for every usable sample, in stream order."""
        for shard in shards:
            try:
                for key, group in _iter_groups(shard):
                    where = f"{shard}:{key}"
                    ext = next((e for e in IMAGE_EXTENSIONS if e in group), None)
                    if ext is None:
                        self.stats.without_image.append(where)
                        continue
                    caption = group.get("txt", b"").decode("utf-8", errors="replace").strip()
                    if not caption:
                        self.stats.uncaptioned.append(where)
                        continue
                    yield where, group[ext], caption
            except (tarfile.TarError, OSError, EOFError) as e:
                reason = f"{type(e).__name__}: {e}"
                self.stats.damaged_shards[shard] = reason
                self._warn(f"shard {shard} is damaged ({reason}); skipping the rest of it")

    def _shuffled(self, samples: Iterator[Any], rng: random.Random) -> Iterator[Any]:
        if self.shuffle_buffer <= 1:
            yield from samples
            return
        buffer: list[Any] = []
        for sample in samples:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            i = rng.randrange(len(buffer))
            buffer[i], sample = sample, buffer[i]
            yield sample
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shards = self.shards_for(worker_id, num_workers)
        self.stats = ShardStats()
        if not shards:
            self._warn(
                f"rank {self.rank} worker {worker_id} has no shard to read "
                f"({len(self.shards)} shards for {self.world_size} ranks x {num_workers} workers)"
            )
            return
        rng = random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{worker_id}")
        for where, data, caption in self._shuffled(self._raw_samples(shards), rng):
            try:
                img = load_image(data, self.image_size, self.background)
            except ImageLoadError as e:
                self.stats.corrupt.append(where)
                if len(self.stats.corrupt) <= _MAX_LISTED:
                    self._warn(f"skipping corrupt image {where} ({e.reason})")
                continue
            self.stats.samples += 1
            yield {"image": img if self.return_pil else image_to_tensor(img), "caption": caption}
        self._warn_summary()

    def _warn_summary(self) -> None:
        s = self.stats
        if len(s.corrupt) > _MAX_LISTED:
            self._warn(f"{len(s.corrupt)} corrupt images skipped in total: {_listing(s.corrupt)}")
        if s.uncaptioned:
            self._warn(f"{len(s.uncaptioned)} images without a .txt caption skipped: {_listing(s.uncaptioned)}")
        if s.without_image:
            self._warn(f"{len(s.without_image)} samples without an image skipped: {_listing(s.without_image)}")


def _encode_item(item: Any, image_format: str) -> tuple[bytes, str, str, str | None]:
    """(image bytes, extension, caption, key or None) from a writer item."""
    if isinstance(item, Mapping):
        image = item["image"]
        caption = item.get("caption", item.get("text"))
        ext, key = item.get("ext"), item.get("key")
    else:
        image, caption = item
        ext, key = None, None
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a string, got {caption!r}")
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        fmt = image_format.upper().replace("JPG", "JPEG")
        image.save(buf, format=fmt)
        return buf.getvalue(), ext or image_format.lower(), caption, key
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return path.read_bytes(), ext or path.suffix.lstrip(".").lower(), caption, key
    if isinstance(image, (bytes, bytearray)):
        if ext is None:
            raise ValueError('encoded image bytes need an "ext" (e.g. {"image": b"...", "ext": "png", "caption": ...})')
        return bytes(image), ext, caption, key
    raise TypeError(f"image must be a PIL image, a path or bytes, got {type(image).__name__}")


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # identical input gives byte-identical shards
    tar.addfile(info, io.BytesIO(data))


def write_tar_shards(
    items: Iterable[Any],
    out_dir: str | os.PathLike,
    per_shard: int = 1000,
    *,
    prefix: str = "shard",
    image_format: str = "png",
) -> list[Path]:
    """Write image–caption pairs into ``out_dir/{prefix}-000000.tar``, ``-000001.tar``, ...

    ``items`` yields ``(image, caption)`` pairs or mappings ``{"image", "caption" (or
    "text"), optional "key", optional "ext"}``; an image is a PIL image (encoded as
    ``image_format``), a path (bytes copied, extension kept) or encoded bytes (needs
    ``"ext"``). Keys default to the running index, ``000000042``. Each shard is written to a
    temporary name and renamed when complete. Returns the shard paths in order.
    """
    if per_shard < 1:
        raise ValueError(f"per_shard must be >= 1, got {per_shard}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    tar: tarfile.TarFile | None = None
    tmp: Path | None = None

    def close_current() -> None:
        assert tar is not None and tmp is not None
        tar.close()
        os.replace(tmp, paths[-1])

    try:
        for index, item in enumerate(items):
            if index % per_shard == 0:
                if tar is not None:
                    close_current()
                paths.append(out / f"{prefix}-{len(paths):06d}.tar")
                tmp = paths[-1].with_name(f".{paths[-1].name}.tmp-{os.getpid()}")
                tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT)
            data, ext, caption, key = _encode_item(item, image_format)
            key = key if key is not None else f"{index:09d}"
            if "." in Path(key).name:
                raise ValueError(f"sample key {key!r} must not contain a dot (it would split the sample)")
            _add_member(tar, f"{key}.{ext}", data)
            _add_member(tar, f"{key}.txt", caption.encode("utf-8"))
        if tar is not None:
            close_current()
            tar = None
    finally:
        if tar is not None:  # an error part-way: leave no half-written shard behind
            tar.close()
            if tmp is not None:
                tmp.unlink(missing_ok=True)
    return paths
