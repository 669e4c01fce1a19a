"""A Getty API client for the commands that only ask (plan, history, search).

`run` builds its own inside `Downloader`; this is the same stack (one session from http.py,
one token provider, the rate limiter and the retry policy) without the journal or delivery.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from .api import GettyClient
from .auth import Credentials, TokenProvider
from .config import DEFAULT_API_RATE, DEFAULT_API_URL
from .http import Timeouts, check_url_scheme, new_session
from .ratelimit import RateLimiter
from .retry import RetryPolicy

__all__ = ("open_client",)


@contextlib.asynccontextmanager
async def open_client(
    credentials: Credentials,
    api_url: str = DEFAULT_API_URL,
    *,
    api_rate: float | None = DEFAULT_API_RATE,
    policy: RetryPolicy | None = None,
) -> AsyncIterator[GettyClient]:
    """A GettyClient on its own session, closed when the block ends.

    async with open_client(Credentials.from_env(), api_url) as client:
        products = await client.products()
    """
    check_url_scheme(api_url, what="the API URL")
    policy = policy or RetryPolicy()
    async with new_session(Timeouts()) as session:
        limiter = RateLimiter(api_rate)
        tokens = TokenProvider(session, api_url, credentials, limiter=limiter, policy=policy)
        yield GettyClient(session, api_url, tokens, limiter=limiter, policy=policy)
