"""Acquirer decisions that need no server: the cap, the quota gate, and what the planner may
set aside without queueing a row for an acquirer."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from bulkgetty.assets import Asset
from bulkgetty.errors import (
    ApiUnreachableError,
    AuthenticationError,
    BulkGettyError,
    CertificateError,
    ConnectError,
    JournalError,
    NotFoundError,
    QuotaExceededError,
    RateLimitedError,
    ReadError,
    ServerError,
)
from bulkgetty.events import AssetAcquired, Event, QuotaReached
from bulkgetty.getty.api import DownloadGrant, HistoryItem
from bulkgetty.getty.retry import RetryPolicy
from bulkgetty.stages import acquire
from bulkgetty.stages.acquire import Acquirer, Budget
from bulkgetty.stages.journal import AssetState, AsyncJournal, Record
from bulkgetty.stages.report import Outcome, Status


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


# --- The acquirer end to end against a scripted client --------------------------------------
#
# The client answers each POST from a script and shows a given download history; the journal
# is the real SQLite one. No server is needed: what is under test is what the acquirer decides
# (post again or not, give the cap slot back or not, what it records) for each answer.

NOT_SPENT = NotFoundError("no such asset", status=404)
LOST = ReadError("the answer was lost", may_have_spent=True)


@dataclass
class _Client:
    """Answers POSTs from `answers` in order; `history` is the asset's download history."""

    answers: list[DownloadGrant | BulkGettyError]
    history: list[HistoryItem] | BulkGettyError = field(default_factory=list)
    posts: list[str] = field(default_factory=list)
    asked: list[tuple[str, str]] = field(default_factory=list)

    async def download(
        self, asset: Asset, *, before_send: Callable[[], Awaitable[None]] | None = None
    ) -> DownloadGrant:
        if before_send is not None:  # as the real client: the intent right before sending
            await before_send()
        self.posts.append(asset.id)
        answer = self.answers.pop(0)
        if isinstance(answer, BulkGettyError):
            raise answer
        return answer

    async def asset_download_history(self, asset_type: str, asset_id: str) -> list[HistoryItem]:
        self.asked.append((asset_type, asset_id))
        if isinstance(self.history, BulkGettyError):
            raise self.history
        return self.history


def _grant(n: int = 1) -> DownloadGrant:
    return DownloadGrant(f"https://delivery.example/{n}?sig=x", 2_000_000_000.0 + n)


def _spend(*, ago: float = 0.0, product: str | None = None, date: str | None = None) -> HistoryItem:
    """A history entry dated `ago` seconds before now (or with the given `date` text)."""
    when = date or datetime.fromtimestamp(time.time() - ago, UTC).isoformat()
    return HistoryItem("1", "image", when, product, None, None)


