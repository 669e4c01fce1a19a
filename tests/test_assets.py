"""Asset identity (the journal's key, the shard input) and the compact duplicate table."""

from __future__ import annotations

import hashlib
import random
from urllib.parse import quote

import pytest

from bulkgetty.assets import Asset, DigestTable, table_for


def _key_by_the_rule(a: Asset) -> str:
    """The identity text as first defined: every option quoted, empty ones left out."""
    parts = [
        ("height", "" if a.height is None else str(a.height)),
        ("size", a.size or ""),
        ("file_type", a.file_type or ""),
        ("product_type", a.product_type or ""),
        ("product_id", "" if a.product_id is None else str(a.product_id)),
    ]
    options = "&".join(f"{k}={quote(v, safe='')}" for k, v in parts if v)
    base = f"{a.asset_type}/{quote(a.id, safe='-_.')}"
    return f"{base}?{options}" if options else base


@pytest.mark.parametrize(
    "asset",
    [
        Asset("123"),
        Asset("a.b-c_d", "video", "premiumaccess"),
        Asset("x y/z"),
        Asset("1", product_type="odd type&x"),
        Asset("1", height=1024, product_type="editorialsubscription"),
        Asset("1", "video", size="hd1", product_id=7),
        Asset("1", file_type="eps"),
    ],
    ids=repr,
)
def test_key_fast_path_gives_the_same_text_as_the_quoting_rule(asset: Asset) -> None:
    assert asset.key == _key_by_the_rule(asset)
    assert asset.digest == hashlib.blake2b(asset.key.encode(), digest_size=16).digest()


@pytest.mark.parametrize("start", [8, 1 << 14, table_for(5000)._size])
def test_digest_table_agrees_with_a_dict_while_it_grows(start: int) -> None:
    rng = random.Random(7)
    table, model = DigestTable(start), {}
    pool = [rng.randbytes(16) for _ in range(6000)]
    for i in range(20000):
        digest = rng.choice(pool)
        word = i + 1
        assert table.setdefault(digest, word) == model.get(digest, 0)
        model.setdefault(digest, word)
    assert len(table) == len(model)


def test_table_for_holds_its_rows_without_growing() -> None:
    table = table_for(100_000)
    size = table._size
    for i in range(100_000):
        table.setdefault(hashlib.blake2b(str(i).encode(), digest_size=16).digest(), 1)
    assert table._size == size
    assert size < 2 * 100_000  # not rounded up to a power of two
