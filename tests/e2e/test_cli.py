"""End to end: the real CLI as a subprocess against the sandbox over loopback sockets.

The user's paths; the faults live in tests/faults (the fault matrix). Every test checks the
outcome from outside: files and their sha256 against the sandbox's,
the report, the exit code, and the sandbox's spend ledger (spends == unique assets, exactly).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulkgetty.sandbox import Faults, SandboxConfig, SandboxThread
from tests.harness import (
    assert_files_match,
    assert_spent_once,
    clean_env,
    cli,
    command,
    grant_env,
    journaled_bytes,
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


@pytest.mark.parametrize(
    "grant", ["password", "client_credentials", "refresh_token", "access_token"]
)
def test_every_grant_downloads_with_one_token_request_at_most(
    sandbox: SandboxThread, tmp_path: Path, grant: str
) -> None:
    env = clean_env(grant_env(sandbox, grant))
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
            if parts and parts[0].stat().st_size > size // 3 and journaled_bytes(out) > 0:
                part = parts[0]  # bytes on disk, and the journal has claimed some of them
                break
            time.sleep(0.05)
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
