"""End to end: the real CLI as a subprocess against the sandbox over loopback sockets.

Every test checks the outcome from outside: files and their sha256 against the sandbox's,
the report, the exit code, and the sandbox's spend ledger (spends == unique assets, exactly).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bulkgetty.sandbox import Faults, Product, SandboxConfig, SandboxThread
from tests.harness import (
    assert_files_match,
    assert_spent_once,
    clean_env,
    cli,
    command,
    report,
    start_cli,
    write_ids,
)


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    with SandboxThread(SandboxConfig(image_bytes=(20_000, 120_000))) as sb:
        yield sb


def test_quick_start_command_downloads_sample_and_rerun_is_already_done(tmp_path: Path) -> None:
    """The README's first command works as written, and running it again spends nothing."""
    out = tmp_path / "downloads"
    first = cli("run", "manifests/sample.csv", "--out", str(out), "--sandbox", env=clean_env())
    assert first.returncode == 0, first.stderr
    rows = report(out)
    assert len(rows) == 11  # 12 rows, one exact duplicate
    assert {r["status"] for r in rows} == {"downloaded"}
    assert "11 downloads spent" in first.stdout
    again = cli("run", "manifests/sample.csv", "--out", str(out), "--sandbox", env=clean_env())
    assert again.returncode == 0, again.stderr
    assert {r["status"] for r in report(out)} == {"already_done"}
    assert "0 downloads spent" in again.stdout


