"""A whole manifest (manifest/read.py): duplicates, all bad rows, flat memory, fast .txt check."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bulkgetty.assets import Asset
from bulkgetty.errors import ManifestError, UsageError
from bulkgetty.stages.manifest import (
    MAX_PROBLEMS,
    ManifestDefaults,
    ManifestRow,
    ManifestSummary,
    read_manifest,
    validate_manifest,
)
from tests.harness import REPO
from tests.stages.manifest.helpers import SAMPLES, problems, rows, write

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


# --------------------------------------------------------------------------- usage errors


def test_bad_defaults_are_a_usage_error_before_reading(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", "1\n")
    with pytest.raises(UsageError, match="--product-type 'nope'"):
        read_manifest(path, ManifestDefaults(product_type="nope"))


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such manifest file") as info:
        read_manifest(tmp_path / "nope.csv")
    assert not isinstance(info.value, ManifestError)
    assert info.value.exit_code == 2


def test_directory_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "d.txt").mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        validate_manifest(tmp_path / "d.txt")


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
    import sys
    from bulkgetty.stages.manifest import read_manifest
    count = sum(1 for _ in read_manifest(sys.argv[1]))
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork and exec, so a probe started
    # by a large pytest process would report the parent's size, not its own.
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(count, peak)
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="reads VmHWM from /proc (Linux)")
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
    from bulkgetty.stages.manifest import read as mod

    def no_generic(*args: object, **kwargs: object) -> None:
        raise AssertionError("the generic row reader ran on a plain .txt manifest")

    monkeypatch.setattr(mod, "_scan", no_generic)
    path = tmp_path / "m.txt"
    path.write_text("".join(f"{i}\n" for i in range(1000)) + "5\n")
    assert validate_manifest(path) == ManifestSummary(1001, 1000, 1)