class _Asyncio:
    """acquire's view of asyncio, with a sleep that records the wait instead of waiting."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)


@dataclass
class _Rig:
    acquirer: Acquirer
    journal: AsyncJournal
    client: _Client
    records: list[Record]
    events: list[Event]
    clock: _Asyncio

    async def state(self, record: Record) -> Record:
        found = await self.journal.call(self.journal.journal.get, record.key)
        assert found is not None
        return found


@pytest.fixture
async def rig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[..., Awaitable[_Rig]]]:
    """Build an acquirer over a fresh journal holding `assets`, answering from `client`."""
    journals: list[AsyncJournal] = []
    clock = _Asyncio()
    monkeypatch.setattr(acquire, "asyncio", clock)

    async def build(
        client: _Client,
        assets: list[Asset] | None = None,
        *,
        limit: int | None = None,
        attempts: int = 3,
    ) -> _Rig:
        journal = await AsyncJournal.open(tmp_path / f"out{len(journals)}")
        journals.append(journal)
        run = await journal.call(journal.journal.begin_run, "m")
        records = await journal.call(journal.journal.upsert, assets or [Asset("1")], run)
        events: list[Event] = []
        policy = RetryPolicy(attempts=attempts, backoff_base=1.0, jitter=False)
        acquirer = Acquirer(cast(Any, client), journal, Budget(limit), policy, events.append)
        acquirer.history_settle = 0.0
        return _Rig(acquirer, journal, client, records, events, clock)

    yield build
    for journal in journals:
        await journal.close()


Rig = Callable[..., Awaitable[_Rig]]


async def test_a_granted_post_is_recorded_with_its_uri_and_counted_once(rig: Rig) -> None:
    r = await rig(_Client([_grant(7)]), [Asset("1", product_type="editorialsubscription")])
    [record] = r.records
    assert await r.acquirer.acquire(record) == _grant(7)
    saved = await r.state(record)
    assert (saved.state, saved.uri, saved.uri_expires, saved.spends) == (
        AssetState.ACQUIRED,
        _grant(7).uri,
        _grant(7).expires_at,
        1,
    )
    assert r.acquirer.spends == 1
    assert _untimed(r.events) == [
        AssetAcquired(
            t=0.0, id="1", asset_type="image", product_type="editorialsubscription", spends=1
        )
    ]


async def test_the_cap_refuses_the_post_after_the_last_slot(rig: Rig) -> None:
    """--max-downloads 2: two POSTs leave, the third asset waits and nothing is sent for it."""
    r = await rig(_Client([_grant(1), _grant(2)]), [Asset("1"), Asset("2"), Asset("3")], limit=2)
    first, second, third = r.records
    assert isinstance(await r.acquirer.acquire(first), DownloadGrant)
    assert isinstance(await r.acquirer.acquire(second), DownloadGrant)
    refused = await r.acquirer.acquire(third)
    assert isinstance(refused, Outcome)
    assert (refused.asset, refused.status) == (third.asset, Status.WAITING_FOR_QUOTA)
    assert refused.error == "--max-downloads 2 reached in this run"
    assert r.client.posts == ["1", "2"]
    await r.journal.flush()  # the refusal is staged, not committed on its own
    saved = await r.state(third)
    assert (saved.state, saved.error) == (AssetState.WAITING_FOR_QUOTA, refused.error)


async def test_without_a_cap_every_asset_may_post(rig: Rig) -> None:
    assets = [Asset(str(n)) for n in range(4)]
    r = await rig(_Client([_grant(n) for n in range(4)]), assets, limit=None)
    for record in r.records:
        assert isinstance(await r.acquirer.acquire(record), DownloadGrant)
    assert len(r.client.posts) == 4


async def test_a_post_proven_not_charged_gives_its_cap_slot_back(rig: Rig) -> None:
    """--max-downloads 1 and the first POST answered 404: nothing was spent, so the slot
    comes back and the next asset may still be bought."""
    r = await rig(_Client([NOT_SPENT, _grant(2)]), [Asset("1"), Asset("2")], limit=1, attempts=1)
    first, second = r.records
    failed = await r.acquirer.acquire(first)
    assert isinstance(failed, Outcome)
    assert (failed.asset, failed.status) == (first.asset, Status.FAILED)
    assert failed.error == "no such asset"
    saved = await r.state(first)
    assert (saved.state, saved.error, saved.spends) == (AssetState.FAILED, "no such asset", 0)
    assert await r.acquirer.acquire(second) == _grant(2)
    assert r.client.posts == ["1", "2"]


async def test_a_post_that_spent_nothing_is_sent_again_up_to_the_policy_attempts(
    rig: Rig,
) -> None:
    """A connection refused proves nothing was spent: retried, with the policy's backoff
    between tries, and no more than `attempts` POSTs in all."""
    refused = [ConnectError(f"refused {n}") for n in range(1, 5)]
    r = await rig(_Client(list(refused)), limit=1, attempts=3)
    [record] = r.records
    outcome = await r.acquirer.acquire(record)
    assert isinstance(outcome, Outcome) and outcome.status is Status.FAILED
    assert outcome.error == "refused 3"
    assert len(r.client.posts) == 3
    assert r.clock.slept == [1.0, 2.0]
    assert r.acquirer.budget.used == 0  # every slot came back: none of them spent


async def test_a_permanent_refusal_is_not_sent_again(rig: Rig) -> None:
    r = await rig(_Client([NOT_SPENT, _grant()]), attempts=5)
    outcome = await r.acquirer.acquire(r.records[0])
    assert isinstance(outcome, Outcome) and outcome.status is Status.FAILED
    assert r.client.posts == ["1"]
    assert r.clock.slept == []


async def test_a_refused_token_stops_and_leaves_the_asset_pending(rig: Rig) -> None:
    r = await rig(_Client([AuthenticationError("bad token", status=401)]), limit=1)
    [record] = r.records
    with pytest.raises(AuthenticationError):
        await r.acquirer.acquire(record)
    assert (await r.state(record)).state is AssetState.PENDING
    assert r.acquirer.budget.used == 0


async def test_quota_reached_closes_only_that_product_and_says_so_once(rig: Rig) -> None:
    """A 403 OverageLimitReached: that product's rows wait (nothing spent, slot back) and no
    further POST starts for it; another product type still buys."""
    over = QuotaExceededError("over", status=403, code="OverageLimitReached")
    assets = [
        Asset("1", product_type="editorialsubscription"),
        Asset("2", product_type="editorialsubscription"),
        Asset("3", product_type="premiumaccess"),
    ]
    r = await rig(_Client([over, _grant(3)]), assets, limit=1)
    first, second, other = r.records
    reason = (
        "download limit reached for editorialsubscription (OverageLimitReached); "
        "run again when it resets"
    )
    outcome = await r.acquirer.acquire(first)
    assert isinstance(outcome, Outcome)
    assert (outcome.asset, outcome.status, outcome.error) == (
        first.asset,
        Status.WAITING_FOR_QUOTA,
        reason,
    )
    saved = await r.state(first)
    assert (saved.state, saved.error) == (AssetState.WAITING_FOR_QUOTA, reason)
    again = await r.acquirer.acquire(second)
    assert isinstance(again, Outcome) and again.error == reason
    assert _untimed(r.events) == [
        QuotaReached(t=0.0, product_type="editorialsubscription", reason=reason)
    ]
    assert await r.acquirer.acquire(other) == _grant(3)
    assert r.client.posts == ["1", "3"]


async def test_quota_reached_twice_for_one_product_is_announced_once(rig: Rig) -> None:
    """Two POSTs in flight both answered 403: one QuotaReached event, both rows wait."""
    over = QuotaExceededError("over", status=403)
    r = await rig(_Client([over, over]), [Asset("1"), Asset("2")])
    outcomes = await asyncio.gather(*(r.acquirer.acquire(record) for record in r.records))
    reason = "download limit reached for (default product) (HTTP 403); run again when it resets"
    assert [(o.status, o.error) for o in outcomes if isinstance(o, Outcome)] == [
        (Status.WAITING_FOR_QUOTA, reason)
    ] * 2
    assert r.client.posts == ["1", "2"]
    assert _untimed(r.events) == [QuotaReached(t=0.0, product_type=None, reason=reason)]
    assert (await r.state(r.records[1])).state is AssetState.WAITING_FOR_QUOTA


def _untimed(events: list[Event]) -> list[Event]:
    """The events with their timestamps zeroed, to compare them whole."""
    return [dataclasses.replace(e, t=0.0) for e in events]


async def test_a_shared_budget_spent_before_the_post_sends_nothing(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared ledger refuses the intent (its budget is spent): no POST, the slot is back."""
    r = await rig(_Client([_grant()]), limit=1)

    def refuse(key: str) -> None:
        raise QuotaExceededError("shared budget spent", status=403, code="LedgerBudget")

    monkeypatch.setattr(r.journal.journal, "record_intent", refuse)
    outcome = await r.acquirer.acquire(r.records[0])
    assert isinstance(outcome, Outcome) and outcome.status is Status.WAITING_FOR_QUOTA
    assert "LedgerBudget" in (outcome.error or "")
    assert r.client.posts == []
    assert r.acquirer.budget.used == 0


