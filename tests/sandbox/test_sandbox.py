"""Conformance of the embedded Getty sandbox, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from bulkgetty.sandbox import (
    Faults,
    Product,
    Sandbox,
    SandboxConfig,
    SandboxThread,
    Variant,
    content,
    serve_forever,
    write_corpus,
)

pytestmark = pytest.mark.timeout(30)


@dataclass
class FakeClock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sandbox(clock: FakeClock) -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(clock=clock)) as sb:
        yield sb


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as s:
        yield s


async def get_token(
    session: aiohttp.ClientSession, sb: Sandbox, grant: str = "password", **extra: str
) -> dict[str, Any]:
    form = {
        "grant_type": grant,
        "client_id": sb.config.api_key,
        "client_secret": sb.config.api_secret,
        **extra,
    }
    if grant == "password":
        form.setdefault("username", sb.config.username)
        form.setdefault("password", sb.config.password)
    async with session.post(f"{sb.api_url}/oauth2/token", data=form) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def auth_headers(session: aiohttp.ClientSession, sb: Sandbox) -> dict[str, str]:
    token = await get_token(session, sb)
    return {"Api-Key": sb.config.api_key, "Authorization": f"Bearer {token['access_token']}"}


async def post_download(
    session: aiohttp.ClientSession,
    sb: Sandbox,
    asset_id: str,
    *,
    asset_type: str = "image",
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    hdrs = headers if headers is not None else await auth_headers(session, sb)
    query = {"auto_download": "false", **(params or {})}
    url = f"{sb.api_url}/v3/downloads/{asset_type}s/{asset_id}"
    async with session.post(
        url, headers=hdrs, params=query, data=data, allow_redirects=False
    ) as resp:
        text = await resp.text()
        body = json.loads(text) if text else None
        return resp.status, body, resp.headers


async def uri_for(session: aiohttp.ClientSession, sb: Sandbox, asset_id: str, **kwargs: Any) -> str:
    status, body, _ = await post_download(session, sb, asset_id, **kwargs)
    assert status == 200, body
    uri: str = body["uri"]
    return uri


async def fetch(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, aiohttp.typedefs.LooseHeaders]:
    async with session.get(url, headers=headers, allow_redirects=False) as resp:
        return resp.status, await resp.read(), resp.headers


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- OAuth ---


async def test_client_credentials_grant_returns_no_refresh_token(sandbox: Sandbox, session):
    body = await get_token(session, sandbox, "client_credentials")
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 1800
    assert "refresh_token" not in body


async def test_password_grant_returns_refresh_token(sandbox: Sandbox, session):
    body = await get_token(session, sandbox, "password")
    assert body["access_token"] and body["refresh_token"]


async def test_refresh_grant_mints_new_access_token(sandbox: Sandbox, session):
    first = await get_token(session, sandbox, "password")
    second = await get_token(
        session, sandbox, "refresh_token", refresh_token=first["refresh_token"]
    )
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] == first["refresh_token"]


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        (
            {"grant_type": "password", "username": "sandbox-user", "password": "x"},
            400,
            "unauthorized_client",
        ),
        ({"grant_type": "refresh_token", "refresh_token": "nope"}, 400, "invalid_grant"),
        ({"grant_type": "magic"}, 400, "unsupported_grant_type"),
        ({"grant_type": "client_credentials", "client_secret": "wrong"}, 401, "invalid_client"),
    ],
)
async def test_bad_grants_answer_oauth_errors(sandbox: Sandbox, session, form, status, error):
    data = {"client_id": "sandbox-key", "client_secret": "sandbox-secret", **form}
    async with session.post(f"{sandbox.api_url}/oauth2/token", data=data) as resp:
        assert resp.status == status
        body = await resp.json()
    assert body["error"] == error
    assert body["error_description"]


async def test_expires_in_as_string_option(clock: FakeClock, session):
    async with Sandbox(SandboxConfig(clock=clock, expires_in_as_string=True)) as sb:
        body = await get_token(session, sb, "client_credentials")
    assert body["expires_in"] == "1800"


async def test_token_expires_by_injected_clock(sandbox: Sandbox, session, clock: FakeClock):
    headers = await auth_headers(session, sandbox)
    url = f"{sandbox.api_url}/v3/products"
    async with session.get(url, headers=headers) as resp:
        assert resp.status == 200
    clock.now += 1801
    async with session.get(url, headers=headers) as resp:
        assert resp.status == 401
        assert await resp.json() == {"message": "Unauthorized"}


# --- auth ---


async def test_missing_api_key_is_401_unauthorized(sandbox: Sandbox, session):
    async with session.get(f"{sandbox.api_url}/v3/search/images") as resp:
        assert resp.status == 401
        assert await resp.json() == {"message": "Unauthorized"}


async def test_unknown_api_key_is_403_forbidden_exception(sandbox: Sandbox, session):
    url = f"{sandbox.api_url}/v3/search/images"
    async with session.get(url, headers={"Api-Key": "other"}) as resp:
        assert resp.status == 403
        assert resp.headers["x-amzn-errortype"] == "ForbiddenException"
        assert await resp.json() == {"message": "Forbidden"}


async def test_missing_bearer_on_download_has_www_authenticate(sandbox: Sandbox, session):
    status, _, headers = await post_download(
        session, sandbox, "123", headers={"Api-Key": "sandbox-key"}
    )
    assert status == 401
    assert headers["WWW-Authenticate"] == (
        'Bearer realm="Download",error="invalid_token",'
        'error_description="The access token is missing"'
    )


async def test_unknown_bearer_is_401(sandbox: Sandbox, session):
    headers = {"Api-Key": "sandbox-key", "Authorization": "Bearer forged"}
    status, body, _ = await post_download(session, sandbox, "123", headers=headers)
    assert (status, body) == (401, {"message": "Unauthorized"})


async def test_client_credentials_token_without_user_rights(clock: FakeClock, session):
    config = SandboxConfig(clock=clock, client_credentials_can_download=False)
    async with Sandbox(config) as sb:
        token = await get_token(session, sb, "client_credentials")
        headers = {"Api-Key": "sandbox-key", "Authorization": f"Bearer {token['access_token']}"}
        status, body, _ = await post_download(session, sb, "123", headers=headers)
    assert status == 401
    assert body["ErrorCode"] == "UserTokenRequired"


# --- downloads ---


async def test_post_without_auto_download_returns_uri(sandbox: Sandbox, session):
    status, body, _ = await post_download(session, sandbox, "200261415-001")
    assert status == 200
    assert body["uri"].startswith(sandbox.delivery_urls[0])


async def test_post_images_default_to_303(sandbox: Sandbox, session):
    headers = await auth_headers(session, sandbox)
    url = f"{sandbox.api_url}/v3/downloads/images/123"
    async with session.post(url, headers=headers, allow_redirects=False) as resp:
        assert resp.status == 303
        location = resp.headers["Location"]
    status, data, _ = await fetch(session, location)
    assert status == 200
    assert sha(data) == sandbox.expected("image", "123").sha256


async def test_post_videos_default_to_uri_json(sandbox: Sandbox, session):
    headers = await auth_headers(session, sandbox)
    url = f"{sandbox.api_url}/v3/downloads/videos/abc-9"
    async with session.post(url, headers=headers, allow_redirects=False) as resp:
        assert resp.status == 200
        assert "uri" in await resp.json()


@pytest.mark.parametrize("value", ["False", "FALSE", "false"])
async def test_booleans_are_case_insensitive(sandbox: Sandbox, session, value):
    status, body, _ = await post_download(
        session, sandbox, "1", params={"auto_download": value, "use_team_credits": "TRUE"}
    )
    assert status == 200 and "uri" in body


async def test_bad_boolean_is_400(sandbox: Sandbox, session):
    status, body, _ = await post_download(session, sandbox, "1", params={"auto_download": "yes"})
    assert status == 400 and body["ErrorCode"] == "InvalidParameterValue"


@pytest.mark.parametrize(
    "data", [None, b"", b"null", b'{"project_code": "PRJ-1", "download_notes": "n"}']
)
async def test_body_empty_null_or_object_is_accepted(sandbox: Sandbox, session, data):
    status, _, _ = await post_download(session, sandbox, "7", data=data)
    assert status == 200


async def test_malformed_body_is_400(sandbox: Sandbox, session):
    status, body, _ = await post_download(session, sandbox, "7", data=b"{not json")
    assert status == 400 and body["ErrorCode"] == "InvalidRequest"


async def test_dashed_and_lettered_ids_route(sandbox: Sandbox, session):
    for asset_id in ("200261415-001", "sb10064292t-001"):
        uri = await uri_for(session, sandbox, asset_id)
        status, _, headers = await fetch(session, uri)
        assert status == 200
        assert headers["Content-Disposition"] == f"attachment; filename=GettyImages-{asset_id}.jpg"


async def test_unknown_assets_are_404(clock: FakeClock, session):
    async with Sandbox(SandboxConfig(clock=clock, missing_ids=frozenset({"gone"}))) as sb:
        image = await post_download(session, sb, "gone")
        video = await post_download(session, sb, "gone", asset_type="video")
    assert (image[0], image[1]["ErrorCode"]) == (404, "ImageNotFound")
    assert (video[0], video[1]["ErrorCode"]) == (404, "VideoNotFound")


async def test_unknown_sizes_are_file_download_size_not_found(sandbox: Sandbox, session):
    image = await post_download(session, sandbox, "1", params={"height": "20000"})
    video = await post_download(session, sandbox, "1", asset_type="video", params={"size": "8k"})
    assert image[1]["ErrorCode"] == video[1]["ErrorCode"] == "FileDownloadSizeNotFound"
    assert image[0] == video[0] == 404


async def test_non_numeric_height_is_400(sandbox: Sandbox, session):
    status, _, _ = await post_download(session, sandbox, "1", params={"height": "big"})
    assert status == 400


async def test_variants_are_distinct_files(sandbox: Sandbox, session):
    uri = await uri_for(session, sandbox, "9", params={"height": "1024", "file_type": "eps"})
    status, data, headers = await fetch(session, uri)
    assert status == 200 and data.startswith(b"%!PS-Adobe")
    assert headers["Content-Type"] == "application/postscript"
    assert sha(data) == sandbox.expected("image", "9", height=1024, file_type="eps").sha256
    assert sha(data) != sandbox.expected("image", "9").sha256


async def test_video_content_is_mp4(sandbox: Sandbox, session):
    uri = await uri_for(session, sandbox, "v1", asset_type="video", params={"size": "hd1"})
    status, data, headers = await fetch(session, uri)
    assert status == 200 and data[4:8] == b"ftyp"
    assert headers["Content-Type"] == "video/mp4"
    assert sha(data) == sandbox.expected("video", "v1", size="hd1").sha256


async def test_unheld_product_type_is_403(sandbox: Sandbox, session):
    status, body, _ = await post_download(session, sandbox, "1", params={"product_type": "aigen"})
    assert (status, body["ErrorCode"]) == (403, "NoAccessToProductType")


async def test_quota_exhausts_exactly_at_limit(clock: FakeClock, session):
    config = SandboxConfig(clock=clock, products=(Product(7, "premiumaccess", 3),))
    async with Sandbox(config) as sb:
        headers = await auth_headers(session, sb)
        statuses = [
            (await post_download(session, sb, str(i), headers=headers))[0] for i in range(4)
        ]
        _, body, _ = await post_download(session, sb, "x1", headers=headers)
        assert statuses == [200, 200, 200, 403]
        assert body["ErrorCode"] == "OverageLimitReached"
        assert len(sb.ledger) == 3
        sb.reset_quota()
        assert (await post_download(session, sb, "x1", headers=headers))[0] == 200


async def test_ledger_counts_every_spend_including_repeats(sandbox: Sandbox, session):
    headers = await auth_headers(session, sandbox)
    for _ in range(2):
        await post_download(session, sandbox, "42", headers=headers)
    await post_download(
        session, sandbox, "42", headers=headers, params={"product_type": "editorialsubscription"}
    )
    assert sandbox.spends_by_asset()["image/42"] == 3
    spend = sandbox.ledger[-1]
    assert (spend.product_type, spend.product_id) == ("editorialsubscription", 1002)
    assert spend.key == "image/42?product_type=editorialsubscription"
    assert sandbox.remaining[1001] == 998


async def test_repeat_is_free_when_configured(clock: FakeClock, session):
    async with Sandbox(SandboxConfig(clock=clock, spend_on_repeat=False)) as sb:
        headers = await auth_headers(session, sb)
        for _ in range(3):
            await post_download(session, sb, "42", headers=headers)
        assert sb.remaining[1001] == 999
        assert sb.spends_by_asset()["image/42"] == 1


async def test_products_report_remaining(sandbox: Sandbox, session):
    headers = await auth_headers(session, sandbox)
    await post_download(session, sandbox, "1", headers=headers)
    async with session.get(f"{sandbox.api_url}/v3/products", headers=headers) as resp:
        products = (await resp.json())["products"]
    pa = next(p for p in products if p["type"] == "premiumaccess")
    assert (pa["id"], pa["download_limit"], pa["downloads_remaining"]) == (1001, 1000, 999)
    assert pa["download_limit_duration"] == "Monthly" and pa["overage"] is None


# --- history ---


async def history(
    session: aiohttp.ClientSession, sb: Sandbox, headers: dict[str, str], **params: str
) -> tuple[int, Any]:
    async with session.get(f"{sb.api_url}/v3/downloads", headers=headers, params=params) as resp:
        return resp.status, await resp.json()


async def test_history_pages_newest_first(sandbox: Sandbox, session, clock: FakeClock):
    headers = await auth_headers(session, sandbox)
    for i in range(5):
        clock.now += 60
        await post_download(session, sandbox, f"h{i}", headers=headers)
    status, body = await history(session, sandbox, headers, page="2", page_size="2")
    assert status == 200 and body["result_count"] == 5
    assert [d["id"] for d in body["downloads"]] == ["h2", "h1"]
    item = body["downloads"][0]
    assert item["asset_type"] == "image" and item["product_id"] == 1001
    assert "uri" not in item


async def test_history_default_window_is_30_days(sandbox: Sandbox, session, clock: FakeClock):
    headers = await auth_headers(session, sandbox)
    await post_download(session, sandbox, "old1", headers=headers)
    clock.now += 31 * 86400
    headers = await auth_headers(session, sandbox)
    await post_download(session, sandbox, "new1", headers=headers)
    _, body = await history(session, sandbox, headers)
    assert [d["id"] for d in body["downloads"]] == ["new1"]
    _, body = await history(session, sandbox, headers, date_from="2027-01-01")
    assert [d["id"] for d in body["downloads"]] == ["old1"]


async def test_history_filters_product_type(sandbox: Sandbox, session):
    headers = await auth_headers(session, sandbox)
    await post_download(session, sandbox, "a1", headers=headers)
    await post_download(
        session, sandbox, "b1", headers=headers, params={"product_type": "editorialsubscription"}
    )
    _, body = await history(session, sandbox, headers, product_type="editorialsubscription")
    assert [d["id"] for d in body["downloads"]] == ["b1"]


async def test_history_page_size_over_100_is_400(sandbox: Sandbox, session):
    headers = await auth_headers(session, sandbox)
    status, body = await history(session, sandbox, headers, page_size="101")
    assert (status, body["ErrorCode"]) == (400, "InvalidPageSize")


async def test_asset_download_history(sandbox: Sandbox, session):
    headers = await auth_headers(session, sandbox)
    await post_download(
        session,
        sandbox,
        "v-1",
        asset_type="video",
        headers=headers,
        data=b'{"project_code": "P"}',
    )
    url = f"{sandbox.api_url}/v3/videos/v-1/downloadhistory"
    async with session.get(url, headers=headers) as resp:
        body = await resp.json()
    assert body["id"] == "v-1"
    assert [d["project_code"] for d in body["downloads"]] == ["P"]


# --- search and metadata ---


async def test_search_with_largest_downloads(sandbox: Sandbox, session):
    url = f"{sandbox.api_url}/v3/search/images"
    params = {"phrase": "", "page_size": "50", "fields": "id,title,largest_downloads"}
    async with session.get(url, headers={"Api-Key": "sandbox-key"}, params=params) as resp:
        body = await resp.json()
    assert body["result_count"] == 300 and len(body["images"]) == 50
    item = body["images"][0]
    largest = item["largest_downloads"][0]
    assert largest["uri"] == f"{sandbox.api_url}/v3/downloads/images/{item['id']}"
    assert largest["product_type"] in {p.type for p in sandbox.config.products}
    assert any("-" in i["id"] for i in body["images"])


async def test_search_phrase_filters_deterministically(sandbox: Sandbox, session):
    url = f"{sandbox.api_url}/v3/search/videos"
    params = {"phrase": "sunset"}
    results = []
    for _ in range(2):
        async with session.get(url, headers={"Api-Key": "sandbox-key"}, params=params) as resp:
            results.append(await resp.json())
    assert results[0] == results[1]
    assert 0 < results[0]["result_count"] < 300
    assert all("sunset" in v["title"].lower() for v in results[0]["videos"])


async def test_download_sizes_are_estimates(sandbox: Sandbox, session):
    headers = await auth_headers(session, sandbox)
    url = f"{sandbox.api_url}/v3/images/5?fields=download_sizes"
    async with session.get(url, headers=headers) as resp:
        sizes = (await resp.json())["images"][0]["download_sizes"]
    exact = sandbox.expected("image", "5", height=1024).length
    estimate = next(s["bytes"] for s in sizes if s["height"] == 1024)
    assert 0 < estimate < exact


# --- rate limiting ---


async def test_over_qps_is_429_without_retry_after(clock: FakeClock, session):
    async with Sandbox(SandboxConfig(clock=clock, qps=2)) as sb:
        statuses = []
        for _ in range(6):
            async with session.get(
                f"{sb.api_url}/v3/search/images", headers={"Api-Key": "sandbox-key"}
            ) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert resp.headers["X-Error-Detail"] == (
                        "Account Over Queries Per Second Limit"
                    )
                    assert "Retry-After" not in resp.headers
                    assert await resp.json() == {"message": "Account Over Queries Per Second Limit"}
        assert 429 in statuses
        assert sb.stats.rejected_429 == statuses.count(429)


async def test_token_requests_count_toward_qps(clock: FakeClock, session):
    async with Sandbox(SandboxConfig(clock=clock, qps=1)) as sb:
        statuses = []
        for _ in range(3):
            form = {
                "grant_type": "client_credentials",
                "client_id": "sandbox-key",
                "client_secret": "sandbox-secret",
            }
            async with session.post(f"{sb.api_url}/oauth2/token", data=form) as resp:
                statuses.append(resp.status)
        assert 429 in statuses and sb.stats.token_requests == 3


# --- delivery ---


async def test_content_matches_expected_and_headers(sandbox: Sandbox, session):
    uri = await uri_for(session, sandbox, "123")
    status, data, headers = await fetch(session, uri)
    expected = sandbox.expected("image", "123")
    assert status == 200
    assert sha(data) == expected.sha256 and len(data) == expected.length
    assert data[:4] == b"\xff\xd8\xff\xe0"
    assert headers["Content-Length"] == str(expected.length)
    assert headers["Content-Type"] == "image/jpeg"
    assert headers["ETag"] == expected.etag and headers["ETag"].startswith('"')
    assert headers["Accept-Ranges"] == "bytes" and "Last-Modified" in headers
    assert 20_000 <= expected.length <= 400_000


async def test_size_override_is_exact(clock: FakeClock, session):
    async with Sandbox(SandboxConfig(clock=clock, sizes={"big1": 5 * 2**20 + 3})) as sb:
        uri = await uri_for(session, sb, "big1")
        _, data, _ = await fetch(session, uri)
        assert len(data) == 5 * 2**20 + 3
        assert sha(data) == sb.expected("image", "big1").sha256


async def test_head_returns_headers_only(sandbox: Sandbox, session):
    uri = await uri_for(session, sandbox, "123")
    async with session.head(uri) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(sandbox.expected("image", "123").length)
        assert await resp.read() == b""


async def test_uri_expires_by_clock_with_xml_403(sandbox: Sandbox, session, clock: FakeClock):
    uri = await uri_for(session, sandbox, "123")
    clock.now += 86_401
    status, data, headers = await fetch(session, uri)
    assert status == 403
    assert headers["Content-Type"].startswith("application/xml")
    assert b"<Code>AccessDenied</Code>" in data and b"Request has expired" in data


async def test_tampered_uri_is_403(sandbox: Sandbox, session):
    uri = await uri_for(session, sandbox, "123")
    for bad in (uri.replace("/123.jpg", "/124.jpg"), uri[:-1] + ("0" if uri[-1] != "0" else "1")):
        status, data, _ = await fetch(session, bad)
        assert status == 403 and b"AccessDenied" in data


async def test_range_requests(sandbox: Sandbox, session):
    uri = await uri_for(session, sandbox, "123")
    _, full, _ = await fetch(session, uri)
    n = len(full)
    for header, lo, hi in (
        ("bytes=10-99", 10, 100),
        ("bytes=100-", 100, n),
        ("bytes=-50", n - 50, n),
    ):
        status, data, headers = await fetch(session, uri, {"Range": header})
        assert status == 206
        assert data == full[lo:hi]
        assert headers["Content-Range"] == f"bytes {lo}-{hi - 1}/{n}"


async def test_unsatisfiable_range_is_416(sandbox: Sandbox, session):
    uri = await uri_for(session, sandbox, "123")
    n = sandbox.expected("image", "123").length
    status, _, headers = await fetch(session, uri, {"Range": f"bytes={n}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{n}"


async def test_if_range_mismatch_gives_full_200(sandbox: Sandbox, session):
    uri = await uri_for(session, sandbox, "123")
    _, _, headers = await fetch(session, uri)
    ok = await fetch(session, uri, {"Range": "bytes=5-", "If-Range": headers["ETag"]})
    stale = await fetch(session, uri, {"Range": "bytes=5-", "If-Range": '"stale"'})
    by_date = await fetch(session, uri, {"Range": "bytes=5-", "If-Range": headers["Last-Modified"]})
    assert ok[0] == 206 and by_date[0] == 206
    assert stale[0] == 200 and sha(stale[1]) == sandbox.expected("image", "123").sha256


async def test_delivery_records_headers_and_no_secrets(sandbox: Sandbox, session):
    uri = await uri_for(session, sandbox, "123")
    await fetch(session, uri, {"X-Probe": "1"})
    recorded = sandbox.stats.delivery_requests
    assert len(recorded) == 1
    assert recorded[0].origin == sandbox.delivery_urls[0]
    assert recorded[0].path == "/image/123.jpg" and recorded[0].method == "GET"
    assert recorded[0].headers["X-Probe"] == "1"
    assert not any("Authorization" in r.headers or "Api-Key" in r.headers for r in recorded)


# --- API faults ---


async def test_post_status_fault_that_spends(sandbox: Sandbox, session):
    sandbox.configure(faults=Faults(post_status={"f1": (503, 1, True)}))
    first = await post_download(session, sandbox, "f1")
    second = await post_download(session, sandbox, "f1")
    assert first[0] == 503 and second[0] == 200
    assert sandbox.spends_by_asset()["image/f1"] == 2


async def test_post_status_fault_that_does_not_spend(sandbox: Sandbox, session):
    sandbox.configure(faults=Faults(post_status={"f1": (500, 2, False)}))
    statuses = [(await post_download(session, sandbox, "f1"))[0] for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert sandbox.spends_by_asset()["image/f1"] == 1


async def test_post_hang_charges_before_hanging(sandbox: Sandbox, session):
    sandbox.configure(faults=Faults(post_hang={"slow1": 5.0}))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(post_download(session, sandbox, "slow1"), 0.5)
    assert sandbox.spends_by_asset()["image/slow1"] == 1


# --- delivery faults ---


@pytest.mark.parametrize("nbytes", [0, 10, 300_000])
async def test_close_after_truncates_then_recovers(sandbox: Sandbox, session, nbytes):
    sandbox.configure(faults=Faults(close_after={"c1": (nbytes, 1)}), sizes={"c1": 400_000})
    uri = await uri_for(session, sandbox, "c1")
    received = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with session.get(uri) as resp:
            async for chunk in resp.content.iter_any():
                received += chunk
    assert len(received) == nbytes
    _, data, _ = await fetch(session, uri)
    assert sha(data) == sandbox.expected("image", "c1").sha256


async def test_stall_after_pauses_body(sandbox: Sandbox, session):
    sandbox.configure(faults=Faults(stall_after={"s1": (500, 3.0, 1)}))
    uri = await uri_for(session, sandbox, "s1")
    async with session.get(uri) as resp:
        first = await resp.content.readexactly(500)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(resp.content.read(1), 0.3)
    length = sandbox.expected("image", "s1").length
    whole = b"".join(bytes(c) for c in content("image", "s1", Variant(), length, 0))
    assert first == whole[:500]


async def test_ignore_range_sends_whole_file(sandbox: Sandbox, session):
    sandbox.configure(faults=Faults(ignore_range={"r1": 1}))
    uri = await uri_for(session, sandbox, "r1")
    first = await fetch(session, uri, {"Range": "bytes=10-"})
    second = await fetch(session, uri, {"Range": "bytes=10-"})
    assert first[0] == 200 and "Content-Range" not in first[2]
    assert second[0] == 206


async def test_etag_change_changes_content(sandbox: Sandbox, session):
    sandbox.configure(faults=Faults(etag_change=frozenset({"e1"})))
    uri = await uri_for(session, sandbox, "e1")
    first = await fetch(session, uri)
    second = await fetch(session, uri, {"Range": "bytes=10-", "If-Range": first[2]["ETag"]})
    assert first[2]["ETag"] != second[2]["ETag"]
    assert second[0] == 200 and sha(second[1]) != sha(first[1])
    assert sha(second[1]) == sandbox.expected("image", "e1").sha256


async def test_wrong_content_range(sandbox: Sandbox, session):
    sandbox.configure(faults=Faults(wrong_content_range={"w1": 1}))
    uri = await uri_for(session, sandbox, "w1")
    status, data, headers = await fetch(session, uri, {"Range": "bytes=10-19"})
    assert status == 206 and len(data) == 10
    assert headers["Content-Range"].split("/")[0] != "bytes 10-19"


async def test_chunked_has_no_content_length(sandbox: Sandbox, session):
    sandbox.configure(faults=Faults(chunked=frozenset({"k1"})))
    uri = await uri_for(session, sandbox, "k1")
    status, data, headers = await fetch(session, uri)
    assert status == 200 and "Content-Length" not in headers
    assert headers["Transfer-Encoding"] == "chunked"
    assert sha(data) == sandbox.expected("image", "k1").sha256


async def test_length_mismatch_longer_declared_fails(sandbox: Sandbox, session):
    sandbox.configure(faults=Faults(length_mismatch={"m1": 100}))
    uri = await uri_for(session, sandbox, "m1")
    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch(session, uri)


async def test_length_mismatch_shorter_declared_sends_surplus(sandbox: Sandbox, session):
    sandbox.configure(faults=Faults(length_mismatch={"m1": -100}))
    uri = await uri_for(session, sandbox, "m1")
    target = uri.split("/", 3)[3]
    host, port = sandbox.delivery_urls[0].removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /{target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    length = sandbox.expected("image", "m1").length
    assert f"Content-Length: {length - 100}".encode() in head
    assert len(body) == length


async def test_redirect_chain_alternates_origins(sandbox: Sandbox, session):
    codes = (301, 302, 303, 307, 308)
    sandbox.configure(faults=Faults(redirects={"d1": codes}))
    url = await uri_for(session, sandbox, "d1")
    seen = []
    for _ in range(len(codes)):
        status, _, headers = await fetch(session, url)
        seen.append(status)
        url = headers["Location"]
    assert seen == list(codes)
    status, data, _ = await fetch(session, url)
    assert status == 200 and sha(data) == sandbox.expected("image", "d1").sha256
    origins = {r.origin for r in sandbox.stats.delivery_requests}
    assert origins == set(sandbox.delivery_urls)


async def test_redirect_loop_never_ends(sandbox: Sandbox, session):
    sandbox.configure(faults=Faults(redirect_loop=frozenset({"l1"})))
    url = await uri_for(session, sandbox, "l1")
    for _ in range(10):
        status, _, headers = await fetch(session, url)
        assert status == 302
        url = headers["Location"]


async def test_redirect_to_other_host_reaches_file(sandbox: Sandbox, session):
    port = sandbox.delivery_urls[1].rsplit(":", 1)[1]
    sandbox.configure(faults=Faults(redirect_to={"t1": f"http://localhost:{port}{{path}}"}))
    url = await uri_for(session, sandbox, "t1")
    status, _, headers = await fetch(session, url)
    assert status == 302 and headers["Location"].startswith(f"http://localhost:{port}/image/t1")
    status, data, _ = await fetch(session, headers["Location"])
    assert status == 200 and sha(data) == sandbox.expected("image", "t1").sha256


@pytest.mark.parametrize(
    "value",
    [
        "attachment; filename=../x.jpg",
        "attachment; filename=/etc/passwd",
        "attachment; filename*=UTF-8''na%C3%AFve.jpg",
        "attachment; filename=CON.jpg",
    ],
)
async def test_hostile_disposition(sandbox: Sandbox, session, value):
    sandbox.configure(faults=Faults(disposition={"h1": value}))
    _, _, headers = await fetch(session, await uri_for(session, sandbox, "h1"))
    assert headers["Content-Disposition"] == value


async def test_no_disposition(sandbox: Sandbox, session):
    sandbox.configure(faults=Faults(no_disposition=frozenset({"n1"})))
    _, _, headers = await fetch(session, await uri_for(session, sandbox, "n1"))
    assert "Content-Disposition" not in headers


async def test_expired_fault_always_403(sandbox: Sandbox, session):
    sandbox.configure(faults=Faults(expired=frozenset({"x1"})))
    status, data, _ = await fetch(session, await uri_for(session, sandbox, "x1"))
    assert status == 403 and b"Request has expired" in data


async def test_html_error_page(sandbox: Sandbox, session):
    sandbox.configure(faults=Faults(html_error={"p1": 1}))
    uri = await uri_for(session, sandbox, "p1")
    status, data, headers = await fetch(session, uri)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert data.startswith(b"<!DOCTYPE html>")
    assert (await fetch(session, uri))[2]["Content-Type"] == "image/jpeg"


async def test_delivery_status_fault(sandbox: Sandbox, session):
    sandbox.configure(faults=Faults(status={"s5": (502, 2)}))
    uri = await uri_for(session, sandbox, "s5")
    statuses = [(await fetch(session, uri))[0] for _ in range(3)]
    assert statuses == [502, 502, 200]


async def test_random_faults_are_deterministic(clock: FakeClock, session):
    faults = Faults(fault_rate=0.5, fault_kinds=("status",))
    results = []
    for _ in range(2):
        async with Sandbox(SandboxConfig(clock=clock, faults=faults)) as sb:
            statuses = []
            for i in range(20):
                statuses.append((await fetch(session, await uri_for(session, sb, f"r{i}")))[0])
            results.append(statuses)
    assert results[0] == results[1]
    assert 200 in results[0] and 503 in results[0]


async def test_bandwidth_cap_still_delivers_exact_bytes(clock: FakeClock, session):
    config = SandboxConfig(clock=clock, bandwidth=2_000_000, sizes={"b1": 300_000})
    async with Sandbox(config) as sb:
        _, data, _ = await fetch(session, await uri_for(session, sb, "b1"))
        assert sha(data) == sb.expected("image", "b1").sha256


# --- control surface, thread, corpus ---


async def test_control_state_and_reset_quota(sandbox: Sandbox, session):
    await post_download(session, sandbox, "q1")
    async with session.get(f"{sandbox.api_url}/__sandbox__/state") as resp:
        state = await resp.json()
    assert state["spends"] == {"image/q1": 1}
    assert state["token_requests"] == 1 and state["api_requests"] == 1
    assert state["remaining"]["1001"] == 999
    assert len(state["spend_times"]) == 1  # one charged POST, for rate figures
    async with session.post(f"{sandbox.api_url}/__sandbox__/reset_quota") as resp:
        assert resp.status == 200
    assert sandbox.remaining[1001] == 1000
    async with session.post(f"{sandbox.api_url}/__sandbox__/clear_history") as resp:
        assert resp.status == 200
    assert sandbox.spends_by_asset() == {}  # a fresh account: nothing in its history


def test_sandbox_thread_from_sync_code() -> None:
    with SandboxThread() as sb:
        env = sb.credentials_env()
        assert env["GETTY_API_URL"] == sb.api_url and env["GETTY_API_KEY"] == "sandbox-key"

        async def one_download() -> bytes:
            async with aiohttp.ClientSession() as s:
                form = {
                    "grant_type": "client_credentials",
                    "client_id": "sandbox-key",
                    "client_secret": "sandbox-secret",
                }
                async with s.post(f"{sb.api_url}/oauth2/token", data=form) as r:
                    tok = (await r.json())["access_token"]
                headers = {"Api-Key": "sandbox-key", "Authorization": f"Bearer {tok}"}
                url = f"{sb.api_url}/v3/downloads/images/55?auto_download=false"
                async with s.post(url, headers=headers) as r:
                    uri = (await r.json())["uri"]
                async with s.get(uri) as r:
                    return await r.read()

        data = asyncio.run(one_download())
        assert sha(data) == sb.expected("image", "55").sha256
        assert sb.spends_by_asset()["image/55"] == 1
        sb.reset_quota()
        assert sb.remaining[1001] == 1000


async def test_serve_forever_reports_ready(session):
    ready: asyncio.Future[Sandbox] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_forever(SandboxConfig(), "127.0.0.1", 0, ready.set_result))
    sb = await asyncio.wait_for(ready, 10)
    async with session.get(f"{sb.api_url}/__sandbox__/state") as resp:
        assert resp.status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_write_corpus_matches_served_files(tmp_path, clock: FakeClock, session):
    config = SandboxConfig(clock=clock, seed=7)
    items = [("image", "1-a"), ("video", "v1")]
    paths = write_corpus(tmp_path, items, config)
    async with Sandbox(config) as sb:
        for path, (asset_type, asset_id) in zip(paths, items, strict=True):
            assert sha(path.read_bytes()) == sb.expected(asset_type, asset_id).sha256
            uri = await uri_for(session, sb, asset_id, asset_type=asset_type)
            assert uri.split("?")[0].endswith("/" + path.relative_to(tmp_path).as_posix())


async def test_delivery_base_points_uris_elsewhere(clock: FakeClock, session):
    config = SandboxConfig(clock=clock, delivery_base="http://cdn.example:8080")
    async with Sandbox(config) as sb:
        uri = await uri_for(session, sb, "123")
    assert uri.startswith("http://cdn.example:8080/image/123.jpg?exp=")
