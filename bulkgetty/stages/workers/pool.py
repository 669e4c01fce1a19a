"""The main process's side: N worker processes, and `transfer` calls sent to the least busy.

`WorkerPool.transfer` takes the arguments of `stages.transfer.transfer` and keeps its
promises to the caller: `on_state` and `on_progress` are called with what the worker
reported, `on_new_part` is awaited here and only then is the worker let write the file's
first byte, and the outcome is the same `TransferResult` or the same error (class, message,
`retryable`, `may_have_spent`).

A worker that dies (kill -9, out of memory) fails only its jobs, each with a retryable
ReadError: the retry resumes the `.part` from the last state the journal heard, in a new
worker started in its place. A cancelled call cancels its job and waits (boundedly) until
the worker has stopped writing, as a cancelled `transfer` does in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
import anyio

from bulkgetty.errors import ReadError
from bulkgetty.getty.http import Timeouts
from bulkgetty.stages.files import OutputDir
from bulkgetty.stages.transfer import TransferOptions, TransferResult, TransferState
from bulkgetty.stages.workers.child import PARENT_ENV
from bulkgetty.stages.workers.wire import (
    Message,
    error_from_wire,
    error_to_wire,
    frame,
    read_frame,
    result_from_wire,
    state_from_wire,
    state_to_wire,
)

__all__ = ("BOOT", "WorkerPool")

#: A worker's interpreter: `python -m bulkgetty.stages.workers`, less the package's front
#: door (`bulkgetty/__init__` imports the CLI's display, rich and every command; a worker
#: needs the transfer stage only, and starts ~0.1 s of CPU sooner without them). No module a
#: worker imports uses the front door (`python -m benchmarks.layout` checks the layers).
#: The package is the main process's own copy (first on the path), whatever the path says.
BOOT: Final = f"""
import importlib.util, sys, types
sys.path.insert(0, {str(Path(__file__).resolve().parents[3])!r})
spec = importlib.util.find_spec("bulkgetty")
front = types.ModuleType("bulkgetty")
front.__path__, front.__spec__ = list(spec.submodule_search_locations), spec
sys.modules["bulkgetty"] = front
from bulkgetty.stages.workers.child import main
sys.exit(main())
"""
#: Environment a worker does not get: it never talks to the API or the ledger, so it holds
#: none of their secrets (a worker's environment is one less place to find them).
_SECRET_ENV: Final = ("GETTY_", "BULKGETTY_LEDGER")
#: Longest wait for a cancelled job to stop writing before its worker is killed.
CANCEL_WAIT: Final = 30.0
#: Longest wait for a new worker process to say it is ready.
START_WAIT: Final = 60.0
#: Longest wait for a worker to exit once told to; then it is killed.
EXIT_WAIT: Final = 10.0


@dataclass(slots=True)
class _Job:
    """One `transfer` call sent to a worker."""

    id: int
    on_state: Callable[[TransferState], None]
    on_progress: Callable[[int], None]
    on_new_part: Callable[[TransferState], Awaitable[None]] | None
    outcome: asyncio.Future[TransferResult]


@dataclass(slots=True)
class _Process:
    """One worker process, its pipes, and the jobs it runs now."""

    proc: asyncio.subprocess.Process
    jobs: dict[int, _Job] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    ready: asyncio.Future[None] | None = None
    dead: bool = False
    #: Main-side tasks answering `newpart` (each commits to the journal, then acks).
    answering: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def send(self, messages: list[Message]) -> None:
        """Write one frame; a worker that died meanwhile is noticed by its reader."""
        stdin = self.proc.stdin
        if self.dead or stdin is None or stdin.is_closing():
            return
        with contextlib.suppress(ConnectionError):
            stdin.write(frame(messages))
            await stdin.drain()

    def route(self, message: Message) -> None:
        """One message from this worker, to the job it is about."""
        kind, job_id = message[0], int(message[1])
        if kind == "ready":
            if self.ready is not None and not self.ready.done():
                self.ready.set_result(None)
            return
        job = self.jobs.get(job_id)
        if job is None:
            return  # a job given up on (cancelled and answered): nothing listens
        if kind == "progress":
            job.on_progress(int(message[2]))
        elif kind == "state":
            new = state_from_wire(message[2])
            if new is not None:
                job.on_state(new)
        elif kind == "newpart":
            task = asyncio.create_task(self._answer_new_part(job, message[2]))
            self.answering.add(task)
            task.add_done_callback(self.answering.discard)
        elif not job.outcome.done():
            if kind == "done":
                job.outcome.set_result(result_from_wire(message[2]))
            elif kind == "error":
                job.outcome.set_exception(error_from_wire(message[2]))
            elif kind == "cancelled":
                job.outcome.cancel()

    async def _answer_new_part(self, job: _Job, data: str) -> None:
        """Commit the new `.part`'s state as the caller's `on_new_part` does, then let the
        worker write; if the commit fails, the worker's transfer raises that error."""
        state = state_from_wire(data)
        assert state is not None
        try:
            if job.on_new_part is not None:
                await job.on_new_part(state)
            else:
                job.on_state(state)
        except Exception as exc:
            await self.send([["nack", job.id, error_to_wire(exc)]])
        else:
            await self.send([["ack", job.id]])


