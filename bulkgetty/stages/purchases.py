"""Purchases in flight: a download POST that left is never abandoned while its answer can come.

Why its own task: a run is stopped by cancelling it (Ctrl-C, SIGTERM, a full disk that tears
the pipeline down, a caller of the Python API). Cancelling the coroutine that awaits a POST
would drop the connection after Getty may have charged it, and with it the URI that the next
run would have to pay for again. So each purchase runs as a task of its own, which the
caller's cancellation does not reach once the request may have left:

    idle ──(intent being committed)──> committing ──(request may leave)──> sent ──> done
      └ cancellable: nothing was sent     └ runs on; stops before sending      └ runs to the end

`stop()` says "start no new request": idle purchases are cancelled, committing ones give up
before sending, sent ones finish (bounded by their own HTTP timeouts) and commit what they
learnt. `drain()` waits for them; the run calls it on every way out.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from typing import TypeVar

from bulkgetty.errors import BulkGettyError

__all__ = ("Purchase", "PurchaseStopped", "Purchases")

T = TypeVar("T")


class PurchaseStopped(BulkGettyError):
    """The run is stopping: this POST was not sent (nothing spent)."""


class _Phase(enum.Enum):
    IDLE = "idle"
    COMMITTING = "committing"
    SENT = "sent"


class Purchase:
    """One POST's progress towards the wire, as seen by `Purchases.stop()`."""

    __slots__ = ("_owner", "abandoned", "phase")

    def __init__(self, owner: Purchases) -> None:
        self._owner = owner
        self.phase = _Phase.IDLE
        #: Its caller was cancelled while the intent was being committed: never send.
        self.abandoned = False

    def committing(self) -> None:
        """The intent is about to be committed: from here a cancel would orphan it."""
        self._check()
        self.phase = _Phase.COMMITTING

    def sending(self) -> None:
        """The request is about to leave: from here only its answer ends this purchase."""
        self._check()
        self.phase = _Phase.SENT

    @property
    def sent(self) -> bool:
        return self.phase is _Phase.SENT

    def _check(self) -> None:
        if self._owner.stopping or self.abandoned:
            raise PurchaseStopped("the run is stopping: the download request was not sent")


class Purchases:
    """Every purchase of one run; see the module docstring."""

    def __init__(self) -> None:
        self._live: dict[asyncio.Task[object], Purchase] = {}
        self.stopping = False

    @property
    def sent(self) -> int:
        """Purchases whose request may be on the wire now (for "finishing N purchases")."""
        return sum(1 for p in self._live.values() if p.sent)

    async def run(self, fn: Callable[[Purchase], Awaitable[T]]) -> T:
        """Run `fn(purchase)` in its own task; cancelling the caller cancels it only while idle."""
        purchase = Purchase(self)
        task: asyncio.Task[T] = asyncio.ensure_future(fn(purchase))
        self._live[task] = purchase
        task.add_done_callback(self._forget)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if purchase.phase is _Phase.IDLE:
                task.cancel()
            purchase.abandoned = True
            raise

    def stop(self) -> None:
        """Start no new request: cancel idle purchases; the others finish on their own."""
        self.stopping = True
        for task, purchase in list(self._live.items()):
            if purchase.phase is _Phase.IDLE:
                task.cancel()

    async def drain(self) -> None:
        """Wait until every purchase has ended (their outcomes are committed by themselves)."""
        while self._live:
            await asyncio.wait(list(self._live))

    def _forget(self, task: asyncio.Task[object]) -> None:
        self._live.pop(task, None)
        if not task.cancelled():
            task.exception()  # the caller saw it, or the run is stopping: never "unretrieved"
