"""The team's shared ledger on PostgreSQL: one manifest, any number of workers on any machines.

The same acquisition states as the SQLite journal (intent, in doubt, acquired with URI and
expiry, done, failed), so in-doubt handling is the acquirer's, unchanged. What PostgreSQL adds:

Claims. A worker takes a batch of unfinished assets with `SELECT ... FOR UPDATE SKIP LOCKED`
and stamps them with its id in `bulkgetty_workers`, whose lease it renews in the background
(ledger_lease.py). A claim lives as long as that lease: a dropped connection is opened again
and the worker carries on; a worker that is gone loses its claims when its lease lapses (its
POSTs in doubt only after the history settle time on top), never because it went quiet: a
slow worker is still mid-purchase, and taking its asset would be a double spend.

Budget. One row holds the team's remaining downloads, with `CHECK (remaining >= 0)`. The
transaction that records an asset's intent (the last step before its POST) decrements it and
verifies the claim; when the budget is spent the CHECK fails and the POST never leaves. The
download is given back in the same transaction that proves nothing was spent (refused, cleared
doubt), and kept when the POST spent or may have spent.

Rate. `SharedRateLimiter` (ledger_rate.py) hands out the API key's query slots from one row,
so all workers together keep to the key's rate.

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

from bulkgetty.assets import Asset
from bulkgetty.config import HISTORY_SETTLE
from bulkgetty.errors import JournalError, QuotaExceededError
from bulkgetty.stages.journal import (
    STATE_DIR,
    AssetState,
    Record,
    RunTotals,
    StagedWrites,
    private_state_dir,
)
from bulkgetty.stages.ledger.lease import (
    LEASE,
    RENEWALS_PER_LEASE,
    Link,
    WorkerLease,
    lapsed_workers,
    reconnecting_methods,
)
from bulkgetty.stages.ledger.rate import SharedRateLimiter
from bulkgetty.stages.ledger.tables import LEASE_META, SCHEMA, asset_json, init_ledger

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
#: Least pause before asking again for a lapsed worker's download in doubt.
TAKEOVER_POLL: Final = 0.2

_COLUMNS = (
    "key, asset, state, uri, uri_expires, transfer, path, bytes, sha256, error, spends, "
    "attempts, intent_at, acquired_at"
)

#: States whose POST may have spent: another worker takes them only after the settle time.
_OPEN_POST = "('intent', 'in_doubt')"


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


def _lock_folder(out_dir: Path) -> int:
    """The same folder lock as the SQLite journal's (`DIR/.bulkgetty/lock`): two workers must
    never share a folder, whose file names and `.part` files each believes its own."""
    state = out_dir / STATE_DIR
    private_state_dir(state)  # the worker's report and .part states are its owner's alone
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o600)
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


@reconnecting_methods(
    "_check_tables",
    "claim",
    "next_takeover",
    "begin_run",
    "finish_run",
    "read_meta",
    "bind_meta",
    "budget",
    "upsert",
    "record_intent",
    "record_acquired",
    "record_not_spent",
    "record_in_doubt",
    "record_spent_without_uri",
    "record_cleared_doubt",
    "record_done",
    "record_uri_refused",
    "record_failed",
    "record_waiting_many",
    "save_progress",
    "iter_records",
    "locations",
    "totals",
    "part_names_in_use",
    "uses_name",
)
class Ledger:
    """One worker's connection to the ledger; use it from one thread (AsyncLedger does).

    The worker's identity is its row in `bulkgetty_workers` (`lease.id`), not its connection:
    a connection that breaks is opened again and every method run again (`reconnecting`), so
    each is one transaction that is safe to repeat. `worker=False` only reads (status,
    report) and holds no claims. `settle` is this worker's history settle time: the wait, on
    top of a lapsed lease, before it takes over another worker's POST in doubt.
    """

    def __init__(
        self,
        dsn: str,
        out_dir: Path,
        *,
        lock: bool = True,
        worker: bool = True,
        settle: float = HISTORY_SETTLE,
    ) -> None:
        self._lock_fd = _lock_folder(out_dir) if lock else None
        try:
            self.link = Link(dsn)
        except BaseException:
            self._unlock()
            raise
        self.out_dir = f"{socket.gethostname()}:{out_dir.resolve()}"
        self.settle = settle
        self.lease: WorkerLease | None = None
        try:
            seconds = self._check_tables()
            self.link.patience = seconds
            self.lease = WorkerLease(self.link, seconds, self.out_dir) if worker else None
        except BaseException:
            self.close()
            raise

    def _check_tables(self) -> float:
        """The lease the team's ledger sets, once its tables are known to be there."""
        row = self._db.execute(
            "SELECT to_regclass('bulkgetty_assets') IS NOT NULL, "
            "to_regclass('bulkgetty_workers') IS NOT NULL"
        ).fetchone()
        if row is None or not row[0]:
            raise JournalError(
                "the ledger has no bulkgetty tables: run `bulkgetty ledger init MANIFEST` first"
            )
        if not row[1]:
            raise JournalError(
                "the ledger was made by an older bulkgetty: run `bulkgetty ledger init MANIFEST` "
                "again to upgrade its tables (stop the old workers first)"
            )
        meta = self._db.execute(
            "SELECT value FROM bulkgetty_meta WHERE name = %s", (LEASE_META,)
        ).fetchone()
        return float(meta[0]) if meta else LEASE

    @property
    def _db(self) -> psycopg.Connection[Any]:
        return self.link.db

    @property
    def me(self) -> int:
        return self._worker().id

    def _worker(self) -> WorkerLease:
        if self.lease is None:
            raise JournalError("ledger: opened for reading only, it holds no claims")
        return self.lease

    def renew(self) -> None:
        """Extend this worker's lease (AsyncLedger calls it in the background)."""
        if self.lease is not None:
            self.lease.renew()

    def close(self) -> None:
        try:
            if self.lease is not None and not self.link.broken():
                self.lease.release()
        except psycopg.Error:
            pass  # the lease lapses by itself
        finally:
            self.link.close()
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

    def claim(self, limit: int = CLAIM_BATCH) -> list[Record]:
        """Take up to `limit` unfinished assets no live worker holds; keep them until we exit.

        Assets already held stay ours, so one run passes over each asset once. A transfer
        state recorded by another folder is dropped: its `.part` is not here. An asset of a
        worker whose lease lapsed is free, unless its POST may have spent and the lease
        lapsed less than our settle time ago.
        """
        with self._tx() as db:
            lapsed, settled = lapsed_workers(db, self.me, self.settle)
            rows = db.execute(
                f"UPDATE bulkgetty_assets AS t SET claimed_by = %(me)s, "
                f"transfer = CASE WHEN t.out_dir = %(out)s THEN t.transfer END, "
                f"out_dir = %(out)s "
                f"FROM (SELECT a.key, a.claimed_by FROM bulkgetty_assets a "
                f"WHERE a.state <> 'done' AND (a.claimed_by IS NULL "
                f"OR a.claimed_by = ANY(%(settled)s) OR (a.claimed_by = ANY(%(lapsed)s) "
                f"AND a.state NOT IN {_OPEN_POST})) "
                f"ORDER BY a.key LIMIT %(limit)s FOR UPDATE SKIP LOCKED) AS c "
                # Compare-and-set: rechecked on the newest row version, so a claim another
                # worker committed after our snapshot is never overwritten.
                f"WHERE t.key = c.key AND t.state <> 'done' "
                f"AND t.claimed_by IS NOT DISTINCT FROM c.claimed_by "
                f"RETURNING {', '.join('t.' + c.strip() for c in _COLUMNS.split(','))}",
                {
                    "me": self.me,
                    "out": self.out_dir,
                    "limit": limit,
                    "lapsed": lapsed,
                    "settled": settled,
                },
            ).fetchall()
        return sorted((_record(r) for r in rows), key=lambda r: r.key)

    def next_takeover(self) -> float | None:
        """Seconds until a lapsed worker's POST in doubt may be taken over; None if no
        unfinished asset waits on a lapsed lease (the rest are free or held by live workers)."""
        row = self._db.execute(
            "SELECT extract(epoch FROM min(w.lease_until) + make_interval(secs => %(settle)s) "
            "- now()) FROM bulkgetty_workers w WHERE w.id <> %(me)s AND w.lease_until < now() "
            "AND EXISTS (SELECT 1 FROM bulkgetty_assets a WHERE a.claimed_by = w.id "
            f"AND a.state IN {_OPEN_POST})",
            {"me": self.me, "settle": self.settle},
        ).fetchone()
        return None if row is None or row[0] is None else max(0.0, float(row[0]))

    # runs and meta ---------------------------------------------------------------------

    def begin_run(self, manifest: str) -> int:
        with self._tx() as db:
            row = db.execute(
                "INSERT INTO bulkgetty_runs (started, manifest, worker) VALUES (%s, %s, %s) "
                "RETURNING id",
                (time.time(), manifest, self.out_dir),
            ).fetchone()
        assert row is not None
        return int(row[0])

    def finish_run(self, run_id: int, *, spends: int, exit_code: int) -> None:
        self._db.execute(
            "UPDATE bulkgetty_runs SET finished = %s, spends = %s, exit_code = %s WHERE id = %s",
            (time.time(), spends, exit_code, run_id),
        )

    def read_meta(self) -> dict[str, str]:
        rows = self._db.execute("SELECT name, value FROM bulkgetty_meta").fetchall()
        return {name: value for name, value in rows}

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

    def budget(self) -> LedgerBudget:
        row = self._db.execute("SELECT remaining, spent FROM bulkgetty_budget").fetchone()
        return LedgerBudget(int(row[0]), int(row[1])) if row else LedgerBudget(0, 0)

    # assets ----------------------------------------------------------------------------

    def upsert(self, assets: Iterable[Asset], run_id: int) -> list[Record]:
        """Mark our claimed assets as this run's and return them; rows not in the ledger are
        added and claimed. An asset held by another live worker is refused, never shared."""
        batch = list(assets)
        now = time.time()
        keys = [a.key for a in batch]
        with self._tx() as db:
            with db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO bulkgetty_assets (key, asset, state, updated, claimed_by, "
                    "out_dir) VALUES (%s, %s, 'pending', %s, %s, %s) "
                    "ON CONFLICT (key) DO NOTHING",
                    [(a.key, asset_json(a), now, self.me, self.out_dir) for a in batch],
                )
            rows = db.execute(
                f"UPDATE bulkgetty_assets SET run_id = %s WHERE key = ANY(%s) "
                f"AND claimed_by = %s RETURNING {_COLUMNS}",
                (run_id, keys, self.me),
            ).fetchall()
        found = {r.key: r for r in map(_record, rows)}
        lost = [k for k in keys if k not in found]
        if lost:
            raise JournalError(f"ledger: {lost[0]} is claimed by another live worker")
        return [found[k] for k in keys]

    def _take_budget(self, db: psycopg.Connection[Any], key: str) -> None:
        """Reserve one download for this asset's POST, or refuse when the budget is spent.

        The claim is checked on the locked row after our lease was extended in the same
        transaction (which waits for a claimer taking our assets after a lapse): an asset
        another worker took over is refused here, before anything is sent.
        """
        row = db.execute(
            "SELECT holds_budget FROM bulkgetty_assets WHERE key = %s AND claimed_by = %s "
            "FOR UPDATE",
            (key, self.me),
        ).fetchone()
        if row is None:
            raise JournalError(
                f"ledger: this worker no longer holds the claim on {key} (another worker took "
                "it over after this one's lease lapsed); nothing was sent for it"
            )
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

    def record_intent(self, key: str) -> None:
        """Committed before the POST leaves, with the budget reserved in the same transaction."""
        with self._tx() as db:
            self._worker().extend(db)
            self._take_budget(db, key)
            self._set(
                db,
                key,
                "state = 'intent', intent_at = %s, attempts = attempts + 1, error = NULL, "
                "holds_budget = true",
                (time.time(),),
            )

    def record_acquired(self, key: str, uri: str, expires: float) -> None:
        """A URI that arrived is kept whoever holds the asset now (it was paid for), and the
        asset is ours again to download. Run again after a commit whose answer was lost, it
        finds its own URI and counts nothing twice."""
        with self._tx() as db:
            row = db.execute(
                "SELECT state, uri FROM bulkgetty_assets WHERE key = %s FOR UPDATE", (key,)
            ).fetchone()
            if row is not None and row[1] == uri and row[0] in ("acquired", "done"):
                return
            self._spent(db, key)
            self._set(
                db,
                key,
                "state = 'acquired', uri = %s, uri_expires = %s, acquired_at = %s, "
                "spends = spends + 1, transfer = NULL, error = NULL, holds_budget = false, "
                "claimed_by = %s",
                (uri, expires, time.time(), self.me),
            )

    def record_not_spent(self, key: str, state: AssetState, error: str | None) -> None:
        with self._tx() as db:
            self._give_back(db, key)
            self._set(db, key, "state = %s, error = %s, holds_budget = false", (state.value, error))

    def record_in_doubt(self, key: str, error: str) -> None:
        with self._tx() as db:
            self._set(db, key, "state = 'in_doubt', error = %s", (error,))

    def _open_post(self, db: psycopg.Connection[Any], key: str) -> bool:
        """Whether our POST for `key` is still unresolved (False: a repeat of a resolution
        already committed). Refused when another worker holds the asset now."""
        row = db.execute(
            "SELECT state, claimed_by FROM bulkgetty_assets WHERE key = %s FOR UPDATE", (key,)
        ).fetchone()
        if row is None:
            raise JournalError(f"the ledger has no asset {key!r}")
        if row[1] != self.me:
            raise JournalError(
                f"ledger: another worker took over {key} while this one resolved its download "
                "in doubt; that worker resolves it"
            )
        return str(row[0]) in ("intent", "in_doubt")

    def record_spent_without_uri(self, key: str, error: str) -> None:
        with self._tx() as db:
            if not self._open_post(db, key):
                return
            self._spent(db, key)
            self._set(
                db,
                key,
                "state = 'failed', spends = spends + 1, uri = NULL, uri_expires = NULL, "
                "error = %s, holds_budget = false",
                (error,),
            )

    def record_cleared_doubt(self, key: str) -> None:
        with self._tx() as db:
            if not self._open_post(db, key):
                return
            self._give_back(db, key)
            self._set(db, key, "state = 'pending', error = NULL, holds_budget = false", ())

    def record_done(self, key: str, *, path: str, size: int, sha256: str) -> None:
        with self._tx() as db:
            self._set(
                db,
                key,
                "state = 'done', path = %s, bytes = %s, sha256 = %s, done_at = %s, error = NULL, "
                "out_dir = %s",
                (path, size, sha256, time.time(), self.out_dir),
            )

    def record_uri_refused(self, key: str, error: str) -> None:
        with self._tx() as db:
            self._set(
                db, key, "state = 'failed', uri_expires = %s, error = %s", (time.time(), error)
            )

    def record_failed(self, key: str, error: str) -> None:
        with self._tx() as db:
            self._set(db, key, "state = 'failed', error = %s", (error,))

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

    def locations(self) -> dict[str, str]:
        """key -> host:/folder of every finished asset (for the ledger's report)."""
        rows = self._db.execute(
            "SELECT key, out_dir FROM bulkgetty_assets WHERE state = 'done'"
        ).fetchall()
        return {k: v for k, v in rows}

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
    """The ledger driven from one worker thread, as `journal.AsyncJournal` drives SQLite; it
    renews the worker's lease in the background for as long as it is open."""

    def __init__(self, ledger: Ledger, pool: ThreadPoolExecutor) -> None:
        super().__init__(ledger)
        self._pool = pool
        self._renewing = asyncio.get_running_loop().create_task(self._renew())

    @classmethod
    async def open(cls, dsn: str, out_dir: Path, *, settle: float = HISTORY_SETTLE) -> AsyncLedger:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulkgetty-ledger")
        loop = asyncio.get_running_loop()
        opening = functools.partial(Ledger, dsn, out_dir, settle=settle)
        try:
            ledger = await loop.run_in_executor(pool, opening)
        except BaseException:
            pool.shutdown(wait=False)
            raise
        return cls(ledger, pool)

    async def _renew(self) -> None:
        """A renewal that fails (the database out of reach for a whole lease) is left to the
        next ledger call to report: the claims may be gone, and that call is refused."""
        lease = self.journal.lease
        if lease is None:
            return
        while True:
            await asyncio.sleep(lease.seconds / RENEWALS_PER_LEASE)
            with contextlib.suppress(JournalError):
                await self.call(self.journal.renew)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """One ledger method on the ledger's thread; a started commit always finishes."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        return await asyncio.shield(fut)

    async def close(self) -> None:
        self._renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewing
        await self.flush()
        await self.call(self.journal.close)
        self._pool.shutdown(wait=True)


async def claimed_rows(ledger: AsyncLedger, batch: int = CLAIM_BATCH) -> AsyncIterator[Asset]:
    """The run's rows: batches claimed from the ledger until no asset is left that is free or
    about to be (a lapsed worker's download in doubt waits out the settle time, a bounded
    wait); what live workers hold is theirs to finish."""
    j = ledger.journal
    while True:
        records = await ledger.call(j.claim, batch)
        if not records:
            wait = await ledger.call(j.next_takeover)
            if wait is None:
                return
            await asyncio.sleep(max(wait, TAKEOVER_POLL))
            continue
        for record in records:
            yield record.asset
