"""Each asset's state changes, in the order money moves: intent, then URI or doubt, then done.

Every change is its own transaction (inside a group commit, a savepoint, or for a change made
by one statement that statement alone), committed before anything else happens to the asset:
after a kill -9 the journal says exactly what was spent.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time

from bulkgetty.errors import JournalError
from bulkgetty.stages.journal.records import AssetState

__all__ = ("AssetTransitions",)


class AssetTransitions:
    """The `record_*` changes of `Journal`; it supplies `_tx`, one transaction or savepoint,
    and `_db`, the connection a change made by one statement runs on alone."""

    _db: sqlite3.Connection

    def _tx(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

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
        """One statement, with no transaction or savepoint of its own, in a group or not.

        SQLite runs a statement outside a transaction as its own transaction (autocommit,
        committed with `synchronous=FULL` before `execute` returns) and undoes a failed one
        by itself, so BEGIN/COMMIT or a savepoint around it would add two statements (each a
        GIL hand-off of the journal thread, or ~10 us on the loop) and buy nothing.
        """
        cur = self._db.execute(
            f"UPDATE assets SET {assignments}, updated = ? WHERE key = ?",
            (*params, time.time(), key),
        )
        if cur.rowcount != 1:
            raise JournalError(f"journal has no asset {key!r}")
