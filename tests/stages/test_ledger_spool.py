"""The worker folder's spool of paid URIs the ledger could not take (no database needed)."""

from __future__ import annotations

from pathlib import Path

from bulkgetty.stages.ledger.spool import SpooledUri, UriSpool


def test_spooled_uris_come_back_in_order_and_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    spool = UriSpool(tmp_path)
    spool.add("image/1", "https://d/1?sig=a", 10.0)
    spool.add("image/2", "https://d/2?sig=b", 20.0)
    with spool.path.open("ab") as f:
        f.write(b'{"key": "image/3", "uri": "https://d/3')  # killed mid-line
    assert spool.entries() == [
        SpooledUri("image/1", "https://d/1?sig=a", 10.0),
        SpooledUri("image/2", "https://d/2?sig=b", 20.0),
    ]


def test_the_spool_is_private_to_its_owner_and_gone_once_cleared(tmp_path: Path) -> None:
    spool = UriSpool(tmp_path)
    assert spool.entries() == []
    spool.add("image/1", "https://d/1?sig=a", 10.0)
    assert spool.path.stat().st_mode & 0o777 == 0o600  # a URI is a bearer token
    spool.clear()
    assert not spool.path.exists() and spool.entries() == []
    spool.clear()  # nothing to clear is fine
