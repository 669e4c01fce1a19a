"""Typed events the engine emits as a run goes. The `--json` stream and the async API's
`events()` are two consumers of the same objects, so they can never disagree.

Schema version 1: every event serialises to one JSON object with `event` (its kind), `v`
(the schema version) and `t` (seconds since the epoch), plus the fields below. `EVENT_SCHEMA`
is the same contract as JSON Schema data (the README's table is checked against it). Within a
version, fields are only ever added, so consumers must ignore fields they do not know.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

__all__ = (
    "EVENT_KINDS",
    "EVENT_SCHEMA",
    "EVENT_SCHEMA_VERSION",
    "AssetAcquired",
    "AssetDone",
    "AssetFailed",
    "AssetWaiting",
    "Event",
    "InFlight",
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
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {"event": self.kind, "v": EVENT_SCHEMA_VERSION, **fields}


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


@dataclass(frozen=True, slots=True)
class InFlight:
    """One transfer in flight: bytes of it on disk so far, and its length once known."""

    id: str
    asset_type: str
    bytes_done: int
    total: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress(Event):
    """Totals of the whole run, emitted at a bounded rate (at most twice a second)."""

    kind: ClassVar[str] = "progress"
    files_done: int
    files_total_seen: int
    bytes_done: int
    spends: int
    #: The largest transfers in flight (at most `MAX_IN_FLIGHT`), largest first.
    in_flight: tuple[InFlight, ...] = ()


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


#: Transfers a Progress event lists in `in_flight`.
MAX_IN_FLIGHT = 5

_EVENT_TYPES: tuple[type[Event], ...] = (
    RunStarted,
    AssetAcquired,
    Progress,
    AssetDone,
    AssetFailed,
    AssetWaiting,
    QuotaReached,
    RunFinished,
)
#: Every event kind of schema version 1, in the order a run emits them.
EVENT_KINDS: tuple[str, ...] = tuple(t.kind for t in _EVENT_TYPES)

_STR: dict[str, Any] = {"type": "string"}
_OPT_STR: dict[str, Any] = {"type": ["string", "null"]}
_COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
_OPT_COUNT: dict[str, Any] = {"type": ["integer", "null"], "minimum": 0}
_SECONDS: dict[str, Any] = {"type": "number", "minimum": 0}
_ASSET_TYPE: dict[str, Any] = {"enum": ["image", "video"]}

#: Fields of each kind beyond the envelope (`event`, `v`, `t`); all of them always present.
_FIELDS: dict[str, dict[str, dict[str, Any]]] = {
    "run_started": {"out_dir": _STR, "manifest": _STR, "run_id": _COUNT},
    "asset_acquired": {
        "id": _STR,
        "asset_type": _ASSET_TYPE,
        "product_type": _OPT_STR,
        "spends": _COUNT,
    },
    "progress": {
        "files_done": _COUNT,
        "files_total_seen": _COUNT,
        "bytes_done": _COUNT,
        "spends": _COUNT,
        "in_flight": {
            "type": "array",
            "maxItems": MAX_IN_FLIGHT,
            "items": {
                "type": "object",
                "required": ["id", "asset_type", "bytes_done", "total"],
                "properties": {
                    "id": _STR,
                    "asset_type": _ASSET_TYPE,
                    "bytes_done": _COUNT,
                    "total": _OPT_COUNT,
                },
            },
        },
    },
    "asset_done": {
        "id": _STR,
        "asset_type": _ASSET_TYPE,
        "status": {"enum": ["downloaded", "already_done"]},
        "path": _OPT_STR,
        "bytes": _OPT_COUNT,
        "sha256": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
    },
    "asset_failed": {"id": _STR, "asset_type": _ASSET_TYPE, "error": _STR},
    "asset_waiting_for_quota": {"id": _STR, "asset_type": _ASSET_TYPE, "error": _STR},
    "quota_reached": {"product_type": _OPT_STR, "reason": _STR},
    "run_finished": {
        "downloaded": _COUNT,
        "already_done": _COUNT,
        "failed": _COUNT,
        "waiting_for_quota": _COUNT,
        "bytes": _COUNT,
        "spends": _COUNT,
        "wall": _SECONDS,
        "exit_code": {"enum": [0, 1, 2, 3]},
    },
}


def _kind_schema(kind: str) -> dict[str, Any]:
    fields = _FIELDS[kind]
    return {
        "type": "object",
        "required": ["event", "v", "t", *fields],
        "properties": {
            "event": {"const": kind},
            "v": {"const": EVENT_SCHEMA_VERSION},
            "t": _SECONDS,
            **fields,
        },
    }


#: JSON Schema (draft 2020-12) of one `--json` line / one `Event.to_dict()`.
EVENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": f"https://bulkgetty.invalid/events/v{EVENT_SCHEMA_VERSION}.json",
    "title": f"bulkgetty event, schema version {EVENT_SCHEMA_VERSION}",
    "oneOf": [_kind_schema(kind) for kind in EVENT_KINDS],
}
