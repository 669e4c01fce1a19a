"""Ledger faults against a real PostgreSQL 15: a worker's database connections killed while
its POST is on the wire, and workers logging in as different database roles."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bulkgetty.sandbox import Faults, SandboxConfig, SandboxThread
from tests.faults.conftest import Audit, Matrix, audit
from tests.harness import clean_env, report
from tests.stages.test_ledger import (
    QPS,
    WHY_NOT,
    dsn,  # noqa: F401 - fixtures, used by name
    kill_backends,
    ledger_init_cli,
    pg,  # noqa: F401
    start_workers,
    wait_all,
)

pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


def _whole(sb: SandboxThread, root: Path, ids: list[str], runs: list[tuple[int, str]]) -> Audit:
    """One audit over every worker folder: each asset on disk once, bought once."""
    folders = [d for d in sorted(root.glob("w*")) if (d / ".bulkgetty" / "report.jsonl").exists()]
    parts = [
        audit(
            sb,
            d,
            [r["id"] for r in report(d)],
            [("", err) for _, err in runs],
            fault="",
            spends_expected=len(ids),
        )
        for d in folders
    ]
    on_disk = sum(p.files_correct for p in parts)
    problems = [msg for p in parts for msg in p.problems]
    problems += [f"worker exit {code}: {err[-300:]}" for code, err in runs if code != 0]
    if on_disk != len(ids):
        problems.append(f"{on_disk} of {len(ids)} assets on disk over all workers")
    served = sum(sb.expected("image", i).length for i in ids)
    return Audit(
        fault="",
        assets=len(ids),
        expected_files=len(ids),
        files_correct=on_disk,
        corrupt=sum(p.corrupt for p in parts),
        spends_expected=len(ids),
        spends_actual=sum(sb.spends_by_asset().values()),
        double_spends=sum(v - 1 for v in sb.spends_by_asset().values() if v > 1),
        refetched=max(0, sb.stats.delivery_body_bytes - served),
        leaks=sum(p.leaks for p in parts),
        problems=list(dict.fromkeys(problems)),
    )


def test_ledger_connection_killed_mid_post(dsn: str, tmp_path: Path, matrix: Matrix) -> None:  # noqa: F811
    """pg_terminate_backend on every bulkgetty connection while the sandbox holds a charged
    POST, then a second worker starts: it takes nothing, the first reconnects, commits the
    URI and downloads the file (the history lags, so a second purchase would go unseen)."""
    ids = [str(8_600_000 + i) for i in range(3)]
    held = ids[0]
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    config = SandboxConfig(
        image_bytes=(20_000, 60_000), qps=QPS, history_lag=120,
        faults=Faults(post_hang={held: 4.0}),
    )  # fmt: skip
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        ledger_init_cli(dsn, tmp_path / "ids.txt", env, "--downloads-remaining", "10")
        first = start_workers(dsn, tmp_path, 1, env)
        deadline = time.monotonic() + 60
        while not sb.spends_by_asset().get(f"image/{held}") and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = kill_backends(dsn)
        second = start_workers(dsn, tmp_path, 1, env, offset=1)
        result = _whole(sb, tmp_path, ids, wait_all(first + second))
    result.fault = "ledger connection killed mid-POST"
    matrix.check(result, note=f"{killed} connections killed; the URI committed on reconnect")


def test_ledger_workers_of_two_database_roles(
    dsn: str,  # noqa: F811
    tmp_path: Path,
    matrix: Matrix,
) -> None:
    """Two roles without pg_read_all_stats (each blind to the other's sessions in
    pg_stat_activity) share one ledger: no claim taken from a live worker, no asset twice."""
    import psycopg

    ids = [str(8_700_000 + i) for i in range(24)]
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    config = SandboxConfig(image_bytes=(20_000, 60_000), qps=QPS, api_latency=0.05)
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        ledger_init_cli(dsn, tmp_path / "ids.txt", env, "--downloads-remaining", "100")
        owner = dsn.split("//", 1)[1].split("@", 1)[0]
        with psycopg.connect(dsn, autocommit=True) as db:
            for role in ("getty_w0", "getty_w1"):
                db.execute(f"DROP ROLE IF EXISTS {role}")
                db.execute(f"CREATE ROLE {role} LOGIN")
                db.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
                db.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
        procs = [
            start_workers(dsn.replace(f"//{owner}@", f"//getty_w{i}@"), tmp_path, 1, env, i)[0]
            for i in range(2)
        ]
        result = _whole(sb, tmp_path, ids, wait_all(procs))
        with psycopg.connect(dsn, autocommit=True) as db:
            for role in ("getty_w0", "getty_w1"):
                db.execute(f"DROP OWNED BY {role}")
                db.execute(f"DROP ROLE {role}")
    result.fault = "ledger workers of two database roles"
    matrix.check(result, note="liveness from leases, not pg_stat_activity")
