"""connect.py: the watch that names API connect failures and gives up before any spend.

Driven through the package's one retry loop (`with_retries`) with a recording sleep and a
frozen clock, against a real closed loopback port (aiohttp's own connect error), so the
addresses and reasons are the ones a user sees.
"""

from __future__ import annotations

import socket

import pytest

from bulkgetty.errors import ApiUnreachableError, ConnectError
from bulkgetty.events import AssetAcquired
from bulkgetty.getty.connect import ConnectWatch, api_address
from bulkgetty.getty.http import Timeouts, map_errors, new_session
from bulkgetty.getty.retry import RetryPolicy, with_retries


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def attempt_loop(url: str, watch: ConnectWatch, clock: Clock) -> list[float]:
    """The retry loop around one GET of `url`; returns the waits it slept."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    async with new_session(Timeouts(connect=5)) as session:

        async def get() -> int:
            async def call() -> int:
                async with session.get(url) as resp:
                    return resp.status

            return await map_errors(call)

        policy = RetryPolicy(jitter=False, on_retry=watch)
        await with_retries(policy, get, sleep=sleep)
    return slept


async def test_watch_names_each_failure_then_gives_up_after_one_round() -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    clock = Clock()
    watch = ConnectWatch(url, lines.append, clock=clock)
    with pytest.raises(ConnectError):  # one loop: the policy's own 5 tries
        await attempt_loop(url + "/oauth2/token", watch, clock)
    assert lines == [
        f"cannot connect to 127.0.0.1:{port} (connection refused); retry {n} of 4 in {w} s"
        for n, w in ((1, "0.5"), (2, "1.0"), (3, "2.0"), (4, "4.0"))
    ]
    with pytest.raises(ApiUnreachableError) as caught:  # the next loop's first retry gives up
        await attempt_loop(url + "/v3/products", watch, clock)
    assert str(caught.value).startswith(
        f"cannot connect to the Getty API at 127.0.0.1:{port} (connection refused); "
        "gave up after 5 tries in 8 s, nothing was spent"
    )
    assert caught.value.exit_code == 2 and not caught.value.retryable
    with pytest.raises(ApiUnreachableError):  # every later request: at once
        await attempt_loop(url + "/v3/downloads", watch, clock)


async def test_watch_gives_up_before_a_try_could_end_past_the_time_limit() -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    clock = Clock()
    lines: list[str] = []
    # Tries that take 30 s each (as connect timeouts do): a second could not end within 55 s.
    watch = ConnectWatch(url, lines.append, connect_timeout=30.0, clock=clock)
    watch.first_at = clock.now - 30.0
    with pytest.raises(ApiUnreachableError, match="gave up after 1 try in 30 s"):
        await attempt_loop(url, watch, clock)
    assert lines == []


async def test_watch_stays_quiet_once_the_run_has_spent_and_ignores_other_hosts() -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    clock = Clock()
    spent = ConnectWatch(url, lines.append, clock=clock)
    spent.event(AssetAcquired(id="1", asset_type="image", product_type=None, spends=1))
    for _ in range(3):  # the money rules decide alone: plain ConnectErrors, never a give-up
        with pytest.raises(ConnectError) as caught:
            await attempt_loop(url, spent, clock)
        assert not isinstance(caught.value, ApiUnreachableError)
    delivery = ConnectWatch("https://api.example.com", lines.append, clock=clock)
    for _ in range(3):  # a delivery host's failures are the transfer's to retry
        with pytest.raises(ConnectError) as caught:
            await attempt_loop(url, delivery, clock)
        assert not isinstance(caught.value, ApiUnreachableError)
    assert lines == []


def test_api_address_uses_the_scheme_default_port() -> None:
    assert api_address("https://api.gettyimages.com") == "api.gettyimages.com:443"
    assert api_address("http://127.0.0.1:8099/") == "127.0.0.1:8099"
    assert api_address("http://localhost") == "localhost:80"
