"""The shared PostgreSQL ledger against a real PostgreSQL 15 started on 127.0.0.1.

Claims, leases, the budget row and the shared rate in-process first; then 4-8 worker
processes of the real CLI against one sandbox (quota, rate limit, spends per asset): every
file exact, each asset bought once, the budget never below zero, the sandbox never had to
answer 429, and a connection killed mid-POST costs nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bulkgetty.assets import Asset
from bulkgetty.errors import JournalError, QuotaExceededError, UsageError
from bulkgetty.sandbox import Faults, Product, SandboxConfig, SandboxThread
from bulkgetty.stages.journal import AssetState
from tests.harness import REPO, assert_files_match, clean_env, report
from tests.postgres import PostgresServer, postgres_server, unavailable

WHY_NOT = unavailable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

if WHY_NOT is None:
    import psycopg

    from bulkgetty.stages.ledger.lease import LEASE, Backoff, Link
    from bulkgetty.stages.ledger.store import (
        AsyncLedger,
        Ledger,
        SharedRateLimiter,
        claimed_rows,
        init_ledger,
    )


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


def kill_backends(dsn: str, *pids: int) -> int:
    """pg_terminate_backend: these backends, or every bulkgetty one (a network cut)."""
    with psycopg.connect(dsn, autocommit=True) as db:
        if pids:
            rows = db.execute(
                "SELECT pg_terminate_backend(p) FROM unnest(%s::int[]) p", (list(pids),)
            )
        else:
            rows = db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE 'bulkgetty%%' AND pid <> pg_backend_pid()"
            )
        return sum(1 for (ok,) in rows if ok)


def lapse(dsn: str, led: Ledger, seconds_ago: float) -> None:
    """The worker stops renewing (killed, or cut off from the database): its lease lapsed."""
    assert led.lease is not None
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(
            "UPDATE bulkgetty_workers SET lease_until = now() - make_interval(secs => %s) "
            "WHERE id = %s",
            (seconds_ago, led.lease.id),
        )


def asset_row(dsn: str, key: str) -> tuple[Any, ...]:
    with psycopg.connect(dsn) as db:
        row = db.execute(
            "SELECT state, uri, spends, claimed_by, holds_budget FROM bulkgetty_assets "
            "WHERE key = %s",
            (key,),
        ).fetchone()
    assert row is not None
    return tuple(row)


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


def test_a_killed_connection_is_reopened_and_the_worker_keeps_its_claims_and_commits(
    dsn: str, tmp_path: Path
) -> None:
    """pg_terminate_backend (a network blip, a database restart) while a worker holds claims
    and a POST: another worker takes none of them, and the first reconnects and records."""
    init_ledger(dsn, assets(6), downloads_remaining=10, api_rate=None)
    a = Ledger(dsn, tmp_path / "a")
    mine = [r.key for r in a.claim(3)]
    a.record_intent(mine[0])  # the POST leaves
    assert kill_backends(dsn, a.link.db.info.backend_pid) == 1
    b = Ledger(dsn, tmp_path / "b")
    assert {r.key for r in b.claim(100)}.isdisjoint(mine)
    a.record_acquired(mine[0], "http://x/1", time.time() + 60)  # on a new connection
    assert asset_row(dsn, mine[0])[:3] == ("acquired", "http://x/1", 1)
    kill_backends(dsn, a.link.db.info.backend_pid)
    a.record_intent(mine[1])  # carries on: its claims are still its own
    assert budget_row(dsn) == (8, 1)
    kill_backends(dsn, a.link.db.info.backend_pid)
    a.renew()
    a.close()
    b.close()


def test_a_repeated_commit_counts_one_spend_and_one_reservation(dsn: str, tmp_path: Path) -> None:
    """A commit whose answer was lost with its connection is run again on a new one: it must
    not spend, reserve, clear or fail twice."""
    init_ledger(dsn, assets(3), downloads_remaining=5, api_rate=None)
    led = Ledger(dsn, tmp_path)
    k1, k2, k3 = (r.key for r in led.claim(3))
    for _ in range(2):
        led.record_intent(k1)
    assert budget_row(dsn) == (4, 0)
    for _ in range(2):
        led.record_acquired(k1, "http://x/1", time.time() + 60)
    assert budget_row(dsn) == (4, 1) and asset_row(dsn, k1)[2] == 1
    led.record_acquired(k1, "http://x/2", time.time() + 60)  # a second purchase does count
    assert budget_row(dsn) == (3, 2) and asset_row(dsn, k1)[:3] == ("acquired", "http://x/2", 2)
    led.record_done(k1, path="a.jpg", size=1, sha256="0" * 64)
    led.record_acquired(k1, "http://x/2", time.time() + 60)  # its answer lost after the file
    assert budget_row(dsn) == (3, 2) and asset_row(dsn, k1)[:3] == ("done", "http://x/2", 2)
    led.record_intent(k2)
    led.record_in_doubt(k2, "timeout")
    for _ in range(2):
        led.record_spent_without_uri(k2, "history shows it")
    assert budget_row(dsn) == (2, 3) and asset_row(dsn, k2)[:3] == ("failed", None, 1)
    led.record_intent(k3)
    for _ in range(2):
        led.record_cleared_doubt(k3)
    assert budget_row(dsn) == (2, 3) and asset_row(dsn, k3)[0] == "pending"
    led.close()


def test_workers_of_different_roles_never_take_each_others_live_claims(
    dsn: str, tmp_path: Path
) -> None:
    """Without pg_read_all_stats another role's sessions are hidden in pg_stat_activity;
    liveness must not depend on seeing them."""
    init_ledger(dsn, assets(10), downloads_remaining=10, api_rate=None)
    with psycopg.connect(dsn, autocommit=True) as db:
        for role in ("getty_a", "getty_b"):
            db.execute(f"DROP ROLE IF EXISTS {role}")  # roles are server-wide
            db.execute(f"CREATE ROLE {role} LOGIN")
            db.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
            db.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    a = Ledger(dsn.replace(f"//{pg_user(dsn)}@", "//getty_a@"), tmp_path / "a")
    b = Ledger(dsn.replace(f"//{pg_user(dsn)}@", "//getty_b@"), tmp_path / "b")
    first = {r.key for r in a.claim(5)}
    second = {r.key for r in b.claim(100)}
    assert len(first) == 5 and len(second) == 5 and not first & second
    assert b.claim(100) == []
    key = sorted(first)[0]
    with pytest.raises(JournalError, match="no longer holds the claim"):
        b.record_intent(key)
    a.record_intent(key)
    assert asset_row(dsn, key)[0] == "intent"
    a.close()
    b.close()


def pg_user(dsn: str) -> str:
    return dsn.split("//", 1)[1].split("@", 1)[0]


def test_a_lapsed_workers_unstarted_assets_are_free_and_its_posts_after_the_settle_time(
    dsn: str, tmp_path: Path
) -> None:
    """A worker that stopped renewing loses its claims; a POST of it that may have spent is
    taken over only once the taker's history settle time has passed on top of the lease."""
    init_ledger(dsn, assets(4), downloads_remaining=10, api_rate=None)
    a = Ledger(dsn, tmp_path / "a")
    k1, k2, k3, k4 = (r.key for r in a.claim(4))
    a.record_intent(k1)
    a.record_intent(k2)
    a.record_in_doubt(k2, "timeout")
    a.record_intent(k3)
    a.record_acquired(k3, "http://x/3", time.time() + 60)
    b = Ledger(dsn, tmp_path / "b", settle=30)
    assert b.claim(100) == [] and b.next_takeover() is None  # a lives
    lapse(dsn, a, seconds_ago=1)
    assert {r.key for r in b.claim(100)} == {k3, k4}  # acquired and pending: free at once
    wait = b.next_takeover()
    assert wait is not None and 0 < wait <= 29
    with pytest.raises(JournalError, match="no longer holds the claim"):
        a.record_intent(k4)  # back from its outage: what was taken is refused
    assert budget_row(dsn) == (7, 1)
    lapse(dsn, a, seconds_ago=31)
    assert {r.key for r in b.claim(100)} == {k1, k2}
    assert b.next_takeover() is None
    with pytest.raises(JournalError, match="another worker took over"):
        a.record_cleared_doubt(k2)
    a.record_acquired(k1, "http://x/1", time.time() + 60)  # a URI that arrives is kept
    assert asset_row(dsn, k1)[:4] == ("acquired", "http://x/1", 1, a.lease.id if a.lease else 0)
    a.close()
    b.close()