def test_files_hash_to_the_sandbox_and_each_asset_is_bought_once(
    sandbox: SandboxThread, tmp_path: Path
) -> None:
    ids = [str(1_000_000 + i) for i in range(40)]
    manifest = write_ids(tmp_path / "ids.txt", [*ids, ids[0], ids[5]])
    out = tmp_path / "out"
    done = cli("run", str(manifest), "--out", str(out), env=clean_env(sandbox.credentials_env()))
    assert done.returncode == 0, done.stderr
    rows = report(out)
    assert len(rows) == 40
    assert_files_match(sandbox, out, rows)
    assert_spent_once(sandbox, ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.txt", "out"]


def test_rerun_of_finished_folder_sends_no_request(sandbox: SandboxThread, tmp_path: Path) -> None:
    manifest = write_ids(tmp_path / "ids.txt", [str(2_000_000 + i) for i in range(10)])
    env = clean_env(sandbox.credentials_env())
    assert cli("run", str(manifest), "--out", str(tmp_path / "o"), env=env).returncode == 0
    api, delivery = sandbox.stats.api_requests, len(sandbox.stats.delivery_requests)
    tokens = sandbox.stats.token_requests
    again = cli("run", str(manifest), "--out", str(tmp_path / "o"), env=env)
    assert again.returncode == 0
    assert {r["status"] for r in report(tmp_path / "o")} == {"already_done"}
    stats = sandbox.stats
    assert (stats.api_requests, len(stats.delivery_requests), stats.token_requests) == (
        api,
        delivery,
        tokens,
    )


def test_quota_reached_at_k_of_n_waits_then_rerun_after_reset_finishes(tmp_path: Path) -> None:
    """403 OverageLimitReached: exactly K spent, the rest wait (exit 3), none bought twice."""
    config = SandboxConfig(products=(Product(1001, "premiumaccess", 13),))
    ids = [str(3_000_000 + i) for i in range(20)]
    manifest = write_ids(tmp_path / "ids.txt", ids)
    out = tmp_path / "out"
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        first = cli("run", str(manifest), "--out", str(out), "--concurrency", "4", env=env)
        assert first.returncode == 3, first.stderr
        statuses = [r["status"] for r in report(out)]
        assert statuses.count("downloaded") == 13
        assert statuses.count("waiting_for_quota") == 7
        assert sum(sb.spends_by_asset().values()) == 13
        sb.reset_quota()
        second = cli("run", str(manifest), "--out", str(out), env=env)
        assert second.returncode == 0, second.stderr
        assert_spent_once(sb, ids)
        assert_files_match(sb, out, report(out))


def test_max_downloads_is_a_hard_cap_at_any_concurrency(
    sandbox: SandboxThread, tmp_path: Path
) -> None:
    ids = [str(4_000_000 + i) for i in range(30)]
    manifest = write_ids(tmp_path / "ids.txt", ids)
    env = clean_env(sandbox.credentials_env())
    args = ("run", str(manifest), "--out", str(tmp_path / "o"), "--concurrency", "16")
    capped = cli(*args, "--max-downloads", "5", env=env)
    assert capped.returncode == 3
    assert sum(sandbox.spends_by_asset().values()) == 5
    rest = cli(*args, env=env)
    assert rest.returncode == 0
    assert_spent_once(sandbox, ids)


def test_auto_download_303_flow(sandbox: SandboxThread, tmp_path: Path) -> None:
    ids = [str(5_000_000 + i) for i in range(5)]
    manifest = write_ids(tmp_path / "ids.txt", ids)
    env = clean_env(sandbox.credentials_env())
    done = cli("run", str(manifest), "--out", str(tmp_path / "o"), "--auto-download", env=env)
    assert done.returncode == 0, done.stderr
    assert_files_match(sandbox, tmp_path / "o", report(tmp_path / "o"))
    assert_spent_once(sandbox, ids)


def _grant_env(sb: SandboxThread, grant: str) -> dict[str, str]:
    env = sb.credentials_env()
    if grant == "client_credentials":
        del env["GETTY_USERNAME"], env["GETTY_PASSWORD"]
    elif grant in ("refresh_token", "access_token"):
        token = _password_token(sb)
        del env["GETTY_USERNAME"], env["GETTY_PASSWORD"]
        key = "GETTY_REFRESH_TOKEN" if grant == "refresh_token" else "GETTY_ACCESS_TOKEN"
        env[key] = token[grant]
    return env


def _password_token(sb: SandboxThread) -> dict[str, Any]:
    import urllib.parse
    import urllib.request

    form = urllib.parse.urlencode(
        {
            "grant_type": "password",
            "client_id": sb.config.api_key,
            "client_secret": sb.config.api_secret,
            "username": sb.config.username,
            "password": sb.config.password,
        }
    ).encode()
    with urllib.request.urlopen(f"{sb.api_url}/oauth2/token", data=form, timeout=10) as resp:
        return dict(json.loads(resp.read()))


@pytest.mark.parametrize(
    "grant", ["password", "client_credentials", "refresh_token", "access_token"]
)
def test_every_grant_downloads_with_one_token_request_at_most(
    sandbox: SandboxThread, tmp_path: Path, grant: str
) -> None:
    env = clean_env(_grant_env(sandbox, grant))
    before = sandbox.stats.token_requests
    manifest = write_ids(tmp_path / "ids.txt", [str(6_000_000 + i) for i in range(6)])
    done = cli("run", str(manifest), "--out", str(tmp_path / "o"), "--concurrency", "6", env=env)
    assert done.returncode == 0, done.stderr
    used = sandbox.stats.token_requests - before
    assert used == (0 if grant == "access_token" else 1)
    outputs = done.stdout + done.stderr + (tmp_path / "o/.bulkgetty/report.jsonl").read_text()
    journal = (tmp_path / "o/.bulkgetty/journal.sqlite").read_bytes()
    for name in ("GETTY_API_SECRET", "GETTY_PASSWORD", "GETTY_REFRESH_TOKEN", "GETTY_ACCESS_TOKEN"):
        if name in env:
            assert env[name] not in outputs
            assert env[name].encode() not in journal


def test_refused_credentials_exit_2_naming_the_problem_and_not_the_secret(
    sandbox: SandboxThread, tmp_path: Path
) -> None:
    env = clean_env({**sandbox.credentials_env(), "GETTY_PASSWORD": "wrong-password-xyz"})
    manifest = write_ids(tmp_path / "ids.txt", ["7000001"])
    failed = cli("run", str(manifest), "--out", str(tmp_path / "o"), env=env)
    assert failed.returncode == 2
    assert "credentials" in failed.stderr
    assert "wrong-password-xyz" not in failed.stderr + failed.stdout
    assert "Traceback" not in failed.stderr
    assert sandbox.spends_by_asset() == {}


def test_missing_api_key_exits_2(tmp_path: Path) -> None:
    manifest = write_ids(tmp_path / "ids.txt", ["7000002"])
    failed = cli("run", str(manifest), "--out", str(tmp_path / "o"), env=clean_env())
    assert failed.returncode == 2
    assert "GETTY_API_KEY" in failed.stderr


def test_bad_manifest_names_every_bad_row_and_spends_nothing(
    sandbox: SandboxThread, tmp_path: Path
) -> None:
    manifest = tmp_path / "bad.csv"
    manifest.write_text("id,height\n123,100\nbad id,100\n456,tall\n789,\n")
    failed = cli(
        "run", str(manifest), "--out", str(tmp_path / "o"), env=clean_env(sandbox.credentials_env())
    )
    assert failed.returncode == 2
    assert f"{manifest}:3:" in failed.stderr
    assert f"{manifest}:4:" in failed.stderr
    assert sandbox.stats.api_requests == 0
    assert sandbox.stats.token_requests == 0


def test_unknown_extension_and_missing_manifest_exit_2(tmp_path: Path) -> None:
    env = clean_env({"GETTY_API_KEY": "k", "GETTY_API_SECRET": "s"})
    (tmp_path / "m.xlsx").write_text("id\n1\n")
    assert (
        cli("run", str(tmp_path / "m.xlsx"), "--out", str(tmp_path / "o"), env=env).returncode == 2
    )
    assert (
        cli("run", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o"), env=env).returncode
        == 2
    )


def test_delivery_never_sees_getty_headers_and_no_secret_in_any_output(tmp_path: Path) -> None:
    """Even across redirect hops between origins, including one to the API host's name."""
    ids = [str(8_000_000 + i) for i in range(6)]
    with SandboxThread() as sb:
        delivery_port = sb.delivery_urls[1].rsplit(":", 1)[1]
        sb.configure(
            faults=Faults(
                redirects={ids[0]: (301, 302, 303, 307, 308), ids[1]: (307,)},
                redirect_to={ids[2]: f"http://localhost:{delivery_port}{{path}}"},
            )
        )
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "out"
        done = cli("run", str(manifest), "--out", str(out), "--json", env=env)
        assert done.returncode == 0, done.stderr
        assert_files_match(sb, out, report(out))
        assert_spent_once(sb, ids)
        requests = sb.stats.delivery_requests
        assert len(requests) >= len(ids) + 6
        for req in requests:
            names = {h.lower() for h in req.headers}
            assert not names & {"api-key", "authorization", "cookie"}, req
        secrets = [sb.config.api_secret, sb.config.password]
        journal = (out / ".bulkgetty" / "journal.sqlite").read_bytes()
        texts = [done.stdout, done.stderr, (out / ".bulkgetty" / "report.jsonl").read_text()]
        for secret in secrets:
            assert all(secret not in t for t in texts)
            assert secret.encode() not in journal
        for line in done.stdout.splitlines():
            json.loads(line)  # --json: every stdout line is one JSON object


def test_hostile_names_stay_inside_the_folder_and_never_overwrite(tmp_path: Path) -> None:
    hostile = {
        "9000001": "attachment; filename=../../escape.jpg",
        "9000002": "attachment; filename=/etc/passwd",
        "9000003": 'attachment; filename="a\\\\..\\\\b.jpg"',
        "9000004": "attachment; filename=CON.jpg",
        "9000005": "attachment; filename=" + "x" * 400 + ".jpg",
        "9000006": "attachment; filename*=UTF-8''%E2%82%AC%20rates.jpg",
        "9000007": "attachment; filename=same.jpg",
        "9000008": "attachment; filename=same.jpg",
        "9000009": "attachment; filename=.bulkgetty",
    }
    with SandboxThread(SandboxConfig(faults=Faults(disposition=hostile))) as sb:
        out = tmp_path / "out"
        manifest = write_ids(tmp_path / "ids.txt", list(hostile))
        done = cli("run", str(manifest), "--out", str(out), env=clean_env(sb.credentials_env()))
        assert done.returncode == 0, done.stderr
        rows = report(out)
        assert_files_match(sb, out, rows)
        names = [Path(r["path"]).name for r in rows]
        assert len(set(names)) == len(names) == len(hostile)
        assert all(len(n.encode()) <= 255 and "/" not in n and "\\" not in n for n in names)
        assert "€ rates.jpg" in names
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.txt", "out"]
        assert (out / ".bulkgetty").is_dir()


def test_429_storm_is_answered_by_slowing_down_not_by_a_request_storm(tmp_path: Path) -> None:
    ids = [str(9_100_000 + i) for i in range(15)]
    with SandboxThread(SandboxConfig(qps=8)) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        args = ("--api-rate", "50", "--concurrency", "16")
        done = cli("run", str(manifest), "--out", str(tmp_path / "o"), *args, env=env)
        assert done.returncode == 0, done.stderr
        assert_spent_once(sb, ids)
        # Slowing down on the first 429s keeps refusals well below the useful requests.
        assert sb.stats.rejected_429 < sb.stats.api_requests


def test_token_expiring_mid_run_is_refreshed_not_per_call(tmp_path: Path) -> None:
    """1-second tokens over a ~3 s run: a few refreshes shared by all workers, a valid token on
    every POST (no 401 reaches the report), and not one token request per call."""
    ids = [str(9_200_000 + i) for i in range(16)]
    config = SandboxConfig(expires_in=1, delivery_latency=0.35)
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        args = ("--concurrency", "2", "--api-rate", "500")
        done = cli("run", str(manifest), "--out", str(tmp_path / "o"), *args, env=env)
        assert done.returncode == 0, done.stderr
        assert_spent_once(sb, ids)
        assert 2 <= sb.stats.token_requests < len(ids)


def test_in_doubt_post_is_resolved_through_history_never_blind_retried(tmp_path: Path) -> None:
    """A 503 after the charge: one spend, the asset fails naming --reacquire-expired; with the
    flag exactly one more spend finishes it. A 503 before the charge is simply retried."""
    faults = Faults(post_status={"9300001": (503, 1, True), "9300002": (503, 1, False)})
    with SandboxThread(SandboxConfig(faults=faults)) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ["9300001", "9300002", "9300003"])
        out = tmp_path / "o"
        first = cli("run", str(manifest), "--out", str(out), env=env)
        assert first.returncode == 1
        by_id = {r["id"]: r for r in report(out)}
        assert by_id["9300001"]["status"] == "failed"
        assert "--reacquire-expired" in by_id["9300001"]["error"]
        assert by_id["9300002"]["status"] == by_id["9300003"]["status"] == "downloaded"
        assert sb.spends_by_asset() == {"image/9300001": 1, "image/9300002": 1, "image/9300003": 1}
        again = cli("run", str(manifest), "--out", str(out), env=env)
        assert again.returncode == 1, "without the flag nothing more is spent"
        assert sb.spends_by_asset()["image/9300001"] == 1
        fixed = cli("run", str(manifest), "--out", str(out), "--reacquire-expired", env=env)
        assert fixed.returncode == 0, fixed.stderr
        assert sb.spends_by_asset()["image/9300001"] == 2
        assert_files_match(sb, out, report(out))


def test_expired_uri_fails_naming_the_flag_then_the_flag_buys_it_once(tmp_path: Path) -> None:
    with SandboxThread(SandboxConfig(faults=Faults(expired=frozenset({"9400001"})))) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ["9400001", "9400002"])
        out = tmp_path / "o"
        first = cli("run", str(manifest), "--out", str(out), env=env)
        assert first.returncode == 1
        failed = next(r for r in report(out) if r["id"] == "9400001")
        assert "--reacquire-expired" in failed["error"]
        assert sb.spends_by_asset()["image/9400001"] == 1
        sb.configure(faults=Faults())
        fixed = cli("run", str(manifest), "--out", str(out), "--reacquire-expired", env=env)
        assert fixed.returncode == 0, fixed.stderr
        assert sb.spends_by_asset()["image/9400001"] == 2
        assert sb.spends_by_asset()["image/9400002"] == 1


