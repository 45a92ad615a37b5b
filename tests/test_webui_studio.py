"""The web UI's rules without a server: request checks, optional tabs, auth parsing, CLI refusals."""

from __future__ import annotations

import pytest

from webui.studio import Limits, RequestError, Studio, form_seed

PROMPT = "a small red circle"


@pytest.fixture(scope="module")
def studio(tiny_bundle, tmp_path_factory):
    return Studio(tiny_bundle, tmp_path_factory.mktemp("outputs"))


def _image_request(studio, **changes):
    args = dict(prompt=PROMPT, negative_prompt="", num_images=1, guidance_scale=1.0, temperature=1.0, top_k=8,
                top_p=1.0, seed=0)
    args.update(changes)
    return studio.image_request(**args)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(num_images=9), r"number of images must be in \[1, 8\]"),
        (dict(num_images=2.5), "number of images must be a whole number"),
        (dict(guidance_scale=-1), r"guidance scale must be in \[0, 30\]"),
        (dict(guidance_scale=float("nan")), "guidance scale must be a number"),
        (dict(temperature=0), r"temperature must be in \(0, 5\]"),
        (dict(top_k=-1), "top-k must be 0"),
        (dict(top_p=1.5), r"top-p must be in \(0, 1\]"),
        (dict(seed=2**53 + 1), r"\[0, 2\^53 = 9007199254740992\]"),
        (dict(seed=-2), r"seed must be a whole number in \[0, 2\^53.*\(-1 picks a random one\)"),
        (dict(seed=1.5), "seed must be a whole number"),
        (dict(seed=True), "seed must be a whole number"),
        (dict(candidates=0), r"samples per image must be in \[1, 8\]"),
        (dict(candidates=9), r"samples per image must be in \[1, 8\]"),
        (dict(candidates=1.5), "samples per image must be a whole number"),
    ],
)
def test_image_request_messages_name_the_field(studio, changes, message):
    with pytest.raises(RequestError, match=message):
        _image_request(studio, **changes)


def _generate(studio, **changes):
    return list(studio.generate_images(_image_request(studio, **changes)))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(prompt=""), "prompt is empty"),
        (dict(prompt=None), "prompt is empty"),
        (dict(prompt=3), "prompt must be text"),
        (dict(negative_prompt="x" * 2001), "negative prompt is 2001 characters long; the limit is 2000"),
    ],
)
def test_prompts_are_checked_once_by_the_pipeline(studio, changes, message):
    """The studio only converts the form's values: the pipeline's one prompt check refuses, with the
    server's length limit, and nothing is saved."""
    before = studio.store.list()[1]
    with pytest.raises(RequestError, match=message):
        _generate(studio, **changes)
    assert studio.store.list()[1] == before


def test_image_notices_come_from_the_pipeline(studio):
    """Truncation and unknown words are the pipeline's notices, shown as they are."""
    done = _generate(studio, prompt="a zorblax circle " + "a red circle " * 8)[-1]
    assert any(n.startswith("Prompt truncated: the image model reads the first 12 tokens") for n in done.notices)
    assert any("\u201czorblax\u201d" in n for n in done.notices)
    assert _generate(studio, prompt="a red circle")[-1].notices == []


def test_image_request_accepts_gradio_numbers(studio):
    req = _image_request(studio, num_images=2.0, top_k=None, top_p=None, seed=float(2**53), negative_prompt="  ")
    assert (req.num_images, req.top_k, req.top_p, req.seed, req.negative_prompt) == (2, 0, 1.0, 2**53, None)
    assert 0 <= form_seed(-1) < 2**32 and 0 <= form_seed(None) < 2**32 and 0 <= form_seed("") < 2**32


def test_samples_per_image_default_to_the_bundle(studio, monkeypatch):
    assert _image_request(studio).candidates == studio.t2i.defaults.get("candidates", 1) == 1
    monkeypatch.setitem(studio.t2i.defaults, "candidates", 4)
    assert _image_request(studio).candidates == 4 and studio.image_defaults()["candidates"] == 4
    assert _image_request(studio, candidates=2.0).candidates == 2
    assert _image_request(studio, candidates=2).params()["candidates"] == 2


def test_missing_text_models_say_so(studio):
    assert studio.gpt is None and studio.bert is None
    with pytest.raises(RequestError, match="text generation is not available: this bundle has no `gpt/`"):
        studio.text_request("hi", 5, 1.0, 0, 1.0, 1.0, 0)
    with pytest.raises(RequestError, match="mask filling is not available: this bundle has no `bert/`"):
        studio.fill_mask("the [MASK]", 3)


