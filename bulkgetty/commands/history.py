"""`bulkgetty history`: the account's earlier downloads (`GET /v3/downloads`) as a manifest.

Every page is read (page_size 100, the API's maximum) within the documented filters; with no
dates the API covers its default 30 days. Each asset is written once, asking for what was
bought: the same product (type and id) and, where the history names it, the same size. So
`history --out m.csv` then `run m.csv` fetches those assets again (each POST spends a
download, as Getty's documentation says every call does).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bulkgetty.assets import PRODUCT_TYPES, Asset
from bulkgetty.commands.plan import PRODUCTS_NOT_FOR_THIS_KEY, PlanEstimate, estimate
from bulkgetty.errors import ApiError, AuthenticationError
from bulkgetty.getty.api import GettyClient, HistoryItem
from bulkgetty.stages.decide import Action, decide
from bulkgetty.stages.journal import Record
from bulkgetty.stages.manifest import write_manifest

__all__ = (
    "HistoryFilter",
    "Licensed",
    "account_licences",
    "history_asset",
    "history_to_manifest",
    "licensed_before",
    "relicensing_note",
    "unique_assets",
)

#: How far back `plan` and `run` look for earlier licences of a manifest's assets, read in
#: the API's documented 30-day windows (so any server answers them)...
LICENSED_LOOKBACK_DAYS = 90
_WINDOW_DAYS = 30
#: ...and at most this many downloads (100 a page): a huge account is read in part, and
#: the note says so.
LICENSED_MAX_ITEMS = 5_000

#: A video size name as manifests accept it (Getty's `download_sizes[].name`).
_VIDEO_SIZE = re.compile(r"[a-z0-9_]{1,32}")


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    """The documented filters of `GET /v3/downloads` (ISO 8601 dates)."""

    date_from: str | None = None
    date_to: str | None = None
    product_type: str | None = None
    company_downloads: bool = False


def history_asset(item: HistoryItem, *, with_product_id: bool = True) -> Asset | None:
    """The manifest row that buys this download again; None when it is not an image or video."""
    if item.asset_type not in ("image", "video") or not item.id:
        return None
    product_type = item.product_type if item.product_type in PRODUCT_TYPES else None
    product_id = item.product_id if with_product_id and product_type else None
    size_name = item.size_name or ""
    if item.asset_type == "image":
        height = int(size_name) if size_name.isdigit() and 0 < int(size_name) < 100_000 else None
        return Asset(item.id, "image", product_type, product_id, height=height)
    size = size_name if _VIDEO_SIZE.fullmatch(size_name) else None
    return Asset(item.id, "video", product_type, product_id, size=size)


def unique_assets(assets: Iterable[Asset | None]) -> list[Asset]:
    """Each identity once, first seen first (an asset bought twice is one row)."""
    seen: set[str] = set()
    out: list[Asset] = []
    for asset in assets:
        if asset is not None and asset.key not in seen:
            seen.add(asset.key)
            out.append(asset)
    return out


async def history_to_manifest(
    client: GettyClient, out: Path, filters: HistoryFilter = HistoryFilter()
) -> tuple[int, int]:
    """Write the history as a manifest in `out`'s format: (rows written, downloads read)."""
    with_product_id = out.suffix != ".txt"  # a .txt manifest carries ids only
    read = 0
    assets: list[Asset | None] = []
    async for item in client.downloads(
        date_from=filters.date_from,
        date_to=filters.date_to,
        product_type=filters.product_type,
        company_downloads=filters.company_downloads,
    ):
        read += 1
        assets.append(history_asset(item, with_product_id=with_product_id))
    return write_manifest(out, unique_assets(assets)), read


@dataclass(frozen=True, slots=True)
class Licensed:
    """Assets this account downloaded before, as far as its download history was read.

    Every `POST /v3/downloads` spends, also for an asset bought before (Getty documents no
    free re-download), so a manifest made from the history (`history --out`) would buy it
    all again: `plan` counts these and `run` says so before spending.
    """

    assets: frozenset[tuple[str, str]]
    #: The first day read (ISO date), and False when LICENSED_MAX_ITEMS cut the reading short.
    since: str
    complete: bool = True

    def __contains__(self, asset: object) -> bool:
        return isinstance(asset, Asset) and (asset.asset_type, asset.id) in self.assets

    def describe(self) -> str:
        scope = f"download history since {self.since}"
        return scope if self.complete else f"{scope}, latest {LICENSED_MAX_ITEMS} downloads only"


async def licensed_before(
    client: GettyClient, *, today: dt.date, days: int = LICENSED_LOOKBACK_DAYS
) -> Licensed:
    """Read the account's download history of the last `days` days (newest window first)."""
    found: set[tuple[str, str]] = set()
    read = 0
    first = today - dt.timedelta(days=days)
    end = today
    while end > first:
        start = max(first, end - dt.timedelta(days=_WINDOW_DAYS))
        async for item in client.downloads(date_from=start.isoformat(), date_to=end.isoformat()):
            read += 1
            if item.id and item.asset_type in ("image", "video"):
                found.add((item.asset_type, item.id))
            if read >= LICENSED_MAX_ITEMS:
                return Licensed(frozenset(found), start.isoformat(), complete=False)
        end = start - dt.timedelta(days=1)
    return Licensed(frozenset(found), first.isoformat())


async def account_licences(client: GettyClient) -> tuple[Licensed | None, str | None]:
    """(what the account licensed lately, None), or (None, why) when its history is closed
    to this key (a user token is needed, no agreement); refused credentials still raise."""
    try:
        return await licensed_before(client, today=dt.datetime.now(dt.UTC).date()), None
    except AuthenticationError as exc:
        if exc.code not in PRODUCTS_NOT_FOR_THIS_KEY:
            raise
        return None, str(exc)
    except ApiError as exc:
        return None, str(exc)


async def relicensing_note(
    client: GettyClient,
    records: Callable[[], Iterable[Record]],
    *,
    out_dir: Path,
    reacquire_expired: bool = False,
) -> str | None:
    """What a run is about to spend on assets this account licensed before, or None.

    `records()` gives the manifest's journal records (each call a fresh pass). The history is
    read only when the run would buy something, so a rerun of finished work asks nothing.
    """

    def plan(licensed: Licensed | None = None) -> PlanEstimate:
        return estimate(
            records(),
            now=time.time(),
            out_dir=out_dir,
            remaining=None,
            reacquire_expired=reacquire_expired,
            licensed=licensed,
        )

    def buys_any() -> bool:  # stops at the first purchase: a fresh run reads one row
        now = time.time()
        return any(
            decide(r, now=now, out_dir=out_dir, reacquire_expired=reacquire_expired).action
            is Action.ACQUIRE
            for r in records()
        )

    if not await asyncio.to_thread(buys_any):
        return None
    licensed, why = await account_licences(client)
    if licensed is None:
        return f"earlier licences of these assets could not be checked ({why})"
    if not licensed.assets:
        return None
    return (await asyncio.to_thread(plan, licensed)).relicensing_note(licensed)
