"""Paid URIs the ledger could not take, kept in the worker's own folder until it can.

Why: a worker's database can be out of reach for longer than its patience (a lease, 60 s by
default) right after a POST spent a download and answered its URI. Before this file the URI
then lived only in memory, and the run's end lost it: the asset became "charged, URI lost",
or with `--reacquire-expired` was bought again. Now it is appended to `DIR/.bulkgetty/
unsent-uris.jsonl` (fsynced, 0600: a URI is a bearer token for a paid file) and given to the
ledger the next time this worker's folder opens it (`Ledger.replay_spool`).

One line per URI, appended: a kill halfway through a line leaves a torn last line, which is
skipped (its URI was never reported as kept, so the run that wrote it still failed loudly).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from bulkgetty.errors import JournalError

__all__ = ("SPOOL_NAME", "SpooledUri", "UriSpool")

SPOOL_NAME: Final = "unsent-uris.jsonl"


@dataclass(frozen=True, slots=True)
class SpooledUri:
    key: str
    uri: str
    expires: float


class UriSpool:
    """The spool file of one worker folder's state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / SPOOL_NAME

    def add(self, key: str, uri: str, expires: float) -> None:
        """Append one URI and make it durable before returning (the caller then calls the
        URI kept)."""
        line = orjson.dumps({"key": key, "uri": uri, "expires": expires}) + b"\n"
        created = not self.path.exists()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.path.parent)
        except OSError as exc:
            raise JournalError(
                f"the ledger is out of reach and a paid URI for {key} could not be kept in "
                f"{self.path} either: {exc.strerror}"
            ) from exc

    def entries(self) -> list[SpooledUri]:
        """Every whole line, in order; a torn or foreign line is skipped."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        found: list[SpooledUri] = []
        for line in data.splitlines():
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                obj = orjson.loads(line)
                found.append(SpooledUri(str(obj["key"]), str(obj["uri"]), float(obj["expires"])))
        return found

    def clear(self) -> None:
        """Everything in the spool is in the ledger now."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
            _fsync_dir(self.path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
