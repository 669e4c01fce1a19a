"""Credentials and TokenProvider against a small in-process token server (real sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bulkgetty.errors import AuthenticationError, UsageError
from bulkgetty.getty.auth import Credentials, TokenProvider
from bulkgetty.getty.ratelimit import RateLimiter
from bulkgetty.getty.retry import RetryPolicy

KEY = "key-AAAAAAAAAAAA"
SECRET = "secret-BBBBBBBBBBBB"
PASSWORD = "password-CCCCCCCCCCCC"
REFRESH = "refresh-DDDDDDDDDDDD"


@dataclass
class TokenServer:
    """Issues tok-1, tok-2, ... and records every form it received."""

    forms: list[dict[str, str]] = field(default_factory=list)
    expires_in: Any = 1800
    refresh_token: str | None = "rt-issued-EEEEEEEE"
    refuse: set[str] = field(default_factory=set)
    delay: float = 0.0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.forms.append({k: str(v) for k, v in form.items()})
        if self.delay:
            await asyncio.sleep(self.delay)
        if form.get("grant_type") in self.refuse:
            return web.json_response(
                {
                    "error": "unauthorized_client",
                    "error_description": "The authorization grant or refresh token is invalid",
                },
                status=400,
            )
        body: dict[str, Any] = {
            "access_token": f"tok-{len(self.forms)}",
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }
        if form.get("grant_type") == "password" and self.refresh_token:
            body["refresh_token"] = self.refresh_token
        return web.json_response(body)


@pytest.fixture
async def server() -> AsyncIterator[TokenServer]:
    state = TokenServer()
    app = web.Application()
    app.router.add_post("/oauth2/token", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def provider(
    session: aiohttp.ClientSession,
    server: TokenServer,
    creds: Credentials,
    clock: Clock | None = None,
) -> TokenProvider:
    return TokenProvider(
        session,
        server.url,
        creds,
        limiter=RateLimiter(None),
        policy=RetryPolicy(attempts=2, backoff_base=0.0),
        clock=clock or Clock(),
    )


CLIENT = Credentials(api_key=KEY, api_secret=SECRET)
USER = Credentials(api_key=KEY, api_secret=SECRET, username="jdoe", password=PASSWORD)


# --- Credentials -------------------------------------------------------------------------


def test_from_env_requires_the_api_key_and_names_it() -> None:
    with pytest.raises(UsageError, match="GETTY_API_KEY"):
        Credentials.from_env({})


def test_from_env_reads_every_variable() -> None:
    env = {
        "GETTY_API_KEY": KEY,
        "GETTY_API_SECRET": SECRET,
        "GETTY_USERNAME": "jdoe",
        "GETTY_PASSWORD": PASSWORD,
        "GETTY_REFRESH_TOKEN": REFRESH,
        "GETTY_ACCESS_TOKEN": "at-FFFFFFFF",
    }
    creds = Credentials.from_env(env)
    assert (creds.api_key, creds.username, creds.refresh_token) == (KEY, "jdoe", REFRESH)
    assert creds.access_token == "at-FFFFFFFF"


def test_username_without_password_is_a_usage_error_naming_the_missing_variable() -> None:
    with pytest.raises(UsageError, match="GETTY_PASSWORD"):
        Credentials.from_env({"GETTY_API_KEY": KEY, "GETTY_USERNAME": "jdoe"})


def test_client_credentials_without_secret_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="GETTY_API_SECRET"):
        Credentials.from_env({"GETTY_API_KEY": KEY})


def test_grant_precedence_password_then_refresh_then_access_then_client() -> None:
    full = Credentials(KEY, SECRET, "u", PASSWORD, REFRESH, "at")
    assert full.grant == "password"
    assert Credentials(KEY, SECRET, refresh_token=REFRESH, access_token="at").grant == (
        "refresh_token"
    )
    assert Credentials(KEY, SECRET, access_token="at").grant == "access_token"
    assert CLIENT.grant == "client_credentials"


def test_repr_shows_no_secret_and_secrets_lists_them_all() -> None:
    creds = Credentials(KEY, SECRET, "jdoe", PASSWORD, REFRESH, "at-GGGGGGGG")
    text = repr(creds)
    for secret in (KEY, SECRET, PASSWORD, REFRESH, "at-GGGGGGGG"):
        assert secret not in text
        assert secret in creds.secrets()


# --- grants ------------------------------------------------------------------------------


async def test_client_credentials_grant_sends_key_and_secret(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    assert await provider(session, server, CLIENT).token() == "tok-1"
    assert server.forms == [
        {"grant_type": "client_credentials", "client_id": KEY, "client_secret": SECRET}
    ]


async def test_password_grant_sends_user_and_password(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    await provider(session, server, USER).token()
    assert server.forms == [
        {
            "grant_type": "password",
            "client_id": KEY,
            "client_secret": SECRET,
            "username": "jdoe",
            "password": PASSWORD,
        }
    ]


async def test_refresh_token_grant_sends_the_refresh_token(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    creds = Credentials(api_key=KEY, refresh_token=REFRESH)
    await provider(session, server, creds).token()
    assert server.forms == [
        {"grant_type": "refresh_token", "client_id": KEY, "refresh_token": REFRESH}
    ]


async def test_password_grant_later_refreshes_with_the_issued_refresh_token(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    tokens = provider(session, server, USER)
    stale = await tokens.token()
    await tokens.invalidate(stale)
    assert await tokens.token() == "tok-2"
    assert server.forms[1]["grant_type"] == "refresh_token"
    assert server.forms[1]["refresh_token"] == "rt-issued-EEEEEEEE"


async def test_refused_refresh_falls_back_to_the_password_grant(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    tokens = provider(session, server, USER)
    await tokens.invalidate(await tokens.token())
    server.refuse = {"refresh_token"}
    assert await tokens.token() == "tok-3"
    assert [f["grant_type"] for f in server.forms] == ["password", "refresh_token", "password"]


async def test_access_token_never_requests_a_token(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    tokens = provider(session, server, Credentials(api_key=KEY, access_token="at-HHHHHHHH"))
    assert await tokens.token() == "at-HHHHHHHH"
    await tokens.invalidate("at-HHHHHHHH")
    assert await tokens.token() == "at-HHHHHHHH"
    assert server.forms == []
    assert not tokens.can_refresh


# --- caching, single flight, margin ------------------------------------------------------


async def test_token_is_cached(server: TokenServer, session: aiohttp.ClientSession) -> None:
    tokens = provider(session, server, CLIENT)
    assert {await tokens.token() for _ in range(10)} == {"tok-1"}
    assert len(server.forms) == 1


async def test_fifty_concurrent_callers_share_one_token_request(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    server.delay = 0.05
    tokens = provider(session, server, CLIENT)
    got = await asyncio.gather(*(tokens.token() for _ in range(50)))
    assert set(got) == {"tok-1"}
    assert len(server.forms) == 1


async def test_fifty_workers_invalidating_the_same_token_cause_one_refresh(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    tokens = provider(session, server, CLIENT)
    stale = await tokens.token()

    async def worker() -> str:
        await tokens.invalidate(stale)
        return await tokens.token()

    server.delay = 0.02
    got = await asyncio.gather(*(worker() for _ in range(50)))
    assert set(got) == {"tok-2"}
    assert len(server.forms) == 2


async def test_sixty_second_token_is_not_refreshed_on_every_call_but_near_expiry(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    server.expires_in = 60
    clock = Clock()
    tokens = provider(session, server, CLIENT, clock)
    assert await tokens.token() == "tok-1"
    for second in range(0, 54):
        clock.now = float(second)
        assert await tokens.token() == "tok-1"
    assert len(server.forms) == 1
    clock.now = 54.5  # inside the 6 s margin (10 % of 60 s)
    assert await tokens.token() == "tok-2"


async def test_long_token_margin_is_capped_at_five_minutes(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    server.expires_in = 7200
    clock = Clock()
    tokens = provider(session, server, CLIENT, clock)
    await tokens.token()
    clock.now = 7200 - 301
    assert await tokens.token() == "tok-1"
    clock.now = 7200 - 299
    assert await tokens.token() == "tok-2"


async def test_expires_in_as_a_string_is_understood(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    server.expires_in = "1800"
    clock = Clock()
    tokens = provider(session, server, CLIENT, clock)
    await tokens.token()
    clock.now = 1000.0
    assert await tokens.token() == "tok-1"
    clock.now = 1800 - 100.0
    assert await tokens.token() == "tok-2"


# --- errors ------------------------------------------------------------------------------


async def test_refused_grant_names_the_problem_and_never_the_secret(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    server.refuse = {"password"}
    with pytest.raises(AuthenticationError) as caught:
        await provider(session, server, USER).token()
    text = str(caught.value)
    assert "the API refused the credentials: unauthorized_client" in text
    assert "(grant: password)" in text
    assert caught.value.code == "unauthorized_client"
    for secret in USER.secrets():
        assert secret not in text
    assert len(server.forms) == 1  # a refused grant is not retried


async def test_failed_token_request_is_retried_by_the_next_caller(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    server.refuse = {"client_credentials"}
    tokens = provider(session, server, CLIENT)
    with pytest.raises(AuthenticationError):
        await tokens.token()
    server.refuse = set()
    assert await tokens.token() == "tok-2"


async def test_secrets_include_the_current_tokens(
    server: TokenServer, session: aiohttp.ClientSession
) -> None:
    tokens = provider(session, server, USER)
    await tokens.token()
    assert {"tok-1", "rt-issued-EEEEEEEE", PASSWORD, SECRET, KEY} <= set(tokens.secrets())
