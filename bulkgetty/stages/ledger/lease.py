"""Who holds the ledger's claims, and how a worker keeps them through a dropped connection.

A worker registers a row in `bulkgetty_workers` and renews its lease (`lease_until`, in the
database's clock) in the background; its claims carry that row's id, not its connection's.
So a connection that drops (a network blip, a PostgreSQL restart, `pg_terminate_backend`)
costs nothing: the worker opens a new one within its lease and carries on, and no other worker
takes its assets meanwhile. A worker that is gone stops renewing. Once its lease has lapsed,
its pending and acquired assets are free; its `intent`/`in_doubt` assets (a POST that may have
spent) only after the taker's history settle time on top, so that the spend of its last POST
is in the download history before anyone asks it.

Liveness is a plain table that every role reading the ledger can see: `pg_stat_activity`
hides other roles' sessions, which made workers of different roles steal each other's claims.

A claimer locks the lapsed workers' rows (`FOR SHARE`) while it takes their assets, and a
worker extends its lease by updating its own row before it records an intent: the two
exclude each other, so a worker coming back from a long outage either sees that an asset was
taken or keeps it, never both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, Final, ParamSpec, Protocol, TypeVar

import psycopg

from bulkgetty.errors import JournalError

__all__ = (
    "LEASE",
    "RENEWALS_PER_LEASE",
    "WORKERS_SCHEMA",
    "Backoff",
    "Link",
    "WorkerLease",
    "connect",
    "lapsed_workers",
    "pg_message",
    "reconnecting",
    "reconnecting_methods",
)

T = TypeVar("T")
P = ParamSpec("P")

#: Seconds a worker's claims outlive its last renewal (`ledger init --lease`). It also bounds
#: how long a worker keeps trying to reach the database again after its connection drops.
LEASE: Final = 60.0
#: Renewals per lease: one lost renewal (or several) never lets the lease lapse.
RENEWALS_PER_LEASE: Final = 6

WORKERS_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS bulkgetty_workers (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    started TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_until TIMESTAMPTZ NOT NULL
);
ALTER TABLE bulkgetty_assets ADD COLUMN IF NOT EXISTS claimed_by BIGINT;
CREATE INDEX IF NOT EXISTS bulkgetty_assets_claimed ON bulkgetty_assets (claimed_by)
    WHERE state <> 'done';
"""

#: Workers other than %(me)s whose lease has lapsed and that still hold an unfinished asset,
#: locked against a renewal until the claim commits; `settled`: lapsed more than %(settle)s
#: seconds ago, so their POSTs in doubt may be taken over too.
_LAPSED = (
    "SELECT w.id, w.lease_until + make_interval(secs => %(settle)s) < now() AS settled "
    "FROM bulkgetty_workers w WHERE w.id <> %(me)s AND w.lease_until < now() "
    "AND EXISTS (SELECT 1 FROM bulkgetty_assets a WHERE a.claimed_by = w.id "
    "AND a.state <> 'done') FOR SHARE OF w"
)


