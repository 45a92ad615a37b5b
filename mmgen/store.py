"""Generation history: the SQLite store behind the web UI's History tab.

Every generation (an image batch, a text continuation, a mask fill) becomes one row holding what
is needed to find it again and to reproduce it: prompt, negative prompt, sampling parameters,
seed, model id, the output files and texts, and the user's rating.

Design in brief:

* **One SQLite file in WAL mode.** Readers never block the writer, and several processes (two
  web UI workers, a CLI run) can share the file; ``busy_timeout`` makes a writer wait for the
  lock instead of failing. Every write runs in ``BEGIN IMMEDIATE`` so it takes the lock up front
  (a deferred transaction that upgrades from read to write can fail with ``SQLITE_BUSY``
  without waiting).
* **One connection per store, guarded by a lock.** Gradio calls handlers from worker threads;
  a single connection opened with ``check_same_thread=False`` and a re-entrant lock keeps that
  simple. A store inherited through ``fork`` opens a fresh connection in the child, because an
  SQLite connection must never be used on both sides of a fork.
* **Versioned schema.** ``PRAGMA user_version`` holds the schema version; ``_MIGRATIONS`` upgrades
  an older file step by step when it is opened, and a file from a newer mmgen is refused.
* **Search.** Keyword search is SQLite FTS5 (bm25) over prompt, negative prompt and output text;
  semantic search is cosine similarity between an ``embed`` function's vector for the query and
  the stored prompt embeddings; hybrid search fuses both rankings by reciprocal rank.
* **A JSONL manifest** (``outputs_dir/history.jsonl``) mirrors the rows so the history survives
  as plain text next to the images. It is updated while the database write lock is held, so
  threads and processes cannot interleave their updates: ``add`` appends one line (fsynced);
  ``rate`` and ``delete`` rewrite the file atomically (temp file + ``os.replace``).

This is a low layer: numpy, sqlite3 and the standard library only (no torch, gradio or models).
"""

from __future__ import annotations

import builtins
import json
import logging
import numbers
import os
import re
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from mmgen.checks import MAX_SEED, check_seed
from mmgen.config import atomic_write_bytes

log = logging.getLogger(__name__)

KINDS = ("txt2img", "text", "fill_mask", "complete")
RATINGS = (-1, 0, 1)
SEARCH_MODES = ("hybrid", "keyword", "semantic")
MANIFEST_NAME = "history.jsonl"

# Reciprocal-rank fusion constant (Cormack et al. 2009): damps the weight of the very top ranks
# so that one list cannot dominate the fused order.
RRF_K = 60
# bm25 column weights for (prompt, negative_prompt, output_text): a word the user asked *not*
# to see is a weaker match than a word in the prompt or the generated text.
BM25_WEIGHTS = (1.0, 0.4, 1.0)

EmbedFn = Callable[[Sequence[str]], np.ndarray]


class HistoryStoreError(Exception):
    """The history database cannot be used: corrupt, not ours, or from a newer mmgen."""


@dataclass(frozen=True)
class Record:
    """One generation, as stored."""

    id: int
    created_at: str  # UTC, ISO 8601 with microseconds
    kind: str  # one of KINDS
    prompt: str
    negative_prompt: Optional[str]
    params: dict[str, Any]  # sampling parameters (guidance, temperature, top_k, top_p, num_images, ...)
    seed: int
    model_id: str
    user: Optional[str]
    files: tuple[str, ...]  # output paths relative to outputs_dir, POSIX separators
    output_text: Optional[str]  # generated text for the text tabs
    rating: int  # -1, 0 or +1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (one manifest line)."""
        d = asdict(self)
        d["files"] = builtins.list(self.files)
        return d


@dataclass(frozen=True)
class SearchHit:
    """A search result: the record, its score and which searches found it.

    ``score`` depends on the mode: keyword is the negated bm25 (higher is better), semantic the
    cosine similarity, hybrid the reciprocal-rank-fusion score.
    """

    record: Record
    score: float
    matched_by: tuple[str, ...] = field(default=())  # subset of ("keyword", "semantic")


# --------------------------------------------------------------------------------------
# Schema and migrations
# --------------------------------------------------------------------------------------

SCHEMA_VERSION = 1

