"""What the journal (and the team's ledger) remembers of one asset, as plain records."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bulkgetty.assets import Asset

__all__ = ("AssetState", "Record", "RunTotals")


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