def test_a_worker_that_closes_frees_its_assets_but_its_open_posts_only_after_the_settle_time(
    dsn: str, tmp_path: Path
) -> None:
    init_ledger(dsn, assets(3), downloads_remaining=10, api_rate=None)
    a = Ledger(dsn, tmp_path / "a")
    k1, k2, k3 = (r.key for r in a.claim(3))
    a.record_intent(k1)
    a.close()  # a run stopped by an error, its POST for k1 unresolved
    b = Ledger(dsn, tmp_path / "b", settle=60)
    assert {r.key for r in b.claim(100)} == {k2, k3}
    c = Ledger(dsn, tmp_path / "c", settle=0)
    assert [r.key for r in c.claim(100)] == [k1]
    b.close()
    c.close()


def test_the_lease_is_renewed_and_set_by_the_ledger(dsn: str, tmp_path: Path) -> None:
    init_ledger(dsn, assets(1), downloads_remaining=1, api_rate=None, lease=7)
    led = Ledger(dsn, tmp_path)
    assert led.lease is not None and led.lease.seconds == 7 and led.link.patience == 7
    lapse(dsn, led, seconds_ago=100)
    led.renew()
    assert 6 < lease_left(dsn, led) <= 7
    with pytest.raises(UsageError, match="--lease"):
        init_ledger(dsn, [], downloads_remaining=1, api_rate=None, lease=0)
    led.close()
    reader = Ledger(dsn, tmp_path, lock=False, worker=False)
    with pytest.raises(JournalError, match="reading only"):
        reader.claim(1)
    reader.renew()  # nothing to renew
    reader.close()


