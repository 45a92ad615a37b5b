"""Shapes world and shapes reader: determinism, held-out split, captions, reading accuracy."""

import io
import json
from collections import deque

import numpy as np
import pytest
from PIL import Image, ImageFilter

from mmgen.config import ConfigError
from mmgen.data.shapes import (
    BACKGROUNDS,
    COLORS,
    CAPTION_REWRITES,
    CONVERSE,
    SHAPES,
    ObjectSpec,
    SceneSpec,
    ShapesConfig,
    ShapesDataset,
    canonical_caption,
    converse_caption,
    heldout_compositions,
    relations_between,
    main,
    parse_caption,
    phrasings,
    render,
    write_shapes_folder,
)
from mmgen.eval.shapes_reader import aggregate, connected_components, evaluate, read_scene, score


def _scenes(split, n, seed=0, config=None):
    ds = ShapesDataset(split, seed=seed, config=config)
    return [ds.scene(i)[0] for i in range(n)]


# --------------------------------------------------------------------------------------
# Config and determinism
# --------------------------------------------------------------------------------------


def test_config_rejects_unknown_keys_and_bad_geometry():
    with pytest.raises(ConfigError, match="image_sise"):
        ShapesConfig.from_dict({"image_sise": 64})
    with pytest.raises(ConfigError, match="image_sise"):
        ShapesDataset(image_sise=64)
    with pytest.raises(ConfigError, match="does not fit"):
        ShapesConfig(large_size=0.5)
    assert ShapesConfig.from_dict({"image_size": 48}).image_size == 48
    assert ShapesDataset(image_size=48)[0]["image"].size == (48, 48)


def test_same_seed_same_items_any_order():
    a, b = ShapesDataset(seed=7), ShapesDataset(seed=7)
    indices = [0, 1, 2, 5, 123_456_789]
    items_a = [a[i] for i in indices]
    items_b = [b[i] for i in reversed(indices)][::-1]  # access order must not matter
    for x, y in zip(items_a, items_b):
        assert x["caption"] == y["caption"] and x["scene"] == y["scene"]
        assert np.array_equal(np.asarray(x["image"]), np.asarray(y["image"]))


def test_different_seeds_and_splits_differ():
    base = [ShapesDataset(seed=0)[i]["caption"] for i in range(20)]
    assert base != [ShapesDataset(seed=1)[i]["caption"] for i in range(20)]
    assert base != [ShapesDataset("heldout", seed=0)[i]["caption"] for i in range(20)]
    pixels = [np.asarray(ShapesDataset(seed=s)[0]["image"]) for s in (0, 1)]
    assert not np.array_equal(*pixels)


def test_dataset_protocol():
    ds = ShapesDataset(length=10, transform=lambda im: np.asarray(im))
    assert len(ds) == 10
    item = ds[3]
    assert item["image"].shape == (72, 72, 3) and item["image"].dtype == np.uint8
    with pytest.raises(IndexError):
        ds[10]
    with pytest.raises(ValueError, match="split"):
        ShapesDataset("validation")


def test_torch_dataloader_with_workers_free_collate():
    torch = pytest.importorskip("torch")
    loader = torch.utils.data.DataLoader(ShapesDataset(length=8), batch_size=4, collate_fn=list)
    batches = list(loader)
    assert [len(b) for b in batches] == [4, 4]
    assert batches[0][1]["caption"] == ShapesDataset(length=8)[1]["caption"]


def test_write_folder_matches_dataset_and_never_clobbers(tmp_path):
    out = write_shapes_folder(tmp_path / "shapes", 5, split="heldout", seed=2)
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    ds = ShapesDataset("heldout", seed=2)
    assert [r["text"] for r in records] == [ds[i]["caption"] for i in range(5)]
    assert np.array_equal(np.asarray(Image.open(out / records[3]["file_name"])), np.asarray(ds[3]["image"]))
    assert ShapesConfig.from_json(out / "shapes_config.json") == ShapesConfig()
    assert main(["--out", str(out), "--n", "2"]) == 1  # exists, no --overwrite
    assert main(["--out", str(out), "--n", "2", "--overwrite"]) == 0
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 2


