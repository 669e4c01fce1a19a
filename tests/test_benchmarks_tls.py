"""Smoke test of the benchmark's HTTPS rows: servers on TLS, every tool trusting one CA.

Tiny scale, one rep, only bulkgetty, curl and the aiohttp-min reference (each run still
verified by count, bytes and sha256). No timing is asserted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import ALIASES, DEFAULT, SCENARIOS

REPO = Path(__file__).resolve().parent.parent


def test_https_rows_mirror_small_and_large() -> None:
    for plain in ("small", "large"):
        tls = SCENARIOS[f"{plain}-tls"]
        assert tls.tls and not SCENARIOS[plain].tls
        assert (tls.files, tls.file_bytes, tls.concurrency, tls.dest) == (
            SCENARIOS[plain].files,
            SCENARIOS[plain].file_bytes,
            SCENARIOS[plain].concurrency,
            SCENARIOS[plain].dest,
        )
    assert ALIASES["tls"] == ["small-tls", "large-tls"]
    assert "small-tls" in DEFAULT and "large-tls" not in DEFAULT


def test_small_tls_smoke_every_tool_verifies_over_https(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    tools = "bulkgetty,aiohttp-min" + (",curl" if shutil.which("curl") else "")
    cmd = [sys.executable, "-m", "benchmarks", "--scenario", "small-tls", "--scale", "0.005"]
    cmd += ["--runs", "1", "--tools", tools, "--json", str(out), "--disk-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (scenario,) = json.loads(out.read_text())["scenarios"]
    assert "HTTPS" in scenario["delivery"]
    assert {"bulkgetty", "aiohttp-min"} <= set(scenario["tools"])
    for run in scenario["runs"]:
        assert run["ok"] and run["files"] == 10 and run["verified"], run
