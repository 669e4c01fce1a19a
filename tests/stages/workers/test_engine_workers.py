"""`RunOptions(workers=N)` through the Python API: a whole run with transfers in processes."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from bulkgetty.assets import Asset
from bulkgetty.config import RunOptions
from bulkgetty.errors import UsageError
from bulkgetty.getty.auth import Credentials
from bulkgetty.getty.retry import RetryPolicy
from bulkgetty.sandbox import Sandbox, SandboxConfig
from bulkgetty.stages.engine import Downloader

pytestmark = pytest.mark.timeout(60)

POLICY = RetryPolicy(backoff_base=0.01, backoff_max=0.05)


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    config = SandboxConfig(image_bytes=(5_000, 2_500_000), video_bytes=(1_000_000, 3_000_000))
    async with Sandbox(config) as sandbox:
        yield sandbox


def test_workers_below_zero_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--workers"):
        RunOptions(out_dir=tmp_path, workers=-1)


async def test_a_run_with_two_workers_fetches_every_file_once_and_buys_each_once(
    sb: Sandbox, tmp_path: Path
) -> None:
    assets = [Asset(str(100 + i)) for i in range(12)]
    assets += [Asset(str(900 + i), asset_type="video") for i in range(3)]
    out = tmp_path / "out"
    opts = RunOptions(out_dir=out, api_rate=None, concurrency=6, workers=2, history_settle=0.2)
    creds = Credentials.from_env(sb.credentials_env())
    async with asyncio.timeout(45):
        async with Downloader(creds, opts, api_url=sb.api_url, policy=POLICY) as d:
            result = await d.run(assets)
            assert d.pool is not None and len(d.pool.pids) == 2 and d.pool.deaths == 0
            again = await d.run(assets)
    assert result.exit_code == 0 and again.exit_code == 0
    assert result.summary.downloaded == len(assets)
    assert again.summary.already_done == len(assets)
    rows = [orjson.loads(line) for line in result.report_path.read_bytes().splitlines()]
    for row in rows:
        if row["status"] != "downloaded":
            continue
        exp = sb.expected(row["asset_type"], row["id"])
        assert hashlib.sha256(Path(row["path"]).read_bytes()).hexdigest() == exp.sha256
    assert sb.spends_by_asset() == {f"{a.asset_type}/{a.id}": 1 for a in assets}
    assert not list(out.glob("*.part"))


def _boot_that_dies_after_a_rename(marker: Path) -> str:
    """A worker interpreter that SIGKILLs itself right after its 2nd `.part` -> NAME rename
    (once: the marker file stops the workers started after it): the file is whole under its
    name, and the main process never heard of it."""
    from bulkgetty.stages.workers import pool

    trap = f"""
import os, signal
from pathlib import Path
from bulkgetty.stages.files import writes
marker, real, count = Path({str(marker)!r}), writes._rename_noreplace, [0]
def rename_then_die(src, dst):
    real(src, dst)
    count[0] += 1
    if count[0] == 2 and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
writes._rename_noreplace = rename_then_die
"""
    head, tail = pool.BOOT.split("from bulkgetty.stages.workers.child import main")
    return head + trap + "from bulkgetty.stages.workers.child import main" + tail


async def test_a_worker_killed_after_a_rename_leaves_no_second_copy_of_the_file(
    sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry fetches the file again as `NAME (2).ext` (its first copy was never
    reported); the whole `NAME.ext` the dead worker left is kept and the copy dropped."""
    marker = tmp_path / "died"
    monkeypatch.setattr(
        "bulkgetty.stages.workers.pool.BOOT", _boot_that_dies_after_a_rename(marker)
    )
    assets = [Asset(str(300 + i)) for i in range(6)]
    out = tmp_path / "out"
    opts = RunOptions(out_dir=out, api_rate=None, concurrency=3, workers=1, history_settle=0.2)
    creds = Credentials.from_env(sb.credentials_env())
    async with asyncio.timeout(45):
        async with Downloader(creds, opts, api_url=sb.api_url, policy=POLICY) as d:
            result = await d.run(assets)
            assert d.pool is not None and d.pool.deaths == 1
    assert marker.exists() and result.exit_code == 0
    rows = [orjson.loads(line) for line in result.report_path.read_bytes().splitlines()]
    assert sorted(Path(r["path"]).name for r in rows) == sorted(
        p.name for p in out.iterdir() if p.name != ".bulkgetty"
    ), "a file in the folder belongs to no asset"
    for row in rows:
        exp = sb.expected(row["asset_type"], row["id"])
        assert hashlib.sha256(Path(row["path"]).read_bytes()).hexdigest() == exp.sha256
    assert sb.spends_by_asset() == {f"image/{a.id}": 1 for a in assets}