_SCHEMA_V1 = [
    f"""
    CREATE TABLE generations (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids are never reused
        created_at      TEXT    NOT NULL,
        kind            TEXT    NOT NULL CHECK (kind IN ({", ".join(repr(k) for k in KINDS)})),
        prompt          TEXT    NOT NULL,
        negative_prompt TEXT,
        params          TEXT    NOT NULL,                   -- JSON object
        seed            INTEGER NOT NULL CHECK (seed BETWEEN 0 AND {MAX_SEED}),
        model_id        TEXT    NOT NULL,
        user            TEXT,
        files           TEXT    NOT NULL DEFAULT '[]',      -- JSON list of relative paths
        output_text     TEXT,
        rating          INTEGER NOT NULL DEFAULT 0 CHECK (rating IN (-1, 0, 1)),
        embedding       BLOB                                -- float32 prompt embedding
    )
    """,
    "CREATE INDEX generations_kind ON generations (kind, id)",
    "CREATE INDEX generations_user ON generations (user, id)",
    # External-content FTS: the text lives once, in `generations`; triggers keep the index in step.
    """
    CREATE VIRTUAL TABLE generations_fts USING fts5(
        prompt, negative_prompt, output_text,
        content='generations', content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2'
    )
    """,
    """
    CREATE TRIGGER generations_fts_insert AFTER INSERT ON generations BEGIN
        INSERT INTO generations_fts (rowid, prompt, negative_prompt, output_text)
        VALUES (new.id, new.prompt, new.negative_prompt, new.output_text);
    END
    """,
    """
    CREATE TRIGGER generations_fts_delete AFTER DELETE ON generations BEGIN
        INSERT INTO generations_fts (generations_fts, rowid, prompt, negative_prompt, output_text)
        VALUES ('delete', old.id, old.prompt, old.negative_prompt, old.output_text);
    END
    """,
    """
    CREATE TRIGGER generations_fts_update AFTER UPDATE OF prompt, negative_prompt, output_text
    ON generations BEGIN
        INSERT INTO generations_fts (generations_fts, rowid, prompt, negative_prompt, output_text)
        VALUES ('delete', old.id, old.prompt, old.negative_prompt, old.output_text);
        INSERT INTO generations_fts (rowid, prompt, negative_prompt, output_text)
        VALUES (new.id, new.prompt, new.negative_prompt, new.output_text);
    END
    """,
]


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    """Create the first schema in an empty database."""
    for statement in _SCHEMA_V1:
        conn.execute(statement)


# _MIGRATIONS[v] upgrades a database at user_version v to v + 1. To change the schema, add the
# next step and bump SCHEMA_VERSION; never edit a step that has shipped.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _migrate_0_to_1}

# The columns every query reads, in Record field order (the embedding is read only by search).
_COLUMNS = "id, created_at, kind, prompt, negative_prompt, params, seed, model_id, user, files, output_text, rating"


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------


