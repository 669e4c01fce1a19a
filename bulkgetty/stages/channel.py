"""A bounded queue between the run's stage tasks that ends when its last sender closes.

Why not anyio's memory object streams, which did this before: every receive there is a
cancellation checkpoint and a trip through anyio's backend lookup, ~45 Python calls per item,
and every asset passes two of them (acquire, then transfer): a few percent of the per-file
CPU on many small files (benchmarks/README.md, issue 16). `asyncio.Queue` takes an item that is
already there without a call into the loop. What the pipeline needs of a stream is kept:
a bound (the spend runs only a window ahead of the bytes), FIFO order, and an end that every
receiver sees once all senders are done. Cancellation is asyncio's own: a task waiting in
`send` or in the iteration is cancelled where it waits, and loses no item.
"""

from __future__ import annotations

import asyncio
from typing import Final, Generic, TypeVar

__all__ = ("Channel", "Sender")

T = TypeVar("T")


class _End:
    """The marker that follows the last item; it is put back for the next receiver."""


_END: Final = _End()


class Channel(Generic[T]):
    """FIFO of at most `size` items; each sending task holds its own `sender()`."""

    def __init__(self, size: int) -> None:
        # Unbounded underneath, bounded by `_room`: the end marker never waits for room, so
        # the last sender's close never blocks on receivers that have not caught up.
        self._queue: asyncio.Queue[T | _End] = asyncio.Queue()
        self._room = asyncio.Semaphore(max(1, size))
        self._senders = 0
        self._ended = False

    def sender(self) -> Sender[T]:
        """One sending task's handle; the channel ends when every handle has closed."""
        if self._ended:
            raise RuntimeError("channel already ended")
        self._senders += 1
        return Sender(self)

    async def _put(self, item: T) -> None:
        await self._room.acquire()
        self._queue.put_nowait(item)

    def _close_one(self) -> None:
        self._senders -= 1
        if self._senders == 0 and not self._ended:
            self._ended = True
            self._queue.put_nowait(_END)

    def __aiter__(self) -> Channel[T]:
        return self

    async def __anext__(self) -> T:
        item = await self._queue.get()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # for the next receiver: nothing follows it
            raise StopAsyncIteration
        self._room.release()
        return item


class Sender(Generic[T]):
    """`async with channel.sender() as out: await out.send(x)`; leaving closes this handle."""

    __slots__ = ("_channel", "_open")

    def __init__(self, channel: Channel[T]) -> None:
        self._channel = channel
        self._open = True

    async def send(self, item: T) -> None:
        await self._channel._put(item)

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            self._channel._close_one()

    async def __aenter__(self) -> Sender[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
