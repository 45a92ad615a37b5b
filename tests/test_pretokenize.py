"""Pre-tokenisation: codes on disk equal the VQ's own encoding; folders are complete or absent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmgen.data.pretokenize import CodesDataset, _ShapesImages, collate_codes, encode_dataset, main
from mmgen.models.vq import VQConfig, VQModel
from mmgen.text.tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def vq(tmp_path_factory):
    torch.manual_seed(0)
    model = VQModel(VQConfig(image_size=16, channels=8, channel_mult=(1, 2), codebook_size=32, code_dim=4, mid_res_blocks=1)).eval()
    path = tmp_path_factory.mktemp("vq")
    model.save_pretrained(path)
    return model, path


def test_codes_match_direct_encoding(vq, tmp_path):
    model, _ = vq
    items = _ShapesImages(20, "train", 0, 16)
    out = encode_dataset(model, items, tmp_path / "codes", batch_size=7, progress=False)
    codes = np.load(out / "codes.npy")
    images = torch.stack([items[i]["image"] for i in range(20)])
    assert codes.shape == (20, 16) and codes.dtype == np.uint16
    assert np.array_equal(codes, model.encode(images).reshape(20, -1).numpy())
    assert not (tmp_path / ".codes.partial").exists()

    tok = TextTokenizer.train([items.ds[i]["caption"] for i in range(20)], kind="word")
    ds = CodesDataset(out, tok, context_len=12)
    assert ds.captions[3] == items.ds[3]["caption"]
    batch = collate_codes([ds[0], ds[1], ds[2]])
    assert batch["codes"].shape == (3, 16) and batch["text_ids"].shape == batch["text_mask"].shape
    assert torch.equal(batch["codes"][1], torch.from_numpy(codes[1].astype(np.int64)))
    with pytest.raises(FileExistsError, match="overwrite"):
        encode_dataset(model, items, out, progress=False)


def test_cli_and_missing_files(vq, tmp_path, capsys):
    _, vq_path = vq
    assert main(["--vq", str(vq_path), "--n", "8", "--out", str(tmp_path / "c")]) == 0
    assert main(["--vq", str(tmp_path / "nope"), "--out", str(tmp_path / "d")]) == 1
    assert "not found" in capsys.readouterr().err
    (tmp_path / "c" / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        CodesDataset(tmp_path / "c", None, 8)


def test_two_object_share(vq, tmp_path, capsys):
    """--two-objects sets the share of two-object scenes, is recorded in meta.json, and is range-checked."""
    import json

    _, vq_path = vq
    assert main(["--vq", str(vq_path), "--n", "40", "--two-objects", "1", "--out", str(tmp_path / "c")]) == 0
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["source"]["p_two_objects"] == 1.0
    captions = [json.loads(line)["text"] for line in (tmp_path / "c" / "captions.jsonl").read_text().splitlines()]
    two = _ShapesImages(40, "train", 0, 16, p_two_objects=1.0)
    assert captions == [two.ds[i]["caption"] for i in range(40)]
    assert all(len(two.ds[i]["scene"].objects) == 2 for i in range(40))
    assert main(["--vq", str(vq_path), "--n", "4", "--two-objects", "1.5", "--out", str(tmp_path / "d")]) == 1
    assert "p_two_objects must be in [0, 1]" in capsys.readouterr().err
