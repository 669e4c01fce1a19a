"""WorkerPool against a real aiohttp server on 127.0.0.1, with real worker processes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from bulkgetty.errors import DeliveryError, JournalError, ReadError, UriExpiredError
from bulkgetty.getty.http import Timeouts, new_session
from bulkgetty.stages.files import OutputDir
from bulkgetty.stages.transfer import TransferOptions, TransferResult, TransferState
from bulkgetty.stages.workers.pool import WorkerPool

MiB = 2**20
ONE_STREAM = TransferOptions(segments=1)


@dataclass
class Files:
    """A delivery host: GET /f/NAME with Range; `hold` pauses a fresh body after N bytes."""

    bodies: dict[str, bytes] = field(default_factory=dict)
    hold: dict[str, int] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    go: asyncio.Event = field(default_factory=asyncio.Event)
    ranges: list[str | None] = field(default_factory=list)
    base: str = ""

    def url(self, name: str) -> str:
        return f"{self.base}/f/{name}?sig=1"

    async def get(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name in self.status:
            return web.Response(status=self.status[name], text="no")
        body, rng = self.bodies[name], request.headers.get("Range")
        self.ranges.append(rng)
        first, _, last = rng.split("=")[1].partition("-") if rng else ("0", "", "")
        start, end = int(first), int(last) + 1 if last else len(body)
        headers = {
            "ETag": '"v1"',
            "Accept-Ranges": "bytes",
            "Content-Type": "image/jpeg",
            "Content-Disposition": f"attachment; filename={name}",
        }
        if rng:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(body)}"
        resp = web.StreamResponse(status=206 if rng else 200, headers=headers)
        resp.content_length = end - start
        await resp.prepare(request)
        hold = self.hold.get(name)
        if hold is not None and start == 0:
            await resp.write(body[:hold])
            await asyncio.wait_for(self.go.wait(), 60)
            start = hold
        await resp.write(body[start:end])
        await resp.write_eof()
        return resp


@pytest.fixture
async def files() -> AsyncIterator[Files]:
    served = Files()
    app = web.Application()
    app.router.add_get("/f/{name}", served.get)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    served.base = f"http://127.0.0.1:{port}"
    try:
        yield served
    finally:
        served.go.set()
        await runner.cleanup()


async def _no_names() -> set[str]:
    return set()


def _pool(out: OutputDir, count: int = 1) -> WorkerPool:
    return WorkerPool(
        count, out=out, timeouts=Timeouts(connect=10, stall=60), limit=10, held=_no_names
    )


@dataclass
class Calls:
    """What the caller's callbacks heard."""

    states: list[TransferState] = field(default_factory=list)
    progress: int = 0
    new_parts: list[TransferState] = field(default_factory=list)

    def on_state(self, state: TransferState) -> None:
        self.states.append(state)

    def on_progress(self, n: int) -> None:
        self.progress += n


async def _fetch(
    pool: WorkerPool,
    out: OutputDir,
    url: str,
    calls: Calls,
    *,
    owner: str = "k1",
    state: TransferState | None = None,
    options: TransferOptions = ONE_STREAM,
    on_new_part: Callable[[TransferState], Awaitable[None]] | None = None,
) -> TransferResult:
    """One transfer through the pool; `on_new_part` replaces the recording of new parts."""

    async def record_new_part(new: TransferState) -> None:
        calls.new_parts.append(new)
        calls.on_state(new)

    async with new_session(Timeouts()) as session:
        return await pool.transfer(
            session,
            url,
            out=out,
            owner=owner,
            asset_id="1",
            state=state,
            options=options,
            on_state=calls.on_state,
            on_progress=calls.on_progress,
            on_new_part=on_new_part or record_new_part,
        )


