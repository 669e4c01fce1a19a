"""One attempt's account of its bytes: what is written, what is on disk, what may be claimed.

Why apart from the streams: the single stream and the segments differ in how they ask for
bytes, but not in what they may tell the journal. A preallocated `.part` reads back zeros
where a power cut lost unsynced writes, so its length proves nothing: the journal hears
only of bytes an fdatasync has put on disk (when durable), and when an answer shows the
file changed under us, every byte is forgotten at once (`reset`). Keeping those rules in
one object means both streams obey them the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import aiohttp

from bulkgetty.errors import BulkGettyError, IntegrityError
from bulkgetty.getty.http import map_errors
from bulkgetty.stages.files import HashFollower, NewPart, PartFile, SequentialWriter
from bulkgetty.stages.transfer.records import TransferResult, TransferState
from bulkgetty.stages.validate import sniff_error_page

__all__ = ("Budget", "Tracker", "pump")

#: Report the state to the journal at least this often while streaming.
_STATE_EVERY: Final = 8 * 2**20


@dataclass(slots=True)
class Tracker:
    """The state of one attempt and the writers that advance it."""

    state: TransferState
    on_state: Callable[[TransferState], None]
    on_progress: Callable[[int], None]
    durable: bool
    writers: list[SequentialWriter] = field(default_factory=list)
    unreported: int = 0
    #: Set when an IntegrityError means no byte of this file may be trusted.
    must_reset: bool = False
    #: Bytes fetched again that an earlier attempt had (the report's `refetched`).
    refetched: int = 0
    resumed_from: int = 0
    #: Hashes a segmented file behind its writers (woken by every write).
    follower: HashFollower | None = None
    #: Syncs the `.part`, then reports the positions it covers (see `claim`).
    claiming: asyncio.Task[None] | None = None

    # ---- reporting

    def emit(self, positions: Sequence[int] | None = None) -> None:
        """Report the writers' `positions` (default: where they are now) to the journal.

        Only positions already claimed, or synced by `claim`/`save_progress`, are passed.
        """
        self.unreported = 0
        if self.state.name is None and self.writers and self.writers[0].part.name is not None:
            self.state = replace(self.state, name=self.writers[0].part.name)
        at = [w.position for w in self.writers] if positions is None else positions
        if self.state.segments:
            segs = tuple(
                replace(s, done=at[i] - s.start) for i, s in enumerate(self.state.segments)
            )
            self.state = replace(self.state, segments=segs, done=sum(s.done for s in segs))
        elif at:
            self.state = replace(self.state, done=at[0])
        self.on_state(self.state)

    def progress(self, nbytes: int) -> None:
        if nbytes:
            if self.follower is not None:
                self.follower.poke()
            self.on_progress(nbytes)
            self.unreported += nbytes
            if self.unreported >= _STATE_EVERY:
                self.claim()

    def claim(self) -> None:
        """Report the bytes written so far once an fdatasync has put them on disk.

        The sync runs beside the stream (one at a time, from a snapshot of the positions), so
        writing goes on while the disk catches up; writeback of each batch is already under way.
        """
        self.unreported = 0
        if self.claiming is None or self.claiming.done():
            self.claiming = asyncio.create_task(self._sync_then_emit())

    async def _sync_then_emit(self) -> None:
        """Sync, then report where the writers were when the sync began (not later)."""
        positions = [w.position for w in self.writers]
        if self.durable and self.writers:
            try:
                await self.writers[0].part.datasync()
            except BulkGettyError:
                return  # the writes will fail with it themselves; claim nothing new
        self.emit(positions)

    async def drop_claim(self) -> None:
        """Stop a claim in progress: the state is about to change under it, or be final."""
        task, self.claiming = self.claiming, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def save_progress(self) -> None:
        """After success or failure: put every received byte on disk, sync, report it."""
        await self.drop_claim()
        for writer in self.writers:
            # The original error matters more; the state shows only what is on disk.
            with contextlib.suppress(BulkGettyError):
                if written := await writer.flush():
                    if self.follower is not None:
                        self.follower.poke()
                    self.on_progress(written)
        await self._sync_then_emit()

    # ---- distrust

    async def reset(self, part: PartFile | NewPart | None, message: str) -> IntegrityError:
        """Forget all progress (keep the name) so the next attempt starts from zero."""
        await self.drop_claim()
        self.writers = []
        self.state = TransferState(name=self.state.name)
        if part is not None:
            await part.truncate(0)
        self.on_state(self.state)
        return IntegrityError(message)

    @contextlib.contextmanager
    def resetting(self) -> Iterator[None]:
        """An IntegrityError raised inside means no byte of this file may be trusted."""
        try:
            yield
        except IntegrityError:
            self.must_reset = True
            raise

    # ---- requests

    def if_range(self) -> str | None:
        """A strong ETag, else Last-Modified: what If-Range may carry (weak ETags may not)."""
        etag = self.state.etag
        if etag and not etag.startswith("W/"):
            return etag
        return self.state.last_modified

    def range_headers(self, start: int, last: int | None) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity"}
        if start or last is not None:
            headers["Range"] = f"bytes={start}-{'' if last is None else last}"
            validator = self.if_range()
            if validator:
                headers["If-Range"] = validator
        return headers

    def name(self) -> str:
        if self.state.name is None:
            raise AssertionError("name is fixed before any byte is written")
        return self.state.name

    def total(self) -> int:
        if self.state.total is None:
            raise AssertionError("segments need a known total")
        return self.state.total

    # ---- the end

    async def finish(
        self,
        part: PartFile | NewPart,
        total: int,
        hasher: Any,
        *,
        tail: SequentialWriter | None = None,
    ) -> TransferResult:
        """Make the file final in one hop: `tail`'s queued bytes, fsync, rename, folder fsync."""
        await self.drop_claim()
        batch = tail.take_pending() if tail is not None else None
        path = await part.finish(durable=self.durable, tail=batch, hasher=hasher)
        return TransferResult(
            path=path,
            name=path.name,
            bytes=total,
            sha256=hasher.hexdigest(),
            content_type=self.state.content_type,
            refetched=self.refetched,
            resumed_from=self.resumed_from,
        )