def test_stopped_run_saves_nothing(studio):
    req = _image_request(studio, seed=3)
    before = studio.store.list()[1]
    events = studio.generate_images(req, session="s1")
    first = next(events)  # a preview: the run is under way
    assert type(first).__name__ == "Preview" and first.done < first.total
    assert studio.stop("s1") == 1
    rest = list(events)
    assert [type(e).__name__ for e in rest][-1] == "Stopped"
    assert studio.store.list()[1] == before and studio.stop("s1") == 0


def test_history_respects_the_user(studio):
    req = _image_request(studio, seed=4)
    done = list(studio.generate_images(req, user="alice"))[-1]
    assert studio.store.get(done.record_id).user == "alice"
    with pytest.raises(RequestError, match="belongs to another user"):
        studio.restore(done.record_id, user="bob")
    with pytest.raises(RequestError, match="belongs to another user"):
        studio.delete(done.record_id, user="bob")
    records, _, _ = studio.history_page("red circle", "keyword", None, 1, 12, user="bob")
    assert records == []
    records, found_by, _ = studio.history_page("red circle", "keyword", None, 1, 12, user="alice")
    assert [r.id for r in records] == [done.record_id] and found_by[done.record_id] == ("keyword",)
    assert studio.restore(done.record_id, user="alice")["seed"] == 4


def test_limits_are_configurable(tiny_bundle, tmp_path):
    small = Studio(tiny_bundle, tmp_path, limits=Limits(max_images=2, max_prompt_chars=10))
    with pytest.raises(RequestError, match=r"\[1, 2\]"):
        _image_request(small, num_images=3, prompt="short")
    with pytest.raises(RequestError, match="limit is 10"):
        _generate(small, prompt="x" * 11)


# ---- CLI ------------------------------------------------------------------------------------


def test_read_auth(tmp_path):
    from webui.app import read_auth

    assert read_auth("ann:pw:with:colons", None) == [("ann", "pw:with:colons")]
    f = tmp_path / "logins"
    f.write_text("# team\nann:one\n\nbob:two\n")
    assert read_auth(None, str(f)) == [("ann", "one"), ("bob", "two")]
    assert read_auth(None, None) is None
    with pytest.raises(ValueError, match="expected USER:PASS"):
        read_auth("nopassword", None)
    f.write_text("bob\n")
    with pytest.raises(ValueError, match="line 1: expected USER:PASS"):
        read_auth(None, str(f))
    with pytest.raises(ValueError, match="cannot read --auth-file"):
        read_auth(None, str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--listen"], "--listen would let others reach this server"),
        (["--share"], "--share would let others reach this server"),
        (["--host", "0.0.0.0"], "--host 0.0.0.0 would let others"),
    ],
)
def test_cli_refuses_to_expose_the_server_without_auth(tiny_bundle, tmp_path, capsys, flags, message):
    from webui.app import main

    assert main(["--bundle", str(tiny_bundle), "--outputs", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err


def test_launch_refuses_without_auth(studio):
    from webui.app import build_app, launch

    demo = build_app(studio=studio)
    with pytest.raises(ValueError, match="without a login"):
        launch(demo, host="0.0.0.0", prevent_thread_lock=True)
    with pytest.raises(ValueError, match="public share link without a login"):
        launch(demo, share=True, prevent_thread_lock=True)


def test_cli_names_a_missing_bundle(tmp_path, capsys):
    from webui.app import main

    assert main(["--bundle", str(tmp_path / "nope"), "--outputs", str(tmp_path / "out")]) == 2
    assert "bundle folder not found" in capsys.readouterr().err


def test_mmgen_cli_dispatches_to_the_webui(capsys):
    from mmgen.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["webui", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--bundle", "--auth-file", "--listen", "--share", "--outputs"))


def test_text_tabs_say_their_corpus_and_figures(tmp_path):
    """The text tabs' line comes from the bundle record: the corpus, the minutes and eval text's figures."""
    import json
    import shutil

    from mmgen.pipelines import default_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle(), bundle)
    index = json.loads((bundle / "model_index.json").read_text())
    index["eval_text"] = {"gpt": {"nats_per_char": 1.5432}, "bert": {"top1": 0.31, "top5": 0.52}}
    (bundle / "model_index.json").write_text(json.dumps(index))
    s = Studio(bundle, tmp_path / "outputs")
    gpt, bert = s.text_model_card("gpt"), s.text_model_card("bert")
    minutes = index["training"]["gpt"]["summary"]["elapsed_s"] / 60
    assert gpt.startswith("Trained on Tiny Shakespeare") and f"for {minutes:.0f} minutes" in gpt
    assert "1.54 nats per character" in gpt
    assert "first 31% of the time, among its five 52%" in bert
    del index["training"]
    (bundle / "model_index.json").write_text(json.dumps(index))
    assert s.text_model_card("gpt") == ""  # a bundle without a record says nothing rather than guess
