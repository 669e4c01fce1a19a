"""Typed events the engine emits as a run goes. The `--json` stream and the async API's
`events()` are two consumers of the same objects, so they can never disagree.

Schema version 1: every event serialises to one JSON object with `event` (its kind), `v`
(the schema version) and `t` (seconds since the epoch), plus the fields below.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

__all__ = (
    "EVENT_SCHEMA_VERSION",
    "AssetAcquired",
    "AssetDone",
    "AssetFailed",
    "AssetWaiting",
    "Event",
    "Progress",
    "QuotaReached",
    "RunFinished",
    "RunStarted",
)

EVENT_SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    kind: ClassVar[str] = "event"
    t: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, "v": EVENT_SCHEMA_VERSION, **asdict(self)}


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    out_dir: str
    manifest: str
    run_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AssetAcquired(Event):
    """One download was spent and its delivery URI recorded."""

    kind: ClassVar[str] = "asset_acquired"
    id: str
    asset_type: str
    product_type: str | None
    spends: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress(Event):
    """Totals of the whole run, emitted at a bounded rate."""

    kind: ClassVar[str] = "progress"
    files_done: int
    files_total_seen: int
    bytes_done: int
    spends: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AssetDone(Event):
    kind: ClassVar[str] = "asset_done"
    id: str
    asset_type: str
    status: str
    path: str | None
    bytes: int | None
    sha256: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AssetFailed(Event):
    kind: ClassVar[str] = "asset_failed"
    id: str
    asset_type: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AssetWaiting(Event):
    kind: ClassVar[str] = "asset_waiting_for_quota"
    id: str
    asset_type: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaReached(Event):
    """No more POSTs for this product type in this run (limit or --max-downloads)."""

    kind: ClassVar[str] = "quota_reached"
    product_type: str | None
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(Event):
    kind: ClassVar[str] = "run_finished"
    downloaded: int
    already_done: int
    failed: int
    waiting_for_quota: int
    bytes: int
    spends: int
    wall: float
    exit_code: int
