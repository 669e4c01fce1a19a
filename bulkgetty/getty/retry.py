"""The one retry policy of the package: a frozen value with pure methods, and the one loop.

Why a value: every stage asks the same questions ("may I try again?", "how long do I wait?")
and must get the same answers, and tests must check them without a network or a clock. So the
policy never sleeps and never reads the time; `with_retries` is the only place that waits, and
its `sleep` is injectable.

Why the spending flag: Getty has no idempotency key, and a download POST that reached the
server may have been charged although no answer came back. Such a POST is retried only when
the error proves nothing was spent (see `RetryPolicy.should_retry`).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import TypeVar

from bulkgetty.errors import (
    ApiError,
    BulkGettyError,
    ConnectError,
    RateLimitedError,
    ReadError,
    ServerError,
)

__all__ = ("RETRY_STATUSES", "RetryNotice", "RetryPolicy", "with_retries")

T = TypeVar("T")

#: HTTP statuses worth another try: throttling and transient server faults.
RETRY_STATUSES: frozenset[int] = frozenset({429, 500, 502, 503, 504})

_DELTA_SECONDS = re.compile(r"\s*\d+\s*")


@dataclass(frozen=True, slots=True)
class RetryNotice:
    """One retry about to wait: the error, the try that failed (1-based), the tries allowed
    and the wait in seconds. What `RetryPolicy.on_retry` is told."""

    error: BulkGettyError
    attempt: int
    attempts: int
    delay: float


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to repeat a failed API request.

    attempts: total tries including the first (1 = never retry).
    backoff_base: the wait after the first failure; it doubles per failure...
    backoff_max: ...up to this cap (seconds).
    jitter: full jitter: the wait is drawn uniformly from [0, backoff]; False = exact backoff.
    retry_after_max: a server's Retry-After is honoured up to this many seconds.
    statuses: HTTP statuses of ApiErrors that may be retried.
    rng: source of jitter; pass `random.Random(seed)` for reproducible waits.
    on_retry: told of every retry before its wait (so a person sees a failure as it happens,
        not minutes later); it may raise to stop retrying, and never changes a wait.
    """

    attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    jitter: bool = True
    retry_after_max: float = 300.0
    statuses: frozenset[int] = RETRY_STATUSES
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)
    on_retry: Callable[[RetryNotice], None] | None = field(default=None, compare=False, repr=False)

    def should_retry(self, error: BulkGettyError, attempt: int, *, is_spending_post: bool) -> bool:
        """May the request that failed on try number `attempt` (1-based) be sent again?

        A spending POST is repeated only when the error proves nothing was charged: the
        connection never opened (ConnectError), the API throttled it (429 is answered before
        any work), or a 5xx that the caller did not mark `may_have_spent`.
        """
        if attempt >= self.attempts or error.may_have_spent:
            return False
        if is_spending_post:
            return self._proves_nothing_spent(error)
        if isinstance(error, ApiError) and not isinstance(error, RateLimitedError):
            return error.retryable and error.status in self.statuses
        return error.retryable

    def _proves_nothing_spent(self, error: BulkGettyError) -> bool:
        """True for the failures after which a download POST certainly was not charged."""
        if isinstance(error, ConnectError | RateLimitedError):
            return True
        if isinstance(error, ReadError):
            return False  # sent, then lost: only the history can tell
        return isinstance(error, ServerError) and error.status in self.statuses

    def delay(
        self, attempt: int, *, retry_after: float | None = None, rand: float | None = None
    ) -> float:
        """Seconds to wait after failed try number `attempt` (1-based) before the next one.

        A server's Retry-After wins (clamped to [0, retry_after_max]); otherwise exponential
        backoff capped at backoff_max, with full jitter so that many workers throttled at the
        same moment do not come back at the same moment. `rand` in [0, 1) replaces the draw.
        """
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_max)
        exponent = min(max(attempt - 1, 0), 64)
        backoff = min(self.backoff_max, self.backoff_base * 2.0**exponent)
        if not self.jitter:
            return backoff
        draw = self.rng.random() if rand is None else rand
        return backoff * min(max(draw, 0.0), 1.0)

    def parse_retry_after(self, value: str, now: float) -> float | None:
        """Seconds from a Retry-After header (delta-seconds or HTTP-date), or None if invalid.

        `now` is the wall clock (time.time()) the HTTP-date is measured against. The result is
        clamped to [0, retry_after_max] so a hostile or broken server cannot park us forever.
        """
        if _DELTA_SECONDS.fullmatch(value):
            seconds = float(value.strip())
        else:
            try:
                when = email.utils.parsedate_to_datetime(value.strip())
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = when.timestamp() - now
        return min(max(seconds, 0.0), self.retry_after_max)


async def with_retries(
    policy: RetryPolicy,
    fn: Callable[[], Awaitable[T]],
    *,
    is_spending_post: bool = False,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """Await `fn()` until it succeeds or `policy` says stop; the package's one retry loop.

    The last error is raised unchanged, so its `may_have_spent` flag reaches the caller.
    """
    attempt = 1
    while True:
        try:
            return await fn()
        except BulkGettyError as error:
            if not policy.should_retry(error, attempt, is_spending_post=is_spending_post):
                raise
            retry_after = error.retry_after if isinstance(error, RateLimitedError) else None
            delay = policy.delay(attempt, retry_after=retry_after)
            if policy.on_retry is not None:
                policy.on_retry(RetryNotice(error, attempt, policy.attempts, delay))
            await sleep(delay)
            attempt += 1
