"""Claims: which worker holds which assets, and taking over from workers whose lease lapsed.

A claim lives as long as its worker's lease (lease.py); a lapsed worker's POST that may have
spent is taken over only after the history settle time on top, never sooner: a slow worker is
still mid-purchase, and taking its asset would be a double spend.
"""

from __future__ import annotations

from typing import Final

from bulkgetty.stages.journal.records import COLUMNS, Record, record_from_row
from bulkgetty.stages.ledger.connection import LedgerConnection
from bulkgetty.stages.ledger.lease import lapsed_workers, reconnecting_methods

__all__ = ("CLAIM_BATCH", "LedgerClaims")

#: Assets claimed per round trip.
CLAIM_BATCH: Final = 200

#: States whose POST may have spent: another worker takes them only after the settle time.
_OPEN_POST = "('intent', 'in_doubt')"


@reconnecting_methods(
    "claim",
    "next_takeover",
)
class LedgerClaims(LedgerConnection):
    """The `claim` and `next_takeover` of `Ledger`."""

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
                f"RETURNING {', '.join('t.' + c.strip() for c in COLUMNS.split(','))}",
                {
                    "me": self.me,
                    "out": self.out_dir,
                    "limit": limit,
                    "lapsed": lapsed,
                    "settled": settled,
                },
            ).fetchall()
        return sorted((record_from_row(r) for r in rows), key=lambda r: r.key)

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
