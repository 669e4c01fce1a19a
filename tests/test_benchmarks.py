"""Smoke test of the benchmark harness: it runs, verifies every output and writes a table.

Tiny scale (20 files of 256 KiB, one rep), only the tools that are installed (always at least
bulkgetty and the aiohttp-min reference loop). No timing is ever asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_harness_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks",
        "--scenario",
        "small-shm",
        "--scale",
        "0.01",
        "--runs",
        "1",
        "--json",
        str(out),
        "--disk-dir",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| tool | wall s" in proc.stdout
    doc = json.loads(out.read_text())
    (scenario,) = doc["scenarios"]
    assert scenario["files"] == 20
    assert {"bulkgetty", "aiohttp-min"} <= set(scenario["tools"])
    for run in scenario["runs"]:
        assert run["ok"], run
        assert run["files"] == 20
        assert run["bytes"] == 20 * 256 * 1024
        assert run["verified"]


def test_scaleout_smoke_verifies_every_file_and_sees_no_429(tmp_path: Path) -> None:
    """The scale-out row runs, checks spends and files, and stays under the sandbox's limit."""
    out = tmp_path / "scaleout.json"
    cmd = [sys.executable, "-m", "benchmarks.scaleout", "--mode", "shards", "--assets", "12"]
    cmd += ["--workers", "1,2", "--qps", "50", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| mode | workers |" in proc.stdout
    rows = json.loads(out.read_text())
    assert [r["workers"] for r in rows] == [1, 2]
    assert all(r["ok"] and r["rejected_429"] == 0 for r in rows)
