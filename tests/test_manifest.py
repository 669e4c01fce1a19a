"""Manifest reader/writer: formats, defaults, duplicates, every bad row, flat memory."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bulkgetty.assets import Asset
from bulkgetty.errors import ManifestError, UsageError
from bulkgetty.manifest import (
    MAX_PROBLEMS,
    ManifestDefaults,
    ManifestRow,
    ManifestSummary,
    parse_row,
    read_manifest,
    validate_manifest,
    write_manifest,
)

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "manifests"
DEFAULTS = ManifestDefaults()


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def rows(path: Path | str, defaults: ManifestDefaults = DEFAULTS) -> list[ManifestRow]:
    return list(read_manifest(path, defaults))


def problems(path: Path | str, defaults: ManifestDefaults = DEFAULTS) -> list[str]:
    with pytest.raises(ManifestError) as info:
        list(read_manifest(path, defaults))
    return [str(p) for p in info.value.problems]


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


def test_bad_defaults_are_a_usage_error_before_reading(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", "1\n")
    with pytest.raises(UsageError, match="--product-type 'nope'"):
        read_manifest(path, ManifestDefaults(product_type="nope"))


def test_defaults_decide_which_options_apply(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "id,height\n1,100\n")
    assert problems(path, ManifestDefaults(asset_type="video")) == [
        f"{path}:2: height applies to images only"
    ]


# --------------------------------------------------------------------------- duplicates


def test_duplicates_with_the_same_identity_are_merged(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "rows.csv",
        "id,asset_type,height,title\n1,image,100,a\n1,Image,100,b\n1,,100,c\n",
    )
    got = rows(path)
    assert got == [ManifestRow(Asset("1", height=100), 2)]
    summary = validate_manifest(path)
    assert (summary.rows, summary.unique, summary.duplicates) == (3, 1, 2)


def test_same_id_with_different_options_is_kept(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x.jsonl",
        '{"id":"1","height":100}\n{"id":"1","height":200}\n{"id":"1","file_type":"eps"}\n'
        '{"id":"1","product_type":"easyaccess"}\n{"id":"1","asset_type":"video"}\n',
    )
    assert len({r.asset.key for r in rows(path)}) == 5


def test_duplicate_that_disagrees_on_notes_or_credits_is_a_bad_row(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "rows.csv",
        "id,project_code,use_team_credits\n1,A,\n1,A,\n1,B,\n1,A,true\n",
    )
    assert problems(path) == [
        f"{path}:4: same asset as line 2 but with a different use_team_credits, "
        "project_code or download_notes",
        f"{path}:5: same asset as line 2 but with a different use_team_credits, "
        "project_code or download_notes",
    ]


# --------------------------------------------------------------------------- bad rows

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


def test_every_bad_row_is_reported_not_just_the_first(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "rows.csv",
        "id,height,product_type\n"
        "1,tall,\n"  # 2
        "2,100,\n"  # 3 good
        ",,\n"  # 4 skipped: empty
        "3 4,,\n"  # 5
        "5,,foo\n"  # 6
        "6,x,bar\n"  # 7: two problems, one row
        "7,1,,extra\n",  # 8
    )
    with pytest.raises(ManifestError) as info:
        list(read_manifest(path))
    lines = str(info.value).splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [f"{path}:{n}" for n in (2, 5, 6, 7, 8)]
    assert lines[3].endswith(
        "product_type 'bar' is not one of: aigen, creditpack, easyaccess, "
        "editorialsubscription, imagepack, premiumaccess, royaltyfreesubscription; "
        "height must be a whole number, got 'x'"
    )
    assert lines[4].endswith("row has 4 cells but the header has 3")


def test_good_rows_stream_before_the_error_naming_the_bad_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "ids.txt", "1\nbad id\n2\n")
    it = read_manifest(path)
    assert next(it).asset.id == "1"
    assert next(it).asset.id == "2"
    with pytest.raises(ManifestError, match=r"ids\.txt:2: id 'bad id'"):
        next(it)


def test_problem_list_is_capped_but_all_are_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "ids.txt", "bad id\n" * 250)
    with pytest.raises(ManifestError) as info:
        validate_manifest(path)
    assert len(info.value.problems) == MAX_PROBLEMS
    assert info.value.problems[-1].line == MAX_PROBLEMS
    assert str(info.value).endswith("... and 150 more bad rows")


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


def test_parse_row_is_the_shared_validation_path() -> None:
    assert parse_row({"id": " 1 ", "height": " 9 "}, ManifestDefaults()) == Asset("1", height=9)
    with pytest.raises(ValueError, match="id is missing"):
        parse_row({}, ManifestDefaults())


# --------------------------------------------------------------------------- usage errors


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such manifest file") as info:
        read_manifest(tmp_path / "nope.csv")
    assert not isinstance(info.value, ManifestError)
    assert info.value.exit_code == 2


def test_directory_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "d.txt").mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        validate_manifest(tmp_path / "d.txt")


@pytest.mark.parametrize("name", ["rows.xlsx", "rows", "rows.json"])
def test_unknown_extension_is_a_usage_error(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, "id\n1\n")
    with pytest.raises(UsageError, match=r"use \.csv, \.jsonl or \.txt") as info:
        read_manifest(path)
    assert info.value.exit_code == 2


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


# --------------------------------------------------------------------------- samples


@pytest.mark.parametrize("name", ["sample.csv", "sample.jsonl", "sample.txt"])
def test_sample_manifests_are_valid(name: str) -> None:
    summary = validate_manifest(SAMPLES / name)
    assert summary.unique >= 8
    if name != "sample.jsonl":
        assert summary.duplicates >= 1
    kinds = {r.asset.asset_type for r in read_manifest(SAMPLES / name)}
    assert kinds == ({"image"} if name == "sample.txt" else {"image", "video"})


# --------------------------------------------------------------------------- memory

MEMORY_PROBE = textwrap.dedent(
    """
    import resource, sys
    from bulkgetty.manifest import read_manifest
    count = sum(1 for _ in read_manifest(sys.argv[1]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(count, peak)
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_million_row_manifest_reads_in_flat_memory(tmp_path: Path) -> None:
    """A million unique ids (about 20 MB of text); the only growth is the duplicate table."""
    name = "big.txt"
    path = tmp_path / name
    with path.open("w") as out:
        out.writelines(f"{1000000000 + i}-001\n" for i in range(1_000_000))
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    count, peak_kib = map(int, result.stdout.split())
    print(f"{name}: {count} rows, peak RSS {peak_kib / 1024:.1f} MiB")
    assert count == 1_000_000
    assert peak_kib < 200 * 1024


def test_jsonl_row_keys_are_only_the_known_fields(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_manifest(path, [Asset("1", height=5)])
    assert json.loads(path.read_text()) == {"id": "1", "asset_type": "image", "height": 5}


# ------------------------------------------------------------ .txt validation fast path


def _generic_summary(path: Path, defaults: ManifestDefaults) -> tuple[int, int]:
    rows = list(read_manifest(path, defaults))
    total = sum(1 for _ in rows)
    return total, len({r.asset.key for r in rows})


@pytest.mark.parametrize(
    "text",
    [
        "1\n2\n3\n",
        "\ufeff1\r\n2 # two\r\n\r\n# only a comment\n 3 \n2\n1\n",
        "".join(f"{i % 997}\n" for i in range(5000)),  # many duplicates, spread out
        "a-b_c\nA-B_C\na-b_c\n",
    ],
    ids=["plain", "bom-crlf-comments", "many-duplicates", "case-matters"],
)
@pytest.mark.parametrize("product", [None, "premiumaccess"])
def test_plain_txt_validation_counts_like_the_generic_reader(
    tmp_path: Path, text: str, product: str | None
) -> None:
    path = tmp_path / "m.txt"
    path.write_bytes(text.encode())
    defaults = ManifestDefaults(asset_type="video", product_type=product)
    summary = validate_manifest(path, defaults)
    unique_rows, unique_keys = _generic_summary(path, defaults)
    assert summary.unique == unique_rows == unique_keys
    assert summary.rows == summary.unique + summary.duplicates
    assert summary.rows == sum(
        1 for line in text.lstrip("\ufeff").splitlines() if line.split("#")[0].strip()
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1\nbad id!\n3\n", "m.txt:2: id 'bad id!' has characters other than"),
        ("1\n" + "9" * 65 + "\n", "m.txt:2: id"),
        ("1\n2", None),  # no newline at the end: still read, by the generic reader
    ],
    ids=["bad-char", "too-long", "no-final-newline"],
)
def test_plain_txt_validation_hands_anything_unusual_to_the_generic_reader(
    tmp_path: Path, text: str, problem: str | None
) -> None:
    path = tmp_path / "m.txt"
    path.write_text(text)
    if problem is None:
        assert validate_manifest(path).rows == 2
        return
    with pytest.raises(ManifestError) as caught:
        validate_manifest(path)
    assert problem in str(caught.value).replace(str(tmp_path) + "/", "")


def test_plain_txt_validation_of_a_bad_byte_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "m.txt"
    path.write_bytes(b"1\n2\xff\n3\n")
    with pytest.raises(ManifestError, match=r"m\.txt:2: not valid UTF-8"):
        validate_manifest(path)


def test_plain_txt_validation_does_not_walk_rows_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A million-row manifest is checked before the first spend: the fast path must be used."""
    from bulkgetty.manifest import read as mod

    def no_generic(*args: object, **kwargs: object) -> None:
        raise AssertionError("the generic row reader ran on a plain .txt manifest")

    monkeypatch.setattr(mod, "_scan", no_generic)
    path = tmp_path / "m.txt"
    path.write_text("".join(f"{i}\n" for i in range(1000)) + "5\n")
    assert validate_manifest(path) == ManifestSummary(1001, 1000, 1)
