"""End to end: `bulkgetty run --workers 2`, the real CLI against the sandbox, both schemes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bulkgetty.sandbox import SandboxConfig
from tests.faults.test_workers import worker_pids
from tests.harness import (
    SCHEMES,
    assert_files_match,
    assert_spent_once,
    clean_env,
    cli,
    report,
    sandbox,
    start_cli,
    write_ids,
)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_run_with_two_workers_downloads_everything_once_in_two_processes(
    tmp_path: Path, scheme: str
) -> None:
    """Files hash to the sandbox's, each asset is bought once, two worker processes ran
    under the CLI, and the rerun is all `already_done` without a request."""
    ids = [str(2_000_000 + i) for i in range(30)]
    config = SandboxConfig(image_bytes=(50_000, 1_500_000), bandwidth=4_000_000)
    with sandbox(config, scheme=scheme) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", [*ids, ids[3]])
        out = tmp_path / "out"
        args = ("run", str(manifest), "--out", str(out), "--workers", "2", "--quiet")
        proc = start_cli(*args, env=env)
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            seen.update(worker_pids(proc.pid))
            time.sleep(0.05)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert len(seen) == 2, seen
        rows = report(out)
        assert {r["status"] for r in rows} == {"downloaded"} and len(rows) == len(ids)
        assert_files_match(sb, out, rows)
        assert_spent_once(sb, ids)
        again = cli(*args, env=env)
        assert again.returncode == 0, again.stderr
        assert {r["status"] for r in report(out)} == {"already_done"}
        assert_spent_once(sb, ids)
