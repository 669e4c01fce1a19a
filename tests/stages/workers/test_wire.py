"""wire.py: frames over a real pipe, and records and errors as the caller knew them."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from bulkgetty.errors import (
    DeliveryError,
    DiskFullError,
    IntegrityError,
    ReadError,
    ServerError,
    StorageError,
    UriExpiredError,
)
from bulkgetty.stages.transfer import Segment, TransferResult, TransferState
from bulkgetty.stages.workers.wire import (
    FRAME_LIMIT,
    error_from_wire,
    error_to_wire,
    frame,
    read_frame,
    result_from_wire,
    result_to_wire,
    state_from_wire,
    state_to_wire,
)


def _reader(data: bytes, *, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


async def test_frames_arrive_whole_and_in_order_then_none_at_the_end() -> None:
    data = frame([["state", 1, "{}"], ["progress", 1, 5]]) + frame([["done", 2, {"a": 1}]])
    reader = _reader(data)
    assert await read_frame(reader) == [["state", 1, "{}"], ["progress", 1, 5]]
    assert await read_frame(reader) == [["done", 2, {"a": 1}]]
    assert await read_frame(reader) is None


@pytest.mark.parametrize(
    "data",
    [
        frame([["done", 1, {}]])[:-3],  # a worker killed while writing its frame
        struct.pack(">I", FRAME_LIMIT + 1) + b"[]",  # a length no frame has
        struct.pack(">I", 3) + b"[1,",  # not JSON
        struct.pack(">I", 2) + b"{}",  # not a batch
    ],
    ids=["cut", "too-long", "not-json", "not-a-list"],
)
async def test_a_broken_frame_reads_as_the_end_of_the_pipe(data: bytes) -> None:
    assert await read_frame(_reader(data)) is None


def test_states_and_results_come_back_equal() -> None:
    state = TransferState(
        name="a b.jpg",
        total=10,
        etag='"x"',
        segments=(Segment(0, 5, 2), Segment(5, 10, 0)),
        done=2,
    )
    assert state_from_wire(state_to_wire(state)) == state
    assert state_from_wire(state_to_wire(None)) is None
    result = TransferResult(Path("/o/a.jpg"), "a.jpg", 10, "ab" * 32, "image/jpeg", 3, 4)
    assert result_from_wire(result_to_wire(result)) == result


@pytest.mark.parametrize(
    "error",
    [
        UriExpiredError("refused 403"),
        IntegrityError("length"),
        DeliveryError("HTTP 502"),
        ReadError("cut", may_have_spent=True),
        StorageError("read-only"),
        DiskFullError("full"),
        ServerError("boom", status=503, code="X"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_come_back_with_their_class_message_and_flags(error: Exception) -> None:
    back = error_from_wire(error_to_wire(error))
    assert type(back) is type(error) and str(back) == str(error)
    for flag in ("retryable", "may_have_spent", "status", "code"):
        assert getattr(back, flag, None) == getattr(error, flag, None)


def test_an_instance_that_changed_its_retry_flag_keeps_it() -> None:
    error = ReadError("cannot start")
    error.retryable = False
    assert error_from_wire(error_to_wire(error)).retryable is False  # type: ignore[attr-defined]


def test_an_error_that_is_not_ours_comes_back_as_a_runtime_error() -> None:
    back = error_from_wire(error_to_wire(KeyError("k")))
    assert isinstance(back, RuntimeError) and "KeyError" in str(back)