class HistoryStore:
    """Generation history in one SQLite file, with an optional JSONL manifest and output files.

    Args:
        db_path: the SQLite file (created with its parent folders if missing).
        outputs_dir: folder the output files live under. Stored file paths are relative to it,
            ``delete`` only ever removes files inside it, and the manifest ``history.jsonl`` is
            kept there. ``None``: no manifest and no file handling.
        embed: maps a list of texts to a ``(N, D)`` array (e.g. the text encoder's mean-pooled
            states). Enables semantic and hybrid search; ``None`` leaves keyword search only.
        timeout: seconds a write waits for another thread or process holding the lock.
    """

    def __init__(
        self,
        db_path: str | os.PathLike,
        outputs_dir: str | os.PathLike | None = None,
        embed: Optional[EmbedFn] = None,
        timeout: float = 10.0,
    ) -> None:
        self.db_path = Path(db_path)
        self.outputs_dir = Path(outputs_dir).resolve() if outputs_dir is not None else None
        self.manifest_path = self.outputs_dir / MANIFEST_NAME if self.outputs_dir is not None else None
        self.embed = embed
        self.timeout = float(timeout)
        self._lock = threading.RLock()
        self._inherited: builtins.list[sqlite3.Connection] = []
        self._manifest_touched = False  # set by manifest writes inside the current transaction
        self._conn = self._open()
        if self.manifest_path is not None and not self.manifest_path.exists():
            self.rebuild_manifest()

    # ---- public API -----------------------------------------------------------------

    def add(
        self,
        kind: str,
        prompt: str,
        params: dict[str, Any],
        seed: int,
        model_id: str,
        files: Sequence[str | os.PathLike] = (),
        negative_prompt: Optional[str] = None,
        user: Optional[str] = None,
        output_text: Optional[str] = None,
    ) -> int:
        """Record one generation and return its id.

        ``files`` are paths under ``outputs_dir`` (absolute or relative to it). ``params`` must be
        JSON-serialisable; numpy scalars are converted, tuples come back as lists.
        """
        kind = _check_kind(kind)
        _check_text("prompt", prompt)
        _check_text("model_id", model_id)
        for name, value in (("negative_prompt", negative_prompt), ("user", user), ("output_text", output_text)):
            if value is not None:
                _check_text(name, value)
        seed = check_seed(seed)  # the one seed rule; a stored seed is always a concrete one
        params_json = _params_to_json(params)
        files_json = json.dumps([self._relative_output_path(f) for f in files])
        # Embedding can be slow (a text encoder forward), so it runs before taking any lock.
        embedding = self._embed_texts([prompt])[0].tobytes() if self.embed is not None else None

        with self._write() as conn:
            # Timestamp inside the write lock, so created_at order follows id order.
            cursor = conn.execute(
                "INSERT INTO generations (created_at, kind, prompt, negative_prompt, params, seed, "
                "model_id, user, files, output_text, embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (_utc_now(), kind, prompt, negative_prompt, params_json, seed, model_id, user,
                 files_json, output_text, embedding),
            )
            record_id = int(cursor.lastrowid)
            self._append_manifest(conn, record_id)
        return record_id

    def get(self, record_id: int) -> Record:
        """The record with this id; ``KeyError`` if there is none."""
        record_id = _check_id(record_id)
        with self._lock:
            row = self._connection().execute(
                f"SELECT {_COLUMNS} FROM generations WHERE id = ?", (record_id,)
            ).fetchone()
        if row is None:
            raise KeyError(f"no history record with id {record_id} in {self.db_path}")
        return _record(row)

    def list(
        self, page: int = 1, per_page: int = 20, kind: Optional[str] = None, user: Optional[str] = None
    ) -> tuple[builtins.list[Record], int]:
        """One page of records, newest first, and the total number of matching records."""
        if not _is_int(page) or page < 1:
            raise ValueError(f"page must be an integer >= 1, got {page!r}")
        if not _is_int(per_page) or per_page < 1:
            raise ValueError(f"per_page must be an integer >= 1, got {per_page!r}")
        where, args = _filters(kind, user)
        with self._read() as conn:  # one snapshot, so the page and the total agree
            total = conn.execute(f"SELECT COUNT(*) FROM generations {where}", args).fetchone()[0]
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM generations {where} ORDER BY id DESC LIMIT ? OFFSET ?",
                (*args, per_page, (page - 1) * per_page),
            ).fetchall()
        return [_record(r) for r in rows], int(total)

    def rate(self, record_id: int, rating: int) -> None:
        """Set a record's rating to -1 (bad), 0 (unrated) or +1 (good)."""
        record_id = _check_id(record_id)
        if not _is_int(rating) or rating not in RATINGS:
            raise ValueError(f"rating must be one of -1, 0, +1, got {rating!r}")
        with self._write() as conn:
            if conn.execute("UPDATE generations SET rating = ? WHERE id = ?", (int(rating), record_id)).rowcount == 0:
                raise KeyError(f"no history record with id {record_id} in {self.db_path}")
            self._rewrite_manifest(conn)

    def delete(self, record_id: int, delete_files: bool = True) -> None:
        """Remove a record (row, search index entry, manifest line) and, by default, its files.

        Only files inside ``outputs_dir`` are ever removed. If any stored path points outside it,
        nothing is deleted and a ``ValueError`` says which path. Without an ``outputs_dir`` files
        are left alone.
        """
        record_id = _check_id(record_id)
        with self._write() as conn:
            row = conn.execute("SELECT files FROM generations WHERE id = ?", (record_id,)).fetchone()
            if row is None:
                raise KeyError(f"no history record with id {record_id} in {self.db_path}")
            # Check every path before touching anything, so a bad path deletes nothing.
            doomed = [self._output_file(p) for p in json.loads(row[0])] if delete_files and self.outputs_dir else []
            conn.execute("DELETE FROM generations WHERE id = ?", (record_id,))
            self._rewrite_manifest(conn)
        # Files go only after the row is committed: a failed commit must not lose the images.
        for path in doomed:
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                log.warning("history record %d deleted, but not its file %s: %s", record_id, path, e)

    def search(
        self,
        query: str,
        limit: int = 20,
        mode: str = "hybrid",
        kind: Optional[str] = None,
        user: Optional[str] = None,
    ) -> builtins.list[SearchHit]:
        """Find records by keyword, by meaning, or both (best first).

        * ``keyword``: FTS5 over prompt, negative prompt and output text, ranked by bm25. Every
          word of the query must appear (as a word or word prefix; ``running`` also finds
          ``run``). The query is plain text: quotes, ``*``, ``-``, ``OR`` or parentheses are
          searched for as words, never parsed as FTS syntax.
        * ``semantic``: cosine similarity between ``embed([query])`` and the stored prompt
          embeddings (needs ``embed``); only positive similarities count as matches.
        * ``hybrid``: reciprocal-rank fusion of both lists; keyword only when there is no
          ``embed``.
        """
        if not isinstance(query, str):
            raise ValueError(f"query must be a string, got {type(query).__name__}")
        if mode not in SEARCH_MODES:
            raise ValueError(f"unknown search mode {mode!r}; expected one of {', '.join(SEARCH_MODES)}")
        if not _is_int(limit) or limit < 1:
            raise ValueError(f"limit must be an integer >= 1, got {limit!r}")
        if mode == "semantic" and self.embed is None:
            raise ValueError("semantic search needs an embed function; this store was opened without one")
        if mode == "hybrid" and self.embed is None:
            mode = "keyword"
        if not query.strip():
            return []

        if mode == "keyword":
            return [SearchHit(r, s, ("keyword",)) for r, s in self._keyword_search(query, limit, kind, user)]
        if mode == "semantic":
            return [SearchHit(r, s, ("semantic",)) for r, s in self._semantic_search(query, limit, kind, user)]

        # Hybrid: fuse deeper lists than asked for, so a record ranked moderately by both
        # searches can beat one ranked first by only one of them.
        depth = max(limit * 3, 50)
        fused: dict[int, list] = {}  # id -> [record, score, matched_by]
        for name, hits in (
            ("keyword", self._keyword_search(query, depth, kind, user)),
            ("semantic", self._semantic_search(query, depth, kind, user)),
        ):
            for rank, (record, _) in enumerate(hits, start=1):
                entry = fused.setdefault(record.id, [record, 0.0, ()])
                entry[1] += 1.0 / (RRF_K + rank)
                entry[2] += (name,)
        best = sorted(fused.values(), key=lambda e: (-e[1], -e[0].id))[:limit]
        return [SearchHit(record, score, matched_by) for record, score, matched_by in best]

    def restore_params(self, record_id: int) -> dict[str, Any]:
        """What is needed to regenerate a record, exactly as stored.

        Returns ``{"kind", "model_id", "prompt", "negative_prompt", "seed", "params"}``.
        """
        r = self.get(record_id)
        return {
            "kind": r.kind,
            "model_id": r.model_id,
            "prompt": r.prompt,
            "negative_prompt": r.negative_prompt,
            "seed": r.seed,
            "params": r.params,
        }

    def reindex_embeddings(self, only_missing: bool = True, batch_size: int = 64) -> int:
        """Compute prompt embeddings with the current ``embed`` and store them; returns how many.

        Use it after switching text encoders (``only_missing=False``), or to fill rows added
        by a store that had no ``embed``.
        """
        if self.embed is None:
            raise ValueError("reindex_embeddings needs an embed function; this store was opened without one")
        where = "WHERE embedding IS NULL" if only_missing else ""
        with self._lock:
            todo = self._connection().execute(f"SELECT id, prompt FROM generations {where} ORDER BY id").fetchall()
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            vectors = self._embed_texts([prompt for _, prompt in batch])
            with self._write() as conn:
                conn.executemany(
                    "UPDATE generations SET embedding = ? WHERE id = ?",
                    [(v.tobytes(), record_id) for (record_id, _), v in zip(batch, vectors)],
                )
        return len(todo)

    def export_jsonl(self, path: str | os.PathLike | None = None) -> Path:
        """Write every record, oldest first, one JSON object per line, atomically.

        ``path`` defaults to the manifest (``outputs_dir/history.jsonl``). Returns the path.
        """
        if path is None:
            return self.rebuild_manifest()
        with self._read() as conn:
            data = _jsonl(conn)
        atomic_write_bytes(Path(path), data)
        return Path(path)

    def rebuild_manifest(self) -> Path:
        """Rewrite ``outputs_dir/history.jsonl`` from the database (e.g. after a crash)."""
        if self.manifest_path is None:
            raise ValueError("this store has no outputs_dir, so it keeps no manifest")
        with self._write() as conn:
            self._rewrite_manifest(conn)
        return self.manifest_path

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "HistoryStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HistoryStore({str(self.db_path)!r}, outputs_dir={str(self.outputs_dir) if self.outputs_dir else None!r})"

    # ---- connection and transactions ------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """Connect, switch to WAL and bring the schema up to date; errors name the file."""
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._pid = os.getpid()
        conn = sqlite3.connect(
            self.db_path,
            timeout=self.timeout,
            isolation_level=None,  # autocommit; transactions are explicit (BEGIN IMMEDIATE)
            check_same_thread=False,  # shared across Gradio's worker threads, under self._lock
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":  # e.g. a filesystem without shared memory support
                log.warning("%s: could not enable WAL (journal_mode is %s)", self.db_path, mode)
            # NORMAL is safe in WAL mode (no corruption on power loss, at most the last commits lost)
            conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate(conn)
        except sqlite3.OperationalError as e:
            conn.close()
            if "locked" in str(e) or "busy" in str(e):
                raise HistoryStoreError(f"{self.db_path}: still locked by another writer after {self.timeout:g} s") from e
            raise HistoryStoreError(self._unusable(e)) from e
        except sqlite3.DatabaseError as e:
            conn.close()
            raise HistoryStoreError(self._unusable(e)) from e
        except BaseException:
            conn.close()
            raise
        return conn

    def _unusable(self, error: Exception) -> str:
        return (
            f"{self.db_path}: not a usable mmgen history database ({error}). "
            "Move the file aside to start a new history; it has not been changed."
        )

    def _migrate(self, conn: sqlite3.Connection) -> None:
        # The write lock makes two processes opening a fresh file at once migrate it only once.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise HistoryStoreError(
                    f"{self.db_path}: history schema version {version} is newer than this mmgen "
                    f"understands ({SCHEMA_VERSION}); upgrade mmgen to open it"
                )
            while version < SCHEMA_VERSION:
                _MIGRATIONS[version](conn)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _connection(self) -> sqlite3.Connection:
        """The connection for this process (call with self._lock held)."""
        if os.getpid() != self._pid:
            # Forked: never touch the parent's connection here (not even to close it, which
            # could disturb the parent's locks); keep it referenced and open a new one.
            self._inherited.append(self._conn)
            self._conn = self._open()
        return self._conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same snapshot."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database write lock from the start.

        The manifest is updated inside it. If the transaction then fails, the manifest may
        describe changes that were rolled back, so it is rebuilt from the database.
        """
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            self._manifest_touched = False
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                if self._manifest_touched:
                    self._repair_manifest()
                raise

    def _repair_manifest(self) -> None:
        try:
            self.rebuild_manifest()
        except Exception as e:  # the original error matters more; say what is stale
            log.warning("%s may be out of date (%s); call rebuild_manifest()", self.manifest_path, e)

    # ---- manifest -------------------------------------------------------------------

    def _append_manifest(self, conn: sqlite3.Connection, record_id: int) -> None:
        """Append one record's line (inside a write transaction)."""
        if self.manifest_path is None:
            return
        self._manifest_touched = True
        if not _ends_with_newline(self.manifest_path):
            # Missing, or a line torn by a crash: appending would glue lines, so rewrite.
            self._rewrite_manifest(conn)
            return
        row = conn.execute(f"SELECT {_COLUMNS} FROM generations WHERE id = ?", (record_id,)).fetchone()
        with open(self.manifest_path, "ab") as f:
            f.write(_json_line(_record(row)))
            f.flush()
            os.fsync(f.fileno())

    def _rewrite_manifest(self, conn: sqlite3.Connection) -> None:
        """Replace the manifest with the rows as this transaction sees them."""
        if self.manifest_path is None:
            return
        self._manifest_touched = True
        atomic_write_bytes(self.manifest_path, _jsonl(conn))

    # ---- files ----------------------------------------------------------------------

    def _relative_output_path(self, path: str | os.PathLike) -> str:
        """Normalise an output path for storage: relative to outputs_dir, POSIX separators."""
        p = Path(path)
        if p.is_absolute():
            if self.outputs_dir is None:
                raise ValueError(f"file {str(path)!r}: absolute paths need an outputs_dir to be relative to")
            try:
                p = p.resolve().relative_to(self.outputs_dir)
            except ValueError:
                raise ValueError(f"file {str(path)!r} is not inside outputs_dir {self.outputs_dir}") from None
        rel = PurePosixPath(p.as_posix())
        if not rel.parts or ".." in rel.parts:
            raise ValueError(f"file {str(path)!r} must be a path inside outputs_dir, without '..'")
        return str(rel)

    def _output_file(self, stored: str) -> Path:
        """The file a stored path names, or ValueError if it could lie outside outputs_dir.

        The *folder* is resolved (a symlinked folder cannot lead out), the file itself is not:
        unlinking a symlink removes the link, never its target.
        """
        assert self.outputs_dir is not None
        rel = PurePosixPath(stored)
        target = self.outputs_dir / rel
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"refusing to delete {stored!r}: not a path inside outputs_dir {self.outputs_dir}")
        parent = target.parent.resolve()
        if parent != self.outputs_dir and self.outputs_dir not in parent.parents:
            raise ValueError(f"refusing to delete {stored!r}: it resolves outside outputs_dir {self.outputs_dir}")
        return target

    # ---- search ---------------------------------------------------------------------

    def _keyword_search(
        self, query: str, limit: int, kind: Optional[str], user: Optional[str]
    ) -> builtins.list[tuple[Record, float]]:
        match = fts_query(query)
        if not match:
            return []
        where, args = _filters(kind, user, table="g")
        where = f"{where} AND" if where else "WHERE"
        columns = ", ".join(f"g.{c}" for c in _COLUMNS.split(", "))
        weights = ", ".join(str(w) for w in BM25_WEIGHTS)
        with self._lock:
            rows = self._connection().execute(
                f"SELECT {columns}, bm25(generations_fts, {weights}) AS rank "
                f"FROM generations_fts JOIN generations AS g ON g.id = generations_fts.rowid "
                f"{where} generations_fts MATCH ? ORDER BY rank, g.id DESC LIMIT ?",
                (*args, match, limit),
            ).fetchall()
        # bm25 is "lower is better"; negate so every mode's score reads "higher is better".
        return [(_record(r[:-1]), -float(r[-1])) for r in rows]

    def _semantic_search(
        self, query: str, limit: int, kind: Optional[str], user: Optional[str]
    ) -> builtins.list[tuple[Record, float]]:
        q = self._embed_texts([query])[0]  # (D,)
        q_norm = float(np.linalg.norm(q))
        if q_norm == 0.0:
            return []
        where, args = _filters(kind, user)
        where = f"{where} AND" if where else "WHERE"
        with self._lock:
            rows = self._connection().execute(
                f"SELECT id, embedding FROM generations {where} embedding IS NOT NULL", args
            ).fetchall()
        # Rows embedded by a different encoder (another width) cannot be compared; skip them.
        rows = [(i, blob) for i, blob in rows if len(blob) == q.nbytes]
        if not rows:
            return []
        ids = np.array([i for i, _ in rows])
        matrix = np.frombuffer(b"".join(blob for _, blob in rows), dtype=np.float32).reshape(len(rows), -1)  # (N, D)
        norms = np.linalg.norm(matrix, axis=1)
        cosine = (matrix @ q) / np.maximum(norms * q_norm, 1e-12)  # (N,)
        order = np.lexsort((-ids, -cosine))  # best first; ties: newest first
        best = {int(ids[i]): float(cosine[i]) for i in order[:limit] if cosine[i] > 0.0}
        if not best:
            return []
        with self._lock:
            rows = self._connection().execute(
                f"SELECT {_COLUMNS} FROM generations WHERE id IN ({', '.join('?' * len(best))})", tuple(best)
            ).fetchall()
        records = {r.id: r for r in map(_record, rows)}  # a row deleted meanwhile just drops out
        return [(records[i], score) for i, score in best.items() if i in records]

    def _embed_texts(self, texts: builtins.list[str]) -> np.ndarray:
        """Call ``embed`` and check it returned one finite float32 vector per text: (N, D)."""
        out = np.asarray(self.embed(texts), dtype=np.float32)
        if out.ndim == 1 and len(texts) == 1:
            out = out[None, :]
        if out.ndim != 2 or out.shape[0] != len(texts):
            raise ValueError(f"embed returned shape {out.shape} for {len(texts)} text(s); expected (N, D)")
        if not np.isfinite(out).all():
            raise ValueError("embed returned non-finite values")
        return np.ascontiguousarray(out)


