"""RetryPolicy and with_retries: pure, no network, no real sleeping."""

from __future__ import annotations

import email.utils
import random
import time
from datetime import datetime, timedelta, timezone

import pytest

from bulkgetty.errors import (
    AuthenticationError,
    BulkGettyError,
    ConnectError,
    NotFoundError,
    RateLimitedError,
    ReadError,
    ServerError,
)
from bulkgetty.getty.retry import RetryNotice, RetryPolicy, with_retries

NOW = 1_800_000_000.0


def test_backoff_doubles_per_attempt_without_jitter() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=30.0, jitter=False)
    assert [policy.delay(a) for a in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]


def test_backoff_is_capped_at_backoff_max_even_for_huge_attempts() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=30.0, jitter=False)
    assert policy.delay(7) == 30.0
    assert policy.delay(10_000) == 30.0


def test_full_jitter_stays_within_zero_and_backoff() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=8.0, rng=random.Random(7))
    for attempt in range(1, 10):
        cap = min(8.0, 2.0 ** (attempt - 1))
        for _ in range(50):
            assert 0.0 <= policy.delay(attempt) <= cap
    assert policy.delay(3, rand=0.0) == 0.0
    assert policy.delay(3, rand=0.5) == 2.0


def test_seeded_rng_gives_reproducible_delays() -> None:
    a = RetryPolicy(rng=random.Random(42))
    b = RetryPolicy(rng=random.Random(42))
    assert [a.delay(n) for n in range(1, 6)] == [b.delay(n) for n in range(1, 6)]


def test_a_drawn_jitter_outside_zero_to_one_is_clamped() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=8.0)
    assert policy.delay(3, rand=1.5) == 4.0
    assert policy.delay(3, rand=-0.5) == 0.0


def test_backoff_exponent_is_bounded_so_a_huge_attempt_cannot_overflow() -> None:
    """2.0**attempt overflows a float past ~1024; the exponent stops at 64."""
    policy = RetryPolicy(backoff_base=1.0, backoff_max=float("inf"), jitter=False)
    assert policy.delay(65) == 2.0**64
    assert policy.delay(100_000) == 2.0**64


def test_retry_after_overrides_backoff_and_is_clamped() -> None:
    policy = RetryPolicy(retry_after_max=300.0)
    assert policy.delay(1, retry_after=12.0) == 12.0
    assert policy.delay(1, retry_after=10_000.0) == 300.0
    assert policy.delay(1, retry_after=-5.0) == 0.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), (" 7 ", 7.0), ("0", 0.0), ("99999", 300.0)],
)
def test_parse_retry_after_delta_seconds(value: str, expected: float) -> None:
    assert RetryPolicy().parse_retry_after(value, NOW) == expected


def test_parse_retry_after_http_date_is_relative_to_now() -> None:
    value = email.utils.formatdate(NOW + 90, usegmt=True)
    assert RetryPolicy().parse_retry_after(value, NOW) == pytest.approx(90.0)


def test_parse_retry_after_http_date_in_the_past_is_zero_and_far_future_clamped() -> None:
    policy = RetryPolicy(retry_after_max=300.0)
    assert policy.parse_retry_after(email.utils.formatdate(NOW - 60, usegmt=True), NOW) == 0.0
    far = email.utils.formatdate(NOW + 86_400, usegmt=True)
    assert policy.parse_retry_after(far, NOW) == 300.0


def test_parse_retry_after_http_date_keeps_its_own_offset() -> None:
    """A date stamped +0900 is nine hours ahead of the same clock reading in UTC."""
    value = email.utils.format_datetime(
        datetime.fromtimestamp(NOW + 90, timezone(timedelta(hours=9)))
    )
    assert value.endswith("+0900")
    assert RetryPolicy().parse_retry_after(value, NOW) == pytest.approx(90.0)


