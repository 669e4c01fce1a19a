"""GettyClient against a small scripted Getty server in-process (real sockets on 127.0.0.1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bulkgetty.assets import Asset
from bulkgetty.errors import (
    ApiError,
    AuthenticationError,
    BulkGettyError,
    NotFoundError,
    QuotaExceededError,
    RateLimitedError,
    ReadError,
    ServerError,
)
from bulkgetty.getty.api import GettyClient, HistoryItem, ProductInfo, error_from_response
from bulkgetty.getty.auth import Credentials, TokenProvider
from bulkgetty.getty.ratelimit import RateLimiter
from bulkgetty.getty.retry import RetryPolicy

KEY = "key-AAAAAAAAAAAA"
SECRET = "secret-BBBBBBBBBBBB"
WALL = 1_800_000_000.0
QPS = "Account Over Queries Per Second Limit"

Handler = Callable[[web.Request], Any]


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeGetty:
    """Routes answer from a per-route script (a list of handlers), then from a default."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    tokens_issued: int = 0
    scripts: dict[str, list[Handler]] = field(default_factory=dict)
    defaults: dict[str, Handler] = field(default_factory=dict)

    def script(self, route: str, *handlers: Handler) -> None:
        self.scripts.setdefault(route, []).extend(handlers)

    def hits(self, method: str, prefix: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path.startswith(prefix)]

    async def token(self, request: web.Request) -> web.Response:
        self.tokens_issued += 1
        return web.json_response({"access_token": f"tok-{self.tokens_issued}", "expires_in": 1800})

    async def any(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            Seen(request.method, request.path, dict(request.query), dict(request.headers), body)
        )
        route = f"{request.method} {request.path}"
        for key in (route, request.method):
            if self.scripts.get(key):
                return await self.scripts[key].pop(0)(request)  # type: ignore[no-any-return]
            if key in self.defaults:
                return await self.defaults[key](request)  # type: ignore[no-any-return]
        return web.json_response({"message": "no route"}, status=599)


