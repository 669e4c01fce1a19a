"""The delivery stage: GET one signed delivery URI into `NAME.part`, verify it, rename it.

One call of `transfer` is one attempt; the engine owns retries. Everything a later attempt
needs to resume is in the `.part` file and the last `TransferState` passed to `on_state`.

Why it looks the way it does:

- No Getty header ever goes to the delivery host (the URI signs itself), and redirects are
  followed here, not by aiohttp, so every hop gets a scheme check, a hop limit and loop
  detection, and nothing is forwarded to another host.
- A URI's query string is its signature: messages show `scheme://host/path` only.
- Size, name and range support come from the GET itself, never from a HEAD round trip.
- Bytes are taken as the socket delivered them and written in >= 1 MiB pwritev calls in a
  worker thread, hashed in the same hop, so the event loop only moves buffers and nothing is
  copied on the way to the page cache (baseline.md: the write path is CPU and syscall bound).
- A resumed single stream hashes its prefix from disk once, then keeps hashing while it
  streams. A segmented file is hashed behind its writers (`HashFollower`), as they advance.
- A body is whole only when it matches its Content-Length exactly: bytes after the declared
  end (a header that cut the file short) fail the attempt as surely as a short body does.
  A body with no length ends where its connection does, cut or not: its length is confirmed
  by asking for the bytes after it (validate.py). An empty body is never media.
- Resume trusts a `.part` only as far as both the journal and the disk agree (the smaller),
  and a ranged answer only when its `Content-Range` is exactly what was asked. A segmented
  `.part` is preallocated, so its length proves nothing: the journal only ever hears of
  bytes an fdatasync has put on disk, and of a new `.part`'s name before its first byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Final
from urllib.parse import urljoin

import aiohttp
from aiohttp.client_proto import ResponseHandler

from bulkgetty.errors import (
    BulkGettyError,
    IntegrityError,
    ReadError,
    RedirectError,
)
from bulkgetty.getty.http import map_errors
from bulkgetty.stages.files import (
    WRITE_BATCH,
    HashFollower,
    NewPart,
    OutputDir,
    PartFile,
    SequentialWriter,
    open_part,
    safe_name,
    sha256_file,
)
from bulkgetty.stages.files import parse_content_disposition as _parse_cd
from bulkgetty.stages.transfer.records import (
    TransferOptions,
    TransferResult,
    TransferState,
    _split,
)
from bulkgetty.stages.transfer.redirects import (
    _REDIRECT_CODES,
    _as_url,
    _check_hop,
    _refuse_secret_headers,
)
from bulkgetty.stages.validate import (
    check_content_range,
    close_delimited,
    content_length,
    raise_for_status,
    redact_url,
    refuse_error_page,
    same_body,
    sniff_error_page,
    surplus_after_body,
    total_from_probe,
    unsatisfied_total,
)
from bulkgetty.stages.validate import where as _where

#: Report the state to the journal at least this often while streaming.
_STATE_EVERY: Final = 8 * 2**20


# -------------------------------------------------------------------- entry point


async def transfer(
    session: aiohttp.ClientSession,
    uri: str,
    *,
    out: OutputDir,
    owner: str,
    asset_id: str,
    state: TransferState | None,
    options: TransferOptions,
    on_state: Callable[[TransferState], None],
    on_progress: Callable[[int], None],
    on_new_part: Callable[[TransferState], Awaitable[None]] | None = None,
) -> TransferResult:
    """Fetch `uri` into `out` once; resume from `state` when the `.part` allows it.

    `on_new_part` is awaited with the first state that names a new `.part` (with its
    validators), before any byte is written into it: the caller commits it, so a kill a
    moment later leaves a `.part` its rerun adopts instead of one that belongs to nobody.
    Every state passed to `on_state` claims only bytes already fdatasync'ed (when durable).

    Raises UriExpiredError (signature refused: do not retry, re-acquiring spends),
    RedirectError, IntegrityError, DeliveryError, ConnectError/ReadError or StorageError.
    On success the reservation of `owner` is released (the final file now holds the name).
    """
    _refuse_secret_headers(session)
    attempt = _Attempt(
        session=session,
        uri=uri,
        out=out,
        owner=owner,
        asset_id=asset_id,
        options=options,
        on_state=on_state,
        on_progress=on_progress,
        on_new_part=on_new_part,
        state=state or TransferState(),
    )
    result = await attempt.run()
    out.release(owner)
    return result


# ----------------------------------------------------------------------- attempt


@dataclass(slots=True)
class _Attempt:
    """The mutable working state of one `transfer` call."""

    session: aiohttp.ClientSession
    uri: str
    out: OutputDir
    owner: str
    asset_id: str
    options: TransferOptions
    on_state: Callable[[TransferState], None]
    on_progress: Callable[[int], None]
    on_new_part: Callable[[TransferState], Awaitable[None]] | None
    state: TransferState
    refetched: int = 0
    resumed_from: int = 0
    writers: list[SequentialWriter] = field(default_factory=list)
    unreported: int = 0
    must_reset: bool = False
    #: The cleaned server name a new file should get; the `.part`'s creation settles it.
    wanted: str | None = None
    #: Hashes a segmented file behind its writers (woken by every write).
    follower: HashFollower | None = None
    #: Syncs the `.part`, then reports the positions it covers (see `_claim`).
    claiming: asyncio.Task[None] | None = None

    async def run(self) -> TransferResult:
        _check_hop(self.uri, what="delivery URI")
        self._keep_reserved_name()
        try:
            if self.state.segments and self._segments_valid():
                return await self._resume_segments()
            if self.state.segments:
                self.state = TransferState(name=self.state.name)
            return await self._single()
        finally:
            await self._drop_claim()

    # ---- names and state

    def _keep_reserved_name(self) -> None:
        """Re-reserve the journal's name; if it is taken now, its progress is not ours."""
        name = self.state.name
        if name is None:
            return
        got = self.out.reserve(name, self.owner, prefer=name)
        if got != name:
            self.state = TransferState(name=got)

    def _adopt_headers(self, resp: aiohttp.ClientResponse, total: int | None, done: int) -> None:
        """Fix the name, length and validators from accepted response headers; report them.

        `total` is the full length when known (always, for a 206); a 200 starts afresh.
        """
        headers = resp.headers
        fresh = resp.status == 200  # a full body: its headers replace everything known
        old = TransferState() if fresh else self.state
        content_type = headers.get("Content-Type") or old.content_type
        if self.state.name is None:
            disposition = headers.get("Content-Disposition")
            raw = _parse_cd(disposition) if disposition else None
            self.wanted = safe_name(raw, asset_id=self.asset_id, content_type=content_type)
        self.state = replace(
            self.state,
            total=total,
            etag=headers.get("ETag") or old.etag,
            last_modified=headers.get("Last-Modified") or old.last_modified,
            content_type=content_type,
            done=done,
        )
        self._emit()

    def _emit(self, positions: Sequence[int] | None = None) -> None:
        """Report the writers' `positions` (default: where they are now) to the journal.

        Only positions already claimed, or synced by `_claim`/`_save_progress`, are passed.
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

    def _progress(self, nbytes: int) -> None:
        if nbytes:
            if self.follower is not None:
                self.follower.poke()
            self.on_progress(nbytes)
            self.unreported += nbytes
            if self.unreported >= _STATE_EVERY:
                self._claim()

    def _claim(self) -> None:
        """Report the bytes written so far once an fdatasync has put them on disk.

        A preallocated `.part` reads back zeros where a power cut lost unsynced writes, so
        its length proves nothing: the journal may only hear of synced bytes. The sync runs
        beside the stream (one at a time, from a snapshot of the positions), so writing goes
        on while the disk catches up; writeback of each batch is already under way.
        """
        self.unreported = 0
        if self.claiming is None or self.claiming.done():
            self.claiming = asyncio.create_task(self._sync_then_emit())

    async def _sync_then_emit(self) -> None:
        """Sync, then report where the writers were when the sync began (not later)."""
        positions = [w.position for w in self.writers]
        if self.options.durable and self.writers:
            try:
                await self.writers[0].part.datasync()
            except BulkGettyError:
                return  # the writes will fail with it themselves; claim nothing new
        self._emit(positions)

    async def _drop_claim(self) -> None:
        """Stop a claim in progress: the state is about to change under it, or be final."""
        task, self.claiming = self.claiming, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _commit_new_part(self) -> None:
        """The first state of a new `.part` (name, validators), committed before its bytes."""
        if self.on_new_part is not None:
            await self.on_new_part(self.state)

    async def _reset(self, part: PartFile | NewPart | None, message: str) -> IntegrityError:
        """Forget all progress (keep the name) so the next attempt starts from zero."""
        await self._drop_claim()
        self.writers = []
        self.state = TransferState(name=self.state.name)
        if part is not None:
            await part.truncate(0)
        self.on_state(self.state)
        return IntegrityError(message)

    # ---- single stream

    async def _single(self) -> TransferResult:
        part, start = await self._open_for_resume()
        try:
            headers = self._range_headers(start, None)
            resp = await self._get(headers)
            try:
                if resp.status == 416 and start:
                    return await self._on_416(resp, part, start)
                await raise_for_status(resp)
                await refuse_error_page(resp)
                return await self._accept_single(resp, part, start)
            except IntegrityError as exc:
                if self.must_reset:
                    raise await self._reset(part, str(exc)) from exc
                raise
            finally:
                resp.release()
        finally:
            if part is not None:
                await part.close()

    async def _open_for_resume(self) -> tuple[PartFile | None, int]:
        """Reopen the `.part` of a known name; resume from min(journal, disk) when allowed."""
        if self.state.name is None:
            return None, 0
        part = await open_part(self.out, self.state.name, size=None, resume=True, owner=self.owner)
        known = min(self.state.done, part.size_on_disk)  # done per journal *and* disk
        start = known if self._can_resume() else 0
        self.refetched += known - start
        if part.size_on_disk > start:
            await part.truncate(start)  # bytes past `done` were never confirmed: drop them
        return part, start

    def _can_resume(self) -> bool:
        """Resume needs a validator for If-Range, or at least the total to check Content-Range.

        Without a validator, a same-length replacement of the file would go unnoticed; a
        licensed asset behind a signed URI does not change, so matching length is accepted.
        """
        st = self.state
        return st.done > 0 and (
            st.etag is not None or st.last_modified is not None or bool(st.total)
        )

    async def _accept_single(
        self, resp: aiohttp.ClientResponse, part: PartFile | None, start: int
    ) -> TransferResult:
        # Taken now: aiohttp lets go of the connection the moment the body ends.
        protocol = resp.connection.protocol if resp.connection is not None else None
        if start and resp.status == 200:
            self.refetched += start  # the server sent the whole file: start over
            start = 0
        total: int | None
        if start:
            total = self._check_resume_range(resp, start)
        elif resp.status == 206:
            raise IntegrityError(f"206 to a request without Range from {redact_url(resp.url)}")
        else:
            total = content_length(resp)
        self._adopt_headers(resp, total, start)
        sink: PartFile | NewPart
        if part is None:
            sink = NewPart(self.out, self._wanted(), self.owner)
        else:
            sink = part
            if start == 0:
                await part.truncate(0)
        try:
            segment = self._should_segment(resp, total)
            if isinstance(sink, NewPart) and (segment or total is None or total >= WRITE_BATCH):
                sink = await self._create_part(sink, commit=not segment)
            if segment:
                assert isinstance(sink, PartFile)
                return await self._segmented(sink, first=resp)
            self.resumed_from = start
            return await self._stream_single(resp, sink, start, protocol)
        finally:
            await self._drop_claim()  # before the descriptor it syncs is closed
            await sink.close()

    async def _create_part(self, new: NewPart, *, commit: bool) -> PartFile:
        """Create the `.part` of a file that takes more than one write, before its first byte.

        A small file is created, written and renamed in one hop (nothing to resume); a
        larger one gets its name committed first (`commit`), so a kill that lands before the
        next progress report leaves a `.part` the rerun knows as its own.
        """
        part = await new.create()
        self.state = replace(self.state, name=part.name)
        if commit:
            self._emit()
            await self._commit_new_part()
        return part

    def _check_resume_range(self, resp: aiohttp.ClientResponse, start: int) -> int:
        """A resumed 206 must match exactly; if not, the next attempt starts from zero."""
        with self._resetting():
            total = check_content_range(resp, start, None, self.state.total)
            new_etag = resp.headers.get("ETag")
            if self.state.etag and new_etag and new_etag != self.state.etag:
                raise IntegrityError(f"ETag changed on a ranged answer from {_where(resp)}")
        return total

    @contextlib.contextmanager
    def _resetting(self) -> Iterator[None]:
        """An IntegrityError raised inside means no byte of this file may be trusted."""
        try:
            yield
        except IntegrityError:
            self.must_reset = True
            raise

    async def _stream_single(
        self,
        resp: aiohttp.ClientResponse,
        part: PartFile | NewPart,
        start: int,
        protocol: ResponseHandler | None,
    ) -> TransferResult:
        """Stream to the `.part`; its last batch is written by the finishing hop itself.

        `protocol` is the connection's, taken before the first await (see surplus_after_body).
        """
        if start:
            assert isinstance(part, PartFile)
            hasher = await sha256_file(part.path, upto=start)
        else:
            hasher = hashlib.sha256()
        writer = SequentialWriter(part, start, hasher)
        self.writers = [writer]
        expected = content_length(resp)
        if expected is None and start:
            expected = self._total() - start  # a 206's Content-Range says how many
        unframed = expected is None and close_delimited(resp)
        try:
            got = await self._pump(resp, writer, limit=None, sniff=start == 0, flush=False)
            surplus = got == expected and surplus_after_body(protocol)
            if expected is not None and (got > expected or surplus):
                # The length was wrong, so no prefix of this body is trusted either.
                message = f"body longer than its Content-Length from {_where(resp)}"
                raise await self._reset(part, message)
            if expected is not None and got != expected:
                raise ReadError(f"body ended after {got} of {expected} bytes from {_where(resp)}")
            if start + got == 0:
                raise IntegrityError(f"empty body from {_where(resp)}: not media")
            if unframed:
                await self._confirm_length(resp, writer, hasher)
            # Every framing above ends the body where the file does: this is the length.
            total = writer.position + writer.pending
        except BaseException:
            await self._save_progress()
            raise
        self.on_progress(writer.pending)
        return await self._finish(part, total, hasher, tail=writer)

    async def _confirm_length(
        self, resp: aiohttp.ClientResponse, writer: SequentialWriter, hasher: Any
    ) -> None:
        """A body that ended with its connection proves no length: ask for the bytes after it.

        416 `*/GOT` or a 200 of length GOT confirms it; a 206 means the body was cut, and
        carries the rest (streamed on into the same `.part`); a 200 without a length is read
        again and must hash the same. Any other answer: start over.
        """
        self._progress(await writer.flush())
        got, at = writer.position, _where(resp)
        probe = await self._get(self._range_headers(got, None))
        try:
            if probe.status != 416:
                await raise_for_status(probe)
            with self._resetting():
                total = total_from_probe(probe, got)
                if total is None and not await same_body(probe, got, hasher.hexdigest()):
                    raise IntegrityError(f"two copies of a body without a length differ ({at})")
            if probe.status == 206 and total is not None:
                self.state = replace(self.state, total=total)
                rest = await self._pump(probe, writer, limit=None, sniff=False)
                if rest != total - got:
                    raise ReadError(f"body ended after {got + rest} of {total} bytes from {at}")
        finally:
            probe.release()

    async def _on_416(
        self, resp: aiohttp.ClientResponse, part: PartFile | None, start: int
    ) -> TransferResult:
        """Range not satisfiable: complete if the `.part` already holds the whole file."""
        total = self.state.total or unsatisfied_total(resp)
        if part is not None and total is not None and start == total:
            self.resumed_from = start
            # The `.part` was cut to `start` when it was opened: all of it is the file.
            return await self._finish(part, total, await sha256_file(part.path))
        raise await self._reset(part, f"416 for bytes {start}- from {_where(resp)}: restarting")

    # ---- segments

    def _should_segment(self, resp: aiohttp.ClientResponse, total: int | None) -> bool:
        """Only a fresh 200 of a large file, with byte ranges and a validator for If-Range."""
        opts = self.options
        ranges = "bytes" in resp.headers.get("Accept-Ranges", "").lower()
        return (
            opts.segments > 1
            and resp.status == 200
            and total is not None
            and total >= max(opts.segment_threshold, opts.segments)
            and ranges
            and self._if_range() is not None
        )

    def _segments_valid(self) -> bool:
        """Segments from the journal must tile [0, total) exactly, with a validator to resume."""
        st = self.state
        if st.name is None or self._if_range() is None:
            return False
        pos = 0
        for seg in st.segments:
            if seg.start != pos or seg.end <= seg.start or not 0 <= seg.done <= seg.length:
                return False
            pos = seg.end
        return pos == st.total

    async def _resume_segments(self) -> TransferResult:
        name = self._name()
        part = await open_part(self.out, name, size=None, resume=True, owner=self.owner)
        try:
            on_disk = part.size_on_disk
            segs = tuple(
                replace(s, done=max(0, min(s.done, on_disk - s.start))) for s in self.state.segments
            )
            self.state = replace(self.state, segments=segs)
            self.resumed_from = sum(s.done for s in segs)
            return await self._segmented(part, first=None)
        finally:
            await self._drop_claim()
            await part.close()

    async def _segmented(
        self, part: PartFile, *, first: aiohttp.ClientResponse | None
    ) -> TransferResult:
        total = self._total()
        if first is not None:
            self.state = replace(self.state, segments=_split(total, self.options.segments))
        await part.preallocate(total)
        self.writers = [SequentialWriter(part, s.start + s.done) for s in self.state.segments]
        self._emit()
        if first is not None:
            await self._commit_new_part()
        self.follower = HashFollower(part.path, total, self._on_disk_from)
        hashing = asyncio.create_task(self.follower.run())
        jobs = [
            self._first_segment(first) if i == 0 and first is not None else self._ranged_segment(i)
            for i, seg in enumerate(self.state.segments)
            if not seg.complete
        ]
        try:
            results = await asyncio.gather(*jobs, return_exceptions=True)
            await self._save_progress()
            await self._raise_segment_errors(part, results)
            hasher = await hashing
        finally:
            if not hashing.done():
                hashing.cancel()
                with contextlib.suppress(asyncio.CancelledError, BulkGettyError):
                    await hashing
            self.follower = None
        return await self._finish(part, total, hasher)

    def _on_disk_from(self, pos: int) -> int:
        """Up to where the bytes from `pos` on are on disk: the covering segment's writer."""
        for i, seg in enumerate(self.state.segments):
            if seg.start <= pos < seg.end:
                return self.writers[i].position
        return pos

    async def _raise_segment_errors(self, part: PartFile, results: list[Any]) -> None:
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors:
            return
        if self.must_reset:
            self.must_reset = False  # reset here, once
            raise await self._reset(part, str(errors[0])) from errors[0]
        final = [e for e in errors if isinstance(e, BulkGettyError) and not e.retryable]
        raise (final or errors)[0]

    async def _first_segment(self, resp: aiohttp.ClientResponse) -> None:
        """Segment 0 comes from the first response: read up to its end, then drop the rest."""
        seg, writer = self.state.segments[0], self.writers[0]
        try:
            got = await self._pump(resp, writer, limit=seg.length, sniff=True)
        finally:
            resp.close()
        if got != seg.length:
            raise ReadError(f"segment 0 ended after {got} of {seg.length} bytes")

    async def _ranged_segment(self, index: int) -> None:
        """One more connection for one segment, resumed from what is already written."""
        seg, writer = self.state.segments[index], self.writers[index]
        start = writer.position
        resp = await self._get(self._range_headers(start, seg.end - 1))
        try:
            if resp.status in (200, 416):
                self.must_reset = True
                raise IntegrityError(f"HTTP {resp.status} to a segment range: file changed?")
            await raise_for_status(resp)
            self._check_segment_response(resp, start, seg.end - 1)
            want = seg.end - start
            got = await self._pump(resp, writer, limit=want, sniff=False)
        finally:
            resp.release()
        if got != want:
            raise ReadError(f"segment {index} ended after {got} of {want} bytes")

    def _check_segment_response(self, resp: aiohttp.ClientResponse, start: int, last: int) -> None:
        with self._resetting():
            check_content_range(resp, start, last, self.state.total)
            etag = resp.headers.get("ETag")
            if self.state.etag and etag and etag != self.state.etag:
                raise IntegrityError(f"ETag changed on segment bytes {start}-{last}")

    # ---- streaming and finishing

    async def _pump(
        self,
        resp: aiohttp.ClientResponse,
        writer: SequentialWriter,
        *,
        limit: int | None,
        sniff: bool,
        flush: bool = True,
    ) -> int:
        """Copy the body (up to `limit` bytes) to `writer`; returns the bytes received.

        `flush=False` leaves the last batch queued for the caller's finishing hop.
        """
        received = 0
        content = resp.content
        while limit is None or received < limit:
            # Chunks as the socket delivered them: no join, no copy; the writer gathers them
            # into one pwritev per MiB.
            chunk, boundary = await map_errors(content.readchunk)
            if not chunk:
                if boundary:  # the end of one HTTP/1.1 chunk of a chunked body: go on
                    continue
                break
            if limit is not None and received + len(chunk) > limit:
                chunk = chunk[: limit - received]
            if sniff and received == 0:
                sniff_error_page(chunk, resp)
            received += len(chunk)
            self._progress(await writer.write(chunk))
        if flush:
            self._progress(await writer.flush())
        return received

    async def _save_progress(self) -> None:
        """After success or failure: put every received byte on disk, sync, report it."""
        await self._drop_claim()
        for writer in self.writers:
            # The original error matters more; the state shows only what is on disk.
            with contextlib.suppress(BulkGettyError):
                if written := await writer.flush():
                    if self.follower is not None:
                        self.follower.poke()
                    self.on_progress(written)
        await self._sync_then_emit()

    async def _finish(
        self,
        part: PartFile | NewPart,
        total: int,
        hasher: Any,
        *,
        tail: SequentialWriter | None = None,
    ) -> TransferResult:
        """Make the file final in one hop: `tail`'s queued bytes, fsync, rename, folder fsync."""
        await self._drop_claim()
        batch = tail.take_pending() if tail is not None else None
        path = await part.finish(durable=self.options.durable, tail=batch, hasher=hasher)
        return TransferResult(
            path=path,
            name=path.name,
            bytes=total,
            sha256=hasher.hexdigest(),
            content_type=self.state.content_type,
            refetched=self.refetched,
            resumed_from=self.resumed_from,
        )

    # ---- requests

    def _if_range(self) -> str | None:
        """A strong ETag, else Last-Modified: what If-Range may carry (weak ETags may not)."""
        etag = self.state.etag
        if etag and not etag.startswith("W/"):
            return etag
        return self.state.last_modified

    def _range_headers(self, start: int, last: int | None) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity"}
        if start or last is not None:
            headers["Range"] = f"bytes={start}-{'' if last is None else last}"
            validator = self._if_range()
            if validator:
                headers["If-Range"] = validator
        return headers

    async def _get(self, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """GET with redirects followed here: hop limit, loop detection, scheme check."""
        url = self.uri
        seen = {url}
        for hop in itertools.count():
            resp = await map_errors(partial(self._request, url, headers))
            if resp.status not in _REDIRECT_CODES:
                return resp
            location = resp.headers.get("Location")
            resp.release()
            if not location:
                raise RedirectError(f"HTTP {resp.status} without Location from {redact_url(url)}")
            if hop == self.options.max_redirects:
                raise RedirectError(f"more than {hop} redirects, last from {redact_url(url)}")
            url = urljoin(url, location.strip())
            _check_hop(url, what="redirect target")
            if url in seen:
                raise RedirectError(f"redirect loop back to {redact_url(url)}")
            seen.add(url)
        raise AssertionError("itertools.count() never ends")

    async def _request(self, url: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        return await self.session.get(_as_url(url), headers=headers, allow_redirects=False)

    def _name(self) -> str:
        if self.state.name is None:
            raise AssertionError("name is fixed before any byte is written")
        return self.state.name

    def _wanted(self) -> str:
        if self.wanted is None:
            raise AssertionError("the wanted name comes with the first response's headers")
        return self.wanted

    def _total(self) -> int:
        if self.state.total is None:
            raise AssertionError("segments need a known total")
        return self.state.total
