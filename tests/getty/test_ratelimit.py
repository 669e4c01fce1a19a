"""RateLimiter with an injected clock: a fake sleep advances the fake time."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from bulkgetty.getty.ratelimit import RateLimiter


class FakeTime:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def limiter(rate: float | None, t: FakeTime, **kw: float) -> RateLimiter:
    return RateLimiter(rate, clock=t.clock, sleep=t.sleep, **kw)  # type: ignore[arg-type]


async def test_requests_are_spaced_at_one_over_rate() -> None:
    t = FakeTime()
    rl = limiter(4.0, t)
    times = []
    for _ in range(5):
        await rl.acquire()
        times.append(t.now)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == [pytest.approx(0.25)] * 4


async def test_oversleeping_does_not_lower_the_rate_over_a_long_run() -> None:
    """Every sleep of the (fake) clock wakes 5 ms late, as on a busy loop: each request
    still goes out within those 5 ms of its own slot, k intervals after the first, so the
    lateness never adds up (it did: 10 q/s became 9.90), and no two requests are closer
    than one interval less that lateness."""
    t = FakeTime()

    async def late_sleep(seconds: float) -> None:
        await t.sleep(seconds + 0.005)

    rl = RateLimiter(10.0, clock=t.clock, sleep=late_sleep)  # type: ignore[arg-type]
    sent = []
    for _ in range(101):
        await rl.acquire()
        sent.append(t.now)
    late = [at - (sent[0] + k * 0.1) for k, at in enumerate(sent)]
    assert max(late) <= 0.005 + 1e-9
    assert min(b - a for a, b in itertools.pairwise(sent)) >= 0.1 - 0.005 - 1e-9


async def test_first_request_does_not_wait() -> None:
    t = FakeTime()
    await limiter(2.0, t).acquire()
    assert t.sleeps == []


async def test_no_burst_after_idle_time() -> None:
    t = FakeTime()
    rl = limiter(1.0, t)
    await rl.acquire()
    t.now += 60  # idle for a minute
    await rl.acquire()
    start = t.now
    await rl.acquire()
    assert t.now - start == pytest.approx(1.0)


async def test_concurrent_waiters_are_served_in_arrival_order_one_slot_apart() -> None:
    t = FakeTime()
    rl = limiter(10.0, t)
    served: list[tuple[int, float]] = []

    async def worker(n: int) -> None:
        await rl.acquire()
        served.append((n, t.now))

    await asyncio.gather(*(worker(n) for n in range(20)))
    assert [n for n, _ in served] == list(range(20))
    stamps = [s for _, s in served]
    assert all(b - a == pytest.approx(0.1) for a, b in itertools.pairwise(stamps))


async def test_unlimited_never_waits() -> None:
    t = FakeTime()
    rl = limiter(None, t)
    for _ in range(100):
        await rl.acquire()
    assert t.sleeps == []
    assert rl.current_rate is None


async def test_throttle_halves_the_rate_and_pauses_everyone() -> None:
    t = FakeTime()
    rl = limiter(8.0, t, throttle_pause=2.0)
    await rl.acquire()
    rl.on_throttled()
    assert rl.current_rate == 4.0
    before = t.now
    await rl.acquire()
    assert t.now - before == pytest.approx(2.0)


async def test_throttles_during_a_pause_halve_only_once() -> None:
    t = FakeTime()
    rl = limiter(8.0, t)
    for _ in range(10):
        rl.on_throttled()  # ten in-flight requests answered 429 together
    assert rl.current_rate == 4.0


async def test_throttling_stops_at_a_floor() -> None:
    t = FakeTime()
    rl = limiter(2.0, t)
    for _ in range(30):
        rl.on_throttled()
        t.now += 1000
    assert rl.current_rate == pytest.approx(0.125)  # 2/16


async def test_success_recovers_additively_up_to_the_configured_rate() -> None:
    t = FakeTime()
    rl = limiter(4.0, t, recover_steps=4)
    rl.on_throttled()
    assert rl.current_rate == 2.0
    rl.on_success()
    assert rl.current_rate == 3.0
    for _ in range(10):
        rl.on_success()
    assert rl.current_rate == 4.0


async def test_slower_rate_after_throttle_widens_the_spacing() -> None:
    t = FakeTime()
    rl = limiter(4.0, t, throttle_pause=0.0)
    rl.on_throttled()
    await rl.acquire()
    start = t.now
    await rl.acquire()
    assert t.now - start == pytest.approx(0.5)


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)
