"""The three formats read line by line (manifest/formats.py): rows, bad lines as FILE:LINE."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bulkgetty.assets import Asset
from bulkgetty.errors import ManifestError, UsageError
from bulkgetty.stages.manifest import ManifestRow, read_manifest, validate_manifest
from tests.stages.manifest.helpers import problems, rows, write

# --------------------------------------------------------------------------- formats


def test_csv_rows_become_assets_with_their_options(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "rows.csv",
        "id,asset_type,product_type,product_id,height,size,file_type,use_team_credits,"
        "project_code,download_notes\n"
        "1167612765,image,easyaccess,42,1024,,jpg,Yes,P-1,hello\n"
        "1185436712,video,,,,hd1,,,,\n",
    )
    got = rows(path)
    assert got == [
        ManifestRow(
            Asset(
                "1167612765",
                "image",
                "easyaccess",
                42,
                1024,
                None,
                "jpg",
                True,
                "P-1",
                "hello",
            ),
            2,
        ),
        ManifestRow(Asset("1185436712", "video", size="hd1"), 3),
    ]


def test_jsonl_objects_become_assets_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x.jsonl",
        '{"id": "200261415-001", "height": 480, "use_team_credits": false}\n'
        "\n"
        '{"id": 924716482, "asset_type": "video", "size": "4k", "height": null}\n',
    )
    assert rows(path) == [
        ManifestRow(Asset("200261415-001", height=480, use_team_credits=False), 1),
        ManifestRow(Asset("924716482", "video", size="4k"), 3),
    ]


def test_txt_skips_comments_trailing_comments_and_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "ids.txt", "# header\n\n1167612765\n  sb10064292t-001  # hero\n#x\n")
    assert [(r.asset.id, r.line) for r in rows(path)] == [
        ("1167612765", 3),
        ("sb10064292t-001", 4),
    ]


def test_dash_reads_stdin_as_txt() -> None:
    stdin = io.StringIO("1167612765\n# c\n200261415-001\n")
    got = list(read_manifest("-", stdin=stdin))
    assert [(r.asset.id, r.line) for r in got] == [("1167612765", 1), ("200261415-001", 3)]


def test_dash_reports_bad_stdin_rows_as_stdin() -> None:
    with pytest.raises(ManifestError) as info:
        list(read_manifest("-", stdin=io.StringIO("ok\nnot ok\n")))
    assert str(info.value).startswith("<stdin>:2: id 'not ok' has characters")


@pytest.mark.parametrize("name", ["a.csv", "a.jsonl", "a.txt"])
def test_utf8_bom_is_ignored(tmp_path: Path, name: str) -> None:
    body = {"a.csv": "id\n123\n", "a.jsonl": '{"id": "123"}\n', "a.txt": "123\n"}[name]
    path = write(tmp_path, name, b"\xef\xbb\xbf" + body.encode())
    assert [r.asset.id for r in rows(path)] == ["123"]


@pytest.mark.parametrize("name", ["a.csv", "a.jsonl", "a.txt"])
def test_crlf_line_endings_are_read_and_lines_counted(tmp_path: Path, name: str) -> None:
    body = {
        "a.csv": "id,height\r\n1,10\r\n\r\n2,20\r\n",
        "a.jsonl": '{"id":"1","height":10}\r\n\r\n\r\n{"id":"2","height":20}\r\n',
        "a.txt": "1\r\n# c\r\n2\r\n",
    }[name]
    path = write(tmp_path, name, body)
    got = [(r.asset.id, r.asset.height, r.line) for r in rows(path)]
    assert [g[0] for g in got] == ["1", "2"]
    assert got[1][2] == {"a.csv": 4, "a.jsonl": 4, "a.txt": 3}[name]
    assert "\r" not in (rows(path)[0].asset.download_notes or "")


def test_csv_ignores_unknown_columns_and_normalises_header_names(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", " ID , Title,Height\n123,Lake,480\n")
    assert rows(path) == [ManifestRow(Asset("123", height=480), 2)]


def test_csv_quoted_multiline_field_keeps_physical_line_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path, "rows.csv", 'id,download_notes\n1,"two\nlines"\n2,x\nbad id,y\n3,"a\nb\nc"\n'
    )
    with pytest.raises(ManifestError) as info:
        list(read_manifest(path))
    assert [str(p) for p in info.value.problems] == [
        f"{path}:5: id 'bad id' has characters other than letters, digits, '-' and '_'"
    ]
    ok = write(tmp_path, "ok.csv", 'id,download_notes\n1,"two\nlines"\n2,x\n3,"a\nb"\n')
    assert [(r.asset.id, r.line) for r in rows(ok)] == [("1", 2), ("2", 4), ("3", 5)]
    assert rows(ok)[0].asset.download_notes == "two\nlines"


def test_csv_rows_of_only_empty_cells_are_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", "id,height\n1,2\n,\n,,\n")
    assert [r.asset.id for r in rows(path)] == ["1"]


# --------------------------------------------------------------------------- bad lines


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("[1, 2]", "not a JSON object"),
        ('"1167612765"', "not a JSON object"),
        ("{id: 1}", "not valid JSON: Expecting property name"),
        ('{"id": "1", "heigth": 9}', "unknown key 'heigth' (known: id, asset_type"),
        ('{"id": "1", "id": "2"}', "key 'id' is given twice"),
        ('{"id": true}', "id must be text, got True"),
        ('{"id": "1", "height": "9"}', None),
        ('{"id": "1", "height": 9.0}', "height must be a whole number, got 9.0"),
        ('{"id": "1", "height": true}', "height must be a whole number, got True"),
        ('{"id": "1", "use_team_credits": 1}', "use_team_credits must be true or false"),
        ('{"id": "1", "project_code": 7}', "project_code must be text, got 7"),
        ('{"id": "1", "height": NaN}', "height must be a whole number, got nan"),
    ],
)
def test_each_kind_of_bad_jsonl_line_is_named(
    tmp_path: Path, line: str, problem: str | None
) -> None:
    path = write(tmp_path, "x.jsonl", '{"id":"ok"}\n' + line + "\n")
    if problem is None:
        assert len(rows(path)) == 2
        return
    (got,) = problems(path)
    assert got.startswith(f"{path}:2: {problem}")


def test_csv_without_id_column_is_reported_at_line_1(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", "asset,height\n1,2\n")
    assert problems(path) == [f"{path}:1: header has no 'id' column (columns: 'asset', 'height')"]


def test_semicolon_csv_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", "id;height\n1;2\n")
    (got,) = problems(path)
    assert got.startswith(f"{path}:1: ") and "separated by commas" in got


def test_empty_csv_is_reported_at_line_1(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", "")
    assert problems(path) == [f"{path}:1: empty file: expected a header row with an 'id' column"]


def test_csv_header_typo_of_a_known_column_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", "id,heigth\n1,100\n")
    assert problems(path) == [f"{path}:1: column 'heigth' is not known; did you mean 'height'?"]


def test_csv_header_with_a_repeated_column_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", "id,height,height\n1,100,200\n")
    assert problems(path) == [f"{path}:1: column 'height' appears more than once"]


def test_csv_unterminated_quote_is_a_bad_row(tmp_path: Path) -> None:
    path = write(tmp_path, "rows.csv", 'id,download_notes\n1,ok\n2,"never closed\n')
    (got,) = problems(path)
    assert got.startswith(f"{path}:3: not valid CSV")


@pytest.mark.parametrize("name", ["ids.txt", "x.jsonl", "rows.csv"])
def test_non_utf8_byte_is_reported_at_its_line_and_reading_goes_on(
    tmp_path: Path, name: str
) -> None:
    good, bad = {
        "ids.txt": (b"1\n", b"caf\xe9\n"),
        "x.jsonl": (b'{"id":"1"}\n', b'{"id":"caf\xe9"}\n'),
        "rows.csv": (b"1\n", b"caf\xe9\n"),
    }[name]
    head = b"id\n" if name == "rows.csv" else b""
    path = write(tmp_path, name, head + good + bad + good.replace(b"1", b"2") + b"bad id\n")
    got = problems(path)
    first = 2 if head else 1
    col = bad.index(b"\xe9") + 1
    assert got[0] == f"{path}:{first + 1}: not valid UTF-8 (byte 0xe9 at column {col})"
    assert got[1].startswith(f"{path}:{first + 3}: ")


def test_overlong_line_is_a_bad_row_not_a_memory_spike(tmp_path: Path) -> None:
    path = write(tmp_path, "ids.txt", "1\n" + "x" * (2 << 20) + "\n2\n")
    with pytest.raises(ManifestError) as info:
        validate_manifest(path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:2: line is longer than 1048576 characters"
    ]


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize("name", ["rows.xlsx", "rows", "rows.json"])
def test_unknown_extension_is_a_usage_error(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, "id\n1\n")
    with pytest.raises(UsageError, match=r"use \.csv, \.jsonl or \.txt") as info:
        read_manifest(path)
    assert info.value.exit_code == 2
