"""Read-only questions for `bulkgetty status` and `merge`, asked of a journal opened read-only."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from bulkgetty.stages.journal.records import COLUMNS, Record, record_from_row
from bulkgetty.stages.journal.sqlite import Journal

__all__ = ("RunRow", "failure_counts", "iter_done", "runs", "waiting_reasons")


@dataclass(frozen=True, slots=True)
class RunRow:
    """One run as the journal remembers it."""

    id: int
    started: float
    finished: float | None
    manifest: str
    spends: int
    exit_code: int | None


def failure_counts(journal: Journal) -> list[tuple[str, int]]:
    """(error, assets) for failed assets, most frequent first."""
    rows = journal._db.execute(
        "SELECT COALESCE(error, ''), COUNT(*) FROM assets WHERE state = 'failed' "
        "GROUP BY error ORDER BY COUNT(*) DESC"
    )
    return [(str(error), int(count)) for error, count in rows]


def waiting_reasons(journal: Journal) -> list[tuple[str, int]]:
    """(reason, assets) for assets waiting for quota, most frequent first."""
    rows = journal._db.execute(
        "SELECT COALESCE(error, ''), COUNT(*) FROM assets WHERE state = 'waiting_for_quota' "
        "GROUP BY error ORDER BY COUNT(*) DESC"
    )
    return [(str(error), int(count)) for error, count in rows]


def runs(journal: Journal) -> list[RunRow]:
    """Every run, oldest first."""
    rows = journal._db.execute(
        "SELECT id, started, finished, manifest, spends, exit_code FROM runs ORDER BY id"
    )
    return [RunRow(*row) for row in rows]


def iter_done(journal: Journal, batch: int = 1000) -> Iterator[Record]:
    """Finished assets in key order, a batch at a time (for `status --verify`)."""
    last = ""
    while True:
        rows = journal._db.execute(
            f"SELECT {COLUMNS} FROM assets WHERE state = 'done' AND key > ? "
            f"ORDER BY key LIMIT {batch}",
            (last,),
        ).fetchall()
        if not rows:
            return
        for row in rows:
            yield record_from_row(row)
        last = rows[-1][0]
