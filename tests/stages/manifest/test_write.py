"""Writing manifests (manifest/write.py): round trips, .txt only when ids say it all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bulkgetty.assets import Asset
from bulkgetty.errors import UsageError
from bulkgetty.stages.manifest import ManifestDefaults, write_manifest
from tests.stages.manifest.helpers import rows

# --------------------------------------------------------------------------- writing


ASSETS = [
    Asset("1167612765", "image", "easyaccess", 42, 1024, None, "jpg", True, "P,1", 'a\nb, "c"'),
    Asset("200261415-001", "image", None, None, None, None, None, False, None, "  spaced  "),
    Asset("1185436712", "video", "premiumaccess", size="hd1", project_code="é"),
    Asset("sb10064292t-001"),
]


@pytest.mark.parametrize("name", ["out.csv", "out.jsonl"])
def test_write_manifest_round_trips(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    assert write_manifest(path, iter(ASSETS)) == len(ASSETS)
    assert [r.asset for r in rows(path)] == ASSETS


def test_write_manifest_txt_round_trips_with_the_named_defaults(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    assets = [Asset("1", "video", "easyaccess"), Asset("2-001", "video", "easyaccess")]
    assert write_manifest(path, assets) == 2
    first_line = path.read_text().splitlines()[0]
    assert first_line == (
        "# bulkgetty manifest: read back with --asset-type video --product-type easyaccess"
    )
    defaults = ManifestDefaults(asset_type="video", product_type="easyaccess")
    assert [r.asset for r in rows(path, defaults)] == assets


@pytest.mark.parametrize(
    "second",
    [Asset("2", height=100), Asset("2", "video"), Asset("2", product_type="easyaccess")],
)
def test_write_manifest_txt_refuses_rows_it_cannot_carry(tmp_path: Path, second: Asset) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old\n")
    with pytest.raises(UsageError, match="holds only ids"):
        write_manifest(path, [Asset("1"), second])
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_manifest_unknown_extension_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        write_manifest(tmp_path / "out.xml", ASSETS)


def test_jsonl_row_keys_are_only_the_known_fields(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_manifest(path, [Asset("1", height=5)])
    assert json.loads(path.read_text()) == {"id": "1", "asset_type": "image", "height": 5}
