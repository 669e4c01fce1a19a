"""Which assets exist, and what `GET /v3/search/...` pretends to hold.

The rule (documented in the README): every id with a digit in it exists, as every Getty id
has one (`1167612765`, `200261415-001`, `sb10064292t-001`), unless `missing_ids` names it;
so `no-such-image` answers 404 `ImageNotFound` and spends nothing. With a catalogue
(`SandboxConfig.catalogue`, `bulkgetty sandbox --catalogue FILE`) exactly its ids exist, and
search lists them. Otherwise search lists a seeded catalogue of Getty-like ids. An id is the
same asset as an image or a video (the sandbox keeps one catalogue).

Every asset's metadata is derived from its id and the seed: its title, whether it is
creative or editorial (one in three is editorial), its collection.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import SandboxConfig

__all__ = ("CATALOGUE_SIZE", "Listing", "exists", "listing", "read_catalogue", "search")

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
_COLLECTIONS = (("GI", "Getty Images News"), ("STK", "Stone"), ("ISP", "iStockphoto"))


@dataclass(frozen=True, slots=True)
class Listing:
    """What the catalogue says about one asset, beyond its id."""

    id: str
    title: str
    asset_family: str
    collection_code: str
    collection_name: str


def exists(config: SandboxConfig, asset_id: str) -> bool:
    """The catalogue rule: listed (with a catalogue) or has a digit, and not missing."""
    if asset_id in config.missing_ids:
        return False
    if config.catalogue is not None:
        return asset_id in config.catalogue
    return any(c.isdigit() for c in asset_id)


@functools.lru_cache(maxsize=65_536)
def listing(seed: int, asset_id: str) -> Listing:
    rng = random.Random(f"{seed}:listing:{asset_id}")
    title = " ".join(rng.sample(_WORDS, 3)).capitalize()
    family = "editorial" if rng.randrange(3) == 0 else "creative"
    code, name = rng.choice(_COLLECTIONS)
    return Listing(asset_id, title, family, code, name)


@functools.cache
def _seeded_ids(seed: int, asset_type: str) -> tuple[str, ...]:
    """Mostly Getty-like numeric ids, every seventh with a dashed suffix."""
    rng = random.Random(f"{seed}:{asset_type}")
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < CATALOGUE_SIZE:
        asset_id = str(rng.randrange(100_000_000, 2_000_000_000))
        if len(ids) % 7 == 3:
            asset_id = f"{asset_id}-{rng.randrange(1, 20):03d}"
        if asset_id not in seen:
            seen.add(asset_id)
            ids.append(asset_id)
    return tuple(ids)


def search(
    config: SandboxConfig, asset_type: str, phrase: str, family: str | None
) -> list[Listing]:
    """Listings whose title holds every word of `phrase` (empty: all), of `family` if given."""
    ids = sorted(config.catalogue) if config.catalogue is not None else None
    words = phrase.lower().split()
    found = []
    for asset_id in ids if ids is not None else _seeded_ids(config.seed, asset_type):
        item = listing(config.seed, asset_id)
        if asset_id in config.missing_ids or (family and item.asset_family != family):
            continue
        if all(w in item.title.lower() for w in words):
            found.append(item)
    return found


def read_catalogue(text: str) -> frozenset[str]:
    """A catalogue file: one id per line; blank lines and `#` comments are skipped."""
    ids = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return frozenset(i for i in ids if i)