async def test_files_from_two_workers_are_whole_and_the_callbacks_hear_every_byte(
    tmp_path: Path, files: Files
) -> None:
    """Several files at once over two processes: each result and file as in one process."""
    bodies = {f"f{i}.jpg": os.urandom(300_000 + i * 700_000) for i in range(4)}
    files.bodies.update(bodies)
    out = OutputDir(tmp_path / "o")
    pool = _pool(out, count=2)
    try:
        calls = [Calls() for _ in bodies]
        results = await asyncio.gather(
            *(
                _fetch(pool, out, files.url(name), c, owner=f"k{i}")
                for i, (name, c) in enumerate(zip(bodies, calls, strict=True))
            )
        )
        assert len(pool.pids) == 2
    finally:
        await pool.close()
    for (name, body), result, heard in zip(bodies.items(), results, calls, strict=True):
        assert result.name == name and result.bytes == len(body)
        assert result.sha256 == hashlib.sha256(body).hexdigest()
        assert (out.path / name).read_bytes() == body
        assert heard.progress == len(body)
    assert not list(out.path.glob("*.part"))


async def test_a_segmented_file_is_fetched_in_ranges_by_one_worker(
    tmp_path: Path, files: Files
) -> None:
    """Several connections into one preallocated `.part`, its segments in the states."""
    body = os.urandom(6 * MiB)
    files.bodies["seg.mp4"] = body
    out = OutputDir(tmp_path / "o")
    pool = _pool(out)
    calls = Calls()
    options = TransferOptions(segments=3, segment_threshold=MiB, segment_probation=0)
    try:
        result = await _fetch(pool, out, files.url("seg.mp4"), calls, options=options)
    finally:
        await pool.close()
    assert result.sha256 == hashlib.sha256(body).hexdigest()
    assert len(calls.new_parts) == 1  # committed as one stream, split before its first byte
    assert any(len(state.segments) == 3 for state in calls.states)
    ranges = sorted(r for r in files.ranges if r)
    assert ranges == ["bytes=2097152-4194303", "bytes=4194304-6291455"]


async def test_no_byte_is_written_before_the_new_part_is_committed(
    tmp_path: Path, files: Files
) -> None:
    """The worker waits for `on_new_part` (the journal commit) before the first byte."""
    body = os.urandom(3 * MiB)
    files.bodies["big.jpg"] = body
    out = OutputDir(tmp_path / "o")
    pool = _pool(out)
    sizes: list[int] = []

    async def on_new_part(new: TransferState) -> None:
        assert new.name == "big.jpg"
        part = out.part_path("big.jpg")
        sizes.append(part.stat().st_size)
        await asyncio.sleep(0.3)  # a worker that did not wait would write meanwhile
        sizes.append(part.stat().st_size)

    try:
        result = await _fetch(pool, out, files.url("big.jpg"), Calls(), on_new_part=on_new_part)
    finally:
        await pool.close()
    assert sizes == [0, 0]
    assert result.sha256 == hashlib.sha256(body).hexdigest()


async def test_errors_come_back_as_the_same_class_and_retry_flag(
    tmp_path: Path, files: Files
) -> None:
    files.status.update({"gone.jpg": 403, "down.jpg": 502})
    out = OutputDir(tmp_path / "o")
    pool = _pool(out)
    try:
        with pytest.raises(UriExpiredError) as expired:
            await _fetch(pool, out, files.url("gone.jpg"), Calls())
        with pytest.raises(DeliveryError) as down:
            await _fetch(pool, out, files.url("down.jpg"), Calls())
    finally:
        await pool.close()
    assert not expired.value.retryable and "403" in str(expired.value)
    assert type(down.value) is DeliveryError and down.value.retryable
    assert "502" in str(down.value)


async def test_a_failed_commit_of_the_new_part_fails_the_transfer_with_that_error(
    tmp_path: Path, files: Files
) -> None:
    files.bodies["big.jpg"] = os.urandom(2 * MiB)
    out = OutputDir(tmp_path / "o")
    pool = _pool(out)

    async def on_new_part(new: TransferState) -> None:
        raise JournalError("journal is read-only")

    try:
        with pytest.raises(JournalError, match="journal is read-only"):
            await _fetch(pool, out, files.url("big.jpg"), Calls(), on_new_part=on_new_part)
    finally:
        await pool.close()
    assert out.part_path("big.jpg").stat().st_size == 0  # not one byte went in


