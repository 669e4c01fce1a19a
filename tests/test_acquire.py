"""Acquirer decisions that need no server: the cap, the quota gate, and what the planner may
set aside without queueing a row for an acquirer."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from bulkgetty import acquire
from bulkgetty.acquire import Acquirer, Budget
from bulkgetty.api import HistoryItem
from bulkgetty.assets import Asset
from bulkgetty.journal import AsyncJournal, Record
from bulkgetty.report import Status
from bulkgetty.retry import RetryPolicy


async def _acquirer(tmp_path: Path, limit: int | None) -> tuple[Acquirer, AsyncJournal, Record]:
    journal = await AsyncJournal.open(tmp_path)
    run = await journal.call(journal.journal.begin_run, "m")
    [record] = await journal.call(journal.journal.upsert, [Asset("1")], run)
    client = cast(Any, None)  # never reached: refused_now sends nothing
    acquirer = Acquirer(client, journal, Budget(limit), RetryPolicy(), lambda event: None)
    return acquirer, journal, record


async def test_budget_slot_in_flight_does_not_close_the_cap_for_the_planner(
    tmp_path: Path,
) -> None:
    """A slot held by a POST in flight may come back (404): the row must still be queued."""
    acquirer, journal, record = await _acquirer(tmp_path, limit=1)
    try:
        assert acquirer.budget.take()  # one POST in flight, nothing spent yet
        assert acquirer.refused_now(record) is None
        acquirer.spends = 1  # that POST spent: the cap is closed for good
        refused = acquirer.refused_now(record)
        assert refused is not None
        assert refused.status is Status.WAITING_FOR_QUOTA
        assert "--max-downloads 1" in (refused.error or "")
    finally:
        await journal.close()


async def test_closed_quota_sets_rows_aside_without_a_budget_slot(tmp_path: Path) -> None:
    acquirer, journal, record = await _acquirer(tmp_path, limit=None)
    try:
        assert acquirer.refused_now(record) is None
        acquirer.quota.exhausted[acquirer.quota.product(record)] = "limit reached"
        refused = acquirer.refused_now(record)
        assert refused is not None and refused.error == "limit reached"
        assert acquirer.budget.used == 0
    finally:
        await journal.close()


class _History:
    """A client whose download history shows one spend."""

    async def asset_download_history(self, asset_type: str, asset_id: str) -> list[HistoryItem]:
        now = datetime.now(UTC).isoformat()
        return [HistoryItem(asset_id, asset_type, now, None, None, None)]


async def test_history_is_asked_only_once_a_fresh_spend_has_had_time_to_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An in-doubt POST sent just now: the acquirer waits out the rest of `history_settle`
    before it reads the history (a spend still on its way would read as unspent and be
    bought again); for an intent left by a crash a minute ago it reads at once."""
    acquirer, journal, record = await _acquirer(tmp_path, limit=None)
    acquirer.client = cast(Any, _History())
    acquirer.history_settle = 30.0
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)

    # A frozen clock and a recording sleep: the wait asked for is exact, nothing is timed.
    monkeypatch.setattr(acquire, "time", SimpleNamespace(time=lambda: 1_000.0))
    monkeypatch.setattr(acquire, "asyncio", SimpleNamespace(sleep=sleep))
    try:
        assert await acquirer.was_spent(record, since=1_000.0)  # sent just now
        assert waits == [30.0]
        assert await acquirer.was_spent(record, since=940.0)  # a crash a minute ago
        assert waits == [30.0]  # no second wait
    finally:
        await journal.close()