# --------------------------------------------------------------------------------------
# Scenes and rendering
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [32, 64])
def test_objects_fit_and_never_touch(image_size):
    config = ShapesConfig(image_size=image_size)
    two = [s for s in _scenes("train", 600, config=config) if len(s.objects) == 2]
    assert len(two) > 200
    for scene in two:
        boxes = [o.bbox(image_size, config) for o in scene.objects]
        for o, (x0, y0, x1, y1) in zip(scene.objects, boxes):
            # Clipping into the image never has to move an object.
            assert abs((x0 + x1) / 2 - o.center[0] * image_size) <= 1
            assert abs((y0 + y1) / 2 - o.center[1] * image_size) <= 1
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes
        gap = max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1)
        assert gap >= 1, scene


def test_render_draws_the_scene_colours():
    scene = _scenes("train", 1)[0]
    pixels = np.asarray(render(scene, 64))
    found = {tuple(c) for c in pixels.reshape(-1, 3)}
    assert found == {BACKGROUNDS[scene.background], *(COLORS[o.color] for o in scene.objects)}


# --------------------------------------------------------------------------------------
# Held-out compositions
# --------------------------------------------------------------------------------------


def _compositions(scene):
    """(colour, shape) pairs and (shape, relation, shape) arrangements, from the cells directly."""
    pairs = {(o.color, o.shape) for o in scene.objects}
    rels = set()
    if len(scene.objects) == 2:
        a, b = scene.objects
        for first, second in ((a, b), (b, a)):
            (r1, c1), (r2, c2) = first.cell, second.cell
            for name, holds in (("left of", c1 < c2), ("right of", c1 > c2), ("above", r1 < r2), ("below", r1 > r2)):
                if holds:
                    rels.add((first.shape, name, second.shape))
    return pairs, rels


def test_heldout_compositions_never_in_train_and_all_in_heldout():
    held = heldout_compositions(ShapesConfig())
    assert len(held.color_shapes) == 3 and len(held.relations) == 4  # 2 arrangements + converses

    seen_pairs, seen_colors, seen_shapes = set(), set(), set()
    for scene in _scenes("train", 4000):
        pairs, rels = _compositions(scene)
        assert not pairs & held.color_shapes, scene
        assert not rels & held.relations, scene
        seen_pairs |= pairs
        seen_colors |= {c for c, _ in pairs}
        seen_shapes |= {s for _, s in pairs}
    # Only the combinations are new: every colour and shape is trained on.
    assert seen_colors == set(COLORS) and seen_shapes == set(SHAPES)
    assert len(seen_pairs) == len(COLORS) * len(SHAPES) - len(held.color_shapes)

    found_pairs, found_rels = set(), set()
    for scene in _scenes("heldout", 2000):
        pairs, rels = _compositions(scene)
        assert pairs & held.color_shapes or rels & held.relations, scene
        found_pairs |= pairs & held.color_shapes
        found_rels |= rels & held.relations
    assert found_pairs == held.color_shapes and found_rels == held.relations


def test_heldout_choice_follows_its_seed():
    a = heldout_compositions(ShapesConfig(heldout_seed=0))
    assert a == heldout_compositions(ShapesConfig(heldout_seed=0))
    assert any(heldout_compositions(ShapesConfig(heldout_seed=s)) != a for s in range(1, 5))


# --------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------


def test_parse_caption_round_trips_every_phrasing():
    scenes = _scenes("train", 150) + _scenes("heldout", 150)
    n_phrasings = 0
    for scene in scenes:
        for text, spec in phrasings(scene):
            assert parse_caption(text) == spec, text
            n_phrasings += 1
    assert n_phrasings >= 300 * 12
    # What the dataset actually emits parses too, and names what the scene shows.
    for split in ("train", "heldout"):
        ds = ShapesDataset(split, seed=3)
        for i in range(200):
            item = ds[i]
            assert score(parse_caption(item["caption"]), item["image"])["exact"], item["caption"]


