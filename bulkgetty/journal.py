"""The journal: what has been bought, where its bytes are, and what is done. The only module
that touches the database.

SQLite in WAL mode with `synchronous=FULL`: an acquisition (intent before the POST, the URI
the moment it arrives) is committed before anything else happens to the asset, so a kill -9 or
a power cut can never make us forget that a download was spent. Progress is batched by the
caller (`AsyncJournal.stage_progress`), so the journal is never the bottleneck.

All access goes through one thread (`AsyncJournal`), as aiosqlite does: sqlite3 objects are
not shared across threads and writes are serialised for free. Calls that queue up while that
thread is committing share its next commit (group commit): each caller still resumes only once
its change is durable, but sixteen workers pay for one fsync instead of sixteen. A lock file
refuses a second run on the same folder while this one lives.

Shared filesystems (job arrays writing to NFS, Lustre, CIFS...): the lock is `flock`, which
Linux's NFS client turns into a whole-file lock held by the server (NLM on v3, the protocol on
v4), so a second process on another host is refused too; a mount with `nolock`/`local_lock`
keeps locks on one host only and cannot protect a folder shared by hosts. WAL needs shared
memory between the processes using the database, which a network filesystem cannot give, so
there the journal uses the rollback journal instead (`journal_mode_for`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Generic, ParamSpec, Protocol, TypeVar

import orjson

from .assets import Asset
from .errors import DiskFullError, JournalError

__all__ = (
    "NETWORK_FILESYSTEMS",
    "STATE_DIR",
    "AssetState",
    "AsyncJournal",
    "Journal",
    "Record",
    "RunRow",
    "RunTotals",
    "failure_counts",
    "filesystem_type",
    "iter_done",
    "journal_mode_for",
    "runs",
    "waiting_reasons",
)

T = TypeVar("T")
P = ParamSpec("P")

#: Everything bulkgetty keeps besides finished files lives here, inside the output folder.
STATE_DIR: Final = ".bulkgetty"
#: Bytes kept free for the journal in `DIR/.bulkgetty/reserve`: on a full disk they are given
#: back so that the URIs of the POSTs still in flight can be committed (a URI that arrived is
#: a paid download). Enough for a few hundred small commits.
RESERVE_BYTES: Final = 256 * 1024


def private_state_dir(state_dir: Path) -> None:
    """The state folder is the owner's alone (0700), whatever the umask.

    The journal holds delivery URIs: each is a bearer credential for its paid file for 24 h,
    so on a shared machine or a cluster filesystem no other local user may read them.
    """
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if state_dir.stat().st_mode & 0o077:
        os.chmod(state_dir, 0o700)


def private_file(path: Path) -> None:
    """Create `path` as 0600 (or tighten it to 0600): the owner's alone, whatever the umask."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


SCHEMA_VERSION: Final = 1
#: Most calls one commit may carry; bounds the latency a burst adds to its first caller.
GROUP_LIMIT: Final = 256


class AssetState(StrEnum):
    """Where one asset stands. `intent` and `in_doubt` are the states money hides in."""

    PENDING = "pending"
    #: The POST is about to be (or was) sent; no answer recorded yet.
    INTENT = "intent"
    #: The POST may have spent, but no URI came back (5xx, timeout, lost connection).
    IN_DOUBT = "in_doubt"
    #: A delivery URI is known (with its expiry); bytes may be partly on disk.
    ACQUIRED = "acquired"
    DONE = "done"
    FAILED = "failed"
    WAITING_FOR_QUOTA = "waiting_for_quota"


@dataclass(frozen=True, slots=True)
class Record:
    """One asset's row, as read back from the journal."""

    key: str
    asset: Asset
    state: AssetState
    uri: str | None = None
    uri_expires: float | None = None
    transfer: bytes | None = None
    path: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    error: str | None = None
    #: Downloads known to be spent on this asset, over all runs.
    spends: int = 0
    attempts: int = 0
    intent_at: float | None = None
    acquired_at: float | None = None