async def test_an_in_doubt_post_found_in_the_history_is_never_sent_again(rig: Rig) -> None:
    """The answer was lost and the history shows the spend: counted, the URI is lost, the
    asset fails with the --reacquire-expired advice, and the cap slot stays used."""
    client = _Client([LOST, LOST, _grant()], history=[_spend()])
    r = await rig(client, [Asset("1"), Asset("2")], limit=2)
    outcomes = [await r.acquirer.acquire(record) for record in r.records]
    for record, outcome in zip(r.records, outcomes, strict=True):
        assert isinstance(outcome, Outcome)
        assert (outcome.asset, outcome.status) == (record.asset, Status.FAILED)
        assert "--reacquire-expired" in (outcome.error or "")
        assert "the answer was lost" in (outcome.error or "")
        saved = await r.state(record)
        assert (saved.state, saved.spends, saved.error) == (AssetState.FAILED, 1, outcome.error)
    assert r.client.posts == ["1", "2"]
    assert r.client.asked == [("image", "1"), ("image", "2")]
    assert r.acquirer.spends == 2
    assert r.acquirer.budget.used == 2


async def test_an_in_doubt_post_absent_from_the_history_is_bought_again(rig: Rig) -> None:
    """History proves the lost POST spent nothing: the slot comes back and the retry buys."""
    r = await rig(_Client([LOST, _grant()], history=[]), limit=1, attempts=2)
    [record] = r.records
    assert await r.acquirer.acquire(record) == _grant()
    assert r.client.posts == ["1", "1"]
    saved = await r.state(record)
    assert (saved.state, saved.spends) == (AssetState.ACQUIRED, 1)
    assert r.acquirer.spends == 1
    assert r.clock.slept == [1.0]


