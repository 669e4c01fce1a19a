"""transfer.py against small aiohttp servers on 127.0.0.1 (real sockets, fault switches)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bulkgetty.errors import (
    DeliveryError,
    IntegrityError,
    JournalError,
    ReadError,
    RedirectError,
    StorageError,
    UriExpiredError,
    UsageError,
)
from bulkgetty.getty.http import Timeouts, new_session
from bulkgetty.stages.files import OutputDir
from bulkgetty.stages.files import writes as files
from bulkgetty.stages.transfer import (
    Segment,
    TransferOptions,
    TransferResult,
    TransferState,
    transfer,
)
from bulkgetty.stages.transfer import tracker as transfer_tracker
from bulkgetty.stages.transfer.redirects import _as_url

MiB = 2**20
SIG = "?v=1&k=2&sig=TOPSECRET"


@dataclass
class Asset:
    """One file the test server delivers, with fault switches."""

    body: bytes
    etag: str | None = '"v1"'
    content_type: str | None = "image/jpeg"
    disposition: str | None = "attachment; filename=GettyImages-1.jpg"
    ranges: bool = True
    chunked: bool = False
    ignore_range: bool = False
    bad_content_range: bool = False
    #: Close the connection after this many body bytes, for responses starting at `cut_start`.
    cut_after: int | None = None
    cut_start: int | None = 0  # None: whatever the start
    cut_times: int = 1
    #: Declare a Content-Length this much larger than the body sent (negative: smaller, and
    #: the bytes past it follow on the socket, as from a server streaming the whole file).
    extra_length: int = 0
    stall_after: int | None = None
    status: int | None = None
    error_body: bytes = b""
    error_type: str | None = None
    #: Request number (from 0) -> status answered instead of the file, with `error_body`.
    status_at: dict[int, int] = field(default_factory=dict)
    #: How many responses (the first ones) end where the connection closes: no
    #: Content-Length, no chunking.
    close_delimited: int = 0
    #: Serve a Range whatever If-Range says (a server that ignores the validator).
    ignore_if_range: bool = False
    last_modified: str | None = None
    #: Range start -> status answered instead (with `error_body`), e.g. one segment refused.
    status_for_start: dict[int, int] = field(default_factory=dict)
    #: Bytes per second each response is held to (a host that caps every connection).
    rate: int | None = None
    #: Cut only ranged responses (with `cut_start=None`: the first ranges asked for).
    cut_ranged_only: bool = False
    requests: int = 0


class _Unframed(web.StreamResponse):
    """No Content-Length and no chunking: the body ends when the server hangs up."""

    _length_check = False


@dataclass
class Seen:
    path_qs: str
    headers: dict[str, str]
    status: int = 0
    start: int = 0
    served: int = 0


@dataclass
class Server:
    """An in-process delivery host: assets under /a/KEY, redirects under /r/KEY."""

    assets: dict[str, Asset] = field(default_factory=dict)
    redirects: dict[str, tuple[int, str]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    base: str = ""

    def url(self, path: str, query: str = SIG) -> str:
        return f"{self.base}{path}{query}"

    @property
    def served(self) -> int:
        return sum(s.served for s in self.seen)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/a/{key}", self.media)
        app.router.add_get("/r/{key}", self.redirect)
        return app

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.path_qs, dict(request.headers)))
        code, location = self.redirects[request.match_info["key"]]
        return web.Response(status=code, headers={"Location": location})

    async def media(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(request.path_qs, dict(request.headers))
        self.seen.append(seen)
        asset = self.assets[request.match_info["key"]]
        status = asset.status_at.get(asset.requests, asset.status)
        asset.requests += 1
        if status is not None:
            seen.status = status
            return web.Response(status=status, body=asset.error_body, content_type=asset.error_type)
        span = self._span(asset, request.headers)
        if span is None:
            seen.status = 416
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(asset.body)}"})
        start, end = span
        seen.start = start
        if start in asset.status_for_start and "Range" in request.headers:
            seen.status = asset.status_for_start[start]
            return web.Response(
                status=seen.status, body=asset.error_body, content_type=asset.error_type
            )
        return await self._send(request, asset, seen, start, end)

    def _span(self, asset: Asset, headers: Mapping[str, str]) -> tuple[int, int] | None:
        """[start, end) to send; None when the range is not satisfiable."""
        size = len(asset.body)
        rng = headers.get("Range")
        if_range = headers.get("If-Range")
        if not rng or not asset.ranges or asset.ignore_range:
            return 0, size
        validators = (asset.etag, asset.last_modified)
        if if_range is not None and if_range not in validators and not asset.ignore_if_range:
            return 0, size
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
        assert m, rng
        start = int(m.group(1))
        end = int(m.group(2)) + 1 if m.group(2) else size
        if start >= size:
            return None
        return start, min(end, size)

    def _headers(self, asset: Asset, start: int, end: int, partial: bool) -> dict[str, str]:
        headers: dict[str, str] = {}
        if asset.etag:
            headers["ETag"] = asset.etag
        if asset.last_modified:
            headers["Last-Modified"] = asset.last_modified
        if asset.content_type:
            headers["Content-Type"] = asset.content_type
        if asset.disposition:
            headers["Content-Disposition"] = asset.disposition
        if asset.ranges:
            headers["Accept-Ranges"] = "bytes"
        if partial:
            first = start + 1 if asset.bad_content_range else start
            headers["Content-Range"] = f"bytes {first}-{end - 1}/{len(asset.body)}"
        return headers

    async def _send(
        self, request: web.Request, asset: Asset, seen: Seen, start: int, end: int
    ) -> web.StreamResponse:
        partial = (start, end) != (0, len(asset.body))
        seen.status = 206 if partial else 200
        unframed = asset.close_delimited > 0
        asset.close_delimited -= unframed
        headers = self._headers(asset, start, end, partial)
        resp = (_Unframed if unframed else web.StreamResponse)(status=seen.status, headers=headers)
        if unframed:
            resp.force_close()
        elif not asset.chunked:
            resp.content_length = end - start + asset.extra_length
        else:
            resp.enable_chunked_encoding()
        if asset.content_type is None:
            resp.headers.popall("Content-Type", None)
        await resp.prepare(request)
        data = asset.body[start:end]
        cut = self._cut_point(asset, start, partial)
        limit = len(data) if cut is None else min(cut, len(data))
        raw = b""
        if asset.extra_length < 0 and cut is None:
            # aiohttp trims writes to Content-Length: the last declared KiBs and the surplus
            # go to the socket in one write, so they arrive together.
            limit = max(0, len(data) + asset.extra_length - 4096)
            raw = data[limit:]
        step = 256 * 1024 if asset.rate is None else max(1024, min(256 * 1024, asset.rate // 10))
        for i in range(0, limit, step):
            piece = data[i : min(i + step, limit)]
            await resp.write(piece)
            seen.served += len(piece)
            if asset.rate is not None:
                await asyncio.sleep(len(piece) / asset.rate)
            if asset.stall_after is not None and seen.served >= asset.stall_after:
                await asyncio.wait_for(self.release.wait(), 10)
        if cut is not None or asset.extra_length or unframed:
            assert request.transport is not None
            request.transport.write(raw)
            request.transport.close()
            return resp
        await resp.write_eof()
        return resp

    def _cut_point(self, asset: Asset, start: int, partial: bool) -> int | None:
        wrong_start = asset.cut_start is not None and start != asset.cut_start
        wrong_start = wrong_start or (asset.cut_ranged_only and not partial)
        if asset.cut_after is None or asset.cut_times <= 0 or wrong_start:
            return None
        asset.cut_times -= 1
        return asset.cut_after


async def _start(server: Server) -> web.AppRunner:
    runner = web.AppRunner(server.app(), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.base = f"http://127.0.0.1:{port}"
    return runner


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    runner = await _start(srv)
    yield srv
    srv.release.set()
    await runner.cleanup()


@pytest.fixture
async def server2() -> AsyncIterator[Server]:
    srv = Server()
    runner = await _start(srv)
    yield srv
    srv.release.set()
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with new_session(Timeouts(connect=5, stall=5)) as sess:
        yield sess


@pytest.fixture
def out(tmp_path: Path) -> OutputDir:
    return OutputDir(tmp_path / "out")


@dataclass
class Calls:
    states: list[TransferState] = field(default_factory=list)
    progress: int = 0
    #: Called with each state as it is reported (checks that must see the disk at that time).
    check: Callable[[TransferState], None] | None = None
    on_new_part: Callable[[TransferState], Awaitable[None]] | None = None

    @property
    def last(self) -> TransferState:
        return self.states[-1]

    def on_state(self, state: TransferState) -> None:
        self.states.append(state)
        if self.check is not None:
            self.check(state)

    def on_progress(self, n: int) -> None:
        self.progress += n


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    out: OutputDir,
    *,
    calls: Calls | None = None,
    state: TransferState | None = None,
    options: TransferOptions | None = None,
    owner: str = "image:1:original",
    asset_id: str = "1",
) -> TransferResult:
    calls = calls if calls is not None else Calls()
    return await transfer(
        session,
        url,
        out=out,
        owner=owner,
        asset_id=asset_id,
        state=state,
        options=options or TransferOptions(),
        on_state=calls.on_state,
        on_progress=calls.on_progress,
        on_new_part=calls.on_new_part,
    )


def body(size: int) -> bytes:
    return os.urandom(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- plain download


async def test_full_download_verified_and_named_from_disposition(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(3 * MiB + 123)
    server.assets["x"] = Asset(data)
    calls = Calls()
    result = await fetch(session, server.url("/a/x"), out, calls=calls)
    assert result.name == "GettyImages-1.jpg"
    assert result.path == out.path / "GettyImages-1.jpg"
    assert result.path.read_bytes() == data
    assert result.sha256 == sha(data)
    assert (result.bytes, result.refetched, result.resumed_from) == (len(data), 0, 0)
    assert result.content_type == "image/jpeg"
    assert not (out.path / "GettyImages-1.jpg.part").exists()
    assert calls.progress == len(data)
    first = calls.states[0]  # validators are known from the headers, before any byte
    assert (first.total, first.etag) == (len(data), '"v1"')
    # the name is settled when the .part is created; no progress is reported without it
    assert all(st.name == "GettyImages-1.jpg" for st in calls.states if st.done > 0)


async def test_no_getty_headers_reach_the_delivery_host(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    server.assets["x"] = Asset(body(1000))
    await fetch(session, server.url("/a/x"), out)
    (seen,) = server.seen
    lowered = {k.lower(): v for k, v in seen.headers.items()}
    assert "authorization" not in lowered
    assert "api-key" not in lowered
    assert "cookie" not in lowered
    assert lowered["accept-encoding"] == "identity"
    assert seen.path_qs == "/a/x" + SIG  # the signature is sent byte for byte


async def test_session_with_default_credentials_is_refused(server: Server, out: OutputDir) -> None:
    server.assets["x"] = Asset(b"data")
    async with aiohttp.ClientSession(headers={"Api-Key": "k"}) as bad:
        with pytest.raises(UsageError):
            await fetch(bad, server.url("/a/x"), out)
    assert server.seen == []


async def test_name_falls_back_to_asset_id_and_content_type(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    server.assets["x"] = Asset(b"movie", disposition=None, content_type="video/quicktime")
    result = await fetch(session, server.url("/a/x"), out, asset_id="690773579")
    assert result.name == "690773579.mov"


async def test_two_assets_with_one_name_do_not_overwrite_each_other(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    server.assets["x"] = Asset(b"first")
    server.assets["y"] = Asset(b"second")
    a = await fetch(session, server.url("/a/x"), out, owner="a")
    b = await fetch(session, server.url("/a/y"), out, owner="b")
    assert a.name != b.name
    assert a.path.read_bytes() == b"first"
    assert b.path.read_bytes() == b"second"


async def test_chunked_body_without_length_is_accepted(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(2 * MiB + 5)
    server.assets["x"] = Asset(data, chunked=True)
    result = await fetch(session, server.url("/a/x"), out)
    assert result.path.read_bytes() == data
    assert result.sha256 == sha(data)
    assert len(server.seen) == 1  # a chunked body proves its end: no length check follows


# -------------------------------------------------------------------- redirects


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_each_redirect_code_is_followed(
    code: int, server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    server.assets["x"] = Asset(b"payload")
    server.redirects["go"] = (code, "/a/x" + SIG)  # relative Location
    result = await fetch(session, server.url("/r/go"), out)
    assert result.path.read_bytes() == b"payload"
    assert [s.path_qs.split("?")[0] for s in server.seen] == ["/r/go", "/a/x"]


async def test_cross_origin_redirect_sends_no_credentials(
    server: Server, server2: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    server2.assets["x"] = Asset(b"elsewhere")
    server.redirects["go"] = (303, server2.url("/a/x"))
    result = await fetch(session, server.url("/r/go"), out)
    assert result.path.read_bytes() == b"elsewhere"
    (seen,) = server2.seen
    assert not {"authorization", "api-key"} & {k.lower() for k in seen.headers}


async def test_redirect_loop_is_refused(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    server.redirects["a"] = (302, "/r/b" + SIG)
    server.redirects["b"] = (302, "/r/a" + SIG)
    with pytest.raises(RedirectError, match="loop") as caught:
        await fetch(session, server.url("/r/a"), out)
    assert "TOPSECRET" not in str(caught.value)


async def test_too_many_redirects_are_refused(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    for i in range(6):
        server.redirects[str(i)] = (307, f"/r/{i + 1}")
    server.redirects["6"] = (307, "/a/x")
    server.assets["x"] = Asset(b"never")
    with pytest.raises(RedirectError, match="more than 3 redirects"):
        await fetch(session, server.url("/r/0"), out, options=TransferOptions(max_redirects=3))
    assert len(server.seen) == 4


async def test_redirect_to_plain_http_on_a_public_host_is_refused(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    server.redirects["go"] = (302, "http://203.0.113.7/x.jpg" + SIG)
    with pytest.raises(RedirectError) as caught:
        await fetch(session, server.url("/r/go"), out)
    assert "TOPSECRET" not in str(caught.value)
    assert not list(out.path.glob("*.jpg*"))


async def test_redirect_without_location_is_refused(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    server.redirects["go"] = (302, "")
    with pytest.raises(RedirectError):
        await fetch(session, server.url("/r/go"), out)


# ----------------------------------------------------------- refusals and errors


async def test_xml_403_is_uri_expired_and_hides_the_signature(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    server.assets["x"] = Asset(
        b"",
        status=403,
        error_type="application/xml",
        error_body=b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>",
    )
    with pytest.raises(UriExpiredError) as caught:
        await fetch(session, server.url("/a/x"), out)
    assert not caught.value.retryable
    assert "TOPSECRET" not in str(caught.value)
    assert "/a/x" in str(caught.value)


@pytest.mark.parametrize("status", [400, 404])
async def test_4xx_with_an_xml_body_is_uri_expired(
    status: int, server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    server.assets["x"] = Asset(
        b"", status=status, error_type="text/xml", error_body=b"<Error>Request has expired</Error>"
    )
    with pytest.raises(UriExpiredError):
        await fetch(session, server.url("/a/x"), out)


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_server_errors_are_retryable_delivery_errors(
    status: int, server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    server.assets["x"] = Asset(b"", status=status, error_type="text/plain", error_body=b"busy")
    with pytest.raises(DeliveryError) as caught:
        await fetch(session, server.url("/a/x"), out)
    assert caught.value.retryable
    assert not isinstance(caught.value, UriExpiredError)


async def test_html_200_error_page_is_not_saved(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    server.assets["x"] = Asset(b"<!DOCTYPE html><html>Oops</html>", content_type="text/html")
    with pytest.raises(IntegrityError):
        await fetch(session, server.url("/a/x"), out)
    assert not (out.path / "GettyImages-1.jpg").exists()


async def test_untyped_200_that_looks_like_html_is_not_saved(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    server.assets["x"] = Asset(b"  <html><body>error</body></html>", content_type=None)
    with pytest.raises(IntegrityError):
        await fetch(session, server.url("/a/x"), out)
    assert not (out.path / "GettyImages-1.jpg").exists()


async def test_xml_access_denied_200_is_uri_expired(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    server.assets["x"] = Asset(b"<Error><Code>AccessDenied</Code></Error>", content_type="text/xml")
    with pytest.raises(UriExpiredError):
        await fetch(session, server.url("/a/x"), out)


async def test_connection_refused_is_a_connect_error(
    session: aiohttp.ClientSession, out: OutputDir
) -> None:
    from bulkgetty.errors import ConnectError

    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(ConnectError):
        await fetch(session, f"http://127.0.0.1:{port}/a/x{SIG}", out)


# ----------------------------------------------------------------------- resume


async def test_resume_after_cut_does_not_refetch_bytes_on_disk(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(5 * MiB + 7)
    server.assets["x"] = Asset(data, cut_after=3 * MiB + 100)
    calls = Calls()
    with pytest.raises(ReadError):
        await fetch(session, server.url("/a/x"), out, calls=calls)
    state = calls.last
    part = out.path / "GettyImages-1.jpg.part"
    assert state.done > 0
    assert part.stat().st_size == state.done
    assert not (out.path / "GettyImages-1.jpg").exists()
    served_before = server.served

    result = await fetch(session, server.url("/a/x"), out, state=state)
    assert result.path.read_bytes() == data
    assert result.sha256 == sha(data)
    assert result.resumed_from == state.done
    assert result.refetched == 0
    assert server.served - served_before == len(data) - state.done
    resumed = server.seen[-1]
    assert resumed.headers["Range"] == f"bytes={state.done}-"
    assert resumed.headers["If-Range"] == '"v1"'


async def test_resume_after_content_length_larger_than_body(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(2 * MiB)
    server.assets["x"] = Asset(data, extra_length=1000)
    calls = Calls()
    with pytest.raises(ReadError):
        await fetch(session, server.url("/a/x"), out, calls=calls)
    part = out.path / "GettyImages-1.jpg.part"
    assert part.exists()
    # aiohttp drops what it buffered when the connection fails, so fewer bytes may be on disk;
    # the state never claims more than the disk holds.
    assert calls.last.done == part.stat().st_size <= len(data)
    assert not (out.path / "GettyImages-1.jpg").exists()


async def test_content_length_shorter_than_the_body_is_refused_and_forgotten(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(MiB + 5000)
    server.assets["x"] = Asset(data, extra_length=-1000)
    calls = Calls()
    with pytest.raises(IntegrityError, match="longer than its Content-Length"):
        await fetch(session, server.url("/a/x"), out, calls=calls)
    # The declared length was wrong, so no byte of this body may seed a resume.
    assert calls.last.done == 0 and calls.last.total is None
    assert calls.last.name == "GettyImages-1.jpg"
    assert (out.path / "GettyImages-1.jpg.part").stat().st_size == 0
    assert not (out.path / "GettyImages-1.jpg").exists()


async def test_resume_from_what_is_on_disk_when_part_was_truncated(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(3 * MiB)
    server.assets["x"] = Asset(data)
    (out.path / "GettyImages-1.jpg.part").write_bytes(data[:1000])
    state = TransferState(name="GettyImages-1.jpg", total=len(data), etag='"v1"', done=2 * MiB)
    calls = Calls()
    result = await fetch(session, server.url("/a/x"), out, state=state, calls=calls)
    assert calls.states[0].done == 1000  # never more than the disk holds
    assert result.resumed_from == 1000
    assert result.sha256 == sha(data)


async def test_resume_with_missing_part_starts_over(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(MiB)
    server.assets["x"] = Asset(data)
    state = TransferState(name="GettyImages-1.jpg", total=len(data), etag='"v1"', done=5000)
    result = await fetch(session, server.url("/a/x"), out, state=state)
    assert result.resumed_from == 0
    assert "Range" not in server.seen[-1].headers
    assert result.sha256 == sha(data)


async def test_200_to_a_range_request_restarts_from_zero(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(2 * MiB)
    server.assets["x"] = Asset(data, ignore_range=True)
    (out.path / "GettyImages-1.jpg.part").write_bytes(data[:5000])
    state = TransferState(name="GettyImages-1.jpg", total=len(data), etag='"v1"', done=5000)
    result = await fetch(session, server.url("/a/x"), out, state=state)
    assert result.path.read_bytes() == data
    assert result.refetched == 5000
    assert result.resumed_from == 0


async def test_changed_etag_restarts_from_zero(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    new = body(MiB + 1)
    server.assets["x"] = Asset(new, etag='"v2"')
    (out.path / "GettyImages-1.jpg.part").write_bytes(b"old version bytes")
    state = TransferState(name="GettyImages-1.jpg", total=len(new), etag='"v1"', done=17)
    calls = Calls()
    result = await fetch(session, server.url("/a/x"), out, state=state, calls=calls)
    assert server.seen[-1].headers["If-Range"] == '"v1"'
    assert result.path.read_bytes() == new
    assert result.refetched == 17
    assert calls.states[0].etag == '"v2"'


async def test_wrong_content_range_is_rejected_and_state_reset(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(MiB)
    server.assets["x"] = Asset(data, bad_content_range=True)
    (out.path / "GettyImages-1.jpg.part").write_bytes(data[:4096])
    state = TransferState(name="GettyImages-1.jpg", total=len(data), etag='"v1"', done=4096)
    calls = Calls()
    with pytest.raises(IntegrityError) as caught:
        await fetch(session, server.url("/a/x"), out, state=state, calls=calls)
    assert caught.value.retryable
    assert calls.last.done == 0
    assert calls.last.name == "GettyImages-1.jpg"
    assert (out.path / "GettyImages-1.jpg.part").stat().st_size == 0
    assert not (out.path / "GettyImages-1.jpg").exists()


async def test_416_with_a_complete_part_finishes_without_downloading(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(MiB)
    server.assets["x"] = Asset(data)
    (out.path / "GettyImages-1.jpg.part").write_bytes(data)
    state = TransferState(name="GettyImages-1.jpg", total=len(data), etag='"v1"', done=len(data))
    result = await fetch(session, server.url("/a/x"), out, state=state)
    assert server.seen[-1].status == 416
    assert server.served == 0
    assert result.path.read_bytes() == data
    assert (result.sha256, result.bytes, result.resumed_from) == (sha(data), len(data), len(data))


async def test_416_with_an_incomplete_part_restarts(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(1000)
    server.assets["x"] = Asset(data)
    (out.path / "GettyImages-1.jpg.part").write_bytes(body(2000))
    state = TransferState(name="GettyImages-1.jpg", total=3000, etag='"v1"', done=2000)
    calls = Calls()
    with pytest.raises(IntegrityError):
        await fetch(session, server.url("/a/x"), out, state=state, calls=calls)
    assert calls.last.done == 0
    assert (out.path / "GettyImages-1.jpg.part").stat().st_size == 0


async def test_stall_becomes_a_read_error(server: Server, out: OutputDir) -> None:
    server.assets["x"] = Asset(body(2 * MiB), stall_after=256 * 1024)
    async with new_session(Timeouts(connect=5, stall=0.5)) as slow:
        calls = Calls()
        with pytest.raises(ReadError, match="timed out"):
            await fetch(slow, server.url("/a/x"), out, calls=calls)
    assert calls.last.done == (out.path / "GettyImages-1.jpg.part").stat().st_size


# --------------------------------------------------------------------- segments


SEGMENTED = TransferOptions(segments=4, segment_threshold=MiB, segment_probation=0)


async def test_segmented_download_is_verified(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(8 * MiB + 3)
    server.assets["x"] = Asset(data)
    calls = Calls()
    result = await fetch(session, server.url("/a/x"), out, calls=calls, options=SEGMENTED)
    assert result.path.read_bytes() == data
    assert result.sha256 == sha(data)
    assert calls.progress == len(data)
    ranged = sorted(s.headers["Range"] for s in server.seen if "Range" in s.headers)
    assert len(ranged) == 3
    assert all(s.headers.get("If-Range") == '"v1"' for s in server.seen if "Range" in s.headers)
    segs = next(st.segments for st in calls.states if st.segments)
    assert [s.start for s in segs] == [0, segs[1].start, segs[2].start, segs[3].start]
    assert segs[-1].end == len(data)
    # the first response was dropped at the end of segment 0, not read to the end
    assert server.seen[0].served < len(data)


async def test_segment_resume_after_one_segment_fails(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(8 * MiB)
    seg2_start = 4 * MiB
    server.assets["x"] = Asset(data, cut_start=seg2_start, cut_after=MiB + 300)
    calls = Calls()
    with pytest.raises(ReadError):
        await fetch(session, server.url("/a/x"), out, calls=calls, options=SEGMENTED)
    state = calls.last
    assert len(state.segments) == 4
    assert state.segments[2].start == seg2_start
    assert 0 < state.segments[2].done < state.segments[2].length
    assert all(s.complete for i, s in enumerate(state.segments) if i != 2)
    assert not (out.path / "GettyImages-1.jpg").exists()

    state = TransferState.from_json(state.to_json())
    before = len(server.seen)
    result = await fetch(session, server.url("/a/x"), out, state=state, options=SEGMENTED)
    assert result.sha256 == sha(data)
    (again,) = server.seen[before:]
    done = state.segments[2].done
    assert again.headers["Range"] == f"bytes={seg2_start + done}-{6 * MiB - 1}"
    assert again.served == 2 * MiB - done
    assert result.resumed_from == state.done


async def test_segment_with_wrong_content_range_resets_everything(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(4 * MiB)
    server.assets["x"] = Asset(data, bad_content_range=True)
    calls = Calls()
    with pytest.raises(IntegrityError):
        await fetch(session, server.url("/a/x"), out, calls=calls, options=SEGMENTED)
    assert calls.last.segments == ()
    assert calls.last.done == 0
    assert not (out.path / "GettyImages-1.jpg").exists()


async def test_no_segments_without_range_support(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(3 * MiB)
    server.assets["x"] = Asset(data, ranges=False)
    result = await fetch(session, server.url("/a/x"), out, options=SEGMENTED)
    assert result.sha256 == sha(data)
    assert len(server.seen) == 1


# ------------------------------------------------------------------- state, misc


def test_state_round_trips_through_json() -> None:
    state = TransferState(
        name="a.jpg",
        total=10,
        etag='"e"',
        last_modified="Wed, 21 Oct 2015 07:28:00 GMT",
        content_type="image/jpeg",
        segments=(Segment(0, 5, 5), Segment(5, 10, 1)),
        done=6,
    )
    assert TransferState.from_json(state.to_json()) == state
    assert TransferState.from_json(TransferState().to_json()) == TransferState()


def test_bad_state_json_is_a_journal_error() -> None:
    from bulkgetty.errors import JournalError

    for junk in (b"nope", b"[]", b'{"segments": [[1]]}', b'{"name": 3}'):
        with pytest.raises(JournalError):
            TransferState.from_json(junk)


async def test_storage_error_keeps_part_for_resume(
    server: Server,
    session: aiohttp.ClientSession,
    out: OutputDir,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno

    data = body(3 * MiB)
    server.assets["x"] = Asset(data)
    real, realv = os.pwrite, os.pwritev
    calls_made: list[int] = []

    def full_after_one(fd: int, buf: bytes, offset: int) -> int:
        calls_made.append(offset)
        if len(calls_made) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, buf, offset)

    def fullv_after_one(fd: int, bufs: list[bytes], offset: int) -> int:
        calls_made.append(offset)
        if len(calls_made) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return realv(fd, bufs, offset)

    monkeypatch.setattr(os, "pwrite", full_after_one)
    monkeypatch.setattr(os, "pwritev", fullv_after_one)
    calls = Calls()
    with pytest.raises(StorageError, match="disk full"):
        await fetch(session, server.url("/a/x"), out, calls=calls)
    part = out.path / "GettyImages-1.jpg.part"
    assert calls.last.done == part.stat().st_size > 0
    monkeypatch.setattr(os, "pwrite", real)
    monkeypatch.setattr(os, "pwritev", realv)
    result = await fetch(session, server.url("/a/x"), out, state=calls.last)
    assert result.sha256 == sha(data)
    assert result.refetched == 0


async def test_state_keeps_name_across_runs(
    server: Server, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data = body(2 * MiB)
    server.assets["x"] = Asset(data, cut_after=MiB + 10)
    out1 = OutputDir(tmp_path / "o")
    (tmp_path / "o" / "GettyImages-1.jpg").write_bytes(b"unrelated")
    calls = Calls()
    with pytest.raises(ReadError):
        await fetch(session, server.url("/a/x"), out1, calls=calls)
    assert calls.last.name == "GettyImages-1 (2).jpg"
    out2 = OutputDir(tmp_path / "o")  # a new run
    state = replace(calls.last)
    result = await fetch(session, server.url("/a/x"), out2, state=state)
    assert result.name == "GettyImages-1 (2).jpg"
    assert result.refetched == 0
    assert (tmp_path / "o" / "GettyImages-1.jpg").read_bytes() == b"unrelated"


async def test_resume_without_validator_relies_on_the_known_total(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(3 * MiB)
    server.assets["x"] = Asset(data, etag=None, cut_after=2 * MiB)
    calls = Calls()
    with pytest.raises(ReadError):
        await fetch(session, server.url("/a/x"), out, calls=calls)
    assert calls.last.total == len(data)
    result = await fetch(session, server.url("/a/x"), out, state=calls.last)
    assert result.sha256 == sha(data)
    if calls.last.done:
        assert "If-Range" not in server.seen[-1].headers
        assert server.seen[-1].headers["Range"] == f"bytes={calls.last.done}-"


async def test_no_segments_without_a_validator(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(3 * MiB)
    server.assets["x"] = Asset(data, etag=None)
    result = await fetch(session, server.url("/a/x"), out, options=SEGMENTED)
    assert result.sha256 == sha(data)
    assert len(server.seen) == 1


# ------------------------------------------- bodies whose length nothing proves (issue 12)


async def test_close_delimited_body_cut_short_is_completed_from_where_it_stopped(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """A body without Content-Length or chunking that stops early looks complete; asking for
    the bytes after it gets a 206 with the real total, whose body is the missing rest."""
    data = body(2 * MiB + 17)
    cut = MiB + 5
    server.assets["x"] = Asset(data, close_delimited=2, cut_after=cut)
    calls = Calls()
    result = await fetch(session, server.url("/a/x"), out, calls=calls)
    assert result.path.read_bytes() == data
    assert (result.bytes, result.refetched) == (len(data), 0)
    first, probe = server.seen
    assert "Range" not in first.headers
    assert probe.headers["Range"] == f"bytes={cut}-"
    assert probe.headers["If-Range"] == '"v1"'
    assert (probe.status, probe.served) == (206, len(data) - cut)


async def test_close_delimited_whole_body_is_confirmed_by_a_416(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(MiB + 3)
    server.assets["x"] = Asset(data, close_delimited=1)
    result = await fetch(session, server.url("/a/x"), out)
    assert result.path.read_bytes() == data
    assert [(s.status, s.headers.get("Range")) for s in server.seen] == [
        (200, None),
        (416, f"bytes={len(data)}-"),
    ]


async def test_close_delimited_rest_that_stops_early_keeps_its_progress(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """The 206 that carries the rest is cut too: a ReadError, and the state now knows the
    total and claims exactly the bytes on disk, so the next attempt resumes."""
    data = body(3 * MiB)
    server.assets["x"] = Asset(data, close_delimited=2, cut_after=MiB, cut_start=None, cut_times=2)
    calls = Calls()
    with pytest.raises(ReadError, match=f"ended after {2 * MiB} of {len(data)}"):
        await fetch(session, server.url("/a/x"), out, calls=calls)
    state = calls.last
    assert (state.total, state.done) == (len(data), 2 * MiB)
    assert (out.path / "GettyImages-1.jpg.part").stat().st_size == 2 * MiB
    result = await fetch(session, server.url("/a/x"), out, state=state)
    assert result.path.read_bytes() == data
    assert server.seen[-1].headers["Range"] == f"bytes={2 * MiB}-"


async def test_close_delimited_body_without_ranges_is_confirmed_by_a_second_copy(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """A server that ignores Range and never sends a length: the same bytes twice confirm
    the length."""
    data = body(MiB + 9)
    server.assets["x"] = Asset(data, close_delimited=2, ranges=False)
    result = await fetch(session, server.url("/a/x"), out)
    assert result.path.read_bytes() == data
    assert [s.status for s in server.seen] == [200, 200]


async def test_close_delimited_copies_that_differ_are_refused_and_forgotten(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(2 * MiB)
    server.assets["x"] = Asset(data, close_delimited=2, ranges=False, cut_after=MiB)
    calls = Calls()
    with pytest.raises(IntegrityError, match="two copies"):
        await fetch(session, server.url("/a/x"), out, calls=calls)
    assert calls.last.done == 0
    assert calls.last.name == "GettyImages-1.jpg"
    assert not (out.path / "GettyImages-1.jpg").exists()


@pytest.mark.parametrize("cut", [None, MiB])
async def test_close_delimited_body_checked_against_a_length_sent_later(
    server: Server, session: aiohttp.ClientSession, out: OutputDir, cut: int | None
) -> None:
    """The second answer ignores the Range but has a Content-Length: the first body stands
    when it is that long, and is refused (and forgotten) when it is shorter."""
    data = body(2 * MiB)
    server.assets["x"] = Asset(data, close_delimited=1, ranges=False, cut_after=cut)
    calls = Calls()
    if cut is None:
        result = await fetch(session, server.url("/a/x"), out, calls=calls)
        assert result.path.read_bytes() == data
        return
    with pytest.raises(IntegrityError, match=f"ended after {MiB} bytes, the file has {2 * MiB}"):
        await fetch(session, server.url("/a/x"), out, calls=calls)
    assert calls.last.done == 0


async def test_close_delimited_check_that_fails_keeps_the_bytes_for_a_resume(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """The check's request gets a 503: retryable, the bytes stay claimed without a total,
    and the next attempt's Range is answered 416 `*/N`, which finishes the file."""
    data = body(MiB + 1)
    server.assets["x"] = Asset(data, close_delimited=1, status_at={1: 503})
    calls = Calls()
    with pytest.raises(DeliveryError, match="HTTP 503"):
        await fetch(session, server.url("/a/x"), out, calls=calls)
    state = calls.last
    assert (state.done, state.total) == (len(data), None)
    result = await fetch(session, server.url("/a/x"), out, state=state)
    assert result.path.read_bytes() == data
    assert server.seen[-1].status == 416
    assert result.resumed_from == len(data)


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
async def test_an_empty_200_is_never_saved_as_the_file(
    server: Server, session: aiohttp.ClientSession, out: OutputDir, framing: str
) -> None:
    server.assets["x"] = Asset(
        b"", chunked=framing == "chunked", close_delimited=int(framing == "close")
    )
    with pytest.raises(IntegrityError, match="empty body"):
        await fetch(session, server.url("/a/x"), out)
    assert not (out.path / "GettyImages-1.jpg").exists()