def test_a_ledger_made_by_an_older_version_is_refused_until_init_upgrades_it(
    dsn: str, tmp_path: Path
) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        with pytest.raises(JournalError, match="ledger init"):
            Ledger(dsn, tmp_path)
        init_ledger(dsn, assets(1), downloads_remaining=1, api_rate=None)
        db.execute("DROP TABLE bulkgetty_workers")
        db.execute("ALTER TABLE bulkgetty_assets DROP COLUMN claimed_by")
    with pytest.raises(JournalError, match="older bulkgetty"):
        Ledger(dsn, tmp_path)
    init_ledger(dsn, [], downloads_remaining=1, api_rate=None)
    led = Ledger(dsn, tmp_path)
    assert len(led.claim(5)) == 1
    led.close()


def test_reconnecting_backs_off_and_gives_up_with_a_clear_error_once_out_of_patience(
    dsn: str,
) -> None:
    gone = OSError("gone")
    backoff = Backoff(patience=3600)
    assert [backoff.pause(gone) for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert Backoff(patience=0.05).pause(gone) < 0.1  # never past the deadline
    with pytest.raises(JournalError, match=r"could not open a new one within 0 s: gone"):
        Backoff(patience=0).pause(gone)
    link = Link(dsn)
    assert link.patience == LEASE
    link._dsn = f"postgresql://nobody@127.0.0.1:{free_port()}/none"  # nothing listens there
    with pytest.raises(JournalError, match=r"within 0\.3 s: cannot connect to the ledger"):
        link.reopen(Backoff(patience=0.3), gone)
    link.close()
    assert link.broken()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    """The second names the first's pid; status and report (no lock, no claims) still open;
    the lock file and its folder are the owner's alone."""
    init_ledger(dsn, assets(1), downloads_remaining=1, api_rate=None)
    first = Ledger(dsn, tmp_path)
    with pytest.raises(
        JournalError, match=rf"\(pid {os.getpid()}\) is using .*its own --out folder"
    ):
        Ledger(dsn, tmp_path)
    reader = Ledger(dsn, tmp_path, lock=False, worker=False)
    reader.close()
    assert (tmp_path / ".bulkgetty").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / ".bulkgetty" / "lock").stat().st_mode & 0o777 == 0o600
    first.close()
    first.close()  # closing twice is harmless
    Ledger(dsn, tmp_path).close()  # free again once the first has gone


