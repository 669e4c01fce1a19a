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

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import aiohttp
from aiohttp.client_proto import ResponseHandler

from bulkgetty.errors import IntegrityError, ReadError
from bulkgetty.stages.files import (
    WRITE_BATCH,
    NewPart,
    OutputDir,
    PartFile,
    SequentialWriter,
    open_part,
    safe_name,
    sha256_file,
)
from bulkgetty.stages.files import parse_content_disposition as _parse_cd
from bulkgetty.stages.transfer.adaptive import Adaptive
from bulkgetty.stages.transfer.records import TransferOptions, TransferResult, TransferState
from bulkgetty.stages.transfer.redirects import _check_hop, _refuse_secret_headers, get_following
from bulkgetty.stages.transfer.segments import Segments, may_segment, segments_valid
from bulkgetty.stages.transfer.tracker import Tracker, pump
from bulkgetty.stages.transfer.unframed import confirm_length
from bulkgetty.stages.validate import (
    check_content_range,
    close_delimited,
    content_length,
    raise_for_status,
    redact_url,
    refuse_error_page,
    surplus_after_body,
    unsatisfied_total,
)
from bulkgetty.stages.validate import where as _where

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
    track = Tracker(
        state=state or TransferState(),
        on_state=on_state,
        on_progress=on_progress,
        durable=options.durable,
    )
    attempt = _Attempt(
        session=session,
        uri=uri,
        out=out,
        owner=owner,
        asset_id=asset_id,
        options=options,
        on_new_part=on_new_part,
        track=track,
    )
    result = await attempt.run()
    out.release(owner)
    return result


# ----------------------------------------------------------------------- attempt


