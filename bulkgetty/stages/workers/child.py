"""A worker process: `transfer` calls sent by the main process, many at once on one loop.

Run as `python -m bulkgetty.stages.workers` (a clean interpreter, never a fork of a process
with threads and a loop). Frames come on stdin and go out on the descriptor that was stdout;
stdout itself is pointed at stderr, so a stray print cannot break a frame. The worker dies
with the main process (PR_SET_PDEATHSIG where Linux has it, else at the end of stdin): a
worker left writing into a `.part` while a rerun resumes the same file would corrupt it.
Ctrl-C and SIGTERM are the main process's to handle (it stops buying and cancels the jobs,
which save their progress): a worker ignores both, also when they reach its whole process
group (a terminal, a service manager), and ends when the main process does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import os
import signal
import sys
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import aiohttp

from bulkgetty.getty.http import Timeouts, new_session
from bulkgetty.stages.transfer import TransferOptions, TransferState, transfer
from bulkgetty.stages.workers.names import WorkerOutputDir
from bulkgetty.stages.workers.wire import (
    Message,
    error_from_wire,
    error_to_wire,
    frame,
    read_frame,
    result_to_wire,
    state_from_wire,
    state_to_wire,
)

__all__ = ("PARENT_ENV", "main", "serve")

#: The main process's pid, so a worker that outlived it before PR_SET_PDEATHSIG exits at once.
PARENT_ENV: Final = "BULKGETTY_WORKER_PARENT"
_PR_SET_PDEATHSIG: Final = 1


class Outbox:
    """Messages to the main process, written as one frame per turn of the event loop.

    Bounded by the jobs: per job at most its byte count since the last frame and its latest
    state (a later state replaces an earlier one: the journal keeps only the last), plus the
    few messages that must arrive in order (`newpart`, and one outcome). States and bytes go
    first in a frame, so they reach the main process before the outcome that follows them.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.bytes: dict[int, int] = {}
        self.states: dict[int, str | None] = {}
        self.ordered: list[Message] = []
        self.wake = asyncio.Event()

    def progress(self, job: int, n: int) -> None:
        self.bytes[job] = self.bytes.get(job, 0) + n
        self.wake.set()

    def state(self, job: int, state: TransferState) -> None:
        self.states[job] = state_to_wire(state)
        self.wake.set()

    def put(self, message: Message) -> None:
        self.ordered.append(message)
        self.wake.set()

    def take(self) -> list[Message]:
        batch: list[Message] = [["progress", j, n] for j, n in self.bytes.items()]
        batch += [["state", j, s] for j, s in self.states.items()]
        batch += self.ordered
        self.bytes, self.states, self.ordered = {}, {}, []
        return batch

    async def run(self) -> None:
        """Write what gathered, wait for the pipe to drain, repeat (cancel to stop)."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            await self.flush()

    async def flush(self) -> None:
        batch = self.take()
        if batch:
            self.writer.write(frame(batch))
            await self.writer.drain()


@dataclass(slots=True)
class Worker:
    """The jobs of one worker process, each a `transfer` call in its own task."""

    out: WorkerOutputDir
    session: aiohttp.ClientSession
    outbox: Outbox
    tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    acks: dict[int, asyncio.Future[None]] = field(default_factory=dict)

    def handle(self, message: Message) -> None:
        kind, job = message[0], int(message[1])
        if kind == "job":
            self.tasks[job] = asyncio.create_task(self._run(job, message[2]))
        elif kind == "cancel":
            task = self.tasks.get(job)
            if task is not None:
                task.cancel()
        elif kind in ("ack", "nack"):
            waiting = self.acks.pop(job, None)
            if waiting is not None and not waiting.done():
                if kind == "ack":
                    waiting.set_result(None)
                else:
                    waiting.set_exception(error_from_wire(message[2]))

    async def _run(self, job: int, spec: dict[str, Any]) -> None:
        owner = str(spec["owner"])
        self.out.grant(owner, spec.get("grant"))
        try:
            result = await transfer(
                self.session,
                str(spec["uri"]),
                out=self.out,
                owner=owner,
                asset_id=str(spec["asset_id"]),
                state=state_from_wire(spec.get("state")),
                options=TransferOptions(**spec["options"]),
                on_state=partial(self.outbox.state, job),
                on_progress=partial(self.outbox.progress, job),
                on_new_part=partial(self._new_part, job),
            )
            self.outbox.put(["done", job, result_to_wire(result)])
        except asyncio.CancelledError:
            self.outbox.put(["cancelled", job])
        except Exception as exc:  # every error goes back to the caller, as in one process
            self.outbox.put(["error", job, error_to_wire(exc)])
        finally:
            self.out.forget(owner)
            self.tasks.pop(job, None)
            self.acks.pop(job, None)

    async def _new_part(self, job: int, state: TransferState) -> None:
        """No byte goes into a new `.part` before the main process committed its name."""
        waiting = asyncio.get_running_loop().create_future()
        self.acks[job] = waiting
        self.outbox.put(["newpart", job, state_to_wire(state)])
        await waiting

    async def stop(self) -> None:
        """The main process is gone or done: cancel every job and say so."""
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer the main process until it closes the pipe (the first frame is `init`)."""
    first = await read_frame(reader)
    if not first or first[0][0] != "init":
        return
    init: dict[str, Any] = first[0][2]
    out = WorkerOutputDir(init["out"], init.get("held", ()), inline=bool(init.get("inline")))
    timeouts = Timeouts(connect=float(init["connect"]), stall=float(init["stall"]))
    outbox = Outbox(writer)
    flusher = asyncio.create_task(outbox.run())
    async with new_session(timeouts, limit=int(init["limit"])) as session:
        worker = Worker(out, session, outbox)
        outbox.put(["ready", 0])
        try:
            while (batch := await read_frame(reader)) is not None:
                for message in batch:
                    worker.handle(message)
        finally:
            await worker.stop()
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await flusher
            with contextlib.suppress(ConnectionError):
                await outbox.flush()


def _die_with_parent() -> None:
    """SIGKILL when the main process dies (Linux); exit now if it is already gone."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    parent = os.environ.get(PARENT_ENV)
    if parent and os.getppid() != int(parent):
        os._exit(0)


async def _stdio() -> None:
    loop = asyncio.get_running_loop()
    out_fd = os.dup(1)
    os.dup2(2, 1)  # a stray print lands on stderr, not inside a frame
    reader = asyncio.StreamReader(limit=2**20)
    stdin = os.fdopen(0, "rb", buffering=0)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(out_fd, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    try:
        await serve(reader, writer)
    finally:
        writer.close()


def main() -> int:
    # As the command line's process does (bulkgetty/__main__.py says why): a worker frees
    # almost all it allocates by reference counting, and young collections cost per file.
    gc.freeze()
    gc.set_threshold(10_000)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    asyncio.run(_stdio())
    sys.stdout.flush()
    return 0