@dataclass(slots=True)
class Budget:
    """How many bytes a stream may still take, and a step to run between two of its chunks.

    Why mutable: a stream split into segments while it runs keeps only the front of what it
    was asked (adaptive.py); `limit` is lowered under it and it stops at its new end.
    """

    #: Bytes of the body to take in all (None: to its end).
    limit: int | None = None
    #: Awaited once between two chunks (no write of this stream in flight), then forgotten.
    between: Callable[[], Awaitable[None]] | None = None

    async def step(self) -> None:
        step, self.between = self.between, None
        if step is not None:
            await step()


async def pump(
    track: Tracker,
    resp: aiohttp.ClientResponse,
    writer: SequentialWriter,
    *,
    limit: int | Budget | None,
    sniff: bool,
    flush: bool = True,
) -> int:
    """Copy the body (up to `limit` bytes) to `writer`; returns the bytes received.

    `flush=False` leaves the last batch queued for the caller's finishing hop.
    """
    budget = limit if isinstance(limit, Budget) else Budget(limit)
    received = 0
    content = resp.content
    while budget.limit is None or received < budget.limit:
        # Chunks as the socket delivered them: no join, no copy; the writer gathers them
        # into one pwritev per MiB.
        chunk, boundary = await map_errors(content.readchunk)
        if not chunk:
            if boundary:  # the end of one HTTP/1.1 chunk of a chunked body: go on
                continue
            break
        if budget.limit is not None and received + len(chunk) > budget.limit:
            chunk = chunk[: budget.limit - received]
        if sniff and received == 0:
            sniff_error_page(chunk, resp)
        received += len(chunk)
        track.progress(await writer.write(chunk))
        if budget.between is not None:
            await budget.step()
    if flush:
        track.progress(await writer.flush())
    return received
