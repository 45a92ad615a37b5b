"""Evaluation: reference figures behave (oracle perfect, identity VQ ceiling), SSIM sanity, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_tiny_pipeline
from mmgen.eval.cli import main
from mmgen.eval.t2i import GROUPS, direction_probe, eval_prompts, evaluate_t2i, format_report, misses, ssim, wilson_interval
from mmgen.text.directions import MIRRORED, mirror_prompt


def test_eval_prompts_are_deterministic_and_fully_specified():
    a, b = eval_prompts(5, seed=3), eval_prompts(5, seed=3)
    assert [t for t, _, _ in a["relation_heldout"]] == [t for t, _, _ in b["relation_heldout"]]
    for text, spec, scene in a["single_seen"]:
        assert len(scene.objects) == 1 and spec.objects[0].size and spec.objects[0].position
    for text, spec, scene in a["relation_seen"]:
        assert spec.relation is not None


def test_ssim_is_one_for_identical_and_lower_for_noise():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert abs(ssim(x, x) - 1) < 1e-6
    assert ssim(x, (x + torch.randn_like(x) * 0.5).clamp(-1, 1)) < 0.9


def test_t2i_eval_reports_model_and_references(tmp_path):
    pipe = make_tiny_pipeline()
    # a 16-px world is too small for the reader; evaluate the plumbing with a 64-px oracle check
    report = evaluate_t2i(pipe, n_per_group=3, contact_sheet=str(tmp_path / "sheet.png"), progress=False)
    assert set(GROUPS) <= set(report)
    for g in GROUPS:
        assert report[g]["model"]["n"] == 3
        assert 0 <= report[g]["model"]["exact"] <= 1
    assert (tmp_path / "sheet.png").is_file()
    table = format_report(report)
    assert "random_caption" in table
    header, first = table.splitlines()[:2]
    assert header.split()[2:4] == ["exact", "count"]  # count: the share with as many objects as the prompt names
    assert float(first.split()[3]) == pytest.approx(report["single_seen"]["model"]["count"], abs=1e-3)
    # the model's exact match comes with its 95 % interval, which holds the measured share
    model = report["single_seen"]["model"]
    lo, hi = model["exact_ci95"]
    assert lo <= model["exact"] <= hi and hi - lo > 0.3  # 3 prompts say little
    assert first.split()[-1] == f"{lo:.2f}-{hi:.2f}"
    assert all(line.split()[-1] == "-" for line in table.splitlines()[2:5])  # references: no interval
    # one-object groups say what was drawn instead, each miss a real one of its 3 prompts
    assert all(isinstance(report[g]["misses"], list) for g in ("single_seen", "single_heldout"))
    assert all(0 < count <= 3 and asked != drawn for asked, drawn, count in report["single_seen"]["misses"])
    assert "misses" not in report["relation_seen"]


def test_misses_tally_what_was_drawn_instead_of_the_asked_colour_and_shape():
    from PIL import Image

    from mmgen.data.shapes import render

    prompts = eval_prompts(12, seed=3)
    scenes = [scene for _, _, scene in prompts["single_seen"]]
    renders = [render(scene) for scene in scenes]
    assert misses(scenes, renders) == []  # each scene's own picture: nothing missed
    name = lambda scene: f"{scene.objects[0].color} {scene.objects[0].shape}"  # noqa: E731
    a = scenes[0]
    b = next(s for s in scenes if name(s) != name(a))
    blank = Image.new("RGB", (64, 64), (255, 255, 255))
    two = prompts["relation_seen"][0][2]
    # asked for a three times, drawn b twice and nothing once; a two-object scene is skipped
    got = misses([a, a, a, b, two], [renders[scenes.index(b)]] * 2 + [blank, renders[scenes.index(b)], blank])
    assert got == [[name(a), name(b), 2], [name(a), "nothing", 1]]
    assert misses([a] * 3, [blank] * 3, top=1) == [[name(a), "nothing", 3]]


def test_mirror_prompt_swaps_every_direction_word_and_only_those():
    text = "a small red circle to the left of a large blue square"
    assert mirror_prompt(text) == "a small red circle to the right of a large blue square"
    assert mirror_prompt("a green triangle in the top left") == "a green triangle in the bottom right"
    assert mirror_prompt("a blue square above a red circle at the bottom") == "a blue square below a red circle at the top"
    assert mirror_prompt("a purple circle in the center") == "a purple circle in the center"
    for _, items in eval_prompts(20).items():  # an involution on every evaluation prompt
        assert all(mirror_prompt(mirror_prompt(t)) == t for t, _, _ in items)


class _ReadsLeftOf:
    """A stand-in pipeline whose likelihood is 1 for prompts that say "left of", else 0."""

    device = torch.device("cpu")

    def encode_prompts(self, prompts):
        return prompts, None

    def log_likelihood(self, prompts, mask, codes):
        assert len(codes) == len(prompts)
        return torch.tensor([float("left of" in p) for p in prompts])


def test_direction_probe_counts_prompts_preferred_over_their_mirror():
    prompts = ["a red circle to the left of a blue square", "a red circle to the right of a blue square",
               "a blue square to the left of a red circle", "a red circle"]  # the last has nothing to mirror
    probe = direction_probe(_ReadsLeftOf(), prompts, torch.zeros(4, 16, dtype=torch.long), batch_size=2)
    assert probe == {"prefers_prompt": pytest.approx(2 / 3), "n": 3}
    assert direction_probe(_ReadsLeftOf(), ["a red circle"], torch.zeros(1, 16, dtype=torch.long)) == {"n": 0}


def test_direction_probe_is_chance_for_a_model_blind_to_direction_words():
    # a real pipeline, its text encoder's direction words made indistinguishable: prompt and mirror
    # then score the same, every prompt ties with its mirror and counts half
    pipe = make_tiny_pipeline()
    tok, emb = pipe.tokenizer, pipe.text_encoder.trunk.tok_emb.weight
    ids = {i for word in MIRRORED for i in tok.encode(word, add_special_tokens=False)}  # unknown words: [UNK]
    assert len(ids) > 1
    with torch.no_grad():
        emb[sorted(ids)] = emb[min(ids)].clone()
    prompts = [t for t, _, _ in eval_prompts(6)["relation_seen"]]
    codes = torch.randint(0, 32, (len(prompts), 16))
    probe = direction_probe(pipe, prompts, codes)
    assert probe["n"] == len(prompts) and probe["prefers_prompt"] == 0.5
    report = evaluate_t2i(pipe, n_per_group=2, progress=False)
    assert report["relation_seen"]["direction_probe"]["n"] == 2
    assert "direction probe" in format_report(report)


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (23, 50), (49, 50), (50, 50), (500, 1000)])
def test_wilson_interval_solves_the_score_equation(k, n):
    """Each bound p solves |k/n - p| = z sqrt(p (1 - p) / n), the definition of the Wilson
    interval; the interval holds k/n, mirrors under k -> n - k and narrows as n grows."""
    z = 1.96
    lo, hi = wilson_interval(k, n, z)
    share = k / n
    for p in (lo, hi):
        assert abs(share - p) == pytest.approx(z * (p * (1 - p) / n) ** 0.5, abs=1e-9)
    assert lo <= share <= hi and lo < hi
    mirror = wilson_interval(n - k, n, z)
    assert mirror == pytest.approx((1 - hi, 1 - lo), abs=1e-12)
    wider = wilson_interval(k, n, z=2.58)
    assert wider[0] <= lo and wider[1] >= hi
    if 0 < k < n:
        big = wilson_interval(4 * k, 4 * n, z)
        assert big[1] - big[0] < hi - lo


def test_wilson_interval_rejects_impossible_counts():
    for k, n in ((1, 0), (-1, 10), (11, 10)):
        with pytest.raises(ValueError):
            wilson_interval(k, n)


def test_oracle_is_perfect_at_64px():
    from mmgen.data.shapes import render
    from mmgen.eval.shapes_reader import aggregate, score

    items = eval_prompts(10)["relation_heldout"]
    agg = aggregate(score(spec, render(scene, 64)) for _, spec, scene in items)
    assert agg["exact"] == 1.0


def test_eval_cli_t2i(tiny_bundle, tmp_path, capsys):
    assert main(["t2i", "--bundle", str(tiny_bundle), "--n", "2", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["summary"]) == set(GROUPS)
    assert main(["t2i", "--bundle", str(tmp_path / "none"), "--out", str(tmp_path)]) == 1


def test_eval_cli_prompt_seed_picks_the_prompts(tiny_bundle, tmp_path, monkeypatch):
    """--prompt-seed reaches evaluate_t2i (default 1234, the bundle's reported evaluation)."""
    import mmgen.eval.t2i as t2i

    seeds = []
    real = t2i.evaluate_t2i
    monkeypatch.setattr(t2i, "evaluate_t2i", lambda pipe, **kw: seeds.append(kw["seed"]) or real(pipe, **kw))
    for extra in ([], ["--prompt-seed", "999"]):
        assert main(["t2i", "--bundle", str(tiny_bundle), "--n", "1", "--out", str(tmp_path), *extra]) == 0
    assert seeds == [1234, 999]
