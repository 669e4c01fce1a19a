"""Process faults: kill -9 anywhere, SIGINT/SIGTERM, two runs on one folder."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from bulkgetty.sandbox import SandboxConfig, SandboxThread
from tests.faults.conftest import Matrix, audit
from tests.harness import clean_env, cli, report, sandbox, start_cli, write_ids

CRASH = ("tests/faults/crashpoint.py",)


def _journal_ok(out: Path) -> None:
    db = sqlite3.connect(out / ".bulkgetty" / "journal.sqlite")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()


def _kill_at_random_points(
    tmp_path: Path,
    matrix: Matrix,
    *,
    assets: int,
    kills: int,
    fault: str,
    seed: int,
    scheme: str = "http",
) -> None:
    """Kill -9 at `kills` random moments, rerunning the same command after each.

    A kill can land between Getty charging a POST and the journal hearing the URI; such an
    asset is charged once and then fails naming --reacquire-expired (it is not lost: the
    money is accounted for and the user decides). Nothing is ever charged twice.
    """
    rng = random.Random(seed)
    ids = [str(9_700_000 + i) for i in range(assets)]
    config = SandboxConfig(api_latency=0.02, delivery_latency=0.05, bandwidth=2_000_000)
    with sandbox(config, scheme=scheme) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        args = ("run", str(manifest), "--out", str(out), "--concurrency", "8")
        runs = []
        for _ in range(kills):
            proc = start_cli(*args, env=env)
            time.sleep(rng.uniform(0.3, 1.5))
            proc.kill()
            runs.append(proc.communicate(timeout=30))
            assert max(sb.spends_by_asset().values(), default=0) <= 1
        final = cli(*args, env=env)
        assert final.returncode in (0, 1), final.stderr
        lost_uri = [
            r["id"] for r in report(out) if r["status"] not in ("downloaded", "already_done")
        ]
        for row in report(out):
            if row["id"] in lost_uri:
                assert "--reacquire-expired" in row["error"], row
        on_disk = [i for i in ids if i not in lost_uri]
        result = audit(sb, out, ids, [*runs, final], fault=fault, on_disk=on_disk, root=tmp_path)
        _journal_ok(out)
        matrix.check(result, note=f"{len(lost_uri)} charged, URI lost: need --reacquire-expired")


def test_kill_9_at_10_random_points_of_a_60_asset_run(
    tmp_path: Path, matrix: Matrix, scheme: str
) -> None:
    _kill_at_random_points(
        tmp_path,
        matrix,
        assets=60,
        kills=10,
        fault="kill -9 x10, 60 assets",
        seed=20261125,
        scheme=scheme,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_at_10_random_points_of_a_300_asset_run(tmp_path: Path, matrix: Matrix) -> None:
    _kill_at_random_points(
        tmp_path, matrix, assets=300, kills=10, fault="kill -9 x10, 300 assets", seed=5
    )


@pytest.mark.parametrize("point", ["before_rename:3", "after_rename:1", "after_rename:3"])
def test_kill_9_around_the_final_rename_keeps_one_file_per_asset(
    tmp_path: Path, matrix: Matrix, point: str
) -> None:
    """A power cut right before or right after `.part` -> NAME: the rerun finishes without
    a `NAME (2).ext` duplicate (the audit counts any file that is not a correct asset) and
    without a new spend."""
    ids = [str(9_710_000 + i) for i in range(6)]
    # Files take ~0.7 s each, so the journal has recorded each one's name before the rename.
    config = SandboxConfig(image_bytes=(150_000, 200_000), bandwidth=250_000)
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        args = ("run", str(manifest), "--out", str(out), "--concurrency", "2")
        crashed = cli(*args, env={**env, "BULKGETTY_TEST_CRASH_AT": point}, prefix=CRASH)
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        _journal_ok(out)
        done = cli(*args, env=env)
        assert done.returncode == 0, done.stderr
        result = audit(sb, out, ids, [crashed, done], fault=f"kill -9 {point}", root=tmp_path)
        matrix.check(result)


def test_kills_after_the_rename_in_two_runs_leave_one_file_not_a_copy_per_kill(
    tmp_path: Path, matrix: Matrix
) -> None:
    """A small file's name reaches the journal only with its `done`: a kill right after its
    rename leaves `NAME.jpg` unowned, a second such kill `NAME (2).jpg`; the third run's
    `NAME (3).jpg` and every older unowned copy go, `NAME.jpg` stays (the random kill row
    found two such copies left over)."""
    ids = ["9715000"]
    with SandboxThread(SandboxConfig(image_bytes=(50_000, 60_000))) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        args = ("run", str(manifest), "--out", str(out))
        crashed = [
            cli(*args, env={**env, "BULKGETTY_TEST_CRASH_AT": "after_rename:1"}, prefix=CRASH)
            for _ in range(2)
        ]
        assert [c.returncode for c in crashed] == [-signal.SIGKILL] * 2
        assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
            "GettyImages-9715000 (2).jpg",
            "GettyImages-9715000.jpg",
        ]
        done = cli(*args, env=env)
        assert done.returncode == 0, done.stderr
        result = audit(
            sb, out, ids, [*crashed, done], fault="kill -9 after the rename x2", root=tmp_path
        )
        matrix.check(result)
        assert [Path(row["path"]).name for row in report(out)] == ["GettyImages-9715000.jpg"]


@pytest.mark.parametrize("nth", [4, 9, 15])
def test_kill_9_inside_a_journal_write_leaves_a_consistent_journal(
    tmp_path: Path, matrix: Matrix, nth: int
) -> None:
    """SIGKILL with a journal transaction written but not committed (intent, URI, done or
    progress, depending on N): SQLite rolls it back, the rerun spends nothing twice."""
    ids = [str(9_720_000 + i) for i in range(8)]
    with SandboxThread(SandboxConfig(image_bytes=(20_000, 60_000))) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        args = ("run", str(manifest), "--out", str(out), "--concurrency", "2")
        point = f"journal_commit:{nth}"
        crashed = cli(*args, env={**env, "BULKGETTY_TEST_CRASH_AT": point}, prefix=CRASH)
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        _journal_ok(out)
        done = cli(*args, env=env)
        lost_uri = [
            r["id"] for r in report(out) if r["status"] not in ("downloaded", "already_done")
        ]
        assert all("--reacquire-expired" in r["error"] for r in report(out) if r["id"] in lost_uri)
        on_disk = [i for i in ids if i not in lost_uri]
        result = audit(
            sb,
            out,
            ids,
            [crashed, done],
            fault=f"kill -9 in journal write #{nth}",
            on_disk=on_disk,
            root=tmp_path,
        )
        matrix.check(result, note=f"{len(lost_uri)} charged, URI lost" if lost_uri else "")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_stop_cleanly_and_the_rerun_resumes(
    tmp_path: Path, matrix: Matrix, sig: signal.Signals
) -> None:
    ids = [str(9_600_000 + i) for i in range(12)]
    with SandboxThread(SandboxConfig(delivery_latency=0.3, bandwidth=400_000)) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        proc = start_cli("run", str(manifest), "--out", str(out), "--concurrency", "3", env=env)
        # Signal once the run is under way (a loaded machine may take over 1.5 s to start
        # Python: a signal before the handlers exist kills it as the signal's default would).
        deadline = time.monotonic() + 30
        while not sb.ledger and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)
        proc.send_signal(sig)
        stopped = proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert "run the same command again" in stopped[1]
        assert "Traceback" not in stopped[1]
        _journal_ok(out)
        done = cli("run", str(manifest), "--out", str(out), env=env)
        assert done.returncode == 0, done.stderr
        result = audit(sb, out, ids, [stopped, done], fault=f"{sig.name} mid-run", root=tmp_path)
        matrix.check(result)


def test_a_second_run_on_the_same_folder_is_refused(tmp_path: Path, matrix: Matrix) -> None:
    ids = [str(9_500_000 + i) for i in range(8)]
    with SandboxThread(SandboxConfig(delivery_latency=0.5)) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        first = start_cli("run", str(manifest), "--out", str(out), "--concurrency", "1", env=env)
        try:
            deadline = time.monotonic() + 20
            while not (out / ".bulkgetty" / "lock").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            second = cli("run", str(manifest), "--out", str(out), env=env)
            assert second.returncode == 2
            assert "another bulkgetty run" in second.stderr
        finally:
            first_out = first.communicate(timeout=60)
        assert first.returncode == 0
        result = audit(sb, out, ids, [second, first_out], fault="two runs on one DIR")
        matrix.check(result)


@pytest.mark.parametrize("size_mib", [8, 64])
def test_kill_9_before_the_first_bytes_of_a_large_file_resumes_under_its_own_name(
    tmp_path: Path, matrix: Matrix, size_mib: int
) -> None:
    """Issue 12 item 9: SIGKILL right before the first bytes reach a new `.part` (well inside
    the first 0.5 s, before any progress tick): the journal already knows the part's name, so
    the rerun adopts it, and the file ends under its own name, not as `NAME (2).ext`.
    8 MiB streams as one range; 64 MiB is fetched as segments."""
    asset = f"97300{size_mib:02d}"
    config = SandboxConfig(sizes={asset: size_mib * 2**20})
    with SandboxThread(config) as sb:
        out, args, env, crashed = _video_killed_at(sb, tmp_path, asset, "part_write:1")
        assert [p.name for p in out.glob("*.part")] == [f"GettyImages-{asset}.mp4.part"]
        _journal_ok(out)
        done = cli(*args, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        (row,) = report(out)
        assert Path(row["path"]).name == f"GettyImages-{asset}.mp4", row
        result = audit(
            sb,
            out,
            [asset],
            [crashed, done],
            fault=f"kill -9 before the first bytes of a {size_mib} MiB file",
            asset_type="video",
            root=tmp_path,
        )
        matrix.check(result, note="resumed under its own name")


def _video_killed_at(
    sb: SandboxThread, tmp_path: Path, asset: str, point: str
) -> tuple[Path, tuple[str, ...], dict[str, str], subprocess.CompletedProcess[str]]:
    """Run one video asset into `tmp_path/o` and SIGKILL the run at crash point `point`;
    returns (folder, the run's arguments, its environment, the killed run)."""
    env = clean_env(sb.credentials_env())
    manifest = write_ids(tmp_path / "ids.txt", [asset])
    out = tmp_path / "o"
    args = ("run", str(manifest), "--out", str(out), "--asset-type", "video")
    crash_env = {**env, "BULKGETTY_TEST_CRASH_AT": point}
    crashed = cli(*args, env=crash_env, prefix=CRASH, timeout=120)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    return out, args, env, crashed


def _ranges(requests: list[dict[str, str]]) -> list[tuple[int, int]]:
    """(first, last) byte of each ranged request, in the order they came."""
    spans = []
    for headers in requests:
        rng = headers.get("Range")
        if rng is not None:
            first, _, last = rng.removeprefix("bytes=").partition("-")
            spans.append((int(first), int(last) if last else -1))
    return spans


@pytest.mark.slow
def test_kill_9_after_a_slow_large_file_was_split_into_segments_resumes_each_one(
    tmp_path: Path, matrix: Matrix
) -> None:
    """A 64 MiB video held to 8 MiB/s per connection starts on one stream and is split into
    ranges after its probation; SIGKILL lands mid-ranges (the 40th write of >= 1 MiB, over a
    second after the split: the journal has the segments by then). The rerun asks only for
    ranges, each ending where a segment ends and starting at or after where it starts, at
    least one past its start (bytes on disk kept), and buys nothing again."""
    size = 64 * 2**20
    asset = "9730100"
    with SandboxThread(SandboxConfig(sizes={asset: size}, bandwidth=8 * 2**20)) as sb:
        out, args, env, crashed = _video_killed_at(sb, tmp_path, asset, "part_write:40")
        first_run = len(sb.stats.delivery_requests)
        split = _ranges([r.headers for r in sb.stats.delivery_requests])
        assert len(split) == 3, split  # one stream, then three more ranges
        _journal_ok(out)
        done = cli(*args, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        rerun = [r.headers for r in sb.stats.delivery_requests[first_run:]]
        resumed = _ranges(rerun)
        assert rerun and len(resumed) == len(rerun), rerun  # no request from byte 0
        segments = [(0, split[0][0] - 1), *split]
        for first, last in resumed:
            assert any(a <= first and last == b for a, b in segments), (resumed, segments)
        assert any((first, last) not in segments for first, last in resumed)
        result = audit(
            sb,
            out,
            [asset],
            [crashed, done],
            fault="kill -9 after a slow large file was split into segments",
            asset_type="video",
            root=tmp_path,
        )
        matrix.check(result, note=f"rerun asked {len(resumed)} ranges")
