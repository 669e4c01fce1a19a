"""Run the bulkgetty CLI and SIGKILL it at one exact point: a power cut, placed on purpose.

    BULKGETTY_TEST_CRASH_AT=after_rename:2 python tests/faults/crashpoint.py run ...

Points: `before_rename:N` / `after_rename:N` (around the Nth `.part` -> final rename),
`journal_commit:N` (inside the Nth journal write transaction, after its statements and
before its COMMIT). Test-only: it patches private functions of the installed package, so a
rename of those functions fails here loudly instead of silently testing nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bulkgetty import cli, files, journal


def _killer(nth: int) -> Callable[[], None]:
    count = 0

    def hit() -> None:
        nonlocal count
        count += 1
        if count == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    return hit


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
    elif point == "journal_commit":
        assert hasattr(journal.Journal, "_tx"), "Journal._tx moved: update crashpoint.py"

        @contextlib.contextmanager
        def tx(self: Any) -> Iterator[sqlite3.Connection]:
            db: sqlite3.Connection = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            hit()
            db.execute("COMMIT")

        journal.Journal._tx = tx  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown crash point {spec!r}")


if __name__ == "__main__":
    install(os.environ["BULKGETTY_TEST_CRASH_AT"])
    sys.exit(cli.main(sys.argv[1:]))