def test_records_come_back_with_every_field_the_worker_committed(dsn: str, tmp_path: Path) -> None:
    init_ledger(dsn, [Asset("8000000", "video", product_type="premiumaccess", size="hd1")],
                downloads_remaining=1, api_rate=None)  # fmt: skip
    led = Ledger(dsn, tmp_path)
    (record,) = led.claim(1)
    assert record.asset == Asset("8000000", "video", product_type="premiumaccess", size="hd1")
    key = record.key
    led.record_intent(key)
    led.record_acquired(key, "http://x/1", 1234.5)
    led.save_progress({key: b'{"name": "a.mp4"}'})
    (r,) = led.upsert([record.asset], run_id=1)
    assert (r.key, r.state, r.uri, r.uri_expires, r.transfer) == (
        key, AssetState.ACQUIRED, "http://x/1", 1234.5, b'{"name": "a.mp4"}',
    )  # fmt: skip
    assert (r.spends, r.attempts, r.error) == (1, 1, None)
    assert r.intent_at is not None and r.acquired_at is not None and r.intent_at <= r.acquired_at
    led.record_done(key, path="a.mp4", size=10, sha256="ab" * 32)
    (r,) = led.upsert([record.asset], run_id=1)
    assert (r.state, r.path, r.bytes, r.sha256) == (AssetState.DONE, "a.mp4", 10, "ab" * 32)
    led.record_failed(key, "boom")
    assert led.upsert([record.asset], run_id=1)[0].error == "boom"
    for record_on_nothing in (
        lambda: led.record_failed("image/1", "x"),
        lambda: led.record_cleared_doubt("image/1"),
    ):
        with pytest.raises(JournalError, match="no asset 'image/1'"):
            record_on_nothing()
    led.close()


def test_budget_is_reserved_with_the_intent_and_given_back_only_when_nothing_was_spent(
    dsn: str, tmp_path: Path
) -> None:
    init_ledger(dsn, assets(3), downloads_remaining=2, api_rate=None)
    led = Ledger(dsn, tmp_path)
    k1, k2, k3 = (r.key for r in led.claim(10))
    led.record_intent(k1)
    led.record_intent(k2)
    assert budget_row(dsn) == (0, 0)
    with pytest.raises(QuotaExceededError, match="ledger's download budget is spent") as spent:
        led.record_intent(k3)
    assert (spent.value.status, spent.value.code) == (0, "LedgerBudgetSpent")
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
    # A worker that closes gives its unstarted assets back: all stay open until every one is
    # done, or the assets of the first to leave would (rightly) be claimed by the others.
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


async def test_an_open_worker_renews_its_lease_in_the_background(dsn: str, tmp_path: Path) -> None:
    init_ledger(dsn, assets(2), downloads_remaining=2, api_rate=None, lease=0.6)
    ledger = await AsyncLedger.open(dsn, tmp_path)
    try:
        lapse(dsn, ledger.journal, seconds_ago=100)
        deadline = time.monotonic() + 30
        while lease_left(dsn, ledger.journal) <= 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert lease_left(dsn, ledger.journal) > 0, "the lease was never renewed"
    finally:
        await ledger.close()


