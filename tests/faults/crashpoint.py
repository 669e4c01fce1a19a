"""Run the bulkgetty CLI and SIGKILL it at one exact point: a power cut, placed on purpose.

    BULKGETTY_TEST_CRASH_AT=after_rename:2 python tests/faults/crashpoint.py run ...

Points: `before_rename:N` / `after_rename:N` (around the Nth `.part` -> final rename),
`journal_commit:N` (inside the Nth journal transaction, after its statements and before
its COMMIT, whether the journal commits one call or a group of them; a lone statement that
commits itself counts as a transaction, killed right before it), `part_write:N` (right
before the Nth batch of bytes is written into any `.part`).

Test-only: it patches private names of the installed package (`files.writes._rename_noreplace`,
`files.writes._write_chunks`, `Journal._db`); if they move, the crash tests fail loudly instead of
testing nothing.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bulkgetty.cli import main as cli
from bulkgetty.stages import journal
from bulkgetty.stages.files import writes as files


def _killer(nth: int) -> Callable[[], None]:
    count = 0

    def hit() -> None:
        nonlocal count
        count += 1
        if count == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    return hit


class _KillBeforeCommit:
    """A sqlite3 connection whose Nth commit is preceded by SIGKILL: nothing of that
    transaction is committed (whatever groups the journal makes).

    A commit is a COMMIT statement, or a change outside any transaction: SQLite commits
    such a statement as its own transaction (autocommit), so a kill right before it is the
    kill right before that transaction's COMMIT.
    """

    def __init__(self, db: sqlite3.Connection, hit: Callable[[], None]) -> None:
        self._db = db
        self._hit = hit

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        verb = sql.lstrip()[:7].upper()
        lone_change = not self._db.in_transaction and verb.startswith(
            ("UPDATE", "INSERT", "DELETE", "REPLACE")
        )
        if verb.startswith("COMMIT") or lone_change:
            self._hit()
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def install(spec: str) -> None:
    point, _, nth = spec.partition(":")
    hit = _killer(int(nth or "1"))
    if point in ("before_rename", "after_rename"):
        real = files._rename_noreplace

        def rename(src: Path, dst: Path) -> None:
            if point == "before_rename":
                hit()
            real(src, dst)
            if point == "after_rename":
                hit()

        files._rename_noreplace = rename
    elif point == "part_write":
        real_write = files._write_chunks

        def write(*args: Any) -> int:
            hit()
            return real_write(*args)

        files._write_chunks = write
    elif point == "journal_commit":
        real_init = journal.Journal.__init__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            real_init(self, *args, **kwargs)
            self._db = _KillBeforeCommit(self._db, hit)

        journal.Journal.__init__ = init  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown crash point {spec!r}")


if __name__ == "__main__":
    install(os.environ["BULKGETTY_TEST_CRASH_AT"])
    sys.exit(cli.main(sys.argv[1:]))