# ------------------------------------------------ what the journal may be told (issue 12)


@dataclass
class DiskLog:
    """Byte ranges written into the `.part`, and those an fdatasync has covered."""

    written: list[tuple[int, int]] = field(default_factory=list)
    synced: list[tuple[int, int]] = field(default_factory=list)
    syncs: int = 0
    fsyncs: int = 0
    #: The write (counted from 1) that fails with ENOSPC, as on a full disk.
    fail_at: int | None = None
    writes: int = 0

    def covered(self, start: int, end: int) -> bool:
        pos = start
        for a, b in sorted(self.synced):
            if a > pos:
                break
            pos = max(pos, b)
        return pos >= end


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> DiskLog:
    log = DiskLog()
    real_write, real_sync, real_fsync = files._write_chunks, os.fdatasync, os.fsync

    def write(fd: int, chunks: list[bytes], offset: int, hasher: Any) -> int:
        log.writes += 1
        if log.writes == log.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, chunks, offset, hasher)
        log.written.append((offset, offset + n))
        return n

    def sync(fd: int) -> None:
        before = list(log.written)
        time.sleep(0.02)  # a slow disk: writes go on meanwhile, and this sync misses them
        real_sync(fd)
        log.synced.extend(before)
        log.syncs += 1

    def fsync(fd: int) -> None:
        real_fsync(fd)
        log.fsyncs += 1

    monkeypatch.setattr(files, "_write_chunks", write)
    monkeypatch.setattr(os, "fdatasync", sync)
    monkeypatch.setattr(os, "fsync", fsync)
    return log