@dataclass(frozen=True, slots=True)
class RunTotals:
    """Counts per state over the assets of one run (or all runs), for `status` and reports."""

    by_state: dict[str, int]
    spends: int
    bytes_done: int
    in_doubt: int


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

_COLUMNS = (
    "key, asset, state, uri, uri_expires, transfer, path, bytes, sha256, error, spends, "
    "attempts, intent_at, acquired_at"
)


def _asset_to_json(asset: Asset) -> bytes:
    return orjson.dumps({k: getattr(asset, k) for k in Asset.__slots__ if getattr(asset, k)})


def _asset_from_json(data: bytes) -> Asset:
    return Asset(**orjson.loads(data))


def _record(row: Sequence[Any]) -> Record:
    return Record(
        key=row[0],
        asset=_asset_from_json(row[1]),
        state=AssetState(row[2]),
        uri=row[3],
        uri_expires=row[4],
        transfer=row[5],
        path=row[6],
        bytes=row[7],
        sha256=row[8],
        error=row[9],
        spends=row[10],
        attempts=row[11],
        intent_at=row[12],
        acquired_at=row[13],
    )


class Journal:
    """Synchronous journal over sqlite3; use it from one thread (AsyncJournal does)."""

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
            self._lock_fd = self._take_lock(out_dir)
        # SQLite gives its -wal and -shm files the database file's mode: create it 0600.
        private_file(self.path)
        self._keep_reserve()
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self.journal_mode = journal_mode_for(self.state_dir)
        self._db.execute(f"PRAGMA journal_mode={self.journal_mode}")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def _take_lock(self, out_dir: Path) -> int:
        """Hold an exclusive lock for the life of the run; a second run fails at once."""
        lock_path = self.state_dir / "lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise JournalError(
                f"another bulkgetty run (pid {holder}) is using {out_dir}; "
                "wait for it to finish or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _keep_reserve(self) -> None:
        """Hold RESERVE_BYTES for the journal (best effort: a disk already full has none)."""
        path = self.state_dir / "reserve"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return
        try:
            if os.fstat(fd).st_size < RESERVE_BYTES:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
        except OSError:
            os.ftruncate(fd, 0)  # no room: keep no half reserve that frees nothing useful
        finally:
            os.close(fd)

    def release_reserve(self) -> bool:
        """The disk is full: give the reserve back so pending commits fit; False if none."""
        path = self.state_dir / "reserve"
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            return False
        return size > 0

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
        rows = [(a.key, _asset_to_json(a), now, run_id) for a in assets]
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
            cur = self._db.execute(f"SELECT {_COLUMNS} FROM assets WHERE key IN ({marks})", chunk)
            out.extend(_record(row) for row in cur)
        return out

    def get(self, key: str) -> Record | None:
        found = self.get_many([key])
        return found[0] if found else None

    def record_intent(self, key: str) -> None:
        """Committed before the POST leaves: after a crash, an intent means "maybe spent"."""
        self._update(
            key,
            "state = 'intent', intent_at = ?, attempts = attempts + 1, error = NULL",
            (time.time(),),
        )

    def record_acquired(self, key: str, uri: str, expires: float) -> None:
        """The POST answered: one download spent, its URI kept so it is never bought again."""
        self._update(
            key,
            "state = 'acquired', uri = ?, uri_expires = ?, acquired_at = ?, spends = spends + 1, "
            "transfer = NULL, error = NULL",
            (uri, expires, time.time()),
        )

    def record_not_spent(self, key: str, state: AssetState, error: str | None) -> None:
        """The POST certainly spent nothing (refused, not found, over quota, never sent)."""
        self._update(key, "state = ?, error = ?", (state.value, error))

    def record_in_doubt(self, key: str, error: str) -> None:
        self._update(key, "state = 'in_doubt', error = ?", (error,))

    def record_spent_without_uri(self, key: str, error: str) -> None:
        """History shows the spend of an in-doubt POST: count it; its URI is lost with it."""
        self._update(
            key,
            "state = 'failed', spends = spends + 1, uri = NULL, uri_expires = NULL, error = ?",
            (error,),
        )

    def record_cleared_doubt(self, key: str) -> None:
        """History shows no spend: the asset may be acquired again without paying twice."""
        self._update(key, "state = 'pending', error = NULL", ())

    def record_done(self, key: str, *, path: str, size: int, sha256: str) -> None:
        self._update(
            key,
            "state = 'done', path = ?, bytes = ?, sha256 = ?, done_at = ?, error = NULL",
            (path, size, sha256, time.time()),
        )

    def record_uri_refused(self, key: str, error: str) -> None:
        """The delivery host refused the URI as expired: never try that URI again."""
        self._update(key, "state = 'failed', uri_expires = ?, error = ?", (time.time(), error))

    def record_failed(self, key: str, error: str) -> None:
        self._update(key, "state = 'failed', error = ?", (error,))

    def record_waiting_many(self, reasons: dict[str, str]) -> None:
        """Assets refused before any POST (quota closed, cap reached): one transaction."""
        if not reasons:
            return
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "UPDATE assets SET state = 'waiting_for_quota', error = ?, updated = ? "
                "WHERE key = ? AND state IN ('pending', 'waiting_for_quota', 'failed')",
                [(reason, now, key) for key, reason in reasons.items()],
            )

    def save_progress(self, states: dict[str, bytes]) -> None:
        """One transaction for a batch of transfer states (validators, bytes per segment)."""
        if not states:
            return
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "UPDATE assets SET transfer = ?, updated = ? WHERE key = ?",
                [(blob, now, key) for key, blob in states.items()],
            )

    def _update(self, key: str, assignments: str, params: tuple[object, ...]) -> None:
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE assets SET {assignments}, updated = ? WHERE key = ?",
                (*params, time.time(), key),
            )
        if cur.rowcount != 1:
            raise JournalError(f"journal has no asset {key!r}")

    # reading ---------------------------------------------------------------------------

    def iter_records(self, run_id: int | None = None, batch: int = 1000) -> Iterator[Record]:
        """All records (of one run, or all), in key order, a batch at a time: flat memory."""
        last = ""
        where = "" if run_id is None else "AND run_id = ?"
        while True:
            params: tuple[object, ...] = (last,) if run_id is None else (last, run_id)
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM assets WHERE key > ? {where} ORDER BY key LIMIT {batch}",
                params,
            ).fetchall()
            if not rows:
                return
            for row in rows:
                yield _record(row)
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


