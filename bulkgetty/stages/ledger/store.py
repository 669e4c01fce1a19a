"""The team's shared ledger on PostgreSQL: one manifest, any number of workers on any machines.

The same acquisition states as the SQLite journal (intent, in doubt, acquired with URI and
expiry, done, failed), so in-doubt handling is the acquirer's, unchanged. What PostgreSQL adds:

Claims. A worker takes a batch of unfinished assets with `SELECT ... FOR UPDATE SKIP LOCKED`
and stamps them with its id in `bulkgetty_workers`, whose lease it renews in the background
(lease.py). A claim lives as long as that lease: a dropped connection is opened again
and the worker carries on; a worker that is gone loses its claims when its lease lapses (its
POSTs in doubt only after the history settle time on top), never because it went quiet: a
slow worker is still mid-purchase, and taking its asset would be a double spend.

Budget. One row holds the team's remaining downloads, with `CHECK (remaining >= 0)`. The
transaction that records an asset's intent (the last step before its POST) decrements it and
verifies the claim; when the budget is spent the CHECK fails and the POST never leaves. The
download is given back in the same transaction that proves nothing was spent (refused, cleared
doubt), and kept when the POST spent or may have spent.

Rate. `SharedRateLimiter` (rate.py) hands out the API key's query slots from one row,
so all workers together keep to the key's rate.

psycopg 3 is an optional extra: `pip install 'bulkgetty[postgres]'`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

import psycopg

from bulkgetty.assets import Asset
from bulkgetty.config import HISTORY_SETTLE
from bulkgetty.errors import JournalError
from bulkgetty.stages.journal import Record, StagedWrites
from bulkgetty.stages.journal.records import COLUMNS, asset_json, record_from_row
from bulkgetty.stages.ledger.budget import LedgerBudget
from bulkgetty.stages.ledger.claims import CLAIM_BATCH, LedgerClaims
from bulkgetty.stages.ledger.lease import RENEWALS_PER_LEASE, reconnecting_methods
from bulkgetty.stages.ledger.rate import SharedRateLimiter
from bulkgetty.stages.ledger.reads import LedgerReads
from bulkgetty.stages.ledger.tables import SCHEMA, init_ledger
from bulkgetty.stages.ledger.transitions import LedgerTransitions

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

#: Least pause before asking again for a lapsed worker's download in doubt.
TAKEOVER_POLL: Final = 0.2


@reconnecting_methods(
    "begin_run",
    "finish_run",
    "read_meta",
    "bind_meta",
    "upsert",
)
class Ledger(LedgerClaims, LedgerTransitions, LedgerReads):
    """One worker's connection to the ledger; use it from one thread (AsyncLedger does).

    Its parts: the connection, lock and lease (connection.py), claims (claims.py), the budget
    (budget.py), each asset's state changes (transitions.py) and reads (reads.py); runs, meta
    and adding this run's assets are here.
    """

    #: URIs went to the spool in this run: the next transaction gives them to the ledger
    #: first, so that no later state (a `done`) hides a spend the ledger never counted.
    _unsent = False
    _replaying = False

    def _took_folder(self) -> None:
        self.replay_spool()

    # paid URIs -------------------------------------------------------------------------

    def record_acquired(self, key: str, uri: str, expires: float) -> None:
        """As the journal's; when the database stays out of reach past the link's patience,
        the URI is kept in this worker's folder instead (spool.py) and given to the ledger
        when the folder's next run opens it. Either way the paid URI is durable on return."""
        try:
            super().record_acquired(key, uri, expires)
        except JournalError:
            if not self.link.broken():
                raise
            self.spool.add(key, uri, expires)
            self._unsent = True

    def replay_spool(self) -> int:
        """Give the ledger the URIs this folder's spool kept (see record_spooled)."""
        kept = self.spool.entries()
        self._replaying = True
        try:
            for entry in kept:
                self.record_spooled(entry.key, entry.uri, entry.expires)
        finally:
            self._replaying = False
        if kept:
            self.spool.clear()
        self._unsent = False
        return len(kept)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        if self._unsent and not self._replaying:
            self.replay_spool()
        with super()._tx() as db:
            yield db

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
                f"AND claimed_by = %s RETURNING {COLUMNS}",
                (run_id, keys, self.me),
            ).fetchall()
        found = {r.key: r for r in map(record_from_row, rows)}
        lost = [k for k in keys if k not in found]
        if lost:
            raise JournalError(f"ledger: {lost[0]} is claimed by another live worker")
        return [found[k] for k in keys]


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
