"""The web UI, driven over HTTP with gradio_client against an in-process server on a free port.

One server (tiny bundle + tiny GPT/BERT) serves most tests; results are checked against the
pipelines called directly with the same parameters, not only for shapes.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio_client")
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from mmgen.pipelines import read_png_metadata  # noqa: E402
from webui_support import client, full_bundle, serving  # noqa: E402

PROMPT = "a small red circle"


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    from webui.app import build_app

    root = tmp_path_factory.mktemp("webui")
    demo = build_app(full_bundle(tiny_bundle, root / "bundle"), root / "outputs")
    with serving(demo, max_file_size="100kb") as url:
        yield demo, url, client(url)


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _txt2img(c, prompt=PROMPT, negative="", n=2, guidance=1.0, temperature=1.0, top_k=8, top_p=1.0, seed=7):
    return c.predict(prompt, negative, n, guidance, temperature, top_k, top_p, seed, api_name="/txt2img")


def test_named_endpoints(server):
    from webui.app import API_NAMES

    _, _, c = server
    names = set(c.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {f"/{n}" for n in API_NAMES} <= names


def test_txt2img_streams_previews_then_pngs_equal_to_the_pipeline(server):
    demo, _, c = server
    job = c.submit(PROMPT, "", 3, 1.0, 1.0, 8, 1.0, 7, api_name="/txt2img")
    frames = list(job)
    gallery, status, infos = frames[-1]
    assert len(gallery) == 3 and "Saved 3 PNG(s)" in status
    previews = [f for f in frames[:-1] if f[1].startswith("Sampling")]
    assert len(previews) >= 2, "previews must stream before the final images"
    assert [int(f[1].split()[1].split("/")[0]) for f in previews] == sorted(int(f[1].split()[1].split("/")[0]) for f in previews)

    expected = demo.studio.t2i(PROMPT, num_images=3, guidance_scale=1.0, temperature=1.0, top_k=8, top_p=1.0, seed=7).images
    for i, (item, info) in enumerate(zip(gallery, infos)):
        meta = read_png_metadata(item["image"])  # the PNG as the client downloaded it
        assert meta["prompt"] == PROMPT and meta["seed"] == 7 + i and meta["size"] == [16, 16]
        assert item["caption"] == f"seed {7 + i}"
        got = _pixels(item["image"])
        assert got.shape == (16, 16, 3)
        assert np.array_equal(got, np.asarray(expected[i])), "PNG pixels must be exactly the pipeline's"
        saved = demo.studio.outputs_dir / info["file"]
        assert np.array_equal(_pixels(saved), got) and read_png_metadata(saved) == meta
    assert not list(demo.studio.outputs_dir.rglob("*.tmp*")), "PNGs are written atomically"


def test_samples_per_image_rerank_like_the_pipeline(server):
    """The "samples per image" control reaches the pipeline: the PNGs are its reranked images,
    their metadata and the history record say how many were sampled."""
    demo, _, c = server
    gallery, _, infos = c.predict(PROMPT, "", 2, 1.0, 1.0, 8, 1.0, 21, 3, api_name="/txt2img")
    expected = demo.studio.t2i(PROMPT, num_images=2, guidance_scale=1.0, temperature=1.0, top_k=8, top_p=1.0,
                               seed=21, candidates=3).images
    plain = demo.studio.t2i(PROMPT, num_images=2, guidance_scale=1.0, temperature=1.0, top_k=8, top_p=1.0, seed=21).images
    assert any(not np.array_equal(np.asarray(e), np.asarray(p)) for e, p in zip(expected, plain))
    for item, want in zip(gallery, expected):
        assert np.array_equal(_pixels(item["image"]), np.asarray(want))
        assert read_png_metadata(item["image"])["candidates"] == 3
    assert demo.studio.store.get(infos[0]["history_id"]).params["candidates"] == 3


def test_history_rows_found_by_keyword_and_semantic_search(server):
    demo, _, c = server
    _, _, infos = _txt2img(c, prompt="a yellow circle to the left of a purple square", seed=11)
    record_id = infos[0]["history_id"]
    record = demo.studio.store.get(record_id)
    assert record.kind == "txt2img" and record.seed == 11 and record.model_id == "tiny-test"
    assert record.params == {"num_images": 2, "guidance_scale": 1.0, "temperature": 1.0, "top_k": 8, "top_p": 1.0,
                             "candidates": 1, "size": [16, 16]}
    assert all((demo.studio.outputs_dir / f).is_file() for f in record.files)
    manifest = [json.loads(line) for line in (demo.studio.outputs_dir / "history.jsonl").read_text().splitlines()]
    assert record_id in [row["id"] for row in manifest]

    for mode in ("keyword", "semantic", "hybrid"):
        gallery, table, info, = c.predict("purple square", mode, "all", 1, api_name="/history_search")
        ids = [row[0] for row in table["data"]]
        assert record_id in ids, (mode, table)
        if mode != "semantic":
            assert ids[0] == record_id
    found_by = {row[0]: row[-1] for row in table["data"]}
    assert found_by[record_id] == "keyword+semantic"
    # an empty query lists everything, newest first, with the images of the page
    gallery, table, info = c.predict("", "hybrid", "txt2img", 1, api_name="/history_search")
    assert table["data"][0][0] == record_id and "record(s)" in info
    assert gallery[0]["caption"].startswith(f"#{record_id} · seed 11")


def test_restore_gives_back_the_same_parameters(server):
    _, _, c = server
    _, _, infos = c.predict("a white triangle above an orange circle", "blue", 1, 2.5, 0.7, 5, 0.9, 2**53, 2,
                            api_name="/txt2img")
    restored, *form = c.predict(infos[0]["history_id"], api_name="/history_restore")
    assert restored["prompt"] == "a white triangle above an orange circle" and restored["negative_prompt"] == "blue"
    assert restored["seed"] == 2**53 and restored["kind"] == "txt2img"
    assert restored["params"] == {"num_images": 1, "guidance_scale": 2.5, "temperature": 0.7, "top_k": 5,
                                  "top_p": 0.9, "candidates": 2, "size": [16, 16]}
    # the text-to-image form comes first among the filled fields
    assert form[:9] == ["a white triangle above an orange circle", "blue", 1, 2.5, 0.7, 5, 0.9, 2**53, 2]


def test_png_info_reads_parameters_back(server):
    _, _, c = server
    gallery, _, _ = _txt2img(c, n=1, seed=3)
    text, meta = c.predict(handle_file(gallery[0]["image"]), api_name="/png_info")
    assert text.startswith(PROMPT + "\n") and "Seed: 3" in text
    assert meta["prompt"] == PROMPT and meta["seed"] == 3 and meta["top_k"] == 8


def test_png_info_without_parameters_and_upload_limit(server, tmp_path):
    _, _, c = server
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8), "red").save(plain)
    with pytest.raises(AppError, match="no generation parameters"):
        c.predict(handle_file(str(plain)), api_name="/png_info")
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 100_000
    with pytest.raises(Exception, match="(?i)size|large|413"):
        c.predict(handle_file(str(big)), api_name="/png_info")


def test_complete_keeps_the_top_rows(server, tmp_path):
    demo, _, c = server
    start = tmp_path / "start.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(start)
    gallery, status, infos = c.predict(handle_file(str(start)), 2, PROMPT, "", 2, 1.0, 1.0, 8, 1.0, 4,
                                       api_name="/complete")
    assert len(gallery) == 2 and "Saved 2 PNG(s)" in status
    expected = demo.studio.t2i.complete(Image.open(start).convert("RGB"), 2, PROMPT, num_images=2,
                                        guidance_scale=1.0, temperature=1.0, top_k=8, top_p=1.0, seed=4).images
    for item, exp in zip(gallery, expected):
        assert np.array_equal(_pixels(item["image"]), np.asarray(exp))
        assert read_png_metadata(item["image"])["keep_rows"] == 2
    assert demo.studio.store.get(infos[0]["history_id"]).kind == "complete"
    with pytest.raises(AppError, match="greater than maximum value 3"):
        c.predict(handle_file(str(start)), 4, PROMPT, "", 1, 1.0, 1.0, 8, 1.0, 4, api_name="/complete")


def test_attention_heatmap_per_prompt_word(server):
    demo, _, c = server
    gallery, _, _ = _txt2img(c, n=1, seed=5)
    heatmaps = c.predict(handle_file(gallery[0]["image"]), "", api_name="/attention")  # prompt from the PNG
    tokens, maps = demo.studio.t2i.cross_attention_maps(PROMPT, Image.open(gallery[0]["image"]))
    assert [h["caption"] for h in heatmaps] == tokens and len(tokens) == maps.shape[0] >= 4
    first = Image.open(heatmaps[0]["image"])
    assert first.size == (256, 256)  # the 16-px image enlarged by whole pixels for display
    with pytest.raises(AppError, match="choose an image"):
        c.predict(None, PROMPT, api_name="/attention")


def test_generate_text_streams_and_matches_the_pipeline(server):
    demo, _, c = server
    job = c.submit("the cat sat", 12, 0.8, 40, 0.95, 1.1, 9, api_name="/generate_text")
    frames = list(job)
    text, status = frames[-1]
    expected = demo.studio.gpt("the cat sat", max_new_tokens=12, temperature=0.8, top_k=40, top_p=0.95,
                               repetition_penalty=1.1, seed=9)[0]["generated_text"]
    assert text == expected and status.startswith("Done: seed 9")
    partial = [f[0] for f in frames[:-1] if f[1] == "Generating…"]
    assert len(partial) >= 3 and all(expected.startswith(p) or p.startswith("the cat sat") for p in partial)
    record = demo.studio.store.get(int(status.split("#")[-1]))
    assert record.kind == "text" and record.prompt + record.output_text == expected


def test_fill_mask_matches_the_pipeline(server):
    demo, _, c = server
    label, table, attention, status = c.predict("the cat [MASK] on the mat", 4, api_name="/fill_mask")
    expected = demo.studio.bert("the cat [MASK] on the mat", top_k=4)
    assert [row[2] for row in table["data"]] == [e["token_str"] for e in expected]
    assert [row[4] for row in table["data"]] == [e["sequence"] for e in expected]
    assert label["label"] == expected[0]["token_str"]
    assert max(abs(conf["confidence"] - e["score"]) for conf, e in zip(label["confidences"], expected)) < 1e-6
    assert [a["token"].strip() for a in attention][:3] == ["[CLS]", "the", "cat"]
    assert max(a["class_or_confidence"] for a in attention) == 1.0
    assert "history #" in status
    # two masks: a table row per candidate per mask
    _, table, _, _ = c.predict("the [MASK] sat on the [MASK]", 3, api_name="/fill_mask")
    assert [row[:2] for row in table["data"]] == [[m, r] for m in (1, 2) for r in (1, 2, 3)]


@pytest.mark.parametrize(
    "args, message",
    [
        (("   ",), "prompt is empty"),
        (("x" * 2001,), "2001 characters long; the limit is 2000"),
        ((PROMPT, "", 1, 1.0, 1.0, 8, 1.0, 2**53 + 1), r"seed must be a whole number in \[0, 2\^53.*\(-1 picks a random one\)"),
        # values outside a slider's range are refused by Gradio itself, also with a message
        ((PROMPT, "", 0), "less than minimum value 1"),
        ((PROMPT, "", 1, 31.0), "greater than maximum value 30"),
        ((PROMPT, "", 1, 1.0, 0.0), "less than minimum value 0.05"),
        ((PROMPT, "", 1, 1.0, 1.0, 8, 0.0), "less than minimum value 0.05"),
    ],
)
def test_txt2img_validation_errors_are_messages(server, args, message):
    _, _, c = server
    full = list(args) + [PROMPT, "", 1, 1.0, 1.0, 8, 1.0, 0][len(args):]
    with pytest.raises(AppError, match=message) as err:
        c.predict(*full, api_name="/txt2img")
    assert "Traceback" not in str(err.value)


def test_other_validation_errors_are_messages(server):
    _, _, c = server
    with pytest.raises(AppError, match=r"no mask: write \[MASK\]"):
        c.predict("no mask here", 3, api_name="/fill_mask")
    with pytest.raises(AppError, match="greater than maximum value 20"):
        c.predict("the [MASK]", 50, api_name="/fill_mask")
    with pytest.raises(AppError, match="empty"):
        c.predict("  ", 5, 0.8, 40, 0.95, 1.1, 1, api_name="/generate_text")
    with pytest.raises(AppError, match="no history record 999999"):
        c.predict(999999, api_name="/history_restore")
    with pytest.raises(AppError, match="rating must be one of"):
        c.predict(1, 5, api_name="/history_rate")


def test_overlong_prompt_is_truncated_with_a_visible_notice(server):
    _, _, c = server
    long_prompt = " ".join(["a large blue square"] * 6)  # 24 words; the tiny model reads 12 tokens
    _, status, _ = _txt2img(c, prompt=long_prompt, n=1)
    assert "Prompt truncated" in status and "reads the first 12" in status and "Saved 1 PNG(s)" in status


def _slow_decoder(studio, seconds=0.04):
    """Make each image-decoder step take a while, so a run can be stopped half way."""
    return studio.t2i.image_decoder.register_forward_pre_hook(lambda module, args: time.sleep(seconds))


def test_stop_endpoint_ends_a_run_within_a_step(server):
    demo, _, c = server
    rows_before = demo.studio.store.list()[1]
    hook = _slow_decoder(demo.studio)
    try:
        started = time.monotonic()
        job = c.submit(PROMPT, "", 1, 1.0, 1.0, 8, 1.0, 1, api_name="/txt2img")
        while not any(o and str(o[1]).startswith("Sampling") for o in job.outputs()):
            assert time.monotonic() - started < 20
            time.sleep(0.01)
        assert c.predict(api_name="/stop") == "Stopped 1 running generation(s)."
        frames = list(job)
    finally:
        hook.remove()
    status = frames[-1][1]
    assert status.startswith("Stopped after") and "nothing was saved" in status
    assert int(status.split()[2]) < 16  # of 16 codes
    assert demo.studio.store.list()[1] == rows_before
    assert c.predict(api_name="/stop") == "Nothing was running."


def test_client_cancel_stops_the_sampling_loop(server):
    demo, _, c = server
    steps = []
    counter = demo.studio.t2i.image_decoder.register_forward_pre_hook(lambda m, a: steps.append(1))
    hook = _slow_decoder(demo.studio)
    try:
        job = c.submit(PROMPT, "", 1, 1.0, 1.0, 8, 1.0, 2, api_name="/txt2img")
        deadline = time.monotonic() + 20
        while not any(o and str(o[1]).startswith("Sampling") for o in job.outputs()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        job.cancel()
        time.sleep(0.6)
        seen = len(steps)
        time.sleep(0.3)
    finally:
        hook.remove()
        counter.remove()
    assert seen == len(steps), "the sampling thread must stop once the job is cancelled"
    assert seen < 16


def test_rate_and_delete(server):
    demo, _, c = server
    _, _, infos = _txt2img(c, prompt="a green triangle in the top left", n=2, seed=21)
    record_id = infos[0]["history_id"]
    files = [demo.studio.outputs_dir / i["file"] for i in infos]
    assert c.predict(record_id, 1, api_name="/history_rate")["rating"] == 1
    _, table, _ = c.predict("green triangle", "keyword", "all", 1, api_name="/history_search")
    assert [row[6] for row in table["data"] if row[0] == record_id] == ["👍"]
    cleared_id, info = c.predict(record_id, api_name="/history_delete")
    assert cleared_id is None and info == f"Deleted record #{record_id}."
    assert not any(f.exists() for f in files)
    _, table, _ = c.predict("green triangle", "keyword", "all", 1, api_name="/history_search")
    assert record_id not in [row[0] for row in table["data"]]


def test_eight_clients_three_requests_each(server):
    demo, url, _ = server
    before = demo.studio.store.list(kind="txt2img")[1]
    errors, results = [], []

    def user(i):
        try:
            c = client(url)
            for j in range(3):
                gallery, status, infos = _txt2img(c, prompt=f"a large blue square number {i}", n=1, seed=100 * i + j)
                results.append((i, j, infos[0]["history_id"], len(gallery)))
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=user, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 24 and all(n == 1 for *_, n in results)
    assert demo.studio.store.list(kind="txt2img")[1] == before + 24
    assert len({r[2] for r in results}) == 24
    seeds = {r.seed for r in demo.studio.store.list(per_page=24, kind="txt2img")[0]}
    assert seeds == {100 * i + j for i in range(8) for j in range(3)}


def _status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_only_the_outputs_folder_is_served(server, tmp_path):
    demo, url, c = server
    gallery, _, infos = _txt2img(c, n=1, seed=8)
    inside = demo.studio.outputs_dir / infos[0]["file"]
    assert _status_of(f"{url}gradio_api/file={inside}") == 200
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    bundle_weights = next(Path(demo.studio.t2i.folder).rglob("model.safetensors"))
    for path in (secret, bundle_weights, demo.studio.db_path, demo.studio.outputs_dir / "history.jsonl",
                 f"{demo.studio.outputs_dir}/../bundle/model_index.json", Path(__file__).resolve()):
        assert _status_of(f"{url}gradio_api/file={path}") in (403, 404), path


def test_auth_records_the_user_and_shows_only_their_history(server):
    from webui.app import build_app

    demo, _, _ = server
    with serving(build_app(studio=demo.studio, auth_on=True), auth=[("alice", "wonder")]) as url:
        with pytest.raises(Exception):
            client(url)  # no login, no API
        c = client(url, auth=("alice", "wonder"))
        _, _, infos = _txt2img(c, n=1, seed=77)
        assert demo.studio.store.get(infos[0]["history_id"]).user == "alice"
        _, table, _ = c.predict("", "hybrid", "all", 1, api_name="/history_search")
        assert [row[0] for row in table["data"]] == [infos[0]["history_id"]]
        assert [row[3] for row in table["data"]] == ["alice"]
        anonymous_record = demo.studio.fill_mask("the [MASK] sat", 2)["record_id"]  # no user
        with pytest.raises(AppError, match="belongs to another user"):
            c.predict(anonymous_record, api_name="/history_delete")
