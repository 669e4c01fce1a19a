"""The team's budget: one row of remaining downloads, taken before a POST and given back
only in the transaction that proves nothing was spent.

`CHECK (remaining >= 0)` makes a spent budget refuse the intent, so the POST never leaves.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import errors as pg_errors

from bulkgetty.errors import JournalError, QuotaExceededError
from bulkgetty.stages.ledger.connection import LedgerConnection
from bulkgetty.stages.ledger.lease import reconnecting_methods

__all__ = ("LedgerBudget", "SharedBudget")


class LedgerBudget:
    """The budget row as `ledger status` shows it."""

    def __init__(self, remaining: int, spent: int) -> None:
        self.remaining = remaining
        self.spent = spent


@reconnecting_methods(
    "budget",
)
class SharedBudget(LedgerConnection):
    """Taking, giving back and counting the team's downloads, each inside the caller's
    transaction (`record_*` in transitions.py), plus the row as `ledger status` reads it."""

    def budget(self) -> LedgerBudget:
        row = self._db.execute("SELECT remaining, spent FROM bulkgetty_budget").fetchone()
        return LedgerBudget(int(row[0]), int(row[1])) if row else LedgerBudget(0, 0)

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
