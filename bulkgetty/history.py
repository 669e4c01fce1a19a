"""`bulkgetty history`: the account's earlier downloads (`GET /v3/downloads`) as a manifest.

Every page is read (page_size 100, the API's maximum) within the documented filters; with no
dates the API covers its default 30 days. Each asset is written once, asking for what was
bought: the same product (type and id) and, where the history names it, the same size. So
`history --out m.csv` then `run m.csv` fetches those assets again (each POST spends a
download, as Getty's documentation says every call does).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .api import GettyClient, HistoryItem
from .assets import PRODUCT_TYPES, Asset
from .manifest import write_manifest

__all__ = ("HistoryFilter", "history_asset", "history_to_manifest", "unique_assets")

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
