"""The team's shared ledger on PostgreSQL: one manifest, any number of workers on any machines.

The same acquisition states as the SQLite journal (intent, in doubt, acquired with URI and
expiry, done, failed), so in-doubt handling is the acquirer's, unchanged. What PostgreSQL adds:

Claims. A worker takes a batch of unfinished assets with `SELECT ... FOR UPDATE SKIP LOCKED`
and stamps them with its backend's pid and start time. A claim is held for as long as that
database connection lives; it is taken over only when the server no longer has that backend
(`pg_stat_activity`), i.e. the worker's process or machine is gone, never because it went
quiet: a slow worker is still mid-purchase, and taking its asset would be a double spend.

Budget. One row holds the team's remaining downloads, with `CHECK (remaining >= 0)`. The
transaction that records an asset's intent (the last step before its POST) decrements it and
verifies the claim; when the budget is spent the CHECK fails and the POST never leaves. The
download is given back in the same transaction that proves nothing was spent (refused, cleared
doubt), and kept when the POST spent or may have spent.

Rate. `SharedRateLimiter` hands out the API key's query slots from one row: each request
reserves the next slot (`next_slot = greatest(next_slot, now) + 1/rate`, in the database's
clock) and sleeps until it, so all workers together keep to the key's rate.

psycopg 3 is an optional extra: `pip install 'bulkgetty[postgres]'`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

import orjson

try:
    import psycopg
    from psycopg import errors as pg_errors
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the PostgreSQL ledger needs psycopg 3: pip install 'bulkgetty[postgres]'"
    ) from exc

from .assets import Asset
from .errors import JournalError, QuotaExceededError, UsageError
from .journal import STATE_DIR, AssetState, Record, RunTotals, StagedWrites
from .ratelimit import RateLimiter

__all__ = (
    "SCHEMA",
    "AsyncLedger",
    "Ledger",
    "LedgerBudget",
    "SharedRateLimiter",
    "claimed_rows",
    "init_ledger",
)

T = TypeVar("T")
P = ParamSpec("P")

#: Assets claimed per round trip.
CLAIM_BATCH: Final = 200

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS bulkgetty_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bulkgetty_budget (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    remaining BIGINT NOT NULL CHECK (remaining >= 0),
    spent BIGINT NOT NULL DEFAULT 0,
    seeded DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS bulkgetty_rate (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    rate DOUBLE PRECISION CHECK (rate > 0),
    next_slot DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS bulkgetty_runs (
    id BIGSERIAL PRIMARY KEY,
    started DOUBLE PRECISION NOT NULL,
    finished DOUBLE PRECISION,
    manifest TEXT NOT NULL,
    worker TEXT NOT NULL,
    spends INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER
);
CREATE TABLE IF NOT EXISTS bulkgetty_assets (
    key TEXT PRIMARY KEY,
    asset BYTEA NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'intent', 'in_doubt', 'acquired', 'done',
                                         'failed', 'waiting_for_quota')),
    uri TEXT,
    uri_expires DOUBLE PRECISION,
    transfer BYTEA,
    path TEXT,
    bytes BIGINT,
    sha256 TEXT,
    error TEXT,
    spends INTEGER NOT NULL DEFAULT 0 CHECK (spends >= 0),
    attempts INTEGER NOT NULL DEFAULT 0,
    intent_at DOUBLE PRECISION,
    acquired_at DOUBLE PRECISION,
    done_at DOUBLE PRECISION,
    -- one download of the budget is reserved for this asset's POST in flight or in doubt
    holds_budget BOOLEAN NOT NULL DEFAULT false,
    claimed_pid INTEGER,
    claimed_since TIMESTAMPTZ,
    -- host:/folder whose .part files the transfer state refers to
    out_dir TEXT,
    run_id BIGINT,
    updated DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS bulkgetty_assets_open ON bulkgetty_assets (key) WHERE state <> 'done';
"""

_COLUMNS = (
    "key, asset, state, uri, uri_expires, transfer, path, bytes, sha256, error, spends, "
    "attempts, intent_at, acquired_at"
)

#: A claim is dead when no backend with that pid and start time exists any more.
_CLAIM_DEAD = (
    "(a.claimed_pid IS NULL OR NOT EXISTS (SELECT 1 FROM pg_stat_activity s "
    "WHERE s.pid = a.claimed_pid AND s.backend_start = a.claimed_since))"
)