def test_converse_caption_tells_the_same_picture_from_the_other_object():
    n = 0
    for scene in _scenes("train", 150) + _scenes("heldout", 60):
        for text, spec in phrasings(scene):
            converse = converse_caption(text)
            if spec.relation is None:
                assert converse is None, text
                continue
            n += 1
            other = parse_caption(converse)
            assert other.objects == spec.objects[::-1] and other.background == spec.background
            assert other.relation == CONVERSE[spec.relation]
            assert converse.startswith("an image of ") == text.startswith("an image of ")
            # what the converse says holds in the picture: <its first object> <its relation> <its second>
            looks = [[o for o in scene.objects if (o.shape, o.color) == (s.shape, s.color)] for s in other.objects]
            if all(len(found) == 1 for found in looks):
                assert other.relation in relations_between(looks[0][0].cell, looks[1][0].cell), (text, converse)
            assert converse_caption(converse) == text  # told back from the first object
    assert n >= 100
    assert converse_caption("An image of a Red circle above a blue square.") == "an image of a blue square below a red circle"
    for text in ("a red circle", "a red circle and a blue square", "a dog to the left of a cat", ""):
        assert converse_caption(text) is None


def test_canonical_caption_names_first_the_object_drawn_first():
    """"right of" / "below" captions become their converse, which the reader finds in the same picture;
    every other text is kept; in most relation scenes the first-named object is then the upper one,
    or the left one of a row (the one a row-by-row decoder meets first)."""
    first_met, n = 0, 0
    for scene in _scenes("train", 150) + _scenes("heldout", 60):
        picture = render(scene, 72)
        for text, spec in phrasings(scene):
            canonical = canonical_caption(text)
            if spec.relation in ("right of", "below"):
                assert canonical == converse_caption(text)
            else:
                assert canonical == text
            assert canonical_caption(canonical) == canonical  # a fixed point
            assert score(parse_caption(canonical), picture)["exact"], (text, canonical)
            if spec.relation is not None:
                first = parse_caption(canonical).objects[0]
                a = next(o for o in scene.objects if (o.shape, o.color) == (first.shape, first.color))
                b = next(o for o in scene.objects if o is not a)
                first_met += a.cell[0] < b.cell[0] or (a.cell[0] == b.cell[0] and a.cell[1] < b.cell[1])
                n += 1
    assert n >= 100 and first_met / n > 0.8
    for text in ("a red circle", "a red circle and a blue square", "a dog to the right of a cat", ""):
        assert canonical_caption(text) == text
    assert CAPTION_REWRITES["canonical_relations"] is canonical_caption


def test_parse_caption_is_forgiving_about_form_and_strict_about_content():
    expected = SceneSpec(
        (ObjectSpec("circle", "red", "small", None), ObjectSpec("square", "orange", "large", None)), "left of"
    )
    assert parse_caption("  A small RED circle to the left of  a large orange square. ") == expected
    assert parse_caption("an orange triangle on a dark gray background") == SceneSpec(
        (ObjectSpec("triangle", "orange"),), background="dark gray"
    )
    for bad in ("", "a red", "a pink circle", "a red circle next to a blue square", "two red circles"):
        with pytest.raises(ValueError, match="shapes caption"):
            parse_caption(bad)


# --------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------


def _degrade(image, rng):
    """Gaussian noise (σ = 8 levels), a slight blur and JPEG at quality 75."""
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 8, (*image.size[::-1], 3))
    image = Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=75)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _reader_benchmark(degrade=None):
    scenes = _scenes("train", 250, seed=11) + _scenes("heldout", 250, seed=11)
    assert sum(len(s.objects) == 2 for s in scenes) > 150
    rng = np.random.default_rng(0)
    images = (render(s) for s in scenes)
    if degrade:
        images = (degrade(im, rng) for im in images)
    return evaluate(zip((s.spec() for s in scenes), images))


