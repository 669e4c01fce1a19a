"""A large file fetched as byte ranges over several connections at once, resumed per range.

Why segments at all: delivery hosts may cap each connection's rate, and one stream then
takes as long as the cap says, however fast the link. Why only so: a range is trusted only
with a validator for If-Range and an exact `Content-Range`, since a file that changed between
two ranges would be spliced from two versions. A file starts on one stream (its first
response); adaptive.py splits the rest into ranges only when that stream is slow, and the
stream keeps the front range. The `.part` of a split file is preallocated, so it is hashed
behind its writers (`HashFollower`) as they advance, and the journal hears only of synced
bytes (tracker.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from bulkgetty.errors import BulkGettyError, IntegrityError, ReadError
from bulkgetty.stages.files import HashFollower, OutputDir, PartFile, SequentialWriter, open_part
from bulkgetty.stages.transfer.records import TransferOptions, TransferResult, TransferState
from bulkgetty.stages.transfer.redirects import Get
from bulkgetty.stages.transfer.tracker import Tracker, pump
from bulkgetty.stages.validate import check_content_range, raise_for_status

__all__ = ("Segments", "may_segment", "segments_valid")


def may_segment(
    resp: aiohttp.ClientResponse,
    total: int | None,
    start: int,
    options: TransferOptions,
    track: Tracker,
) -> bool:
    """A large file's stream that ranges could continue: a fresh 200 that offers byte ranges,
    or a 206 (a resume, ranges proven), with a validator for If-Range."""
    ranges = resp.status == 206 or "bytes" in resp.headers.get("Accept-Ranges", "").lower()
    return (
        options.segments > 1
        and resp.status in (200, 206)
        and total is not None
        and total >= max(options.segment_threshold, options.segments)
        and total - start >= options.segments
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
            return await self.run(part)
        finally:
            await track.drop_claim()
            await part.close()

    async def run(self, part: PartFile) -> TransferResult:
        """Fetch every incomplete segment the state holds, each on a connection of its own."""
        track = self.track
        total = track.total()
        await part.preallocate(total)
        track.writers = [SequentialWriter(part, s.start + s.done) for s in track.state.segments]
        track.emit()
        hashing = self.follow(part, start=0, hasher=None)
        jobs = [self.ranged(i) for i, seg in enumerate(track.state.segments) if not seg.complete]
        hasher = await self.join(part, jobs, hashing)
        return await track.finish(part, total, hasher)

    def follow(self, part: PartFile, *, start: int, hasher: Any) -> asyncio.Task[Any]:
        """Hash the file from `start` on (after `hasher`'s bytes) as its writers advance."""
        self.track.follower = HashFollower(
            part.path, self.track.total(), self._on_disk_from, start=start, hasher=hasher
        )
        return asyncio.create_task(self.track.follower.run())

    async def join(
        self,
        part: PartFile,
        jobs: Sequence[Awaitable[None]],
        hashing: asyncio.Task[Any],
        *,
        failed: BaseException | None = None,
    ) -> Any:
        """Wait for every segment's job, save progress, raise the error that counts; else
        the hasher of the whole file. `failed`: a segment's error that came before."""
        try:
            results = [failed, *await asyncio.gather(*jobs, return_exceptions=True)]
            await self.track.save_progress()
            await self._raise_errors(part, results)
            return await hashing
        finally:
            if not hashing.done():
                hashing.cancel()
                with contextlib.suppress(asyncio.CancelledError, BulkGettyError):
                    await hashing
            self.track.follower = None

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

    async def ranged(self, index: int) -> None:
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