def _asset_to_json(asset: Asset) -> bytes:
    return orjson.dumps({k: getattr(asset, k) for k in Asset.__slots__ if getattr(asset, k)})


def _record(row: Sequence[Any]) -> Record:
    return Record(
        key=row[0],
        asset=Asset(**orjson.loads(row[1])),
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


def _connect(dsn: str) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(dsn, autocommit=True, application_name="bulkgetty")
    except psycopg.Error as exc:
        raise JournalError(f"cannot connect to the ledger: {_pg_message(exc)}") from None


def _pg_message(exc: BaseException) -> str:
    """First line of a driver error; the DSN (and any password in it) never appears."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _pg_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """Database failures become JournalError: one line, no traceback, no DSN."""

    @functools.wraps(fn)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except psycopg.Error as exc:
            raise JournalError(f"ledger: {_pg_message(exc)}") from exc

    return wrapped


def _lock_folder(out_dir: Path) -> int:
    """The same folder lock as the SQLite journal's (`DIR/.bulkgetty/lock`): two workers must
    never share a folder, whose file names and `.part` files each believes its own."""
    state = out_dir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise JournalError(
            f"another bulkgetty run (pid {holder}) is using {out_dir}; "
            "give each ledger worker its own --out folder"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class LedgerBudget:
    """The budget row as `ledger status` shows it."""

    def __init__(self, remaining: int, spent: int) -> None:
        self.remaining = remaining
        self.spent = spent


def init_ledger(
    dsn: str,
    assets: Iterable[Asset],
    *,
    downloads_remaining: int,
    api_rate: float | None,
    reseed: bool = False,
) -> tuple[int, int]:
    """Create the tables, load the manifest's rows and seed the budget and the shared rate.

    Loading again adds only new rows. The budget is seeded once; `reseed` sets it again (the
    account's quota was reset) and never counts downloads reserved by POSTs in flight twice.
    Returns (rows added, remaining budget).
    """
    if downloads_remaining < 0:
        raise UsageError(f"downloads remaining must be 0 or more, got {downloads_remaining}")
    db = _connect(dsn)
    try:
        with db.transaction():
            db.execute(SCHEMA)
        added = _load(db, assets)
        with db.transaction():
            held = db.execute("SELECT count(*) FROM bulkgetty_assets WHERE holds_budget").fetchone()
            in_flight = int(held[0]) if held else 0
            seed = max(0, downloads_remaining - in_flight)
            if reseed:
                db.execute(
                    "INSERT INTO bulkgetty_budget (id, remaining, seeded) VALUES (1, %s, %s) "
                    "ON CONFLICT (id) DO UPDATE SET remaining = excluded.remaining, "
                    "seeded = excluded.seeded",
                    (seed, time.time()),
                )
            else:
                db.execute(
                    "INSERT INTO bulkgetty_budget (id, remaining, seeded) VALUES (1, %s, %s) "
                    "ON CONFLICT (id) DO NOTHING",
                    (seed, time.time()),
                )
            db.execute(
                "INSERT INTO bulkgetty_rate (id, rate) VALUES (1, %s) "
                "ON CONFLICT (id) DO UPDATE SET rate = excluded.rate",
                (api_rate,),
            )
            row = db.execute("SELECT remaining FROM bulkgetty_budget WHERE id = 1").fetchone()
        return added, int(row[0]) if row else 0
    except psycopg.Error as exc:
        raise JournalError(f"ledger: {_pg_message(exc)}") from None
    finally:
        db.close()


def _load(db: psycopg.Connection[Any], assets: Iterable[Asset]) -> int:
    """COPY the rows into a temporary table, then add the new ones: fast for millions."""
    now = time.time()
    with db.transaction():
        db.execute("CREATE TEMP TABLE bulkgetty_load (key TEXT, asset BYTEA) ON COMMIT DROP")
        with db.cursor() as cur, cur.copy("COPY bulkgetty_load (key, asset) FROM STDIN") as copy:
            for asset in assets:
                copy.write_row((asset.key, _asset_to_json(asset)))
        cur2 = db.execute(
            "INSERT INTO bulkgetty_assets (key, asset, state, updated) "
            "SELECT DISTINCT ON (key) key, asset, 'pending', %s FROM bulkgetty_load "
            "ON CONFLICT (key) DO NOTHING",
            (now,),
        )
        return cur2.rowcount


class Ledger:
    """One worker's connection to the ledger; use it from one thread (AsyncLedger does).

    The connection is the worker's identity: its claims live exactly as long as it does.
    """

    def __init__(self, dsn: str, out_dir: Path, *, lock: bool = True) -> None:
        self._lock_fd = _lock_folder(out_dir) if lock else None
        try:
            self._db = _connect(dsn)
        except BaseException:
            self._unlock()
            raise
        self.out_dir = f"{socket.gethostname()}:{out_dir.resolve()}"
        try:
            row = self._db.execute(
                "SELECT pid, backend_start, to_regclass('bulkgetty_assets') IS NOT NULL "
                "FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            ).fetchone()
        except psycopg.Error as exc:
            self.close()
            raise JournalError(f"ledger: {_pg_message(exc)}") from None
        if row is None or not row[2]:
            self.close()
            raise JournalError(
                "the ledger has no bulkgetty tables: run `bulkgetty ledger init MANIFEST` first"
            )
        self.pid: int = row[0]
        self.since: Any = row[1]

    def close(self) -> None:
        self._db.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        with self._db.transaction():
            yield self._db

    # claims ----------------------------------------------------------------------------

    @_pg_errors
    def claim(self, limit: int = CLAIM_BATCH) -> list[Record]:
        """Take up to `limit` unfinished assets no live worker holds; keep them until we exit.

        Assets already held stay ours, so one run passes over each asset once. A transfer
        state recorded by another folder is dropped: its `.part` is not here.
        """
        with self._tx() as db:
            rows = db.execute(
                f"UPDATE bulkgetty_assets AS t SET claimed_pid = %(pid)s, "
                f"claimed_since = %(since)s, "
                f"transfer = CASE WHEN t.out_dir = %(out)s THEN t.transfer END, "
                f"out_dir = %(out)s "
                f"FROM (SELECT a.key, a.claimed_pid, a.claimed_since FROM bulkgetty_assets a "
                f"WHERE a.state <> 'done' AND {_CLAIM_DEAD} "
                f"ORDER BY a.key LIMIT %(limit)s FOR UPDATE SKIP LOCKED) AS c "
                # Compare-and-set: rechecked on the newest row version, so a claim another
                # worker committed after our snapshot is never overwritten.
                f"WHERE t.key = c.key AND t.state <> 'done' "
                f"AND t.claimed_pid IS NOT DISTINCT FROM c.claimed_pid "
                f"AND t.claimed_since IS NOT DISTINCT FROM c.claimed_since "
                f"RETURNING {', '.join('t.' + c.strip() for c in _COLUMNS.split(','))}",
                {"pid": self.pid, "since": self.since, "out": self.out_dir, "limit": limit},
            ).fetchall()
        return sorted((_record(r) for r in rows), key=lambda r: r.key)

    # runs and meta ---------------------------------------------------------------------

    @_pg_errors
    def begin_run(self, manifest: str) -> int:
        with self._tx() as db:
            row = db.execute(
                "INSERT INTO bulkgetty_runs (started, manifest, worker) VALUES (%s, %s, %s) "
                "RETURNING id",
                (time.time(), manifest, self.out_dir),
            ).fetchone()
        assert row is not None
        return int(row[0])

    @_pg_errors
    def finish_run(self, run_id: int, *, spends: int, exit_code: int) -> None:
        self._db.execute(
            "UPDATE bulkgetty_runs SET finished = %s, spends = %s, exit_code = %s WHERE id = %s",
            (time.time(), spends, exit_code, run_id),
        )

    @_pg_errors
    def read_meta(self) -> dict[str, str]:
        rows = self._db.execute("SELECT name, value FROM bulkgetty_meta").fetchall()
        return {name: value for name, value in rows}

    @_pg_errors
    def bind_meta(self, meta: Mapping[str, str]) -> None:
        """As `Journal.bind_meta`: the first writer records, later ones must match."""
        with self._tx() as db:
            for name, value in meta.items():
                db.execute(
                    "INSERT INTO bulkgetty_meta VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    (name, value),
                )
                row = db.execute(
                    "SELECT value FROM bulkgetty_meta WHERE name = %s", (name,)
                ).fetchone()
                if row is not None and row[0] != value:
                    raise JournalError(f"the ledger was set up with {name} {row[0]}, not {value}")

    @_pg_errors
    def budget(self) -> LedgerBudget:
        row = self._db.execute("SELECT remaining, spent FROM bulkgetty_budget").fetchone()
        return LedgerBudget(int(row[0]), int(row[1])) if row else LedgerBudget(0, 0)

    # assets ----------------------------------------------------------------------------

    @_pg_errors
    def upsert(self, assets: Iterable[Asset], run_id: int) -> list[Record]:
        """Mark our claimed assets as this run's and return them; rows not in the ledger are
        added and claimed. An asset held by another live worker is refused, never shared."""
        batch = list(assets)
        now = time.time()
        keys = [a.key for a in batch]
        with self._tx() as db:
            with db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO bulkgetty_assets (key, asset, state, updated, claimed_pid, "
                    "claimed_since, out_dir) VALUES (%s, %s, 'pending', %s, %s, %s, %s) "
                    "ON CONFLICT (key) DO NOTHING",
                    [
                        (a.key, _asset_to_json(a), now, self.pid, self.since, self.out_dir)
                        for a in batch
                    ],
                )
            rows = db.execute(
                f"UPDATE bulkgetty_assets SET run_id = %s WHERE key = ANY(%s) "
                f"AND claimed_pid = %s AND claimed_since = %s RETURNING {_COLUMNS}",
                (run_id, keys, self.pid, self.since),
            ).fetchall()
        found = {r.key: r for r in map(_record, rows)}
        lost = [k for k in keys if k not in found]
        if lost:
            raise JournalError(f"ledger: {lost[0]} is claimed by another live worker")
        return [found[k] for k in keys]

    def _take_budget(self, db: psycopg.Connection[Any], key: str) -> None:
        """Reserve one download for this asset's POST, or refuse when the budget is spent."""
        row = db.execute(
            "SELECT holds_budget FROM bulkgetty_assets WHERE key = %s AND claimed_pid = %s "
            "AND claimed_since = %s FOR UPDATE",
            (key, self.pid, self.since),
        ).fetchone()
        if row is None:
            raise JournalError(f"ledger: this worker no longer holds the claim on {key}")
        if row[0]:
            return
        try:
            with db.transaction():  # a savepoint: the CHECK failure must not end the outer one
                db.execute("UPDATE bulkgetty_budget SET remaining = remaining - 1 WHERE id = 1")
        except pg_errors.CheckViolation:
            raise QuotaExceededError(
                "the team ledger's download budget is spent",
                status=0,
                code="LedgerBudgetSpent",
            ) from None

    def _give_back(self, db: psycopg.Connection[Any], key: str) -> None:
        db.execute(
            "UPDATE bulkgetty_budget SET remaining = remaining + 1 WHERE id = 1 AND EXISTS "
            "(SELECT 1 FROM bulkgetty_assets WHERE key = %s AND holds_budget)",
            (key,),
        )

    def _spent(self, db: psycopg.Connection[Any], key: str) -> None:
        db.execute(
            # Never fails: a spend that happened is recorded even if nothing was reserved.
            "UPDATE bulkgetty_budget SET spent = spent + 1, remaining = GREATEST(0, remaining - "
            "(CASE WHEN EXISTS (SELECT 1 FROM bulkgetty_assets WHERE key = %s "
            "AND holds_budget) THEN 0 ELSE 1 END)) WHERE id = 1",
            (key,),
        )

    @_pg_errors
    def record_intent(self, key: str) -> None:
        """Committed before the POST leaves, with the budget reserved in the same transaction."""
        with self._tx() as db:
            self._take_budget(db, key)
            self._set(
                db,
                key,
                "state = 'intent', intent_at = %s, attempts = attempts + 1, error = NULL, "
                "holds_budget = true",
                (time.time(),),
            )

    @_pg_errors
    def record_acquired(self, key: str, uri: str, expires: float) -> None:
        with self._tx() as db:
            self._spent(db, key)
            self._set(
                db,
                key,
                "state = 'acquired', uri = %s, uri_expires = %s, acquired_at = %s, "
                "spends = spends + 1, transfer = NULL, error = NULL, holds_budget = false",
                (uri, expires, time.time()),
            )

    @_pg_errors
    def record_not_spent(self, key: str, state: AssetState, error: str | None) -> None:
        with self._tx() as db:
            self._give_back(db, key)
            self._set(db, key, "state = %s, error = %s, holds_budget = false", (state.value, error))

    @_pg_errors
    def record_in_doubt(self, key: str, error: str) -> None:
        with self._tx() as db:
            self._set(db, key, "state = 'in_doubt', error = %s", (error,))

    @_pg_errors
    def record_spent_without_uri(self, key: str, error: str) -> None:
        with self._tx() as db:
            self._spent(db, key)
            self._set(
                db,
                key,
                "state = 'failed', spends = spends + 1, uri = NULL, uri_expires = NULL, "
                "error = %s, holds_budget = false",
                (error,),
            )

    @_pg_errors
    def record_cleared_doubt(self, key: str) -> None:
        with self._tx() as db:
            self._give_back(db, key)
            self._set(db, key, "state = 'pending', error = NULL, holds_budget = false", ())

    @_pg_errors
    def record_done(self, key: str, *, path: str, size: int, sha256: str) -> None:
        with self._tx() as db:
            self._set(
                db,
                key,
                "state = 'done', path = %s, bytes = %s, sha256 = %s, done_at = %s, error = NULL, "
                "out_dir = %s",
                (path, size, sha256, time.time(), self.out_dir),
            )

    @_pg_errors
    def record_uri_refused(self, key: str, error: str) -> None:
        with self._tx() as db:
            self._set(
                db, key, "state = 'failed', uri_expires = %s, error = %s", (time.time(), error)
            )

    @_pg_errors
    def record_failed(self, key: str, error: str) -> None:
        with self._tx() as db:
            self._set(db, key, "state = 'failed', error = %s", (error,))

    @_pg_errors
    def record_waiting_many(self, reasons: dict[str, str]) -> None:
        if not reasons:
            return
        now = time.time()
        with self._tx() as db, db.cursor() as cur:
            cur.executemany(
                "UPDATE bulkgetty_assets SET state = 'waiting_for_quota', error = %s, "
                "updated = %s WHERE key = %s "
                "AND state IN ('pending', 'waiting_for_quota', 'failed')",
                [(reason, now, key) for key, reason in reasons.items()],
            )

    @_pg_errors
    def save_progress(self, states: dict[str, bytes]) -> None:
        if not states:
            return
        now = time.time()
        with self._tx() as db, db.cursor() as cur:
            cur.executemany(
                "UPDATE bulkgetty_assets SET transfer = %s, updated = %s WHERE key = %s",
                [(blob, now, key) for key, blob in states.items()],
            )

    def _set(
        self, db: psycopg.Connection[Any], key: str, assignments: str, params: tuple[object, ...]
    ) -> None:
        cur = db.execute(
            f"UPDATE bulkgetty_assets SET {assignments}, updated = %s WHERE key = %s",
            (*params, time.time(), key),
        )
        if cur.rowcount != 1:
            raise JournalError(f"the ledger has no asset {key!r}")

    # reading ---------------------------------------------------------------------------

    @_pg_errors
    def iter_records(self, run_id: int | None = None, batch: int = 1000) -> Iterator[Record]:
        last = ""
        where = "" if run_id is None else "AND run_id = %s"
        while True:
            params: tuple[object, ...] = (last,) if run_id is None else (last, run_id)
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM bulkgetty_assets WHERE key > %s {where} "
                f"ORDER BY key LIMIT {batch}",
                params,
            ).fetchall()
            if not rows:
                return
            yield from map(_record, rows)
            last = rows[-1][0]

    @_pg_errors
    def locations(self) -> dict[str, str]:
        """key -> host:/folder of every finished asset (for the ledger's report)."""
        rows = self._db.execute(
            "SELECT key, out_dir FROM bulkgetty_assets WHERE state = 'done'"
        ).fetchall()
        return {k: v for k, v in rows}

    @_pg_errors
    def totals(self, run_id: int | None = None) -> RunTotals:
        where, params = ("", ()) if run_id is None else ("WHERE run_id = %s", (run_id,))
        rows = self._db.execute(
            f"SELECT state, count(*) FROM bulkgetty_assets {where} GROUP BY state", params
        ).fetchall()
        by_state = {state: int(n) for state, n in rows}
        sums = self._db.execute(
            "SELECT COALESCE(SUM(spends), 0), "
            f"COALESCE(SUM(CASE WHEN state = 'done' THEN bytes END), 0) FROM bulkgetty_assets "
            f"{where}",
            params,
        ).fetchone()
        assert sums is not None
        return RunTotals(
            by_state=by_state,
            spends=int(sums[0]),
            bytes_done=int(sums[1]),
            in_doubt=by_state.get("in_doubt", 0) + by_state.get("intent", 0),
        )

    @_pg_errors
    def part_names_in_use(self) -> set[str]:
        rows = self._db.execute(
            "SELECT transfer FROM bulkgetty_assets WHERE state <> 'done' "
            "AND transfer IS NOT NULL AND out_dir = %s",
            (self.out_dir,),
        ).fetchall()
        names = (orjson.loads(blob).get("name") for (blob,) in rows)
        return {name for name in names if isinstance(name, str)}

    def uses_name(self, name: str) -> bool:
        """A finished or in-progress asset of this folder already owns this file name."""
        row = self._db.execute(
            "SELECT 1 FROM bulkgetty_assets WHERE out_dir = %s AND path = %s LIMIT 1",
            (self.out_dir, name),
        ).fetchone()
        return row is not None


class AsyncLedger(StagedWrites[Ledger]):
    """The ledger driven from one worker thread, as `journal.AsyncJournal` drives SQLite."""

    def __init__(self, ledger: Ledger, pool: ThreadPoolExecutor) -> None:
        super().__init__(ledger)
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, out_dir: Path) -> AsyncLedger:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulkgetty-ledger")
        loop = asyncio.get_running_loop()
        try:
            ledger = await loop.run_in_executor(pool, Ledger, dsn, out_dir)
        except BaseException:
            pool.shutdown(wait=False)
            raise
        return cls(ledger, pool)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """One ledger method on the ledger's thread; a started commit always finishes."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        return await asyncio.shield(fut)

    async def close(self) -> None:
        await self.flush()
        await self.call(self.journal.close)
        self._pool.shutdown(wait=True)


async def claimed_rows(ledger: AsyncLedger, batch: int = CLAIM_BATCH) -> AsyncIterator[Asset]:
    """The run's rows: batches claimed from the ledger until no unheld asset is left."""
    while True:
        records = await ledger.call(ledger.journal.claim, batch)
        if not records:
            return
        for record in records:
            yield record.asset


