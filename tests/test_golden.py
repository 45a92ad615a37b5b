"""The shipped bundle's outputs are pinned: a refactor that changes a pixel, a generated word or a
fill-mask score fails here. tests/golden/shipped_bundle.json was recorded by
``python scripts/golden_outputs.py --write`` before the redesign; re-record it only when a new
bundle is shipped (and say so in the commit)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import golden_outputs  # noqa: E402


@pytest.fixture(scope="module")
def outputs():
    return golden_outputs.compute()


@pytest.fixture(scope="module")
def recorded():
    return json.loads(golden_outputs.GOLDEN.read_text())


def test_text_to_image_pixels_unchanged(outputs, recorded):
    assert len(outputs["t2i"]) == 20
    for now, before in zip(outputs["t2i"], recorded["t2i"]):
        assert now == before, f"{before['prompt']!r} seed {before['seed']} {before['kwargs']} changed"
    assert outputs["complete"] == recorded["complete"]


def test_text_models_unchanged(outputs, recorded):
    assert outputs["gpt"] == recorded["gpt"]
    assert outputs["bert"] == recorded["bert"]
