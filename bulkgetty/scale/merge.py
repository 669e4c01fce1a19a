"""`bulkgetty merge`: prove that the shards of a job array did every manifest row exactly once.

Each shard folder's journal names its shard (`i/N`) and its manifest's digest (bound by the
first run, see `Journal.bind_meta`). Merging checks that the folders are the N shards of one
manifest, that every unique manifest row is in the journal of the shard that owns it and in no
other, and that the spends add up (every acquired or finished asset was paid for at least once);
then it writes one report (JSONL, one object per asset, as `run` writes) and one summary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bulkgetty.assets import Asset
from bulkgetty.errors import JournalError
from bulkgetty.scale.shard import ShardSpec, file_digest, shard_of
from bulkgetty.stages.journal import AssetState, Journal, Record
from bulkgetty.stages.report import ReportRow

__all__ = ("META_DEFAULTS", "META_MANIFEST", "META_SHARD", "MergeResult", "merge_shards")

#: Journal meta names a shard run binds (see cli.run_command).
META_SHARD = "shard"
META_MANIFEST = "manifest_sha256"
META_DEFAULTS = "manifest_defaults"

#: Report status per journal state; assets a shard has not finished are `incomplete`.
_STATUS = {
    AssetState.DONE: "downloaded",
    AssetState.FAILED: "failed",
    AssetState.WAITING_FOR_QUOTA: "waiting_for_quota",
}
#: Problems listed one per line before the rest are counted.
MAX_LISTED = 20


@dataclass(slots=True)
class MergeResult:
    """Totals over all shards, and every inconsistency found (empty when the merge is sound)."""

    shards: int = 0
    assets: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    spends: int = 0
    spends_by_shard: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """2 the shards do not add up; else as `run`: 1 failed, 3 not all done yet, 0 done."""
        if self.problems:
            return 2
        if self.by_status.get("failed"):
            return 1
        return 0 if self.by_status.get("downloaded", 0) == self.assets else 3

    def to_dict(self) -> dict[str, object]:
        return {
            "shards": self.shards,
            "assets": self.assets,
            "by_status": self.by_status,
            "spends": self.spends,
            "spends_by_shard": self.spends_by_shard,
            "bytes": self.bytes,
            "problems": self.problems,
            "exit_code": self.exit_code,
        }

    def line(self) -> str:
        parts = ", ".join(f"{n} {s}" for s, n in sorted(self.by_status.items()))
        return (
            f"{self.shards} shards, {self.assets} assets: {parts or 'none'}; "
            f"{self.bytes / 1e6:.1f} MB; {self.spends} downloads spent"
        )


@dataclass(frozen=True, slots=True)
class _Shard:
    path: Path
    spec: ShardSpec
    manifest_sha256: str
    defaults: str


def merge_shards(
    dirs: Sequence[Path], manifest: Path, assets: Iterable[Asset], out: Path, *, defaults: str
) -> MergeResult:
    """Check the shard folders against the manifest and write `out/report.jsonl` and
    `out/summary.json`. `assets` are the manifest's rows read with `defaults` (as the journal
    spells them), which must be the shards' own."""
    result = MergeResult()
    shards = [_open_meta(d) for d in dirs]
    _check_layout(shards, file_digest(manifest), defaults, result)
    if result.problems:
        return result
    count = shards[0].spec.count
    by_index = {s.spec.index: s for s in shards}
    # Unique identities per owning shard: 16-byte digests keep a 10M-row manifest affordable.
    expected: dict[bytes, int] = {}
    for asset in assets:
        expected.setdefault(asset.digest, shard_of(asset, count))
    out.mkdir(parents=True, exist_ok=True)
    seen: set[bytes] = set()
    with open(out / "report.jsonl", "wb") as report:
        for index in sorted(by_index):
            shard = by_index[index]
            journal = Journal(shard.path, read_only=True)
            try:
                spent = 0
                for rec in journal.iter_records():
                    spent += rec.spends
                    _check_record(rec, shard, expected, seen, result)
                    report.write(orjson.dumps(_row(rec, shard.path)) + b"\n")
            finally:
                journal.close()
            result.spends_by_shard[str(shard.spec)] = spent
            result.spends += spent
    missing = [d for d in expected if d not in seen]
    if missing:
        result.problems.append(
            f"{len(missing)} manifest rows are in no shard's journal: "
            "run their shards (again) before merging"
        )
    result.shards = len(shards)
    with open(out / "summary.json", "wb") as f:
        f.write(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    return result


def _open_meta(path: Path) -> _Shard:
    journal = Journal(path, read_only=True)
    try:
        meta = journal.read_meta()
    finally:
        journal.close()
    spec_text = meta.get(META_SHARD)
    if spec_text is None or META_MANIFEST not in meta:
        raise JournalError(f"{path} was not run with --shard: nothing to merge there")
    index, count = (int(x) for x in spec_text.split("/"))
    return _Shard(path, ShardSpec(index, count), meta[META_MANIFEST], meta.get(META_DEFAULTS, ""))


def _check_layout(shards: list[_Shard], digest: str, defaults: str, result: MergeResult) -> None:
    counts = {s.spec.count for s in shards}
    if len(counts) != 1:
        result.problems.append(f"the folders were run with different shard counts: {counts}")
        return
    count = counts.pop()
    for s in shards:
        if s.manifest_sha256 != digest:
            result.problems.append(f"{s.path} was run on another manifest (sha256 differs)")
        if s.defaults != defaults:
            result.problems.append(
                f"{s.path} was run with {s.defaults}, not {defaults} (--asset-type/--product-type)"
            )
    indexes = [s.spec.index for s in shards]
    for i in sorted(set(indexes)):
        if indexes.count(i) > 1:
            result.problems.append(f"shard {i}/{count} is given {indexes.count(i)} times")
    absent = sorted(set(range(count)) - set(indexes))
    if absent:
        names = ", ".join(f"{i}/{count}" for i in absent)
        result.problems.append(f"no folder for shard(s) {names}")


def _check_record(
    rec: Record, shard: _Shard, expected: dict[bytes, int], seen: set[bytes], result: MergeResult
) -> None:
    digest = rec.asset.digest
    owner = expected.get(digest)
    problems = result.problems
    if owner is None:
        problems.append(f"{shard.path}: {rec.key} is not in the manifest")
    elif owner != shard.spec.index:
        problems.append(f"{shard.path}: {rec.key} belongs to shard {owner}, not {shard.spec}")
    elif digest in seen:
        problems.append(f"{shard.path}: {rec.key} is in more than one shard")
    seen.add(digest)
    if rec.state in (AssetState.DONE, AssetState.ACQUIRED) and rec.spends < 1:
        problems.append(f"{shard.path}: {rec.key} is {rec.state} but no spend is recorded")
    status = _STATUS.get(rec.state, "incomplete")
    result.assets += 1
    result.by_status[status] = result.by_status.get(status, 0) + 1
    if rec.state is AssetState.DONE:
        result.bytes += rec.bytes or 0
    del problems[MAX_LISTED + 1 :]


def _row(rec: Record, shard_dir: Path) -> dict[str, object]:
    a = rec.asset
    row = ReportRow(
        id=a.id,
        asset_type=a.asset_type,
        product_type=a.product_type,
        status=_STATUS.get(rec.state, "incomplete"),
        path=str(shard_dir / rec.path) if rec.path and rec.state is AssetState.DONE else None,
        bytes=rec.bytes if rec.state is AssetState.DONE else None,
        sha256=rec.sha256 if rec.state is AssetState.DONE else None,
        error=rec.error,
    )
    return {k: getattr(row, k) for k in ReportRow.__slots__}