def journal_mode_for(state_dir: Path) -> str:
    """WAL on local disks; the rollback journal (DELETE) on network filesystems.

    WAL keeps its index in shared memory (`-wal`/`-shm` beside the database), which only
    works between processes on one host: SQLite documents WAL as unsafe on NFS, CIFS and
    cluster filesystems. `BULKGETTY_JOURNAL_MODE` overrides the choice.
    """
    forced = os.environ.get("BULKGETTY_JOURNAL_MODE", "").strip().upper()
    if forced in ("WAL", "DELETE", "TRUNCATE", "PERSIST"):
        return forced
    return "DELETE" if filesystem_type(state_dir) in NETWORK_FILESYSTEMS else "WAL"


#: Filesystem types (as /proc/self/mounts names them) shared between hosts.
NETWORK_FILESYSTEMS: Final = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "fuse.juicefs",
        "9p",
        "afs",
        "ocfs2",
        "gfs2",
    }
)


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding `path` (longest mount prefix), or None if unknown."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, fstype = "", None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, fields[2]
    return fstype


@dataclass(slots=True)
class _Call:
    fn: Callable[[], Any]
    future: asyncio.Future[Any]
    #: Run outside any group (closing the database must not happen inside a transaction).
    alone: bool = False
    ok: bool = False
    result: Any = field(default=None)


class _Staging(Protocol):
    def save_progress(self, states: dict[str, bytes]) -> None: ...
    def record_waiting_many(self, reasons: dict[str, str]) -> None: ...


J = TypeVar("J", bound=_Staging)


