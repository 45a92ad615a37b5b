"""Image loading, image–caption folders, tar shards and the emoji data set."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mmgen.data import emoji
from mmgen.data.folder import (
    DataWarning,
    ImageCaptionFolder,
    ImageLoadError,
    TarShardDataset,
    expand_shards,
    image_to_tensor,
    load_image,
    to_rgb,
    write_tar_shards,
)

BG = (10, 20, 30)


def pixel(img: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    assert img.mode == "RGB"
    return img.getpixel(xy)


def saved(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def solid(color, size=(16, 16)) -> Image.Image:
    return Image.new("RGB", size, color)


# --------------------------------------------------------------------------------------
# load_image: every mode
# --------------------------------------------------------------------------------------


def test_rgba_composites_on_background(tmp_path):
    img = Image.new("RGBA", (4, 4), (0, 0, 255, 255))
    img.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red
    img.putpixel((1, 0), (255, 255, 255, 128))  # half-transparent white
    out = load_image(saved(img, tmp_path / "a.png"), 4, background=BG)
    assert out.mode == "RGB" and out.size == (4, 4)
    assert pixel(out, (0, 0)) == BG
    assert pixel(out, (1, 0)) == pytest.approx((132, 137, 142), abs=1)  # 128/255 white over BG
    assert pixel(out, (3, 3)) == (0, 0, 255)


def test_la_composites_on_background(tmp_path):
    img = Image.new("LA", (4, 4), (200, 255))
    img.putpixel((2, 1), (0, 0))
    out = load_image(saved(img, tmp_path / "la.png"), 4, background=BG)
    assert pixel(out, (2, 1)) == BG
    assert pixel(out, (0, 0)) == (200, 200, 200)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    img.putpixel((3, 2), 0)
    path = saved(img, tmp_path / "p.png", transparency=0)
    assert Image.open(path).mode == "P"
    out = load_image(path, 4, background=BG)
    assert pixel(out, (3, 2)) == BG
    assert pixel(out, (0, 0)) == (255, 0, 0)


def test_palette_without_transparency_and_gif(tmp_path):
    img = Image.new("P", (4, 4), 2)
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
    out = load_image(saved(img, tmp_path / "p.gif"), 4, background=BG)
    assert pixel(out, (1, 1)) == (0, 255, 0)


def test_greyscale_l(tmp_path):
    out = load_image(saved(Image.new("L", (4, 4), 77), tmp_path / "l.png"), 4)
    assert pixel(out, (0, 0)) == (77, 77, 77)


def test_cmyk(tmp_path):
    img = Image.new("CMYK", (4, 4), (0, 0, 0, 0))
    img.putpixel((1, 1), (0, 255, 255, 0))
    path = saved(img, tmp_path / "c.tif")
    assert Image.open(path).mode == "CMYK"
    out = load_image(path, 4)
    assert pixel(out, (0, 0)) == (255, 255, 255)
    assert pixel(out, (1, 1)) == (255, 0, 0)


def test_16_bit_greyscale_scales_instead_of_clipping(tmp_path):
    values = np.array([[0, 65535], [128 * 257, 1000]], dtype=np.uint16)
    path = saved(Image.fromarray(values), tmp_path / "i16.png")
    assert Image.open(path).mode.startswith("I")
    out = load_image(path, None)
    assert out.size == (2, 2)
    assert [pixel(out, xy)[0] for xy in [(0, 0), (1, 0), (0, 1), (1, 1)]] == [0, 255, 128, 4]


def test_one_bit(tmp_path):
    img = Image.new("1", (4, 4), 0)
    img.putpixel((2, 2), 1)
    out = load_image(saved(img, tmp_path / "b.png"), 4)
    assert pixel(out, (2, 2)) == (255, 255, 255)
    assert pixel(out, (0, 0)) == (0, 0, 0)


def test_other_modes_convert_colours():
    assert to_rgb(Image.new("LAB", (2, 2), (255, 128, 128))).getpixel((0, 0)) == pytest.approx((255, 255, 255), abs=2)
    assert to_rgb(Image.new("HSV", (2, 2), (0, 255, 255))).getpixel((0, 0)) == (255, 0, 0)
    assert to_rgb(Image.new("F", (2, 2), 0.5)).getpixel((0, 0)) == (128, 128, 128)
    assert to_rgb(Image.new("PA", (2, 2), (0, 0)), BG).getpixel((0, 0)) == BG


def test_transparency_key_on_rgb(tmp_path):
    img = Image.new("RGB", (4, 4), (1, 2, 3))
    img.putpixel((0, 0), (9, 9, 9))
    out = load_image(saved(img, tmp_path / "trns.png", transparency=(1, 2, 3)), 4, background=BG)
    assert pixel(out, (1, 1)) == BG
    assert pixel(out, (0, 0)) == (9, 9, 9)


def test_bytes_and_file_objects():
    buf = io.BytesIO()
    solid((5, 6, 7)).save(buf, format="PNG")
    assert pixel(load_image(buf.getvalue(), 8), (0, 0)) == (5, 6, 7)
    buf.seek(0)
    assert load_image(buf, (8, 4)).size == (8, 4)


def test_resize_shorter_side_and_center_crop(tmp_path):
    # 60 x 20: red | green | blue thirds. A square crop keeps the green middle.
    arr = np.zeros((20, 60, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:40] = (0, 255, 0)
    arr[:, 40:] = (0, 0, 255)
    path = saved(Image.fromarray(arr), tmp_path / "wide.png")
    out = load_image(path, 10)
    assert out.size == (10, 10)
    assert pixel(out, (5, 5)) == (0, 255, 0)
    assert load_image(path, (30, 5)).size == (30, 5)  # (width, height)
    tall = load_image(saved(Image.fromarray(arr.transpose(1, 0, 2).copy()), tmp_path / "tall.png"), 10)
    assert pixel(tall, (5, 5)) == (0, 255, 0)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 20 x 10: left half red, right half blue. Orientation 6 means "rotate 90° clockwise
    # to display", so the displayed image is 10 x 20 with red on top.
    arr = np.zeros((10, 20, 3), dtype=np.uint8)
    arr[:, :10] = (255, 0, 0)
    arr[:, 10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = saved(Image.fromarray(arr), tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(path, None)
    assert out.size == (10, 20)
    top, bottom = np.asarray(out)[2, 5], np.asarray(out)[17, 5]
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_large_jpeg_draft_keeps_enough_pixels(tmp_path):
    path = saved(solid((0, 128, 0), (800, 400)), tmp_path / "big.jpg", quality=95)
    out = load_image(path, 64)
    assert out.size == (64, 64)
    assert pixel(out, (32, 32)) == pytest.approx((0, 128, 0), abs=3)


def _truncated(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def _noise(size=32, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_unreadable_files_raise_image_load_error(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    png = saved(_noise(), tmp_path / "ok.png")
    jpg = saved(_noise(), tmp_path / "ok.jpg", quality=90)
    bad = [
        tmp_path / "junk.png",
        _truncated(png, tmp_path / "trunc.png"),
        _truncated(jpg, tmp_path / "trunc.jpg"),
        tmp_path / "missing.png",
    ]
    for path in bad:
        with pytest.raises(ImageLoadError) as info:
            load_image(path, 16)
        assert info.value.path == str(path) and str(path) in str(info.value)
    with pytest.raises(ImageLoadError):
        load_image(b"\x89PNG\r\n\x1a\n garbage", 16)


def test_image_to_tensor_range():
    t = image_to_tensor(Image.fromarray(np.array([[[0, 255, 128]]], dtype=np.uint8)))
    assert t.shape == (3, 1, 1) and t.dtype == torch.float32
    assert t.flatten().tolist() == pytest.approx([-1.0, 1.0, 128 / 127.5 - 1], abs=1e-6)
    with pytest.raises(ValueError, match="RGB"):
        image_to_tensor(Image.new("L", (2, 2)))


# --------------------------------------------------------------------------------------
# ImageCaptionFolder
# --------------------------------------------------------------------------------------


def _messy_folder(root: Path) -> Path:
    root.mkdir()
    colors = {"a.png": (255, 0, 0), "b.png": (0, 255, 0), "c.png": (0, 0, 255)}
    for name, color in colors.items():
        solid(color).save(root / name)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    _truncated(saved(_noise(64), root / "full.jpg", quality=90), root / "trunc.jpg", keep=0.4)
    (root / "full.jpg").unlink()
    solid((9, 9, 9)).save(root / "nocaption.png")  # on disk, not in the metadata
    solid((8, 8, 8)).save(root / "emptycaption.png")
    (root / "sub").mkdir()
    solid((7, 7, 7)).save(root / "sub" / "d.png")
    lines = [
        {"file_name": "a.png", "text": "a red square"},
        {"file_name": "trunc.jpg", "text": "a truncated jpeg"},
        {"file_name": "b.png", "caption": "a green square"},  # the other column name
        {"file_name": "corrupt.png", "text": "not really a png"},
        {"file_name": "gone.png", "text": "a missing file"},
        {"file_name": "emptycaption.png", "text": "  "},
        {"file_name": "sub/d.png", "text": "a grey square"},
        {"file_name": "c.png", "text": "a blue square"},
    ]
    (root / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def test_folder_reports_problems_and_never_raises(tmp_path):
    root = _messy_folder(tmp_path / "imgs")
    with pytest.warns(DataWarning) as record:
        ds = ImageCaptionFolder(root, image_size=8)
    messages = "\n".join(str(w.message) for w in record)
    for name in ("gone.png", "nocaption.png", "emptycaption.png", "corrupt.png"):
        assert name in messages
    assert ds.report.missing == ["gone.png"]
    assert ds.report.uncaptioned == ["emptycaption.png", "nocaption.png"]
    assert list(ds.report.corrupt) == ["corrupt.png"]
    # The truncated JPEG passes the cheap verify pass and is found at load time.
    assert [rel for rel, _ in ds.items] == ["a.png", "trunc.jpg", "b.png", "sub/d.png", "c.png"]
    assert len(ds) == 5

    with pytest.warns(DataWarning, match="trunc.jpg"):
        items = [ds[i] for i in range(len(ds))]
    captions = [item["caption"] for item in items]
    # index 1 (trunc.jpg) falls back to the next loadable item, deterministically
    assert captions == ["a red square", "a green square", "a green square", "a grey square", "a blue square"]
    assert "trunc.jpg" in ds.report.corrupt
    for item in items:
        assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32
        assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert items[0]["image"][:, 0, 0].tolist() == [1.0, -1.0, -1.0]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # already recorded: no second warning, no exception
        batch = next(iter(DataLoader(ds, batch_size=5)))
    assert batch["image"].shape == (5, 3, 8, 8) and len(batch["caption"]) == 5


def test_folder_pil_output_and_lazy_mode(tmp_path):
    root = _messy_folder(tmp_path / "imgs")
    with pytest.warns(DataWarning):
        ds = ImageCaptionFolder(root, image_size=(12, 6), return_pil=True, verify=False)
    assert len(ds) == 6  # corrupt.png only found when loaded
    with pytest.warns(DataWarning):
        items = [ds[i] for i in range(len(ds))]
    assert all(isinstance(it["image"], Image.Image) and it["image"].size == (12, 6) for it in items)
    assert set(ds.report.corrupt) == {"corrupt.png", "trunc.jpg"}


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        ImageCaptionFolder(tmp_path, 8)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n{oops\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl:2"):
        ImageCaptionFolder(tmp_path, 8)


# --------------------------------------------------------------------------------------
# Tar shards
# --------------------------------------------------------------------------------------


def _items(n: int):
    return [(solid((i * 20, 255 - i * 20, 7), (8, 8)), f"square {i}") for i in range(n)]


def _captions(ds) -> list[str]:
    return [item["caption"] for item in ds]


def test_tar_round_trip(tmp_path):
    items = _items(10)
    paths = write_tar_shards(items, tmp_path, per_shard=3)
    assert [p.name for p in paths] == [f"shard-{i:06d}.tar" for i in range(4)]
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
    ds = TarShardDataset(str(tmp_path / "shard-{000000..000003}.tar"), image_size=8)
    out = list(ds)
    assert [o["caption"] for o in out] == [c for _, c in items]
    for (img, _), o in zip(items, out):
        assert torch.equal(o["image"], image_to_tensor(img))
    assert ds.stats.samples == 10
    assert expand_shards(str(tmp_path / "*.tar")) == [str(p) for p in paths]
    # byte-identical rewrite
    again = write_tar_shards(items, tmp_path / "again", per_shard=3)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]


def test_tar_ranks_and_workers_get_disjoint_shards(tmp_path):
    paths = write_tar_shards(_items(12), tmp_path, per_shard=2)  # 6 shards
    every = set(_captions(TarShardDataset(paths, 8)))
    for shuffle in (0, 4):
        per_rank = [set(_captions(TarShardDataset(paths, 8, rank=r, world_size=3, shuffle_buffer=shuffle, seed=1))) for r in range(3)]
        assert all(len(s) == 4 for s in per_rank)
        assert set.union(*per_rank) == every
    ds = TarShardDataset(paths, 8, rank=1, world_size=2)
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    seen = [item["caption"] for item in loader]
    assert sorted(seen) == sorted(_captions(ds)) and len(seen) == 6


def test_tar_shuffle_is_deterministic(tmp_path):
    paths = write_tar_shards(_items(12), tmp_path, per_shard=4)
    ds = TarShardDataset(paths, 8, shuffle_buffer=5, seed=3)
    first, second = _captions(ds), _captions(ds)
    assert first == second and sorted(first) == sorted(c for _, c in _items(12))
    assert first != [c for _, c in _items(12)]
    ds.set_epoch(1)
    assert _captions(ds) != first


def test_tar_skips_corrupt_uncaptioned_and_damaged(tmp_path):
    good = _items(3)
    items = [good[0], {"image": b"not a png", "ext": "png", "caption": "broken"}, good[1], good[2]]
    (shard,) = write_tar_shards(items, tmp_path, per_shard=10)
    with tarfile.open(shard, "a") as tar:  # an image with no .txt
        buf = io.BytesIO()
        solid((1, 1, 1), (8, 8)).save(buf, format="PNG")
        info = tarfile.TarInfo("orphan.png")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(shard.read_bytes()[:2600])  # cut inside a member
    ds = TarShardDataset([shard, damaged], 8)
    with pytest.warns(DataWarning) as record:
        out = list(ds)
    messages = "\n".join(str(w.message) for w in record)
    assert "000000001" in messages and "orphan" in messages and "damaged.tar" in messages
    assert [o["caption"] for o in out][:3] == ["square 0", "square 1", "square 2"]
    assert len(ds.stats.corrupt) >= 1 and ds.stats.uncaptioned == [f"{shard}:orphan"]
    assert str(damaged) in ds.stats.damaged_shards


def test_tar_arguments_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError):
        TarShardDataset(str(tmp_path / "*.tar"), 8)
    paths = write_tar_shards(_items(2), tmp_path)
    with pytest.raises(ValueError, match="rank"):
        TarShardDataset(paths, 8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="ext"):
        write_tar_shards([{"image": b"x", "caption": "y"}], tmp_path / "x")


# --------------------------------------------------------------------------------------
# Emoji
# --------------------------------------------------------------------------------------


def _font_or_skip() -> Path:
    try:
        return emoji.find_emoji_font()
    except emoji.EmojiResourceError:
        pytest.skip("Noto Color Emoji not installed (Debian package fonts-noto-color-emoji)")


def test_emoji_captions_and_parsing():
    assert emoji.with_article("cat face") == "a cat face"
    assert emoji.with_article("alarm clock") == "an alarm clock"
    assert emoji.with_article("eyes") == "eyes"
    assert emoji.with_article("OK hand") == "an OK hand"
    assert emoji.with_article("unicorn") == "a unicorn"
    assert emoji.with_article("person lifting weights") == "a person lifting weights"
    assert (
        emoji.scene_caption(["cat face", "rocket"], ["top right", "bottom"], "light blue")
        == "a cat face in the top right and a rocket at the bottom on a light blue background"
    )
    assert emoji.scene_caption(["cat face"], [None], "orange") == "a cat face on an orange background"
    text = (
        "# group: Animals & Nature\n# subgroup: animal-mammal\n"
        "1F431                                                  ; fully-qualified     # 🐱 E0.6 cat face\n"
        "1F408 200D 2B1B                                        ; fully-qualified     # 🐈‍⬛ E13.0 black cat\n"
        "# group: Smileys & Emotion\n"
        "2764 FE0F                                              ; fully-qualified     # ❤️ E0.6 red heart\n"
        "2764                                                   ; unqualified         # ❤ E0.6 red heart\n"
    )
    parsed = emoji.parse_emoji_test(text)
    assert parsed == [
        emoji.Emoji("\U0001F431", "cat face", "Animals & Nature", "animal-mammal"),
        emoji.Emoji("\u2764\ufe0f", "red heart", "Smileys & Emotion", "animal-mammal"),
    ]


def test_emoji_list_without_emoji_test_falls_back_to_unicodedata(monkeypatch):
    monkeypatch.setattr(emoji, "EMOJI_TEST_CANDIDATES", ())
    fallback = emoji.load_emoji_list()
    assert emoji.Emoji("\U0001F680", "rocket", "") in fallback
    with pytest.raises(emoji.EmojiResourceError, match="unicode-data"):
        emoji.load_emoji_list(["Animals & Nature"])


def test_missing_font_names_the_package(monkeypatch):
    monkeypatch.setattr(emoji, "FONT_CANDIDATES", ())

    def no_fc_match(*args, **kwargs):
        raise OSError("fc-match not installed")

    monkeypatch.setattr(emoji.subprocess, "run", no_fc_match)
    with pytest.raises(emoji.EmojiResourceError, match="fonts-noto-color-emoji"):
        emoji.find_emoji_font()


def test_emoji_folder_build_is_deterministic_and_loadable(tmp_path):
    _font_or_skip()
    a = emoji.build_emoji_folder(tmp_path / "a", 16, image_size=32, seed=7, progress=False)
    b = emoji.build_emoji_folder(tmp_path / "b", 16, image_size=32, seed=7, progress=False)
    c = emoji.build_emoji_folder(tmp_path / "c", 16, image_size=32, seed=8, progress=False)
    meta_a = (a / "metadata.jsonl").read_text(encoding="utf-8")
    assert meta_a == (b / "metadata.jsonl").read_text(encoding="utf-8")
    assert meta_a != (c / "metadata.jsonl").read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary folders left
    rows = [json.loads(line) for line in meta_a.splitlines()]
    assert len(rows) == 16 and {len(r["emoji"]) for r in rows} <= {1, 2}
    for row in rows:
        assert (a / row["file_name"]).read_bytes() == (b / row["file_name"]).read_bytes()
        assert row["text"].endswith(f"{row['background']} background")
        img = np.asarray(Image.open(a / row["file_name"]).convert("RGB")).astype(int)
        assert img.shape == (32, 32, 3)
        bg = np.array(emoji.BACKGROUNDS[row["background"]])
        differs = np.abs(img - bg).sum(-1) > 30
        assert differs.mean() > 0.02, f"{row['file_name']} ({row['text']}) looks blank"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        ds = ImageCaptionFolder(a, image_size=32)
    assert len(ds) == 16 and ds[0]["caption"] == rows[0]["text"]
    with pytest.raises(FileExistsError):
        emoji.build_emoji_folder(a, 4, image_size=32, progress=False)


def test_emoji_groups_and_cli(tmp_path, capsys):
    _font_or_skip()
    if emoji.find_emoji_test() is None:
        pytest.skip("emoji-test.txt not installed (Debian package unicode-data)")
    out = tmp_path / "animals"
    assert emoji.main(["--out", str(out), "--n", "6", "--size", "16", "--groups", "animals & nature", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 6 and all(g == "Animals & Nature" for r in rows for g in r["groups"])
    assert emoji.main(["--out", str(out), "--n", "2", "--no-progress"]) == 1  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        emoji.main(["--help"])
    assert info.value.code == 0 and "fonts-noto-color-emoji" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(ValueError, match="unknown emoji group"):
        emoji.load_emoji_list(["no such group"])
