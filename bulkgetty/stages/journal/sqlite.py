"""The journal's database: one SQLite file per output folder, opened by one thread.

SQLite in WAL mode with `synchronous=FULL`: an acquisition (intent before the POST, the URI
the moment it arrives) is committed before anything else happens to the asset, so a kill -9 or
a power cut can never make us forget that a download was spent.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

import orjson

from bulkgetty.assets import Asset
from bulkgetty.errors import JournalError
from bulkgetty.stages.journal.records import (
    COLUMNS,
    Record,
    RunTotals,
    asset_json,
    record_from_row,
)
from bulkgetty.stages.journal.storage import (
    STATE_DIR,
    journal_mode_for,
    keep_reserve,
    private_file,
    private_state_dir,
    release_reserve,
    take_lock,
)
from bulkgetty.stages.journal.transitions import AssetTransitions

__all__ = ("SCHEMA_VERSION", "Journal")

SCHEMA_VERSION: Final = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,
    finished REAL,
    manifest TEXT NOT NULL,
    spends INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER
);
CREATE TABLE IF NOT EXISTS assets (
    key TEXT PRIMARY KEY,
    asset BLOB NOT NULL,
    state TEXT NOT NULL,
    uri TEXT,
    uri_expires REAL,
    transfer BLOB,
    path TEXT,
    bytes INTEGER,
    sha256 TEXT,
    error TEXT,
    spends INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    intent_at REAL,
    acquired_at REAL,
    done_at REAL,
    run_id INTEGER,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS assets_run ON assets (run_id);
"""