def _claims(state: TransferState) -> list[tuple[int, int]]:
    if state.segments:
        return [(s.start, s.start + s.done) for s in state.segments]
    return [(0, state.done)]


@pytest.mark.parametrize("segmented", [False, True], ids=["single", "segments"])
async def test_progress_is_claimed_only_for_bytes_already_fdatasynced(
    server: Server,
    session: aiohttp.ClientSession,
    out: OutputDir,
    disk: DiskLog,
    monkeypatch: pytest.MonkeyPatch,
    segmented: bool,
) -> None:
    """A preallocated `.part` reads back zeros where a power cut lost unsynced writes, so
    no state handed to the journal claims a byte that was not written before an fdatasync:
    not while streaming (the server pauses until a claim shows), not after a failure."""
    monkeypatch.setattr(transfer_tracker, "_STATE_EVERY", 2 * MiB)  # every ~2 writes
    data = body(12 * MiB)
    server.assets["x"] = Asset(data, stall_after=2 * MiB if segmented else 4 * MiB)
    unsynced: list[tuple[int, int]] = []

    def check(state: TransferState) -> None:
        unsynced.extend(c for c in _claims(state) if not disk.covered(*c))

    calls = Calls(check=check)
    options = SEGMENTED if segmented else TransferOptions()
    task = asyncio.create_task(
        fetch(session, server.url("/a/x"), out, calls=calls, options=options)
    )
    for _ in range(200):  # at most 10 s
        if any(st.done > 0 for st in calls.states) or task.done():
            break
        await asyncio.sleep(0.05)
    assert any(st.done > 0 for st in calls.states), "no progress claimed while streaming"
    server.release.set()
    result = await task
    assert result.sha256 == sha(data)
    assert unsynced == []

    # A stall, not a cut: aiohttp may drop what it buffered when a connection drops.
    server.assets["y"] = Asset(data, stall_after=2 * MiB)
    server.release.clear()
    calls = Calls(check=check)
    async with new_session(Timeouts(connect=5, stall=0.5)) as slow:
        with pytest.raises(ReadError, match="timed out"):
            await fetch(slow, server.url("/a/y"), out, calls=calls, options=options, owner="o2")
    assert unsynced == []
    assert sum(b - a for a, b in _claims(calls.last)) >= MiB


