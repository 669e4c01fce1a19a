"""Money faults at the edges: stops with POSTs on the wire, slow rates, clocks, caps, tokens.

Each row is a way a paid download could be lost or bought twice in an ordinary situation
(issue 12): Ctrl-C or SIGTERM while purchases are answering, a full disk while they are,
a settle time eaten by a slow rate limiter, history dates without a time zone on a machine
east of UTC, a shard cap after a crash left an intent, tokens that expire in a queue, and
state files that other local users could read.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from bulkgetty.sandbox import Faults, SandboxConfig, SandboxThread
from tests.faults.conftest import Matrix, audit
from tests.faults.test_disk import tmpfs  # noqa: F401 - the fixture
from tests.harness import clean_env, cli, report, start_cli, write_ids


def _wait_for_spends(sb: SandboxThread, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while sum(sb.spends_by_asset().values()) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sum(sb.spends_by_asset().values()) >= n, "the purchases never reached the sandbox"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_with_purchases_in_flight_waits_for_their_uris_and_never_pays_twice(
    tmp_path: Path, matrix: Matrix, sig: signal.Signals
) -> None:
    """Three POSTs are charged and still answering when the signal comes: the run says it is
    finishing them, commits their URIs, exits 130; the rerun downloads all without a spend."""
    ids = [str(9_910_000 + i) for i in range(6)]
    hang = dict.fromkeys(ids[:3], 2.0)
    config = SandboxConfig(faults=Faults(post_hang=hang), delivery_latency=0.2)
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        args = ("run", str(manifest), "--out", str(out), "--concurrency", "3")
        proc = start_cli(*args, env=env)
        _wait_for_spends(sb, 3)
        time.sleep(0.3)
        proc.send_signal(sig)
        stopped = proc.communicate(timeout=30)
        assert proc.returncode == 130, stopped[1]
        assert "finishing 3 purchases in flight" in stopped[1]
        assert "Traceback" not in stopped[1]
        spent_at_stop = sum(sb.spends_by_asset().values())
        assert spent_at_stop == 3, "the stop started a new purchase"
        done = cli(*args, env=env)
        assert done.returncode == 0, done.stderr
        result = audit(sb, out, ids, [stopped, done], fault=f"{sig.name} with 3 POSTs in flight")
        matrix.check(result, note="URIs committed after the signal; rerun spends 3, not 6")


def test_disk_full_with_purchases_in_flight_keeps_their_uris(
    tmp_path: Path,
    tmpfs: Path,  # noqa: F811 - the fixture
    matrix: Matrix,
) -> None:
    """A file fills the disk while two POSTs are answering: the run stops (exit 1, naming the
    disk), yet both URIs are committed in the journal's reserve; after space is freed the
    rerun downloads everything with no further spend."""
    big, slow = "9920000", ["9920001", "9920002"]
    ids = [big, *slow]
    config = SandboxConfig(
        sizes={big: 2_000_000, **dict.fromkeys(slow, 50_000)},
        faults=Faults(post_hang=dict.fromkeys(slow, 2.0)),
    )
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmpfs / "o"
        args = ("run", str(manifest), "--out", str(out), "--concurrency", "3")
        full = cli(*args, env=env)
        assert full.returncode == 1, full.stdout + full.stderr
        assert "disk full" in full.stderr and "Traceback" not in full.stderr
        assert sum(sb.spends_by_asset().values()) == 3
        subprocess.run(["mount", "-o", "remount,size=8m", str(tmpfs)], check=True)
        done = cli(*args, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        result = audit(sb, out, ids, [full, done], fault="disk full with 2 POSTs in flight")
        matrix.check(result, note="both URIs committed from the journal's reserve")


def test_settle_time_counts_from_the_answer_under_a_slow_rate(
    tmp_path: Path, matrix: Matrix
) -> None:
    """At 0.5 queries/s a POST waits ~2 s for its slot; the history shows spends 3 s late.
    With a 4 s settle counted from the intent the history was read too early and the asset
    bought again; counted from the 503, the spend is found and nothing is repeated."""
    hit = "9930001"
    faults = Faults(post_status={hit: (503, 1, True)})
    with SandboxThread(SandboxConfig(faults=faults, history_lag=3.0)) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", [hit])
        out = tmp_path / "o"
        args = ("--api-rate", "0.5", "--history-settle", "4")
        done = cli("run", str(manifest), "--out", str(out), *args, env=env)
        assert done.returncode == 1, done.stderr
        assert sb.stats.post_requests[f"image/{hit}"] == 1, "an in-doubt POST was repeated"
        row = report(out)[0]
        assert "--reacquire-expired" in row["error"], row
        result = audit(
            sb, out, [hit], [done], fault="settle under 0.5 q/s, history 3 s behind", on_disk=[]
        )
        matrix.check(result, note="1 POST, found in the history after the settle time")


def test_naive_history_dates_are_utc_east_of_utc(tmp_path: Path, matrix: Matrix) -> None:
    """Under TZ=Asia/Tokyo a history date without a zone read as local time is 9 h too old:
    the charged in-doubt POST looked unspent and was bought again. Read as UTC, it is found."""
    hit = "9940001"
    faults = Faults(post_status={hit: (503, 1, True)})
    config = SandboxConfig(faults=faults, history_naive_dates=True)
    with SandboxThread(config) as sb:
        env = clean_env({**sb.credentials_env(), "TZ": "Asia/Tokyo"})
        manifest = write_ids(tmp_path / "ids.txt", [hit, "9940002"])
        out = tmp_path / "o"
        done = cli("run", str(manifest), "--out", str(out), env=env)
        assert done.returncode == 1, done.stderr
        assert sb.stats.post_requests[f"image/{hit}"] == 1, "an in-doubt POST was repeated"
        result = audit(
            sb,
            out,
            [hit, "9940002"],
            [done],
            fault="naive history dates, TZ=Asia/Tokyo",
            on_disk=["9940002"],
        )
        matrix.check(result, note="the spend is found: never bought twice")


def test_shard_cap_counts_an_intent_left_by_a_crash(tmp_path: Path, matrix: Matrix) -> None:
    """kill -9 while a charged POST is answering leaves an intent; the shard's cap over all
    runs (2) counts it until the history resolves it, so the rerun spends 1 more, not 2."""
    hung, rest = "9950000", [str(9_950_001 + i) for i in range(3)]
    ids = [hung, *rest]
    faults = Faults(post_hang={hung: 20.0})
    with SandboxThread(SandboxConfig(faults=faults)) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        args = ("run", str(manifest), "--out", str(out), "--shard", "0/1")
        first = start_cli(*args, "--max-downloads", "2", "--concurrency", "1", env=env)
        _wait_for_spends(sb, 1)
        first.kill()
        crashed = first.communicate(timeout=30)
        second = cli(*args, "--max-downloads", "2", env=env)
        assert second.returncode in (1, 3), second.stderr
        total = sum(sb.spends_by_asset().values())
        assert total == 2, f"cap 2 over all runs, {total} spent"
        rows = {r["id"]: r for r in report(out)}
        assert "--reacquire-expired" in rows[hung]["error"]
        on_disk = [i for i in rest if rows[i]["status"] == "downloaded"]
        assert len(on_disk) == 1
        result = audit(
            sb,
            out,
            ids,
            [crashed, second],
            fault="shard cap after a crash left an intent",
            on_disk=on_disk,
            spends_expected=2,
        )
        matrix.check(result, note="cap 2: the crashed intent counted, 1 more bought")


def test_two_second_tokens_with_queued_calls_do_not_stop_the_run(
    tmp_path: Path, matrix: Matrix
) -> None:
    """2 s tokens, 0.3 s per API call served one at a time, and 8 workers queued at 3 q/s
    (up to ~2.7 s in the limiter): a token taken before that wait was stale when sent, and
    its second 401 stopped the run. Taken after the wait (and a 401 on a token that may have
    expired in transit answered with a refresh), every asset is bought once."""
    ids = [str(9_960_000 + i) for i in range(16)]
    config = SandboxConfig(expires_in=2, api_latency=0.3, api_serial=True)
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        args = ("--concurrency", "8", "--api-rate", "3")
        done = cli("run", str(manifest), "--out", str(out), *args, env=env)
        assert done.returncode == 0, done.stderr
        result = audit(sb, out, ids, [done], fault="2 s tokens, API calls queued")
        matrix.check(result, note=f"{sb.stats.token_requests} token requests")


def test_state_files_are_the_owners_alone_under_umask_022(tmp_path: Path, matrix: Matrix) -> None:
    """The journal holds delivery URIs (bearer credentials for 24 h): DIR/.bulkgetty is 0700
    and its files 0600 whatever the umask; the media keep the umask's 0644."""
    ids = [str(9_970_000 + i) for i in range(3)]
    with SandboxThread(SandboxConfig()) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        old = os.umask(0o022)
        try:
            done = cli("run", str(manifest), "--out", str(out), env=env)
        finally:
            os.umask(old)
        assert done.returncode == 0, done.stderr
        state = out / ".bulkgetty"
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        loose = {
            p.name: oct(stat.S_IMODE(p.stat().st_mode))
            for p in state.iterdir()
            if stat.S_IMODE(p.stat().st_mode) & 0o077
        }
        assert loose == {}, f"readable by others: {loose}"
        media = [p for p in out.iterdir() if p.is_file()]
        assert media and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in media)
        result = audit(sb, out, ids, [done], fault="state files under umask 022")
        matrix.check(result, note="state folder 0700, its files 0600, media 0644")


