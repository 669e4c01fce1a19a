"""Job arrays end to end: shard processes started by GNU parallel against one sandbox.

The sandbox enforces the account's quota and the key's rate (429 above `qps`) and counts the
POSTs per asset; every test checks from outside that each file is exact, that the spends equal
the unique assets (each bought once), that the sandbox never had to refuse a request for rate,
and that `bulkgetty merge` accepts (or refuses) the shard folders.

GNU parallel comes from Debian (`.ci/run` installs it); without it these tests are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bulkgetty.sandbox import Product, SandboxConfig, SandboxThread
from tests.harness import REPO, assert_files_match, clean_env, report, write_ids

PARALLEL = shutil.which("parallel")
pytestmark = pytest.mark.skipif(
    PARALLEL is None, reason="GNU parallel is not installed (.ci/run apt-get installs it)"
)

#: The sandbox's rate limit (queries/s for the key) and the shard count of these tests.
QPS = 40.0
SHARDS = 4


def bulkgetty_cmd() -> str:
    return f"{sys.executable} -m bulkgetty"


def run_parallel(
    args: str, shards: list[str], env: Mapping[str, str], jobs: int = SHARDS, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """`parallel -j JOBS 'bulkgetty ARGS' ::: SHARDS` ({} is the shard index)."""
    assert PARALLEL is not None
    cmd = [PARALLEL, "--will-cite", "-j", str(jobs), f"{bulkgetty_cmd()} {args}", ":::", *shards]
    return subprocess.run(
        cmd, env=dict(env), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def start_parallel(args: str, shards: list[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
    assert PARALLEL is not None
    cmd = [PARALLEL, "--will-cite", "-j", str(len(shards)), f"{bulkgetty_cmd()} {args}", ":::"]
    return subprocess.Popen(
        [*cmd, *shards],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def shard_args(manifest: Path, out: Path, *extra: str, count: int = SHARDS) -> str:
    rate = QPS / SHARDS
    rest = " ".join(extra)
    return (
        f"run {manifest} --out {out}/shard-{{}} --shard {{}}/{count} --api-rate {rate:g} "
        f"--concurrency 4 --history-settle 0.5 --quiet {rest}"
    )


def merge(
    manifest: Path, out: Path, count: int = SHARDS, env: Mapping[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    dirs = [str(out / f"shard-{i}") for i in range(count)]
    merged = out / "merged"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bulkgetty",
            "merge",
            *dirs,
            "--manifest",
            str(manifest),
            "--out",
            str(merged),
        ],
        env=dict(env or clean_env()),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    summary = json.loads((merged / "summary.json").read_text()) if done.returncode != 2 else {}
    return done, summary


def all_rows(out: Path, count: int = SHARDS) -> list[dict[str, Any]]:
    return [row for i in range(count) for row in report(out / f"shard-{i}")]


def assert_exact(sb: SandboxThread, out: Path, ids: list[str], count: int = SHARDS) -> None:
    """Every file whole and hashed as served; each unique asset bought exactly once; no 429."""
    for i in range(count):
        shard = out / f"shard-{i}"
        assert_files_match(sb, shard, report(shard))
    spends = sb.spends_by_asset()
    assert {k: v for k, v in spends.items() if v != 1} == {}
    assert sorted(spends) == sorted(f"image/{i}" for i in set(ids))
    assert sb.stats.rejected_429 == 0


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    config = SandboxConfig(image_bytes=(20_000, 60_000), qps=QPS)
    with SandboxThread(config) as sb:
        yield sb


def ids_for(base: int, n: int) -> list[str]:
    return [str(base + i) for i in range(n)]


def test_four_shards_by_parallel_buy_each_asset_once_within_rate_and_merge(
    sandbox: SandboxThread, tmp_path: Path
) -> None:
    ids = ids_for(7_000_000, 60)
    manifest = write_ids(tmp_path / "ids.txt", [*ids, ids[3], ids[17]])  # duplicates too
    out = tmp_path / "out"
    env = clean_env(sandbox.credentials_env())
    done = run_parallel(shard_args(manifest, out), [str(i) for i in range(SHARDS)], env)
    assert done.returncode == 0, done.stderr
    assert_exact(sandbox, out, ids)
    assert len(all_rows(out)) == 60
    merged, summary = merge(manifest, out)
    assert merged.returncode == 0, merged.stdout
    assert summary["assets"] == 60
    assert summary["by_status"] == {"downloaded": 60}
    assert summary["spends"] == 60 == sum(summary["spends_by_shard"].values())
    merged_rows = (out / "merged" / "report.jsonl").read_text().splitlines()
    assert sorted(json.loads(r)["id"] for r in merged_rows) == sorted(ids)


def _lock_pid(shard: Path) -> int | None:
    try:
        text = (shard / ".bulkgetty" / "lock").read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def test_kill_9_of_every_shard_then_rerun_spends_nothing_twice(tmp_path: Path) -> None:
    """Each shard process is killed with SIGKILL mid-run (the pid from its lock file)."""
    ids = ids_for(7_100_000, 80)
    manifest = write_ids(tmp_path / "ids.txt", ids)
    out = tmp_path / "out"
    # Slow API answers keep the shards busy long enough to be killed mid-run.
    config = SandboxConfig(image_bytes=(20_000, 60_000), qps=QPS, api_latency=0.05)
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        proc = start_parallel(shard_args(manifest, out), [str(i) for i in range(SHARDS)], env)
        try:
            deadline = time.monotonic() + 60
            while sum(sb.spends_by_asset().values()) < 12 and time.monotonic() < deadline:
                time.sleep(0.05)
            killed = 0
            for i in range(SHARDS):
                pid = _lock_pid(out / f"shard-{i}")
                if pid is not None and proc.poll() is None:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed += 1
                    except ProcessLookupError:
                        pass
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert killed >= 1
        assert sum(sb.spends_by_asset().values()) < len(ids), "killed too late to prove anything"
        again = run_parallel(shard_args(manifest, out), [str(i) for i in range(SHARDS)], env)
        # A kill between the sandbox's charge and the journal's commit of the URI leaves a
        # download paid with its URI lost: the rerun proves the spend through the history and
        # refuses to buy again (without --reacquire-expired). Anything else must be done.
        lost = [r for r in all_rows(out) if r["status"] not in ("downloaded", "already_done")]
        assert all("charged but its URI was lost" in (r["error"] or "") for r in lost), [
            (r["id"], r["error"]) for r in lost
        ]
        if not lost:
            assert again.returncode == 0, again.stderr
        assert_exact(sb, out, ids)
        merged, summary = merge(manifest, out)
        assert merged.returncode == (1 if lost else 0), merged.stdout
        assert summary["spends"] == len(ids)


def test_the_same_shard_twice_at_once_is_refused_by_the_lock(tmp_path: Path) -> None:
    ids = ids_for(7_200_000, 40)
    manifest = write_ids(tmp_path / "ids.txt", ids)
    out = tmp_path / "out"
    config = SandboxConfig(image_bytes=(20_000, 60_000), qps=QPS, api_latency=0.05)
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        # Two jobs, both shard 0/1 into one folder: whichever locks second is refused.
        args = shard_args(manifest, out, count=1)
        first = start_parallel(args, ["0"], env)
        try:
            deadline = time.monotonic() + 30
            while _lock_pid(out / "shard-0") is None and time.monotonic() < deadline:
                time.sleep(0.05)
            second = run_parallel(args, ["0"], env, jobs=1)
            _first_out, first_err = first.communicate(timeout=90)
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate()
        assert first.returncode == 0, first_err
        assert second.returncode == 1  # GNU parallel: the number of failed jobs
        assert "another bulkgetty run" in second.stderr
        assert_exact(sb, out, ids, count=1)


def test_rerun_with_another_shard_count_or_manifest_is_refused(
    sandbox: SandboxThread, tmp_path: Path
) -> None:
    ids = ids_for(7_300_000, 12)
    manifest = write_ids(tmp_path / "ids.txt", ids)
    out = tmp_path / "out"
    env = clean_env(sandbox.credentials_env())
    assert run_parallel(shard_args(manifest, out, count=2), ["0", "1"], env).returncode == 0
    spent = sum(sandbox.spends_by_asset().values())
    other_n = run_parallel(shard_args(manifest, out, count=3), ["0"], env)
    assert other_n.returncode == 1
    assert "was run with shard 0/2, this run has 0/3" in other_n.stderr
    other_manifest = write_ids(tmp_path / "more.txt", [*ids, "7399999"])
    other_m = run_parallel(shard_args(other_manifest, out, count=2), ["1"], env)
    assert other_m.returncode == 1
    assert "manifest_sha256" in other_m.stderr and "fresh --out folder" in other_m.stderr
    assert sum(sandbox.spends_by_asset().values()) == spent  # refused before any POST
    merged, _ = merge(other_manifest, out, count=2)
    assert merged.returncode == 2
    assert "another manifest" in merged.stdout


def test_quota_reached_mid_run_then_rerun_after_reset_finishes(tmp_path: Path) -> None:
    """The account runs out while four shards buy: exactly the quota is spent, the rest waits."""
    ids = ids_for(7_400_000, 48)
    manifest = write_ids(tmp_path / "ids.txt", ids)
    out = tmp_path / "out"
    config = SandboxConfig(
        image_bytes=(20_000, 60_000), qps=QPS, products=(Product(1001, "premiumaccess", 30),)
    )
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        shards = [str(i) for i in range(SHARDS)]
        first = run_parallel(shard_args(manifest, out), shards, env)
        assert first.returncode > 0  # some shards exit 3 (waiting for quota)
        statuses = [r["status"] for r in all_rows(out)]
        assert statuses.count("downloaded") == 30
        assert statuses.count("waiting_for_quota") == 18
        assert sum(sb.spends_by_asset().values()) == 30
        merged, summary = merge(manifest, out)
        assert merged.returncode == 3, merged.stdout
        assert summary["by_status"] == {"downloaded": 30, "waiting_for_quota": 18}
        sb.reset_quota()
        again = run_parallel(shard_args(manifest, out), shards, env)
        assert again.returncode == 0, again.stderr
        assert_exact(sb, out, ids)
        assert merge(manifest, out)[0].returncode == 0


def test_plan_splits_the_sandbox_quota_so_capped_shards_never_overspend(tmp_path: Path) -> None:
    """`plan --shards` reads downloads_remaining; shards run with its caps, reruns included."""
    ids = ids_for(7_500_000, 40)
    manifest = write_ids(tmp_path / "ids.txt", ids)
    out = tmp_path / "out"
    config = SandboxConfig(
        image_bytes=(20_000, 60_000), qps=QPS, products=(Product(1001, "premiumaccess", 22),)
    )
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        plan = subprocess.run(
            [
                sys.executable,
                "-m",
                "bulkgetty",
                "plan",
                str(manifest),
                "--shards",
                "4",
                "--parallel",
                "2",
                "--api-rate",
                str(QPS),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert plan.returncode == 0, plan.stderr
        assert "downloads remaining: 22" in plan.stdout
        assert "--max-downloads 5 --api-rate 20" in plan.stdout
        shards = [str(i) for i in range(SHARDS)]
        args = shard_args(manifest, out, "--max-downloads 5")
        run_parallel(args, shards, env, jobs=2)
        run_parallel(args, shards, env, jobs=2)  # a rerun must not get a fresh share
        spends = sb.spends_by_asset()
        assert sum(spends.values()) == 20 and set(spends.values()) == {1}
        assert sb.stats.rejected_429 == 0
