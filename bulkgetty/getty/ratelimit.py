"""The one API request-rate limiter: queries per second for one API key.

Why burst 1: Getty's per-key QPS is low ("single digits") and enforced per second, so letting
a burst through after an idle spell earns a 429 straight away. Requests are spaced evenly.

Why a FIFO lock: waiters queue on an `asyncio.Lock` (which wakes them in arrival order) and
only the head of the queue sleeps, so many workers never wake at once (no thundering herd)
and none is starved.

Why adaptive: the real limit is set by contract and not published; `--api-rate` is a guess.
A 429 halves the effective rate and pauses everyone; each success adds a little back
(additive increase, multiplicative decrease), never above the configured rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ("RateLimiter",)

#: The slowest rate a throttled limiter falls to, unless the configured rate is lower.
MIN_RATE = 0.1


class RateLimiter:
    """Spaces API requests at `1/rate` seconds; `rate=None` means unlimited.

    throttle_pause: the least time everyone waits after a 429 (it grows to one slot of the
    reduced rate when that is longer). recover_steps: successes it takes to climb back from the
    floor to the configured rate.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        throttle_pause: float = 1.0,
        recover_steps: int = 20,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive or None")
        self._rate = rate
        self._current = rate
        self._floor = None if rate is None else min(rate, max(rate / 16, MIN_RATE))
        self._step = None if rate is None else rate / max(recover_steps, 1)
        self._clock = clock
        self._sleep = sleep
        self._throttle_pause = throttle_pause
        self._lock = asyncio.Lock()
        self._next_at = float("-inf")
        self._paused_until = float("-inf")

    @property
    def rate(self) -> float | None:
        """The configured rate (queries per second), or None for unlimited."""
        return self._rate

    @property
    def current_rate(self) -> float | None:
        """The effective rate right now: lower than `rate` after throttling."""
        return self._current

    async def acquire(self) -> None:
        """Wait for this request's slot. Waiters are served in arrival order."""
        if self._rate is None and self._clock() >= self._paused_until and not self._lock.locked():
            return
        async with self._lock:
            while True:
                now = self._clock()
                ready_at = max(self._next_at, self._paused_until)
                if now >= ready_at:
                    break
                await self._sleep(ready_at - now)
            if self._current is not None:
                self._next_at = self._slot_after(ready_at, now) + 1.0 / self._current

    def _slot_after(self, ready_at: float, now: float) -> float:
        """Where the next interval counts from: the slot itself when this request is late by
        less than a quarter interval (a sleep that overslept, a busy loop), so lateness does
        not add up over a long run (10 q/s became 9.75); `now` after an idle spell, so no
        burst follows one."""
        assert self._current is not None
        late = now - ready_at
        return ready_at if 0 <= late < 0.25 / self._current else now

    def on_throttled(self) -> None:
        """The API answered 429: halve the rate and pause everyone for a while.

        Throttled answers that arrive during a pause already in force belong to requests sent
        before the slowdown, so they do not halve the rate again.
        """
        now = self._clock()
        if now < self._paused_until:
            return
        pause = self._throttle_pause
        if self._current is not None and self._floor is not None:
            self._current = max(self._floor, self._current / 2)
            pause = max(pause, 1.0 / self._current)
        self._paused_until = now + pause

    def on_success(self) -> None:
        """An API request succeeded: creep back toward the configured rate."""
        if self._current is None or self._rate is None or self._step is None:
            return
        self._current = min(self._rate, self._current + self._step)
