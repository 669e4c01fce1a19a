"""A large file starts on one stream; its rest is split into ranges only when that stream is slow.

Why: ranges pay against delivery hosts that cap each connection's rate (benchmark `capped`:
4 ranges >= 3x one stream), but on a fast link this process, not the connection, is the
limit, and more connections only add work: 16 TLS connections for 4 files, and a hash read
back behind the writers instead of taken in each write's own hop (benchmarks/README.md,
issue 16, "large over HTTPS"). So the first response streams alone and hashes as it writes,
and every `segment_probation` seconds while it is alone, its last window is weighed
(`worth_splitting`). When the rest is worth more connections, it is cut into `--segments`
near-equal ranges (`split_rest`): the stream keeps the front one and stops at its end
(`Budget`), one new connection takes each other range (segments.py), and the hash goes on
behind the writers from where the stream had hashed.

The switch is crash-safe in either order: the `.part` is preallocated before the journal
hears of the segments, and it hears them with synced bytes only (the stream's last claim, 0
for the new ranges). A kill before that state lands resumes the single stream, whose resume
cuts the `.part` back to its claim; a kill after it resumes each range from its own claim.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Any, Final

import aiohttp

from bulkgetty.errors import ReadError
from bulkgetty.stages.files import PartFile, SequentialWriter
from bulkgetty.stages.transfer.records import Segment, TransferResult
from bulkgetty.stages.transfer.segments import Segments
from bulkgetty.stages.transfer.tracker import Budget, Tracker, pump

__all__ = ("Adaptive", "split_rest", "worth_splitting")

#: Split only a rest that would take at least this long (seconds) on the one stream.
_WORTH: Final = 1.0
#: Split only while the process used less than this share of one core (CPU s per s).
_BUSY: Final = 0.5


def worth_splitting(remaining: int, rate: float, cpu: float) -> bool:
    """Whether the `remaining` bytes of a file should go over more connections.

    `rate` is the stream's bytes per second and `cpu` the process's CPU seconds per second
    (all its threads), both over the last window.

    - The rest must take at least `_WORTH` (1 s) at that rate: each new range costs a request
      (and a TLS handshake) before its first byte, and the split moves the hash from the
      write's own hop to a read-back; a rest due within a second cannot win back more.
    - The process must have spare CPU, under half a core: a stream is slow either because
      something outside caps it (a per-connection limit, which more connections beat) or
      because this process takes bytes no faster (a fast link: bulkgetty is CPU-bound
      there, one event loop). In that case more connections only add work. Under half a
      core leaves room for at least twice the bytes before the loop is the limit.
    """
    return remaining > rate * _WORTH and cpu < _BUSY


def split_rest(pos: int, total: int, count: int) -> tuple[Segment, ...]:
    """`[pos, total)` in up to `count` near-equal ranges, the first widened to start at 0:
    the stream that holds `[0, pos)` keeps it, so the segments tile the file."""
    size = -(-(total - pos) // count)
    segs = [Segment(a, min(a + size, total)) for a in range(pos, total, size)]
    return (Segment(0, segs[0].end), *segs[1:])


@dataclass(slots=True)
class _Window:
    """Where one measuring window began: wall clock, process CPU, the stream's position."""

    wall: float
    cpu: float
    pos: int

    @classmethod
    def now(cls, pos: int) -> _Window:
        return cls(time.monotonic(), time.process_time(), pos)


@dataclass(slots=True)
class Adaptive:
    """One large file's stream, split into segments when it is slow (module docstring)."""

    segments: Segments
    part: PartFile
    #: The stream's writer; it hashes in its own hop until a split hands the hash on.
    writer: SequentialWriter
    #: Where the response's body begins in the file (a resume's Range start).
    start: int
    budget: Budget = field(default_factory=Budget)
    #: Set by a split: the hash behind the writers, and one job per new range.
    hashing: asyncio.Task[Any] | None = None
    jobs: list[asyncio.Task[None]] = field(default_factory=list)
    window: _Window | None = None
    timer: asyncio.TimerHandle | None = None

    @property
    def track(self) -> Tracker:
        return self.segments.track

    @property
    def was_split(self) -> bool:
        return self.hashing is not None

    async def stream(self, resp: aiohttp.ClientResponse) -> int | TransferResult:
        """The bytes received when the stream stayed alone (the caller checks and finishes
        them); else the file, finished by its segments. After a split, every failure is
        raised with its progress saved (Segments.join)."""
        failed: BaseException | None = None
        try:
            got = await self._pump(resp)
            if not self.was_split:
                return got
        except Exception as exc:
            if not self.was_split:
                raise
            failed = exc
        except BaseException:
            await self._stop_split()
            raise
        finally:
            if self.timer is not None:
                self.timer.cancel()
        resp.close()  # the rest of its body belongs to the other ranges
        assert self.hashing is not None
        hasher = await self.segments.join(self.part, self.jobs, self.hashing, failed=failed)
        return await self.track.finish(self.part, self.track.total(), hasher)

    async def _pump(self, resp: aiohttp.ClientResponse) -> int:
        if self.segments.options.segment_probation > 0:
            self._arm()
        else:
            await self._split()
        got = await pump(
            self.track, resp, self.writer, limit=self.budget, sniff=self.start == 0, flush=False
        )
        if self.was_split:
            self.track.progress(await self.writer.flush())
            if got != self.budget.limit:
                raise ReadError(f"segment 0 ended after {got} of {self.budget.limit} bytes")
        return got

    # ---- probation

    def _arm(self) -> None:
        """Start a window; the first chunk after `segment_probation` s weighs it."""
        self.window = _Window.now(self._received())
        delay = self.segments.options.segment_probation
        self.timer = asyncio.get_running_loop().call_later(delay, self._due)

    def _due(self) -> None:
        self.budget.between = self._weigh

    async def _weigh(self) -> None:
        assert self.window is not None
        then, now = self.window, _Window.now(self._received())
        elapsed = max(now.wall - then.wall, 1e-6)
        rate = (now.pos - then.pos) / elapsed
        cpu = (now.cpu - then.cpu) / elapsed
        if worth_splitting(self.track.total() - now.pos, rate, cpu):
            await self._split()
        else:
            self._arm()

    def _received(self) -> int:
        return self.writer.position + self.writer.pending

    # ---- the split

    async def _split(self) -> None:
        """Cut the rest into ranges: this stream keeps the front one, new connections the
        others. Runs between two chunks, so no write of this stream is in flight."""
        track, writer, part = self.track, self.writer, self.part
        track.progress(await writer.flush())  # every byte received is hashed in its hop
        total = track.total()
        if total - writer.position < 2:
            return  # nothing left to share
        segs = split_rest(writer.position, total, self.segments.options.segments)
        await track.drop_claim()  # its positions are one stream's
        await part.preallocate(total)
        claimed = track.state.done
        hasher, writer.hasher = writer.hasher, None
        track.state = replace(track.state, segments=segs)
        track.writers = [writer, *(SequentialWriter(part, s.start) for s in segs[1:])]
        track.emit([claimed, *(s.start for s in segs[1:])])
        self.budget.limit = segs[0].end - self.start
        self.hashing = self.segments.follow(part, start=writer.position, hasher=hasher)
        self.jobs = [asyncio.create_task(self.segments.ranged(i)) for i in range(1, len(segs))]

    async def _stop_split(self) -> None:
        """Cancelled: the other ranges and the hash stop too (their progress is claimed)."""
        tasks = [*self.jobs, *([self.hashing] if self.hashing is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.track.follower = None
