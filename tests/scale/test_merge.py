"""`merge_shards` on shard journals written directly: what it accepts and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

from bulkgetty.assets import Asset
from bulkgetty.scale.merge import META_DEFAULTS, META_MANIFEST, META_SHARD, merge_shards
from bulkgetty.scale.shard import ShardSpec, file_digest
from bulkgetty.stages.journal import Journal

DEFAULTS = "asset_type=image product_type="


def make_shards(
    tmp: Path, ids: list[str], count: int, *, done: bool = True, skip: set[int] = frozenset()
) -> tuple[Path, list[Path]]:
    """Shard folders as `run --shard i/count` leaves them: every row of its shard done."""
    manifest = tmp / "ids.txt"
    manifest.write_text("\n".join(ids) + "\n")
    digest = file_digest(manifest)
    dirs = []
    for i in range(count):
        if i in skip:
            continue
        d = tmp / f"shard-{i}"
        j = Journal(d)
        spec = ShardSpec(i, count)
        j.bind_meta({META_SHARD: str(spec), META_MANIFEST: digest, META_DEFAULTS: DEFAULTS})
        run = j.begin_run(str(manifest))
        mine = [a for a in (Asset(x) for x in ids) if spec.owns(a)]
        for rec in j.upsert(mine, run):
            if done:
                j.record_intent(rec.key)
                j.record_acquired(rec.key, "http://d/x", 9e9)
                j.record_done(rec.key, path=f"{rec.asset.id}.jpg", size=10, sha256="0" * 64)
        j.close()
        dirs.append(d)
    return manifest, dirs


def assets_of(ids: list[str]) -> list[Asset]:
    return [Asset(x) for x in ids]


def test_merge_of_complete_shards_writes_one_report_and_summary(tmp_path: Path) -> None:
    ids = [str(100 + i) for i in range(30)]
    manifest, dirs = make_shards(tmp_path, ids, 3)
    out = tmp_path / "merged"
    result = merge_shards(dirs, manifest, assets_of(ids), out, defaults=DEFAULTS)
    assert result.problems == []
    assert result.exit_code == 0
    assert (result.assets, result.spends, result.bytes) == (30, 30, 300)
    rows = [json.loads(x) for x in (out / "report.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(ids)
    assert json.loads((out / "summary.json").read_text())["by_status"] == {"downloaded": 30}


def test_merge_names_a_missing_shard(tmp_path: Path) -> None:
    ids = [str(200 + i) for i in range(20)]
    manifest, dirs = make_shards(tmp_path, ids, 4, skip={2})
    result = merge_shards(dirs, manifest, assets_of(ids), tmp_path / "m", defaults=DEFAULTS)
    assert result.exit_code == 2
    assert result.problems == ["no folder for shard(s) 2/4"]


def test_merge_refuses_the_same_shard_twice_and_another_manifest(tmp_path: Path) -> None:
    ids = [str(300 + i) for i in range(20)]
    manifest, dirs = make_shards(tmp_path, ids, 2)
    twice = merge_shards(
        [dirs[0], dirs[0], dirs[1]], manifest, assets_of(ids), tmp_path / "m", defaults=DEFAULTS
    )
    assert "shard 0/2 is given 2 times" in twice.problems
    other = tmp_path / "other.txt"
    other.write_text("\n".join([*ids, "399"]) + "\n")
    moved = merge_shards(dirs, other, assets_of(ids), tmp_path / "m", defaults=DEFAULTS)
    assert any("another manifest" in p for p in moved.problems)


def test_merge_counts_rows_no_shard_has_run(tmp_path: Path) -> None:
    ids = [str(400 + i) for i in range(20)]
    manifest, dirs = make_shards(tmp_path, ids, 2)
    j = Journal(dirs[0])  # one shard's journal lost a row: it was never run
    j._db.execute("DELETE FROM assets WHERE key = (SELECT MIN(key) FROM assets)")
    j.close()
    result = merge_shards(dirs, manifest, assets_of(ids), tmp_path / "m", defaults=DEFAULTS)
    assert result.problems == ["1 manifest rows are in no shard's journal: run their shards "
                               "(again) before merging"]  # fmt: skip


def test_merge_refuses_a_done_asset_with_no_recorded_spend(tmp_path: Path) -> None:
    ids = [str(500 + i) for i in range(10)]
    manifest, dirs = make_shards(tmp_path, ids, 1, done=False)
    j = Journal(dirs[0])
    key = Asset(ids[0]).key
    j.record_done(key, path="x.jpg", size=1, sha256="0" * 64)
    j.close()
    result = merge_shards(dirs, manifest, assets_of(ids), tmp_path / "m", defaults=DEFAULTS)
    assert result.problems == [f"{dirs[0]}: {key} is done but no spend is recorded"]


def test_unfinished_shards_merge_with_exit_3(tmp_path: Path) -> None:
    ids = [str(600 + i) for i in range(10)]
    manifest, dirs = make_shards(tmp_path, ids, 2, done=False)
    result = merge_shards(dirs, manifest, assets_of(ids), tmp_path / "m", defaults=DEFAULTS)
    assert result.problems == []
    assert result.by_status == {"incomplete": 10}
    assert result.exit_code == 3
