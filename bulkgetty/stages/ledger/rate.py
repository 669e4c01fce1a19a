"""The API key's rate shared by every worker of a ledger, through one row of it."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from bulkgetty.errors import JournalError
from bulkgetty.getty.ratelimit import RateLimiter
from bulkgetty.stages.ledger.lease import LEASE, Backoff, pg_message

__all__ = ("SharedRateLimiter",)

_RESERVE = (
    "UPDATE bulkgetty_rate SET next_slot = GREATEST(next_slot, c.now) + 1.0 / rate "
    "FROM (SELECT extract(epoch FROM clock_timestamp())::float8 AS now) c "
    "WHERE id = 1 RETURNING next_slot - 1.0 / rate - c.now"
)


async def _connect(dsn: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, application_name="bulkgetty-rate"
    )


class SharedRateLimiter(RateLimiter):
    """The API key's rate shared by every worker through one row of the ledger.

    Each request reserves the next free slot in the database (its clock, so workers' clocks
    need not agree) and sleeps until it: slots are `1/rate` apart over all workers. The local
    part of the limiter still pauses this worker after a 429. A dropped connection is opened
    again (for as long as a worker's lease), so a database restart does not stop the run.
    """

    def __init__(self, db: psycopg.AsyncConnection[Any], rate: float | None, dsn: str = "") -> None:
        super().__init__(None)
        self._db = db
        self._dsn = dsn
        self._shared = rate
        self._db_lock = asyncio.Lock()

    @classmethod
    async def open(cls, dsn: str) -> SharedRateLimiter:
        try:
            db = await _connect(dsn)
            cur = await db.execute("SELECT rate FROM bulkgetty_rate WHERE id = 1")
            row = await cur.fetchone()
        except psycopg.Error as exc:
            raise JournalError(f"ledger: {pg_message(exc)}") from None
        return cls(db, None if row is None else row[0], dsn)

    @property
    def rate(self) -> float | None:
        return self._shared

    async def acquire(self) -> None:
        await super().acquire()
        if self._shared is None:
            return
        async with self._db_lock:
            delay = await self._reserve()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _reserve(self) -> float:
        """Seconds until this request's slot; a reservation lost with its connection only
        leaves one slot unused."""
        backoff = Backoff(LEASE)
        while True:
            try:
                cur = await self._db.execute(_RESERVE)
                row = await cur.fetchone()
                return float(row[0]) if row else 0.0
            except psycopg.Error as exc:
                if not (self._db.broken or self._db.closed) or not self._dsn:
                    raise JournalError(f"ledger: {pg_message(exc)}") from None
                await self._reopen(backoff, exc)

    async def _reopen(self, backoff: Backoff, exc: BaseException) -> None:
        while True:
            await asyncio.sleep(backoff.pause(exc))
            try:
                self._db = await _connect(self._dsn)
                return
            except psycopg.Error as again:
                exc = again

    async def close(self) -> None:
        await self._db.close()
