"""A deterministic, seeded search catalogue: what `GET /v3/search/...` pretends to hold."""

from __future__ import annotations

import functools
import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import SandboxConfig

__all__ = ("catalogue", "search_items")

CATALOGUE_SIZE = 300

_WORDS = [
    "mountain",
    "lake",
    "city",
    "night",
    "portrait",
    "sunset",
    "forest",
    "ocean",
    "market",
    "street",
    "festival",
    "winter",
    "summer",
    "storm",
    "harbour",
    "bridge",
    "desert",
    "river",
    "crowd",
    "stadium",
]


@functools.cache
def catalogue(seed: int, asset_type: str) -> tuple[tuple[str, str], ...]:
    """(id, title) pairs: mostly Getty-like numeric ids, every seventh with a dashed suffix."""
    rng = random.Random(f"{seed}:{asset_type}")
    items: list[tuple[str, str]] = []
    seen: set[str] = set()
    while len(items) < CATALOGUE_SIZE:
        asset_id = str(rng.randrange(100_000_000, 2_000_000_000))
        if len(items) % 7 == 3:
            asset_id = f"{asset_id}-{rng.randrange(1, 20):03d}"
        if asset_id in seen:
            continue
        seen.add(asset_id)
        title = " ".join(rng.sample(_WORDS, 3)).capitalize()
        items.append((asset_id, title))
    return tuple(items)


def search_items(
    config: SandboxConfig,
    asset_type: str,
    phrase: str,
    *,
    page: int,
    page_size: int,
    largest_downloads: bool,
    api_url: str,
) -> tuple[int, list[dict[str, Any]]]:
    """Matches are titles containing every word of the phrase; an empty phrase matches all."""
    words = phrase.lower().split()
    matches = [
        (asset_id, title)
        for asset_id, title in catalogue(config.seed, asset_type)
        if asset_id not in config.missing_ids and all(w in title.lower() for w in words)
    ]
    chunk = matches[(page - 1) * page_size : page * page_size]
    items: list[dict[str, Any]] = []
    for asset_id, title in chunk:
        item: dict[str, Any] = {"id": asset_id, "title": title, "asset_family": "creative"}
        if largest_downloads:
            item["largest_downloads"] = _largest(config, asset_type, asset_id, api_url)
        items.append(item)
    return len(matches), items


def _largest(
    config: SandboxConfig, asset_type: str, asset_id: str, api_url: str
) -> list[dict[str, Any]]:
    if not config.products:
        return []
    product = config.products[sum(map(ord, asset_id)) % len(config.products)]
    return [
        {
            "product_type": product.type,
            "product_id": str(product.id),
            "agreement_name": product.agreement_name,
            "uri": f"{api_url}/v3/downloads/{asset_type}s/{asset_id}",
        }
    ]