async def _until(check: object, what: str) -> None:
    for _ in range(600):  # bounded: 60 s
        if callable(check) and check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_killed_worker_fails_its_transfer_as_retryable_and_the_retry_resumes(
    tmp_path: Path, files: Files
) -> None:
    """kill -9 mid-file: a retryable ReadError; the next call, in a new worker, resumes the
    `.part` from the last state it reported (a Range request), and the file is whole."""
    body = os.urandom(12 * MiB)
    files.bodies["v.mp4"] = body
    files.hold["v.mp4"] = 10 * MiB  # past the 8 MiB claim, then the server waits
    out = OutputDir(tmp_path / "o")
    pool = _pool(out)
    calls = Calls()
    try:
        first = asyncio.create_task(_fetch(pool, out, files.url("v.mp4"), calls))
        await _until(lambda: any(s.done > 0 for s in calls.states), "a claimed state")
        (victim,) = pool.pids
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(ReadError) as cut:
            await first
        assert cut.value.retryable and "stopped" in str(cut.value)
        assert pool.deaths == 1
        last = calls.states[-1]
        assert last.name == "v.mp4" and last.done > 0
        files.hold.clear()
        result = await _fetch(pool, out, files.url("v.mp4"), Calls(), state=last)
        assert pool.pids != [victim]
    finally:
        await pool.close()
    assert files.ranges[-1] == f"bytes={last.done}-"
    assert result.resumed_from == last.done
    assert (out.path / "v.mp4").read_bytes() == body


async def test_a_cancelled_call_stops_its_job_and_the_worker_lives_on(
    tmp_path: Path, files: Files
) -> None:
    body = os.urandom(4 * MiB)
    files.bodies.update({"slow.jpg": body, "next.jpg": body})
    files.hold["slow.jpg"] = 2 * MiB
    out = OutputDir(tmp_path / "o")
    pool = _pool(out)
    calls = Calls()
    try:
        task = asyncio.create_task(_fetch(pool, out, files.url("slow.jpg"), calls))
        await _until(lambda: calls.progress > 0, "the first bytes")
        (pid,) = pool.pids
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        result = await _fetch(pool, out, files.url("next.jpg"), Calls(), owner="k2")
        assert pool.pids == [pid] and pool.deaths == 0
    finally:
        await pool.close()
    assert result.sha256 == hashlib.sha256(body).hexdigest()
    assert out.part_path("slow.jpg").exists()  # kept for the next run's resume


async def test_closing_the_pool_ends_every_worker_process(tmp_path: Path, files: Files) -> None:
    files.bodies["a.jpg"] = b"x" * 1000
    out = OutputDir(tmp_path / "o")
    pool = _pool(out, count=2)
    await _fetch(pool, out, files.url("a.jpg"), Calls())
    pids = pool.pids
    await pool.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_a_worker_that_cannot_start_fails_the_transfer_for_good_with_a_hint(
    tmp_path: Path, files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.executable", "/bin/false")
    out = OutputDir(tmp_path / "o")
    pool = _pool(out)
    try:
        with pytest.raises(ReadError, match="--workers 0") as failed:
            await _fetch(pool, out, files.url("a.jpg"), Calls())
    finally:
        await pool.close()
    assert not failed.value.retryable


async def test_a_worker_holds_no_api_or_ledger_secret_in_its_environment(
    tmp_path: Path, files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GETTY_API_SECRET", "s3cret-api")
    monkeypatch.setenv("BULKGETTY_LEDGER", "postgresql://u:s3cret-db@h/db")
    files.bodies["a.jpg"] = b"x" * 1000
    out = OutputDir(tmp_path / "o")
    pool = _pool(out)
    try:
        await _fetch(pool, out, files.url("a.jpg"), Calls())
        (pid,) = pool.pids
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    finally:
        await pool.close()
    assert b"s3cret" not in environ and b"BULKGETTY_WORKER_PARENT" in environ
