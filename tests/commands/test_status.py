"""status.py: counts, grouped reasons and --verify, from the journal alone (read-only)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from bulkgetty.assets import Asset
from bulkgetty.commands.status import (
    MAX_GROUPS,
    ReasonTally,
    group_reasons,
    journal_status,
    reason_lines,
)
from bulkgetty.errors import UsageError
from bulkgetty.stages.journal import Journal


def finish(j: Journal, out: Path, asset: Asset, content: bytes) -> None:
    name = f"{asset.id}.jpg"
    (out / name).write_bytes(content)
    j.record_intent(asset.key)
    j.record_acquired(asset.key, f"https://delivery.invalid/{asset.id}", time.time() + 3600)
    j.record_done(
        asset.key, path=name, size=len(content), sha256=hashlib.sha256(content).hexdigest()
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder with every state: 3 done, 1 acquired, 1 pending, 1 in doubt, 3 failed, 2 waiting."""
    assets = [Asset(str(1_000_000 + i)) for i in range(11)]
    j = Journal(tmp_path)
    try:
        run = j.begin_run("m.csv")
        j.upsert(assets, run)
        for i in range(3):
            finish(j, tmp_path, assets[i], bytes([i]) * (1000 + i))
        j.record_intent(assets[3].key)
        j.record_acquired(assets[3].key, "https://delivery.invalid/x", time.time() + 3600)
        j.record_intent(assets[5].key)
        j.record_in_doubt(assets[5].key, "in doubt: POST /v3/downloads/images/1000005: 503")
        for i in (6, 7):
            j.record_failed(
                assets[i].key, f"POST /v3/downloads/images/{assets[i].id}: 404 ImageNotFound"
            )
        j.record_failed(assets[8].key, "delivery refused with HTTP 410")
        j.record_waiting_many({assets[9].key: "limit", assets[10].key: "limit"})
        j.finish_run(run, spends=4, exit_code=1)
    finally:
        j.close()
    return tmp_path


def test_status_counts_every_state_and_groups_reasons(folder: Path) -> None:
    s = journal_status(folder)
    assert (s.assets, s.done, s.acquired, s.pending, s.in_doubt) == (11, 3, 1, 1, 1)
    assert (s.failed, s.waiting_for_quota, s.spends) == (3, 2, 4)
    assert s.bytes_done == 1000 + 1001 + 1002
    assert s.failures == (
        ("POST /v3/downloads/images/N: 404 ImageNotFound", 2),
        ("delivery refused with HTTP 410", 1),
    )
    assert s.waiting == (("limit", 2),)
    assert s.runs == 1 and s.last_run is not None and s.last_run.exit_code == 1
    assert s.verified is None and s.changed == ()
    text = "\n".join(s.lines())
    assert "     2 × POST /v3/downloads/images/N: 404 ImageNotFound" in text
    assert "last run: #1 m.csv (exit 1, 4 spent)" in text


def test_verify_names_missing_resized_and_changed_files(folder: Path) -> None:
    assert journal_status(folder, verify=True).changed == ()
    (folder / "1000000.jpg").unlink()
    (folder / "1000001.jpg").write_bytes(b"short")
    data = (folder / "1000002.jpg").read_bytes()
    (folder / "1000002.jpg").write_bytes(b"\xff" + data[1:])  # same size, other bytes
    s = journal_status(folder, verify=True)
    assert s.verified == 3
    assert [(c.id, c.problem) for c in s.changed] == [
        ("1000000", "missing"),
        ("1000001", "5 bytes, 1001 were verified"),
        ("1000002", "content changed (sha256 differs)"),
    ]


def test_status_works_while_a_run_holds_the_lock_and_writes_nothing(folder: Path) -> None:
    running = Journal(folder)  # takes the lock, as a live run does
    try:
        before = {p.name: p.stat().st_mtime_ns for p in (folder / ".bulkgetty").iterdir()}
        assert journal_status(folder).done == 3
        after = {p.name: p.stat().st_mtime_ns for p in (folder / ".bulkgetty").iterdir()}
        assert after == before
    finally:
        running.close()


def test_status_of_a_folder_without_journal_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no bulkgetty journal"):
        journal_status(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_group_reasons_caps_the_groups_and_counts_the_rest() -> None:
    counts = [(f"reason {chr(97 + i)}", 20 - i) for i in range(15)]
    groups = group_reasons(counts)
    assert len(groups) == MAX_GROUPS
    assert groups[0] == ("reason a", 20)
    assert groups[-1] == ("other reasons (see the report)", sum(20 - i for i in range(9, 15)))
    assert sum(n for _, n in groups) == sum(n for _, n in counts)


def test_a_runs_tally_groups_as_status_does_and_names_three_ids_per_reason() -> None:
    tally = ReasonTally()
    for i in range(5):
        tally.add(f"POST /v3/downloads/images/{7000 + i}: 404 ImageNotFound", str(7000 + i))
    tally.add("the delivery URI was refused", "42")
    groups = tally.groups()
    assert [(r, n) for r, n, _ in groups] == list(
        group_reasons(
            [
                ("POST /v3/downloads/images/N: 404 ImageNotFound", 5),
                ("the delivery URI was refused", 1),
            ]
        )
    )
    assert reason_lines("failed", groups) == [
        "failed, by reason:",
        "       5 × POST /v3/downloads/images/N: 404 ImageNotFound (ids: 7000, 7001, 7002, …)",
        "       1 × the delivery URI was refused (ids: 42)",
    ]
    assert reason_lines("waiting", ReasonTally().groups()) == []
