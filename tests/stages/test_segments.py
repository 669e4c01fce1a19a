"""Adaptive segmenting (transfer/adaptive.py) against the in-process delivery host of
test_transfer.py: a large file starts on one connection and is split into ranges only when
that stream is slow. Every check counts requests and bytes at the server, never seconds."""

from __future__ import annotations

import itertools
import os

import aiohttp
import pytest

from bulkgetty.errors import ReadError
from bulkgetty.getty.http import Timeouts, new_session
from bulkgetty.stages.files import OutputDir
from bulkgetty.stages.transfer import TransferOptions, TransferState
from bulkgetty.stages.transfer import adaptive as adaptive_mod
from bulkgetty.stages.transfer import tracker as transfer_tracker
from bulkgetty.stages.transfer.adaptive import split_rest, worth_splitting
from tests.stages import test_transfer as tt
from tests.stages.test_transfer import Asset, Calls, DiskLog, MiB, Server, body, fetch, sha

# The delivery host, client session, output folder and disk log of test_transfer.py.
server, session, out, disk = tt.server, tt.session, tt.out, tt.disk

#: Four ranges for files of 1 MiB or more, weighed every 0.1 s while a file streams alone.
ADAPTIVE = TransferOptions(segments=4, segment_threshold=MiB, segment_probation=0.1)
#: Each connection held to 4 MiB/s: an 8 MiB file takes ~2 s on one, ~0.5 s on four.
CAP = 4 * MiB


def _ranged(server: Server) -> list[str]:
    return [s.headers["Range"] for s in server.seen if "Range" in s.headers]


def _split_state(calls: Calls) -> TransferState:
    return next(st for st in calls.states if st.segments)


# ------------------------------------------------------------------------ the rule


def test_the_rest_is_split_only_when_long_and_the_process_is_idle() -> None:
    """More connections pay for a rest that takes over a second, while the process has CPU
    to spare (a cap outside is the limit); never when the process itself is the limit."""
    assert worth_splitting(100 * MiB, rate=10 * MiB, cpu=0.1)
    assert not worth_splitting(100 * MiB, rate=10 * MiB, cpu=0.9)  # CPU-bound: no help
    assert not worth_splitting(5 * MiB, rate=10 * MiB, cpu=0.1)  # due in half a second
    assert worth_splitting(5 * MiB, rate=0.0, cpu=0.0)  # a stalled stream


@pytest.mark.parametrize(
    ("pos", "total", "count"), [(0, 10, 4), (3, 10, 4), (7, 10, 4), (8, 10, 3)]
)
def test_the_rest_is_cut_into_ranges_that_tile_the_file(pos: int, total: int, count: int) -> None:
    segs = split_rest(pos, total, count)
    assert segs[0].start == 0 and segs[-1].end == total
    assert all(a.end == b.start for a, b in itertools.pairwise(segs))
    assert segs[0].end > pos and 2 <= len(segs) <= count


# --------------------------------------------------------------------- the stream


