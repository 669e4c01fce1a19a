"""One row -> Asset (manifest/fields.py): defaults, every kind of bad value, all named."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkgetty.assets import Asset
from bulkgetty.stages.manifest import ManifestDefaults, parse_row
from tests.stages.manifest.helpers import problems, rows, write

# --------------------------------------------------------------------------- defaults


def test_defaults_apply_to_rows_that_name_no_type(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "rows.csv",
        "id,asset_type,product_type\n1,,\n2,image,premiumaccess\n",
    )
    got = rows(path, ManifestDefaults(asset_type="video", product_type="easyaccess"))
    assert [r.asset for r in got] == [
        Asset("1", "video", "easyaccess"),
        Asset("2", "image", "premiumaccess"),
    ]


def test_asset_type_defaults_to_image(tmp_path: Path) -> None:
    assert rows(write(tmp_path, "a.txt", "1\n"))[0].asset == Asset("1", "image")


def test_defaults_decide_which_options_apply(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "id,height\n1,100\n")
    assert problems(path, ManifestDefaults(asset_type="video")) == [
        f"{path}:2: height applies to images only"
    ]


# --------------------------------------------------------------------------- bad values


BAD_CSV_ROWS = [
    ("tall,,,,,,", "height must be a whole number, got 'tall'"),
    ("12.5,,,,,,", "height must be a whole number, got '12.5'"),
    ("0,,,,,,", "height must be between 1 and 999999999999, got 0"),
    (",foo,,,,,", "product_type 'foo' is not one of: aigen, creditpack, easyaccess"),
    (",,x1,,,,", "product_id must be a whole number, got 'x1'"),
    (",,,maybe,,,", "use_team_credits must be true or false (or yes/no, 1/0), got 'maybe'"),
    (",,,,png,,", "file_type 'png' is not one of: eps, jpg"),
    (",,,,,hd1,", "size applies to videos only (images take height)"),
    (",,,,,,sound", "asset_type 'sound' is not one of: image, video"),
]


@pytest.mark.parametrize(("cells", "problem"), BAD_CSV_ROWS)
def test_each_kind_of_bad_csv_value_is_named(tmp_path: Path, cells: str, problem: str) -> None:
    header = "id,height,product_type,product_id,use_team_credits,file_type,size,asset_type\n"
    path = write(tmp_path, "rows.csv", header + "1," + cells + "\n")
    (got,) = problems(path)
    assert got.startswith(f"{path}:2: {problem}")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "id is missing"),
        ("   ", "id is missing"),
        ("a b", "id 'a b' has characters other than letters, digits, '-' and '_'"),
        ("../etc", "id '../etc' has characters other than"),
        ("x" * 65, "is longer than 64 characters"),
        ("é1", "has characters other than"),
    ],
)
def test_bad_ids_are_named(tmp_path: Path, value: str, problem: str) -> None:
    path = write(tmp_path, "rows.csv", f"id,height\n{value},1\n")
    (got,) = problems(path)
    assert got.startswith(f"{path}:2: ") and problem in got


def test_options_that_do_not_apply_to_videos_are_bad_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path, "x.jsonl", '{"id":"1","asset_type":"video","height":9,"file_type":"jpg"}'
    )
    assert problems(path) == [
        f"{path}:1: height applies to images only; file_type applies to images only"
    ]


def test_parse_row_is_the_shared_validation_path() -> None:
    assert parse_row({"id": " 1 ", "height": " 9 "}, ManifestDefaults()) == Asset("1", height=9)
    with pytest.raises(ValueError, match="id is missing"):
        parse_row({}, ManifestDefaults())