def pg_message(exc: BaseException) -> str:
    """First line of a driver error; the DSN (and any password in it) never appears."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def connect(dsn: str, name: str = "bulkgetty") -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(dsn, autocommit=True, application_name=name)
    except psycopg.Error as exc:
        raise JournalError(f"cannot connect to the ledger: {pg_message(exc)}") from None


def lapsed_workers(
    db: psycopg.Connection[Any], me: int, settle: float
) -> tuple[list[int], list[int]]:
    """(workers whose lease lapsed, those of them lapsed longer than `settle` seconds)."""
    rows = db.execute(_LAPSED, {"me": me, "settle": settle}).fetchall()
    return [r[0] for r in rows], [r[0] for r in rows if r[1]]


@dataclass(slots=True)
class Backoff:
    """Attempts to reach the database again: growing pauses, until `patience` seconds passed."""

    patience: float
    delay: float = 0.1
    deadline: float | None = None

    def pause(self, exc: BaseException) -> float:
        """Seconds to wait before the next attempt; JournalError once out of patience."""
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.patience
        if now >= self.deadline:
            raise JournalError(
                f"ledger: lost the connection to the database and could not open a new one "
                f"within {self.patience:g} s: {pg_message(exc)}"
            ) from None
        delay, self.delay = self.delay, min(self.delay * 2, 2.0)
        return min(delay, self.deadline - now)


class Link:
    """One connection to the ledger that is opened again when it breaks."""

    def __init__(self, dsn: str, *, patience: float = LEASE) -> None:
        self._dsn = dsn
        self.patience = patience
        self.db = connect(dsn)

    def broken(self) -> bool:
        return bool(self.db.broken or self.db.closed)

    def reopen(self, backoff: Backoff, exc: BaseException) -> None:
        """Open a new connection, trying until the backoff runs out of patience."""
        while True:
            time.sleep(backoff.pause(exc))
            try:
                self.db = connect(self._dsn)
                return
            except JournalError as again:
                exc = again

    def close(self) -> None:
        self.db.close()


class HasLink(Protocol):
    link: Link


L = TypeVar("L", bound=HasLink)


def reconnecting(fn: Callable[Concatenate[L, P], T]) -> Callable[Concatenate[L, P], T]:
    """Database failures become JournalError (one line, no DSN); a broken connection is
    opened again and the whole method run again, for as long as the link's patience lasts.

    Every method so wrapped is one transaction that is safe to run twice: a commit whose
    answer was lost must not count a spend or take a download twice.
    """

    def wrapped(self: L, /, *args: P.args, **kwargs: P.kwargs) -> T:
        backoff = Backoff(self.link.patience)
        while True:
            try:
                return fn(self, *args, **kwargs)
            except psycopg.Error as exc:
                if not self.link.broken():
                    raise JournalError(f"ledger: {pg_message(exc)}") from exc
                self.link.reopen(backoff, exc)

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


C = TypeVar("C", bound=type)


def reconnecting_methods(*names: str) -> Callable[[C], C]:
    """Class decorator: these methods become `reconnecting`. (Not one decorator per method:
    mutmut skips decorated functions, and these are the ledger's money paths.)"""

    def wrap(cls: C) -> C:
        for name in names:
            setattr(cls, name, reconnecting(vars(cls)[name]))
        return cls

    return wrap


@reconnecting_methods("_register", "renew")
class WorkerLease:
    """This worker's row in `bulkgetty_workers`: the identity its claims carry."""

    def __init__(self, link: Link, seconds: float, name: str) -> None:
        self.link = link
        self.seconds = seconds
        self.id = self._register(name)

    def _register(self, name: str) -> int:
        row = self.link.db.execute(
            "INSERT INTO bulkgetty_workers (name, lease_until) "
            "VALUES (%s, now() + make_interval(secs => %s)) RETURNING id",
            (name, self.seconds),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def extend(self, db: psycopg.Connection[Any]) -> None:
        """Renew the lease inside the caller's transaction (waits while a claimer is taking
        this worker's assets after a lapse, then sees what it took)."""
        db.execute(
            "UPDATE bulkgetty_workers SET lease_until = GREATEST(lease_until, "
            "now() + make_interval(secs => %s)) WHERE id = %s",
            (self.seconds, self.id),
        )

    def renew(self) -> None:
        """Called every `seconds / RENEWALS_PER_LEASE` by the worker while it runs."""
        with self.link.db.transaction():
            self.extend(self.link.db)

    def release(self) -> None:
        """On a clean exit: our unstarted and acquired assets are free at once, and POSTs
        left in doubt (a run stopped by an error) after the settle time from now."""
        db = self.link.db
        with db.transaction():
            db.execute(
                "UPDATE bulkgetty_assets SET claimed_by = NULL WHERE claimed_by = %s "
                "AND state NOT IN ('done', 'intent', 'in_doubt')",
                (self.id,),
            )
            db.execute(
                "UPDATE bulkgetty_workers SET lease_until = LEAST(lease_until, now()) "
                "WHERE id = %s",
                (self.id,),
            )