@dataclass(slots=True)
class _Attempt:
    """One `transfer` call: names, the single stream, and the hand-over to segments."""

    session: aiohttp.ClientSession
    uri: str
    out: OutputDir
    owner: str
    asset_id: str
    options: TransferOptions
    on_new_part: Callable[[TransferState], Awaitable[None]] | None
    track: Tracker
    #: The cleaned server name a new file should get; the `.part`'s creation settles it.
    wanted: str | None = None

    async def run(self) -> TransferResult:
        _check_hop(self.uri, what="delivery URI")
        self._keep_reserved_name()
        track = self.track
        try:
            if segments_valid(track.state, track):
                return await self._segments().resume(self.out, self.owner)
            if track.state.segments:
                track.state = TransferState(name=track.state.name)
            return await self._single()
        finally:
            await track.drop_claim()

    # ---- names and state

    def _keep_reserved_name(self) -> None:
        """Re-reserve the journal's name; if it is taken now, its progress is not ours."""
        name = self.track.state.name
        if name is None:
            return
        got = self.out.reserve(name, self.owner, prefer=name)
        if got != name:
            self.track.state = TransferState(name=got)

    def _adopt_headers(self, resp: aiohttp.ClientResponse, total: int | None, done: int) -> None:
        """Fix the name, length and validators from accepted response headers; report them.

        `total` is the full length when known (always, for a 206); a 200 starts afresh.
        """
        headers = resp.headers
        track = self.track
        fresh = resp.status == 200  # a full body: its headers replace everything known
        old = TransferState() if fresh else track.state
        content_type = headers.get("Content-Type") or old.content_type
        if track.state.name is None:
            disposition = headers.get("Content-Disposition")
            raw = _parse_cd(disposition) if disposition else None
            self.wanted = safe_name(raw, asset_id=self.asset_id, content_type=content_type)
        track.state = replace(
            track.state,
            total=total,
            etag=headers.get("ETag") or old.etag,
            last_modified=headers.get("Last-Modified") or old.last_modified,
            content_type=content_type,
            done=done,
        )
        track.emit()

    async def _commit_new_part(self) -> None:
        """The first state of a new `.part` (name, validators), committed before its bytes."""
        if self.on_new_part is not None:
            await self.on_new_part(self.track.state)

    def _segments(self) -> Segments:
        return Segments(self.track, self._get, self.options)

    async def _get(self, headers: dict[str, str]) -> aiohttp.ClientResponse:
        return await get_following(
            self.session, self.uri, headers, max_redirects=self.options.max_redirects
        )

    # ---- single stream

    async def _single(self) -> TransferResult:
        part, start = await self._open_for_resume()
        try:
            headers = self.track.range_headers(start, None)
            resp = await self._get(headers)
            try:
                if resp.status == 416 and start:
                    return await self._on_416(resp, part, start)
                await raise_for_status(resp)
                await refuse_error_page(resp)
                return await self._accept_single(resp, part, start)
            except IntegrityError as exc:
                if self.track.must_reset:
                    raise await self.track.reset(part, str(exc)) from exc
                raise
            finally:
                resp.release()
        finally:
            if part is not None:
                await part.close()

    async def _open_for_resume(self) -> tuple[PartFile | None, int]:
        """Reopen the `.part` of a known name; resume from min(journal, disk) when allowed."""
        state = self.track.state
        if state.name is None:
            return None, 0
        part = await open_part(self.out, state.name, size=None, resume=True, owner=self.owner)
        known = min(state.done, part.size_on_disk)  # done per journal *and* disk
        start = known if self._can_resume() else 0
        self.track.refetched += known - start
        if part.size_on_disk > start:
            await part.truncate(start)  # bytes past `done` were never confirmed: drop them
        return part, start

    def _can_resume(self) -> bool:
        """Resume needs a validator for If-Range, or at least the total to check Content-Range.

        Without a validator, a same-length replacement of the file would go unnoticed; a
        licensed asset behind a signed URI does not change, so matching length is accepted.
        """
        st = self.track.state
        return st.done > 0 and (
            st.etag is not None or st.last_modified is not None or bool(st.total)
        )

    async def _accept_single(
        self, resp: aiohttp.ClientResponse, part: PartFile | None, start: int
    ) -> TransferResult:
        # Taken now: aiohttp lets go of the connection the moment the body ends.
        protocol = resp.connection.protocol if resp.connection is not None else None
        if start and resp.status == 200:
            self.track.refetched += start  # the server sent the whole file: start over
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
            sink = NewPart(self.out, _known(self.wanted), self.owner)
        else:
            sink = part
            if start == 0:
                await part.truncate(0)
        try:
            watch = may_segment(resp, total, start, self.options, self.track)
            if isinstance(sink, NewPart) and (watch or total is None or total >= WRITE_BATCH):
                sink = await self._create_part(sink)
            self.track.resumed_from = start
            return await self._stream_single(resp, sink, start, protocol, watch=watch)
        finally:
            await self.track.drop_claim()  # before the descriptor it syncs is closed
            await sink.close()

    async def _create_part(self, new: NewPart) -> PartFile:
        """Create the `.part` of a file that takes more than one write, before its first byte.

        A small file is created, written and renamed in one hop (nothing to resume); a
        larger one gets its name committed first, so a kill that lands before the next
        progress report leaves a `.part` the rerun knows as its own.
        """
        part = await new.create()
        self.track.state = replace(self.track.state, name=part.name)
        self.track.emit()
        await self._commit_new_part()
        return part

    def _check_resume_range(self, resp: aiohttp.ClientResponse, start: int) -> int:
        """A resumed 206 must match exactly; if not, the next attempt starts from zero."""
        with self.track.resetting():
            total = check_content_range(resp, start, None, self.track.state.total)
            new_etag = resp.headers.get("ETag")
            if self.track.state.etag and new_etag and new_etag != self.track.state.etag:
                raise IntegrityError(f"ETag changed on a ranged answer from {_where(resp)}")
        return total

    async def _stream_single(
        self,
        resp: aiohttp.ClientResponse,
        part: PartFile | NewPart,
        start: int,
        protocol: ResponseHandler | None,
        *,
        watch: bool,
    ) -> TransferResult:
        """Stream to the `.part`; its last batch is written by the finishing hop itself.

        `protocol` is the connection's, taken before the first await (see surplus_after_body).
        `watch`: a large file whose rest may be split into ranges on the way (adaptive.py).
        """
        if start:
            assert isinstance(part, PartFile)
            hasher = await sha256_file(part.path, upto=start)
        else:
            hasher = hashlib.sha256()
        writer = SequentialWriter(part, start, hasher)
        self.track.writers = [writer]
        expected = content_length(resp)
        if expected is None and start:
            expected = self.track.total() - start  # a 206's Content-Range says how many
        unframed = expected is None and close_delimited(resp)
        adaptive = None
        if watch:
            assert isinstance(part, PartFile)
            adaptive = Adaptive(self._segments(), part, writer, start)
        try:
            if adaptive is None:
                first = start == 0
                got = await pump(self.track, resp, writer, limit=None, sniff=first, flush=False)
            else:
                outcome = await adaptive.stream(resp)
                if isinstance(outcome, TransferResult):
                    return outcome  # split on the way: the segments finished the file
                got = outcome
            surplus = got == expected and surplus_after_body(protocol)
            if expected is not None and (got > expected or surplus):
                # The length was wrong, so no prefix of this body is trusted either.
                message = f"body longer than its Content-Length from {_where(resp)}"
                raise await self.track.reset(part, message)
            if expected is not None and got != expected:
                raise ReadError(f"body ended after {got} of {expected} bytes from {_where(resp)}")
            if start + got == 0:
                raise IntegrityError(f"empty body from {_where(resp)}: not media")
            if unframed:
                await confirm_length(self.track, self._get, resp, writer, hasher)
            # Every framing above ends the body where the file does: this is the length.
            total = writer.position + writer.pending
        except BaseException:
            if adaptive is None or not adaptive.was_split:  # a split saved its own progress
                await self.track.save_progress()
            raise
        self.track.on_progress(writer.pending)
        return await self.track.finish(part, total, hasher, tail=writer)

    async def _on_416(
        self, resp: aiohttp.ClientResponse, part: PartFile | None, start: int
    ) -> TransferResult:
        """Range not satisfiable: complete if the `.part` already holds the whole file."""
        total = self.track.state.total or unsatisfied_total(resp)
        if part is not None and total is not None and start == total:
            self.track.resumed_from = start
            # The `.part` was cut to `start` when it was opened: all of it is the file.
            return await self.track.finish(part, total, await sha256_file(part.path))
        message = f"416 for bytes {start}- from {_where(resp)}: restarting"
        raise await self.track.reset(part, message)


def _known(wanted: str | None) -> str:
    """The wanted name of a new file; it comes with the first response's headers."""
    if wanted is None:
        raise AssertionError("the wanted name comes with the first response's headers")
    return wanted
