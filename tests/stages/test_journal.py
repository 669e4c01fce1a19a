"""journal.py: the SQLite journal that must never forget a spend, even across kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bulkgetty.assets import Asset
from bulkgetty.errors import BulkGettyError, DiskFullError, JournalError
from bulkgetty.stages.journal import (
    GROUP_LIMIT,
    NETWORK_FILESYSTEMS,
    RESERVE_BYTES,
    STATE_DIR,
    AssetState,
    AsyncJournal,
    Journal,
    failure_counts,
    filesystem_type,
    iter_done,
    journal_mode_for,
    on_memory_filesystem,
    private_file,
    private_state_dir,
    runs,
    waiting_reasons,
)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


def child_env() -> dict[str, str]:
    """The child imports this checkout's bulkgetty, installed or not."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def assets(n: int, prefix: str = "") -> list[Asset]:
    return [Asset(f"{prefix}{i:05d}") for i in range(n)]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path)
    yield j
    j.close()


# ------------------------------------------------------------------ opening and locking


def test_journal_lives_in_state_dir_and_uses_wal(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    try:
        assert j.path == tmp_path / STATE_DIR / "journal.sqlite"
        assert j.path.exists()
        mode = j._db.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode.lower() == "wal"
        assert j._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        j.close()
    # nothing is written outside the state folder
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_DIR]


def test_second_journal_on_same_folder_is_refused_while_first_lives(tmp_path: Path) -> None:
    first = Journal(tmp_path)
    try:
        with pytest.raises(JournalError) as info:
            Journal(tmp_path)
        message = str(info.value)
        assert "another bulkgetty run" in message
        assert str(os.getpid()) in message  # names the holder
    finally:
        first.close()
    # once the first one is closed, a new run may start
    second = Journal(tmp_path)
    second.close()


def test_lock_is_refused_from_another_process(tmp_path: Path) -> None:
    """The lock is an OS lock, so a different process sees it too."""
    first = Journal(tmp_path)
    try:
        code = textwrap.dedent(
            f"""
            import sys
            from pathlib import Path
            from bulkgetty.stages.journal import Journal
            from bulkgetty.errors import JournalError
            try:
                Journal(Path({str(tmp_path)!r}))
            except JournalError as exc:
                print("refused", exc)
                sys.exit(0)
            sys.exit(5)
            """
        )
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
            env=child_env(),
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "refused" in proc.stdout
    finally:
        first.close()


def test_read_only_journal_needs_an_existing_journal(tmp_path: Path) -> None:
    with pytest.raises(JournalError):
        Journal(tmp_path, read_only=True)
    assert not (tmp_path / STATE_DIR / "journal.sqlite").exists()