class WorkerPool:
    """N worker processes for the transfer stage (see the module docstring).

    Started by `warm_up` (the Downloader calls it as it opens) or else by the first
    `transfer`; a worker that died is replaced by the next `transfer`. `held` reads, when
    the workers start, the names the journal keeps for unfinished assets
    (`part_names_in_use`; why: names.py).
    """

    def __init__(
        self,
        count: int,
        *,
        out: OutputDir,
        timeouts: Timeouts,
        limit: int,
        held: Callable[[], Awaitable[set[str]]],
    ) -> None:
        if count < 1:
            raise ValueError(f"a pool needs at least one worker, got {count}")
        self.count = count
        self.out = out
        self.timeouts = timeouts
        self.limit = limit
        self._held_source = held
        self._held: list[str] | None = None
        self._slots: list[_Process | None] = [None] * count
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._closed = False
        self._warming: asyncio.Task[None] | None = None
        #: Worker processes that died while running (for tests and the curious).
        self.deaths = 0

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return [p.pid for p in self._slots if p is not None and not p.dead]

    # the transfer call -------------------------------------------------------------------

    async def transfer(
        self,
        session: aiohttp.ClientSession,  # the caller's; each worker has its own
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
        """`stages.transfer.transfer`, run in a worker process (see the class docstring)."""
        grant = self._grant(out, owner, state)
        if grant is None:
            state = None
        worker = await self._pick()
        loop = asyncio.get_running_loop()
        job = _Job(next(self._ids), on_state, on_progress, on_new_part, loop.create_future())
        worker.jobs[job.id] = job
        spec = {
            "uri": uri,
            "owner": owner,
            "asset_id": asset_id,
            "grant": grant,
            "state": state_to_wire(state),
            "options": asdict(options),
        }
        try:
            await worker.send([["job", job.id, spec]])
            if worker.dead:
                _fail_job(job, worker)
            result = await asyncio.shield(job.outcome)
        except BaseException:
            await self._stop_job(worker, job)
            raise
        finally:
            worker.jobs.pop(job.id, None)
        out.release(owner)
        return result

    def _grant(self, out: OutputDir, owner: str, state: TransferState | None) -> str | None:
        """The journal's name for a resume, reserved here as in one process; else None.

        Not grantable (another asset or a finished file has it): the file starts afresh
        under a name its worker settles on disk (names.py, rule 2).
        """
        if state is None or state.name is None:
            return None
        got = out.reserve(state.name, owner, prefer=state.name)
        if got != state.name:
            out.release(owner)
            return None
        return got

    async def _stop_job(self, worker: _Process, job: _Job) -> None:
        """Cancel a job and wait until its worker stopped writing (or kill the worker)."""
        with anyio.CancelScope(shield=True):
            if not job.outcome.done():
                await worker.send([["cancel", job.id]])
                with anyio.move_on_after(CANCEL_WAIT):
                    await asyncio.wait([job.outcome])
                if not job.outcome.done():
                    await self._kill(worker)
                    await asyncio.wait([job.outcome])
            if not job.outcome.cancelled():
                job.outcome.exception()  # retrieved: the caller's own error wins

    # processes ---------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Start the workers now, in the background: their interpreters start while the run
        gets its token, reads the journal and buys, not in front of the first transfer."""
        if self._warming is None:
            self._warming = asyncio.create_task(self._warm())

    async def _warm(self) -> None:
        with contextlib.suppress(ReadError):  # the first transfer tries again, and says why
            await self._pick()

    async def _pick(self) -> _Process:
        """The live worker with the fewest jobs; a dead or missing one is started first."""
        async with self._lock:
            if self._closed:
                raise ReadError("the worker processes are shut down")
            missing = [i for i, p in enumerate(self._slots) if p is None or p.dead]
            if missing:
                if self._held is None:
                    self._held = sorted(await self._held_source())
                started = await asyncio.gather(
                    *(self._start() for _ in missing), return_exceptions=True
                )
                for i, got in zip(missing, started, strict=True):
                    if isinstance(got, _Process):
                        self._slots[i] = got
                errors = [e for e in started if isinstance(e, BaseException)]
                if errors:
                    raise errors[0]
        live = [p for p in self._slots if p is not None and not p.dead]
        if not live:
            return await self._pick()
        return min(live, key=lambda p: len(p.jobs))

    async def _start(self) -> _Process:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SECRET_ENV)}
        env[PARENT_ENV] = str(os.getpid())
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            BOOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        worker = _Process(proc, ready=asyncio.get_running_loop().create_future())
        worker.reader = asyncio.create_task(self._read(worker))
        init = {
            "out": str(self.out.path),
            "inline": self.out.inline,
            "held": self._held,
            "connect": self.timeouts.connect,
            "stall": self.timeouts.stall,
            "limit": self.limit,
        }
        await worker.send([["init", 0, init]])
        assert worker.ready is not None
        with anyio.move_on_after(START_WAIT):
            await asyncio.wait([worker.ready])
        if not worker.ready.done() or worker.dead:
            await self._kill(worker)
            error = ReadError("cannot start a worker process; --workers 0 transfers in-process")
            error.retryable = False  # no retry of this run would start one either
            raise error
        return worker

    async def _read(self, worker: _Process) -> None:
        """Route a worker's messages to its jobs until its pipe ends; then it is dead."""
        assert worker.proc.stdout is not None
        try:
            while (batch := await read_frame(worker.proc.stdout)) is not None:
                for message in batch:
                    worker.route(message)
        finally:
            await worker.proc.wait()  # no write of it lands after its jobs are failed
            worker.dead = True
            if worker.jobs and not self._closed:
                self.deaths += 1
            for job in list(worker.jobs.values()):
                _fail_job(job, worker)
            if worker.ready is not None and not worker.ready.done():
                worker.ready.set_result(None)

    async def _kill(self, worker: _Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            worker.proc.kill()
        if worker.reader is not None:
            with anyio.CancelScope(shield=True):
                await asyncio.wait([worker.reader])

    async def close(self) -> None:
        """Close every worker's stdin (it cancels its jobs and exits); kill a slow one."""
        self._closed = True
        if self._warming is not None:
            with anyio.CancelScope(shield=True):
                await asyncio.wait([self._warming])
        workers = [p for p in self._slots if p is not None]
        for worker in workers:
            if worker.proc.stdin is not None and not worker.proc.stdin.is_closing():
                worker.proc.stdin.close()
        with anyio.CancelScope(shield=True):
            for worker in workers:
                with anyio.move_on_after(EXIT_WAIT):
                    if worker.reader is not None:
                        await asyncio.wait([worker.reader])
                if worker.reader is not None and not worker.reader.done():
                    await self._kill(worker)
                for task in list(worker.answering):
                    task.cancel()
        self._slots = [None] * self.count


def _fail_job(job: _Job, worker: _Process) -> None:
    if not job.outcome.done():
        code = worker.proc.returncode
        job.outcome.set_exception(
            ReadError(
                f"worker process {worker.pid} stopped (exit status {code}) during the "
                "transfer; its .part resumes on the next attempt"
            )
        )
