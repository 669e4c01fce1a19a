"""report.py: report rows (exactly PRODUCT.md's fields), redaction, totals and exit codes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
import pytest

from bulkgetty.assets import Asset
from bulkgetty.stages.report import Outcome, Redactor, ReportRow, ReportWriter, RunSummary, Status

#: PRODUCT.md, "Files and state": the report's fields, no more, no less.
PRODUCT_FIELDS = {"id", "asset_type", "product_type", "status", "path", "bytes", "sha256", "error"}


def test_report_row_has_exactly_the_promised_fields() -> None:
    assert {f.name for f in dataclasses.fields(ReportRow)} == PRODUCT_FIELDS


def test_statuses_are_the_promised_ones() -> None:
    assert {s.value for s in Status} == {
        "downloaded",
        "already_done",
        "failed",
        "waiting_for_quota",
    }


def test_outcome_row_points_inside_the_output_folder(tmp_path: Path) -> None:
    asset = Asset("123", "video", product_type="premiumaccess", size="hd1")
    o = Outcome(asset, Status.DOWNLOADED, path="GettyImages-123.mp4", size=5, sha256="a" * 64)
    row = o.row(tmp_path)
    assert row == ReportRow(
        id="123",
        asset_type="video",
        product_type="premiumaccess",
        status="downloaded",
        path=str(tmp_path / "GettyImages-123.mp4"),
        bytes=5,
        sha256="a" * 64,
        error=None,
    )
    failed = Outcome(Asset("9"), Status.FAILED, error="nope").row(tmp_path)
    assert (failed.path, failed.bytes, failed.sha256, failed.error) == (None, None, None, "nope")
    assert failed.product_type is None


def test_writer_writes_one_json_object_per_outcome_with_exact_fields(tmp_path: Path) -> None:
    report = tmp_path / "sub" / "report.jsonl"  # parent is created
    w = ReportWriter(report, tmp_path, Redactor())
    outcomes = [
        Outcome(Asset("1"), Status.DOWNLOADED, path="a.jpg", size=3, sha256="b" * 64),
        Outcome(Asset("2"), Status.ALREADY_DONE, path="b.jpg", size=4, sha256="c" * 64),
        Outcome(Asset("3"), Status.FAILED, error="broken"),
        Outcome(Asset("4", product_type="editorialsubscription"), Status.WAITING_FOR_QUOTA),
    ]
    for o in outcomes:
        w.write(o)
    w.close()
    lines = report.read_bytes().splitlines()
    assert len(lines) == 4
    rows = [orjson.loads(line) for line in lines]
    for row in rows:
        assert set(row) == PRODUCT_FIELDS
    assert [r["status"] for r in rows] == [
        "downloaded",
        "already_done",
        "failed",
        "waiting_for_quota",
    ]
    assert rows[0]["path"] == str(tmp_path / "a.jpg")
    assert rows[2]["error"] == "broken"
    assert rows[3]["product_type"] == "editorialsubscription"


def test_writer_rows_reach_the_file_as_they_are_written(tmp_path: Path) -> None:
    """A killed run still leaves the rows it finished (at least once flushed)."""
    report = tmp_path / "r.jsonl"
    w = ReportWriter(report, tmp_path, Redactor())
    w.write(Outcome(Asset("1"), Status.FAILED, error="x"))
    w._file.flush()
    assert report.read_bytes().count(b"\n") == 1
    w.close()


def test_writer_redacts_secrets_in_errors(tmp_path: Path) -> None:
    report = tmp_path / "r.jsonl"
    w = ReportWriter(report, tmp_path, Redactor(["s3cr3t-value", "tok-abcdef"]))
    row = w.write(
        Outcome(
            Asset("1"), Status.FAILED, error="POST failed: secret=s3cr3t-value bearer tok-abcdef"
        )
    )
    w.close()
    text = report.read_text()
    assert "s3cr3t-value" not in text
    assert "tok-abcdef" not in text
    assert "***" in text
    assert row.error is not None and "s3cr3t-value" not in row.error


# ------------------------------------------------------------------ Redactor


def test_redactor_replaces_every_occurrence() -> None:
    r = Redactor(["hunter22"])
    assert r("a hunter22 b hunter22") == "a *** b ***"


def test_redactor_ignores_empty_and_tiny_values() -> None:
    r = Redactor(["", "ab", "abc"])
    assert r("abc ab") == "abc ab"


def test_redactor_add_learns_new_secrets() -> None:
    r = Redactor()
    assert r("token-xyz") == "token-xyz"
    r.add(["token-xyz"])
    assert r("token-xyz") == "***"


@pytest.mark.parametrize(
    "secrets",
    [
        ["abcd", "abcdefghij"],
        ["abcdefghij", "abcd"],
        ["defg", "abcdefghij", "hij0", "cdef"],
    ],
)
def test_redactor_leaves_no_part_of_a_longer_secret(secrets: list[str]) -> None:
    """When one secret contains another, the longer one must not leak around the shorter."""
    r = Redactor(secrets)
    out = r("key=abcdefghij end")
    assert "efgh" not in out
    assert "abcdefghij"[4:] not in out
    assert out.startswith("key=") and out.endswith(" end")


# ------------------------------------------------------------------ RunSummary


def outcome(status: Status, size: int | None = None) -> Outcome:
    return Outcome(Asset("1"), status, size=size)


def test_exit_code_zero_when_everything_is_on_disk() -> None:
    s = RunSummary()
    s.count(outcome(Status.DOWNLOADED, 10))
    s.count(outcome(Status.ALREADY_DONE, 10))
    assert s.exit_code == 0


def test_exit_code_zero_for_an_empty_run() -> None:
    assert RunSummary().exit_code == 0


def test_exit_code_three_when_some_wait_for_quota_and_none_failed() -> None:
    s = RunSummary()
    s.count(outcome(Status.DOWNLOADED, 10))
    s.count(outcome(Status.WAITING_FOR_QUOTA))
    assert s.exit_code == 3


def test_exit_code_one_when_anything_failed_even_if_others_wait() -> None:
    s = RunSummary()
    s.count(outcome(Status.WAITING_FOR_QUOTA))
    s.count(outcome(Status.FAILED))
    s.count(outcome(Status.DOWNLOADED, 1))
    assert s.exit_code == 1


def test_summary_counts_and_bytes_only_of_downloads() -> None:
    s = RunSummary()
    s.count(outcome(Status.DOWNLOADED, 1_500_000))
    s.count(outcome(Status.DOWNLOADED, 500_000))
    s.count(outcome(Status.ALREADY_DONE, 9_999_999))  # not moved in this run
    s.count(outcome(Status.FAILED))
    s.count(outcome(Status.WAITING_FOR_QUOTA))
    assert (s.downloaded, s.already_done, s.failed, s.waiting_for_quota) == (2, 1, 1, 1)
    assert s.assets == 5
    assert s.bytes == 2_000_000


def test_summary_line_says_every_count() -> None:
    s = RunSummary(spends=2, wall=3.2)
    s.count(outcome(Status.DOWNLOADED, 1_500_000))
    s.count(outcome(Status.DOWNLOADED, 500_000))
    s.count(outcome(Status.ALREADY_DONE))
    s.count(outcome(Status.FAILED))
    s.count(outcome(Status.WAITING_FOR_QUOTA))
    assert s.line() == (
        "5 assets: 2 downloaded, 1 already done, 1 failed, 1 waiting for quota;"
        " 2.0 MB in 3.2 s; 2 downloads spent"
    )


def test_summary_to_dict_is_json_and_has_exit_code() -> None:
    s = RunSummary(spends=1)
    s.count(outcome(Status.WAITING_FOR_QUOTA))
    d = s.to_dict()
    assert "started" not in d  # a monotonic clock value means nothing outside the process
    assert d["exit_code"] == 3
    assert d["spends"] == 1
    assert d["waiting_for_quota"] == 1
    orjson.dumps(d)