async def test_an_in_doubt_post_cleared_by_the_history_is_left_pending(rig: Rig) -> None:
    """With no try left, a doubt the history cleared fails this run's row but leaves the
    asset pending in the journal (not counted) for the next run, and its cap slot free."""
    r = await rig(_Client([LOST], history=[]), limit=1, attempts=1)
    [record] = r.records
    outcome = await r.acquirer.acquire(record)
    assert isinstance(outcome, Outcome)
    assert (outcome.status, outcome.error) == (Status.FAILED, "the answer was lost")
    saved = await r.state(record)
    assert (saved.state, saved.spends, saved.error) == (AssetState.PENDING, 0, None)
    assert (r.acquirer.spends, r.acquirer.budget.used) == (0, 0)


async def test_an_in_doubt_post_whose_history_check_fails_stays_in_doubt(rig: Rig) -> None:
    """The history cannot be read: the asset fails as "in doubt", is not bought again in
    this run, and its cap slot stays used (it may have been charged)."""
    broken = ServerError("history down", status=503)
    r = await rig(_Client([LOST, _grant()], history=broken), limit=1, attempts=5)
    [record] = r.records
    outcome = await r.acquirer.acquire(record)
    assert isinstance(outcome, Outcome) and outcome.status is Status.FAILED
    assert outcome.error == (
        "in doubt: the download request failed (the answer was lost) and the download "
        "history could not be checked (history down); run again to resolve it"
    )
    assert r.client.posts == ["1"]
    saved = await r.state(record)
    assert (saved.state, saved.spends) == (AssetState.IN_DOUBT, 0)
    assert saved.error == "in doubt: the answer was lost"
    assert (r.acquirer.spends, r.acquirer.budget.used) == (0, 1)