def test_read_only_journal_reads_while_a_run_holds_the_lock(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    try:
        run = j.begin_run("m.csv")
        j.upsert(assets(3), run)
        ro = Journal(tmp_path, read_only=True)
        try:
            assert ro.totals().by_state == {"pending": 3}
            with pytest.raises(sqlite3.OperationalError):
                ro.begin_run("x")
        finally:
            ro.close()
    finally:
        j.close()


# ------------------------------------------------------------------ state transitions


def test_upsert_registers_pending_assets_in_order(journal: Journal) -> None:
    run = journal.begin_run("m.csv")
    batch = [Asset("b"), Asset("a", "video", size="hd1"), Asset("c", product_type="premiumaccess")]
    records = journal.upsert(batch, run)
    assert [r.key for r in records] == [a.key for a in batch]
    assert [r.asset for r in records] == batch  # asset round-trips through the JSON blob
    assert all(r.state is AssetState.PENDING and r.spends == 0 for r in records)


def test_upsert_of_a_known_asset_keeps_its_uri_and_spends(journal: Journal) -> None:
    """What makes a rerun spend nothing twice: re-registering keeps what was bought."""
    run1 = journal.begin_run("m.csv")
    a = Asset("1")
    journal.upsert([a], run1)
    journal.record_intent(a.key)
    journal.record_acquired(a.key, "http://d/1?sig=x", 1e12)
    run2 = journal.begin_run("m.csv")
    (rec,) = journal.upsert([a], run2)
    assert rec.state is AssetState.ACQUIRED
    assert rec.uri == "http://d/1?sig=x"
    assert rec.uri_expires == 1e12
    assert rec.spends == 1
    assert journal.totals(run2).spends == 1
    assert journal.totals(run1).by_state == {}  # the asset now belongs to run 2


def test_intent_then_acquired_counts_one_spend(journal: Journal) -> None:
    run = journal.begin_run("m")
    a = Asset("1")
    journal.upsert([a], run)
    journal.record_intent(a.key)
    rec = journal.get(a.key)
    assert rec is not None
    assert rec.state is AssetState.INTENT
    assert rec.intent_at is not None
    assert rec.attempts == 1
    assert rec.spends == 0  # intent alone is not a known spend
    journal.record_acquired(a.key, "http://d/1", 123.0)
    rec = journal.get(a.key)
    assert rec is not None
    assert (rec.state, rec.uri, rec.uri_expires, rec.spends) == (
        AssetState.ACQUIRED,
        "http://d/1",
        123.0,
        1,
    )
    assert rec.acquired_at is not None


def test_reacquire_adds_a_spend_and_drops_old_transfer_state(journal: Journal) -> None:
    run = journal.begin_run("m")
    a = Asset("1")
    journal.upsert([a], run)
    journal.record_intent(a.key)
    journal.record_acquired(a.key, "http://d/old", 1.0)
    journal.save_progress({a.key: b'{"bytes": 10}'})
    journal.record_intent(a.key)
    journal.record_acquired(a.key, "http://d/new", 2.0)
    rec = journal.get(a.key)
    assert rec is not None
    assert rec.spends == 2
    assert rec.attempts == 2
    assert rec.uri == "http://d/new"
    assert rec.transfer is None  # validators of the old URI are not reused for the new one


def test_in_doubt_spent_without_uri_counts_the_spend_and_forgets_the_uri(journal: Journal) -> None:
    run = journal.begin_run("m")
    a = Asset("1")
    journal.upsert([a], run)
    journal.record_intent(a.key)
    journal.record_in_doubt(a.key, "in doubt: 502")
    rec = journal.get(a.key)
    assert rec is not None
    assert rec.state is AssetState.IN_DOUBT
    assert rec.error == "in doubt: 502"
    assert journal.totals().in_doubt == 1
    journal.record_spent_without_uri(a.key, "lost; --reacquire-expired")
    rec = journal.get(a.key)
    assert rec is not None
    assert (rec.state, rec.spends, rec.uri, rec.uri_expires) == (AssetState.FAILED, 1, None, None)
    assert "--reacquire-expired" in (rec.error or "")


def test_cleared_doubt_goes_back_to_pending_without_a_spend(journal: Journal) -> None:
    run = journal.begin_run("m")
    a = Asset("1")
    journal.upsert([a], run)
    journal.record_intent(a.key)
    journal.record_in_doubt(a.key, "in doubt")
    journal.record_cleared_doubt(a.key)
    rec = journal.get(a.key)
    assert rec is not None
    assert (rec.state, rec.spends, rec.error) == (AssetState.PENDING, 0, None)


def test_not_spent_waiting_and_failed_and_done(journal: Journal) -> None:
    run = journal.begin_run("m")
    a, b, c = Asset("a"), Asset("b"), Asset("c")
    journal.upsert([a, b, c], run)
    journal.record_intent(a.key)
    journal.record_not_spent(a.key, AssetState.WAITING_FOR_QUOTA, "limit")
    journal.record_failed(b.key, "boom")
    journal.record_intent(c.key)
    journal.record_acquired(c.key, "u", 9.0)
    journal.record_done(c.key, path="GettyImages-c.jpg", size=42, sha256="ab" * 32)
    ra, rb, rc = (journal.get(x.key) for x in (a, b, c))
    assert ra is not None and rb is not None and rc is not None
    assert (ra.state, ra.error, ra.spends) == (AssetState.WAITING_FOR_QUOTA, "limit", 0)
    assert (rb.state, rb.error) == (AssetState.FAILED, "boom")
    assert (rc.state, rc.path, rc.bytes, rc.sha256, rc.error) == (
        AssetState.DONE,
        "GettyImages-c.jpg",
        42,
        "ab" * 32,
        None,
    )
    assert journal.uses_name("GettyImages-c.jpg")
    assert not journal.uses_name("GettyImages-x.jpg")


def test_update_of_unknown_asset_is_an_error(journal: Journal) -> None:
    with pytest.raises(JournalError):
        journal.record_intent("image/nope")


def test_save_progress_is_batched_in_one_call(journal: Journal) -> None:
    run = journal.begin_run("m")
    batch = assets(5)
    journal.upsert(batch, run)
    journal.save_progress({a.key: f"state-{a.id}".encode() for a in batch})
    journal.save_progress({})  # nothing to do, no error
    for a in batch:
        rec = journal.get(a.key)
        assert rec is not None
        assert rec.transfer == f"state-{a.id}".encode()


def test_finish_run_records_spends_and_exit_code(journal: Journal) -> None:
    run = journal.begin_run("m.csv")
    journal.finish_run(run, spends=7, exit_code=3)
    row = journal._db.execute(
        "SELECT manifest, spends, exit_code, finished FROM runs WHERE id = ?", (run,)
    ).fetchone()
    assert row[:3] == ("m.csv", 7, 3)
    assert row[3] is not None


# ------------------------------------------------------------------ reading


def test_iter_records_yields_every_record_once_in_key_order_across_batches(
    journal: Journal,
) -> None:
    run = journal.begin_run("m")
    batch = assets(23)
    journal.upsert(batch, run)
    keys = [r.key for r in journal.iter_records(batch=5)]
    assert keys == sorted(a.key for a in batch)
    assert len(set(keys)) == 23


def test_iter_records_filters_by_run(journal: Journal) -> None:
    run1 = journal.begin_run("m1")
    journal.upsert(assets(4, "x"), run1)
    run2 = journal.begin_run("m2")
    journal.upsert(assets(3, "y"), run2)
    assert len(list(journal.iter_records(run1, batch=2))) == 4
    assert {r.asset.id[0] for r in journal.iter_records(run2, batch=2)} == {"y"}
    assert len(list(journal.iter_records(batch=1))) == 7


def test_iter_records_is_lazy(journal: Journal) -> None:
    run = journal.begin_run("m")
    journal.upsert(assets(10), run)
    it = journal.iter_records(batch=3)
    first = next(it)
    assert first.asset.id == "00000"


def test_get_many_handles_more_keys_than_one_query_chunk(journal: Journal) -> None:
    run = journal.begin_run("m")
    batch = assets(1203)
    records = journal.upsert(batch, run)
    assert len(records) == 1203
    assert [r.key for r in records] == [a.key for a in batch]


def test_totals_counts_states_spends_bytes_and_doubt(journal: Journal) -> None:
    run = journal.begin_run("m")
    a, b, c, d, e = assets(5)
    journal.upsert([a, b, c, d, e], run)
    for x in (a, b):
        journal.record_intent(x.key)
        journal.record_acquired(x.key, "u", 1.0)
    journal.record_done(a.key, path="a.jpg", size=100, sha256="0" * 64)
    journal.record_intent(c.key)  # intent after a crash counts as in doubt
    journal.record_intent(d.key)
    journal.record_in_doubt(d.key, "x")
    t = journal.totals(run)
    assert t.by_state == {"done": 1, "acquired": 1, "intent": 1, "in_doubt": 1, "pending": 1}
    assert t.spends == 2
    assert t.bytes_done == 100
    assert t.in_doubt == 2
    assert journal.totals().spends == 2
    empty = journal.totals(run + 1000)
    assert (empty.by_state, empty.spends, empty.bytes_done, empty.in_doubt) == ({}, 0, 0, 0)


def test_journal_survives_close_and_reopen(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    run = j.begin_run("m")
    a = Asset("1", height=500)
    j.upsert([a], run)
    j.record_intent(a.key)
    j.record_acquired(a.key, "http://d/1", 5.0)
    j.save_progress({a.key: b"xfer"})
    j.close()
    j2 = Journal(tmp_path)
    try:
        rec = j2.get(a.key)
        assert rec is not None
        assert (rec.asset, rec.state, rec.uri, rec.spends, rec.transfer) == (
            a,
            AssetState.ACQUIRED,
            "http://d/1",
            1,
            b"xfer",
        )
        assert j2.begin_run("m") == run + 1
    finally:
        j2.close()


# ------------------------------------------------------------------ AsyncJournal


async def test_async_journal_runs_every_call_on_one_thread(tmp_path: Path) -> None:
    aj = await AsyncJournal.open(tmp_path)
    threads: set[int] = set()

    def who() -> int:
        threads.add(threading.get_ident())
        return threading.get_ident()

    try:
        run = await aj.call(aj.journal.begin_run, "m")
        batch = assets(20)
        await aj.call(aj.journal.upsert, batch, run)
        # many concurrent writers: sqlite3 would raise if used from another thread
        await asyncio.gather(*(aj.call(aj.journal.record_intent, a.key) for a in batch))
        await asyncio.gather(*(aj.call(who) for _ in range(10)))
        totals = await aj.call(aj.journal.totals, run)
        assert totals.by_state == {"intent": 20}
    finally:
        await aj.close()
    assert len(threads) == 1
    assert threading.get_ident() not in threads


@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
async def test_async_journal_stage_progress_keeps_newest_and_flushes_once(
    tmp_path: Path,
    inline: bool,
) -> None:
    aj = await AsyncJournal.open(tmp_path, inline=inline)
    calls: list[dict[str, bytes]] = []
    real = aj.journal.save_progress

    def spy(states: dict[str, bytes]) -> None:
        calls.append(dict(states))
        real(states)

    aj.journal.save_progress = spy  # type: ignore[method-assign]
    try:
        run = await aj.call(aj.journal.begin_run, "m")
        a, b, c = assets(3)
        await aj.call(aj.journal.upsert, [a, b, c], run)
        aj.stage_progress(a.key, b"a1")
        aj.stage_progress(a.key, b"a2")
        aj.stage_progress(b.key, b"b1")
        aj.stage_progress(c.key, b"c1")
        aj.drop_progress(c.key)
        await aj.flush()
        await aj.flush()  # nothing staged: no write
        assert calls == [{a.key: b"a2", b.key: b"b1"}]
        rec_a = await aj.call(aj.journal.get, a.key)
        rec_c = await aj.call(aj.journal.get, c.key)
        assert rec_a is not None and rec_c is not None
        assert rec_a.transfer == b"a2"
        assert rec_c.transfer is None
        aj.stage_progress(b.key, b"b2")
    finally:
        await aj.close()  # close flushes what is staged
    j = Journal(tmp_path)
    try:
        rec_b = j.get(b.key)
        assert rec_b is not None
        assert rec_b.transfer == b"b2"
    finally:
        j.close()


async def test_async_journal_commit_survives_cancellation_of_the_caller(tmp_path: Path) -> None:
    """A commit that has started finishes even if the awaiting task is cancelled."""
    aj = await AsyncJournal.open(tmp_path)
    gate = threading.Event()
    try:
        run = await aj.call(aj.journal.begin_run, "m")
        a = Asset("1")
        await aj.call(aj.journal.upsert, [a], run)

        def slow_acquire() -> None:
            gate.wait(10)
            aj.journal.record_acquired(a.key, "http://d/1", 1.0)

        task = asyncio.create_task(aj.call(slow_acquire))
        await asyncio.sleep(0.01)  # let the call reach the journal thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        rec = await asyncio.wait_for(aj.call(aj.journal.get, a.key), 10)
        assert rec is not None
        assert rec.state is AssetState.ACQUIRED
        assert rec.spends == 1
    finally:
        gate.set()
        await aj.close()


@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
async def test_async_journal_open_refuses_a_locked_folder(tmp_path: Path, inline: bool) -> None:
    aj = await AsyncJournal.open(tmp_path, inline=inline)
    try:
        with pytest.raises(JournalError):
            await AsyncJournal.open(tmp_path, inline=inline)
    finally:
        await aj.close()
    aj2 = await AsyncJournal.open(tmp_path, inline=inline)
    await aj2.close()


async def test_async_journal_close_releases_the_lock_and_thread(tmp_path: Path) -> None:
    before = {t.name for t in threading.enumerate()}
    aj = await AsyncJournal.open(tmp_path)
    await aj.call(aj.journal.begin_run, "m")
    await aj.close()
    after = [t for t in threading.enumerate() if t.name.startswith("bulkgetty-journal")]
    assert not [t for t in after if t.name not in before]
    Journal(tmp_path).close()


# ------------------------------------------------------------------ kill -9

_CHILD = """
import sys
from pathlib import Path
from bulkgetty.assets import Asset
from bulkgetty.stages.journal import Journal

out = Path(sys.argv[1])
j = Journal(out)
run = j.begin_run("kill.csv")
batch = [Asset(f"{i:06d}") for i in range(3000)]
j.upsert(batch, run)
print("ready", flush=True)
for i, a in enumerate(batch):
    j.record_intent(a.key)
    j.record_acquired(a.key, f"http://d/{a.id}", 1e12)
    # reported only after the commit returned
    print(a.key, flush=True)
    if i % 7 == 0:
        j.save_progress({a.key: b"p" * 200})
"""


def test_kill_9_mid_commits_keeps_every_committed_acquisition(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    committed: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 40
        line = proc.stdout.readline()
        assert line.strip() == "ready", line + (proc.stderr.read() if proc.stderr else "")
        while len(committed) < 200 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            committed.append(line.strip())
        assert len(committed) >= 200, "child stopped committing early"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        # lines the child printed before it died are committed too
        rest = proc.stdout.read()
        committed.extend(x for x in rest.split("\n") if x.strip())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    # the journal opens (the dead process's lock went with it) and is consistent
    j = Journal(out)
    try:
        integrity = j._db.execute("PRAGMA integrity_check").fetchone()[0]
        assert integrity == "ok"
        records = {r.key: r for r in j.get_many(committed)}
        assert len(records) == len(committed)
        for key in committed:
            rec = records[key]
            assert rec.state is AssetState.ACQUIRED, key
            assert rec.spends == 1
            assert rec.uri == f"http://d/{rec.asset.id}"
        totals = j.totals()
        # at most one more acquisition was committed after the last line was printed
        assert len(committed) <= totals.spends <= len(committed) + 1
        assert sum(totals.by_state.values()) == 3000
    finally:
        j.close()


def test_uri_refused_is_never_trusted_again(journal: Journal) -> None:
    """A URI the delivery host refused keeps its spend but no longer looks valid."""
    run = journal.begin_run("m")
    a = Asset("1")
    journal.upsert([a], run)
    journal.record_intent(a.key)
    journal.record_acquired(a.key, "http://d/1", time.time() + 86_400)
    before = time.time()
    journal.record_uri_refused(a.key, "refused; --reacquire-expired")
    rec = journal.get(a.key)
    assert rec is not None
    assert rec.state is AssetState.FAILED
    assert rec.spends == 1
    assert rec.uri_expires is not None and rec.uri_expires <= time.time()
    assert rec.uri_expires >= before
    assert rec.error == "refused; --reacquire-expired"


def test_part_names_in_use_lists_only_unfinished_transfers(journal: Journal) -> None:
    run = journal.begin_run("m")
    a, b, c = assets(3)
    journal.upsert([a, b, c], run)
    journal.save_progress(
        {
            a.key: b'{"name": "a.jpg", "done": 5}',
            b.key: b'{"name": "b.jpg", "done": 5}',
            c.key: b'{"done": 0}',
        }
    )
    journal.record_done(b.key, path="b.jpg", size=10, sha256="0" * 64)
    assert journal.part_names_in_use() == {"a.jpg"}


def test_waiting_for_quota_is_batched_and_never_overrides_a_purchase(tmp_path: Path) -> None:
    """Refusals spend nothing, so they are written in one batch; an acquired asset keeps its URI."""
    journal = Journal(tmp_path)
    try:
        run_id = journal.begin_run("m.txt")
        a, b = Asset("1"), Asset("2")
        journal.upsert([a, b], run_id)
        journal.record_acquired(b.key, "https://d.example/x", 1e12)
        journal.record_waiting_many({a.key: "limit reached", b.key: "limit reached"})
        got_a, got_b = journal.get(a.key), journal.get(b.key)
        assert got_a is not None and got_a.state is AssetState.WAITING_FOR_QUOTA
        assert got_a.error == "limit reached"
        assert got_b is not None and got_b.state is AssetState.ACQUIRED
        assert got_b.uri == "https://d.example/x"
    finally:
        journal.close()


# ------------------------------------------------------------------ shard binding


def test_bind_meta_records_the_first_run_and_refuses_a_different_later_one(
    journal: Journal,
) -> None:
    """A folder belongs to one shard of one manifest: the same values again are fine, any
    other value is refused with both values named, and nothing of the refused call is kept."""
    assert journal.read_meta() == {"schema": "1"}
    journal.bind_meta({"shard": "0/4", "manifest_sha256": "aa"})
    journal.bind_meta({"shard": "0/4", "manifest_sha256": "aa"})
    with pytest.raises(JournalError) as info:
        journal.bind_meta({"extra": "x", "shard": "1/4"})
    assert str(info.value) == (
        f"{journal.state_dir.parent} was run with shard 0/4, this run has 1/4; "
        "use a fresh --out folder for another shard layout or manifest"
    )
    assert journal.read_meta() == {"schema": "1", "shard": "0/4", "manifest_sha256": "aa"}


# ------------------------------------------------------------------ status queries


def test_status_queries_count_failures_and_waits_most_frequent_first(journal: Journal) -> None:
    run = journal.begin_run("m")
    batch = assets(7)
    journal.upsert(batch, run)
    for a in batch[:3]:
        journal.record_failed(a.key, "404")
    journal.record_failed(batch[3].key, "boom")
    journal.record_waiting_many({batch[4].key: "cap", batch[5].key: "limit", batch[6].key: "cap"})
    assert failure_counts(journal) == [("404", 3), ("boom", 1)]
    assert waiting_reasons(journal) == [("cap", 2), ("limit", 1)]
    journal.record_not_spent(batch[4].key, AssetState.FAILED, None)  # no message: ""
    top, *ties = failure_counts(journal)
    assert (top, sorted(ties)) == (("404", 3), [("", 1), ("boom", 1)])


def test_runs_lists_every_run_oldest_first(journal: Journal) -> None:
    first = journal.begin_run("a.csv")
    second = journal.begin_run("b.csv")
    journal.finish_run(first, spends=4, exit_code=0)
    rows = runs(journal)
    assert [(r.id, r.manifest, r.spends, r.exit_code) for r in rows] == [
        (first, "a.csv", 4, 0),
        (second, "b.csv", 0, None),
    ]
    assert rows[0].finished is not None and rows[0].finished >= rows[0].started
    assert rows[1].finished is None


def test_iter_done_yields_only_finished_assets_in_key_order_across_batches(
    journal: Journal,
) -> None:
    run = journal.begin_run("m")
    batch = assets(9)
    journal.upsert(batch, run)
    done = [batch[i] for i in (8, 0, 3, 4, 6)]
    for a in done:
        journal.record_done(a.key, path=f"{a.id}.jpg", size=1, sha256="0" * 64)
    journal.record_failed(batch[1].key, "boom")
    got = list(iter_done(journal, batch=2))
    assert [r.key for r in got] == sorted(a.key for a in done)
    assert all(r.state is AssetState.DONE for r in got)


def test_totals_of_one_run_count_only_that_run(journal: Journal) -> None:
    run1 = journal.begin_run("m1")
    [a] = journal.upsert([Asset("a")], run1)
    journal.record_acquired(a.key, "u", 1.0)
    journal.record_done(a.key, path="a.jpg", size=10, sha256="0" * 64)
    run2 = journal.begin_run("m2")
    [b] = journal.upsert([Asset("b")], run2)
    journal.record_acquired(b.key, "u", 1.0)
    journal.record_done(b.key, path="b.jpg", size=7, sha256="0" * 64)
    assert (journal.totals(run2).spends, journal.totals(run2).bytes_done) == (1, 7)
    assert (journal.totals().spends, journal.totals().bytes_done) == (2, 17)


# ------------------------------------------------------------------ filesystems


_MOUNTS = """\
/dev/sda1 / ext4 rw 0 0
bad-line
server:/export /nonexistent-bg/nfs nfs4
//host/share /nonexistent-bg/nfs/with\\040space cifs rw 0 0
tmpfs /nonexistent-bg/nf tmpfs rw 0 0
over /nonexistent-bg/nf overlay rw 0 0
box /nonexistent-bg/BOX xfs rw 0 0
"""


@pytest.fixture
def mounts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """/proc/self/mounts as `_MOUNTS` says, every other path read as usual."""
    real = Path.read_text

    def read_text(self: Path, *args: Any, **kwargs: Any) -> str:
        if str(self) == "/proc/self/mounts":
            return _MOUNTS
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    monkeypatch.delenv("BULKGETTY_JOURNAL_MODE", raising=False)
    yield


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/", "ext4"),
        ("/home/x", "ext4"),
        ("/nonexistent-bg/nfs", "nfs4"),
        ("/nonexistent-bg/nfs/deep/er", "nfs4"),
        ("/nonexistent-bg/nfsx", "ext4"),  # a longer name, not inside the mount
        ("/nonexistent-bg/nf/x", "overlay"),  # mounted over the tmpfs: the later one counts
        ("/nonexistent-bg/BOX/a", "xfs"),
        ("/nonexistent-bg/nfs/with space/x", "cifs"),  # \040 is a space in mounts
    ],
)
@pytest.mark.usefixtures("mounts")
def test_filesystem_type_is_the_longest_mount_holding_the_path(path: str, fstype: str) -> None:
    assert filesystem_type(Path(path)) == fstype


@pytest.mark.parametrize(
    ("path", "memory"),
    [
        ("/nonexistent-bg/shm/out", True),  # tmpfs
        ("/nonexistent-bg/ram", True),  # ramfs
        ("/nonexistent-bg/out", False),  # ext4 (/)
        ("/nonexistent-bg/shm/over/x", False),  # an overlay mounted inside the tmpfs
    ],
)
def test_only_tmpfs_and_ramfs_are_memory_filesystems(
    monkeypatch: pytest.MonkeyPatch, path: str, memory: bool
) -> None:
    """What decides that the journal and small files run on the loop (no thread hop)."""
    real = Path.read_text
    table = (
        "/dev/sda1 / ext4 rw 0 0\n"
        "tmpfs /nonexistent-bg/shm tmpfs rw 0 0\n"
        "none /nonexistent-bg/ram ramfs rw 0 0\n"
        "over /nonexistent-bg/shm/over overlay rw 0 0\n"
    )

    def read_text(self: Path, *args: Any, **kwargs: Any) -> str:
        return table if str(self) == "/proc/self/mounts" else real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    assert on_memory_filesystem(Path(path)) is memory


def test_filesystem_type_is_unknown_without_a_mount_table(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(self: Path, *args: Any, **kwargs: Any) -> str:
        raise PermissionError(str(self))

    monkeypatch.setattr(Path, "read_text", unreadable)
    assert filesystem_type(Path("/")) is None


@pytest.mark.usefixtures("mounts")
def test_journal_mode_is_wal_locally_and_delete_on_a_network_filesystem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert journal_mode_for(Path("/home/x")) == "WAL"
    assert journal_mode_for(Path("/nonexistent-bg/nfs/x")) == "DELETE"
    assert journal_mode_for(Path("/nonexistent-bg/nfs/with space")) == "DELETE"  # cifs
    assert journal_mode_for(Path("/nonexistent-bg/nf")) == "WAL"  # overlay is local
    assert "nfs4" in NETWORK_FILESYSTEMS and "ext4" not in NETWORK_FILESYSTEMS
    monkeypatch.setenv("BULKGETTY_JOURNAL_MODE", " delete ")
    assert journal_mode_for(Path("/home/x")) == "DELETE"
    monkeypatch.setenv("BULKGETTY_JOURNAL_MODE", "wal")
    assert journal_mode_for(Path("/nonexistent-bg/nfs/x")) == "WAL"
    for forced in ("TRUNCATE", "PERSIST"):
        monkeypatch.setenv("BULKGETTY_JOURNAL_MODE", forced)
        assert journal_mode_for(Path("/home/x")) == forced
    monkeypatch.setenv("BULKGETTY_JOURNAL_MODE", "MEMORY")  # not durable: ignored
    assert journal_mode_for(Path("/nonexistent-bg/nfs/x")) == "DELETE"


def test_journal_uses_the_rollback_journal_when_told_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BULKGETTY_JOURNAL_MODE", "DELETE")
    j = Journal(tmp_path)
    try:
        assert j.journal_mode == "DELETE"
        assert j._db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "delete"
    finally:
        j.close()


# ------------------------------------------------------------------ AsyncJournal failures


def _sqlite_error(code: int, message: str = "database or disk is full") -> sqlite3.OperationalError:
    """An OperationalError as sqlite3 raises it, with its extended error code."""
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code  # type: ignore[misc]
    return error


@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
async def test_async_journal_reports_a_full_disk_as_disk_full(tmp_path: Path, inline: bool) -> None:
    """SQLITE_FULL becomes DiskFullError (the run stops); another sqlite error stays itself."""
    aj = await AsyncJournal.open(tmp_path, inline=inline)

    def fail(code: int) -> None:
        raise _sqlite_error(code)

    try:
        with pytest.raises(DiskFullError) as info:
            await aj.call(fail, sqlite3.SQLITE_FULL)
        assert str(info.value) == f"cannot write the journal in {aj.journal.state_dir}: disk full"
        with pytest.raises(sqlite3.OperationalError) as other:
            await aj.call(fail, sqlite3.SQLITE_IOERR)
        assert not isinstance(other.value, DiskFullError)
        assert await aj.call(aj.journal.begin_run, "m") == 1  # still usable
    finally:
        await aj.close()


async def test_an_error_that_escapes_a_group_fails_its_calls_and_the_thread_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, an exception outside the group's own handling ended the journal thread: its
    callers and every later one waited forever (a run that hangs after it spent)."""
    aj = await AsyncJournal.open(tmp_path)
    run = await aj.call(aj.journal.begin_run, "m")
    batch = assets(2)
    await aj.call(aj.journal.upsert, batch, run)

    def escapes() -> bool:
        raise KeyboardInterrupt("not an Exception: no handler of the group catches it")

    monkeypatch.setattr(aj.journal, "release_reserve", escapes)
    full = _sqlite_error(sqlite3.SQLITE_FULL)

    def record_full() -> None:
        raise full

    try:
        with pytest.raises(JournalError, match="journal thread failed"):
            await asyncio.wait_for(aj.call(record_full), 10)
        await asyncio.wait_for(aj.call(aj.journal.record_intent, batch[0].key), 10)
        rec = await aj.call(aj.journal.get, batch[0].key)
        assert rec is not None and rec.state is AssetState.INTENT  # the thread still serves
    finally:
        await aj.close()


async def test_async_journal_fails_every_call_of_a_group_whose_commit_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls that shared one commit share its failure: none of them is reported durable.
    A full disk says so; any other commit failure is a JournalError."""
    aj = await AsyncJournal.open(tmp_path)
    run = await aj.call(aj.journal.begin_run, "m")
    batch = assets(3)
    await aj.call(aj.journal.upsert, batch, run)
    real_group = aj.journal.group
    failure: list[BaseException] = []

    @contextlib.contextmanager
    def failing_group() -> Iterator[None]:
        with real_group():
            yield
            raise failure[0]

    monkeypatch.setattr(aj.journal, "group", failing_group)
    try:
        for error, expected in (
            (_sqlite_error(sqlite3.SQLITE_FULL), DiskFullError),
            (_sqlite_error(sqlite3.SQLITE_IOERR, "disk I/O error"), JournalError),
        ):
            failure[:] = [error]
            intents = [(aj.journal.record_intent, a.key) for a in batch[:2]]
            results = await _grouped(aj, intents)
            assert [type(r) for r in results] == [expected, expected]
            if expected is JournalError:
                assert str(results[0]) == "journal commit failed: disk I/O error"
        rec = await aj.call(aj.journal.get, batch[0].key)
        assert rec is not None and rec.state is AssetState.PENDING  # nothing was committed
    finally:
        monkeypatch.setattr(aj.journal, "group", real_group)
        await aj.close()


async def _grouped(
    aj: AsyncJournal, calls: list[tuple[Callable[[str], None], str]]
) -> list[BaseException]:
    """Run `calls` in one group (one commit): the journal thread is held busy until they are
    all queued. Returns the error each one raised."""
    started, gate = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        gate.wait(10)

    blocker = asyncio.ensure_future(aj.call(hold))
    assert await asyncio.to_thread(started.wait, 10)
    pending = [asyncio.ensure_future(aj.call(fn, key)) for fn, key in calls]
    await asyncio.sleep(0)  # every call is queued before the thread is let go
    gate.set()
    await blocker
    out: list[BaseException] = []
    for task in pending:
        with pytest.raises(BulkGettyError) as info:
            await task
        out.append(info.value)
    return out


# ------------------------------------------------------------------ private state, reserve


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_folder_and_files_are_the_owners_alone_whatever_the_umask(tmp_path: Path) -> None:
    """Delivery URIs are bearer credentials: 0700 folder, 0600 files, even under umask 000,
    and a folder or database an older version left readable is tightened."""
    old = os.umask(0)
    try:
        (tmp_path / STATE_DIR).mkdir(mode=0o755)
        (tmp_path / STATE_DIR / "journal.sqlite").touch(mode=0o644)
        j = Journal(tmp_path)
        j.close()
        fresh = Journal(tmp_path / "fresh")
        fresh.close()
    finally:
        os.umask(old)
    for out in (tmp_path, tmp_path / "fresh"):
        state = out / STATE_DIR
        assert _mode(state) == 0o700
        for name in ("journal.sqlite", "lock", "reserve"):
            assert _mode(state / name) == 0o600, name


def test_private_file_keeps_its_content_and_only_tightens(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"kept")
    path.chmod(0o640)
    private_file(path)
    assert (_mode(path), path.read_bytes()) == (0o600, b"kept")
    path.chmod(0o400)  # already private: left as it is
    private_file(path)
    assert _mode(path) == 0o400
    private_state_dir(tmp_path / "a" / "b")
    assert _mode(tmp_path / "a" / "b") == 0o700


def test_the_journal_keeps_a_reserve_and_gives_it_back_once(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    reserve = tmp_path / STATE_DIR / "reserve"
    try:
        assert reserve.stat().st_size == RESERVE_BYTES
        assert j.release_reserve() is True
        assert not reserve.exists()
        assert j.release_reserve() is False  # nothing left to give
    finally:
        j.close()
    reserve.write_bytes(b"")  # an empty reserve (a disk that was full) is refilled
    j = Journal(tmp_path)
    try:
        assert reserve.stat().st_size == RESERVE_BYTES
        reserve.write_bytes(b"")
        assert j.release_reserve() is False  # an empty reserve frees nothing
    finally:
        j.close()


def test_no_room_for_the_reserve_leaves_none_and_the_journal_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, offset: int, length: int) -> None:
        os.write(fd, b"x" * 10)  # a half reserve...
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    j = Journal(tmp_path)
    try:
        assert (tmp_path / STATE_DIR / "reserve").stat().st_size == 0  # ...is not kept
        assert j.begin_run("m") == 1
    finally:
        j.close()


@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
async def test_a_full_disk_commit_is_retried_once_the_reserve_is_given_back(
    tmp_path: Path,
    inline: bool,
) -> None:
    """The commit of a paid URI fails on a full disk: the reserve is released and the same
    call commits; a second full disk has no reserve left and reports disk full."""
    aj = await AsyncJournal.open(tmp_path, inline=inline)
    full = [_sqlite_error(sqlite3.SQLITE_FULL)]
    run = await aj.call(aj.journal.begin_run, "m")
    [a] = await aj.call(aj.journal.upsert, [Asset("1")], run)

    def acquire_on_a_full_disk() -> None:
        if full:
            raise full.pop()
        aj.journal.record_acquired(a.key, "http://d/1", 1.0)

    try:
        await aj.call(acquire_on_a_full_disk)
        rec = await aj.call(aj.journal.get, a.key)
        assert rec is not None and rec.state is AssetState.ACQUIRED
        assert not (tmp_path / STATE_DIR / "reserve").exists()
        full.append(_sqlite_error(sqlite3.SQLITE_FULL))
        with pytest.raises(DiskFullError):
            await aj.call(acquire_on_a_full_disk)
    finally:
        await aj.close()


# ------------------------------------------------------------------ AsyncJournal lifecycle


@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
async def test_async_journal_refuses_calls_once_closed(tmp_path: Path, inline: bool) -> None:
    aj = await AsyncJournal.open(tmp_path, inline=inline)
    await aj.close()
    with pytest.raises(JournalError, match=r"^the journal is closed$"):
        await aj.call(aj.journal.begin_run, "m")


async def test_async_journal_thread_is_named_and_never_keeps_the_process_alive(
    tmp_path: Path,
) -> None:
    aj = await AsyncJournal.open(tmp_path)
    try:
        [thread] = [t for t in threading.enumerate() if t.name == "bulkgetty-journal"]
        assert thread.daemon
    finally:
        await aj.close()


async def test_an_inline_journal_commits_on_the_loop_thread_and_starts_no_thread(
    tmp_path: Path,
) -> None:
    """On a memory filesystem the journal has no thread: a call has committed (another
    connection reads it) by the time it returns, on the event loop's own thread."""
    before = {t.name for t in threading.enumerate()}
    aj = await AsyncJournal.open(tmp_path, inline=True)
    try:
        callers: list[str] = []

        def intent(key: str) -> None:
            callers.append(threading.current_thread().name)
            aj.journal.record_intent(key)

        run = await aj.call(aj.journal.begin_run, "m")
        [a] = await aj.call(aj.journal.upsert, [Asset("1")], run)
        await aj.call(intent, a.key)
        assert callers == [threading.current_thread().name]
        reader = Journal(tmp_path, lock=False, read_only=True)
        try:
            rec = reader.get(a.key)
            assert rec is not None and rec.state is AssetState.INTENT
        finally:
            reader.close()
        assert {t.name for t in threading.enumerate()} <= before
    finally:
        await aj.close()
    with pytest.raises(JournalError, match=r"^the journal is closed$"):
        await aj.call(aj.journal.begin_run, "m")


@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
async def test_async_journal_passes_keyword_arguments(tmp_path: Path, inline: bool) -> None:
    aj = await AsyncJournal.open(tmp_path, inline=inline)
    try:
        run = await aj.call(aj.journal.begin_run, "m")
        [a] = await aj.call(aj.journal.upsert, [Asset("1")], run)
        await aj.call(aj.journal.record_done, a.key, path="1.jpg", size=3, sha256="0" * 64)
        rec = await aj.call(aj.journal.get, a.key)
        assert rec is not None and (rec.path, rec.bytes) == ("1.jpg", 3)
    finally:
        await aj.close()


async def test_async_journal_close_runs_alone_after_the_calls_queued_before_it(
    tmp_path: Path,
) -> None:
    """Closing the database inside a group transaction would fail the group's commit (and
    the calls in it): close() waits for the calls queued before it and then runs on its own."""
    aj = await AsyncJournal.open(tmp_path)
    run = await aj.call(aj.journal.begin_run, "m")
    [a] = await aj.call(aj.journal.upsert, [Asset("1")], run)
    started, gate = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        gate.wait(10)

    blocker = asyncio.ensure_future(aj.call(hold))
    assert await asyncio.to_thread(started.wait, 10)
    intent = asyncio.ensure_future(aj.call(aj.journal.record_intent, a.key))
    closing = asyncio.ensure_future(aj.close())
    await asyncio.sleep(0)  # close() queues its call
    gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, intent, closing), 10)
    j = Journal(tmp_path)
    try:
        rec = j.get(a.key)
        assert rec is not None and rec.state is AssetState.INTENT
    finally:
        j.close()


