"""Codes described by two-tone factors: the description, the decoder that scores codes by it, and
the reason it exists: drawing a code never seen as a training target from factors that were."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mmgen.config import ConfigError, ImageDecoderConfig
from mmgen.models.code_factors import source_patches, two_tone_factors
from mmgen.models.image_decoder import ImageDecoder

RED, BLUE, BLACK, GRAY = (220, 30, 30), (40, 80, 235), (0, 0, 0), (48, 48, 48)


def _patch(dark, light=None, mask=None, f=4) -> torch.Tensor:
    out = torch.tensor(dark, dtype=torch.uint8).expand(f, f, 3).clone()
    if light is not None:
        out[mask] = torch.tensor(light, dtype=torch.uint8)
    return out


def test_two_tone_factors_split_colour_from_bitmap_and_merge_equal_descriptions():
    corner = torch.zeros(4, 4, dtype=torch.bool)
    corner[:2, :2] = True
    edge = torch.zeros(4, 4, dtype=torch.bool)
    edge[:, :1] = True
    patches = torch.stack([
        _patch(BLACK, RED, corner),   # 0
        _patch(BLACK, BLUE, corner),  # 1: same bitmap, other object colour
        _patch(GRAY, RED, edge),      # 2: other background and bitmap
        _patch(BLACK),                # 3: background only
        _patch(RED),                  # 4: inside a red object
        _patch(BLACK, RED, corner),   # 5: same as 0, used more often
        _patch((3, 2, 1), (223, 28, 33), corner),  # 6: near-identical colours share palette ids with 0
    ])
    counts = torch.tensor([5, 3, 3, 9, 2, 8, 1])
    d = two_tone_factors(patches, counts)
    f = d["factors"]
    assert f[0].tolist() == f[5].tolist() == f[6].tolist()
    assert f[0, 0] == f[1, 0] and f[0, 2] == f[1, 2] and f[0, 1] != f[1, 1]  # only the light colour differs
    assert f[2, 1] == f[0, 1] and f[2, 0] != f[0, 0] and f[2, 2] != f[0, 2]
    none = len(d["palette"])
    assert f[3, 1] == none and f[4, 1] == none and f[3, 0] != f[4, 0]  # one-colour patches: no light colour
    assert f[3, 2] == f[4, 2] and not d["masks"][f[3, 2]].any()
    assert d["masks"][f[0, 2]].reshape(4, 4).equal(corner)
    # 5 is the most frequent of {0, 5, 6}: it is drawn for all three; other codes stand for themselves
    assert d["canonical"].tolist() == [5, 1, 2, 3, 4, 5, 5]
    assert len(d["palette"]) == 4  # black, gray, red, blue


def test_source_patches_are_the_patch_each_code_encodes_most_often():
    f = 2

    class FakeVQ:  # code = the patch's top-left red value, quantised to 4 codes
        config = SimpleNamespace(codebook_size=5, downsample=f)

        def encode(self, x):
            return (x[:, 0, ::f, ::f] > 0).long() + 2 * (x[:, 1, ::f, ::f] > 0).long()

    images = []
    for i in range(6):
        x = -torch.ones(3, 4, 4)
        x[0, :2, :2] = 1.0  # top-left patch: code 1 ...
        if i < 2:
            x[2, 1, 1] = 1.0  # ... drawn with a blue corner in 2 of 6 images
        images.append(x)
    patches, counts = source_patches(FakeVQ(), iter(images), batch_size=4)
    assert counts.tolist() == [18, 6, 0, 0, 0]
    assert patches[1].tolist() == [[[255, 0, 0]] * 2] * 2  # the mode: plain red, not the blue-corner variant
    assert patches[0].tolist() == [[[0, 0, 0]] * 2] * 2
    assert not patches[2:].any()  # unused codes stay zero


def _factor_decoder(code_embedding: str, codebook_size: int = 4, sizes=(2, 2, 1)) -> ImageDecoder:
    torch.manual_seed(0)
    return ImageDecoder(ImageDecoderConfig(
        codebook_size=codebook_size, vocab_size=codebook_size + 1, grid_h=1, grid_w=1, context_dim=8,
        context_len=2, max_len=1, dim=16, n_layers=1, n_heads=2, caption_dropout=0.0,
        code_embedding=code_embedding, code_factor_sizes=sizes,
    ))


def test_a_codes_score_is_fixed_by_the_scores_of_codes_sharing_its_factors():
    """What lets the model draw a code it never saw as a target: with factors, a code's logit is a
    sum of per-factor scores, so for any hidden state the held-out pair (colour 2, shape 2) scores
    score(2, 0) + score(0, 2) - score(0, 0), all codes that training does shape. (Whether the
    trained model's factor scores compose well is measured by `mmgen eval t2i`: held-out
    one-object prompts.) A free row per code has no such tie."""
    pairs = [(c, s) for c in range(3) for s in range(3)]
    ctx = torch.randn(5, 2, 8)

    def logits(dec):
        with torch.no_grad():
            return dec.eval()(torch.full((5, 1), 9), ctx)[0][:, 0]  # (5, 9)

    dec = _factor_decoder("factors", 9, (3, 3, 1))
    dec.set_code_factors(torch.tensor([[c, s, 0] for c, s in pairs]), torch.arange(9))
    with torch.no_grad():  # any weights: the identity holds whatever was learnt
        for p in dec.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    out = logits(dec)
    code = {pair: i for i, pair in enumerate(pairs)}
    composed = out[:, code[2, 0]] + out[:, code[0, 2]] - out[:, code[0, 0]]
    assert torch.allclose(out[:, code[2, 2]], composed, atol=1e-4)
    table = logits(_factor_decoder("table", 9, (3, 3, 1)))
    assert not torch.allclose(table[:, code[2, 2]], table[:, code[2, 0]] + table[:, code[0, 2]] - table[:, code[0, 0]], atol=1e-4)


def test_factor_decoder_scores_only_canonical_codes_and_trains_on_them(tmp_path):
    dec = _factor_decoder("factors")
    dec.set_code_factors(torch.tensor([[0, 0, 0], [0, 1, 0], [0, 1, 0], [1, 1, 0]]), torch.tensor([0, 1, 1, 3]))
    ctx = torch.randn(2, 2, 8)
    with torch.no_grad():
        logits, loss_2 = dec(torch.full((2, 1), 4), ctx, labels=torch.tensor([[2], [3]]))
        _, loss_1 = dec(torch.full((2, 1), 4), ctx, labels=torch.tensor([[1], [3]]))
    assert (logits[..., 2] <= -1e4 + 1e-3).all()  # code 2 is drawn as code 1
    assert torch.equal(loss_1, loss_2)  # a target of code 2 is a target of its canonical code
    assert torch.allclose(logits.softmax(-1)[..., 2], torch.zeros(2, 1), atol=1e-30)
    # inputs: codes with the same factors have the same embedding
    x1, _ = dec._grid_inputs(torch.tensor([[1]]), 0, dec.factor_vectors()[0])
    x2, _ = dec._grid_inputs(torch.tensor([[2]]), 0, dec.factor_vectors()[0])
    assert torch.equal(x1, x2)
    dec.save_pretrained(tmp_path / "dec")
    again = ImageDecoder.from_pretrained(tmp_path / "dec").eval()
    assert torch.equal(again.code_factors, dec.code_factors) and torch.equal(again.code_canonical, dec.code_canonical)
    with torch.no_grad():
        assert torch.equal(again(torch.full((2, 1), 4), ctx)[0], dec.eval()(torch.full((2, 1), 4), ctx)[0])


def test_factor_descriptions_that_do_not_fit_are_refused():
    dec = _factor_decoder("factors")
    with pytest.raises(ValueError, match="need 3 dark colours.*code_factor_sizes"):
        dec.set_code_factors(torch.tensor([[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 0, 0]]), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="map to themselves"):
        dec.set_code_factors(torch.zeros(4, 3, dtype=torch.long), torch.tensor([1, 2, 2, 2]))
    with pytest.raises(ValueError, match="do not fit"):
        dec.set_code_factors(torch.zeros(5, 3, dtype=torch.long), torch.arange(5))
    with pytest.raises(ConfigError, match="code_factor_sizes"):
        ImageDecoderConfig(code_factor_sizes=(4, 0, 8))
