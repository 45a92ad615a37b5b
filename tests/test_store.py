"""Tests for mmgen.store.HistoryStore: a real SQLite file per test, no models."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from mmgen.store import MAX_SEED, SCHEMA_VERSION, HistoryStore, HistoryStoreError, Record, fts_query

# --------------------------------------------------------------------------------------
# A toy, deterministic text embedding
# --------------------------------------------------------------------------------------

# Words of one group share a direction, so "kitten" is close to "cat" without sharing a word:
# the one thing semantic search adds over keywords.
_CONCEPTS = [
    {"cat", "cats", "kitten", "kitty", "dog", "puppy", "animal"},
    {"car", "truck", "highway", "vehicle", "bus"},
    {"fruit", "apple", "banana", "bowl"},
    {"ocean", "sea", "wave", "beach"},
]
_DIM = 256


def toy_embed(texts: list[str]) -> np.ndarray:
    """Bag of words: a concept word adds its concept's axis, any other word a hashed axis."""
    out = np.zeros((len(texts), _DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().split():
            axis = next((i for i, group in enumerate(_CONCEPTS) if word in group), None)
            if axis is None:  # crc32, not hash(): stable across processes and runs
                axis = len(_CONCEPTS) + zlib.crc32(word.encode()) % (_DIM - len(_CONCEPTS))
            out[row, axis] += 1.0
    return out


# --------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------

PARAMS = {"guidance": 3.5, "temperature": 0.9, "top_k": 64, "top_p": 0.95, "num_images": 2}


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    d = tmp_path / "outputs"
    d.mkdir()
    return d


@pytest.fixture
def store(tmp_path: Path, outputs: Path):
    with HistoryStore(tmp_path / "history.db", outputs_dir=outputs, embed=toy_embed) as s:
        yield s


def add(store: HistoryStore, prompt: str, kind: str = "txt2img", **kw) -> int:
    kw.setdefault("params", PARAMS)
    kw.setdefault("seed", 1234)
    kw.setdefault("model_id", "shapes-tiny")
    return store.add(kind, prompt, **kw)


def manifest(store: HistoryStore) -> list[dict]:
    return [json.loads(line) for line in store.manifest_path.read_text(encoding="utf-8").splitlines()]


def ids(hits) -> list[int]:
    return [h.record.id for h in hits]


# --------------------------------------------------------------------------------------
# add / get / list
# --------------------------------------------------------------------------------------


def test_add_then_get_returns_every_field(store: HistoryStore, outputs: Path):
    (outputs / "run1").mkdir()
    rid = store.add(
        "txt2img", "a red circle", PARAMS, 42, "shapes-tiny",
        files=["run1/0.png", outputs / "run1" / "1.png"],  # relative and absolute-inside both work
        negative_prompt="blurry", user="ada",
    )
    r = store.get(rid)
    assert isinstance(r, Record)
    assert (r.id, r.kind, r.prompt, r.negative_prompt, r.seed, r.model_id, r.user, r.rating) == (
        rid, "txt2img", "a red circle", "blurry", 42, "shapes-tiny", "ada", 0
    )
    assert r.params == PARAMS
    assert r.files == ("run1/0.png", "run1/1.png")
    assert r.output_text is None
    assert r.created_at.endswith("+00:00")  # UTC, ISO 8601


def test_list_pages_newest_first_with_total_and_filters(store: HistoryStore):
    added = [add(store, f"prompt {i}", kind="txt2img" if i % 2 else "text", user="ada" if i < 4 else "bob")
             for i in range(7)]
    newest_first = added[::-1]

    pages = [store.list(page=p, per_page=3) for p in (1, 2, 3, 4)]
    assert [[r.id for r in records] for records, _ in pages] == [newest_first[:3], newest_first[3:6], newest_first[6:], []]
    assert {total for _, total in pages} == {7}

    text_records, text_total = store.list(kind="text")
    assert text_total == 4 and all(r.kind == "text" for r in text_records)
    bob_txt2img, total = store.list(kind="txt2img", user="bob")
    assert total == 1 and [r.id for r in bob_txt2img] == [added[5]]


def test_bad_input_gets_clear_errors(store: HistoryStore, outputs: Path, tmp_path: Path):
    rid = add(store, "ok")
    with pytest.raises(ValueError, match="unknown kind 'img2img'"):
        add(store, "x", kind="img2img")
    for seed in (-1, MAX_SEED + 1, 1.5, True, "7"):
        with pytest.raises(ValueError, match="seed must be a whole number"):
            add(store, "x", seed=seed)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        add(store, "x", params={"guidance": float("nan")})
    with pytest.raises(ValueError, match="not inside outputs_dir"):
        add(store, "x", files=[tmp_path / "elsewhere.png"])
    with pytest.raises(ValueError, match="without '..'"):
        add(store, "x", files=["../escape.png"])
    with pytest.raises(ValueError, match="rating must be one of"):
        store.rate(rid, 2)
    with pytest.raises(ValueError, match="page must be"):
        store.list(page=0)
    with pytest.raises(ValueError, match="unknown search mode"):
        store.search("x", mode="fuzzy")
    for missing in (store.get, lambda i: store.rate(i, 1), store.delete, store.restore_params):
        with pytest.raises(KeyError, match="no history record with id 999"):
            missing(999)
    assert store.list()[1] == 1  # nothing half-added by the failures above
    assert len(manifest(store)) == 1


# --------------------------------------------------------------------------------------
# Keyword search (FTS5)
# --------------------------------------------------------------------------------------


def test_keyword_search_finds_words_in_prompt_negative_and_output_text(store: HistoryStore):
    circle = add(store, "a red circle on a blue background")
    square = add(store, "a green square", negative_prompt="red")
    story = add(store, "tell me a story", kind="text", output_text="Once upon a time a dragon slept.")
    add(store, "a yellow triangle")

    assert ids(store.search("circle", mode="keyword")) == [circle]
    # A word in the prompt outranks the same word in the negative prompt.
    assert ids(store.search("red", mode="keyword")) == [circle, square]
    assert ids(store.search("dragon", mode="keyword")) == [story]
    assert ids(store.search("circ", mode="keyword")) == [circle]  # prefix: search as you type
    assert ids(store.search("red circle", mode="keyword")) == [circle]  # every word must match
    assert set(ids(store.search("circle OR square", mode="keyword"))) == {circle, square}
    assert ids(store.search("circle", mode="keyword", kind="text")) == []
    hit = store.search("dragon", mode="keyword")[0]
    assert hit.matched_by == ("keyword",) and hit.score > 0


@pytest.mark.parametrize(
    "query",
    ['', '   ', '"', '"red', 'red"', "'", '*', 'red*', '-red', 'red -circle', 'OR', 'red OR', 'OR red',
     'AND NOT', '(', '(red', 'red)', '((red OR blue) AND', 'NEAR(red circle, 2)', 'prompt:red', '^red',
     '{prompt}: red', 'red + blue', '""""', '\\', 'ünïcödé ☃', ';DROP TABLE generations;--'],
)
def test_keyword_search_never_raises_on_fts_syntax(store: HistoryStore, query: str):
    circle = add(store, "a red circle")
    hits = store.search(query, mode="keyword")
    assert all(h.record.id == circle for h in hits)
    assert store.list()[1] == 1


def test_fts_query_quotes_every_word():
    assert fts_query('red "circle" -blue*') == '("red"* "circle"* "blue"*)'
    assert fts_query("cat OR dog") == '("cat"*) OR ("dog"*)'
    assert fts_query(" ( * - ) ") == ""


# --------------------------------------------------------------------------------------
# Semantic and hybrid search
# --------------------------------------------------------------------------------------


def test_semantic_search_ranks_the_closest_meaning_first(store: HistoryStore):
    cat = add(store, "a cat sleeping on a sofa")
    truck = add(store, "a truck on the highway")
    fruit = add(store, "a bowl of fruit")

    assert store.search("kitten", mode="keyword") == []  # no shared word ...
    hits = store.search("kitten", mode="semantic")
    assert ids(hits)[0] == cat  # ... but the same meaning
    assert ids(store.search("bus", mode="semantic"))[0] == truck
    assert ids(store.search("apple banana", mode="semantic"))[0] == fruit
    assert hits[0].matched_by == ("semantic",) and 0 < hits[0].score <= 1.0


def test_hybrid_search_merges_keyword_only_and_semantic_only_matches(store: HistoryStore):
    semantic_only = add(store, "a cat sleeping on a sofa")
    # Only the prompt is embedded; "kitten" appears here only in the generated text.
    keyword_only = add(store, "write a story", kind="text", output_text="The kitten chased a leaf.")
    neither = add(store, "a truck on the highway")

    assert ids(store.search("kitten", mode="keyword")) == [keyword_only]
    assert ids(store.search("kitten", mode="semantic")) == [semantic_only]
    hits = {h.record.id: h for h in store.search("kitten")}  # hybrid is the default
    assert set(hits) == {semantic_only, keyword_only} and neither not in hits
    assert hits[semantic_only].matched_by == ("semantic",)
    assert hits[keyword_only].matched_by == ("keyword",)


def test_hybrid_ranks_a_match_of_both_searches_first(store: HistoryStore):
    both = add(store, "a cat on a mat")  # oldest, so the newest-first tie-break cannot favour it
    add(store, "a dog in the park")  # semantic only
    add(store, "write a poem", kind="text", output_text="a cat poem")  # keyword only
    hits = store.search("cat")
    assert hits[0].record.id == both and hits[0].matched_by == ("keyword", "semantic")
    assert len(hits) == 3


def test_without_embed_hybrid_falls_back_to_keyword(tmp_path: Path):
    with HistoryStore(tmp_path / "h.db") as store:
        circle = add(store, "a red circle")
        hits = store.search("circle")
        assert ids(hits) == [circle] and hits[0].matched_by == ("keyword",)
        with pytest.raises(ValueError, match="needs an embed function"):
            store.search("circle", mode="semantic")


def test_reindex_embeddings_fills_rows_added_without_embed(tmp_path: Path):
    db = tmp_path / "h.db"
    with HistoryStore(db) as store:
        cat = add(store, "a cat sleeping")
    with HistoryStore(db, embed=toy_embed) as store:
        assert store.search("kitten", mode="semantic") == []
        assert store.reindex_embeddings() == 1
        assert ids(store.search("kitten", mode="semantic")) == [cat]
        assert store.reindex_embeddings() == 0


# --------------------------------------------------------------------------------------
# restore, rate, delete
# --------------------------------------------------------------------------------------


def test_restore_params_gives_back_exactly_what_was_stored(store: HistoryStore):
    params = {"guidance": 7.25, "temperature": 0.1 + 0.2, "top_k": 0, "top_p": 1.0, "num_images": 4,
              "size": [16, 16], "sampler": {"cfg_rescale": None, "repetition_penalty": 1.1}}
    rid = add(store, "a ☃ on ice", params=params, seed=2**53 - 1, negative_prompt="", model_id="m/v2")
    restored = store.restore_params(rid)
    assert restored == {"kind": "txt2img", "model_id": "m/v2", "prompt": "a ☃ on ice",
                        "negative_prompt": "", "seed": 2**53 - 1, "params": params}
    assert type(restored["seed"]) is int and restored["params"]["temperature"] == 0.1 + 0.2
    # numpy scalars (e.g. from a slider pipeline) are stored as plain numbers
    rid = add(store, "x", params={"temperature": np.float64(0.7), "top_k": np.int64(5)}, seed=MAX_SEED)
    assert store.restore_params(rid)["params"] == {"temperature": 0.7, "top_k": 5}
    assert store.restore_params(rid)["seed"] == MAX_SEED
    # A Gradio number box sends 42.0 for 42; it is stored and restored as the int.
    assert store.restore_params(add(store, "x", seed=42.0))["seed"] == 42


def test_rate_updates_row_and_manifest(store: HistoryStore):
    a, b = add(store, "first"), add(store, "second")
    store.rate(a, 1)
    store.rate(b, -1)
    store.rate(b, 0)
    assert (store.get(a).rating, store.get(b).rating) == (1, 0)
    assert [(m["id"], m["rating"]) for m in manifest(store)] == [(a, 1), (b, 0)]


def test_delete_removes_row_index_entry_manifest_line_and_files(store: HistoryStore, outputs: Path):
    (outputs / "run").mkdir()
    files = [outputs / "run" / "0.png", outputs / "run" / "1.png"]
    for f in files:
        f.write_bytes(b"png")
    gone = add(store, "a zebra crossing", files=files)
    kept = add(store, "a zebra in the wild")

    store.delete(gone)
    with pytest.raises(KeyError):
        store.get(gone)
    assert not any(f.exists() for f in files)
    assert ids(store.search("zebra", mode="keyword")) == [kept]
    with sqlite3.connect(store.db_path) as raw:  # the FTS index itself forgot the row
        assert raw.execute("SELECT rowid FROM generations_fts WHERE generations_fts MATCH 'zebra'").fetchall() == [(kept,)]
    assert [m["id"] for m in manifest(store)] == [kept]


def test_delete_can_keep_files(store: HistoryStore, outputs: Path):
    (outputs / "keep.png").write_bytes(b"png")
    rid = add(store, "x", files=["keep.png"])
    store.delete(rid, delete_files=False)
    assert (outputs / "keep.png").exists() and store.list()[1] == 0


@pytest.mark.parametrize("bad_path", ["../outside.png", "{outside}", "link/outside.png"])
def test_delete_refuses_files_outside_outputs_dir(store: HistoryStore, outputs: Path, tmp_path: Path, bad_path: str):
    outside_dir = tmp_path / "precious"
    outside_dir.mkdir()
    victim = outside_dir / "outside.png"
    victim.write_bytes(b"precious")
    (tmp_path / "outside.png").write_bytes(b"precious")
    (outputs / "link").symlink_to(outside_dir, target_is_directory=True)
    inside = outputs / "inside.png"
    inside.write_bytes(b"png")
    rid = add(store, "x", files=["inside.png"])
    # add() refuses such paths, so plant one the way a hand-edited or foreign database could.
    planted = json.dumps(["inside.png", bad_path.format(outside=victim)])
    with sqlite3.connect(store.db_path) as raw:
        raw.execute("UPDATE generations SET files = ? WHERE id = ?", (planted, rid))

    with pytest.raises(ValueError, match="refusing to delete"):
        store.delete(rid)
    # Nothing was deleted: not the outside file, not the inside one, not the row.
    assert victim.exists() and (tmp_path / "outside.png").exists() and inside.exists()
    assert store.get(rid).files == ("inside.png", bad_path.format(outside=victim))
    assert [m["id"] for m in manifest(store)] == [rid]


# --------------------------------------------------------------------------------------
# Storage: WAL, manifest, concurrency, reopening, corruption
# --------------------------------------------------------------------------------------


def test_database_is_in_wal_mode_with_current_schema_version(store: HistoryStore):
    with sqlite3.connect(store.db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_manifest_mirrors_rows_and_rebuilds_after_damage(store: HistoryStore, tmp_path: Path):
    a = add(store, "first", user="ada")
    b = add(store, "second", kind="text", output_text="more")
    lines = manifest(store)
    assert lines == [store.get(a).to_dict(), store.get(b).to_dict()]

    with open(store.manifest_path, "ab") as f:  # a crash mid-append leaves a torn last line
        f.write(b'{"id": 99, "pro')
    c = add(store, "third")
    assert [m["id"] for m in manifest(store)] == [a, b, c]

    store.manifest_path.unlink()
    store.rebuild_manifest()
    assert [m["id"] for m in manifest(store)] == [a, b, c]
    exported = store.export_jsonl(tmp_path / "export.jsonl")
    assert exported.read_bytes() == store.manifest_path.read_bytes()


def _process_writer(db: str, outputs: str, ready, go, n: int) -> None:
    """Runs in a second process: its own store on the same files, adding as the threads do."""
    with HistoryStore(db, outputs_dir=outputs, embed=toy_embed) as store:
        ready.set()
        go.wait(30)
        for i in range(n):
            store.add("complete", f"process prompt {i}", {"i": i}, i, "m", user="process")


def test_concurrent_threads_and_a_second_process(store: HistoryStore, outputs: Path):
    n_threads, per_thread, per_process = 8, 3, 6
    ctx = multiprocessing.get_context("spawn")  # the portable start method; no inherited sqlite handles
    ready, go = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_process_writer, args=(str(store.db_path), str(outputs), ready, go, per_process))
    proc.start()
    assert ready.wait(30), "writer process did not start"

    barrier = threading.Barrier(n_threads + 1)
    added: list[int] = []
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                added.append(add(store, f"thread {t} prompt {i}", seed=t * 100 + i, user="thread"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    go.set()
    barrier.wait()  # threads and process start writing together
    for t in threads:
        t.join(30)
    proc.join(30)
    assert not errors and proc.exitcode == 0

    assert len(added) == len(set(added)) == n_threads * per_thread
    by_thread, n_thread = store.list(per_page=100, user="thread")
    assert n_thread == 24 and {r.id for r in by_thread} == set(added)
    assert store.list(user="process")[1] == per_process
    every_id = sorted(r.id for r in store.list(per_page=100)[0])
    assert len(every_id) == n_threads * per_thread + per_process
    # The manifest saw every write exactly once, in id order: no lost or interleaved lines.
    assert [m["id"] for m in manifest(store)] == every_id


def _add_from_forked_child(store: HistoryStore) -> None:
    inherited = store._conn
    store.add("text", "from the child", {}, 1, "m")
    # Reusing the parent's connection often *seems* to work, which is why this is checked
    # directly: SQLite forbids using a connection on both sides of a fork.
    assert store._conn is not inherited
    store.close()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_store_inherited_through_fork_opens_its_own_connection(store: HistoryStore):
    parent = add(store, "from the parent")
    proc = multiprocessing.get_context("fork").Process(target=_add_from_forked_child, args=(store,))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    after = add(store, "from the parent again")  # the parent's connection still works
    assert [r.prompt for r in store.list()[0]] == ["from the parent again", "from the child", "from the parent"]
    assert [m["id"] for m in manifest(store)] == [parent, after - 1, after]


def test_reopening_preserves_everything(tmp_path: Path, outputs: Path):
    db = tmp_path / "h.db"
    with HistoryStore(db, outputs_dir=outputs, embed=toy_embed) as store:
        cat = add(store, "a cat sleeping", seed=2**53 - 1, negative_prompt="dog", user="ada")
        text = add(store, "once", kind="text", output_text="upon a time")
        store.rate(cat, 1)
        before = [store.get(cat), store.get(text)]
        manifest_before = store.manifest_path.read_bytes()
    with HistoryStore(db, outputs_dir=outputs, embed=toy_embed) as store:
        assert [store.get(cat), store.get(text)] == before
        assert ids(store.search("kitten", mode="semantic")) == [cat]  # embeddings survived
        assert ids(store.search("time", mode="keyword")) == [text]  # and the FTS index
        assert store.manifest_path.read_bytes() == manifest_before
        assert add(store, "new") > text  # ids continue, never reused


def test_corrupt_database_file_gives_an_error_naming_it(tmp_path: Path):
    db = tmp_path / "history.db"
    garbage = b"this is not an SQLite database, just bytes " * 100
    db.write_bytes(garbage)
    with pytest.raises(HistoryStoreError, match="not a usable mmgen history database") as info:
        HistoryStore(db)
    assert str(db) in str(info.value)
    assert db.read_bytes() == garbage  # left as it was


def test_database_from_a_newer_schema_is_refused(tmp_path: Path):
    db = tmp_path / "history.db"
    HistoryStore(db).close()
    with sqlite3.connect(db) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(HistoryStoreError, match="newer than this mmgen"):
        HistoryStore(db)
