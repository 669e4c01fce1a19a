"""Shard arithmetic: ownership by sha256 of identity, scheduler environments, budget split."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bulkgetty.assets import Asset
from bulkgetty.errors import JournalError, UsageError
from bulkgetty.scale.shard import ShardSpec, file_digest, parse_shard, shard_of, split_budget
from bulkgetty.stages.journal import Journal, filesystem_type, journal_mode_for


def test_shard_of_is_sha256_of_the_identity_mod_n() -> None:
    asset = Asset("1167612765", "image", product_type="editorialsubscription", height=1024)
    digest = hashlib.sha256(asset.key.encode()).digest()
    assert shard_of(asset, 7) == int.from_bytes(digest[:8], "big") % 7


def test_shard_of_agrees_across_processes_with_different_hash_seeds() -> None:
    code = (
        "from bulkgetty.assets import Asset; from bulkgetty.scale.shard import shard_of;"
        "print([shard_of(Asset(str(i)), 13) for i in range(50)])"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outs) == 1


def test_every_row_has_exactly_one_shard_and_duplicates_share_it() -> None:
    assets = [Asset(str(10_000 + i)) for i in range(2000)]
    specs = [ShardSpec(i, 8) for i in range(8)]
    owners = Counter(sum(s.owns(a) for s in specs) for a in assets)
    assert owners == {1: 2000}
    dup = Asset("10005")
    assert [s.owns(dup) for s in specs] == [s.owns(assets[5]) for s in specs]
    sizes = [len(list(s.select(assets))) for s in specs]
    assert min(sizes) > 150  # spread, not all in one shard


def test_different_options_of_one_id_are_different_identities() -> None:
    assert Asset("1", height=100).key != Asset("1", height=200).key


def test_parse_explicit_spec() -> None:
    assert parse_shard("3/8", {}) == ShardSpec(3, 8)


@pytest.mark.parametrize("text", ["8/8", "-1/4", "1/0", "x", "auto/", "1/2/3"])
def test_parse_rejects_bad_specs(text: str) -> None:
    with pytest.raises(UsageError):
        parse_shard(text, {})


def test_auto_reads_slurm_array_with_offset_range() -> None:
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "8"}
    assert parse_shard("auto", env) == ShardSpec(4, 8)


def test_auto_with_count_refuses_disagreeing_slurm_count() -> None:
    env = {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "8"}
    with pytest.raises(UsageError, match="SLURM_ARRAY_TASK_COUNT says 8"):
        parse_shard("auto/4", env)


def test_auto_reads_kubernetes_index_and_needs_the_count() -> None:
    assert parse_shard("auto/6", {"JOB_COMPLETION_INDEX": "5"}) == ShardSpec(5, 6)
    with pytest.raises(UsageError, match="auto/N"):
        parse_shard("auto", {"JOB_COMPLETION_INDEX": "5"})


def test_auto_without_scheduler_says_what_to_do() -> None:
    with pytest.raises(UsageError, match="give the shard as I/N"):
        parse_shard("auto", {})


@pytest.mark.parametrize(
    ("remaining", "shards", "parallel", "rate"),
    [(1000, 8, 4, 5.0), (7, 8, 8, 5.0), (10_001, 3, 2, 1.0), (999, 64, 16, 7.0)],
)
def test_split_budget_never_sums_past_the_whole(
    remaining: int, shards: int, parallel: int, rate: float
) -> None:
    b = split_budget(shards=shards, parallel=parallel, downloads_remaining=remaining, api_rate=rate)
    assert b.max_downloads is not None and b.api_rate is not None
    assert b.max_downloads * shards + b.unassigned == remaining
    assert b.unassigned < shards
    assert b.api_rate * min(parallel, shards) <= rate
    assert b.api_rate > 0


def test_split_budget_rate_uses_parallel_not_shards() -> None:
    b = split_budget(shards=100, parallel=4, downloads_remaining=None, api_rate=8.0)
    assert (b.max_downloads, b.api_rate) == (None, 2.0)


def test_split_budget_refuses_a_rate_too_small_to_split() -> None:
    with pytest.raises(UsageError, match="run fewer shards at once"):
        split_budget(shards=10_000, parallel=10_000, downloads_remaining=1, api_rate=1.0)


def test_file_digest_is_sha256_of_the_bytes(tmp_path: Path) -> None:
    p = tmp_path / "m.txt"
    p.write_bytes(b"1\n2\n")
    assert file_digest(p) == hashlib.sha256(b"1\n2\n").hexdigest()


# journal binding (the journal's meta table) --------------------------------------------------


def test_journal_binds_meta_on_first_run_and_refuses_a_different_one(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.bind_meta({"shard": "0/4", "manifest_sha256": "aa"})
    j.bind_meta({"shard": "0/4", "manifest_sha256": "aa"})  # the same again: fine
    with pytest.raises(JournalError, match="shard 0/4, this run has 0/8"):
        j.bind_meta({"shard": "0/8", "manifest_sha256": "aa"})
    with pytest.raises(JournalError, match="manifest_sha256"):
        j.bind_meta({"shard": "0/4", "manifest_sha256": "bb"})
    assert j.read_meta()["shard"] == "0/4"
    j.close()


def test_journal_uses_wal_on_local_disk_and_honours_the_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BULKGETTY_JOURNAL_MODE", raising=False)
    assert filesystem_type(tmp_path) is not None
    expected = "DELETE" if filesystem_type(tmp_path) in {"nfs", "nfs4"} else "WAL"
    assert journal_mode_for(tmp_path) == expected
    monkeypatch.setenv("BULKGETTY_JOURNAL_MODE", "delete")
    j = Journal(tmp_path)
    assert j.journal_mode == "DELETE"
    assert not (tmp_path / ".bulkgetty" / "journal.sqlite-wal").exists()
    j.close()
