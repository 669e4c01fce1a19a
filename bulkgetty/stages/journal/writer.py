"""One thread drives the journal; calls that queue while it commits share its next commit.

All access goes through one thread (`AsyncJournal`), as aiosqlite does: sqlite3 objects are
not shared across threads and writes are serialised for free. Calls that queue up while that
thread is committing share its next commit (group commit): each caller still resumes only once
its change is durable, but sixteen workers pay for one fsync instead of sixteen. Progress is
batched by the caller (`stage_progress`), so the journal is never the bottleneck.

On a memory filesystem (`inline`), there is no thread: an fsync there costs nothing, and each
hop to a thread and back cost more CPU than the commit itself (the GIL handed back and forth
at every statement; benchmarks README, issue 16). Every call then runs, and commits, on the
event loop's thread before `call` returns.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Generic, ParamSpec, Protocol, TypeVar

from bulkgetty.errors import DiskFullError, JournalError
from bulkgetty.stages.journal.sqlite import Journal

__all__ = ("GROUP_LIMIT", "AsyncJournal", "StagedWrites")

T = TypeVar("T")
P = ParamSpec("P")

#: Most calls one commit may carry; bounds the latency a burst adds to its first caller.
GROUP_LIMIT: Final = 256


@dataclass(slots=True)
class _Call:
    fn: Callable[[], Any]
    #: None for a call run inline (no thread to come back from).
    future: asyncio.Future[Any] | None
    #: Run outside any group (closing the database must not happen inside a transaction).
    alone: bool = False
    ok: bool = False
    result: Any = field(default=None)


class _Staging(Protocol):
    def save_progress(self, states: dict[str, bytes]) -> None: ...
    def record_waiting_many(self, reasons: dict[str, str]) -> None: ...


J = TypeVar("J", bound=_Staging)


class StagedWrites(Generic[J]):
    """Writes that need no commit of their own, kept until the next `flush`.

    Transfer progress (only the newest state per asset counts) and rows put aside before any
    POST (nothing was spent on them) would cost a commit each; one `flush` writes them all.
    Shared by `AsyncJournal` and `ledger.AsyncLedger`, which supply `call`.
    """

    def __init__(self, journal: J) -> None:
        self.journal = journal
        self._staged: dict[str, bytes] = {}
        self._waiting: dict[str, str] = {}

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        raise NotImplementedError

    def stage_progress(self, key: str, state: bytes) -> None:
        self._staged[key] = state

    def drop_progress(self, key: str) -> None:
        self._staged.pop(key, None)

    def stage_waiting(self, key: str, reason: str) -> None:
        self._waiting[key] = reason

    async def flush(self) -> None:
        staged, self._staged = self._staged, {}
        waiting, self._waiting = self._waiting, {}
        if staged:
            await self.call(self.journal.save_progress, staged)
        if waiting:
            await self.call(self.journal.record_waiting_many, waiting)


class AsyncJournal(StagedWrites[Journal]):
    """The journal driven from one thread of its own, awaited from the event loop.

    Calls are serialised by that thread, and the calls waiting when it becomes free run
    together in one transaction (`Journal.group`): one commit, one fsync, one wake-up of the
    event loop for all of them. `stage_progress` only remembers the newest state per asset,
    and `flush` writes them all in one call.
    """

    def __init__(
        self,
        journal: Journal,
        inbox: queue.SimpleQueue[_Call | None],
        thread: threading.Thread | None,
    ) -> None:
        super().__init__(journal)
        self._inbox = inbox
        #: None: every call runs inline on the event loop's thread.
        self._thread = thread
        self._closed = False

    @classmethod
    async def open(cls, out_dir: Path, *, inline: bool = False) -> AsyncJournal:
        """Open the journal on the thread that will own it for its whole life: its own, or
        with `inline` (a memory filesystem, see the module docstring) the event loop's."""
        if inline:
            return cls(Journal(out_dir), queue.SimpleQueue(), None)
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[Journal] = loop.create_future()
        inbox: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        thread = threading.Thread(
            target=_serve, args=(out_dir, inbox, opened, loop), name="bulkgetty-journal"
        )
        thread.daemon = True
        thread.start()
        journal = await opened
        return cls(journal, inbox, thread)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one journal method on the journal's thread; return once it is committed.

        A commit that has been queued finishes even when the run is being cancelled, so an
        acquisition is never half-recorded: cancelling the caller only cancels its future,
        which the journal thread's delivery then skips.
        """
        try:
            return await self._submit(functools.partial(fn, *args, **kwargs), alone=False)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            # The transaction was rolled back: the journal holds what was committed before.
            raise _disk_full(self.journal) from exc

    async def _submit(self, fn: Callable[[], T], *, alone: bool) -> T:
        if self._closed:
            raise JournalError("the journal is closed")
        if self._thread is None:
            return _run_inline(self.journal, fn)
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        # If the caller is cancelled meanwhile (a run stopping on a full disk), nobody awaits
        # the failure: retrieve it here so asyncio prints no "never retrieved" traceback.
        fut.add_done_callback(_retrieve)
        self._inbox.put(_Call(fn, fut, alone=alone))
        # Not shielded: the thread runs the call whether or not anyone still awaits it, and
        # a shield would cost a second future and one more loop callback per call.
        return await fut

    async def close(self) -> None:
        await self.flush()
        try:
            await self._submit(self.journal.close, alone=True)
        finally:
            self._closed = True
            if self._thread is not None:
                self._inbox.put(None)
                await asyncio.to_thread(self._thread.join)


def _serve(
    out_dir: Path,
    inbox: queue.SimpleQueue[_Call | None],
    opened: asyncio.Future[Journal],
    loop: asyncio.AbstractEventLoop,
) -> None:
    """The journal thread: open, then run queued calls a group (one commit) at a time."""
    try:
        journal = Journal(out_dir)
    except BaseException as exc:
        loop.call_soon_threadsafe(_settle_open, opened, None, exc)
        return
    loop.call_soon_threadsafe(_settle_open, opened, journal, None)
    carried: list[_Call | None] = []  # the call that ended the last group, not yet run
    while True:
        first = carried.pop() if carried else inbox.get()
        if first is None:
            return
        batch = [first]
        while not first.alone and len(batch) < GROUP_LIMIT:
            try:
                nxt = inbox.get_nowait()
            except queue.Empty:
                break
            if nxt is None or nxt.alone:
                carried.append(nxt)
                break
            batch.append(nxt)
        try:
            _run_group(journal, batch)
        except BaseException as exc:  # a bug, never a hang: every caller hears of it
            error = JournalError(f"journal thread failed: {exc!r}")
            for call in batch:
                call.ok, call.result = False, error
        loop.call_soon_threadsafe(_deliver, batch)


def _run_inline(journal: Journal, fn: Callable[[], T]) -> T:
    """One call on the caller's thread, with the same full-disk retry as a thread's group."""
    call = _Call(fn, None)
    _run_group(journal, [call])
    if not call.ok:
        raise call.result
    result: T = call.result
    return result


def _run_group(journal: Journal, batch: list[_Call]) -> None:
    """Run a batch as one commit; on a full disk, once more after giving the reserve back."""
    _try_group(journal, batch)
    if any(_is_full(call) for call in batch) and journal.release_reserve():
        _try_group(journal, [call for call in batch if not call.ok])


def _try_group(journal: Journal, batch: list[_Call]) -> None:
    if len(batch) == 1 or journal.closed:
        for call in batch:  # a lone call (close() among them) needs no group transaction
            _run_one(call)
        return
    try:
        with journal.group():
            for call in batch:
                _run_one(call)
    except Exception as exc:  # the commit failed: nothing of the group is durable
        full = isinstance(exc, sqlite3.OperationalError) and (
            exc.sqlite_errorcode == sqlite3.SQLITE_FULL
        )
        error = exc if full else JournalError(f"journal commit failed: {exc}")
        for call in batch:
            call.ok, call.result = False, error


def _is_full(call: _Call) -> bool:
    exc = call.result
    return (
        not call.ok
        and isinstance(exc, sqlite3.OperationalError)
        and exc.sqlite_errorcode == sqlite3.SQLITE_FULL
    )


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _disk_full(journal: Journal) -> DiskFullError:
    return DiskFullError(f"cannot write the journal in {journal.state_dir}: disk full")


def _run_one(call: _Call) -> None:
    try:
        call.result, call.ok = call.fn(), True
    except Exception as exc:
        call.result, call.ok = exc, False


def _deliver(batch: list[_Call]) -> None:
    for call in batch:
        if call.future is None or call.future.cancelled():
            continue
        if call.ok:
            call.future.set_result(call.result)
        else:
            call.future.set_exception(call.result)


def _settle_open(
    opened: asyncio.Future[Journal], journal: Journal | None, exc: BaseException | None
) -> None:
    if exc is not None:
        opened.set_exception(exc)
    else:
        assert journal is not None
        opened.set_result(journal)
