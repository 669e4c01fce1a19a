"""What the ledger is read for: records, totals, where finished assets are, names in use."""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from bulkgetty.stages.journal import RunTotals
from bulkgetty.stages.journal.records import COLUMNS, Record, record_from_row
from bulkgetty.stages.ledger.connection import LedgerConnection
from bulkgetty.stages.ledger.lease import reconnecting_methods

__all__ = ("LedgerReads",)


@reconnecting_methods(
    "iter_records",
    "locations",
    "totals",
    "part_names_in_use",
    "uses_name",
)
class LedgerReads(LedgerConnection):
    """The reading methods of `Ledger`: `status`, the report and file naming use them."""

    def iter_records(self, run_id: int | None = None, batch: int = 1000) -> Iterator[Record]:
        last = ""
        where = "" if run_id is None else "AND run_id = %s"
        while True:
            params: tuple[object, ...] = (last,) if run_id is None else (last, run_id)
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM bulkgetty_assets WHERE key > %s {where} "
                f"ORDER BY key LIMIT {batch}",
                params,
            ).fetchall()
            if not rows:
                return
            yield from map(record_from_row, rows)
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
