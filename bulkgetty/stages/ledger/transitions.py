"""Each asset's state changes in the ledger, as the journal's transitions.py does for SQLite,
with the budget moved in the same transaction and the claim checked where money is at stake.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from bulkgetty.errors import JournalError
from bulkgetty.stages.journal import AssetState
from bulkgetty.stages.ledger.budget import SharedBudget
from bulkgetty.stages.ledger.lease import reconnecting_methods

__all__ = ("LedgerTransitions",)


@reconnecting_methods(
    "record_intent",
    "record_acquired",
    "record_spooled",
    "record_not_spent",
    "record_in_doubt",
    "record_spent_without_uri",
    "record_cleared_doubt",
    "record_done",
    "record_uri_refused",
    "record_failed",
    "record_waiting_many",
    "save_progress",
)
class LedgerTransitions(SharedBudget):
    """The `record_*` changes of `Ledger`; every one is a transaction safe to run twice."""

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

    def record_spooled(self, key: str, uri: str, expires: float) -> None:
        """A URI that arrived while the ledger was out of reach (spool.py), given to it now.

        Its POST spent, so its spend is counted, unless the ledger counted it meanwhile: a
        worker that took the asset over read that spend in the history and recorded it
        without a URI (`failed`, no URI, spends > 0), or went on to buy again (`acquired` or
        `done`: the doubt is always resolved before a second purchase). The URI is kept
        unless the asset has a newer one or its file.
        """
        with self._tx() as db:
            row = db.execute(
                "SELECT state, uri, spends FROM bulkgetty_assets WHERE key = %s FOR UPDATE",
                (key,),
            ).fetchone()
            if row is None:
                raise JournalError(f"the ledger has no asset {key!r}")
            state, old_uri, spends = str(row[0]), row[1], int(row[2])
            if old_uri == uri or state in ("acquired", "done"):
                return
            counted = state == "failed" and old_uri is None and spends > 0
            if not counted:
                self._spent(db, key)
            self._set(
                db,
                key,
                "state = 'acquired', uri = %s, uri_expires = %s, acquired_at = %s, "
                "spends = spends + %s, transfer = NULL, error = NULL, holds_budget = false, "
                "claimed_by = %s",
                (uri, expires, time.time(), 0 if counted else 1, self.me),
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