def test_a_history_manifest_run_into_a_new_folder_says_what_it_spends_again(
    tmp_path: Path, matrix: Matrix
) -> None:
    """`history --out h.csv` then `run h.csv --out NEW` buys every asset again (each POST
    spends): `plan` counts them as licensed before, and `run` says so before spending."""
    ids = [str(9_980_000 + i) for i in range(4)]
    with SandboxThread(SandboxConfig()) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        first = cli("run", str(manifest), "--out", str(tmp_path / "a"), env=env)
        assert first.returncode == 0, first.stderr
        assert "licensed before" not in first.stderr
        hist = tmp_path / "h.csv"
        assert cli("history", "--out", str(hist), env=env).returncode == 0
        planned = cli("plan", str(hist), "--out", str(tmp_path / "new"), "--json", env=env)
        assert planned.returncode == 0, planned.stderr
        assert '"licensed_before":4' in planned.stdout.replace(" ", "")
        assert "4 assets of this manifest were licensed before" in planned.stderr
        again = cli("run", str(hist), "--out", str(tmp_path / "new"), env=env)
        assert again.returncode == 0, again.stderr
        assert "4 assets of this manifest were licensed before" in again.stderr
        assert "spends 4 more downloads" in again.stderr
        rerun = cli("run", str(hist), "--out", str(tmp_path / "new"), env=env)
        assert "licensed before" not in rerun.stderr  # nothing left to buy: nothing asked
        result = audit(
            sb,
            tmp_path / "new",
            ids,
            [first, again, rerun],
            fault="history manifest run into a new folder",
            spends_expected=8,
            rebought=ids,
        )
        matrix.check(result, note="said before spending: 4 licensed before, 4 more spends")
