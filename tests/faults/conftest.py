"""The fault matrix: one audit of every run, from outside the process, and one matrix row each.

`audit()` checks what issue 5 promises after a fault: every file hashes to the sandbox's,
nothing outside the output folder, no `.part` after exit 0, spends == unique assets, no Getty
header at a delivery origin, and no secret (API secret, password, any access or refresh
token the sandbox issued) in stdout, stderr, the report, the journal or anything else under
`DIR/.bulkgetty/`. `matrix.check(...)` records the row and asserts it is clean.

With `BULKGETTY_FAULT_MATRIX=PATH` set, each test appends its rows (and its pytest result)
to PATH as JSON lines; `python -m benchmarks.faults` runs the matrix and prints the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from bulkgetty.sandbox import SandboxThread
from tests.harness import SCHEMES, report

_GETTY_HEADERS = {"api-key", "authorization", "cookie"}
_ROWS_KEY = "fault_matrix_rows"
#: pytest's per-test folders, cut from notes so a table row reads the same on every run.
_TMP = re.compile(r"/\S*/pytest-\d+/[^/\s]+/")


@dataclass(slots=True)
class Audit:
    """What one fault did to a folder, the ledger and the outputs."""

    fault: str
    assets: int
    #: Assets that should be on disk at the end, and those that are, byte for byte.
    expected_files: int
    files_correct: int
    #: Files in DIR that are neither a correct asset nor a resumable `.part`.
    corrupt: int
    spends_expected: int
    spends_actual: int
    double_spends: int
    #: Body bytes the sandbox served beyond one copy of each file on disk (and kept `.part`s).
    refetched: int
    #: Secrets found in outputs, plus Getty headers seen by a delivery origin.
    leaks: int
    problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.expected_files - self.files_correct

    @property
    def clean(self) -> bool:
        return not self.problems


def _scan_texts(
    out: Path, runs: Sequence[subprocess.CompletedProcess[str] | tuple[str, str]]
) -> list[tuple[str, bytes]]:
    texts: list[tuple[str, bytes]] = []
    for i, run in enumerate(runs):
        stdout, stderr = (run.stdout, run.stderr) if not isinstance(run, tuple) else run
        texts.append((f"run {i} stdout", (stdout or "").encode()))
        texts.append((f"run {i} stderr", (stderr or "").encode()))
    state = out / ".bulkgetty"
    if state.is_dir():
        for path in sorted(state.rglob("*")):
            if path.is_file():
                texts.append((str(path.relative_to(out)), path.read_bytes()))
    return texts


def audit(
    sb: SandboxThread,
    out: Path,
    ids: Sequence[str],
    runs: Sequence[subprocess.CompletedProcess[str] | tuple[str, str]],
    *,
    fault: str,
    asset_type: str = "image",
    on_disk: Sequence[str] | None = None,
    spends_expected: int | None = None,
    root: Path | None = None,
    allowed_in_root: Sequence[str] = (),
    rebought: Sequence[str] = (),
    allowed_files: Sequence[str] = (),
) -> Audit:
    """Check the outcome of the runs of one fault; `problems` lists every broken promise.

    on_disk: the ids that must be on disk at the end (default: all of `ids`).
    spends_expected: charged downloads the sandbox must show (default: one per unique id).
    root: the test's folder; nothing but `out`, the manifest and `allowed_in_root` may be there.
    rebought: ids the user allowed to buy a second time (--reacquire-expired).
    allowed_files: names in DIR that are the user's (e.g. a file changed by hand).
    """
    unique = list(dict.fromkeys(ids))
    want = list(dict.fromkeys(on_disk if on_disk is not None else unique))
    problems: list[str] = []
    final = runs[-1]
    exit0 = not isinstance(final, tuple) and final.returncode == 0

    rows = report(out) if (out / ".bulkgetty" / "report.jsonl").exists() else []
    by_id = {r["id"]: r for r in rows}
    good_names: set[str] = set()
    correct = 0
    on_disk_bytes = 0
    for asset_id in want:
        row = by_id.get(asset_id)
        expected = sb.expected(asset_type, asset_id)
        if row is None or row["status"] not in ("downloaded", "already_done"):
            problems.append(
                f"{asset_id}: not on disk ({row and row['status']}: {row and row['error']})"
            )
            continue
        path = Path(row["path"])
        if path.parent.resolve() != out.resolve():
            problems.append(f"{asset_id}: {path} is not directly in {out}")
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
        if digest == expected.sha256 == row["sha256"]:
            correct += 1
            good_names.add(path.name)
            on_disk_bytes += expected.length
        else:
            problems.append(f"{asset_id}: {path.name} does not hash to the sandbox's content")
    if len(rows) != len(unique):
        problems.append(f"report has {len(rows)} rows for {len(unique)} assets")

    corrupt = 0
    parts = []
    for path in out.iterdir() if out.is_dir() else ():
        if path.name == ".bulkgetty":
            continue
        if path.name.endswith(".part"):
            parts.append(path.name)
        elif path.name not in good_names and path.name not in allowed_files:
            corrupt += 1
            problems.append(f"unexpected file in the output folder: {path.name}")
    if exit0 and parts:
        problems.append(f".part left after exit 0: {parts}")
    if root is not None:
        allowed = {out.name, "ids.txt", *allowed_in_root}
        stray = sorted(p.name for p in root.iterdir() if p.name not in allowed)
        if stray:
            problems.append(f"files outside the output folder: {stray}")

    spends = sb.spends_by_asset()
    actual = sum(spends.values())
    expected_spends = len(unique) if spends_expected is None else spends_expected
    allowed = {f"{asset_type}/{i}": 2 for i in rebought}
    twice = [k for k, v in spends.items() if v > allowed.get(k, 1)]
    doubles = sum(v - allowed.get(k, 1) for k, v in spends.items() if k in twice)
    if twice:
        problems.append(f"bought twice: {twice}")
    if actual != expected_spends:
        problems.append(f"spends {actual}, expected {expected_spends}")

    leaks = 0
    for req in sb.stats.delivery_requests:
        sent = {h.lower() for h in req.headers} & _GETTY_HEADERS
        if sent:
            leaks += 1
            problems.append(f"delivery origin got {sorted(sent)} on {req.method} {req.path}")
    secrets = [sb.config.api_secret, sb.config.password, *sb.issued_tokens()]
    for where, blob in _scan_texts(out, runs):
        for secret in secrets:
            if secret and secret.encode() in blob:
                leaks += 1
                problems.append(f"a secret appears in {where}")

    kept = sum((out / name).stat().st_size for name in parts)
    refetched = max(0, sb.stats.delivery_body_bytes - on_disk_bytes - kept)
    return Audit(
        fault=fault,
        assets=len(unique),
        expected_files=len(want),
        files_correct=correct,
        corrupt=corrupt,
        spends_expected=expected_spends,
        spends_actual=actual,
        double_spends=doubles,
        refetched=refetched,
        leaks=leaks,
        problems=problems,
    )


class Matrix:
    """Collects this test's matrix rows; `check` asserts the audit is clean."""

    def __init__(self, node: pytest.Item) -> None:
        self._node = node

    def record(self, result: Audit, note: str = "") -> None:
        note = _TMP.sub("", note)
        row = {k: v for k, v in asdict(result).items() if k != "problems"}
        if _scheme_of(self._node) == "https":
            row["fault"] = f"{result.fault} (https)"
        row.update(lost=result.lost, note=note, problems=result.problems[:5])
        self._node.user_properties.append((_ROWS_KEY, row))

    def check(self, result: Audit, note: str = "") -> Audit:
        self.record(result, note)
        assert result.clean, "\n".join(result.problems)
        return result


