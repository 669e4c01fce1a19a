"""The transfer stage's records: what one attempt is asked, returns and leaves for resume.

Everything a later attempt needs to resume is in the `.part` file and the last
`TransferState` passed to `on_state` (its JSON is what the journal keeps).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from bulkgetty.errors import (
    JournalError,
)

# ------------------------------------------------------------------------ data


@dataclass(frozen=True, slots=True)
class Segment:
    """One byte range `[start, end)` of a segmented file; `done` bytes from `start` are on disk."""

    start: int
    end: int  # exclusive
    done: int = 0

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def complete(self) -> bool:
        return self.done >= self.length


@dataclass(frozen=True, slots=True)
class TransferState:
    """What the journal keeps between attempts and runs to resume a transfer."""

    #: Reserved final file name; the `.part` is name + ".part".
    name: str | None = None
    #: Complete length once known (Content-Length, or the total of a Content-Range).
    total: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    #: Empty for a single stream (whose progress is `done`).
    segments: tuple[Segment, ...] = ()
    done: int = 0

    def to_json(self) -> bytes:
        data = {
            "name": self.name,
            "total": self.total,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "content_type": self.content_type,
            "segments": [[s.start, s.end, s.done] for s in self.segments],
            "done": self.done,
        }
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, data: bytes) -> TransferState:
        """Parse `to_json` output; JournalError when it is not a transfer state."""
        try:
            raw = orjson.loads(data)
            segments = tuple(Segment(int(a), int(b), int(c)) for a, b, c in raw.get("segments", ()))
            return cls(
                name=_opt_str(raw.get("name")),
                total=_opt_int(raw.get("total")),
                etag=_opt_str(raw.get("etag")),
                last_modified=_opt_str(raw.get("last_modified")),
                content_type=_opt_str(raw.get("content_type")),
                segments=segments,
                done=int(raw.get("done") or 0),
            )
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
            raise JournalError(f"unreadable transfer state: {exc}") from exc


def _opt_str(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _opt_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


@dataclass(frozen=True, slots=True)
class TransferOptions:
    """How one delivery is fetched."""

    #: Ranges per large file; 1 disables segmenting.
    segments: int = 4
    #: Only files of at least this many bytes are segmented.
    segment_threshold: int = 64 * 2**20
    #: Seconds a large file streams alone before more ranges are weighed (and again every
    #: as long while it stays alone: adaptive.py); 0 splits it before its first byte.
    #: Short, since a window judged wrong is judged again the next one; windows of 0.2 s
    #: already told apart a capped stream from a CPU-bound one (benchmarks/README.md).
    segment_probation: float = 0.25
    max_redirects: int = 10
    #: fsync the file before the rename, and the folder after it.
    durable: bool = True


@dataclass(frozen=True, slots=True)
class TransferResult:
    """A finished, verified file in the output folder."""

    path: Path
    name: str
    bytes: int
    sha256: str
    content_type: str | None
    #: Bytes downloaded again that were already on disk (0 on a clean resume).
    refetched: int
    resumed_from: int