async def test_async_journal_futures_are_retrieved_without_asyncio_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every call's future is retrieved by a callback: no "exception in callback" and no
    "never retrieved" noise, even for a failure whose caller is gone."""
    aj = await AsyncJournal.open(tmp_path)
    gate = threading.Event()

    def fail_later() -> None:
        gate.wait(10)
        raise JournalError("late")

    try:
        with caplog.at_level("ERROR", logger="asyncio"):
            assert await aj.call(aj.journal.begin_run, "m") == 1
            task = asyncio.ensure_future(aj.call(fail_later))
            await asyncio.sleep(0.01)
            task.cancel()
            gate.set()
            assert await aj.call(aj.journal.begin_run, "m") == 2  # after fail_later ran
            await asyncio.sleep(0)
            del task
            gc.collect()  # an unretrieved failure is reported when its future is collected
    finally:
        gate.set()
        await aj.close()
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
async def test_staged_refusals_are_written_by_flush(tmp_path: Path, inline: bool) -> None:
    aj = await AsyncJournal.open(tmp_path, inline=inline)
    try:
        run = await aj.call(aj.journal.begin_run, "m")
        a, b = await aj.call(aj.journal.upsert, assets(2), run)
        aj.stage_waiting(a.key, "cap reached")
        aj.drop_progress(b.key)  # nothing staged for it: no error
        await aj.flush()
        rec = await aj.call(aj.journal.get, a.key)
        assert rec is not None and (rec.state, rec.error) == (
            AssetState.WAITING_FOR_QUOTA,
            "cap reached",
        )
    finally:
        await aj.close()


def test_get_of_an_unknown_key_is_none(journal: Journal) -> None:
    assert journal.get("image/unknown") is None


def test_any_reserve_left_counts_as_given_back(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    try:
        (tmp_path / STATE_DIR / "reserve").write_bytes(b"x")
        assert j.release_reserve() is True
    finally:
        j.close()


async def test_a_group_carries_at_most_group_limit_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst bigger than GROUP_LIMIT is split: the first caller waits for one bounded
    commit, not for the whole burst."""
    aj = await AsyncJournal.open(tmp_path)
    groups: list[int] = []
    real_group = aj.journal.group

    @contextlib.contextmanager
    def counting_group() -> Iterator[None]:
        groups.append(0)
        with real_group():
            yield

    def member() -> None:
        groups[-1] += 1

    monkeypatch.setattr(aj.journal, "group", counting_group)
    started, gate = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        gate.wait(10)

    try:
        blocker = asyncio.ensure_future(aj.call(hold))
        assert await asyncio.to_thread(started.wait, 10)
        burst = [asyncio.ensure_future(aj.call(member)) for _ in range(GROUP_LIMIT + 3)]
        await asyncio.sleep(0)  # every call is queued before the thread is let go
        gate.set()
        await asyncio.wait_for(asyncio.gather(blocker, *burst), 20)
        assert groups == [GROUP_LIMIT, 3]
    finally:
        gate.set()
        monkeypatch.setattr(aj.journal, "group", real_group)
        await aj.close()