def test_second_run_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    ids = [str(9_500_000 + i) for i in range(8)]
    with SandboxThread(SandboxConfig(delivery_latency=0.5)) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        first = start_cli("run", str(manifest), "--out", str(out), "--concurrency", "1", env=env)
        try:
            deadline = time.monotonic() + 20
            while not (out / ".bulkgetty" / "lock").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            second = cli("run", str(manifest), "--out", str(out), env=env)
            assert second.returncode == 2
            assert "another bulkgetty run" in second.stderr
        finally:
            first.wait(timeout=60)
        assert first.returncode == 0
        assert_spent_once(sb, ids)


def test_sigint_stops_cleanly_and_rerun_resumes(tmp_path: Path) -> None:
    ids = [str(9_600_000 + i) for i in range(12)]
    with SandboxThread(SandboxConfig(delivery_latency=0.3, bandwidth=400_000)) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        proc = start_cli("run", str(manifest), "--out", str(out), "--concurrency", "3", env=env)
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert "run the same command again" in err
        done = cli("run", str(manifest), "--out", str(out), env=env)
        assert done.returncode == 0, done.stderr
        assert_spent_once(sb, ids)
        assert_files_match(sb, out, report(out))


def test_kill_9_at_random_points_never_spends_twice_nor_leaves_a_bad_file(tmp_path: Path) -> None:
    """Kill -9 at 10 random moments of one run, rerunning the same command after each.

    A kill can land between Getty charging a POST and our journal hearing the URI; such an
    asset is charged once and then fails naming --reacquire-expired. Nothing is ever charged
    twice, and every file on disk is whole.
    """
    rng = random.Random(20261125)
    ids = [str(9_700_000 + i) for i in range(60)]
    config = SandboxConfig(api_latency=0.02, delivery_latency=0.05, bandwidth=2_000_000)
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        args = ("run", str(manifest), "--out", str(out), "--concurrency", "8")
        for _ in range(10):
            proc = start_cli(*args, env=env)
            time.sleep(rng.uniform(0.3, 1.5))
            proc.kill()
            proc.wait(timeout=30)
            assert max(sb.spends_by_asset().values(), default=0) <= 1
        final = cli(*args, env=env)
        assert final.returncode in (0, 1), final.stderr
        rows = report(out)
        assert len(rows) == len(ids)
        assert_files_match(sb, out, rows)
        spends = sb.spends_by_asset()
        assert max(spends.values()) == 1
        for row in rows:
            if row["status"] != "already_done" and row["status"] != "downloaded":
                assert "--reacquire-expired" in row["error"], row
                assert spends[f"image/{row['id']}"] == 1
        assert sorted(spends) == sorted(f"image/{i}" for i in ids)