@pytest.mark.parametrize(
    ("entry", "spent"),
    [
        ({"product": "editorialsubscription"}, True),
        ({"product": None}, True),  # the history does not name it: count it as ours
        ({"product": "royaltyfreesubscription"}, False),  # another product's download
        ({"ago": 200.0}, True),  # within HISTORY_SKEW of the intent: clocks differ
        ({"ago": acquire.HISTORY_SKEW + 300.0}, False),  # an older purchase
        ({"date": "not a date"}, True),  # unreadable: assume ours, never re-spend
        ({"date": "2020-01-01T00:00:00Z"}, False),  # "Z" is UTC: years old
    ],
    ids=[
        "same-product",
        "no-product",
        "other-product",
        "skewed",
        "older",
        "unreadable-date",
        "older-zulu",
    ],
)
async def test_which_history_entries_count_as_the_lost_post(
    rig: Rig, entry: dict[str, Any], spent: bool
) -> None:
    # The entry is dated when the test runs (not when it is collected: a long session would
    # make "now" entries older than the POST).
    r = await rig(
        _Client([LOST, _grant()], history=[_spend(**entry)]),
        [Asset("1", product_type="editorialsubscription")],
        attempts=2,
    )
    outcome = await r.acquirer.acquire(r.records[0])
    assert isinstance(outcome, Outcome) is spent
    assert len(r.client.posts) == (1 if spent else 2)


async def test_history_of_any_product_counts_for_an_asset_without_one(rig: Rig) -> None:
    r = await rig(_Client([LOST], history=[_spend(product="premiumaccess")]), attempts=2)
    outcome = await r.acquirer.acquire(r.records[0])
    assert isinstance(outcome, Outcome) and outcome.status is Status.FAILED
    assert r.client.posts == ["1"]


async def test_resolve_doubt_counts_a_crashed_runs_spend_found_in_the_history(rig: Rig) -> None:
    """An intent left by a crash, and the history shows the spend: counted, failed with the
    --reacquire-expired advice, never bought again."""
    r = await rig(_Client([], history=[_spend()]))
    record = await _crashed_intent(r)
    assert await r.acquirer.resolve_doubt(record) is True
    saved = await r.state(record)
    assert (saved.state, saved.spends) == (AssetState.FAILED, 1)
    assert saved.error == (
        "an earlier run's download was charged but its URI was lost; "
        "run again with --reacquire-expired to spend another download on it"
    )
    assert r.client.asked == [("image", "1")]
    assert r.client.posts == []


async def test_resolve_doubt_clears_a_crashed_intent_absent_from_the_history(rig: Rig) -> None:
    r = await rig(_Client([], history=[_spend(ago=acquire.HISTORY_SKEW + 600.0)]))
    record = await _crashed_intent(r)
    assert await r.acquirer.resolve_doubt(record) is False
    saved = await r.state(record)
    assert (saved.state, saved.spends, saved.error) == (AssetState.PENDING, 0, None)


async def test_resolve_doubt_propagates_a_history_failure_and_keeps_the_intent(rig: Rig) -> None:
    r = await rig(_Client([], history=ServerError("history down", status=503)))
    record = await _crashed_intent(r)
    with pytest.raises(ServerError):
        await r.acquirer.resolve_doubt(record)
    assert (await r.state(record)).state is AssetState.INTENT


async def _crashed_intent(r: _Rig) -> Record:
    """The asset as a crashed run left it: intent committed, no answer recorded."""
    key = r.records[0].key
    await r.journal.call(r.journal.journal.record_intent, key)
    record = await r.state(r.records[0])
    assert record.state is AssetState.INTENT and record.intent_at is not None
    return record


