"""The shared PostgreSQL ledger against a real PostgreSQL 15 started on 127.0.0.1.

Claims, the budget row and the shared rate in-process first; then 4-8 worker processes of the
real CLI against one sandbox (quota, rate limit, spends per asset): every file exact, each
asset bought once, the budget never below zero, the sandbox never had to answer 429.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bulkgetty.assets import Asset
from bulkgetty.errors import JournalError, QuotaExceededError
from bulkgetty.journal import AssetState
from bulkgetty.sandbox import Product, SandboxConfig, SandboxThread

from .harness import REPO, assert_files_match, clean_env, report
from .postgres import PostgresServer, postgres_server, unavailable

WHY_NOT = unavailable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

if WHY_NOT is None:
    import psycopg

    from bulkgetty.ledger import Ledger, SharedRateLimiter, init_ledger


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    try:
        with postgres_server() as server:
            yield server
    except RuntimeError as exc:
        pytest.skip(f"PostgreSQL could not start: {exc}")


@pytest.fixture
def dsn(pg: PostgresServer) -> str:
    return pg.database()


def assets(n: int, base: int = 8_000_000) -> list[Asset]:
    return [Asset(str(base + i)) for i in range(n)]


def budget_row(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as db:
        row = db.execute("SELECT remaining, spent FROM bulkgetty_budget").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_init_loads_unique_rows_and_seeds_the_budget_once(dsn: str, tmp_path: Path) -> None:
    rows = assets(30)
    added, remaining = init_ledger(dsn, [*rows, rows[0]], downloads_remaining=20, api_rate=5.0)
    assert (added, remaining) == (30, 20)
    added, remaining = init_ledger(dsn, assets(35), downloads_remaining=999, api_rate=5.0)
    assert (added, remaining) == (5, 20)  # only new rows; the budget is not seeded twice
    _, remaining = init_ledger(dsn, [], downloads_remaining=7, api_rate=5.0, reseed=True)
    assert remaining == 7


def test_budget_check_makes_a_negative_budget_impossible(dsn: str) -> None:
    init_ledger(dsn, assets(1), downloads_remaining=0, api_rate=None)
    with psycopg.connect(dsn) as db, pytest.raises(psycopg.errors.CheckViolation):
        db.execute("UPDATE bulkgetty_budget SET remaining = remaining - 1")


def test_live_workers_claim_disjoint_assets_and_a_dead_workers_claims_are_taken_over(
    dsn: str, tmp_path: Path
) -> None:
    init_ledger(dsn, assets(50), downloads_remaining=50, api_rate=None)
    a, b = Ledger(dsn, tmp_path / "a"), Ledger(dsn, tmp_path / "b")
    first = {r.key for r in a.claim(20)}
    second = {r.key for r in b.claim(100)}
    assert len(first) == 20 and len(second) == 30 and not first & second
    assert b.claim(100) == []  # a still lives: its claims are never taken
    a.close()
    taken = {r.key for r in b.claim(100)}
    assert taken == first  # a's connection is gone: its assets are free again
    b.close()


def test_racing_claims_are_disjoint_and_cover_every_asset(dsn: str, tmp_path: Path) -> None:
    init_ledger(dsn, assets(500), downloads_remaining=0, api_rate=None)
    claimed: list[list[str]] = [[] for _ in range(8)]
    all_done = threading.Barrier(8, timeout=60)

    def worker(i: int) -> None:
        led = Ledger(dsn, tmp_path / f"w{i}")
        try:
            while records := led.claim(7):
                claimed[i].extend(r.key for r in records)
            all_done.wait()
        finally:
            led.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    flat = [k for keys in claimed for k in keys]
    assert len(flat) == 500 == len(set(flat))


def test_two_workers_on_one_folder_are_refused(dsn: str, tmp_path: Path) -> None:
    init_ledger(dsn, assets(1), downloads_remaining=1, api_rate=None)
    first = Ledger(dsn, tmp_path)
    with pytest.raises(JournalError, match="give each ledger worker its own --out folder"):
        Ledger(dsn, tmp_path)
    first.close()
    Ledger(dsn, tmp_path).close()  # free again once the first has gone


def test_budget_is_reserved_with_the_intent_and_given_back_only_when_nothing_was_spent(
    dsn: str, tmp_path: Path
) -> None:
    init_ledger(dsn, assets(3), downloads_remaining=2, api_rate=None)
    led = Ledger(dsn, tmp_path)
    k1, k2, k3 = (r.key for r in led.claim(10))
    led.record_intent(k1)
    led.record_intent(k2)
    assert budget_row(dsn) == (0, 0)
    with pytest.raises(QuotaExceededError):
        led.record_intent(k3)
    assert led.totals().by_state == {"intent": 2, "pending": 1}
    led.record_acquired(k1, "http://x/1", time.time() + 60)
    led.record_not_spent(k2, AssetState.FAILED, "refused")
    assert budget_row(dsn) == (1, 1)
    led.record_not_spent(k2, AssetState.FAILED, "again")  # nothing held: nothing given back
    assert budget_row(dsn) == (1, 1)
    led.record_intent(k3)
    led.record_in_doubt(k3, "timeout")
    led.record_spent_without_uri(k3, "history shows it")
    assert budget_row(dsn) == (0, 2)
    led.close()


def test_record_on_an_asset_claimed_by_another_worker_is_refused(dsn: str, tmp_path: Path) -> None:
    init_ledger(dsn, assets(2), downloads_remaining=5, api_rate=None)
    a, b = Ledger(dsn, tmp_path / "a"), Ledger(dsn, tmp_path / "b")
    key = a.claim(1)[0].key
    with pytest.raises(JournalError, match="no longer holds the claim"):
        b.record_intent(key)
    with pytest.raises(JournalError, match="claimed by another live worker"):
        b.upsert([Asset(key.split("/")[1])], run_id=1)
    assert budget_row(dsn) == (5, 0)
    a.close()
    b.close()


def test_eight_racing_workers_never_reserve_more_than_the_budget(dsn: str, tmp_path: Path) -> None:
    init_ledger(dsn, assets(200), downloads_remaining=57, api_rate=None)
    reserved: list[str] = []
    refused = 0
    lock = threading.Lock()
    # A worker's claims end with its connection: all stay connected until every one is done,
    # or the assets of the first to leave would (rightly) be claimed by the others.
    all_done = threading.Barrier(8, timeout=60)

    def worker(i: int) -> None:
        nonlocal refused
        led = Ledger(dsn, tmp_path / f"w{i}")
        try:
            while records := led.claim(5):
                for r in records:
                    try:
                        led.record_intent(r.key)
                    except QuotaExceededError:
                        with lock:
                            refused += 1
                        continue
                    with lock:
                        reserved.append(r.key)
            all_done.wait()
        finally:
            led.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(reserved) == 57 == len(set(reserved))
    assert refused == 200 - 57
    assert budget_row(dsn) == (0, 0)


async def test_shared_rate_limiter_hands_out_slots_one_interval_apart(dsn: str) -> None:
    init_ledger(dsn, [], downloads_remaining=0, api_rate=50.0)
    limiters = [await SharedRateLimiter.open(dsn) for _ in range(4)]
    try:
        assert {lim.rate for lim in limiters} == {50.0}
        await asyncio.gather(*(lim.acquire() for lim in limiters for _ in range(5)))
        async with await psycopg.AsyncConnection.connect(dsn) as db:
            cur = await db.execute("SELECT next_slot FROM bulkgetty_rate")
            row = await cur.fetchone()
        assert row is not None and row[0] > 0
    finally:
        for lim in limiters:
            await lim.close()


# workers: the real CLI against one sandbox -----------------------------------------------

QPS = 40.0


def worker_cmd(dsn: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "bulkgetty", "run", "--ledger", dsn, "--out", str(out),
        "--concurrency", "4", "--history-settle", "0.5", "--quiet", *extra,
    ]  # fmt: skip


def start_workers(
    dsn: str, root: Path, n: int, env: dict[str, str], offset: int = 0
) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            worker_cmd(dsn, root / f"w{offset + i}"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for i in range(n)
    ]


def wait_all(procs: list[subprocess.Popen[str]], timeout: float = 90) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        out.append((p.returncode, err))
    return out


def ledger_init_cli(dsn: str, manifest: Path, env: dict[str, str], *extra: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bulkgetty",
            "ledger",
            "init",
            str(manifest),
            "--ledger",
            dsn,
            "--api-rate",
            str(QPS),
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def worker_rows(root: Path, pattern: str = "w*") -> list[dict[str, Any]]:
    rows = []
    for d in sorted(root.glob(pattern)):
        if (d / ".bulkgetty" / "report.jsonl").exists():
            rows.extend(report(d))
    return rows


def assert_workers_exact(
    sb: SandboxThread, root: Path, ids: list[str], pattern: str = "w*"
) -> None:
    """Files of the workers that finished are exact; the sandbox sold each asset once."""
    for d in sorted(root.glob(pattern)):
        if (d / ".bulkgetty" / "report.jsonl").exists():
            assert_files_match(sb, d, report(d))
    spends = sb.spends_by_asset()
    assert {k: v for k, v in spends.items() if v != 1} == {}, "an asset was bought twice"
    assert sorted(spends) == sorted(f"image/{i}" for i in ids)
    assert sb.stats.rejected_429 == 0


def test_six_workers_share_budget_and_rate_and_buy_each_asset_once(
    dsn: str, tmp_path: Path
) -> None:
    ids = [str(8_100_000 + i) for i in range(60)]
    manifest = tmp_path / "ids.txt"
    manifest.write_text("\n".join(ids) + "\n")
    with SandboxThread(SandboxConfig(image_bytes=(20_000, 60_000), qps=QPS)) as sb:
        env = clean_env(sb.credentials_env())
        out = ledger_init_cli(dsn, manifest, env)  # budget from the sandbox's /v3/products
        assert "60 assets added; budget 3000 downloads" in out
        results = wait_all(start_workers(dsn, tmp_path, 6, env))
        assert all(code == 0 for code, _ in results), results
        assert_workers_exact(sb, tmp_path, ids)
        done = [r for r in worker_rows(tmp_path) if r["status"] == "downloaded"]
        assert len(done) == 60
        assert budget_row(dsn) == (3000 - 60, 60)
        merged = subprocess.run(
            [
                sys.executable,
                "-m",
                "bulkgetty",
                "ledger",
                "report",
                "--ledger",
                dsn,
                "--out",
                str(tmp_path / "merged"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert merged.returncode == 0, merged.stderr
        lines = (tmp_path / "merged" / "report.jsonl").read_text().splitlines()
        assert len(lines) == 60
        status = subprocess.run(
            [sys.executable, "-m", "bulkgetty", "status", "--ledger"],
            env={**env, "BULKGETTY_LEDGER": dsn},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)
        assert (shown["by_state"], shown["spends"]) == ({"done": 60}, 60)
        assert (shown["budget_remaining"], shown["budget_spent"]) == (3000 - 60, 60)


def _kill_when_spent(sb: SandboxThread, procs: list[subprocess.Popen[str]], at: int) -> None:
    deadline = time.monotonic() + 60
    while sum(sb.spends_by_asset().values()) < at and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
    wait_all(procs)


def test_kill_9_of_workers_then_new_workers_finish_without_double_spend(
    dsn: str, tmp_path: Path
) -> None:
    ids = [str(8_200_000 + i) for i in range(80)]
    manifest = tmp_path / "ids.txt"
    manifest.write_text("\n".join(ids) + "\n")
    config = SandboxConfig(image_bytes=(20_000, 60_000), qps=QPS, api_latency=0.05)
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        ledger_init_cli(dsn, manifest, env, "--downloads-remaining", "500")
        _kill_when_spent(sb, start_workers(dsn, tmp_path, 4, env), at=15)
        spent_before = sum(sb.spends_by_asset().values())
        assert spent_before < len(ids), "killed too late to prove anything"
        results = wait_all(start_workers(dsn, tmp_path, 4, env, offset=4))
        # The killed workers' folders keep their .part files (nobody reruns them); their
        # assets were taken over by the new workers (w4-w7), which finished everything but
        # what a kill left charged without a URI: failed, never bought again. (A worker that
        # finds one already failed by another reports it too, in its own words.)
        rows = worker_rows(tmp_path, "w[4-7]")
        lost = [r for r in rows if r["status"] != "downloaded"]
        assert all("lost" in (r["error"] or "") for r in lost), lost
        assert all("--reacquire-expired" in (r["error"] or "") for r in lost), lost
        failed = {r["id"] for r in lost}
        if not lost:
            assert all(code == 0 for code, _ in results), results
        assert_workers_exact(sb, tmp_path, ids, "w[4-7]")
        with psycopg.connect(dsn) as db:
            states = dict(db.execute("SELECT state, count(*) FROM bulkgetty_assets GROUP BY 1"))
        assert states == (
            {"done": len(ids) - len(failed), "failed": len(failed)} if lost else {"done": len(ids)}
        )
        remaining, spent = budget_row(dsn)
        assert spent == len(ids) and remaining == 500 - len(ids)


def test_budget_smaller_than_the_manifest_is_spent_exactly_then_the_rest_waits(
    dsn: str, tmp_path: Path
) -> None:
    ids = [str(8_300_000 + i) for i in range(40)]
    manifest = tmp_path / "ids.txt"
    manifest.write_text("\n".join(ids) + "\n")
    with SandboxThread(SandboxConfig(image_bytes=(20_000, 60_000), qps=QPS)) as sb:
        env = clean_env(sb.credentials_env())
        ledger_init_cli(dsn, manifest, env, "--downloads-remaining", "25")
        results = wait_all(start_workers(dsn, tmp_path, 8, env))
        assert {code for code, _ in results} <= {0, 3} and 3 in {c for c, _ in results}
        assert sum(sb.spends_by_asset().values()) == 25
        assert set(sb.spends_by_asset().values()) == {1}
        assert budget_row(dsn) == (0, 25)
        statuses = [r["status"] for r in worker_rows(tmp_path)]
        assert statuses.count("downloaded") == 25
        assert sb.stats.rejected_429 == 0


def test_account_quota_hit_mid_run_gives_unspent_reservations_back(
    dsn: str, tmp_path: Path
) -> None:
    """The ledger's budget is larger than what the account really has left: the sandbox
    answers 403 OverageLimitReached; refused POSTs give their download back to the budget."""
    ids = [str(8_400_000 + i) for i in range(40)]
    manifest = tmp_path / "ids.txt"
    manifest.write_text("\n".join(ids) + "\n")
    config = SandboxConfig(
        image_bytes=(20_000, 60_000), qps=QPS, products=(Product(1001, "premiumaccess", 22),)
    )
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        ledger_init_cli(dsn, manifest, env, "--downloads-remaining", "100")
        results = wait_all(start_workers(dsn, tmp_path, 4, env))
        assert {code for code, _ in results} <= {0, 3}
        assert sum(sb.spends_by_asset().values()) == 22
        assert set(sb.spends_by_asset().values()) == {1}
        assert budget_row(dsn) == (100 - 22, 22)
        assert sb.stats.rejected_429 == 0
        with psycopg.connect(dsn) as db:
            held = db.execute("SELECT count(*) FROM bulkgetty_assets WHERE holds_budget")
            assert held.fetchone() == (0,)
