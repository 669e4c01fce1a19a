"""`bulkgetty search`: `/v3/search/images|videos?fields=largest_downloads` as a manifest.

`largest_downloads` names the product each result would be downloaded under; the manifest
keeps it (type, and id in .csv/.jsonl) so that `run` charges the product the search showed.
Results outside the account's agreements come without a product and are written without one.
"""

from __future__ import annotations

from pathlib import Path

from bulkgetty.assets import PRODUCT_TYPES, Asset, AssetType
from bulkgetty.commands.history import unique_assets
from bulkgetty.errors import UsageError
from bulkgetty.getty.api import GettyClient
from bulkgetty.stages.manifest import write_manifest

__all__ = ("search_to_manifest",)


async def search_to_manifest(
    client: GettyClient,
    phrase: str,
    out: Path,
    *,
    asset_type: AssetType = "image",
    limit: int = 100,
) -> int:
    """Write up to `limit` results for `phrase` into `out` (format by extension); row count."""
    if limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    with_product_id = out.suffix != ".txt"
    assets: list[Asset | None] = []
    async for asset_id, product_type, product_id in client.search(
        phrase, asset_type=asset_type, limit=limit
    ):
        kind = product_type if product_type in PRODUCT_TYPES else None
        pid = product_id if with_product_id and kind else None
        assets.append(Asset(asset_id, asset_type, kind, pid))
    return write_manifest(out, unique_assets(assets))
