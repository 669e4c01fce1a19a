"""The per-asset report (JSONL, one object per asset) and the run's totals and exit code.

Rows are written as assets finish, so a million-asset run keeps flat memory and a killed run
still leaves a report of what it finished. Every string passes through the redactor: no
secret can reach the report even if some lower layer let one into an error message.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import IO

import orjson

from bulkgetty.assets import Asset
from bulkgetty.errors import DiskFullError, StorageError
from bulkgetty.stages.journal import STATE_DIR, private_file

__all__ = ("Outcome", "Redactor", "ReportRow", "ReportWriter", "RunSummary", "Status")


class Status(StrEnum):
    DOWNLOADED = "downloaded"
    ALREADY_DONE = "already_done"
    FAILED = "failed"
    WAITING_FOR_QUOTA = "waiting_for_quota"


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One line of the report, exactly the fields PRODUCT.md promises."""

    id: str
    asset_type: str
    product_type: str | None
    status: str
    path: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one asset ended in this run."""

    asset: Asset
    status: Status
    path: str | None = None
    size: int | None = None
    sha256: str | None = None
    error: str | None = None

    def row(self, out_dir: Path) -> ReportRow:
        return ReportRow(
            id=self.asset.id,
            asset_type=self.asset.asset_type,
            product_type=self.asset.product_type,
            status=self.status.value,
            path=os.path.join(out_dir, self.path) if self.path else None,
            bytes=self.size,
            sha256=self.sha256,
            error=self.error,
        )


class Redactor:
    """Replaces every known secret with `***`: the last line of defence for outputs."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        self._secrets.update(s for s in secrets if s and len(s) >= 4)

    def __call__(self, text: str) -> str:
        # Longest first: a secret that contains another must not leak around the shorter one.
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, "***")
        return text


@dataclass(slots=True)
class RunSummary:
    downloaded: int = 0
    already_done: int = 0
    failed: int = 0
    waiting_for_quota: int = 0
    bytes: int = 0
    spends: int = 0
    started: float = field(default_factory=time.monotonic)
    wall: float = 0.0

    def count(self, outcome: Outcome) -> None:
        if outcome.status is Status.DOWNLOADED:
            self.downloaded += 1
            self.bytes += outcome.size or 0
        elif outcome.status is Status.ALREADY_DONE:
            self.already_done += 1
        elif outcome.status is Status.FAILED:
            self.failed += 1
        else:
            self.waiting_for_quota += 1

    @property
    def assets(self) -> int:
        return self.downloaded + self.already_done + self.failed + self.waiting_for_quota

    @property
    def exit_code(self) -> int:
        """PRODUCT.md: 1 if anything failed for good, 3 if some wait for quota, else 0."""
        if self.failed:
            return 1
        if self.waiting_for_quota:
            return 3
        return 0

    def line(self) -> str:
        mb = self.bytes / 1e6
        return (
            f"{self.assets} assets: {self.downloaded} downloaded, {self.already_done} already done,"
            f" {self.failed} failed, {self.waiting_for_quota} waiting for quota;"
            f" {mb:.1f} MB in {self.wall:.1f} s; {self.spends} downloads spent"
        )

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("started")
        data["exit_code"] = self.exit_code
        return data


class ReportWriter:
    """Appends report rows to the report file as outcomes arrive."""

    def __init__(self, path: Path, out_dir: Path, redact: Redactor) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent.name == STATE_DIR:  # the state folder's files are the owner's alone
            private_file(path)
        self._file: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._out_dir = out_dir
        self._redact = redact
        self.path = path

    def write(self, outcome: Outcome) -> ReportRow:
        row = outcome.row(self._out_dir)
        if row.error:
            row = replace(row, error=self._redact(row.error))
        # orjson serialises a slotted dataclass natively: no asdict() deep copy per row.
        try:
            self._file.write(orjson.dumps(row) + b"\n")
        except OSError as exc:
            raise self._error(exc) from exc
        return row

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: OSError) -> StorageError:
        kind = DiskFullError if exc.errno in (errno.ENOSPC, errno.EDQUOT) else StorageError
        return kind(f"cannot write the report {self.path}: {exc.strerror or exc}")
