"""A Getty API client for the commands that only ask (plan, history, search), and the watch
that makes an unreachable API a fast, clear failure for every command.

`run` builds its own client inside `Downloader`; `open_client` is the same stack (one session
from http.py, one token provider, the rate limiter and the retry policy) without the journal
or delivery.

Why a watch: a refused port, a DNS failure or a wrong address used to cost minutes of silent
retries (token, request and purchase retries nest) and end as "N failed". `ConnectWatch` is the
retry policy's `on_retry` listener: it shows each connect failure to the API as it happens and,
while nothing has been spent, gives up within a minute with `ApiUnreachableError` (exit 2).
A connect failure proves that its request never left, so giving up then spends nothing and
leaves no purchase in doubt; once the run has spent, it only stays quiet and the money rules
(retry.py) decide alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import aiohttp

from bulkgetty.config import DEFAULT_API_RATE, api_url_from_env
from bulkgetty.errors import ApiUnreachableError, ConnectError
from bulkgetty.events import AssetAcquired, Event
from bulkgetty.getty.api import GettyClient
from bulkgetty.getty.auth import Credentials, TokenProvider
from bulkgetty.getty.http import Timeouts, check_url_scheme, new_session
from bulkgetty.getty.ratelimit import RateLimiter
from bulkgetty.getty.retry import RetryNotice, RetryPolicy

__all__ = ("GIVE_UP_WITHIN", "ApiAccess", "ConnectWatch", "api_address", "open_client")

#: Seconds from the first connect failure within which the watch has given up.
GIVE_UP_WITHIN: Final = 55.0
_TIMEOUT_URL = re.compile(r"to host (\S+)")


@contextlib.asynccontextmanager
async def open_client(
    credentials: Credentials,
    api_url: str | None = None,
    *,
    api_rate: float | None = DEFAULT_API_RATE,
    policy: RetryPolicy | None = None,
) -> AsyncIterator[GettyClient]:
    """A GettyClient on its own session, closed when the block ends; `api_url` defaults to
    $GETTY_API_URL, then Getty's API (as the CLI does).

    async with open_client(Credentials.from_env()) as client:
        products = await client.products()
    """
    api_url = api_url or api_url_from_env()
    check_url_scheme(api_url, what="the API URL")
    policy = policy or RetryPolicy()
    async with new_session(Timeouts()) as session:
        limiter = RateLimiter(api_rate)
        tokens = TokenProvider(session, api_url, credentials, limiter=limiter, policy=policy)
        yield GettyClient(session, api_url, tokens, limiter=limiter, policy=policy)


def api_address(url: str) -> str:
    """HOST:PORT of a URL, with the scheme's default port: what a connect failure names."""
    parts = urlsplit(url)
    port = parts.port or (80 if parts.scheme == "http" else 443)
    return f"{parts.hostname or ''}:{port}"


def connect_failure(error: ConnectError) -> tuple[str | None, str]:
    """(HOST:PORT, reason) of a connect failure, from aiohttp's error behind it."""
    cause = error.__cause__
    if isinstance(cause, aiohttp.ClientConnectorDNSError):
        return f"{cause.host}:{cause.port}", "name not found"
    if isinstance(cause, aiohttp.ClientConnectorError):
        code = cause.os_error.errno
        reason = os.strerror(code).lower() if code else type(cause.os_error).__name__
        return f"{cause.host}:{cause.port}", reason
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        found = _TIMEOUT_URL.search(str(cause))
        return (api_address(found.group(1)) if found else None), "timed out"
    return None, str(error)


@dataclass(slots=True)
class ConnectWatch:
    """The `on_retry` listener that shows API connect failures and gives up on an API that
    cannot be reached at all, before anything is spent (see the module docstring).

    It gives up at the first retry after one full round of tries (the token request's), or
    sooner when the next try could not end within GIVE_UP_WITHIN seconds of the first failure.
    """

    api_url: str
    #: Where a line for a person goes (stderr, or above the live display).
    say: Callable[[str], None]
    #: A try that times out takes this long (Timeouts.connect).
    connect_timeout: float = 30.0
    clock: Callable[[], float] = time.monotonic
    #: Set once the run has spent: from then on the watch stays out of the way.
    spent: bool = False
    failures: int = 0
    first_at: float | None = None
    gave_up: ApiUnreachableError | None = None

    def event(self, event: Event) -> None:
        """A run's events: once it has spent, the watch never gives up (money rules)."""
        if isinstance(event, AssetAcquired):
            self.spent = True

    def __call__(self, notice: RetryNotice) -> None:
        if self.spent or not isinstance(notice.error, ConnectError):
            return
        address, reason = connect_failure(notice.error)
        if address != api_address(self.api_url):
            return  # a delivery host: the transfer's own retries decide
        if self.gave_up is not None:
            raise self.gave_up
        now = self.clock()
        if self.first_at is None:
            self.first_at = now - (self.connect_timeout if reason == "timed out" else 0.0)
        self.failures += 1
        retries = notice.attempts - 1
        elapsed = now - self.first_at
        if self.failures > retries or elapsed + notice.delay + self.connect_timeout > (
            GIVE_UP_WITHIN
        ):
            self.gave_up = ApiUnreachableError(
                f"cannot connect to the Getty API at {address} ({reason}); gave up after "
                f"{self.failures} {'try' if self.failures == 1 else 'tries'} in {elapsed:.0f} s, "
                "nothing was spent: check --api-url or GETTY_API_URL and the network"
            )
            raise self.gave_up
        self.say(
            f"cannot connect to {address} ({reason}); "
            f"retry {self.failures} of {retries} in {notice.delay:.1f} s"
        )


@dataclass(frozen=True, slots=True)
class ApiAccess:
    """Who asks the API, where, how fast, and the retry policy whose watch shows connect
    failures as they happen and gives up on an API that cannot be reached (connect.py)."""

    credentials: Credentials
    url: str
    rate: float | None
    policy: RetryPolicy
    watch: ConnectWatch

    def client(self) -> contextlib.AbstractAsyncContextManager[GettyClient]:
        return open_client(self.credentials, self.url, api_rate=self.rate, policy=self.policy)
