"""Disk faults: a full disk, a read-only folder, `.part` and finished files changed by hand."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulkgetty.sandbox import SandboxConfig, SandboxThread
from tests.faults.conftest import Matrix, audit
from tests.harness import clean_env, cli, journaled_bytes, report, sha256, start_cli, write_ids


def _journal_ok(out: Path) -> None:
    db = sqlite3.connect(out / ".bulkgetty" / "journal.sqlite")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs of our own (root only): a disk that really fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mnt)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_mid_file_fails_clearly_keeps_the_part_and_resumes(
    tmp_path: Path, tmpfs: Path, matrix: Matrix
) -> None:
    """ENOSPC in the middle of a file: a clear error naming the disk, the journal intact, the
    `.part` kept; after space is freed the same command finishes without buying again."""
    ids = [str(9_840_000 + i) for i in range(4)]
    sizes = dict.fromkeys(ids, 400_000)
    with SandboxThread(SandboxConfig(sizes=sizes)) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmpfs / "o"
        args = ("run", str(manifest), "--out", str(out), "--concurrency", "1")
        full = cli(*args, env=env)
        assert full.returncode == 1, full.stdout + full.stderr
        assert "Traceback" not in full.stderr
        assert "disk full" in full.stderr and "run the same command again" in full.stderr
        assert list(out.glob("*.part")), "the partial file was not kept"
        _journal_ok(out)
        spent = sum(sb.spends_by_asset().values())
        subprocess.run(["mount", "-o", "remount,size=8m", str(tmpfs)], check=True)
        done = cli(*args, env=env)
        # A POST in flight when the run stopped is cancelled with it, as under kill -9: that
        # asset is charged once and fails naming --reacquire-expired (never bought twice).
        lost_uri = [r for r in report(out) if r["status"] == "failed"]
        assert all("--reacquire-expired" in r["error"] for r in lost_uri), lost_uri
        assert done.returncode == (1 if lost_uri else 0), done.stderr
        on_disk = [i for i in ids if i not in {r["id"] for r in lost_uri}]
        result = audit(
            sb, out, ids, [full, done], fault="disk full mid-file (ENOSPC)", on_disk=on_disk
        )
        note = f"stopped after {spent} spends; exit 1 naming the disk"
        matrix.check(result, note=note + (f"; {len(lost_uri)} URI lost" if lost_uri else ""))


def test_read_only_output_folder_exits_2_and_spends_nothing(
    tmp_path: Path, tmpfs: Path, matrix: Matrix
) -> None:
    with SandboxThread() as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ["9850001", "9850002"])
        out = tmpfs / "o"
        out.mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
        refused = cli("run", str(manifest), "--out", str(out), env=env)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "read-only" in refused.stderr.lower(), refused.stderr
        assert "nothing was spent" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert sb.stats.token_requests == 0 and sb.stats.api_requests == 0
        result = audit(sb, out, [], [refused], fault="read-only output folder")
        matrix.check(result, note=refused.stderr.strip().splitlines()[0][:70])


def _kill_mid_file(
    tmp_path: Path, sb: SandboxThread, asset: str, size: int
) -> tuple[Path, tuple[str, str]]:
    """Start a run of one asset and kill -9 it once its `.part` holds over a third."""
    env = clean_env(sb.credentials_env())
    manifest = write_ids(tmp_path / "ids.txt", [asset])
    out = tmp_path / "o"
    args = ("run", str(manifest), "--out", str(out), "--segments", "1")
    proc = start_cli(*args, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        parts = list(out.glob("*.part"))
        if parts and parts[0].stat().st_size > size // 3 and journaled_bytes(out) > 0:
            break  # bytes on disk, and the journal has claimed some of them
        time.sleep(0.05)
    proc.kill()
    return out, proc.communicate(timeout=30)


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_a_part_deleted_or_truncated_by_hand_is_fetched_again_from_what_is_left(
    tmp_path: Path, matrix: Matrix, how: str
) -> None:
    """Progress is journalled every 8 MiB, so the file is 24 MiB; the rerun resumes from
    min(journal, disk): 0 for a deleted part, the cut for a part truncated below the journal."""
    asset, size = "9860001", 24 * 2**20
    with SandboxThread(SandboxConfig(sizes={asset: size}, bandwidth=6 * 2**20)) as sb:
        out, killed = _kill_mid_file(tmp_path, sb, asset, size)
        (part,) = out.glob("*.part")
        db = sqlite3.connect(out / ".bulkgetty" / "journal.sqlite")
        try:
            (blob,) = db.execute("SELECT transfer FROM assets").fetchone()
        finally:
            db.close()
        journalled = int(json.loads(blob)["done"])
        kept = 0
        if how == "deleted":
            part.unlink()
        else:
            os.truncate(part, part.stat().st_size // 2)
            kept = min(journalled, part.stat().st_size)
        seen = len(sb.stats.delivery_requests)
        sb.configure(bandwidth=None)
        env = clean_env(sb.credentials_env())
        done = cli("run", str(tmp_path / "ids.txt"), "--out", str(out), env=env)
        assert done.returncode == 0, done.stderr
        first = sb.stats.delivery_requests[seen]
        start = int(first.headers.get("Range", "bytes=0-").split("=")[1].split("-")[0])
        assert start == kept, first.headers
        result = audit(
            sb, out, [asset], [killed, done], fault=f".part {how} by hand", root=tmp_path
        )
        matrix.check(result, note=f"resumed from byte {start}")


def test_a_finished_file_cut_short_by_hand_is_fetched_again_beside_it(
    tmp_path: Path, matrix: Matrix
) -> None:
    """A finished file cut short by hand: the rerun notices (size) and fetches it again with
    the stored URI, buying nothing. The changed file is the user's now and is never
    overwritten: the good copy lands beside it as `NAME (2).ext`, and the report says so."""
    ids = ["9870001", "9870002"]
    with SandboxThread() as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        first = cli("run", str(manifest), "--out", str(out), env=env)
        assert first.returncode == 0, first.stderr
        path = Path(next(r for r in report(out) if r["id"] == ids[0])["path"])
        os.truncate(path, path.stat().st_size - 10)
        again = cli("run", str(manifest), "--out", str(out), env=env)
        assert again.returncode == 0, again.stderr
        row = next(r for r in report(out) if r["id"] == ids[0])
        assert row["status"] == "downloaded" and row["path"] != str(path)
        assert sha256(Path(row["path"])) == sb.expected("image", ids[0]).sha256
        result = audit(
            sb,
            out,
            ids,
            [first, again],
            fault="finished file cut short by hand",
            allowed_files=[path.name],
        )
        matrix.check(result, note="good copy beside the changed one, 0 spends")


def test_a_finished_file_changed_in_place_at_the_same_length_is_named_by_status_verify(
    tmp_path: Path, matrix: Matrix
) -> None:
    """A rerun checks lengths only (hashing every file would make every rerun slow), so a
    same-length edit is `already_done`; `bulkgetty status DIR --verify` re-hashes and names
    it (exit 1), and the good file beside it passes."""
    ids = ["9870011", "9870012"]
    with SandboxThread() as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        first = cli("run", str(manifest), "--out", str(out), env=env)
        assert first.returncode == 0, first.stderr
        path = Path(next(r for r in report(out) if r["id"] == ids[0])["path"])
        with open(path, "r+b") as f:
            f.write(b"changed by hand")
        verify = cli("status", str(out), "--verify", env=env)
        result = audit(
            sb,
            out,
            ids,
            [first, verify],
            fault="finished file changed, same length",
            on_disk=[ids[1]],
            allowed_files=[path.name],
        )
        matrix.check(result, note="status --verify names it (exit 1); 0 spends")
        assert verify.returncode == 1, verify.stdout + verify.stderr
        assert "content changed (sha256 differs)" in verify.stdout
        assert f"{path.name}" in verify.stdout and f"asset {ids[0]}" in verify.stdout
        assert verify.stdout.count("content changed") == 1
