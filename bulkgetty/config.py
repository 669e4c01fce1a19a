"""Run options as one frozen record, and where the API is.

The environment is read only where a caller did not say: `api_url_from_env` gives the CLI and
the Python API (`Downloader`, `open_client`) the same answer for `GETTY_API_URL`, so the
sandbox's printed exports work for both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bulkgetty.errors import UsageError

__all__ = (
    "DEFAULT_API_RATE",
    "DEFAULT_API_URL",
    "HISTORY_SETTLE",
    "RunOptions",
    "api_url_from_env",
)

DEFAULT_API_URL = "https://api.gettyimages.com"
#: Getty's per-key limits are low (single-digit queries per second on default contracts).
DEFAULT_API_RATE = 5.0
#: Seconds a spend may take to show in the download history. Getty does not document the lag,
#: and reading "not spent" too early means buying again; so a history that shows nothing is
#: believed only for a POST sent at least this long ago (a cost paid in the rare in-doubt
#: case only: a POST answered 5xx or cut off, or an intent left by a crash moments ago).
HISTORY_SETTLE = 10.0


def api_url_from_env(env: Mapping[str, str] = os.environ) -> str:
    """`GETTY_API_URL` when set (the sandbox, a proxy), else Getty's own API."""
    return env.get("GETTY_API_URL", "").strip() or DEFAULT_API_URL


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What a run does; every field has the default `bulkgetty run` uses."""

    out_dir: Path
    #: Delivery streams in flight at once.
    concurrency: int = 8
    #: Hard cap on downloads this run may spend (None: only the account's limit).
    max_downloads: int | None = None
    #: Use the 303 flow (`auto_download=true`) instead of `200 {"uri"}`.
    auto_download: bool = False
    #: API queries per second (token, POST, history); Getty's per-key limits are low.
    #: None: unlimited (the sandbox, a contract with a high limit).
    api_rate: float | None = DEFAULT_API_RATE
    #: Most ranges per large file, split from its one stream only when that is slow
    #: (stages/transfer/adaptive.py); 1 turns segmenting off.
    segments: int = 4
    #: Only files at least this large may be segmented.
    segment_threshold: int = 64 * 2**20
    #: Allow spending another download for an asset whose URI expired or was lost.
    reacquire_expired: bool = False
    #: Seconds without a byte before a transfer counts as stalled.
    stall_timeout: float = 60.0
    #: Seconds after an in-doubt POST before its absence from the download history is
    #: believed (HISTORY_SETTLE).
    history_settle: float = HISTORY_SETTLE
    connect_timeout: float = 30.0
    #: Where the JSONL report goes (default: DIR/.bulkgetty/report.jsonl).
    report_path: Path | None = None
    #: fsync data before the rename that makes a file visible (and the folder after).
    durable: bool = True
    #: How many acquired-but-not-yet-transferring assets may wait (URIs expire; spend
    #: should not run far ahead of the bytes). Default: the concurrency.
    acquire_ahead: int | None = None
    #: Written to the journal on the first run and required to match on every later one
    #: (a shard's spec and its manifest's digest): see `Journal.bind_meta`.
    journal_meta: tuple[tuple[str, str], ...] = ()
    #: `max_downloads` caps the spends of all runs on this folder, not only this run's (a
    #: shard's share of the quota must hold across reruns after a crash).
    cap_all_runs: bool = False
    #: PostgreSQL connection string of the team's shared ledger (ledger.py) instead of the
    #: SQLite journal in DIR; the API rate then comes from the ledger, shared by all workers.
    ledger: str | None = None
    #: Rows the planner gathers before it looks them up (None: the engine's default). A ledger
    #: worker plans small batches so it claims only what it is about to work on.
    plan_batch: int | None = None
    #: Worker processes for the transfer stage (stages/workers/); 0: transfers run on the
    #: main process's event loop. Purchases, the journal and the report stay in this process.
    workers: int = 0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise UsageError(f"--concurrency must be at least 1, got {self.concurrency}")
        if self.max_downloads is not None and self.max_downloads < 0:
            raise UsageError(f"--max-downloads must be 0 or more, got {self.max_downloads}")
        if self.api_rate is not None and self.api_rate <= 0:
            raise UsageError(f"--api-rate must be more than 0, got {self.api_rate}")
        if self.segments < 1:
            raise UsageError(f"--segments must be at least 1, got {self.segments}")
        if self.stall_timeout <= 0:
            raise UsageError(f"--stall-timeout must be more than 0, got {self.stall_timeout}")
        if self.workers < 0:
            raise UsageError(f"--workers must be 0 or more, got {self.workers}")
        if self.history_settle < 0:
            raise UsageError(f"--history-settle must be 0 or more, got {self.history_settle}")

    @property
    def window(self) -> int:
        return self.acquire_ahead or self.concurrency

    @property
    def report(self) -> Path:
        return self.report_path or self.out_dir / ".bulkgetty" / "report.jsonl"