class SharedRateLimiter(RateLimiter):
    """The API key's rate shared by every worker through one row of the ledger.

    Each request reserves the next free slot in the database (its clock, so workers' clocks
    need not agree) and sleeps until it: slots are `1/rate` apart over all workers. The local
    part of the limiter still pauses this worker after a 429.
    """

    def __init__(self, db: psycopg.AsyncConnection[Any], rate: float | None) -> None:
        super().__init__(None)
        self._db = db
        self._shared = rate
        self._db_lock = asyncio.Lock()

    @classmethod
    async def open(cls, dsn: str) -> SharedRateLimiter:
        try:
            db = await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, application_name="bulkgetty-rate"
            )
            cur = await db.execute("SELECT rate FROM bulkgetty_rate WHERE id = 1")
            row = await cur.fetchone()
        except psycopg.Error as exc:
            raise JournalError(f"ledger: {_pg_message(exc)}") from None
        return cls(db, None if row is None else row[0])

    @property
    def rate(self) -> float | None:
        return self._shared

    async def acquire(self) -> None:
        await super().acquire()
        if self._shared is None:
            return
        async with self._db_lock:
            try:
                cur = await self._db.execute(
                    "UPDATE bulkgetty_rate SET next_slot = GREATEST(next_slot, c.now) + 1.0 / rate "
                    "FROM (SELECT extract(epoch FROM clock_timestamp())::float8 AS now) c "
                    "WHERE id = 1 RETURNING next_slot - 1.0 / rate - c.now"
                )
                row = await cur.fetchone()
            except psycopg.Error as exc:
                raise JournalError(f"ledger: {_pg_message(exc)}") from None
        delay = float(row[0]) if row else 0.0
        if delay > 0:
            await asyncio.sleep(delay)

    async def close(self) -> None:
        await self._db.close()