def test_reader_reads_ground_truth():
    result = _reader_benchmark()
    for name in ("count", "color", "shape", "size", "position", "relation", "background", "exact"):
        assert result[name] >= 0.99, (name, result)


def test_reader_survives_noise_blur_and_jpeg():
    result = _reader_benchmark(_degrade)
    for name in ("count", "color", "shape", "size", "position", "relation", "background", "exact"):
        assert result[name] >= 0.95, (name, result)


def test_score_marks_what_is_wrong():
    scene = next(s for s in _scenes("train", 100) if len(s.objects) == 2)
    image = render(scene)
    a, b = scene.spec().objects
    assert score(scene.spec(), image)["exact"]

    swapped = SceneSpec((a, b), {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[scene.relation])
    assert score(swapped, image)["relation"] is False

    other_color = next(c for c in COLORS if c not in (a.color, b.color))
    wrong = score(SceneSpec((ObjectSpec(a.shape, other_color), ObjectSpec(b.shape, b.color))), image)
    assert wrong["color"] is False and wrong["shape"] is True and wrong["exact"] is False
    assert wrong["size"] is None and wrong["relation"] is None  # not named, not judged

    one = score(SceneSpec((ObjectSpec(a.shape, a.color),)), image)
    assert one["count"] is False and one["color"] is True and one["exact"] is False

    blank = Image.new("RGB", (64, 64), BACKGROUNDS["black"])
    assert read_scene(blank) == []
    assert score("a red circle", blank) == {
        "count": False, "color": False, "shape": False, "size": None,
        "position": None, "relation": None, "background": None, "exact": False,
    }


def test_aggregate_averages_only_named_attributes():
    scores = [
        {"count": True, "color": True, "size": None, "exact": True},
        {"count": False, "color": True, "size": False, "exact": False},
    ]
    out = aggregate(scores)
    assert out["n"] == 2 and out["count"] == 0.5 and out["color"] == 1.0
    assert out["size"] == 0.0 and out["n_size"] == 1 and "relation" not in out


def test_reader_rejects_bad_images():
    with pytest.raises(ValueError, match="RGB"):
        read_scene(Image.new("CMYK", (64, 64)))
    with pytest.raises(ValueError):
        read_scene(np.zeros((64, 64), dtype=np.uint8))


def _reference_components(mask):
    """Breadth-first flood fill, one component at a time."""
    labels = -np.ones(mask.shape, dtype=int)
    n = 0
    for start in zip(*np.nonzero(mask)):
        if labels[start] >= 0:
            continue
        labels[start] = n
        queue = deque([start])
        while queue:
            y, x = queue.popleft()
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and labels[ny, nx] < 0:
                    labels[ny, nx] = n
                    queue.append((ny, nx))
        n += 1
    return labels, n


@pytest.mark.parametrize("density", [0.3, 0.55, 0.7])
def test_connected_components_match_flood_fill(density):
    rng = np.random.default_rng(int(density * 100))
    mask = rng.random((40, 50)) < density
    labels, n = connected_components(mask)
    ref, ref_n = _reference_components(mask)
    assert n == ref_n
    # Same partition: labels correspond one to one.
    pairs = {(int(a), int(b)) for a, b in zip(labels[mask], ref[mask])}
    assert len(pairs) == n and (labels[~mask] == -1).all()


def test_default_world_is_drawn_from_a_small_patch_vocabulary():
    """Objects meet the 8-px code grid the same way everywhere: a ×8 VQ can hold every patch."""
    seen = set()
    for split in ("train", "heldout"):
        ds = ShapesDataset(split=split, seed=3)
        for i in range(600):
            a = np.asarray(ds[i]["image"])
            seen.update(a[y : y + 8, x : x + 8].tobytes() for y in range(0, 72, 8) for x in range(0, 72, 8))
    assert len(seen) <= 768  # fits the default VQ codebook (about 750 over 40 k images)