async def test_a_fast_large_file_finishes_on_its_first_connection(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """Uncapped, the one stream ends before a split could pay: no range is ever asked."""
    data = body(8 * MiB)
    server.assets["x"] = Asset(data)
    options = TransferOptions(segments=4, segment_threshold=MiB)  # the default probation
    calls = Calls()
    result = await fetch(session, server.url("/a/x"), out, calls=calls, options=options)
    assert result.sha256 == sha(data)
    assert (len(server.seen), _ranged(server)) == (1, [])
    assert all(not st.segments for st in calls.states)


async def test_a_stream_weighed_and_kept_alone_reads_its_body_to_the_end(
    server: Server,
    session: aiohttp.ClientSession,
    out: OutputDir,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Weighed on the way and judged fast enough: one connection, read to its last byte."""
    weighed: list[int] = []

    def never(remaining: int, rate: float, cpu: float) -> bool:
        weighed.append(remaining)
        return False

    monkeypatch.setattr(adaptive_mod, "worth_splitting", never)
    data = body(4 * MiB)
    server.assets["x"] = Asset(data, rate=CAP)
    result = await fetch(session, server.url("/a/x"), out, options=ADAPTIVE)
    assert result.sha256 == sha(data)
    assert weighed, "the stream was never weighed"
    assert (len(server.seen), server.seen[0].served) == (1, len(data))


async def test_a_capped_stream_is_split_into_exact_ranges_and_keeps_the_front(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """Held to 4 MiB/s per connection, the stream is split after its probation: three new
    ranges with If-Range, the stream's own range ends where the next begins, the segments
    tile the file, and the first response is dropped at its new end."""
    data = body(8 * MiB + 5)
    server.assets["x"] = Asset(data, rate=CAP)
    calls = Calls()
    result = await fetch(session, server.url("/a/x"), out, calls=calls, options=ADAPTIVE)
    assert result.path.read_bytes() == data
    assert result.sha256 == sha(data)
    assert calls.progress == len(data)  # no byte counted twice
    segs = _split_state(calls).segments
    assert len(segs) == 4 and segs[0].start == 0 and segs[-1].end == len(data)
    assert all(a.end == b.start for a, b in itertools.pairwise(segs))
    # The rest was cut where the stream stood, not at 0: it had bytes before the split.
    assert segs[1].start - segs[1].length > 0
    assert _ranged(server) == [f"bytes={s.start}-{s.end - 1}" for s in segs[1:]]
    assert all(s.headers.get("If-Range") == '"v1"' for s in server.seen[1:])
    assert server.seen[0].served < len(data)  # stopped at its new end, not read through
    assert server.seen[0].served >= segs[0].end


async def test_the_split_is_journaled_after_preallocation_and_claims_only_synced_bytes(
    server: Server,
    session: aiohttp.ClientSession,
    out: OutputDir,
    disk: DiskLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The state that first names the segments comes after the `.part` was preallocated to
    the file's length (a kill before it lands resumes the single stream, cut back to its
    claim) and claims what the stream had claimed before, 0 for the new ranges; no state
    ever claims a byte no fdatasync covered."""
    monkeypatch.setattr(transfer_tracker, "_STATE_EVERY", MiB // 2)  # claims before the split
    data = body(8 * MiB)
    server.assets["x"] = Asset(data, rate=CAP)
    part_size: list[int] = []
    unsynced: list[tuple[int, int]] = []

    def check(state: TransferState) -> None:
        unsynced.extend(c for c in tt._claims(state) if not disk.covered(*c))
        if state.segments and not part_size:
            assert state.name is not None
            part_size.append(os.path.getsize(out.part_path(state.name)))

    calls = Calls(check=check)
    options = TransferOptions(segments=4, segment_threshold=MiB, segment_probation=0.3)
    result = await fetch(session, server.url("/a/x"), out, calls=calls, options=options)
    assert result.sha256 == sha(data)
    assert unsynced == []
    assert part_size == [len(data)]
    first = next(i for i, st in enumerate(calls.states) if st.segments)
    before, split = calls.states[first - 1], calls.states[first]
    assert not before.segments
    assert [s.done for s in split.segments] == [before.done, 0, 0, 0]


async def test_a_split_file_cut_mid_range_resumes_that_range_only(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """After the split, one range's connection drops: the journal's state holds every range,
    and the next attempt asks only for the rest of the cut one."""
    data = body(8 * MiB)
    server.assets["x"] = Asset(data, rate=CAP, cut_start=None, cut_ranged_only=True, cut_after=MiB)
    calls = Calls()
    with pytest.raises(ReadError):
        await fetch(session, server.url("/a/x"), out, calls=calls, options=ADAPTIVE)
    state = TransferState.from_json(calls.last.to_json())
    cut = [s for s in state.segments if not s.complete]
    assert len(state.segments) == 4 and len(cut) == 1, state.segments
    (seg,) = cut
    assert seg.start > 0 and 0 < seg.done < seg.length

    before = len(server.seen)
    server.assets["x"].rate = None
    result = await fetch(session, server.url("/a/x"), out, state=state, options=ADAPTIVE)
    assert result.sha256 == sha(data)
    (again,) = server.seen[before:]
    assert again.headers["Range"] == f"bytes={seg.start + seg.done}-{seg.end - 1}"
    assert (result.resumed_from, result.refetched) == (state.done, 0)


async def test_a_resumed_slow_stream_is_split_too_and_keeps_its_prefix(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """A stream resumed with a 206 (a kill before any split) is weighed like a fresh one:
    held to 4 MiB/s, its rest is split too; the bytes on disk are neither asked again nor
    hashed again from the network."""
    data = body(8 * MiB)
    # A stall, not a cut: aiohttp may drop what it buffered when a connection drops.
    server.assets["x"] = Asset(data, stall_after=2 * MiB)
    first = Calls()
    async with new_session(Timeouts(connect=5, stall=0.5)) as stalling:
        with pytest.raises(ReadError, match="timed out"):
            await fetch(stalling, server.url("/a/x"), out, calls=first, options=ADAPTIVE)
    state = first.last
    assert not state.segments and state.done == 2 * MiB
    server.release.set()

    server.assets["x"] = Asset(data, rate=CAP)
    calls = Calls()
    result = await fetch(
        session, server.url("/a/x"), out, calls=calls, state=state, options=ADAPTIVE
    )
    assert result.sha256 == sha(data)
    assert (result.resumed_from, result.refetched) == (state.done, 0)
    segs = _split_state(calls).segments
    assert segs[0].start == 0 and segs[-1].end == len(data) and segs[0].end > state.done
    assert _ranged(server) == [
        f"bytes={state.done}-",
        *(f"bytes={s.start}-{s.end - 1}" for s in segs[1:]),
    ]


@pytest.mark.parametrize(
    "asset",
    [{"etag": None}, {"ranges": False}, {"etag": 'W/"weak"'}],
    ids=["no validator", "no Accept-Ranges", "weak ETag only"],
)
async def test_a_slow_stream_without_safe_ranges_is_never_split(
    server: Server, session: aiohttp.ClientSession, out: OutputDir, asset: dict[str, object]
) -> None:
    """Ranges are trusted only with a validator for If-Range and a server that offers them:
    without either, a slow stream stays one stream however long it takes."""
    data = body(2 * MiB)
    server.assets["x"] = Asset(data, rate=CAP, **asset)  # type: ignore[arg-type]
    result = await fetch(session, server.url("/a/x"), out, options=ADAPTIVE)
    assert result.sha256 == sha(data)
    assert (len(server.seen), _ranged(server)) == (1, [])


async def test_one_segment_means_a_slow_stream_is_never_split(
    server: Server, session: aiohttp.ClientSession, out: OutputDir
) -> None:
    """`--segments 1`: never more than one connection per file."""
    data = body(2 * MiB)
    server.assets["x"] = Asset(data, rate=CAP)
    options = TransferOptions(segments=1, segment_threshold=MiB, segment_probation=0.1)
    result = await fetch(session, server.url("/a/x"), out, options=options)
    assert result.sha256 == sha(data)
    assert (len(server.seen), _ranged(server)) == (1, [])
