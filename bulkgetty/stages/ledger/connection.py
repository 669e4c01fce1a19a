"""A ledger worker's connection: its folder lock, its lease, and one transaction per call.

What every part of `Ledger` stands on (claims.py, budget.py, transitions.py, reads.py): the
database (`_db`, `_tx`), the worker's identity (`me`, `lease`) and its folder (`out_dir`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from bulkgetty.config import HISTORY_SETTLE
from bulkgetty.errors import JournalError
from bulkgetty.stages.journal import STATE_DIR, private_state_dir
from bulkgetty.stages.journal.storage import take_lock
from bulkgetty.stages.ledger.lease import LEASE, Link, WorkerLease, reconnecting_methods
from bulkgetty.stages.ledger.spool import UriSpool
from bulkgetty.stages.ledger.tables import LEASE_META

__all__ = ("LedgerConnection",)


def _lock_folder(out_dir: Path) -> int:
    """The same folder lock as the SQLite journal's (`DIR/.bulkgetty/lock`): two workers must
    never share a folder, whose file names and `.part` files each believes its own."""
    state = out_dir / STATE_DIR
    private_state_dir(state)  # the worker's report and .part states are its owner's alone
    return take_lock(state, out_dir, "give each ledger worker its own --out folder")


@reconnecting_methods(
    "_check_tables",
)
class LedgerConnection:
    """One worker's connection to the ledger: its folder lock, its lease, its transactions.

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
        #: Paid URIs the ledger could not take (spool.py); this folder's, as its lock is.
        self.spool = UriSpool(out_dir / STATE_DIR)
        self.settle = settle
        self.lease: WorkerLease | None = None
        try:
            seconds = self._check_tables()
            self.link.patience = seconds
            self.lease = WorkerLease(self.link, seconds, self.out_dir) if worker else None
            if worker:
                self._took_folder()
        except BaseException:
            self.close()
            raise

    def _took_folder(self) -> None:
        """The worker holds its folder now: what an earlier run left there is taken up
        (`Ledger` gives the ledger the URIs that folder's spool kept)."""

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
