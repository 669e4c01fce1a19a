"""A large file fetched as byte ranges over several connections at once, resumed per range.

Why segments at all: delivery hosts may cap each connection's rate, and one stream then
takes as long as the cap says, however fast the link. Why only so: a range is trusted only
with a validator for If-Range and an exact `Content-Range`, since a file that changed between
two ranges would be spliced from two versions. The first range comes from the response that
started the file (no extra request); the others each get a connection of their own. The
`.part` is preallocated, so it is hashed behind its writers (`HashFollower`) as they advance,
and the journal hears only of synced bytes (tracker.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from bulkgetty.errors import BulkGettyError, IntegrityError, ReadError
from bulkgetty.stages.files import HashFollower, OutputDir, PartFile, SequentialWriter, open_part
from bulkgetty.stages.transfer.records import TransferOptions, TransferResult, TransferState, _split
from bulkgetty.stages.transfer.redirects import Get
from bulkgetty.stages.transfer.tracker import Tracker, pump
from bulkgetty.stages.validate import check_content_range, raise_for_status

__all__ = ("Segments", "segments_valid", "should_segment")


def should_segment(
    resp: aiohttp.ClientResponse, total: int | None, options: TransferOptions, track: Tracker
) -> bool:
    """Only a fresh 200 of a large file, with byte ranges and a validator for If-Range."""
    ranges = "bytes" in resp.headers.get("Accept-Ranges", "").lower()
    return (
        options.segments > 1
        and resp.status == 200
        and total is not None
        and total >= max(options.segment_threshold, options.segments)
        and ranges
        and track.if_range() is not None
    )


def segments_valid(state: TransferState, track: Tracker) -> bool:
    """Segments from the journal must tile [0, total) exactly, with a validator to resume."""
    if not state.segments or state.name is None or track.if_range() is None:
        return False
    pos = 0
    for seg in state.segments:
        if seg.start != pos or seg.end <= seg.start or not 0 <= seg.done <= seg.length:
            return False
        pos = seg.end
    return pos == state.total


@dataclass(slots=True)
class Segments:
    """One segmented fetch of one file (see the module docstring)."""

    track: Tracker
    get: Get
    options: TransferOptions
    #: Awaited with the first state of a new `.part`, before its first byte.
    commit_new_part: Callable[[], Awaitable[None]]

    async def resume(self, out: OutputDir, owner: str) -> TransferResult:
        """Go on with the segments the journal knows, as far as the disk agrees."""
        track = self.track
        part = await open_part(out, track.name(), size=None, resume=True, owner=owner)
        try:
            on_disk = part.size_on_disk
            segs = tuple(
                replace(s, done=max(0, min(s.done, on_disk - s.start)))
                for s in track.state.segments
            )
            track.state = replace(track.state, segments=segs)
            track.resumed_from = sum(s.done for s in segs)
            return await self.run(part, first=None)
        finally:
            await track.drop_claim()
            await part.close()

    async def run(self, part: PartFile, *, first: aiohttp.ClientResponse | None) -> TransferResult:
        track = self.track
        total = track.total()
        if first is not None:
            track.state = replace(track.state, segments=_split(total, self.options.segments))
        await part.preallocate(total)
        track.writers = [SequentialWriter(part, s.start + s.done) for s in track.state.segments]
        track.emit()
        if first is not None:
            await self.commit_new_part()
        track.follower = HashFollower(part.path, total, self._on_disk_from)
        hashing = asyncio.create_task(track.follower.run())
        jobs = [
            self._first(first) if i == 0 and first is not None else self._ranged(i)
            for i, seg in enumerate(track.state.segments)
            if not seg.complete
        ]
        try:
            results = await asyncio.gather(*jobs, return_exceptions=True)
            await track.save_progress()
            await self._raise_errors(part, results)
            hasher = await hashing
        finally:
            if not hashing.done():
                hashing.cancel()
                with contextlib.suppress(asyncio.CancelledError, BulkGettyError):
                    await hashing
            track.follower = None
        return await track.finish(part, total, hasher)

    def _on_disk_from(self, pos: int) -> int:
        """Up to where the bytes from `pos` on are on disk: the covering segment's writer."""
        for i, seg in enumerate(self.track.state.segments):
            if seg.start <= pos < seg.end:
                return self.track.writers[i].position
        return pos

    async def _raise_errors(self, part: PartFile, results: list[Any]) -> None:
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors:
            return
        if self.track.must_reset:
            self.track.must_reset = False  # reset here, once
            raise await self.track.reset(part, str(errors[0])) from errors[0]
        final = [e for e in errors if isinstance(e, BulkGettyError) and not e.retryable]
        raise (final or errors)[0]

    async def _first(self, resp: aiohttp.ClientResponse) -> None:
        """Segment 0 comes from the first response: read up to its end, then drop the rest."""
        seg, writer = self.track.state.segments[0], self.track.writers[0]
        try:
            got = await pump(self.track, resp, writer, limit=seg.length, sniff=True)
        finally:
            resp.close()
        if got != seg.length:
            raise ReadError(f"segment 0 ended after {got} of {seg.length} bytes")

    async def _ranged(self, index: int) -> None:
        """One more connection for one segment, resumed from what is already written."""
        track = self.track
        seg, writer = track.state.segments[index], track.writers[index]
        start = writer.position
        resp = await self.get(track.range_headers(start, seg.end - 1))
        try:
            if resp.status in (200, 416):
                track.must_reset = True
                raise IntegrityError(f"HTTP {resp.status} to a segment range: file changed?")
            await raise_for_status(resp)
            self._check_response(resp, start, seg.end - 1)
            want = seg.end - start
            got = await pump(track, resp, writer, limit=want, sniff=False)
        finally:
            resp.release()
        if got != want:
            raise ReadError(f"segment {index} ended after {got} of {want} bytes")

    def _check_response(self, resp: aiohttp.ClientResponse, start: int, last: int) -> None:
        state = self.track.state
        with self.track.resetting():
            check_content_range(resp, start, last, state.total)
            etag = resp.headers.get("ETag")
            if state.etag and etag and etag != state.etag:
                raise IntegrityError(f"ETag changed on segment bytes {start}-{last}")