def test_large_video_resumes_after_kill_without_starting_over(tmp_path: Path) -> None:
    size = 24 * 2**20
    config = SandboxConfig(sizes={"9800001": size}, bandwidth=6 * 2**20)
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ["9800001"])
        out = tmp_path / "o"
        args = ("run", str(manifest), "--out", str(out), "--asset-type", "video", "--segments", "1")
        proc = start_cli(*args, env=env)
        deadline = time.monotonic() + 30
        part = None
        while time.monotonic() < deadline:
            parts = list(out.glob("*.part"))
            if parts and parts[0].stat().st_size > size // 3:
                part = parts[0]
                break
            time.sleep(0.05)
        time.sleep(0.6)  # let the journal record progress
        proc.kill()
        proc.wait(timeout=30)
        assert part is not None and part.exists()
        seen = len(sb.stats.delivery_requests)
        done = cli(*args, env=env)
        assert done.returncode == 0, done.stderr
        resumed = [r for r in sb.stats.delivery_requests[seen:] if "Range" in r.headers]
        assert resumed, "the rerun did not resume with a Range request"
        start = int(resumed[0].headers["Range"].split("=")[1].split("-")[0])
        assert start > size // 4
        assert_files_match(sb, out, report(out))
        assert sb.spends_by_asset() == {"video/9800001": 1}