# --------------------------------------------------------------------------------------
# Helpers: query building, validation, (de)serialisation
# --------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def fts_query(text: str) -> str:
    """Turn free text into a safe FTS5 query: every word quoted and prefix-matched.

    All words must match, except that a bare ``OR`` between words separates alternatives
    (``cat OR dog``) -- the one operator people type into search boxes. Only runs of word
    characters survive and each is quoted, so FTS5 syntax (quotes, ``*``, ``-``, ``:``,
    parentheses, ``NEAR``, ``AND``/``NOT``) can never reach the parser. An empty string means
    "nothing to search for".
    """
    groups: list[list[str]] = [[]]
    for word in _WORD.findall(text):
        if word == "OR":
            groups.append([])
        else:
            groups[-1].append(f'"{word}"*')
    return " OR ".join(f"({' '.join(g)})" for g in groups if g)


def _filters(kind: Optional[str], user: Optional[str], table: str = "") -> tuple[str, tuple]:
    prefix = f"{table}." if table else ""
    clauses, args = [], []
    if kind is not None:
        clauses.append(f"{prefix}kind = ?")
        args.append(_check_kind(kind))
    if user is not None:
        clauses.append(f"{prefix}user = ?")
        args.append(user)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    return kind


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")


def _integral(value: Any) -> Any:
    """Gradio number boxes hand over floats: 42.0 means 42 (exact up to 2**53), 42.5 stays a float."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _check_id(record_id: Any) -> int:
    record_id = _integral(record_id)
    if not _is_int(record_id):
        raise ValueError(f"a history id must be an integer, got {record_id!r}")
    return int(record_id)


def _params_to_json(params: Any) -> str:
    if not isinstance(params, dict):
        raise ValueError(f"params must be a dict, got {type(params).__name__}")
    if not all(isinstance(k, str) for k in params):
        raise ValueError("params keys must be strings (JSON would silently turn them into strings)")

    def numpy_scalars(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        raise TypeError(f"{type(value).__name__} is not JSON-serialisable")

    try:
        return json.dumps(params, allow_nan=False, default=numpy_scalars)
    except (TypeError, ValueError) as e:
        raise ValueError(f"params must be JSON-serialisable with finite numbers: {e}") from None


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _record(row: Sequence[Any]) -> Record:
    (id_, created_at, kind, prompt, negative_prompt, params, seed, model_id, user, files, output_text, rating) = row
    return Record(
        id=int(id_),
        created_at=created_at,
        kind=kind,
        prompt=prompt,
        negative_prompt=negative_prompt,
        params=json.loads(params),
        seed=int(seed),
        model_id=model_id,
        user=user,
        files=tuple(json.loads(files)),
        output_text=output_text,
        rating=int(rating),
    )


def _json_line(record: Record) -> bytes:
    return (json.dumps(record.to_dict(), ensure_ascii=False) + "\n").encode("utf-8")


def _jsonl(conn: sqlite3.Connection) -> bytes:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM generations ORDER BY id")
    return b"".join(_json_line(_record(r)) for r in rows)


def _ends_with_newline(path: Path) -> bool:
    """True for an empty file or one whose last byte is a newline; False if missing."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return True
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
    except FileNotFoundError:
        return False
