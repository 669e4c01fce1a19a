"""End to end: every command around a run, as a subprocess against the sandbox.

`plan` is checked against the sandbox's ledger (it must spend nothing), `history` then `run`
must fetch the same bytes again, the `--json` stream of a real run is validated line by line
against the schema in events.py, and the live progress is read off a real pseudo-terminal.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import json
import os
import pty
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import jsonschema
import pytest

import bulkgetty
from bulkgetty.cli.main import build_parser
from bulkgetty.events import EVENT_KINDS, EVENT_SCHEMA
from bulkgetty.sandbox import Product, SandboxConfig, SandboxThread
from tests.harness import REPO, clean_env, cli, command, report, sha256, write_ids

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr + done.stdout


# help and errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["run", "plan", "status", "history", "search", "sandbox"])
def test_every_command_has_help_with_examples(name: str) -> None:
    done = cli(name, "--help", env=clean_env())
    assert done.returncode == 0
    assert "examples:" in done.stdout
    assert f"bulkgetty {name}" in done.stdout


def test_status_of_a_folder_without_journal_is_one_line_and_a_hint(tmp_path: Path) -> None:
    done = cli("status", str(tmp_path), env=clean_env())
    assert done.returncode == 2
    no_traceback(done)
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("bulkgetty: error:") and "no bulkgetty journal" in lines[0]
    assert "bulkgetty status --help" in lines[1]


def test_plan_with_bad_manifest_names_rows_and_asks_nothing(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.csv"
    manifest.write_text("id,height\n1,100\nbad id,100\n")
    with SandboxThread() as sb:
        done = cli("plan", str(manifest), env=clean_env(sb.credentials_env()))
        assert done.returncode == 2
        assert f"{manifest}:3:" in done.stderr
        no_traceback(done)
        assert sb.stats.api_requests == 0 and sb.stats.token_requests == 0


# plan --------------------------------------------------------------------------------------


def test_plan_counts_per_product_type_and_spends_nothing(tmp_path: Path) -> None:
    products = (Product(1001, "premiumaccess", 50), Product(1002, "editorialsubscription", 4))
    ids = [str(7_100_000 + i) for i in range(8)]
    rows = [
        {"id": i, "product_type": "premiumaccess" if n < 3 else "editorialsubscription"}
        for n, i in enumerate(ids)
    ]
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    with SandboxThread(SandboxConfig(products=products)) as sb:
        env = clean_env(sb.credentials_env())
        first = write_csv(tmp_path / "first.csv", rows[:4])  # 3 premium + 1 editorial done
        assert cli("run", str(first), "--out", str(out), env=env).returncode == 0
        ledger, posts = len(sb.ledger), dict(sb.stats.post_requests)
        remaining = sb.remaining

        done = cli("plan", str(manifest), "--out", str(out), "--json", env=env)
        assert done.returncode == 3, done.stderr  # 4 editorial to buy, 3 left
        plan = json.loads(done.stdout)
        by_type = {p["product_type"]: p for p in plan["products"]}
        assert by_type["premiumaccess"] == {
            **by_type["premiumaccess"],
            "assets": 3,
            "already_done": 3,
            "to_acquire": 0,
            "remaining": 47,
            "fits": True,
        }
        assert by_type["editorialsubscription"] == {
            **by_type["editorialsubscription"],
            "assets": 5,
            "already_done": 1,
            "to_acquire": 4,
            "remaining": 3,
            "fits": False,
        }
        assert plan["may_spend"] == 4 and plan["fits"] is False

        human = cli("plan", str(manifest), "--out", str(out), env=env)
        assert human.returncode == 3
        assert re.search(
            r"editorialsubscription\s+5\s+1\s+0\s+4\s+0\s+0\s+0\s+3\s+NO", human.stdout
        )
        assert "some assets would wait for quota" in human.stdout

        # The proof: not one POST, not one spend, no quota moved.
        assert len(sb.ledger) == ledger
        assert dict(sb.stats.post_requests) == posts
        assert sb.remaining == remaining


def test_plan_with_max_downloads_and_sandbox_flag_fits(tmp_path: Path) -> None:
    manifest = write_ids(tmp_path / "ids.txt", [str(7_200_000 + i) for i in range(5)])
    capped = cli("plan", str(manifest), "--sandbox", "--max-downloads", "4", env=clean_env())
    assert capped.returncode == 3, capped.stderr
    assert "(--max-downloads 4)" in capped.stdout
    fits = cli("plan", str(manifest), "--sandbox", "--max-downloads", "5", env=clean_env())
    assert fits.returncode == 0, fits.stderr
    assert "at most 5 downloads would be spent (--max-downloads 5): the run fits" in fits.stdout


# status ------------------------------------------------------------------------------------


def test_status_groups_failures_and_verify_names_a_changed_file(tmp_path: Path) -> None:
    ids = [str(7_300_000 + i) for i in range(6)]
    missing = frozenset(ids[:2])
    out = tmp_path / "out"
    with SandboxThread(SandboxConfig(missing_ids=missing)) as sb:
        env = clean_env(sb.credentials_env())
        ran = cli("run", str(write_ids(tmp_path / "i.txt", ids)), "--out", str(out), env=env)
        assert ran.returncode == 1
        api_before = sb.stats.api_requests

        status = cli("status", str(out), "--json", env=clean_env())
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert (data["done"], data["failed"], data["spends"], data["runs"]) == (4, 2, 4, 1)
        assert data["bytes_done"] == sum(r["bytes"] for r in report(out) if r["bytes"])
        # Two ids, one reason: "... Image not found: N" once, for both assets.
        assert len(data["failures"]) == 1 and data["failures"][0]["assets"] == 2
        assert "ImageNotFound" in data["failures"][0]["reason"]

        good = [r for r in report(out) if r["status"] == "downloaded"]
        victim = Path(good[0]["path"])
        victim.write_bytes(b"x" + victim.read_bytes()[1:])
        Path(good[1]["path"]).unlink()
        verify = cli("status", str(out), "--verify", env=clean_env())
        assert verify.returncode == 1
        assert "verified 4 finished files: 2 changed" in verify.stdout
        assert f"{victim}: content changed" in verify.stdout
        assert f"{good[1]['path']}: missing" in verify.stdout
        assert "2 × " in verify.stdout  # the grouped failure line
        assert sb.stats.api_requests == api_before  # offline: nothing asked


# history and search ------------------------------------------------------------------------


def test_history_then_run_fetches_the_same_files_again(tmp_path: Path) -> None:
    rows = [
        {"id": "7400001", "asset_type": "image", "height": "1024", "size": ""},
        {"id": "7400002", "asset_type": "image", "height": "", "size": ""},
        {"id": "7400003", "asset_type": "video", "height": "", "size": "hd2"},
        {"id": "7400004-002", "asset_type": "image", "height": "612", "size": ""},
    ]
    manifest = write_csv(tmp_path / "m.csv", rows)
    with SandboxThread() as sb:
        env = clean_env(sb.credentials_env())
        first = cli("run", str(manifest), "--out", str(tmp_path / "a"), env=env)
        assert first.returncode == 0, first.stderr
        hist = tmp_path / "history.csv"
        done = cli("history", "--out", str(hist), env=env)
        assert done.returncode == 0, done.stderr
        assert "4 assets from 4 earlier downloads" in done.stdout
        written = read_csv(hist)
        assert sorted(r["id"] for r in written) == sorted(r["id"] for r in rows)
        assert {r["product_type"] for r in written} == {"premiumaccess"}

        again = cli("run", str(hist), "--out", str(tmp_path / "b"), env=env)
        assert again.returncode == 0, again.stderr
        before = {r["id"]: r["sha256"] for r in report(tmp_path / "a")}
        after = {r["id"]: r["sha256"] for r in report(tmp_path / "b")}
        assert after == before
        for row in report(tmp_path / "b"):
            assert sha256(Path(row["path"])) == before[row["id"]]


def test_history_filters_by_product_type_and_writes_jsonl(tmp_path: Path) -> None:
    rows = [
        {"id": "7500001", "product_type": "premiumaccess"},
        {"id": "7500002", "product_type": "editorialsubscription"},
    ]
    with SandboxThread() as sb:
        env = clean_env(sb.credentials_env())
        ran = cli(
            "run", str(write_csv(tmp_path / "m.csv", rows)), "--out", str(tmp_path / "o"), env=env
        )
        assert ran.returncode == 0, ran.stderr
        out = tmp_path / "h.jsonl"
        args = ("history", "--product-type", "editorialsubscription", "--out", str(out))
        assert cli(*args, env=env).returncode == 0
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [(x["id"], x["product_type"]) for x in lines] == [
            ("7500002", "editorialsubscription")
        ]


def test_search_writes_limit_rows_with_product_type_and_run_accepts_them(tmp_path: Path) -> None:
    with SandboxThread() as sb:
        env = clean_env(sb.credentials_env())
        out = tmp_path / "found.csv"
        done = cli("search", "city", "--limit", "7", "--out", str(out), env=env)
        assert done.returncode == 0, done.stderr
        rows = read_csv(out)
        assert len(rows) == 7
        assert all(r["product_type"] and r["product_id"] for r in rows)
        ran = cli("run", str(out), "--out", str(tmp_path / "o"), env=env)
        assert ran.returncode == 0, ran.stderr
        charged = {s.id: s.product_type for s in sb.ledger}
        assert charged == {r["id"]: r["product_type"] for r in rows}


# --json ------------------------------------------------------------------------------------


def test_every_json_line_of_a_real_run_validates_against_the_schema(tmp_path: Path) -> None:
    """A run that meets every event kind: spends, a 404, the quota limit, progress ticks."""
    ids = [str(7_600_000 + i) for i in range(10)]
    config = SandboxConfig(
        products=(Product(1001, "premiumaccess", 6),),
        missing_ids=frozenset({ids[0]}),
        delivery_latency=0.4,
    )
    with SandboxThread(config) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        args = ("run", str(manifest), "--out", str(tmp_path / "o"), "--concurrency", "2", "--json")
        done = cli(*args, env=env)
    assert done.returncode == 1, done.stderr
    validator = jsonschema.Draft202012Validator(EVENT_SCHEMA)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    for event in events:
        validator.validate(event)
    kinds = [e["event"] for e in events]
    assert set(kinds) == set(EVENT_KINDS)
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert kinds.count("asset_acquired") == 6
    assert kinds.count("asset_failed") == 1 and kinds.count("asset_waiting_for_quota") == 3
    assert events[-1]["spends"] == 6 and events[-1]["exit_code"] == 1


# the terminal ------------------------------------------------------------------------------


def _pty_run(
    args: tuple[str, ...],
    env: dict[str, str],
    *,
    interrupt_after: str | None = None,
    then: str | None = None,
    stdout: int | None = None,
) -> tuple[int, str]:
    """Run the CLI on a 120x30 pseudo-terminal; returns (exit status, everything it drew).

    With `interrupt_after` (a regex), a Ctrl-C (the terminal's own ^C) is typed once it shows;
    with `then` too, a second one once that shows after the first (signals sent together
    would merge into one). `stdout`: a file descriptor for stdout instead of the terminal.
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen(
        command(args),
        env={**env, "TERM": "xterm-256color"},
        stdin=slave,
        stdout=slave if stdout is None else stdout,
        stderr=slave,
        cwd=REPO,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 90
    waits = [w for w in (interrupt_after, then) if w]
    seen = 0
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    data = b""
                if not data:
                    break
                chunks.append(data)
            drawn = ANSI.sub("", b"".join(chunks).decode(errors="replace"))
            if waits and (m := re.search(waits[0], drawn[seen:])):
                os.write(master, b"\x03")
                seen += m.end()
                waits.pop(0)
            if not ready and proc.poll() is not None:
                break
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def _slow_videos() -> SandboxConfig:
    return SandboxConfig(
        products=(Product(1001, "premiumaccess", 100),),
        video_bytes=(3_000_000, 4_000_000),
        bandwidth=2_000_000,
        missing_ids=frozenset({"7700009"}),
    )


def test_live_progress_on_a_terminal_then_a_summary_table(tmp_path: Path) -> None:
    ids = [str(7_700_000 + i) for i in range(10)]
    with SandboxThread(_slow_videos()) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        args = ("run", str(manifest), "--out", str(tmp_path / "o"), "--asset-type", "video")
        code, screen = _pty_run((*args, "--concurrency", "3"), env)
    text = ANSI.sub("", screen)
    assert code == 1, text[-2000:]
    assert "\x1b[?25l" in screen  # rich hid the cursor for the live display...
    assert "\x1b[?25h" in screen  # ...and gave it back
    assert re.search(r"files\s+━+.*\d+/10", text), text[-3000:]
    assert re.search(r"bytes\s+[\d.]+ [kM]?B • [\d.]+ [kM]?B/s", text)
    assert re.search(r"spent \d+ downloads • remaining: premiumaccess \d+", text)
    assert re.search(r"video 77000\d\d\s+━+.*/\s*[34]\.\d MB", text)  # a per-file bar
    assert "failed video 7700009" in text
    table = text[text.rindex("bulkgetty run") :]
    for label, value in (
        ("downloaded", "9"),
        ("already done", "0"),
        ("failed", "1"),
        ("waiting for quota", "0"),
        ("downloads spent", "9"),
    ):
        assert re.search(rf"{label}\s+│\s+{value}\s", table), table


def test_ctrl_c_on_a_terminal_stops_cleanly_and_the_rerun_finishes(tmp_path: Path) -> None:
    ids = [str(7_800_000 + i) for i in range(8)]
    with SandboxThread(_slow_videos()) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        args = ("run", str(manifest), "--out", str(out), "--asset-type", "video")
        code, screen = _pty_run((*args, "--concurrency", "1"), env, interrupt_after=r"spent [1-9]")
        text = ANSI.sub("", screen)
        assert code == 130, text[-2000:]
        assert "run the same command again to resume" in text
        assert screen.rfind("\x1b[?25h") > screen.rfind("\x1b[?25l")  # cursor back
        spent_first = sum(sb.spends_by_asset().values())
        assert 1 <= spent_first < len(ids)
        again = cli(*args, env=env)
        assert again.returncode == 0, again.stderr
        assert sb.spends_by_asset() == {f"video/{i}": 1 for i in ids}


def test_not_a_terminal_gets_one_summary_line_and_no_bars(tmp_path: Path) -> None:
    with SandboxThread() as sb:
        manifest = write_ids(tmp_path / "ids.txt", ["7900001", "7900002"])
        done = cli(
            "run", str(manifest), "--out", str(tmp_path / "o"), env=clean_env(sb.credentials_env())
        )
    assert done.returncode == 0
    assert done.stdout.count("\n") == 1
    assert done.stdout.startswith("2 assets: 2 downloaded")
    assert "\x1b[" not in done.stdout + done.stderr


def test_plan_reads_ids_from_stdin() -> None:
    done = subprocess.run(
        command(("plan", "-", "--sandbox", "--json")),
        input="7950001\n# comment\n7950002\n7950001\n",
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["unique_assets"] == 2 and plan["may_spend"] == 2 and plan["fits"] is True


def test_readme_commands_work_as_written_in_a_clone(tmp_path: Path) -> None:
    """The quick start's "every other command" block, verbatim, in a copy of the clone."""
    shutil.copytree(REPO / "manifests", tmp_path / "manifests")
    text = (REPO / "README.md").read_text()
    block = text.split("Every other command works against the emulator too")[1]
    block = block.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    commands = [shlex.split(line) for line in lines if line.startswith("bulkgetty ")]
    assert [c[1] for c in commands] == ["plan", "status", "search", "sandbox"]
    env = clean_env()

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command(tuple(argv[1:])),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )

    quick = run(["bulkgetty", "run", "manifests/sample.csv", "--out", "downloads", "--sandbox"])
    assert quick.returncode == 0, quick.stderr
    for argv in commands[:3]:
        done = run(argv)
        assert done.returncode == 0, (argv, done.stderr)
        no_traceback(done)
    assert len(read_csv(tmp_path / "lakes.csv")) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads", "lakes.csv", "manifests"]


def test_second_ctrl_c_exits_at_once_and_nothing_is_ever_bought_twice(tmp_path: Path) -> None:
    """Two ^C in a row: exit 130 without waiting for transfers; the journal still holds."""
    ids = [str(7_960_000 + i) for i in range(8)]
    with SandboxThread(_slow_videos()) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        args = ("run", str(manifest), "--out", str(out), "--asset-type", "video")
        code, screen = _pty_run(
            (*args, "--concurrency", "2"),
            env,
            interrupt_after=r"spent [1-9]",
            then=r"Ctrl-C again to exit at once",
        )
        text = ANSI.sub("", screen)
        assert code == 130, text[-2000:]
        assert "stopped at once; run the same command to resume" in text
        assert screen.rfind("\x1b[?25h") > screen.rfind("\x1b[?25l")  # cursor back
        again = cli(*args, env=env)
        assert again.returncode in (0, 1), again.stderr
        spends = sb.spends_by_asset()
        assert set(spends.values()) == {1} and sorted(spends) == [f"video/{i}" for i in ids]
        for row in report(out):  # a purchase cut off mid-answer is named, never re-bought
            assert row["status"] == "downloaded" or "--reacquire-expired" in row["error"], row


# the first hour (issue 13) -----------------------------------------------------------------


def _closed_port() -> int:
    """A loopback port with nothing listening: connecting is refused at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_version_from_the_command_and_from_python_m() -> None:
    for prefix in ((), ("-m", "bulkgetty")):
        argv = command(("--version",))
        if prefix:
            argv = [argv[0], *prefix, "--version"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"bulkgetty {bulkgetty.__version__}"


@pytest.mark.parametrize("name", ["run", "plan", "history", "search"])
def test_every_command_that_asks_the_api_takes_sandbox(name: str, tmp_path: Path) -> None:
    args = {
        "run": ("run", "manifests/sample.csv", "--out", str(tmp_path / "o")),
        "plan": ("plan", "manifests/sample.csv"),
        "history": ("history", "--out", str(tmp_path / "h.csv")),
        "search": ("search", "lake", "--limit", "3", "--out", str(tmp_path / "s.csv")),
    }[name]
    done = cli(*args, "--sandbox", env=clean_env())
    assert done.returncode == 0, done.stderr
    no_traceback(done)


@pytest.mark.parametrize("name", ["run", "plan", "plan-shards"])
def test_unreachable_api_is_named_as_it_happens_and_given_up_with_exit_2(
    name: str, tmp_path: Path
) -> None:
    """Nothing listening: each connect failure on stderr, then one line naming the address
    and exit 2 (bounded by the 60 s timeout); nothing is left in doubt, so a run against
    the real API afterwards buys each asset once."""
    port = _closed_port()
    out = tmp_path / "o"
    args = ("run", "manifests/sample.csv", "--out", str(out))
    if name.startswith("plan"):
        args = ("plan", "manifests/sample.csv", *(("--shards", "4") if "shards" in name else ()))
    with SandboxThread() as sb:
        env = clean_env({**sb.credentials_env(), "GETTY_API_URL": f"http://127.0.0.1:{port}"})
        done = cli(*args, env=env, timeout=60)
        assert done.returncode == 2, done.stderr
        no_traceback(done)
        lines = done.stderr.strip().splitlines()
        assert (
            f"bulkgetty: cannot connect to 127.0.0.1:{port} (connection refused); retry 1 of 4 in"
            in lines[0]
        )
        assert lines[-1].startswith(
            f"bulkgetty: error: cannot connect to the Getty API at 127.0.0.1:{port}"
        )
        assert "nothing was spent" in lines[-1]
        if name == "run":
            status = cli("status", str(out), "--json", env=env)
            state = json.loads(status.stdout)
            assert (state["in_doubt"], state["failed"], state["spends"]) == (0, 0, 0)
            again = cli(*args, env=clean_env(sb.credentials_env()))
            assert again.returncode == 0, again.stderr
            assert sum(sb.spends_by_asset().values()) == 11


def test_plan_help_documents_its_exit_codes() -> None:
    done = cli("plan", "--help", env=clean_env())
    assert "exit status: 0 the run fits; 3 some assets would wait" in done.stdout
    assert "the API cannot be reached" in done.stdout


def test_api_url_without_scheme_says_what_it_needs_and_shows_what_was_given(
    tmp_path: Path,
) -> None:
    done = cli(
        "run",
        "manifests/sample.csv",
        "--out",
        str(tmp_path / "o"),
        "--api-url",
        "127.0.0.1:9",
        env=clean_env({"GETTY_API_KEY": "k", "GETTY_API_SECRET": "s"}),
    )
    assert done.returncode == 2
    first = done.stderr.splitlines()[0]
    assert "needs https:// (or http:// for a loopback address)" in first
    assert "got '127.0.0.1:9'" in first and "http://127.0.0.1:9" in first
    assert not (tmp_path / "o").exists()


def test_out_naming_a_file_is_refused_as_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("keep me")
    done = cli(
        "run",
        "manifests/sample.csv",
        "--out",
        str(tmp_path / "afile"),
        "--sandbox",
        env=clean_env(),
    )
    assert done.returncode == 2
    assert f"--out {tmp_path / 'afile'} is a file, not a folder" in done.stderr
    assert (tmp_path / "afile").read_text() == "keep me"


def test_max_downloads_0_is_refused_as_nothing_could_be_downloaded(tmp_path: Path) -> None:
    with SandboxThread() as sb:
        done = cli(
            "run",
            "manifests/sample.csv",
            "--out",
            str(tmp_path / "o"),
            "--max-downloads",
            "0",
            env=clean_env(sb.credentials_env()),
        )
        assert done.returncode == 2
        assert "nothing could be downloaded" in done.stderr
        assert sb.spends_by_asset() == {}


@pytest.mark.parametrize("text", ["", "\n# only a comment\n\n"])
def test_empty_txt_manifest_is_refused_and_named_like_an_empty_csv(
    text: str, tmp_path: Path
) -> None:
    manifest = tmp_path / "ids.txt"
    manifest.write_text(text)
    done = cli("run", str(manifest), "--out", str(tmp_path / "o"), "--sandbox", env=clean_env())
    assert done.returncode == 2
    assert done.stderr.startswith(f"{manifest}:1: no asset ids")
    assert "nothing was spent" in done.stderr


def test_mistyped_option_suggests_the_nearest() -> None:
    done = cli("run", "manifests/sample.csv", "--out", "o", "--concurency", "3", env=clean_env())
    assert done.returncode == 2
    assert "unrecognized arguments: --concurency 3 (did you mean --concurrency?)" in done.stderr
    assert done.stderr.startswith("usage: bulkgetty run")


def _commands() -> list[tuple[str, ...]]:
    """Every command and sub-command, as argv prefixes."""
    parser = build_parser()
    out: list[tuple[str, ...]] = []

    def walk(p: object, prefix: tuple[str, ...]) -> None:
        import argparse

        assert isinstance(p, argparse.ArgumentParser)
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if prefix:
            out.append(prefix)
        for action in subs:
            for name, child in action.choices.items():
                walk(child, (*prefix, name))

    walk(parser, ())
    return out


@pytest.mark.parametrize("argv", _commands(), ids=" ".join)
def test_help_gives_every_option_a_text_and_its_default(argv: tuple[str, ...]) -> None:
    import argparse

    parser = build_parser()
    for name in argv:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    done = cli(*argv, "--help", env=clean_env())
    assert done.returncode == 0
    entries = re.split(r"\n  (?=-)", done.stdout.split("options:", 1)[1])
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"{argv} {action.option_strings} has no help text"
        default = action.default
        if default in (None, False, argparse.SUPPRESS) or isinstance(default, bool):
            continue
        entry = next(e for e in entries if e.startswith(action.option_strings[0]))
        assert "default" in entry and str(default) in entry, (argv, entry)


def _failing_run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    missing = [str(7_970_000 + i) for i in range(4)]
    ids = [*missing, "7970100", "7970101"]
    with SandboxThread(SandboxConfig(missing_ids=frozenset(missing))) as sb:
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        return cli(
            "run", str(manifest), "--out", str(out), *extra, env=clean_env(sb.credentials_env())
        ), out


@pytest.mark.parametrize("extra", [(), ("--quiet",)], ids=["not-a-terminal", "quiet"])
def test_unwatched_run_ends_with_failures_by_reason_and_ids_on_stderr(
    extra: tuple[str, ...], tmp_path: Path
) -> None:
    done, out = _failing_run(tmp_path, *extra)
    assert done.returncode == 1
    assert done.stdout.startswith("6 assets: 2 downloaded") and done.stdout.count("\n") == 1
    err = done.stderr
    assert "failed, by reason:\n" in err
    group = next(line for line in err.splitlines() if "4 ×" in line)
    assert "404" in group and re.search(r"\(ids: 797000\d, 797000\d, 797000\d, …\)", group)
    assert f"bulkgetty status {out}" in err


def test_progress_goes_to_stderr_when_only_stderr_is_a_terminal(tmp_path: Path) -> None:
    """stdout redirected to a file, stderr a terminal: the bars are drawn on stderr (as
    curl does) and stdout gets only the summary line."""
    ids = [str(7_980_000 + i) for i in range(4)]
    log = tmp_path / "stdout.txt"
    with SandboxThread(_slow_videos()) as sb, open(log, "w") as stdout:
        manifest = write_ids(tmp_path / "ids.txt", ids)
        args = ("run", str(manifest), "--out", str(tmp_path / "o"), "--asset-type", "video")
        code, screen = _pty_run(args, clean_env(sb.credentials_env()), stdout=stdout.fileno())
    text = ANSI.sub("", screen)
    assert code == 0, text[-2000:]
    assert re.search(r"files\s+━+.*\d+/4", text), text[-3000:]
    assert log.read_text().startswith("4 assets: 4 downloaded")
    assert log.read_text().count("\n") == 1 and "\x1b[" not in log.read_text()


def test_second_ctrl_c_gives_the_cursor_back_on_the_display_never_in_a_redirected_stdout(
    tmp_path: Path,
) -> None:
    """Display on stderr, stdout a file: the escape that shows the cursor again goes where
    the display hid it. It used to be written into stdout, a file the user keeps."""
    ids = [str(7_990_000 + i) for i in range(8)]
    log = tmp_path / "stdout.txt"
    with SandboxThread(_slow_videos()) as sb, open(log, "w") as stdout:
        manifest = write_ids(tmp_path / "ids.txt", ids)
        args = ("run", str(manifest), "--out", str(tmp_path / "o"), "--asset-type", "video")
        code, screen = _pty_run(
            (*args, "--concurrency", "2"),
            clean_env(sb.credentials_env()),
            interrupt_after=r"spent [1-9]",
            then=r"Ctrl-C again to exit at once",
            stdout=stdout.fileno(),
        )
    assert code == 130, ANSI.sub("", screen)[-2000:]
    assert screen.rfind("\x1b[?25h") > screen.rfind("\x1b[?25l")  # cursor back, on stderr
    assert "\x1b[" not in log.read_text()


def test_live_display_shows_files_per_second_labelled_times_and_moving_file_bars(
    tmp_path: Path,
) -> None:
    ids = [str(7_990_000 + i) for i in range(3)]
    config = SandboxConfig(video_bytes=(3_000_000, 3_500_000), bandwidth=600_000)
    with SandboxThread(config) as sb:
        manifest = write_ids(tmp_path / "ids.txt", ids)
        args = ("run", str(manifest), "--out", str(tmp_path / "o"), "--asset-type", "video")
        code, screen = _pty_run((*args, "--concurrency", "3"), clean_env(sb.credentials_env()))
    text = ANSI.sub("", screen)
    assert code == 0, text[-2000:]
    assert re.search(r"\d+/3.*[\d.…]+ files/s • elapsed \d+:\d\d:\d\d • left", text), text[-3000:]
    partial = [
        float(m.group(1))
        for m in re.finditer(r"video 79900\d\d\s+━+[^\n]*?([\d.]+)/3\.[0-9] MB", text)
    ]
    assert any(0 < done < 3.0 for done in partial), text[-3000:]  # seen mid-transfer
    assert len(set(partial)) >= 3  # and moving