async def test_claimed_rows_waits_out_a_lapsed_workers_settle_time_then_takes_its_post(
    dsn: str, tmp_path: Path
) -> None:
    """A new worker does not stop while a dead worker's POST in doubt is about to be free: it
    waits for it (bounded by the settle time) and then resolves it like any other."""
    init_ledger(dsn, assets(2), downloads_remaining=5, api_rate=None)
    dead = Ledger(dsn, tmp_path / "dead")
    k1, k2 = (r.key for r in dead.claim(2))
    dead.record_intent(k1)
    lapse(dsn, dead, seconds_ago=0)
    ledger = await AsyncLedger.open(dsn, tmp_path / "new", settle=0.3)
    try:
        taken = [asset.key async for asset in claimed_rows(ledger, batch=10)]
        assert sorted(taken) == [k1, k2]  # k2 at once, k1 once the settle time has passed
        assert [a async for a in claimed_rows(ledger)] == []  # none left: it stops
    finally:
        await ledger.close()
        dead.close()


def lease_left(dsn: str, led: Ledger) -> float:
    assert led.lease is not None
    with psycopg.connect(dsn) as db:
        row = db.execute(
            "SELECT extract(epoch FROM lease_until - now()) FROM bulkgetty_workers WHERE id = %s",
            (led.lease.id,),
        ).fetchone()
    assert row is not None
    return float(row[0])


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


def wait_for_leases_to_lapse(dsn: str) -> None:
    deadline = time.monotonic() + 60
    with psycopg.connect(dsn, autocommit=True) as db:
        while time.monotonic() < deadline:
            row = db.execute(
                "SELECT count(*) FROM bulkgetty_workers WHERE lease_until >= now()"
            ).fetchone()
            if row == (0,):
                return
            time.sleep(0.2)
    raise AssertionError("the killed workers' leases never lapsed")


def test_kill_9_of_workers_then_new_workers_finish_without_double_spend(
    dsn: str, tmp_path: Path
) -> None:
    ids = [str(8_200_000 + i) for i in range(80)]
    manifest = tmp_path / "ids.txt"
    manifest.write_text("\n".join(ids) + "\n")
    config = SandboxConfig(image_bytes=(20_000, 60_000), qps=QPS, api_latency=0.05)
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        ledger_init_cli(dsn, manifest, env, "--downloads-remaining", "500", "--lease", "5")
        _kill_when_spent(sb, start_workers(dsn, tmp_path, 4, env), at=15)
        spent_before = sum(sb.spends_by_asset().values())
        assert spent_before < len(ids), "killed too late to prove anything"
        wait_for_leases_to_lapse(dsn)  # the dead keep their claims until then
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