@pytest.mark.parametrize(
    ("dated", "spent"),
    [(1_000.0 - acquire.HISTORY_SKEW, True), (1_000.0 - acquire.HISTORY_SKEW - 0.5, False)],
    ids=["at-the-skew-bound", "just-before-it"],
)
async def test_a_spend_dated_exactly_at_the_skew_bound_counts(
    tmp_path: Path, dated: float, spent: bool
) -> None:
    acquirer, journal, record = await _acquirer(tmp_path, limit=None)
    when = datetime.fromtimestamp(dated, UTC).isoformat()
    acquirer.client = cast(Any, _Client([], history=[_spend(date=when)]))
    acquirer.history_settle = 0.0
    try:
        assert await acquirer.was_spent(record, since=1_000.0) is spent
    finally:
        await journal.close()


@pytest.mark.parametrize(
    ("since", "waits"), [(970.0, []), (970.5, [0.5])], ids=["settled", "half-a-second-left"]
)
async def test_the_settle_wait_is_exactly_what_is_left_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, since: float, waits: list[float]
) -> None:
    acquirer, journal, record = await _acquirer(tmp_path, limit=None)
    acquirer.client = cast(Any, _History())
    acquirer.history_settle = 30.0
    clock = _Asyncio()
    monkeypatch.setattr(acquire, "time", SimpleNamespace(time=lambda: 1_000.0))
    monkeypatch.setattr(acquire, "asyncio", clock)
    try:
        await acquirer.was_spent(record, since=since)
        assert clock.slept == waits
    finally:
        await journal.close()


# --- Purchases that must not be lost: stops, fatal errors, journal hiccups --------------------


@pytest.mark.parametrize(
    "fatal",
    [
        AuthenticationError("bad token", status=401),
        CertificateError("certificate refused"),
        ApiUnreachableError("no API"),
    ],
    ids=["token", "certificate", "unreachable"],
)
async def test_a_fatal_error_before_sending_stops_with_the_intent_withdrawn(
    rig: Rig, fatal: BulkGettyError
) -> None:
    r = await rig(_Client([fatal]), limit=1)
    [record] = r.records
    with pytest.raises(type(fatal)):
        await r.acquirer.acquire(record)
    saved = await r.state(record)
    assert (saved.state, saved.spends, saved.error) == (AssetState.PENDING, 0, None)
    assert r.acquirer.budget.used == 0


async def test_a_stopping_run_sends_no_new_purchase(rig: Rig) -> None:
    """After stop() no request leaves: the asset stays pending, nothing is counted."""
    r = await rig(_Client([_grant()]), limit=1)
    [record] = r.records
    r.acquirer.purchases.stop()
    outcome = await r.acquirer.acquire(record)
    assert isinstance(outcome, Outcome) and outcome.status is Status.FAILED
    assert outcome.error == "the run is stopping: the download request was not sent"
    assert r.client.posts == []
    assert (await r.state(record)).state is AssetState.PENDING
    assert r.acquirer.budget.used == 0