def reply(status: int = 200, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        if body is None:
            return web.Response(status=status, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    return handler


async def drop_connection(request: web.Request) -> web.Response:
    assert request.transport is not None
    request.transport.abort()
    await asyncio.sleep(0.05)
    return web.Response()


@pytest.fixture
async def getty() -> AsyncIterator[FakeGetty]:
    state = FakeGetty()
    app = web.Application()
    app.router.add_post("/oauth2/token", state.token)
    app.router.add_route("*", "/{tail:.*}", state.any)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


@dataclass
class Kit:
    client: GettyClient
    tokens: TokenProvider
    limiter: RateLimiter


@pytest.fixture
async def kit(getty: FakeGetty) -> AsyncIterator[Callable[..., Kit]]:
    sessions: list[aiohttp.ClientSession] = []

    def make(*, auto_download: bool = False, rate: float | None = None) -> Kit:
        session = aiohttp.ClientSession()
        sessions.append(session)
        t = FakeTime()
        limiter = RateLimiter(rate, clock=t.clock, sleep=t.sleep)
        policy = RetryPolicy(attempts=4, backoff_base=0.0, jitter=False)
        creds = Credentials(api_key=KEY, api_secret=SECRET)
        tokens = TokenProvider(session, getty.url, creds, limiter=limiter, policy=policy)
        client = GettyClient(
            session,
            getty.url,
            tokens,
            limiter=limiter,
            policy=policy,
            auto_download=auto_download,
            wall_clock=lambda: WALL,
        )
        return Kit(client, tokens, limiter)

    yield make
    for s in sessions:
        await s.close()


ASSET = Asset(id="123", product_type="premiumaccess", height=2048, project_code="PRJ-1")


# --- download ----------------------------------------------------------------------------


async def test_download_returns_the_uri_valid_24h_and_sends_key_bearer_query_and_body(
    getty: FakeGetty, kit: Callable[..., Kit]
) -> None:
    getty.script("POST /v3/downloads/images/123", reply(200, {"uri": "https://d.example/x.jpg"}))
    grant = await kit().client.download(ASSET)
    assert grant.uri == "https://d.example/x.jpg"
    assert grant.expires_at == WALL + 24 * 3600
    (post,) = getty.hits("POST", "/v3/downloads")
    assert post.headers["Api-Key"] == KEY
    assert post.headers["Authorization"] == "Bearer tok-1"
    assert post.query == {
        "auto_download": "false",
        "product_type": "premiumaccess",
        "height": "2048",
    }
    assert post.headers["Content-Type"] == "application/json"
    assert post.body == b'{"project_code":"PRJ-1"}'


async def test_download_without_options_sends_no_body(
    getty: FakeGetty, kit: Callable[..., Kit]
) -> None:
    getty.script("POST /v3/downloads/videos/ab-1", reply(200, {"uri": "https://d.example/v"}))
    await kit().client.download(Asset(id="ab-1", asset_type="video", size="hd1"))
    (post,) = getty.hits("POST", "/v3/downloads/videos/ab-1")
    assert post.body == b""
    assert post.query["size"] == "hd1"


async def test_auto_download_takes_the_303_location_without_following_it(
    getty: FakeGetty, kit: Callable[..., Kit]
) -> None:
    location = f"{getty.url}/delivery/x.jpg?sig=1"
    getty.script("POST /v3/downloads/images/123", reply(303, headers={"Location": location}))
    grant = await kit(auto_download=True).client.download(ASSET)
    assert grant.uri == location
    assert getty.hits("POST", "/")[0].query["auto_download"] == "true"
    assert getty.hits("GET", "/delivery") == []


async def test_401_refreshes_the_token_and_retries_exactly_once(
    getty: FakeGetty, kit: Callable[..., Kit]
) -> None:
    getty.script(
        "POST /v3/downloads/images/123",
        reply(401, {"message": "Unauthorized"}),
        reply(200, {"uri": "https://d.example/x"}),
    )
    await kit().client.download(ASSET)
    posts = getty.hits("POST", "/v3/downloads")
    assert [p.headers["Authorization"] for p in posts] == ["Bearer tok-1", "Bearer tok-2"]
    assert getty.tokens_issued == 2


async def test_second_401_raises_authentication_error_after_two_posts(
    getty: FakeGetty, kit: Callable[..., Kit]
) -> None:
    getty.defaults["POST"] = reply(401, {"message": "Unauthorized"})
    with pytest.raises(AuthenticationError, match="401"):
        await kit().client.download(ASSET)
    assert len(getty.hits("POST", "/v3/downloads")) == 2


async def test_5xx_on_download_post_may_have_spent_and_is_sent_once(
    getty: FakeGetty, kit: Callable[..., Kit]
) -> None:
    getty.defaults["POST"] = reply(502, {"message": "Bad Gateway"})
    with pytest.raises(ServerError) as caught:
        await kit().client.download(ASSET)
    assert caught.value.may_have_spent
    assert len(getty.hits("POST", "/v3/downloads")) == 1


async def test_connection_lost_after_sending_post_may_have_spent_and_is_sent_once(
    getty: FakeGetty, kit: Callable[..., Kit]
) -> None:
    getty.defaults["POST"] = drop_connection
    with pytest.raises(ReadError) as caught:
        await kit().client.download(ASSET)
    assert caught.value.may_have_spent
    assert len(getty.hits("POST", "/v3/downloads")) == 1


async def test_200_without_uri_may_have_spent(getty: FakeGetty, kit: Callable[..., Kit]) -> None:
    getty.script("POST /v3/downloads/images/123", reply(200, {"nothing": 1}))
    with pytest.raises(ApiError) as caught:
        await kit().client.download(ASSET)
    assert caught.value.may_have_spent


async def test_429_on_a_download_slows_the_limiter_and_is_raised_after_one_try(
    getty: FakeGetty, kit: Callable[..., Kit]
) -> None:
    """A spending POST is sent once per call: the acquirer owns its retries (each try is one
    purchase with its own intent), so the client must not loop on it behind its back."""
    getty.script(
        "POST /v3/downloads/images/123",
        reply(429, {"message": QPS}, headers={"X-Error-Detail": QPS}),
        reply(200, {"uri": "https://d.example/x"}),
    )
    k = kit(rate=8.0)
    with pytest.raises(RateLimitedError):
        await k.client.download(ASSET)
    assert len(getty.hits("POST", "/v3/downloads")) == 1
    assert k.limiter.current_rate is not None and k.limiter.current_rate < 8.0
    assert (await k.client.download(ASSET)).uri == "https://d.example/x"


async def test_legacy_403_qps_limit_is_throttling_and_retried(
    getty: FakeGetty, kit: Callable[..., Kit]
) -> None:
    getty.script(
        "GET /v3/products",
        reply(403, {"message": QPS}, headers={"X-Error-Detail": QPS}),
        reply(200, {"products": []}),
    )
    assert await kit().client.products() == []
    assert len(getty.hits("GET", "/v3/products")) == 2


async def test_overage_limit_reached_is_quota_exceeded_and_not_retried(
    getty: FakeGetty, kit: Callable[..., Kit]
) -> None:
    getty.defaults["POST"] = reply(
        403, {"ErrorCode": "OverageLimitReached", "ErrorMessage": "Overage limit reached"}
    )
    with pytest.raises(QuotaExceededError) as caught:
        await kit().client.download(ASSET)
    assert str(caught.value) == (
        "POST /v3/downloads/images/123: 403 OverageLimitReached: Overage limit reached"
    )
    assert len(getty.hits("POST", "/v3/downloads")) == 1


async def test_image_not_found_is_not_found_error_with_code(
    getty: FakeGetty, kit: Callable[..., Kit]
) -> None:
    getty.defaults["POST"] = reply(
        404, {"ErrorCode": "ImageNotFound", "ErrorMessage": "Image not found: 123"}
    )
    with pytest.raises(NotFoundError) as caught:
        await kit().client.download(ASSET)
    assert caught.value.code == "ImageNotFound"
    assert not caught.value.may_have_spent


async def test_no_secret_in_errors_even_when_the_server_echoes_them(
    getty: FakeGetty, kit: Callable[..., Kit]
) -> None:
    echo = f"bad key {KEY} token tok-1 secret {SECRET}"
    getty.defaults["POST"] = reply(400, {"ErrorCode": "InvalidRequest", "ErrorMessage": echo})
    getty.defaults["GET"] = reply(500, {"message": echo})
    k = kit()
    errors: list[BulkGettyError] = []
    for call in (k.client.download(ASSET), k.client.products()):
        with pytest.raises(BulkGettyError) as caught:
            await call
        errors.append(caught.value)
    for error in errors:
        for secret in (KEY, SECRET, "tok-1"):
            assert secret not in str(error)
        assert "[redacted]" in str(error)


# --- reads -------------------------------------------------------------------------------


async def test_get_is_retried_on_5xx(getty: FakeGetty, kit: Callable[..., Kit]) -> None:
    getty.script("GET /v3/products", reply(503), reply(500), reply(200, {"products": []}))
    assert await kit().client.products() == []
    assert len(getty.hits("GET", "/v3/products")) == 3


async def test_products_are_parsed(getty: FakeGetty, kit: Callable[..., Kit]) -> None:
    product = {
        "id": 12345,
        "type": "premiumaccess",
        "name": "Premium Access",
        "status": "active",
        "download_limit": 1000,
        "downloads_remaining": 742,
        "download_limit_duration": "Monthly",
        "download_limit_reset_utc_date": "2026-12-01T00:00:00Z",
        "overage": {"limit": 100, "remaining": 90},
    }
    getty.script("GET /v3/products", reply(200, {"products": [product, {"id": 7, "type": "x"}]}))
    got = await kit().client.products()
    assert got[0] == ProductInfo(
        12345, "premiumaccess", "Premium Access", "active", 1000, 742, "Monthly",
        "2026-12-01T00:00:00Z", 90,
    )  # fmt: skip
    assert got[1] == ProductInfo(7, "x", None, None, None, None, None, None, None)


def history_page(start: int, count: int, total: int) -> dict[str, Any]:
    items = [
        {
            "id": str(n),
            "asset_type": "image",
            "date_downloaded": "2026-11-20T18:02:11Z",
            "product_type": "premiumaccess",
            "product_id": 12345,
            "size_name": "4k",
        }
        for n in range(start, start + count)
    ]
    return {"result_count": total, "downloads": items}


async def test_downloads_history_reads_all_pages(getty: FakeGetty, kit: Callable[..., Kit]) -> None:
    getty.script(
        "GET /v3/downloads",
        reply(200, history_page(0, 100, 250)),
        reply(200, history_page(100, 100, 250)),
        reply(200, history_page(200, 50, 250)),
    )
    items = [
        i
        async for i in kit().client.downloads(
            date_from="2026-01-01", product_type="premiumaccess", company_downloads=True
        )
    ]
    assert [i.id for i in items] == [str(n) for n in range(250)]
    assert items[0] == HistoryItem(
        "0", "image", "2026-11-20T18:02:11Z", "premiumaccess", 12345, "4k"
    )
    pages = getty.hits("GET", "/v3/downloads")
    assert [p.query["page"] for p in pages] == ["1", "2", "3"]
    assert pages[0].query == {
        "page": "1",
        "page_size": "100",
        "date_from": "2026-01-01",
        "product_type": "premiumaccess",
        "company_downloads": "true",
    }


async def test_downloads_history_stops_at_result_count_on_a_full_last_page(
    getty: FakeGetty, kit: Callable[..., Kit]
) -> None:
    getty.script("GET /v3/downloads", reply(200, history_page(0, 100, 100)))
    assert len([i async for i in kit().client.downloads()]) == 100
    assert len(getty.hits("GET", "/v3/downloads")) == 1


async def test_asset_download_history_is_parsed(getty: FakeGetty, kit: Callable[..., Kit]) -> None:
    body = {
        "id": "ab-1",
        "downloads": [
            {
                "date_downloaded": "2026-11-20T18:02:11Z",
                "asset_type": "video",
                "product_type": "premiumaccess",
                "product_id": "12345",
            }
        ],
    }
    getty.script("GET /v3/videos/ab-1/downloadhistory", reply(200, body))
    got = await kit().client.asset_download_history("video", "ab-1")
    assert got == [
        HistoryItem("ab-1", "video", "2026-11-20T18:02:11Z", "premiumaccess", 12345, None)
    ]


async def test_asset_download_history_of_unknown_asset_is_not_found(
    getty: FakeGetty, kit: Callable[..., Kit]
) -> None:
    getty.defaults["GET"] = reply(404, {"ErrorCode": "ImageNotFound", "ErrorMessage": "nope"})
    with pytest.raises(NotFoundError, match="GET /v3/images/9/downloadhistory: 404 ImageNotFound"):
        await kit().client.asset_download_history("image", "9")


def search_page(start: int, count: int) -> dict[str, Any]:
    return {
        "images": [
            {
                "id": str(n),
                "largest_downloads": [{"product_type": "easyaccess", "product_id": "77"}],
            }
            for n in range(start, start + count)
        ]
    }


async def test_search_uses_an_allowed_page_size_and_stops_at_the_limit(
    getty: FakeGetty, kit: Callable[..., Kit]
) -> None:
    getty.script("GET /v3/search/images", reply(200, search_page(0, 10)))
    got = [r async for r in kit().client.search("cats", limit=7)]
    assert got == [(str(n), "easyaccess", 77) for n in range(7)]
    (seen,) = getty.hits("GET", "/v3/search/images")
    assert seen.query == {
        "phrase": "cats",
        "fields": "largest_downloads",
        "page": "1",
        "page_size": "10",
    }


async def test_search_pages_until_the_limit_or_a_short_page(
    getty: FakeGetty, kit: Callable[..., Kit]
) -> None:
    getty.script(
        "GET /v3/search/images",
        reply(200, search_page(0, 100)),
        reply(200, {"images": [{"id": "x", "largest_downloads": []}]}),
    )
    got = [r async for r in kit().client.search("dogs", limit=500)]
    assert len(got) == 101
    assert got[-1] == ("x", None, None)
    assert [s.query["page"] for s in getty.hits("GET", "/v3/search")] == ["1", "2"]


# --- envelopes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "kind", "code", "text"),
    [
        (400, {"ErrorCode": "InvalidRequest", "ErrorMessage": "bad"}, ApiError, "InvalidRequest",
         "GET /x: 400 InvalidRequest: bad"),
        (401, {"message": "Unauthorized"}, AuthenticationError, None, "GET /x: 401: Unauthorized"),
        (401, {"error": "invalid_client", "error_description": "who?"}, AuthenticationError,
         "invalid_client", "GET /x: 401 invalid_client: who?"),
        (404, {"code": "ImageNotFound", "message": "Image not found: 1"}, NotFoundError,
         "ImageNotFound", "GET /x: 404 ImageNotFound: Image not found: 1"),
        (403, {"message": "Forbidden"}, AuthenticationError, None, "GET /x: 403: Forbidden"),
        (401, {"ErrorCode": "OverageLimitReached"}, QuotaExceededError, "OverageLimitReached",
         "GET /x: 401 OverageLimitReached"),
        (429, {"message": QPS}, RateLimitedError, None, f"GET /x: 429: {QPS}"),
        (500, {"ErrorCode": "SystemError"}, ServerError, "SystemError", "GET /x: 500 SystemError"),
        (502, b"<html>gateway</html>", ServerError, None, "GET /x: 502"),
        (418, b"", ApiError, None, "GET /x: 418"),
    ],
)  # fmt: skip
def test_each_envelope_shape_maps_into_the_error_tree(
    status: int, body: Any, kind: type[ApiError], code: str | None, text: str
) -> None:
    import orjson

    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    error = error_from_response("GET /x", status, {}, raw)
    assert type(error) is kind
    assert error.code == code
    assert error.status == status
    assert str(error) == text


def test_legacy_403_with_qps_header_is_rate_limited() -> None:
    error = error_from_response("GET /x", 403, {"X-Error-Detail": QPS}, b"")
    assert isinstance(error, RateLimitedError)
