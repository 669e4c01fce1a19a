"""What goes over a worker's pipes: length-prefixed orjson frames, each a batch of messages.

Why batches: a small file is a handful of messages (a state or two, its progress, its result),
and one pipe write per message would cost a syscall each on both sides; a process writes
everything it produced in one turn of its event loop as one frame.

Messages are JSON lists, `[kind, job, ...]`. From the main process: `init` (once, first),
`job`, `ack` and `nack` (the answer to a `newpart`), `cancel`. From a worker: `state`,
`progress` (bytes since the last one), `newpart`, `done`, `error`, `cancelled`. A job is
the worker's run of one `transfer` call; the kinds mirror that call's callbacks and outcome.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any, Final

import orjson

from bulkgetty import errors
from bulkgetty.errors import ApiError, BulkGettyError
from bulkgetty.stages.transfer import TransferResult, TransferState

__all__ = (
    "FRAME_LIMIT",
    "error_from_wire",
    "error_to_wire",
    "frame",
    "read_frame",
    "result_from_wire",
    "result_to_wire",
    "state_from_wire",
    "state_to_wire",
)

_HEADER: Final = struct.Struct(">I")
#: No frame is this large (a batch of states is kilobytes; `init` carries the journal's names
#: of unfinished files, a few MiB at most): a larger length is a broken pipe.
FRAME_LIMIT: Final = 2**30

Message = list[Any]


def frame(messages: list[Message]) -> bytes:
    """One frame: a 4-byte big-endian length, then the batch as one orjson array."""
    body = orjson.dumps(messages)
    return _HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> list[Message] | None:
    """The next batch, or None at a clean end of the pipe (the other side closed it).

    A pipe that ends inside a frame, or a frame that is not a batch, is a dead peer too:
    the caller treats both alike (None), since nothing in a cut frame can be trusted.
    """
    try:
        head = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(head)
        if size > FRAME_LIMIT:
            return None
        batch = orjson.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError, orjson.JSONDecodeError):
        return None
    return batch if isinstance(batch, list) else None


# ------------------------------------------------------------------------ records


def state_to_wire(state: TransferState | None) -> str | None:
    return None if state is None else state.to_json().decode()


def state_from_wire(data: str | None) -> TransferState | None:
    return None if data is None else TransferState.from_json(data.encode())


def result_to_wire(result: TransferResult) -> dict[str, Any]:
    return {
        "path": str(result.path),
        "name": result.name,
        "bytes": result.bytes,
        "sha256": result.sha256,
        "content_type": result.content_type,
        "refetched": result.refetched,
        "resumed_from": result.resumed_from,
    }


def result_from_wire(data: dict[str, Any]) -> TransferResult:
    return TransferResult(
        path=Path(data["path"]),
        name=str(data["name"]),
        bytes=int(data["bytes"]),
        sha256=str(data["sha256"]),
        content_type=data["content_type"],
        refetched=int(data["refetched"]),
        resumed_from=int(data["resumed_from"]),
    )


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    """An error as its class name and the flags the retry policy and the steps read."""
    if not isinstance(exc, BulkGettyError):
        return {"cls": None, "msg": f"{type(exc).__name__}: {exc}"}
    return {
        "cls": type(exc).__name__,
        "msg": exc.message,
        "spent": exc.may_have_spent,
        "retryable": exc.retryable,
        "status": getattr(exc, "status", None),
        "code": getattr(exc, "code", None),
    }


def error_from_wire(data: dict[str, Any]) -> BaseException:
    """The same BulkGettyError subclass, message and flags as the worker raised.

    Not a BulkGettyError in the worker (a bug there) comes back as a RuntimeError, which
    stops the run as the same bug would in one process.
    """
    cls = getattr(errors, str(data.get("cls")), None) if data.get("cls") else None
    if not (isinstance(cls, type) and issubclass(cls, BulkGettyError)):
        return RuntimeError(f"in a worker process: {data.get('msg')}")
    exc = cls.__new__(cls)  # no constructor: their signatures differ, the fields do not
    Exception.__init__(exc, data["msg"])
    exc.message = str(data["msg"])
    exc.may_have_spent = bool(data.get("spent"))
    if bool(data.get("retryable")) != cls.retryable:
        exc.retryable = bool(data.get("retryable"))
    if isinstance(exc, ApiError):
        exc.status = int(data.get("status") or 0)
        exc.code = data.get("code")
    return exc