async def test_no_fdatasync_when_durability_is_off(
    server: Server, out: OutputDir, disk: DiskLog
) -> None:
    """`--no-fsync`: the user traded durability for speed; progress is claimed unsynced."""
    server.assets["x"] = Asset(body(3 * MiB), stall_after=2 * MiB)
    calls = Calls()
    options = TransferOptions(durable=False)
    async with new_session(Timeouts(connect=5, stall=0.5)) as slow:
        with pytest.raises(ReadError, match="timed out"):
            await fetch(slow, server.url("/a/x"), out, calls=calls, options=options)
    assert calls.last.done >= MiB
    assert disk.syncs == 0


@pytest.mark.parametrize("segmented", [False, True], ids=["single", "segments"])
async def test_a_new_part_is_committed_with_its_validators_before_its_first_byte(
    server: Server,
    session: aiohttp.ClientSession,
    out: OutputDir,
    disk: DiskLog,
    segmented: bool,
) -> None:
    """A kill right after a `.part` appears must find its name in the journal: the caller
    gets the first state naming it (with ETag and total) and commits it before any byte is
    written, so the rerun adopts the part instead of taking `NAME (2).ext`."""
    data = body(8 * MiB)
    server.assets["x"] = Asset(data)
    seen: list[tuple[TransferState, int, bool]] = []

    async def on_new_part(state: TransferState) -> None:
        assert state.name is not None
        seen.append((state, len(disk.written), (out.path / (state.name + ".part")).exists()))

    calls = Calls(on_new_part=on_new_part)
    options = SEGMENTED if segmented else TransferOptions()
    result = await fetch(session, server.url("/a/x"), out, calls=calls, options=options)
    assert result.sha256 == sha(data)
    ((state, writes, exists),) = seen
    assert (writes, exists) == (0, True)
    assert (state.name, state.etag, state.total) == ("GettyImages-1.jpg", '"v1"', len(data))
    # Committed as one stream; a split comes later, in a state of its own.
    assert state.segments == ()
    assert any(len(st.segments) == 4 for st in calls.states) == segmented


