"""The sandbox answers as Getty's documented API does, for scripts written against it.

JSON error envelopes everywhere, the four search variants, images and videos by ids, a
catalogue that knows which ids exist (unknown ones 404 without spending), `fields` and the
field sets, heights limited to the asset's `download_sizes`, absolute URIs that follow the
host the client used, and `--require-user-token` / `--catalogue` through the CLI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bulkgetty.sandbox import Sandbox, SandboxConfig, SandboxThread
from bulkgetty.sandbox.media import IMAGE_HEIGHTS
from tests.harness import clean_env, cli, grant_env, report, write_ids
from tests.sandbox.test_sandbox_media import read_jpeg
from tests.sandbox.test_sandbox_tls import sandbox_cli

KEY = {"Api-Key": "sandbox-key"}


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    async with Sandbox() as sandbox:
        yield sandbox


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def get(session: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, str, Any]:
    async with session.get(url, headers=KEY, params=params) as resp:
        return resp.status, resp.content_type, await resp.json(content_type=None)


async def user_headers(session: aiohttp.ClientSession, sb: Sandbox) -> dict[str, str]:
    form = {
        "grant_type": "password",
        "client_id": sb.config.api_key,
        "client_secret": sb.config.api_secret,
        "username": sb.config.username,
        "password": sb.config.password,
    }
    async with session.post(f"{sb.api_url}/oauth2/token", data=form) as resp:
        token = (await resp.json())["access_token"]
    return {**KEY, "Authorization": f"Bearer {token}"}


# --- envelopes ---


async def test_unknown_route_and_method_answer_json_envelopes(sb: Sandbox, session) -> None:
    status, kind, body = await get(session, f"{sb.api_url}/v3/no/such/route")
    assert (status, kind, body) == (404, "application/json", {"message": "Not Found"})
    async with session.delete(f"{sb.api_url}/v3/products", headers=KEY) as resp:
        assert resp.status == 405 and resp.content_type == "application/json"
        assert await resp.json() == {"message": "Method Not Allowed"}


# --- search ---


@pytest.mark.parametrize("plural", ["images", "videos"])
async def test_four_search_variants_split_creative_and_editorial(
    sb: Sandbox, session, plural: str
) -> None:
    url = f"{sb.api_url}/v3/search/{plural}"
    fields = "id,asset_family"
    _, _, both = await get(session, url, phrase="", fields=fields, page_size="100")
    _, _, creative = await get(session, f"{url}/creative", fields=fields, sort_order="newest")
    _, _, editorial = await get(session, f"{url}/editorial", fields=fields, orientations="square")
    assert creative["result_count"] + editorial["result_count"] == both["result_count"] == 300
    assert {i["asset_family"] for i in creative[plural]} == {"creative"}
    assert {i["asset_family"] for i in editorial[plural]} == {"editorial"}


async def test_search_largest_downloads_and_fields(sb: Sandbox, session) -> None:
    url = f"{sb.api_url}/v3/search/images/creative"
    _, _, body = await get(session, url, fields="id,title,largest_downloads", page_size="3")
    item = body["images"][0]
    assert set(item) == {"id", "title", "largest_downloads"}
    assert item["largest_downloads"][0]["uri"] == f"{sb.api_url}/v3/downloads/images/{item['id']}"


async def test_default_fields_are_the_summary_set(sb: Sandbox, session) -> None:
    _, _, body = await get(session, f"{sb.api_url}/v3/search/videos", page_size="1")
    assert set(body["videos"][0]) == {
        "id",
        "asset_family",
        "caption",
        "collection_code",
        "collection_name",
        "display_sizes",
        "license_model",
        "max_dimensions",
        "title",
    }


# --- by id, by ids ---


@pytest.mark.parametrize("plural", ["images", "videos"])
async def test_by_ids_lists_records_and_the_ids_not_found(
    sb: Sandbox, session, plural: str
) -> None:
    status, _, body = await get(
        session, f"{sb.api_url}/v3/{plural}", ids="1167612765,no-such-asset,200261415-001"
    )
    assert status == 200
    assert [i["id"] for i in body[plural]] == ["1167612765", "200261415-001"]
    assert body[f"{plural}_not_found"] == ["no-such-asset"]
    _, _, one = await get(session, f"{sb.api_url}/v3/{plural}/1167612765", fields="detail_set")
    assert {"artist", "copyright", "date_created", "title"} <= set(one[plural][0])


async def test_display_sizes_uris_serve_decodable_jpegs(sb: Sandbox, session) -> None:
    _, _, body = await get(session, f"{sb.api_url}/v3/images/42", fields="display_set")
    sizes = body["images"][0]["display_sizes"]
    assert {d["name"] for d in sizes} == {"comp", "preview", "thumb"}
    for d in sizes:
        async with session.get(d["uri"]) as resp:
            assert resp.status == 200 and resp.content_type == "image/jpeg"
            assert read_jpeg(await resp.read()).height > 0


async def test_download_sizes_list_exactly_the_heights_sold(sb: Sandbox, session) -> None:
    headers = await user_headers(session, sb)
    url = f"{sb.api_url}/v3/images/42?fields=download_sizes,max_dimensions"
    async with session.get(url, headers=headers) as resp:
        record = (await resp.json())["images"][0]
    assert [s["height"] for s in record["download_sizes"]] == list(IMAGE_HEIGHTS)
    assert record["max_dimensions"]["height"] == IMAGE_HEIGHTS[-1]


# --- spending ---


async def test_unknown_ids_404_without_spending(sb: Sandbox, session) -> None:
    headers = await user_headers(session, sb)
    before = sb.remaining
    for plural, code in (("images", "ImageNotFound"), ("videos", "VideoNotFound")):
        url = f"{sb.api_url}/v3/downloads/{plural}/no-such-image"
        async with session.post(url, headers=headers) as resp:
            assert resp.status == 404
            assert (await resp.json())["ErrorCode"] == code
    assert sb.ledger == [] and sb.remaining == before


async def test_a_height_not_in_download_sizes_is_404_without_spending(sb: Sandbox, session) -> None:
    headers = await user_headers(session, sb)
    url = f"{sb.api_url}/v3/downloads/images/42"
    async with session.post(url, headers=headers, params={"height": "777"}) as resp:
        assert resp.status == 404
        assert (await resp.json())["ErrorCode"] == "FileDownloadSizeNotFound"
    assert sb.ledger == []
    params = {"height": "612", "auto_download": "false"}
    async with session.post(url, headers=headers, params=params) as resp:
        uri = (await resp.json())["uri"]
    async with session.get(uri) as resp:
        assert read_jpeg(await resp.read()).height == 612


async def test_a_catalogue_is_exactly_the_ids_that_exist(session) -> None:
    async with Sandbox(SandboxConfig(catalogue=frozenset({"111", "222"}))) as sb:
        _, _, found = await get(session, f"{sb.api_url}/v3/search/images")
        assert sorted(i["id"] for i in found["images"]) == ["111", "222"]
        _, _, by_ids = await get(session, f"{sb.api_url}/v3/images", ids="111,333")
        assert by_ids["images_not_found"] == ["333"]


async def test_absolute_uris_follow_the_host_the_client_used(sb: Sandbox, session) -> None:
    local = sb.api_url.replace("127.0.0.1", "localhost")
    url = f"{local}/v3/search/images"
    _, _, body = await get(session, url, fields="largest_downloads,thumb", page_size="1")
    item = body["images"][0]
    assert item["largest_downloads"][0]["uri"].startswith(f"{local}/v3/downloads/images/")
    assert item["display_sizes"][0]["uri"].startswith(f"{local}/media/")
    headers = await user_headers(session, sb)
    post = f"{local}/v3/downloads/images/42?auto_download=false"
    async with session.post(post, headers=headers) as resp:
        uri = (await resp.json())["uri"]
    assert uri.startswith("http://localhost:")


# --- through the CLI ---


def test_require_user_token_refuses_client_credentials_and_bulkgetty_names_the_grant(
    tmp_path: Path,
) -> None:
    with sandbox_cli("--require-user-token") as (_, exports, _):
        env = clean_env(exports)
        del env["GETTY_USERNAME"], env["GETTY_PASSWORD"]
        manifest = write_ids(tmp_path / "ids.txt", ["9810001"])
        done = cli("run", str(manifest), "--out", str(tmp_path / "o"), env=env)
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert "UserTokenRequired" in line and "GETTY_USERNAME and GETTY_PASSWORD" in line
        user = cli("run", str(manifest), "--out", str(tmp_path / "o"), env=clean_env(exports))
        assert user.returncode == 0, user.stderr


def test_sandbox_catalogue_file_makes_other_ids_not_found(tmp_path: Path) -> None:
    catalogue = tmp_path / "catalogue.txt"
    catalogue.write_text("# my ids\n1167612765\n200261415-001\n")
    with sandbox_cli("--catalogue", str(catalogue)) as (_, exports, _):
        manifest = write_ids(tmp_path / "ids.txt", ["1167612765", "9810001"])
        done = cli("run", str(manifest), "--out", str(tmp_path / "o"), env=clean_env(exports))
        rows = {r["id"]: r for r in report(tmp_path / "o")}
        assert rows["1167612765"]["status"] == "downloaded"
        assert rows["9810001"]["status"] == "failed"
        assert "ImageNotFound" in rows["9810001"]["error"]
        assert done.returncode == 1 and "1 downloads spent" in done.stdout


def test_client_credentials_can_download_by_default(tmp_path: Path) -> None:
    with SandboxThread() as sb:
        manifest = write_ids(tmp_path / "ids.txt", ["9810001"])
        env = clean_env(grant_env(sb, "client_credentials"))
        done = cli("run", str(manifest), "--out", str(tmp_path / "o"), env=env)
        assert done.returncode == 0, done.stderr
