"""What the journal (and the team's ledger) remembers of one asset, as plain records."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from bulkgetty.assets import Asset

__all__ = ("COLUMNS", "AssetState", "Record", "RunTotals", "asset_json", "record_from_row")

#: The columns `record_from_row` reads, in its order; the same in SQLite and PostgreSQL.
COLUMNS = (
    "key, asset, state, uri, uri_expires, transfer, path, bytes, sha256, error, spends, "
    "attempts, intent_at, acquired_at"
)


class AssetState(StrEnum):
    """Where one asset stands. `intent` and `in_doubt` are the states money hides in."""

    PENDING = "pending"
    #: The POST is about to be (or was) sent; no answer recorded yet.
    INTENT = "intent"
    #: The POST may have spent, but no URI came back (5xx, timeout, lost connection).
    IN_DOUBT = "in_doubt"
    #: A delivery URI is known (with its expiry); bytes may be partly on disk.
    ACQUIRED = "acquired"
    DONE = "done"
    FAILED = "failed"
    WAITING_FOR_QUOTA = "waiting_for_quota"


@dataclass(frozen=True, slots=True)
class Record:
    """One asset's row, as read back from the journal."""

    key: str
    asset: Asset
    state: AssetState
    uri: str | None = None
    uri_expires: float | None = None
    transfer: bytes | None = None
    path: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    error: str | None = None
    #: Downloads known to be spent on this asset, over all runs.
    spends: int = 0
    attempts: int = 0
    intent_at: float | None = None
    acquired_at: float | None = None


@dataclass(frozen=True, slots=True)
class RunTotals:
    """Counts per state over the assets of one run (or all runs), for `status` and reports."""

    by_state: dict[str, int]
    spends: int
    bytes_done: int
    in_doubt: int


def asset_json(asset: Asset) -> bytes:
    """An asset as both databases store it: its fields that are set, as JSON."""
    return orjson.dumps({k: getattr(asset, k) for k in Asset.__slots__ if getattr(asset, k)})


def record_from_row(row: Sequence[Any]) -> Record:
    """One row of `SELECT COLUMNS` (journal or ledger) as a `Record`."""
    return Record(
        key=row[0],
        asset=Asset(**orjson.loads(row[1])),
        state=AssetState(row[2]),
        uri=row[3],
        uri_expires=row[4],
        transfer=row[5],
        path=row[6],
        bytes=row[7],
        sha256=row[8],
        error=row[9],
        spends=row[10],
        attempts=row[11],
        intent_at=row[12],
        acquired_at=row[13],
    )
