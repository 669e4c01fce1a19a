"""A real PostgreSQL 15 for the ledger tests: initdb + pg_ctl in a temporary folder, listening
on 127.0.0.1 at a free port, stopped afterwards. Never mocked: when it cannot start (no
binaries, no psycopg), the tests that need it are skipped with the reason.

As root (CI containers), the server runs as the `postgres` user, since PostgreSQL refuses root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

PG_BIN = Path(os.environ.get("BULKGETTY_PG_BIN", "/usr/lib/postgresql/15/bin"))
#: As root the server runs as `postgres` through runuser, which lives in sbin: a shell whose
#: PATH is /usr/bin:/bin (a plain user's, or the quick start's check) does not list it.
RUNUSER = shutil.which("runuser") or next(
    (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.access(p, os.X_OK)), None
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unavailable() -> str | None:
    """Why a PostgreSQL cannot be started here, or None."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL 15 is not installed ({PG_BIN}/initdb missing; .ci/run installs it)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server as"
        if RUNUSER is None:
            return "running as root and runuser (util-linux) is not installed"
    return None


class PostgresServer:
    """One server; `database()` hands each test a fresh database."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        prefix = [str(RUNUSER), "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run(
            [*prefix, *cmd], capture_output=True, text=True, timeout=60, check=False
        )

    def start(self) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        init = self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust", "-E",
            "UTF8", "--no-sync",
        )  # fmt: skip
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip()[:300]}")
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            "-c fsync=off -c max_connections=60"
        )
        started = self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
            str(self.root / "log"), "-w", "-t", "30", "start",
        )  # fmt: skip
        if started.returncode != 0:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stderr.strip()[:200]} {log[-300:]}")

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    root = Path(tempfile.mkdtemp(prefix="bulkgetty-pg-"))
    server = PostgresServer(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
