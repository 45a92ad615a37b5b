"""One path for a prompt: the text-to-image pipeline checks, seeds, rewrites and tokenizes once and
says what the model will not read as written; one seed rule everywhere; images helpers in one place."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_pipeline
from PIL import Image

import mmgen.pipelines as pipelines
from mmgen.checks import MAX_SEED, check_seed, resolve_seed
from mmgen.pipelines import TextToImageOutput


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline()


def test_a_call_returns_images_and_notices(pipe):
    out = pipe("a small red circle", num_images=2, seed=0)
    assert isinstance(out, TextToImageOutput) and out.notices == []
    assert len(out.images) == 2 and all(isinstance(i, Image.Image) for i in out.images)
    done = pipe.complete(out.images[0], 2, "a large blue square", seed=1)
    assert isinstance(done, TextToImageOutput) and len(done.images) == 1


def test_truncation_is_counted_on_the_rewritten_prompt(pipe, monkeypatch):
    """The model reads the rewritten prompt, so that is what the notice measures and quotes."""
    prompt = "a large blue square in the top left"  # 8 words + </s>: fits the 12 tokens as typed
    assert pipe(prompt, seed=0).notices == []
    monkeypatch.setattr(pipelines, "PROMPT_REWRITES", {"twice": lambda p: f"{p} {p}"})
    monkeypatch.setattr(pipe, "prompt_rewrite", "twice")
    with pytest.warns(UserWarning, match="Prompt truncated"):
        out = pipe(prompt, seed=0)
    (notice,) = out.notices  # 16 words + </s> read as 11 + </s>: 5 dropped
    assert notice.startswith("Prompt truncated: the image model reads the first 12 tokens, 5 more were dropped")
    assert notice.endswith("ignored: \u201csquare in the top left\u201d")


def test_unknown_words_are_named_as_the_model_reads_them(pipe, monkeypatch):
    out = pipe("a zorblax circle beside a Quux", seed=0, negative_prompt="a blorp", guidance_scale=2.0)
    (prompt_notice, negative_notice) = out.notices
    assert "\u201czorblax\u201d, \u201cbeside\u201d, \u201cQuux\u201d in the prompt" in prompt_notice
    assert prompt_notice.endswith(f"it reads each as {pipe.tokenizer.unk_token}")
    assert "\u201cblorp\u201d in the negative prompt" in negative_notice
    # "below" is not in the tiny vocabulary; the shapes rewrite turns it into "above", which is
    monkeypatch.setattr(pipe, "prompt_rewrite", None)
    assert any("below" in n for n in pipe("a red circle below a blue square", seed=0).notices)
    monkeypatch.setattr(pipe, "prompt_rewrite", "canonical_relations")
    assert pipe("a red circle below a blue square", seed=0).notices == []


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 1.5, True, "7", None])
def test_one_seed_rule(seed, tiny_bundle, tmp_path, pipe):
    """The pipeline, the history store and the web UI refuse the same seeds with the same words."""
    from mmgen.store import HistoryStore
    from webui.studio import RequestError, form_seed

    store = HistoryStore(tmp_path / "h.sqlite3")
    if seed is None:  # the policy: None (the form's -1) picks a seed, which is then a concrete one
        assert 0 <= resolve_seed(None) < 2**32 and 0 <= form_seed(-1) < 2**32
        with pytest.raises(ValueError, match="seed must be a whole number"):
            store.add("txt2img", "x", {}, None, "m")
        return
    with pytest.raises(ValueError) as expected:
        check_seed(seed)
    with pytest.raises(ValueError) as from_pipe:
        pipe("a red circle", seed=seed)
    with pytest.raises(ValueError) as from_store:
        store.add("txt2img", "x", {}, seed, "m")
    assert str(from_pipe.value) == str(from_store.value) == str(expected.value)
    assert str(expected.value).startswith("seed must be a whole number in [0, 2^53 = 9007199254740992]")
    if seed != -1:  # the form's -1 means "random"
        with pytest.raises(RequestError, match=r"seed must be a whole number in \[0, 2\^53"):
            form_seed(seed)
    store.close()


def test_one_max_seed():
    import mmgen.store
    import webui.studio  # noqa: F401  (imports the rule, defines no bound of its own)

    assert pipelines.MAX_SEED is mmgen.store.MAX_SEED is MAX_SEED == 2**53
    assert not hasattr(webui.studio, "MAX_SEED")
    assert check_seed(float(MAX_SEED)) == MAX_SEED and check_seed(torch.tensor(3).item()) == 3


def test_the_rewrite_registry_lives_outside_the_data_worlds():
    """The pipeline resolves a bundle's declared rewrite by name; mmgen.text never imports mmgen.data."""
    import ast
    from pathlib import Path

    from mmgen.data.shapes import CAPTION_REWRITES, canonical_caption
    from mmgen.text.rewrite import PROMPT_REWRITES

    assert PROMPT_REWRITES["canonical_relations"] is canonical_caption and CAPTION_REWRITES is PROMPT_REWRITES
    with pytest.raises(KeyError, match="unknown prompt rewrite 'sideways'"):
        PROMPT_REWRITES["sideways"]
    root = Path(pipelines.__file__).parent
    for path in [root / "pipelines.py", *(root / "text").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "data" not in (node.module or "").split("."), f"{path.name} imports {node.module}"


def test_image_helpers_round_trip_and_contact_sheet():
    from mmgen.images import contact_sheet, image_to_tensor, tensor_to_images

    g = torch.Generator().manual_seed(0)
    arr = torch.randint(0, 256, (5, 7, 3), generator=g, dtype=torch.uint8).numpy()
    img = Image.fromarray(arr)
    pixels = image_to_tensor(img)  # (3, 5, 7)
    assert pixels.shape == (3, 5, 7) and torch.equal(pixels, torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1)
    (back,) = tensor_to_images(pixels[None])
    assert back.tobytes() == img.tobytes()
    sheet = contact_sheet([[img, img], [img]])
    assert sheet.size == (14, 10)
    assert sheet.crop((7, 0, 14, 5)).tobytes() == img.tobytes()
    assert set(sheet.crop((7, 5, 14, 10)).getdata()) == {(255, 255, 255)}  # the short row ends in white