class Journal(AssetTransitions):
    """Synchronous journal over sqlite3; use it from one thread (AsyncJournal does).

    Opening, transactions, runs and reads live here; each asset's state changes are
    `AssetTransitions` (transitions.py), which only need `_tx` and the connection.
    """

    def __init__(self, out_dir: Path, *, lock: bool = True, read_only: bool = False) -> None:
        self.state_dir = out_dir / STATE_DIR
        self.path = self.state_dir / "journal.sqlite"
        self._lock_fd: int | None = None
        self._in_group = False
        self.closed = False
        if read_only:
            if not self.path.exists():
                raise JournalError(f"no bulkgetty journal in {out_dir}")
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None)
            return
        private_state_dir(self.state_dir)
        if lock:
            self._lock_fd = take_lock(self.state_dir, out_dir)
        # SQLite gives its -wal and -shm files the database file's mode: create it 0600.
        private_file(self.path)
        keep_reserve(self.state_dir)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self.journal_mode = journal_mode_for(self.state_dir)
        self._db.execute(f"PRAGMA journal_mode={self.journal_mode}")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def release_reserve(self) -> bool:
        """The disk is full: give the reserve back so pending commits fit; False if none."""
        return release_reserve(self.state_dir)

    # shard binding ---------------------------------------------------------------------

    def read_meta(self) -> dict[str, str]:
        """Everything in the meta table (schema version, and for shards: spec and manifest)."""
        return {name: value for name, value in self._db.execute("SELECT name, value FROM meta")}

    def bind_meta(self, meta: Mapping[str, str]) -> None:
        """Record `meta` on the first run; refuse a later run whose values differ.

        A shard folder belongs to one shard of one manifest: rerunning it as another shard, with
        another shard count or on another manifest would mix assets of different shards into
        one journal, and `merge` could no longer prove that every row was done exactly once.
        """
        with self._tx() as db:
            known = dict(db.execute("SELECT name, value FROM meta").fetchall())
            for name, value in meta.items():
                have = known.get(name)
                if have is None:
                    db.execute("INSERT INTO meta VALUES (?, ?)", (name, value))
                elif have != value:
                    raise JournalError(
                        f"{self.state_dir.parent} was run with {name} {have}, "
                        f"this run has {value}; "
                        "use a fresh --out folder for another shard layout or manifest"
                    )

    def close(self) -> None:
        self.closed = True
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def group(self) -> Iterator[None]:
        """One transaction around several calls; each call's own `_tx` becomes a savepoint.

        A call that fails rolls back only its own savepoint; the others still commit.
        """
        self._db.execute("BEGIN IMMEDIATE")
        self._in_group = True
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        finally:
            self._in_group = False
        try:
            self._db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        begin, undo, end = (
            ("SAVEPOINT call", "ROLLBACK TO call", "RELEASE call")
            if self._in_group
            else ("BEGIN IMMEDIATE", "ROLLBACK", "COMMIT")
        )
        self._db.execute(begin)
        try:
            yield self._db
        except BaseException:
            self._db.execute(undo)
            if self._in_group:
                self._db.execute(end)
            raise
        self._db.execute(end)

    # runs ------------------------------------------------------------------------------

    def begin_run(self, manifest: str) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO runs (started, manifest) VALUES (?, ?)", (time.time(), manifest)
            )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def finish_run(self, run_id: int, *, spends: int, exit_code: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET finished = ?, spends = ?, exit_code = ? WHERE id = ?",
                (time.time(), spends, exit_code, run_id),
            )

    # assets ----------------------------------------------------------------------------

    def upsert(self, assets: Iterable[Asset], run_id: int) -> list[Record]:
        """Register the manifest's assets for this run and return their journal records.

        An asset seen in an earlier run keeps everything it had (URI, bytes, spends): that is
        what makes a rerun spend nothing twice.
        """
        now = time.time()
        rows = [(a.key, asset_json(a), now, run_id) for a in assets]
        with self._tx() as db:
            db.executemany(
                "INSERT INTO assets (key, asset, state, updated, run_id) "
                "VALUES (?, ?, 'pending', ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET run_id = excluded.run_id",
                rows,
            )
        keys = [r[0] for r in rows]
        found = {rec.key: rec for rec in self.get_many(keys)}
        return [found[k] for k in keys]

    def get_many(self, keys: Sequence[str]) -> list[Record]:
        out: list[Record] = []
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            cur = self._db.execute(f"SELECT {COLUMNS} FROM assets WHERE key IN ({marks})", chunk)
            out.extend(record_from_row(row) for row in cur)
        return out

    def get(self, key: str) -> Record | None:
        found = self.get_many([key])
        return found[0] if found else None

    # reading ---------------------------------------------------------------------------

    def iter_records(self, run_id: int | None = None, batch: int = 1000) -> Iterator[Record]:
        """All records (of one run, or all), in key order, a batch at a time: flat memory."""
        last = ""
        where = "" if run_id is None else "AND run_id = ?"
        while True:
            params: tuple[object, ...] = (last,) if run_id is None else (last, run_id)
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM assets WHERE key > ? {where} ORDER BY key LIMIT {batch}",
                params,
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield record_from_row(row)
            last = rows[-1][0]

    def totals(self, run_id: int | None = None) -> RunTotals:
        where, params = ("", ()) if run_id is None else ("WHERE run_id = ?", (run_id,))
        by_state = {
            state: count
            for state, count in self._db.execute(
                f"SELECT state, COUNT(*) FROM assets {where} GROUP BY state", params
            )
        }
        spends, done_bytes = self._db.execute(
            "SELECT COALESCE(SUM(spends), 0), "
            f"COALESCE(SUM(CASE WHEN state = 'done' THEN bytes END), 0) FROM assets {where}",
            params,
        ).fetchone()
        return RunTotals(
            by_state=by_state,
            spends=int(spends),
            bytes_done=int(done_bytes),
            in_doubt=by_state.get("in_doubt", 0) + by_state.get("intent", 0),
        )

    def part_names_in_use(self) -> set[str]:
        """Final names whose `.part` an unfinished asset may resume into."""
        rows = self._db.execute(
            "SELECT transfer FROM assets WHERE state != 'done' AND transfer IS NOT NULL"
        )
        names = (orjson.loads(blob).get("name") for (blob,) in rows)
        return {name for name in names if isinstance(name, str)}

    def uses_name(self, name: str) -> bool:
        """A finished or in-progress asset already owns this file name."""
        row = self._db.execute("SELECT 1 FROM assets WHERE path = ? LIMIT 1", (name,)).fetchone()
        return row is not None
