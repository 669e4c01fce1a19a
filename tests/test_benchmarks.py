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