def test_sandbox_command_prints_url_and_credentials_that_a_run_can_use(tmp_path: Path) -> None:
    """`bulkgetty sandbox` as its own process: what it prints is enough to run against it."""
    server = start_cli("sandbox", "--port", "0", env=clean_env())
    try:
        assert server.stdout is not None
        exports: dict[str, str] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "GETTY_PASSWORD" not in exports:
            line = server.stdout.readline()
            if line.strip().startswith("export "):
                name, _, value = line.strip()[len("export ") :].partition("=")
                exports[name] = value
        assert exports["GETTY_API_URL"].startswith("http://127.0.0.1:")
        manifest = write_ids(tmp_path / "ids.txt", ["9900001", "9900002"])
        done = cli("run", str(manifest), "--out", str(tmp_path / "o"), env=clean_env(exports))
        assert done.returncode == 0, done.stderr
        assert len(report(tmp_path / "o")) == 2
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=20)


def test_ids_from_stdin(sandbox: SandboxThread, tmp_path: Path) -> None:
    out = tmp_path / "o"
    done = subprocess.run(
        command(("run", "-", "--out", str(out))),
        input="9910001\n# a comment\n9910002\n9910001\n",
        env=clean_env(sandbox.credentials_env()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(r["id"] for r in report(out)) == ["9910001", "9910002"]
    assert_spent_once(sandbox, ["9910001", "9910002"])
