"""`mmgen train-demo` end to end with budgets of seconds: every stage runs, the text-to-image
stage really is data-parallel over two processes, the bundle loads and draws, and --reuse keeps
finished stages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

TINY = ["--vq-minutes", "0.05", "--t2i-minutes", "0.1", "--n-images", "200", "--gpt-minutes", "0",
        "--bert-minutes", "0", "--tune-minutes", "0", "--eval-n", "2", "--threads", "1"]


def train_demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmgen.cli", "train-demo", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = train_demo("--out", str(out), "--processes", "2", "--two-objects", "1",
                      "--t2i-override=--model.text_encoder.n_layers=1", "--t2i-override=--data.code_images=100",
                      "--t2i-override=--model.image_decoder.code_embedding=factors", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_every_stage_runs_and_the_bundle_draws(demo_run):
    from mmgen.data.shapes import parse_caption
    from mmgen.pipelines import TextToImagePipeline

    out, proc = demo_run
    for stage in ("vq", "codes", "t2i", "tune", "bundle", "done"):
        assert f"[train-demo] {stage}" in proc.stdout
    pipe = TextToImagePipeline.from_pretrained(out / "bundle")
    (image,) = pipe("a red circle", num_images=1, seed=0).images
    assert image.size == (72, 72)
    index = json.loads((out / "bundle" / "model_index.json").read_text())
    assert set(index["eval"]["summary"]) == {"single_seen", "single_heldout", "relation_seen", "relation_heldout"}
    assert index["training"]["timings_s"]["t2i"] > 0
    # the options reached their stages: every pretokenized scene has two objects, the encoder one layer
    assert json.loads((out / "codes" / "meta.json").read_text())["source"]["p_two_objects"] == 1.0
    captions = [json.loads(line)["text"] for line in (out / "codes" / "captions.jsonl").read_text().splitlines()]
    assert len(captions) == 200 and all(len(parse_caption(c).objects) == 2 for c in captions)
    assert pipe.text_encoder.config.n_layers == 1
    assert index["training"]["t2i"]["experiment"]["model"]["text_encoder"]["n_layers"] == 1
    # the shipped recipe scores codes by their factors, described from 100 images here; the merge of
    # equal codes was checked first (a seconds-old VQ fails it, but the override asked for factors)
    assert pipe.image_decoder.config.code_embedding == "factors"
    check = index["training"]["t2i"]["code_factors_check"]
    assert check["code_embedding"] == "factors" and 0 <= check["fidelity"] <= 1
    assert index["training"]["t2i"]["experiment"]["data"]["code_images"] == 100
    assert (pipe.image_decoder.code_canonical != torch.arange(pipe.image_decoder.config.codebook_size)).any()


@pytest.mark.parametrize("fidelity, override, expected", [(0.96, [], "factors"), (0.5, [], "table"),
                                                         (0.5, ["--model.image_decoder.code_embedding=factors"], "factors")])
def test_factors_fall_back_to_a_table_when_the_merge_changes_images(tmp_path, monkeypatch, fidelity, override, expected):
    from mmgen import demo
    from mmgen.training import image_kinds

    (tmp_path / "meta.json").write_text(json.dumps({"source": {"kind": "shapes", "seed": 0}}))
    seen = {}

    def fake_describe(vq, source, n):
        seen.update(source=source, n=n)
        return {"fidelity": fidelity}

    monkeypatch.setattr(image_kinds, "describe_codes", fake_describe)
    lines = []
    check = demo.check_code_factors(object(), tmp_path, ["--data.code_images=123", *override],
                                    log=lambda *a, **k: lines.append(a[0]))
    assert check == {"fidelity": fidelity, "min_fidelity": image_kinds.MIN_FIDELITY, "code_embedding": expected}
    assert seen == {"source": {"kind": "shapes", "seed": 0}, "n": 123} and expected in lines[0]
    # a config that does not use factors is not checked
    assert demo.check_code_factors(object(), tmp_path, ["--model.image_decoder.code_embedding=table"]) == {}


def test_canonical_fidelity_counts_images_the_merge_changes():
    from mmgen.models.code_factors import canonical_fidelity

    class PatchVQ:  # one code per 2x2 patch; code k decodes to the value k / 10 (so codes 0 and 9 differ by 0.9)
        def encode(self, x):
            return (x[:, 0].unfold(1, 2, 2).unfold(2, 2, 2).mean((-1, -2)) * 10).round().long()

        def decode(self, codes):
            img = (codes.float() / 10).repeat_interleave(2, 1).repeat_interleave(2, 2)
            return img[:, None].expand(-1, 3, -1, -1)

    images = [torch.zeros(3, 20, 20) for _ in range(4)]
    images[1][:, :2, :2] = 0.9  # one patch of 100 (1 % of pixels): under the 2 % that counts
    images[2][:, :4, :4] = 0.9  # four patches (4 %): changed when code 9 merges into code 0
    images[3][:, :, :] = 0.9  # all of it
    identity = torch.arange(10)
    assert canonical_fidelity(PatchVQ(), images, identity) == 1.0
    merged = identity.clone()
    merged[9] = 0
    assert canonical_fidelity(PatchVQ(), images, merged) == 0.5


def test_tune_searches_the_grid_then_candidates(monkeypatch):
    """The sampling search measures every grid point, keeps the best, tries reranking at the best
    sampled setting, and stops on its budget with the best so far."""
    import mmgen.eval.t2i as t2i
    from mmgen import demo

    def fake_eval(pipe, guidance_scale, top_k, temperature, candidates, **_):
        # one best point on the grid; reranking helps a little there
        score = 0.5 - abs(guidance_scale - 1.25) - 0.01 * abs(top_k - 2) - 0.1 * abs(temperature - 0.7)
        score += 0.05 * (candidates > 1)
        return {**{g: {"model": {"exact": score}} for g in t2i.GROUPS}, "summary": {"score": score}}

    monkeypatch.setattr(t2i, "evaluate_t2i", fake_eval)
    best, trials = demo.tune_sampling(None, n_per_group=1, seed=0, budget_s=60, log=lambda *_: None)
    # top-k 1 is greedy: measured at one temperature only
    grid = len(demo.GUIDANCE) * ((len(demo.TOP_K) - 1) * len(demo.TEMPERATURE) + 1)
    assert len(trials) == grid + len(demo.CANDIDATES) - 1
    assert sum(t["top_k"] == 1 for t in trials) == len(demo.GUIDANCE)
    assert (best["guidance_scale"], best["top_k"], best["temperature"]) == (1.25, 2, 0.7)
    assert best["candidates"] == max(demo.CANDIDATES)
    # greedy best on the grid: reranking is still tried, at the best sampled setting, and kept if it wins
    def greedy_best(pipe, guidance_scale, top_k, temperature, candidates, **_):
        score = 0.5 if top_k == 1 else 0.45 - 0.01 * top_k - 0.1 * abs(temperature - 1.0) + (0.1 if candidates > 1 else 0)
        return {**{g: {"model": {"exact": score}} for g in t2i.GROUPS}, "summary": {"score": score}}

    monkeypatch.setattr(t2i, "evaluate_t2i", greedy_best)
    best, trials = demo.tune_sampling(None, n_per_group=1, seed=0, budget_s=60, log=lambda *_: None)
    reranked = [t for t in trials if t["candidates"] > 1]
    assert [(t["top_k"], t["temperature"]) for t in reranked] == [(2, 1.0)] * (len(demo.CANDIDATES) - 1)
    assert (best["top_k"], best["candidates"]) == (2, max(demo.CANDIDATES))
    monkeypatch.setattr(t2i, "evaluate_t2i", fake_eval)
    best, trials = demo.tune_sampling(None, n_per_group=1, seed=0, budget_s=0, log=lambda *_: None)
    assert len(trials) == 1
    assert best == {k: trials[0][k] for k in best} and best["guidance_scale"] == demo.GUIDANCE[0]


def test_text_to_image_stage_ran_on_two_processes(demo_run):
    out, _ = demo_run
    summary = json.loads((out / "t2i" / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["steps"] > 0
    record = json.loads((out / "bundle" / "model_index.json").read_text())["training"]["t2i"]
    assert record["processes"] == 2 and record["summary"]["num_processes"] == 2


def test_non_empty_out_needs_reuse_and_reuse_keeps_finished_stages(demo_run):
    out, _ = demo_run
    refused = train_demo("--out", str(out), *TINY)
    assert refused.returncode == 2 and "--reuse" in refused.stderr
    vq_weights = out / "vq" / "model" / "model.safetensors"
    before = vq_weights.stat().st_mtime_ns
    again = train_demo("--out", str(out), "--reuse", "--processes", "2", *TINY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert vq_weights.stat().st_mtime_ns == before  # the VQ was not trained again
    logs = again.stdout + again.stderr
    assert "training VQModel" not in logs and "training TextToImage" not in logs
    # each stage records the command that ran it: the reused ones the first run's
    training = json.loads((out / "bundle" / "model_index.json").read_text())["training"]
    made_by = training["made_by"]
    assert made_by["vq"] == made_by["t2i"] and "--two-objects 1" in made_by["vq"] and "--reuse" not in made_by["vq"]
    assert made_by["tune"] == made_by["t2i"] and "--reuse" in training["command"]  # the search went with its model
    # and keep what the first run recorded about them: the VQ's training summary beside its round trip
    assert training["vq"]["summary"]["steps"] > 0 and "exact" in training["vq"]["shapes_reader_roundtrip"]


def test_a_bad_t2i_override_fails_before_any_training(tmp_path):
    out = tmp_path / "run"
    for bad, says in (("--model.image_decoder.code_embedding=pixels", "code_embedding"),
                      ("--model.image_decoder.max_len=10", "max_len"),
                      ("--train.no_such_key=1", "no_such_key")):
        proc = train_demo("--out", str(out), f"--t2i-override={bad}", *TINY)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert not out.exists()  # refused before the VQ stage made anything


def test_recorded_command_keeps_no_local_paths():
    from mmgen.demo import recorded_command

    assert recorded_command(["--out", "runs/x", "--shakespeare", "/home/me/data/tiny.txt", "--threads", "2"]) == \
        "mmgen train-demo --out runs/x --shakespeare tiny.txt --threads 2"
    assert recorded_command(["--shakespeare=/tmp/a/b.txt"]) == "mmgen train-demo --shakespeare=b.txt"