@pytest.fixture
def matrix(request: pytest.FixtureRequest) -> Matrix:
    return Matrix(request.node)


@pytest.fixture(params=SCHEMES)
def scheme(request: pytest.FixtureRequest) -> str:
    """Run the requesting test once per scheme; pass it to `tests.harness.sandbox`."""
    return str(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A module's `HTTPS_CASES` (values of its `name` parameter) limits its https rows to a
    representative subset: the cases where TLS changes what reaches the client (how a body
    ends, cuts, surplus, redirects across origins), so the suite stays within its budget."""
    kept, dropped = [], []
    for item in items:
        subset = getattr(getattr(item, "module", None), "HTTPS_CASES", None)
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        https = params.get("scheme") == "https"
        if subset is not None and https and params.get("name") not in subset:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _scheme_of(node: pytest.Item) -> str:
    callspec = getattr(node, "callspec", None)
    return str(callspec.params.get("scheme", "http")) if callspec is not None else "http"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Append this test's rows, with its result, to $BULKGETTY_FAULT_MATRIX."""
    target = os.environ.get("BULKGETTY_FAULT_MATRIX")
    if not target or (report.when != "call" and not (report.when == "setup" and report.skipped)):
        return
    rows = [value for key, value in report.user_properties if key == _ROWS_KEY]
    if not rows:
        rows = [{"fault": report.nodeid.rsplit("::", 1)[-1], "assets": 0}]
    reason = ""
    if hasattr(report, "wasxfail"):
        result, reason = "OPEN", str(report.wasxfail)  # a known gap, kept visible
    elif report.skipped:
        result = "skipped"
        if isinstance(report.longrepr, tuple):
            reason = str(report.longrepr[2])
    else:
        result = "pass" if report.passed else "FAIL"
    with open(target, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(
                json.dumps({**row, "test": report.nodeid, "result": result, "reason": reason})
                + "\n"
            )