def test_connection_killed_mid_post_costs_one_spend_and_the_uri_is_committed_on_reconnect(
    dsn: str, tmp_path: Path
) -> None:
    """The ledger's connections die (pg_terminate_backend) while the sandbox holds a charged
    POST: no other worker takes the asset, the worker reconnects, commits the URI it gets and
    downloads the file; the download history lags, so a second purchase would go unseen."""
    ids = [str(8_500_000 + i) for i in range(3)]
    held = ids[0]
    manifest = tmp_path / "ids.txt"
    manifest.write_text("\n".join(ids) + "\n")
    config = SandboxConfig(
        image_bytes=(20_000, 60_000),
        qps=QPS,
        history_lag=120,
        faults=Faults(post_hang={held: 4.0}),
    )
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        ledger_init_cli(dsn, manifest, env, "--downloads-remaining", "10")
        first = start_workers(dsn, tmp_path, 1, env)
        deadline = time.monotonic() + 60
        while not sb.spends_by_asset().get(f"image/{held}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sb.spends_by_asset().get(f"image/{held}") == 1, "the POST never arrived"
        assert kill_backends(dsn) >= 1  # while the POST is held
        second = start_workers(dsn, tmp_path, 1, env, offset=1)
        results = wait_all(first + second)
        assert sb.spends_by_asset() == {f"image/{i}": 1 for i in ids}
        assert all(code == 0 for code, _ in results), results
        rows = {r["id"]: r for r in worker_rows(tmp_path, "w0")}
        assert rows[held]["status"] == "downloaded"
        assert_workers_exact(sb, tmp_path, ids)
        state, uri, spends = asset_row(dsn, f"image/{held}")[:3]
        assert (state, spends) == ("done", 1) and uri.startswith("http")
        assert budget_row(dsn) == (10 - 3, 3)


def spool_file(folder: Path) -> Path:
    return folder / ".bulkgetty" / "unsent-uris.jsonl"


def cut_off(led: Ledger, dsn: str) -> None:
    """The database goes out of reach for longer than the worker's patience."""
    led.link.patience = 0.3
    led.link._dsn = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    kill_backends(dsn, led.link.db.info.backend_pid)


def test_a_paid_uri_the_ledger_cannot_take_is_kept_in_the_folder_and_given_on_the_next_open(
    dsn: str, tmp_path: Path
) -> None:
    """Before, the URI lived only in memory once the ledger stayed away past the patience:
    the run's end lost a paid download."""
    init_ledger(dsn, assets(2), downloads_remaining=5, api_rate=None)
    a = Ledger(dsn, tmp_path)
    key = a.claim(1)[0].key
    a.record_intent(key)
    cut_off(a, dsn)
    a.record_acquired(key, "https://x/paid", time.time() + 3600)  # kept: returns
    assert spool_file(tmp_path).stat().st_mode & 0o777 == 0o600
    assert asset_row(dsn, key)[:3] == ("intent", None, 0)
    a.close()
    b = Ledger(dsn, tmp_path)  # this folder's next run
    assert asset_row(dsn, key)[:3] == ("acquired", "https://x/paid", 1)
    assert budget_row(dsn) == (4, 1)
    assert not spool_file(tmp_path).exists()
    b.close()


def test_a_spooled_uri_reaches_the_ledger_before_the_next_state_of_the_same_run(
    dsn: str, tmp_path: Path
) -> None:
    """The database comes back within the run: the spend is counted before the `done` that
    would otherwise hide it."""
    init_ledger(dsn, assets(1), downloads_remaining=5, api_rate=None)
    led = Ledger(dsn, tmp_path)
    key = led.claim(1)[0].key
    led.record_intent(key)
    cut_off(led, dsn)
    led.record_acquired(key, "https://x/paid", time.time() + 3600)
    led.link._dsn = dsn  # back
    led.record_done(key, path="a.jpg", size=1, sha256="0" * 64)
    assert asset_row(dsn, key)[:3] == ("done", "https://x/paid", 1)
    assert budget_row(dsn) == (4, 1)
    assert not spool_file(tmp_path).exists()
    led.close()


def test_a_spooled_uri_counts_its_spend_once_whatever_another_worker_did_meanwhile(
    dsn: str, tmp_path: Path
) -> None:
    """A taker may have read the spend in the history (counted, no URI), bought again (then
    the asset has a URI or its file), or been told by a late history that nothing was spent
    (pending: the spend is not counted yet)."""
    from bulkgetty.stages.ledger.spool import UriSpool

    init_ledger(dsn, assets(3), downloads_remaining=5, api_rate=None)
    led = Ledger(dsn, tmp_path)
    counted, rebought, cleared = (r.key for r in led.claim(3))
    led.record_intent(counted)
    led.record_in_doubt(counted, "timeout")
    led.record_spent_without_uri(counted, "history shows it")
    led.record_intent(rebought)
    led.record_acquired(rebought, "https://x/new", time.time() + 3600)
    led.record_done(rebought, path="b.jpg", size=1, sha256="0" * 64)
    led.record_intent(cleared)
    led.record_cleared_doubt(cleared)
    assert budget_row(dsn) == (3, 2)
    spool = UriSpool(tmp_path / ".bulkgetty")
    for key in (counted, rebought, cleared):
        spool.add(key, f"https://x/old-{key}", time.time() + 3600)
    assert led.replay_spool() == 3
    assert asset_row(dsn, counted)[:3] == ("acquired", f"https://x/old-{counted}", 1)
    assert asset_row(dsn, rebought)[:3] == ("done", "https://x/new", 1)
    assert asset_row(dsn, cleared)[:3] == ("acquired", f"https://x/old-{cleared}", 1)
    assert budget_row(dsn) == (2, 3)  # one more spend: the cleared one's
    assert led.replay_spool() == 0
    led.close()
