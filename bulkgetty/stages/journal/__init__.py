"""The journal: what has been bought, where its bytes are, and what is done. The only package
that touches the SQLite database (the team's PostgreSQL ledger is stages/ledger/).

    records.py      AssetState, Record, RunTotals: what one asset's row says
    storage.py      the state folder: private files, the lock, the reserve, WAL or not
    sqlite.py       Journal: the database, its transactions, runs and reads
    transitions.py  each asset's state changes (intent, URI, doubt, done...)
    writer.py       AsyncJournal: one thread, group commit, staged progress
    queries.py      read-only questions for `status` and `merge`
"""

from __future__ import annotations

from bulkgetty.stages.journal.queries import (
    RunRow,
    failure_counts,
    iter_done,
    runs,
    waiting_reasons,
)
from bulkgetty.stages.journal.records import AssetState, Record, RunTotals
from bulkgetty.stages.journal.sqlite import SCHEMA_VERSION, Journal
from bulkgetty.stages.journal.storage import (
    MEMORY_FILESYSTEMS,
    NETWORK_FILESYSTEMS,
    RESERVE_BYTES,
    STATE_DIR,
    filesystem_type,
    journal_mode_for,
    on_memory_filesystem,
    private_file,
    private_state_dir,
)
from bulkgetty.stages.journal.writer import GROUP_LIMIT, AsyncJournal, StagedWrites

__all__ = (
    "GROUP_LIMIT",
    "MEMORY_FILESYSTEMS",
    "NETWORK_FILESYSTEMS",
    "RESERVE_BYTES",
    "SCHEMA_VERSION",
    "STATE_DIR",
    "AssetState",
    "AsyncJournal",
    "Journal",
    "Record",
    "RunRow",
    "RunTotals",
    "StagedWrites",
    "failure_counts",
    "filesystem_type",
    "iter_done",
    "journal_mode_for",
    "on_memory_filesystem",
    "private_file",
    "private_state_dir",
    "runs",
    "waiting_reasons",
)