def test_parse_retry_after_http_date_without_a_zone_is_read_as_utc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP dates are GMT: a date whose zone is missing ("-0000") is not local time, even on
    a machine east of UTC, where reading it as local would wait nine hours less (or not at all)."""
    value = email.utils.formatdate(NOW + 90)  # "... -0000": no zone information
    assert value.endswith("-0000")
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert RetryPolicy().parse_retry_after(value, NOW) == pytest.approx(90.0)
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("value", ["", "soon", "-5", "1.5e3", "Mon, 99 Foo 2020"])
def test_parse_retry_after_invalid_is_none(value: str) -> None:
    assert RetryPolicy().parse_retry_after(value, NOW) is None


def server_error(*, spent: bool = False) -> ServerError:
    return ServerError("boom", status=503, may_have_spent=spent)


def throttled() -> RateLimitedError:
    return RateLimitedError("slow down", status=429)


@pytest.mark.parametrize(
    "error",
    [
        ServerError("x", status=500, may_have_spent=True),
        ReadError("lost", may_have_spent=True),
        ReadError("lost"),
    ],
)
def test_spending_post_is_never_retried_when_it_may_have_spent(error: BulkGettyError) -> None:
    assert not RetryPolicy().should_retry(error, 1, is_spending_post=True)


@pytest.mark.parametrize("error", [ConnectError("refused"), throttled(), server_error()])
def test_spending_post_is_retried_when_nothing_was_spent(error: BulkGettyError) -> None:
    assert RetryPolicy().should_retry(error, 1, is_spending_post=True)


@pytest.mark.parametrize("error", [ConnectError("x"), ReadError("x"), throttled(), server_error()])
def test_reads_are_retried_on_retryable_errors(error: BulkGettyError) -> None:
    assert RetryPolicy().should_retry(error, 1, is_spending_post=False)


@pytest.mark.parametrize(
    "error",
    [
        AuthenticationError("no", status=401),
        NotFoundError("gone", status=404),
        ServerError("not implemented", status=501),
    ],
)
def test_permanent_errors_are_not_retried(error: BulkGettyError) -> None:
    assert not RetryPolicy().should_retry(error, 1, is_spending_post=False)


@pytest.mark.parametrize(
    "error",
    [
        ServerError("not implemented", status=501),
        ServerError("version not supported", status=505),
        NotFoundError("gone", status=404),
        ReadError("lost"),
    ],
)
def test_spending_post_is_not_retried_on_an_answer_outside_the_retry_list(
    error: BulkGettyError,
) -> None:
    """A 501 to a download POST is not "throttled" nor "transient": the server may have
    done the work, so only the history can say whether it spent; never send it again."""
    assert not RetryPolicy().should_retry(error, 1, is_spending_post=True)


def test_attempts_bound_the_retries() -> None:
    policy = RetryPolicy(attempts=3)
    assert policy.should_retry(ConnectError("x"), 2, is_spending_post=False)
    assert not policy.should_retry(ConnectError("x"), 3, is_spending_post=False)


async def test_with_retries_sleeps_between_tries_and_returns_the_result() -> None:
    slept: list[float] = []
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectError("refused")
        return "ok"

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    policy = RetryPolicy(jitter=False, backoff_base=1.0)
    assert await with_retries(policy, fn, sleep=sleep) == "ok"
    assert calls == 3
    assert slept == [1.0, 2.0]


async def test_with_retries_honours_retry_after_of_a_throttle() -> None:
    slept: list[float] = []
    calls = 0

    async def fn() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RateLimitedError("429", status=429, retry_after=4.0)
        return calls

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    assert await with_retries(RetryPolicy(), fn, is_spending_post=True, sleep=sleep) == 2
    assert slept == [4.0]


async def test_with_retries_raises_spent_error_at_once_on_a_spending_post() -> None:
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        raise ServerError("502", status=502, may_have_spent=True)

    async def sleep(seconds: float) -> None:
        raise AssertionError("must not sleep")

    with pytest.raises(ServerError) as caught:
        await with_retries(RetryPolicy(), fn, is_spending_post=True, sleep=sleep)
    assert caught.value.may_have_spent
    assert calls == 1


async def test_with_retries_treats_a_call_as_a_read_unless_told_it_spends() -> None:
    """A lost answer is retried for a read (the default) but raised at once for a POST
    that spends: the same error, two decisions."""
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ReadError("lost")
        return "ok"

    async def sleep(seconds: float) -> None:
        return None

    assert await with_retries(RetryPolicy(), fn, sleep=sleep) == "ok"
    calls = 0
    with pytest.raises(ReadError):
        await with_retries(RetryPolicy(), fn, is_spending_post=True, sleep=sleep)
    assert calls == 1


async def test_with_retries_gives_up_after_attempts_with_the_last_error() -> None:
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        raise ConnectError(f"refused {calls}")

    async def sleep(seconds: float) -> None:
        return None

    with pytest.raises(ConnectError, match="refused 4"):
        await with_retries(RetryPolicy(attempts=4), fn, sleep=sleep)
    assert calls == 4


def test_policy_is_a_frozen_value() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.attempts = 9  # type: ignore[misc]


async def test_with_retries_tells_on_retry_of_every_retry_before_its_wait() -> None:
    """A person sees each failure as it happens: the error, the try that failed, the tries
    allowed and the wait, before the wait."""
    events: list[object] = []
    errors = [ConnectError("refused 1"), ConnectError("refused 2")]

    async def fn() -> str:
        if errors:
            raise errors[0]
        return "ok"

    async def sleep(seconds: float) -> None:
        events.append(seconds)
        errors.pop(0)

    policy = RetryPolicy(attempts=3, backoff_base=1.0, jitter=False, on_retry=events.append)
    first, second = errors
    assert await with_retries(policy, fn, sleep=sleep) == "ok"
    assert events == [
        RetryNotice(first, 1, 3, 1.0),
        1.0,
        RetryNotice(second, 2, 3, 2.0),
        2.0,
    ]