async def test_a_stop_while_the_intent_commits_withdraws_the_intent(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run stops while the intent is being committed: the request is not sent and the
    intent is taken back (pending, not "maybe spent" for the next run to resolve)."""
    r = await rig(_Client([_grant()]), limit=1)
    [record] = r.records
    real = r.journal.journal.record_intent

    def intent_then_stop(key: str) -> None:
        real(key)
        r.acquirer.purchases.stopping = True

    monkeypatch.setattr(r.journal.journal, "record_intent", intent_then_stop)
    outcome = await r.acquirer.acquire(record)
    assert isinstance(outcome, Outcome) and outcome.status is Status.FAILED
    assert r.client.posts == []
    saved = await r.state(record)
    assert (saved.state, saved.spends, saved.attempts) == (AssetState.PENDING, 0, 1)
    assert r.acquirer.budget.used == 0


async def test_a_refused_intent_fails_the_asset_and_sends_nothing(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal refuses the intent (a shared ledger's claim was lost): nothing was sent, so
    the asset fails (another worker holds it) and the run goes on; the cap slot comes back."""
    r = await rig(_Client([_grant()]), limit=1)

    def refuse(key: str) -> None:
        raise JournalError("the claim is gone")

    monkeypatch.setattr(r.journal.journal, "record_intent", refuse)
    outcome = await r.acquirer.acquire(r.records[0])
    assert isinstance(outcome, Outcome) and outcome.status is Status.FAILED
    assert outcome.error == "the claim is gone"
    assert r.client.posts == []
    assert r.acquirer.budget.used == 0


async def test_a_uri_is_committed_through_journal_hiccups(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """record_acquired fails twice, then commits: the paid URI is kept, counted once."""
    r = await rig(_Client([_grant()]))
    [record] = r.records
    real = r.journal.journal.record_acquired
    failures = [JournalError("busy"), JournalError("busy")]

    def flaky(key: str, uri: str, expires: float) -> None:
        if failures:
            raise failures.pop()
        real(key, uri, expires)

    monkeypatch.setattr(r.journal.journal, "record_acquired", flaky)
    assert await r.acquirer.acquire(record) == _grant()
    assert r.clock.slept == [0.5, 1.0]
    saved = await r.state(record)
    assert (saved.state, saved.uri, saved.spends) == (AssetState.ACQUIRED, _grant().uri, 1)
    assert r.acquirer.spends == 1
    assert len(r.events) == 1


async def test_a_uri_the_journal_never_takes_is_still_counted_as_spent(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = await rig(_Client([_grant()]))

    def broken(key: str, uri: str, expires: float) -> None:
        raise JournalError("gone")

    monkeypatch.setattr(r.journal.journal, "record_acquired", broken)
    with pytest.raises(JournalError):
        await r.acquirer.acquire(r.records[0])
    assert r.clock.slept == [0.5, 1.0, 1.5, 2.0]  # COMMIT_TRIES = 5
    assert r.acquirer.spends == 1
    assert r.events == []


async def test_a_throttled_post_waits_what_the_server_asked(rig: Rig) -> None:
    slow_down = RateLimitedError("429", status=429, retry_after=7.0)
    r = await rig(_Client([slow_down, _grant()]), limit=1)
    assert await r.acquirer.acquire(r.records[0]) == _grant()
    assert r.clock.slept == [7.0]
    assert r.client.posts == ["1", "1"]


async def test_maybe_spent_counts_the_doubts_not_yet_resolved(rig: Rig) -> None:
    """A doubt counts until the history settles it either way; a failed check keeps it."""
    r = await rig(_Client([LOST, _grant()], history=[]), attempts=2)
    assert await r.acquirer.acquire(r.records[0]) == _grant()
    assert r.acquirer.maybe_spent == 0
    r2 = await rig(_Client([LOST], history=ServerError("down", status=503)), attempts=2)
    await r2.acquirer.acquire(r2.records[0])
    assert r2.acquirer.maybe_spent == 1


async def test_the_settle_counts_from_the_answer_and_the_window_from_the_sending(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A POST sent at t=1000 whose answer was lost at t=1010: the history is read 30 s after
    the answer (not the intent), and a spend dated down to 1000 - HISTORY_SKEW counts."""
    now = [1_000.0]
    monkeypatch.setattr(acquire, "time", SimpleNamespace(time=lambda: now[0]))
    bound = datetime.fromtimestamp(1_000.0 - acquire.HISTORY_SKEW, UTC).isoformat()

    class _Slow(_Client):
        async def download(
            self, asset: Asset, *, before_send: Callable[[], Awaitable[None]] | None = None
        ) -> DownloadGrant:
            assert before_send is not None
            await before_send()
            now[0] += 10.0  # the answer is lost ten seconds later
            raise LOST

    r = await rig(_Slow([], history=[_spend(date=bound)]), limit=1)
    r.acquirer.history_settle = 30.0
    outcome = await r.acquirer.acquire(r.records[0])
    assert isinstance(outcome, Outcome) and outcome.status is Status.FAILED
    assert r.clock.slept == [30.0]
    assert r.acquirer.spends == 1


# --- resolve_doubt: an intent left by a crash -------------------------------------------------


async def _left_at(r: _Rig, intent_at: float) -> Record:
    """The asset as a crashed run left it, its intent dated `intent_at`."""
    return dataclasses.replace(await _crashed_intent(r), intent_at=intent_at)


@pytest.mark.parametrize(
    ("started_at", "wait"),
    [(1_000.0, 60.0), (950.0, 50.0)],
    ids=["send-bound-before-the-run", "run-started-sooner"],
)
async def test_resolve_doubt_waits_from_the_latest_moment_the_crashed_post_could_answer(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, started_at: float, wait: float
) -> None:
    """Intent at 900, a POST answers within 60 s (send_bound): its spend may show from 960,
    but never later than the start of this run (the sender was dead by then)."""
    monkeypatch.setattr(acquire, "time", SimpleNamespace(time=lambda: 1_000.0))
    r = await rig(_Client([], history=[]))
    r.acquirer.history_settle = 100.0
    r.acquirer.send_bound = 60.0
    r.acquirer.started_at = started_at
    assert await r.acquirer.resolve_doubt(await _left_at(r, 900.0)) is False
    assert r.clock.slept == [wait]


@pytest.mark.parametrize(
    ("dated", "spent"),
    [(900.0 - acquire.HISTORY_SKEW, True), (900.0 - acquire.HISTORY_SKEW - 0.5, False)],
    ids=["at-the-skew-bound", "just-before-it"],
)
async def test_resolve_doubt_dates_the_window_from_the_intent(
    rig: Rig, dated: float, spent: bool
) -> None:
    when = datetime.fromtimestamp(dated, UTC).isoformat()
    r = await rig(_Client([], history=[_spend(date=when)]))
    r.acquirer.send_bound = 60.0
    assert await r.acquirer.resolve_doubt(await _left_at(r, 900.0)) is spent


@pytest.mark.parametrize(("reserved", "limit"), [(True, 3), (False, 2)])
async def test_a_crashed_intent_proven_unspent_gives_a_reserved_download_back(
    rig: Rig, reserved: bool, limit: int
) -> None:
    """With a cap over all runs, an earlier run's intent was counted out of the limit up
    front: once the history clears it, that download is available again."""
    r = await rig(_Client([], history=[]), limit=2)
    r.acquirer.doubts_reserved = reserved
    assert await r.acquirer.resolve_doubt(await _crashed_intent(r)) is False
    assert r.acquirer.budget.limit == limit


async def test_a_crashed_intent_found_spent_keeps_the_reserved_download(rig: Rig) -> None:
    r = await rig(_Client([], history=[_spend()]), limit=2)
    r.acquirer.doubts_reserved = True
    assert await r.acquirer.resolve_doubt(await _crashed_intent(r)) is True
    assert r.acquirer.budget.limit == 2


def test_release_reserved_leaves_no_cap_uncapped() -> None:
    budget = Budget(None)
    budget.release_reserved()
    assert budget.limit is None


@pytest.mark.parametrize(
    ("date", "spent"),
    [("1970-01-01T00:10:00", True), ("1970-01-01T00:04:00", False)],
    ids=["inside", "outside"],
)
async def test_a_history_date_without_a_zone_is_utc_on_any_machine(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, date: str, spent: bool
) -> None:
    """Intent at epoch 600 (00:10 UTC): a naive 00:10 is that moment in UTC, not in Tokyo
    (nine hours earlier, which would read as "not spent"); a naive 00:04 is outside."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        r = await rig(_Client([], history=[_spend(date=date)]))
        r.acquirer.send_bound = 0.0
        assert await r.acquirer.resolve_doubt(await _left_at(r, 600.0)) is spent
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