class StagedWrites(Generic[J]):
    """Writes that need no commit of their own, kept until the next `flush`.

    Transfer progress (only the newest state per asset counts) and rows put aside before any
    POST (nothing was spent on them) would cost a commit each; one `flush` writes them all.
    Shared by `AsyncJournal` and `ledger.AsyncLedger`, which supply `call`.
    """

    def __init__(self, journal: J) -> None:
        self.journal = journal
        self._staged: dict[str, bytes] = {}
        self._waiting: dict[str, str] = {}

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        raise NotImplementedError

    def stage_progress(self, key: str, state: bytes) -> None:
        self._staged[key] = state

    def drop_progress(self, key: str) -> None:
        self._staged.pop(key, None)

    def stage_waiting(self, key: str, reason: str) -> None:
        self._waiting[key] = reason

    async def flush(self) -> None:
        staged, self._staged = self._staged, {}
        waiting, self._waiting = self._waiting, {}
        if staged:
            await self.call(self.journal.save_progress, staged)
        if waiting:
            await self.call(self.journal.record_waiting_many, waiting)


class AsyncJournal(StagedWrites[Journal]):
    """The journal driven from one thread of its own, awaited from the event loop.

    Calls are serialised by that thread, and the calls waiting when it becomes free run
    together in one transaction (`Journal.group`): one commit, one fsync, one wake-up of the
    event loop for all of them. `stage_progress` only remembers the newest state per asset,
    and `flush` writes them all in one call.
    """

    def __init__(
        self, journal: Journal, inbox: queue.SimpleQueue[_Call | None], thread: threading.Thread
    ) -> None:
        super().__init__(journal)
        self._inbox = inbox
        self._thread = thread
        self._closed = False

    @classmethod
    async def open(cls, out_dir: Path) -> AsyncJournal:
        """Open the journal on the thread that will own it for its whole life."""
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[Journal] = loop.create_future()
        inbox: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        thread = threading.Thread(
            target=_serve, args=(out_dir, inbox, opened, loop), name="bulkgetty-journal"
        )
        thread.daemon = True
        thread.start()
        journal = await opened
        return cls(journal, inbox, thread)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one journal method on the journal's thread; return once it is committed.

        Shielded from cancellation: a commit that has been queued is allowed to finish even
        when the run is being cancelled, so an acquisition is never half-recorded.
        """
        try:
            return await self._submit(functools.partial(fn, *args, **kwargs), alone=False)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            # The transaction was rolled back: the journal holds what was committed before.
            raise _disk_full(self.journal) from exc

    async def _submit(self, fn: Callable[[], T], *, alone: bool) -> T:
        if self._closed:
            raise JournalError("the journal is closed")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        # If the caller is cancelled meanwhile (a run stopping on a full disk), nobody awaits
        # the failure: retrieve it here so asyncio prints no "never retrieved" traceback.
        fut.add_done_callback(_retrieve)
        self._inbox.put(_Call(fn, fut, alone=alone))
        return await asyncio.shield(fut)

    async def close(self) -> None:
        await self.flush()
        try:
            await self._submit(self.journal.close, alone=True)
        finally:
            self._closed = True
            self._inbox.put(None)
            await asyncio.to_thread(self._thread.join)


def _serve(
    out_dir: Path,
    inbox: queue.SimpleQueue[_Call | None],
    opened: asyncio.Future[Journal],
    loop: asyncio.AbstractEventLoop,
) -> None:
    """The journal thread: open, then run queued calls a group (one commit) at a time."""
    try:
        journal = Journal(out_dir)
    except BaseException as exc:
        loop.call_soon_threadsafe(_settle_open, opened, None, exc)
        return
    loop.call_soon_threadsafe(_settle_open, opened, journal, None)
    carried: list[_Call | None] = []  # the call that ended the last group, not yet run
    while True:
        first = carried.pop() if carried else inbox.get()
        if first is None:
            return
        batch = [first]
        while not first.alone and len(batch) < GROUP_LIMIT:
            try:
                nxt = inbox.get_nowait()
            except queue.Empty:
                break
            if nxt is None or nxt.alone:
                carried.append(nxt)
                break
            batch.append(nxt)
        _run_group(journal, batch)
        loop.call_soon_threadsafe(_deliver, batch)


def _run_group(journal: Journal, batch: list[_Call]) -> None:
    """Run a batch as one commit; on a full disk, once more after giving the reserve back."""
    _try_group(journal, batch)
    if any(_is_full(call) for call in batch) and journal.release_reserve():
        _try_group(journal, [call for call in batch if not call.ok])


def _try_group(journal: Journal, batch: list[_Call]) -> None:
    if len(batch) == 1 or journal.closed:
        for call in batch:  # a lone call (close() among them) needs no group transaction
            _run_one(call)
        return
    try:
        with journal.group():
            for call in batch:
                _run_one(call)
    except Exception as exc:  # the commit failed: nothing of the group is durable
        full = isinstance(exc, sqlite3.OperationalError) and (
            exc.sqlite_errorcode == sqlite3.SQLITE_FULL
        )
        error = exc if full else JournalError(f"journal commit failed: {exc}")
        for call in batch:
            call.ok, call.result = False, error


def _is_full(call: _Call) -> bool:
    exc = call.result
    return (
        not call.ok
        and isinstance(exc, sqlite3.OperationalError)
        and exc.sqlite_errorcode == sqlite3.SQLITE_FULL
    )


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _disk_full(journal: Journal) -> DiskFullError:
    return DiskFullError(f"cannot write the journal in {journal.state_dir}: disk full")


def _run_one(call: _Call) -> None:
    try:
        call.result, call.ok = call.fn(), True
    except Exception as exc:
        call.result, call.ok = exc, False


def _deliver(batch: list[_Call]) -> None:
    for call in batch:
        if call.future.cancelled():
            continue
        if call.ok:
            call.future.set_result(call.result)
        else:
            call.future.set_exception(call.result)


def _settle_open(
    opened: asyncio.Future[Journal], journal: Journal | None, exc: BaseException | None
) -> None:
    if exc is not None:
        opened.set_exception(exc)
    else:
        assert journal is not None
        opened.set_result(journal)


# read-only queries for `bulkgetty status` ----------------------------------------------


@dataclass(frozen=True, slots=True)
class RunRow:
    """One run as the journal remembers it."""

    id: int
    started: float
    finished: float | None
    manifest: str
    spends: int
    exit_code: int | None


def failure_counts(journal: Journal) -> list[tuple[str, int]]:
    """(error, assets) for failed assets, most frequent first."""
    rows = journal._db.execute(
        "SELECT COALESCE(error, ''), COUNT(*) FROM assets WHERE state = 'failed' "
        "GROUP BY error ORDER BY COUNT(*) DESC"
    )
    return [(str(error), int(count)) for error, count in rows]


def waiting_reasons(journal: Journal) -> list[tuple[str, int]]:
    """(reason, assets) for assets waiting for quota, most frequent first."""
    rows = journal._db.execute(
        "SELECT COALESCE(error, ''), COUNT(*) FROM assets WHERE state = 'waiting_for_quota' "
        "GROUP BY error ORDER BY COUNT(*) DESC"
    )
    return [(str(error), int(count)) for error, count in rows]


def runs(journal: Journal) -> list[RunRow]:
    """Every run, oldest first."""
    rows = journal._db.execute(
        "SELECT id, started, finished, manifest, spends, exit_code FROM runs ORDER BY id"
    )
    return [RunRow(*row) for row in rows]


def iter_done(journal: Journal, batch: int = 1000) -> Iterator[Record]:
    """Finished assets in key order, a batch at a time (for `status --verify`)."""
    last = ""
    while True:
        rows = journal._db.execute(
            f"SELECT {_COLUMNS} FROM assets WHERE state = 'done' AND key > ? "
            f"ORDER BY key LIMIT {batch}",
            (last,),
        ).fetchall()
        if not rows:
            return
        for row in rows:
            yield _record(row)
        last = rows[-1][0]
