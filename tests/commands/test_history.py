"""history.py and search.py: the API's pages in, a manifest `run` accepts out."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bulkgetty.assets import Asset
from bulkgetty.commands import history
from bulkgetty.commands.history import (
    HistoryFilter,
    history_asset,
    history_to_manifest,
    licensed_before,
)
from bulkgetty.commands.search import search_to_manifest
from bulkgetty.errors import UsageError
from bulkgetty.getty.api import GettyClient, HistoryItem
from bulkgetty.getty.auth import Credentials
from bulkgetty.getty.connect import open_client
from bulkgetty.sandbox import Product, Sandbox, SandboxConfig
from bulkgetty.stages.manifest import ManifestDefaults, read_manifest


def item(
    asset_type: str, size: str | None, product_type: str | None = "premiumaccess"
) -> HistoryItem:
    return HistoryItem("123", asset_type, "2026-11-20T18:02:11Z", product_type, 1001, size)


def test_history_asset_keeps_product_and_size_bought() -> None:
    assert history_asset(item("image", "1024")) == Asset(
        "123", "image", "premiumaccess", 1001, 1024
    )
    assert history_asset(item("image", "x_large")) == Asset("123", "image", "premiumaccess", 1001)
    assert history_asset(item("video", "hd1")) == Asset(
        "123", "video", "premiumaccess", 1001, size="hd1"
    )
    assert history_asset(item("video", "HD 1080")) == Asset("123", "video", "premiumaccess", 1001)
    # "sandbox" is a history product type the download endpoint does not take.
    assert history_asset(item("image", None, "sandbox")) == Asset("123", "image")
    assert history_asset(item("image", None), with_product_id=False) == Asset(
        "123", "image", "premiumaccess"
    )
    assert history_asset(item("aigen", None)) is None


@pytest.fixture
async def client() -> AsyncIterator[tuple[Sandbox, GettyClient]]:
    products = (Product(1001, "premiumaccess", 500), Product(1002, "editorialsubscription", 500))
    async with Sandbox(SandboxConfig(products=products)) as sb:
        creds = Credentials.from_env(sb.credentials_env())
        async with open_client(creds, sb.api_url, api_rate=None) as c:
            yield sb, c


async def test_history_reads_every_page_and_writes_each_asset_once(
    client: tuple[Sandbox, GettyClient], tmp_path: Path
) -> None:
    _, c = client
    for i in range(230):
        kind = "premiumaccess" if i % 2 else "editorialsubscription"
        await c.download(Asset(str(5_000_000 + i % 210), product_type=kind, height=512))
    out = tmp_path / "h.csv"
    written, read = await history_to_manifest(c, out)
    assert (written, read) == (210, 230)  # three pages; 20 ids were bought twice
    rows = [r.asset for r in read_manifest(out)]
    assert {a.id for a in rows} == {str(5_000_000 + i) for i in range(210)}
    assert all(a.height == 512 and a.product_id in (1001, 1002) for a in rows)
    only = tmp_path / "pa.jsonl"
    written, _ = await history_to_manifest(c, only, HistoryFilter(product_type="premiumaccess"))
    types = {json.loads(line)["product_type"] for line in only.read_text().splitlines()}
    assert types == {"premiumaccess"} and written == 105  # odd i below 210
    future = tmp_path / "none.csv"
    assert await history_to_manifest(c, future, HistoryFilter(date_from="2099-01-01")) == (0, 0)


async def test_history_to_txt_refuses_mixed_products_and_keeps_the_old_file(
    client: tuple[Sandbox, GettyClient], tmp_path: Path
) -> None:
    _, c = client
    await c.download(Asset("6000001", product_type="premiumaccess"))
    await c.download(Asset("6000002", product_type="editorialsubscription"))
    out = tmp_path / "h.txt"
    out.write_text("old\n")
    with pytest.raises(UsageError, match=r"write \.csv or \.jsonl"):
        await history_to_manifest(c, out)
    assert out.read_text() == "old\n"


@pytest.mark.parametrize("limit", [1, 7, 120])
async def test_search_writes_limit_rows_with_their_product(
    client: tuple[Sandbox, GettyClient], tmp_path: Path, limit: int
) -> None:
    _, c = client
    out = tmp_path / "s.csv"
    assert await search_to_manifest(c, "", out, limit=limit) == limit
    rows = [r.asset for r in read_manifest(out)]
    assert len(rows) == limit
    assert all(a.product_type in ("premiumaccess", "editorialsubscription") for a in rows)
    assert all(a.product_id in (1001, 1002) for a in rows)


async def test_search_videos_to_txt_reads_back_with_the_comment_options(
    client: tuple[Sandbox, GettyClient], tmp_path: Path
) -> None:
    sb, c = client
    sb.configure(products=(Product(1001, "premiumaccess", 10),))
    out = tmp_path / "v.txt"
    assert await search_to_manifest(c, "city", out, asset_type="video", limit=5) == 5
    first = out.read_text().splitlines()[0]
    assert (
        first
        == "# bulkgetty manifest: read back with --asset-type video --product-type premiumaccess"
    )
    defaults = ManifestDefaults(asset_type="video", product_type="premiumaccess")
    assert all(r.asset.asset_type == "video" for r in read_manifest(out, defaults))
    with pytest.raises(UsageError, match="--limit"):
        await search_to_manifest(c, "city", out, limit=0)


async def test_licensed_before_reads_30_day_windows_back_to_the_lookback(
    client: tuple[Sandbox, GettyClient],
) -> None:
    """Spends 10 and 50 days ago are found (the second in the second window); 200 days ago is
    past the lookback. Each window is one the API answers by its documented default."""
    sb, c = client
    now = time.time()
    for asset_id, days_ago in (("701", 10), ("702", 50), ("703", 200)):
        sb.configure(clock=lambda d=days_ago: now - d * 86_400)
        await c.download(Asset(asset_id))
    sb.configure(clock=time.time)
    today = dt.datetime.now(dt.UTC).date()
    licensed = await licensed_before(c, today=today)
    assert licensed.assets == {("image", "701"), ("image", "702")}
    assert licensed.complete and licensed.since == (today - dt.timedelta(days=90)).isoformat()
    assert Asset("702", product_type="premiumaccess") in licensed
    assert Asset("703") not in licensed and Asset("701", "video") not in licensed


async def test_licensed_before_stops_at_its_cap_and_says_so(
    client: tuple[Sandbox, GettyClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, c = client
    for i in range(5):
        await c.download(Asset(str(710 + i)))
    monkeypatch.setattr(history, "LICENSED_MAX_ITEMS", 3)
    licensed = await licensed_before(c, today=dt.datetime.now(dt.UTC).date())
    assert len(licensed.assets) == 3 and not licensed.complete
    assert "latest 3 downloads only" in licensed.describe()