async def test_a_file_smaller_than_one_write_is_created_and_finished_in_one_hop(
    server: Server, session: aiohttp.ClientSession, out: OutputDir, disk: DiskLog
) -> None:
    """No commit for a file whose `.part` never outlives one thread hop (nothing to resume)."""
    data = body(files.WRITE_BATCH - 1)
    server.assets["x"] = Asset(data)
    seen: list[TransferState] = []

    async def on_new_part(state: TransferState) -> None:
        seen.append(state)

    result = await fetch(session, server.url("/a/x"), out, calls=Calls(on_new_part=on_new_part))
    assert result.sha256 == sha(data)
    assert seen == [] and len(disk.written) == 1


# ---------------------------------------- answers that are not the file (transfer.py)


async def test_416_to_a_request_without_range_is_an_integrity_error(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    server.assets["x"] = Asset(b"", status=416)
    with pytest.raises(IntegrityError, match="416 without a Range request"):
        await fetch(session, server.url("/a/x"), out)


async def test_206_to_a_request_without_range_is_refused(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    server.assets["x"] = Asset(b"", status=206, error_body=b"partial bytes")
    with pytest.raises(IntegrityError, match="206 to a request without Range"):
        await fetch(session, server.url("/a/x"), out)
    assert list(out.path.iterdir()) == [out.state_dir]


@pytest.mark.parametrize("status", [400, 404])
async def test_a_4xx_error_document_known_only_by_its_body_is_uri_expired(
    status: int, server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """No XML or HTML Content-Type, but the body starts like one: the signature was refused."""
    page = b'  <?xml version="1.0"?><Error><Code>AccessDenied</Code></Error>'
    server.assets["x"] = Asset(b"", status=status, error_body=page)
    with pytest.raises(UriExpiredError):
        await fetch(session, server.url("/a/x"), out)
    server.assets["y"] = Asset(b"", status=status, error_body=b"no such thing")
    with pytest.raises(DeliveryError) as caught:
        await fetch(session, server.url("/a/y"), out)
    assert not isinstance(caught.value, UriExpiredError)
    assert caught.value.retryable


async def test_a_resume_answered_with_another_etag_starts_over(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """The server ignores If-Range and sends a 206 of a different version: not spliced."""
    data = body(2 * MiB)
    server.assets["x"] = Asset(data, etag='"v2"', ignore_if_range=True)
    (out.path / "GettyImages-1.jpg.part").write_bytes(data[:MiB])
    state = TransferState(name="GettyImages-1.jpg", total=len(data), etag='"v1"', done=MiB)
    calls = Calls()
    with pytest.raises(IntegrityError, match="ETag changed on a ranged answer"):
        await fetch(session, server.url("/a/x"), out, state=state, calls=calls)
    assert (calls.last.done, calls.last.etag) == (0, None)
    assert (out.path / "GettyImages-1.jpg.part").stat().st_size == 0


async def test_a_segment_answered_with_another_etag_resets_every_segment(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(8 * MiB)
    server.assets["x"] = Asset(data, cut_start=4 * MiB, cut_after=MiB)
    calls = Calls()
    with pytest.raises(ReadError):
        await fetch(session, server.url("/a/x"), out, calls=calls, options=SEGMENTED)
    state = calls.last
    assert state.segments and state.etag == '"v1"'
    server.assets["x"] = Asset(data, etag='"v2"', ignore_if_range=True)
    with pytest.raises(IntegrityError, match="ETag changed on segment"):
        await fetch(session, server.url("/a/x"), out, state=state, calls=calls, options=SEGMENTED)
    assert (calls.last.segments, calls.last.done) == ((), 0)
    assert (out.path / "GettyImages-1.jpg.part").stat().st_size == 0


async def test_416_finishes_a_whole_part_whose_total_only_the_416_gives(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """A part whose state has a validator but no total (a close-delimited body): the 416's
    `bytes */N` says the part is whole."""
    data = body(1500)
    server.assets["x"] = Asset(data)
    (out.path / "GettyImages-1.jpg.part").write_bytes(data)
    state = TransferState(name="GettyImages-1.jpg", etag='"v1"', done=len(data))
    result = await fetch(session, server.url("/a/x"), out, state=state)
    assert (server.seen[-1].status, server.served) == (416, 0)
    assert result.sha256 == sha(data)


# -------------------------------------------- resume and segment rules, one test each


def test_a_state_without_segments_reads_back_as_a_single_stream() -> None:
    assert TransferState.from_json(b'{"name": "a.jpg", "done": 3}') == TransferState(
        name="a.jpg", done=3
    )
    with pytest.raises(JournalError, match="unreadable transfer state: expected a string, got int"):
        TransferState.from_json(b'{"etag": 7}')


async def test_a_part_without_validator_or_total_is_fetched_again_from_zero(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """Nothing can prove the bytes on disk belong to this file: no Range is sent."""
    data = body(MiB)
    server.assets["x"] = Asset(data, etag=None)
    (out.path / "GettyImages-1.jpg.part").write_bytes(data[:1000])
    state = TransferState(name="GettyImages-1.jpg", done=1000)
    result = await fetch(session, server.url("/a/x"), out, state=state)
    assert "Range" not in server.seen[0].headers
    assert (result.sha256, result.refetched, result.resumed_from) == (sha(data), 1000, 0)


@pytest.mark.parametrize(
    "validators",
    [{"total": MiB}, {"last_modified": "Wed, 21 Oct 2015 07:28:00 GMT"}, {"etag": '"v1"'}],
    ids=["total", "last-modified", "etag"],
)
async def test_one_validator_or_the_total_is_enough_to_resume_even_one_byte(
    server: Server, session: aiohttp.ClientSession, out: OutputDir, validators: dict[str, Any]
) -> None:
    data = body(MiB)
    server.assets["x"] = Asset(data, last_modified="Wed, 21 Oct 2015 07:28:00 GMT")
    (out.path / "GettyImages-1.jpg.part").write_bytes(data[:1])
    state = TransferState(name="GettyImages-1.jpg", done=1, **validators)
    result = await fetch(session, server.url("/a/x"), out, state=state)
    assert server.seen[0].headers["Range"] == "bytes=1-"
    assert (result.sha256, result.refetched, result.resumed_from) == (sha(data), 0, 1)


async def test_a_weak_etag_never_goes_in_if_range_last_modified_does(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    stamp = "Wed, 21 Oct 2015 07:28:00 GMT"
    data = body(MiB)
    server.assets["x"] = Asset(data, etag='W/"v1"', last_modified=stamp)
    (out.path / "GettyImages-1.jpg.part").write_bytes(data[:500])
    state = TransferState(
        name="GettyImages-1.jpg", total=len(data), etag='W/"v1"', last_modified=stamp, done=500
    )
    result = await fetch(session, server.url("/a/x"), out, state=state)
    assert server.seen[0].headers["If-Range"] == stamp
    assert result.sha256 == sha(data)


async def test_a_resume_answered_for_a_file_of_another_size_starts_over(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """The 206 is consistent in itself, but the file it describes is not the one begun."""
    data = body(2 * MiB)
    server.assets["x"] = Asset(data)
    (out.path / "GettyImages-1.jpg.part").write_bytes(data[:MiB])
    state = TransferState(name="GettyImages-1.jpg", total=len(data) + 100, etag='"v1"', done=MiB)
    calls = Calls()
    with pytest.raises(IntegrityError, match="does not match"):
        await fetch(session, server.url("/a/x"), out, state=state, calls=calls)
    assert calls.last.done == 0


@pytest.mark.parametrize("cut", [None, 300_000])
async def test_a_resumed_206_without_content_length_is_held_to_its_content_range(
    server: Server, session: aiohttp.ClientSession, out: OutputDir, cut: int | None
) -> None:
    """Whole, it finishes with no extra request; cut, it keeps what arrived for the next
    attempt instead of asking whether the file ended there."""
    data = body(2 * MiB)
    server.assets["x"] = Asset(data, close_delimited=1, cut_after=cut, cut_start=MiB)
    (out.path / "GettyImages-1.jpg.part").write_bytes(data[:MiB])
    state = TransferState(name="GettyImages-1.jpg", total=len(data), etag='"v1"', done=MiB)
    calls = Calls()
    if cut is None:
        result = await fetch(session, server.url("/a/x"), out, state=state)
        assert result.sha256 == sha(data)
        assert len(server.seen) == 1
        return
    with pytest.raises(ReadError, match=f"ended after {cut} of {MiB}"):
        await fetch(session, server.url("/a/x"), out, state=state, calls=calls)
    assert calls.last.done == MiB + cut
    assert len(server.seen) == 1


def _segmented_state(total: int, etag: str = '"v1"', **segments: int) -> TransferState:
    """Four equal segments of `total`; `s0=...` sets a segment's done bytes (default 0)."""
    segs = tuple(
        Segment(s.start, s.end, segments.get(f"s{i}", 0)) for i, s in enumerate(_quarters(total))
    )
    return TransferState(name="GettyImages-1.jpg", total=total, etag=etag, segments=segs)


def _quarters(total: int) -> tuple[Segment, ...]:
    size = -(-total // 4)
    return tuple(Segment(a, min(a + size, total)) for a in range(0, total, size))


@pytest.mark.parametrize(
    "state",
    [
        replace(_segmented_state(8 * MiB), name=None),
        replace(_segmented_state(8 * MiB), etag=None),
        replace(_segmented_state(8 * MiB), total=None),
        replace(_segmented_state(8 * MiB), total=9 * MiB),  # segments stop short of it
        replace(
            _segmented_state(8 * MiB), segments=(Segment(0, 4 * MiB), Segment(5 * MiB, 8 * MiB))
        ),
        replace(
            _segmented_state(8 * MiB),
            segments=(Segment(0, 4 * MiB), Segment(4 * MiB, 4 * MiB), Segment(4 * MiB, 8 * MiB)),
        ),
        replace(
            _segmented_state(8 * MiB),
            segments=(Segment(0, 4 * MiB, 5 * MiB), Segment(4 * MiB, 8 * MiB)),
        ),
        replace(
            _segmented_state(8 * MiB), segments=(Segment(0, 4 * MiB, -1), Segment(4 * MiB, 8 * MiB))
        ),
    ],
    ids=["no name", "no validator", "no total", "short", "gap", "empty", "overdone", "negative"],
)
async def test_segments_that_do_not_tile_the_file_are_not_resumed(
    server: Server, session: aiohttp.ClientSession, out: OutputDir, state: TransferState
) -> None:
    data = body(8 * MiB)
    server.assets["x"] = Asset(data)
    (out.path / "GettyImages-1.jpg.part").write_bytes(data)
    result = await fetch(session, server.url("/a/x"), out, state=state, options=SEGMENTED)
    assert "Range" not in server.seen[0].headers  # a fresh GET, not a segment resume
    assert result.sha256 == sha(data)
    if state.name is not None:  # the name is kept: its `.part` is this asset's
        assert result.name == state.name


async def test_segments_resume_where_the_disk_stops_not_where_the_journal_says(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """The journal claims all four quarters half done, the `.part` was cut in the second:
    the second resumes where the disk stops, the last two from their starts."""
    data = body(8 * MiB)
    server.assets["x"] = Asset(data)
    half = MiB
    state = _segmented_state(len(data), s0=half, s1=half, s2=half, s3=half)
    (out.path / "GettyImages-1.jpg.part").write_bytes(data[: 2 * MiB + 100])
    result = await fetch(session, server.url("/a/x"), out, state=state, options=SEGMENTED)
    assert (result.sha256, result.bytes) == (sha(data), len(data))
    assert sorted(s.headers["Range"] for s in server.seen) == [
        f"bytes={half}-{2 * MiB - 1}",
        f"bytes={2 * MiB + 100}-{4 * MiB - 1}",
        f"bytes={4 * MiB}-{6 * MiB - 1}",
        f"bytes={6 * MiB}-{8 * MiB - 1}",
    ]
    assert result.resumed_from == half + 100


async def test_a_segment_resume_with_untouched_segments_fetches_only_those(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(8 * MiB)
    server.assets["x"] = Asset(data)
    state = _segmented_state(len(data), s0=2 * MiB, s1=2 * MiB)
    (out.path / "GettyImages-1.jpg.part").write_bytes(data[: 4 * MiB])
    result = await fetch(session, server.url("/a/x"), out, state=state, options=SEGMENTED)
    assert result.sha256 == sha(data)
    assert sorted(s.headers["Range"] for s in server.seen) == [
        f"bytes={4 * MiB}-{6 * MiB - 1}",
        f"bytes={6 * MiB}-{8 * MiB - 1}",
    ]


async def test_a_segment_of_a_file_of_another_size_resets_every_segment(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(8 * MiB)
    server.assets["x"] = Asset(body(9 * MiB))  # same ETag, another length
    state = _segmented_state(len(data), s0=2 * MiB, s1=2 * MiB, s3=2 * MiB)
    (out.path / "GettyImages-1.jpg.part").write_bytes(data)
    calls = Calls()
    with pytest.raises(IntegrityError, match="does not match"):
        await fetch(session, server.url("/a/x"), out, state=state, calls=calls, options=SEGMENTED)
    assert (calls.last.segments, calls.last.done) == ((), 0)


@pytest.mark.parametrize(
    ("status", "why"), [(200, "HTTP 200 to a segment range"), (416, "HTTP 416")]
)
async def test_a_segment_answered_200_or_416_resets_every_segment(
    server: Server, session: aiohttp.ClientSession, out: OutputDir, status: int, why: str
) -> None:
    data = body(8 * MiB)
    server.assets["x"] = Asset(data, ignore_range=status == 200, status_for_start={4 * MiB: status})
    state = _segmented_state(len(data), s0=2 * MiB, s1=2 * MiB, s3=2 * MiB)
    (out.path / "GettyImages-1.jpg.part").write_bytes(data)
    calls = Calls()
    with pytest.raises(IntegrityError, match=why):
        await fetch(session, server.url("/a/x"), out, state=state, calls=calls, options=SEGMENTED)
    assert (calls.last.segments, calls.last.done) == ((), 0)
    assert (out.path / "GettyImages-1.jpg.part").stat().st_size == 0


async def test_a_refused_segment_wins_over_a_cut_one(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """Two segments fail: one cut (retryable), one refused as expired (not retryable). The
    attempt fails with the refusal, which stops the retries, not with the cut."""
    data = body(8 * MiB)
    server.assets["x"] = Asset(
        data,
        cut_start=2 * MiB,
        cut_after=MiB,
        status_for_start={4 * MiB: 403},
        error_type="application/xml",
        error_body=b"<Error><Code>AccessDenied</Code></Error>",
    )
    with pytest.raises(UriExpiredError):
        await fetch(session, server.url("/a/x"), out, options=SEGMENTED)


async def test_a_first_segment_that_is_an_error_page_is_refused(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = b"<!DOCTYPE html><html>" + body(4 * MiB)
    server.assets["x"] = Asset(data, content_type=None)
    with pytest.raises(IntegrityError, match="error page"):
        await fetch(session, server.url("/a/x"), out, options=SEGMENTED)


async def test_later_segments_are_not_sniffed_for_markup(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """Bytes in the middle of a file may look like anything; only its start is sniffed."""
    data = bytearray(body(4 * MiB))
    data[MiB : MiB + 6] = b"<html>"
    data[2 * MiB : 2 * MiB + 6] = b"<html>"
    server.assets["x"] = Asset(bytes(data), content_type=None, close_delimited=0)
    result = await fetch(session, server.url("/a/x"), out, options=SEGMENTED)
    assert result.sha256 == sha(bytes(data))


async def test_bytes_after_a_cut_close_delimited_body_are_not_sniffed_for_markup(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = bytearray(body(2 * MiB))
    data[MiB : MiB + 6] = b"<html>"
    server.assets["x"] = Asset(bytes(data), content_type=None, close_delimited=2, cut_after=MiB)
    result = await fetch(session, server.url("/a/x"), out)
    assert result.sha256 == sha(bytes(data))


async def test_two_segments_of_unequal_length_are_each_read_to_their_end(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(2 * MiB + 1)
    server.assets["x"] = Asset(data)
    options = TransferOptions(segments=2, segment_threshold=MiB)
    result = await fetch(session, server.url("/a/x"), out, options=options)
    assert (result.sha256, result.bytes) == (sha(data), len(data))


async def test_a_failed_segmented_attempt_leaves_no_hashing_task_behind(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    server.assets["x"] = Asset(body(8 * MiB), cut_start=4 * MiB, cut_after=MiB)
    with pytest.raises(ReadError):
        await fetch(session, server.url("/a/x"), out, options=SEGMENTED)
    await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() if "HashFollower" in repr(t.get_coro())]
    assert [t for t in left if not t.done()] == []


async def test_durability_off_means_no_fsync_at_all(
    server: Server, session: aiohttp.ClientSession, out: OutputDir, disk: DiskLog
) -> None:
    server.assets["x"] = Asset(body(3 * MiB))
    await fetch(session, server.url("/a/x"), out, options=TransferOptions(durable=False))
    assert (disk.fsyncs, disk.syncs) == (0, 0)
    server.assets["y"] = Asset(body(3 * MiB))
    await fetch(session, server.url("/a/y"), out, owner="o2")
    assert disk.fsyncs >= 1  # the file before its rename (and the folder after it)


async def test_a_small_file_cut_short_keeps_its_bytes_under_a_name(
    server: Server, out: OutputDir, disk: DiskLog
) -> None:
    """A file smaller than one write has no `.part` until its bytes are written; when it
    fails, the bytes received are written then, and the state names the part they went to."""
    data = body(600_000)
    server.assets["x"] = Asset(data, stall_after=300_000)
    calls = Calls()
    async with new_session(Timeouts(connect=5, stall=0.5)) as slow:
        with pytest.raises(ReadError, match="timed out"):
            await fetch(slow, server.url("/a/x"), out, calls=calls)
    part = out.path / "GettyImages-1.jpg.part"
    assert calls.last.name == "GettyImages-1.jpg"
    assert calls.last.done == part.stat().st_size >= 256 * 1024
    assert disk.covered(0, calls.last.done)


async def test_a_write_that_fails_while_saving_progress_leaves_the_first_error(
    server: Server, out: OutputDir, disk: DiskLog
) -> None:
    """The stream stalled (the error that counts); writing what was received then hits a
    full disk: the stall is raised, and only the bytes written before are claimed."""
    server.assets["x"] = Asset(body(3 * MiB), stall_after=MiB + 512 * 1024)
    disk.fail_at = 2
    calls = Calls()
    async with new_session(Timeouts(connect=5, stall=0.5)) as slow:
        with pytest.raises(ReadError, match="timed out"):
            await fetch(slow, server.url("/a/x"), out, calls=calls)
    assert calls.last.done == disk.written[0][1]


async def test_a_200_starts_afresh_a_206_keeps_what_its_headers_lack(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    stamp = "Wed, 21 Oct 2015 07:28:00 GMT"
    data = body(2 * MiB)
    part = out.path / "GettyImages-1.jpg.part"
    old = TransferState(
        name="GettyImages-1.jpg",
        total=len(data),
        etag='"v0"',
        last_modified="Tue, 20 Oct 2015 07:28:00 GMT",
        content_type="image/png",
        done=MiB,
    )
    # Another ETag: If-Range fails, the whole file comes with 200 and its own headers only.
    server.assets["x"] = Asset(data)
    part.write_bytes(data[:MiB])
    calls = Calls()
    await fetch(session, server.url("/a/x"), out, state=old, calls=calls)
    first = calls.states[0]
    assert (first.etag, first.last_modified, first.content_type) == ('"v1"', None, "image/jpeg")

    # The same ETag: a 206 without Last-Modified keeps the known one.
    server.assets["y"] = Asset(data)
    (out.path / "y.jpg.part").write_bytes(data[:MiB])
    calls = Calls()
    same = replace(old, name="y.jpg", etag='"v1"')
    await fetch(session, server.url("/a/y"), out, state=same, calls=calls, owner="o2")
    first = calls.states[0]
    assert server.seen[-1].status == 206
    assert (first.etag, first.last_modified) == ('"v1"', old.last_modified)

    # A fresh download takes Last-Modified from its headers.
    server.assets["z"] = Asset(data, last_modified=stamp)
    calls = Calls()
    await fetch(session, server.url("/a/z"), out, calls=calls, owner="o3")
    assert calls.states[0].last_modified == stamp


# ------------------------------------------------- names, redirects, URLs, segmenting


def test_a_signed_url_is_sent_byte_for_byte_and_only_a_raw_one_is_quoted() -> None:
    """A signature's escapes (even lower-case ones) must reach the host as signed."""
    signed = "https://d.example/a%2fb.jpg?sig=x%2by%3d&exp=1"
    assert str(_as_url(signed)) == signed
    assert str(_as_url("https://d.example/é.jpg")) == "https://d.example/%C3%A9.jpg"
    assert str(_as_url("https://d.example/a b.jpg")) == "https://d.example/a%20b.jpg"


async def test_a_redirect_loop_that_does_not_return_to_the_start_is_refused(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    server.redirects["s"] = (302, "/r/b" + SIG)
    server.redirects["b"] = (302, "/r/c" + SIG)
    server.redirects["c"] = (302, "/r/b" + SIG)
    with pytest.raises(RedirectError, match="redirect loop back to"):
        await fetch(session, server.url("/r/s"), out)
    assert len(server.seen) == 3


async def test_a_transfer_holds_its_name_while_it_runs_and_gives_it_back_when_done(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(3 * MiB)
    server.assets["x"] = Asset(data)
    held: list[bool] = []

    def check(state: TransferState) -> None:
        if state.name is not None:
            held.append(state.name not in out.candidates(state.name, "another asset"))

    result = await fetch(session, server.url("/a/x"), out, calls=Calls(check=check))
    assert held and all(held)
    assert out.candidates(result.name, "another asset")[0] == result.name


@pytest.mark.parametrize("segmented", [False, True], ids=["single", "segments"])
async def test_a_resume_whose_final_name_is_taken_meanwhile_finishes_under_the_next_one(
    server: Server, session: aiohttp.ClientSession, out: OutputDir, segmented: bool
) -> None:
    """Someone puts a file at NAME while the `.part` is being finished: it is never
    replaced; the asset ends as `NAME (2).ext`."""
    data = body(8 * MiB)
    server.assets["x"] = Asset(data)
    name = "GettyImages-1.jpg"
    (out.path / f"{name}.part").write_bytes(data[: 2 * MiB])
    if segmented:
        state = _segmented_state(len(data), s0=2 * MiB)
    else:
        state = TransferState(name=name, total=len(data), etag='"v1"', done=2 * MiB)

    def squat(_: TransferState) -> None:
        if not (out.path / name).exists():
            (out.path / name).write_bytes(b"the user's own file")

    options = SEGMENTED if segmented else TransferOptions()
    calls = Calls(check=squat)
    result = await fetch(
        session, server.url("/a/x"), out, state=state, calls=calls, options=options
    )
    assert (result.name, result.sha256) == ("GettyImages-1 (2).jpg", sha(data))
    assert "Range" in server.seen[0].headers  # it did resume
    assert (out.path / name).read_bytes() == b"the user's own file"


async def test_a_journal_name_taken_by_a_finished_file_is_not_resumed_into(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    data = body(2 * MiB)
    server.assets["x"] = Asset(data)
    (out.path / "GettyImages-1.jpg").write_bytes(b"another asset's file")
    (out.path / "GettyImages-1.jpg.part").write_bytes(data[:MiB])
    state = TransferState(name="GettyImages-1.jpg", total=len(data), etag='"v1"', done=MiB)
    result = await fetch(session, server.url("/a/x"), out, state=state)
    assert "Range" not in server.seen[0].headers
    assert (result.name, result.sha256) == ("GettyImages-1 (2).jpg", sha(data))


async def test_bytes_on_disk_past_the_journal_are_dropped(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """The `.part` holds more than the journal claims (unsynced, never confirmed)."""
    data = body(2 * MiB)
    server.assets["x"] = Asset(data)
    (out.path / "GettyImages-1.jpg.part").write_bytes(data[:MiB] + b"\0" * (MiB // 2))
    state = TransferState(name="GettyImages-1.jpg", total=len(data), etag='"v1"', done=MiB)
    result = await fetch(session, server.url("/a/x"), out, state=state)
    assert server.seen[0].headers["Range"] == f"bytes={MiB}-"
    assert result.path.read_bytes() == data


async def test_a_200_to_a_resume_replaces_a_longer_part_entirely(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """The file changed and is now shorter than what is on disk: nothing stale is left."""
    data = body(MiB + 17)
    server.assets["x"] = Asset(data, etag='"v2"')
    (out.path / "GettyImages-1.jpg.part").write_bytes(body(2 * MiB))
    state = TransferState(name="GettyImages-1.jpg", total=3 * MiB, etag='"v1"', done=2 * MiB)
    result = await fetch(session, server.url("/a/x"), out, state=state)
    assert server.seen[0].status == 200
    assert result.path.read_bytes() == data
    assert (result.refetched, result.bytes) == (2 * MiB, len(data))


@pytest.mark.parametrize(
    ("size", "options", "requests"),
    [
        (MiB, SEGMENTED, 4),  # exactly the threshold
        (MiB - 1, SEGMENTED, 1),
        (4 * MiB, TransferOptions(segments=1, segment_threshold=MiB), 1),
        (3, TransferOptions(segments=4, segment_threshold=1), 1),  # fewer bytes than segments
    ],
    ids=["threshold", "below", "one segment", "tiny"],
)
async def test_which_files_are_segmented(
    server: Server,
    session: aiohttp.ClientSession,
    out: OutputDir,
    size: int,
    options: TransferOptions,
    requests: int,
) -> None:
    data = body(size)
    server.assets["x"] = Asset(data)
    result = await fetch(session, server.url("/a/x"), out, options=options)
    assert (result.sha256, result.bytes) == (sha(data), size)
    assert len(server.seen) == requests