@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
async def test_a_failure_other_than_a_full_disk_keeps_the_reserve(
    tmp_path: Path, inline: bool
) -> None:
    aj = await AsyncJournal.open(tmp_path, inline=inline)
    calls = 0

    def broken() -> None:
        nonlocal calls
        calls += 1
        raise JournalError("inconsistent")

    try:
        with pytest.raises(JournalError):
            await aj.call(broken)
        assert calls == 1
        assert (tmp_path / STATE_DIR / "reserve").stat().st_size == RESERVE_BYTES
    finally:
        await aj.close()


def test_update_of_unknown_asset_names_it(journal: Journal) -> None:
    with pytest.raises(JournalError, match=r"^journal has no asset 'image/nope'$"):
        journal.record_failed("image/nope", "x")


def test_closing_twice_is_harmless_and_marks_the_journal_closed(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.close()
    assert j.closed
    j.close()


def test_a_lock_holder_that_wrote_no_pid_is_named_unknown(tmp_path: Path) -> None:
    """Refused all the same, naming the holder "unknown" (e.g. a holder killed mid-write)."""
    (tmp_path / STATE_DIR).mkdir()
    fd = os.open(tmp_path / STATE_DIR / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(JournalError, match=r"another bulkgetty run \(pid unknown\)"):
            Journal(tmp_path)
    finally:
        os.close(fd)
