"""Shared helpers for tests that run the real CLI as a subprocess against the sandbox.

Used by tests/e2e (the user's paths) and tests/faults (the fault matrix). Everything here
checks from outside the process: files on disk, the report, the sandbox's ledger and counters.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bulkgetty.sandbox import SandboxConfig, SandboxThread

REPO = Path(__file__).resolve().parents[1]

#: What the end-to-end tests and the fault matrix run over: the sandbox's plain http, and
#: HTTPS with a private CA that the CLI trusts the standard way (SSL_CERT_FILE, which
#: `credentials_env()` carries), as it would trust Getty's public certificates.
SCHEMES = ("http", "https")


def sandbox(config: SandboxConfig | None = None, *, scheme: str = "http") -> SandboxThread:
    """A SandboxThread speaking `scheme` (one of SCHEMES) on all three origins."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    return SandboxThread(config, tls=scheme == "https")


def clean_env(extra: Mapping[str, str] = {}) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GETTY_")}
    env.update(extra)
    return env


#: Run options a test gets unless it sets them: the default 5 queries/s is Getty's reality,
#: not what a test of 40 assets should wait for; and the sandbox's download history shows a
#: spend at once (unless a test gives it `history_lag`), so an in-doubt POST need not wait
#: the default 10 s before the history is believed.
RUN_DEFAULTS = {"--api-rate": "500", "--history-settle": "0.5"}


def command(args: tuple[str, ...], *, prefix: tuple[str, ...] = ()) -> list[str]:
    """The CLI command line, with `RUN_DEFAULTS` for runs.

    `prefix` replaces `-m bulkgetty` (e.g. a crash-point wrapper script that then runs it).
    """
    extra: list[str] = []
    subcommand = next((a for a in args if not a.startswith("-")), None)  # after --debug
    if subcommand == "run":
        for option, value in RUN_DEFAULTS.items():
            if option not in args:
                extra += [option, value]
    entry = list(prefix) if prefix else ["-m", "bulkgetty"]
    return [sys.executable, *entry, *args, *extra]


def cli(
    *args: str,
    env: Mapping[str, str],
    timeout: float = 90,
    prefix: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(args, prefix=prefix),
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def start_cli(
    *args: str, env: Mapping[str, str], prefix: tuple[str, ...] = ()
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command(args, prefix=prefix),
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def write_ids(path: Path, ids: list[str]) -> Path:
    path.write_text("\n".join(ids) + "\n")
    return path


def report(out: Path) -> list[dict[str, Any]]:
    lines = (out / ".bulkgetty" / "report.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_files_match(sb: SandboxThread, out: Path, rows: list[dict[str, Any]]) -> None:
    """Every downloaded file is whole, inside DIR, and hashes to what the sandbox served."""
    for row in rows:
        if row["status"] not in ("downloaded", "already_done"):
            continue
        path = Path(row["path"])
        assert path.parent.resolve() == out.resolve()
        expected = sb.expected(row["asset_type"], row["id"])
        assert sha256(path) == expected.sha256 == row["sha256"], row
    assert not list(out.glob("*.part")), "a .part was left after a finished run"


def assert_spent_once(sb: SandboxThread, ids: list[str], asset_type: str = "image") -> None:
    spends = sb.spends_by_asset()
    assert {k: v for k, v in spends.items() if v != 1} == {}
    assert sorted(spends) == sorted(f"{asset_type}/{i}" for i in set(ids))


def grant_env(sb: SandboxThread, grant: str) -> dict[str, str]:
    """Credentials env for one OAuth grant; token grants get a token bought here first."""
    env = sb.credentials_env()
    if grant == "client_credentials":
        del env["GETTY_USERNAME"], env["GETTY_PASSWORD"]
    elif grant in ("refresh_token", "access_token"):
        token = password_token(sb)
        del env["GETTY_USERNAME"], env["GETTY_PASSWORD"]
        key = "GETTY_REFRESH_TOKEN" if grant == "refresh_token" else "GETTY_ACCESS_TOKEN"
        env[key] = token[grant]
    return env


def password_token(sb: SandboxThread) -> dict[str, Any]:
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
    context = ssl.create_default_context(cafile=sb.ca_file) if sb.ca_file else None
    url = f"{sb.api_url}/oauth2/token"
    with urllib.request.urlopen(url, data=form, timeout=10, context=context) as resp:
        return dict(json.loads(resp.read()))


def journaled_bytes(out: Path) -> int:
    """Bytes of the one transfer the journal has recorded as on disk (0 before any)."""
    path = out / ".bulkgetty" / "journal.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT transfer FROM assets WHERE transfer IS NOT NULL").fetchall()
    except sqlite3.Error:
        return 0  # not created yet
    finally:
        db.close()
    return max((int(json.loads(row[0]).get("done", 0)) for row in rows), default=0)
