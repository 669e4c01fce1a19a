"""The fault matrix: run every test of tests/faults (slow ones included) and print one table.

    python -m benchmarks.faults                  # everything, ~10 min on 2 cores
    python -m benchmarks.faults --fast           # only what CI runs
    python -m benchmarks.faults -k delivery      # a pytest -k expression
    python -m benchmarks.faults --write benchmarks/FAULTS.md

Each fault test audits its runs from outside (files against the sandbox's sha256, the spend
ledger, the bytes the sandbox served, headers seen by delivery origins, a secret scan of
stdout, stderr, report and journal) and records one row per fault through
`BULKGETTY_FAULT_MATRIX`; this script collects the rows. Exit status is pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

COLUMNS = (
    "fault",
    "assets",
    "files correct",
    "spends (exp/actual)",
    "bytes re-fetched",
    "secrets leaked",
    "result",
)


def run_matrix(
    fast: bool, keyword: str | None, extra: list[str]
) -> tuple[int, list[dict[str, Any]]]:
    """Run pytest on tests/faults with the matrix recorder on; return its status and rows."""
    with tempfile.TemporaryDirectory(prefix="bulkgetty-faults-") as tmp:
        rows_path = Path(tmp) / "rows.jsonl"
        # One process: the recorder appends rows from the process that runs the test.
        args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0"]
        args += ["tests/faults"]
        args += ["-m", "not slow" if fast else "slow or not slow"]
        if keyword:
            args += ["-k", keyword]
        env = {**os.environ, "BULKGETTY_FAULT_MATRIX": str(rows_path)}
        status = subprocess.run([*args, *extra], cwd=REPO, env=env, check=False).returncode
        rows = []
        if rows_path.exists():
            rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line]
        return status, rows


def _cells(row: dict[str, Any]) -> list[str]:
    if "files_correct" not in row:
        return [row["fault"], "-", "-", "-", "-", "-", row["result"]]
    result = row["result"]
    if result != "pass":
        result += f": {row.get('reason') or '; '.join(row.get('problems', []))}"[:120]
    elif row.get("note"):
        result += f" ({row['note']})"
    return [
        row["fault"],
        str(row["assets"]),
        f"{row['files_correct']}/{row['expected_files']}"
        + (f" (+{row['corrupt']} bad)" if row["corrupt"] else ""),
        f"{row['spends_expected']}/{row['spends_actual']}",
        f"{row['refetched']:,}",
        str(row["leaks"]),
        result.replace("|", "/"),
    ]


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table, one row per fault, then the totals that must be zero."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    audited = [r for r in rows if "files_correct" in r]
    lost = sum(r["lost"] for r in audited)
    corrupt = sum(r["corrupt"] for r in audited)
    doubles = sum(r["double_spends"] for r in audited)
    leaks = sum(r["leaks"] for r in audited)
    counts = {k: sum(1 for r in rows if r["result"] == k) for k in ("pass", "FAIL", "OPEN")}
    skipped = sum(1 for r in rows if r["result"] == "skipped")
    lines += [
        "",
        f"{len(rows)} faults: {counts['pass']} pass, {counts['FAIL']} fail, "
        f"{counts['OPEN']} open (known gaps, xfail), {skipped} skipped. "
        f"Totals: {lost} lost, {corrupt} corrupt, {doubles} double spends, {leaks} leaks.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__)
    parser.add_argument("--fast", action="store_true", help="only the fast faults (as in CI)")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression to pick faults")
    parser.add_argument("--write", type=Path, metavar="PATH", help="also write the table here")
    args, extra = parser.parse_known_args(argv)
    started = time.monotonic()
    status, rows = run_matrix(args.fast, args.keyword, extra)
    text = table(rows)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    wall = time.monotonic() - started
    header = f"Fault matrix, {stamp}, {wall:.0f} s ({'fast set' if args.fast else 'all faults'})"
    print(f"\n{header}\n\n{text}")
    if args.write:
        command = "python -m benchmarks.faults" + (" --fast" if args.fast else "")
        args.write.write_text(f"# {header}\n\nPrinted by `{command}`.\n\n{text}\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
