"""Worker-process faults (`--workers N`): a worker killed with -9 in the middle of large files.

The main process keeps buying, journaling and reporting; the dead worker's transfers fail as
retryable read errors, resume from their `.part` in a new worker, and nothing is bought twice.
A Ctrl-C of a run with workers stops as in one process, and the rerun finishes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bulkgetty.sandbox import SandboxConfig
from tests.faults.conftest import Matrix, audit
from tests.faults.test_process import _kill_at_random_points
from tests.harness import (
    REPO,
    RUN_DEFAULTS,
    clean_env,
    cli,
    command,
    report,
    sandbox,
    start_cli,
    write_ids,
)

MiB = 2**20
#: A 20-28 MB video at 8 MB/s takes about 3 s: long enough to be cut well past its first
#: journal claim (every 8 MiB), short enough for the suite.
LARGE = SandboxConfig(video_bytes=(20_000_000, 28_000_000), bandwidth=8_000_000)


def worker_pids(parent: int) -> list[int]:
    """The `python -m bulkgetty.stages.workers` children of `parent`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == parent and b"bulkgetty.stages.workers" in cmdline:
            found.append(int(stat.parent.name))
    return sorted(found)


def _wait_for_part(out: Path, at_least: int, timeout: float = 30) -> None:
    """Until some `.part` in `out` holds `at_least` bytes (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sizes = [p.stat().st_size for p in out.glob("*.part") if p.exists()]
        if any(s >= at_least for s in sizes):
            return
        time.sleep(0.05)
    raise AssertionError(f"no .part reached {at_least} bytes in {timeout} s")


def test_kill_9_of_a_worker_mid_file_resumes_its_files_and_buys_nothing_twice(
    tmp_path: Path, matrix: Matrix
) -> None:
    """Two kills, each of a worker in the middle of large files (past their first claim):
    the run finishes by itself with every file whole, each asset bought once, and the cut
    files resumed from their `.part` (a Range request from past the start)."""
    ids = [str(9_930_000 + i) for i in range(4)]
    with sandbox(LARGE) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        args = ("run", str(manifest), "--out", str(out), "--asset-type", "video")
        proc = start_cli(*args, "--concurrency", "4", "--workers", "2", env=env)
        killed = []
        for threshold in (10 * MiB, 20 * MiB):
            _wait_for_part(out, threshold)
            pids = worker_pids(proc.pid)
            assert pids, "no worker process found"
            victim = pids[len(killed) % len(pids)]
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
        stdout, stderr = proc.communicate(timeout=120)
        assert killed, "no worker was killed"
        assert proc.returncode == 0, stderr
        assert {r["status"] for r in report(out)} == {"downloaded"}
        result = audit(
            sb,
            out,
            ids,
            [(stdout, stderr)],
            fault="kill -9 of a worker x2, 4 large files",
            asset_type="video",
        )
        resumed = [
            r.headers["Range"]
            for r in sb.stats.delivery_requests
            if not r.headers.get("Range", "bytes=0-").startswith("bytes=0-")
        ]
        assert resumed, "no cut file was resumed with a Range request"
        note = f"{len(killed)} workers killed, {len(resumed)} files resumed"
        matrix.check(result, note=f"{note}, {result.refetched:,} B fetched again")


def test_kill_9_of_workers_among_many_small_files_leaves_one_file_per_asset(
    tmp_path: Path, matrix: Matrix
) -> None:
    """Three kills of a worker while 150 small files stream (each finished in one hop, its
    name never journaled before its rename): the run finishes by itself, one file per asset
    (a file a dead worker renamed unreported is kept, its refetched copy dropped), each asset
    bought once."""
    ids = [str(9_933_000 + i) for i in range(150)]
    config = SandboxConfig(image_bytes=(100_000, 600_000), bandwidth=1_500_000)
    with sandbox(config) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        args = ("run", str(manifest), "--out", str(out), "--workers", "2")
        proc = start_cli(*args, "--concurrency", "16", env=env)
        killed = []
        for done in (20, 50, 80):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                if sum(1 for p in out.glob("*.jpg")) >= done:
                    break
                time.sleep(0.02)
            pids = worker_pids(proc.pid)
            if pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pids[len(killed) % len(pids)], signal.SIGKILL)
                    killed.append(pids[0])
        stdout, stderr = proc.communicate(timeout=120)
        assert killed, "no worker was killed"
        assert proc.returncode == 0, stderr
        result = audit(
            sb, out, ids, [(stdout, stderr)], fault="kill -9 of a worker x3, 150 small files"
        )
        matrix.check(result, note=f"{len(killed)} workers killed")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_to_the_process_group_keeps_the_parts_and_the_rerun_finishes(
    tmp_path: Path, matrix: Matrix, sig: signal.Signals
) -> None:
    """Ctrl-C on a terminal (or a service manager's SIGTERM) reaches the whole process group:
    the workers ignore it, the main process stops as in one process (cancels the jobs, which
    keep their `.part`), exits 130, and no worker outlives it; the rerun resumes and spends
    nothing."""
    ids = [str(9_931_000 + i) for i in range(3)]
    with sandbox(LARGE) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        args = ("run", str(manifest), "--out", str(out), "--asset-type", "video")
        args += ("--workers", "2")
        proc = subprocess.Popen(
            command(args),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            start_new_session=True,  # its own process group, as a terminal's job has
        )
        _wait_for_part(out, 10 * MiB)
        workers = worker_pids(proc.pid)
        assert workers, "no worker process found"
        os.killpg(proc.pid, sig)
        stopped = proc.communicate(timeout=60)
        assert proc.returncode == 130, stopped[1]
        assert "Traceback" not in stopped[1]  # no worker died of the signal
        for pid in workers:
            assert not _alive(pid), "a worker outlived the run"
        spent = sum(sb.spends_by_asset().values())
        done = cli(*args, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        assert sum(sb.spends_by_asset().values()) == spent == len(ids)
        name = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
        result = audit(
            sb,
            out,
            ids,
            [stopped, done],
            fault=f"{name} to the process group of a run with 2 workers",
            asset_type="video",
        )
        matrix.check(result, note=f"{result.refetched:,} B fetched again")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_kill_9_at_10_random_points_of_a_60_asset_run_with_two_workers(
    tmp_path: Path, matrix: Matrix, monkeypatch: pytest.MonkeyPatch
) -> None:
    """test_process's power cuts at random moments, every run with `--workers 2`: a kill of
    the main process takes its workers along wherever they are (a write, a rename)."""
    monkeypatch.setitem(RUN_DEFAULTS, "--workers", "2")
    _kill_at_random_points(
        tmp_path,
        matrix,
        assets=60,
        kills=10,
        fault="kill -9 x10, 60 assets, 2 workers",
        seed=20261203,
    )


def test_kill_9_of_the_main_process_takes_its_workers_along_and_the_rerun_finishes(
    tmp_path: Path, matrix: Matrix
) -> None:
    """A power cut of the main process mid-file: its workers die with it (none is left
    writing into a `.part` that the rerun resumes), and the rerun finishes the files from
    their `.part`, buying nothing again."""
    ids = [str(9_932_000 + i) for i in range(3)]
    with sandbox(LARGE) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        args = ("run", str(manifest), "--out", str(out), "--asset-type", "video")
        args += ("--workers", "2")
        proc = start_cli(*args, env=env)
        _wait_for_part(out, 10 * MiB)
        workers = worker_pids(proc.pid)
        assert workers, "no worker process found"
        proc.kill()
        killed = proc.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in workers), "a worker outlived its main process"
        done = cli(*args, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        result = audit(
            sb,
            out,
            ids,
            [killed, done],
            fault="kill -9 of the main process, 2 workers",
            asset_type="video",
        )
        matrix.check(result, note=f"{len(workers)} workers gone with it")


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and not _zombie(pid)
