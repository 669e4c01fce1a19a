"""Buy delivery URIs: one POST per asset identity, within quota, never twice.

Every successful `POST /v3/downloads/...` spends a licensed download and Getty has no
idempotency key. So each POST is bracketed by journal commits (intent before, URI after), the
run's hard cap (`--max-downloads`) is reserved before the request leaves, and a POST that may
have been charged without an answer is resolved through the download history instead of
being sent again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bulkgetty.config import HISTORY_SETTLE
from bulkgetty.errors import (
    ApiUnreachableError,
    AuthenticationError,
    BulkGettyError,
    CertificateError,
    JournalError,
    QuotaExceededError,
    RateLimitedError,
)
from bulkgetty.events import AssetAcquired, Event, QuotaReached
from bulkgetty.getty.api import DownloadGrant, GettyClient, HistoryItem
from bulkgetty.getty.retry import RetryPolicy
from bulkgetty.stages.backend import AsyncJournalLike
from bulkgetty.stages.decide import reacquire_message
from bulkgetty.stages.journal import AssetState, Record
from bulkgetty.stages.purchases import Purchase, Purchases, PurchaseStopped
from bulkgetty.stages.report import Outcome, Status

__all__ = ("HISTORY_SKEW", "Acquirer", "Budget")

#: How far before our own intent a history entry may be dated and still count as our spend
#: (clock skew between this machine and Getty's).
HISTORY_SKEW = 300.0
#: `record_acquired` is tried this often (waiting COMMIT_RETRY_WAIT x try between) before the
#: URI is given up: a journal that hiccups must not cost a paid download.
COMMIT_TRIES = 5
COMMIT_RETRY_WAIT = 0.5


@dataclass(frozen=True, slots=True)
class _Doubt:
    """A POST that may have been charged, and when its outcome was known."""

    error: BulkGettyError
    #: The request left at `sent_at` (a spend is dated no earlier) and its outcome was known
    #: at `answered_at` (the settle time counts from there).
    sent_at: float
    answered_at: float


@dataclass(slots=True)
class Budget:
    """The run's hard cap on POSTs that may spend, safe at any concurrency.

    A slot is taken before a POST leaves and given back only when the answer proves nothing
    was spent, so in-flight and in-doubt requests count against the cap.
    """

    limit: int | None
    used: int = 0

    def take(self) -> bool:
        if self.limit is not None and self.used >= self.limit:
            return False
        self.used += 1
        return True

    def give_back(self) -> None:
        self.used -= 1

    def release_reserved(self) -> None:
        """An earlier run's doubt, counted out of the limit up front, proved unspent."""
        if self.limit is not None:
            self.limit += 1


@dataclass(slots=True)
class QuotaGate:
    """Product types whose limit was reached: no new POST starts for them in this run."""

    exhausted: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def product(record: Record) -> str:
        return record.asset.product_type or "(default product)"

    def closed(self, record: Record) -> str | None:
        return self.exhausted.get(self.product(record))


@dataclass(slots=True)
class Acquirer:
    client: GettyClient
    journal: AsyncJournalLike
    budget: Budget
    policy: RetryPolicy
    emit: Callable[[Event], None]
    quota: QuotaGate = field(default_factory=QuotaGate)
    spends: int = 0
    #: POSTs of this run that may have been charged and are not resolved either way.
    maybe_spent: int = 0
    history_settle: float = HISTORY_SETTLE
    #: The longest a POST can take after its intent is committed (connecting, then its
    #: answer): an intent left by a crash is dated this much later for the settle time.
    send_bound: float = 0.0
    purchases: Purchases = field(default_factory=Purchases)
    started_at: float = field(default_factory=time.time)
    #: The budget's limit already excludes earlier runs' unresolved intents (a cap over all
    #: runs of a folder): one that proves unspent gives its download back.
    doubts_reserved: bool = False

    async def acquire(self, record: Record) -> DownloadGrant | Outcome:
        """POST for one asset, or say why not. Raises only the fatal errors: AuthenticationError,
        CertificateError, ApiUnreachableError."""
        attempt = 0
        while True:
            attempt += 1
            refused = await self._refusal(record)
            if refused is not None:
                return refused
            result = await self.purchases.run(lambda p: self._post_once(record, p))
            if isinstance(result, _Doubt):
                result = await self._resolve_live_doubt(record, result)
            if not isinstance(result, BulkGettyError):
                return result
            if not (result.retryable and attempt < self.policy.attempts):
                return self._failed(record, str(result))
            after = result.retry_after if isinstance(result, RateLimitedError) else None
            await asyncio.sleep(self.policy.delay(attempt, retry_after=after))

    def refused_now(self, record: Record) -> Outcome | None:
        """The refusal `acquire` would give right now, without taking a budget slot.

        The planner asks first, so that once the quota or the cap is closed the rest of a
        huge manifest is put aside in batches instead of queueing for an acquirer one by one.
        The cap counts as closed here only when downloads actually spent fill it: a slot
        held by a POST in flight may still come back (404, refused), and a row queued for an
        acquirer could then use it.
        """
        reason = self.quota.closed(record)
        limit = self.budget.limit
        if reason is None and limit is not None and self.spends >= limit:
            reason = self._cap_reason()
        return self._wait(record, reason) if reason is not None else None

    async def _refusal(self, record: Record) -> Outcome | None:
        reason = self.quota.closed(record)
        if reason is None and not self.budget.take():
            reason = self._cap_reason()
        return self._wait(record, reason) if reason is not None else None

    def _cap_reason(self) -> str:
        return f"--max-downloads {self.budget.limit} reached in this run"

    def _wait(self, record: Record, reason: str) -> Outcome:
        self.journal.stage_waiting(record.key, reason)
        return Outcome(record.asset, Status.WAITING_FOR_QUOTA, error=reason)

    async def _post_once(
        self, record: Record, purchase: Purchase
    ) -> DownloadGrant | Outcome | BulkGettyError | _Doubt:
        """One POST with its journal brackets, run as its own task (see purchases.py).

        The intent is committed right before the request may leave (after the limiter and the
        token), and every outcome is committed here, in this task, so that no cancellation of
        the run drops a URI that arrived. A returned error certainly spent nothing.
        """
        j = self.journal
        intent = False
        sent_at = 0.0

        async def before_send() -> None:
            nonlocal intent, sent_at
            purchase.committing()
            intent = True
            await j.call(j.journal.record_intent, record.key)
            purchase.sending()
            sent_at = time.time()

        try:
            grant = await self.client.download(record.asset, before_send=before_send)
        except QuotaExceededError as exc:  # Getty's limit, or the shared ledger's budget
            self.budget.give_back()
            return await self._quota_reached(record, exc)
        except (AuthenticationError, CertificateError, ApiUnreachableError):  # fatal, nothing sent
            self.budget.give_back()
            if intent:
                await j.call(j.journal.record_not_spent, record.key, AssetState.PENDING, None)
            raise
        except PurchaseStopped as exc:
            self.budget.give_back()
            if intent:
                await j.call(j.journal.record_not_spent, record.key, AssetState.PENDING, None)
            return exc
        except JournalError as exc:
            if purchase.sent:
                raise  # spent, and the journal cannot say so: the run stops (see engine)
            self.budget.give_back()  # the intent was refused (a claim lost): nothing sent
            return exc
        except BulkGettyError as exc:
            if exc.may_have_spent:
                # The settle time counts from here: the answer (or its loss) is what can
                # still be on its way into the history, not the intent.
                answered_at = time.time()
                self.maybe_spent += 1
                await j.call(j.journal.record_in_doubt, record.key, f"in doubt: {exc}")
                return _Doubt(exc, sent_at, answered_at)
            self.budget.give_back()
            if intent:
                await j.call(j.journal.record_not_spent, record.key, AssetState.FAILED, str(exc))
            return exc
        except asyncio.CancelledError:
            if intent and not purchase.sent:  # stopped while committing the intent
                self.budget.give_back()
                await j.call(j.journal.record_not_spent, record.key, AssetState.PENDING, None)
            raise
        await self._commit_grant(record, grant)
        return grant

    async def _commit_grant(self, record: Record, grant: DownloadGrant) -> None:
        """The URI is the paid download: commit it, trying again if the journal hiccups."""
        j = self.journal
        for attempt in range(1, COMMIT_TRIES + 1):
            try:
                await j.call(j.journal.record_acquired, record.key, grant.uri, grant.expires_at)
                break
            except JournalError:
                if attempt == COMMIT_TRIES:
                    self.spends += 1  # spent all the same: the account must say so
                    raise
                await asyncio.sleep(COMMIT_RETRY_WAIT * attempt)
        self.spends += 1
        a = record.asset
        self.emit(
            AssetAcquired(
                id=a.id, asset_type=a.asset_type, product_type=a.product_type, spends=self.spends
            )
        )

    async def _quota_reached(self, record: Record, exc: QuotaExceededError) -> Outcome:
        product = QuotaGate.product(record)
        code = exc.code or f"HTTP {exc.status}"
        reason = f"download limit reached for {product} ({code}); run again when it resets"
        if product not in self.quota.exhausted:
            self.quota.exhausted[product] = reason
            self.emit(QuotaReached(product_type=record.asset.product_type, reason=reason))
        await self.journal.call(
            self.journal.journal.record_not_spent, record.key, AssetState.WAITING_FOR_QUOTA, reason
        )
        return Outcome(record.asset, Status.WAITING_FOR_QUOTA, error=reason)

    async def _resolve_live_doubt(self, record: Record, doubt: _Doubt) -> Outcome | BulkGettyError:
        """The POST may have been charged: ask the history before anything else."""
        j = self.journal
        exc = doubt.error
        try:
            spent = await self.was_spent(
                record, since=doubt.answered_at, window_start=doubt.sent_at
            )
        except BulkGettyError as hist_exc:
            return self._failed(
                record,
                f"in doubt: the download request failed ({exc}) and the download history could "
                f"not be checked ({hist_exc}); run again to resolve it",
            )
        self.maybe_spent -= 1
        if spent:
            self.spends += 1
            why = f"the download was charged but its URI was lost ({exc})"
            await j.call(j.journal.record_spent_without_uri, record.key, reacquire_message(why))
            return self._failed(record, reacquire_message(why))
        self.budget.give_back()
        await j.call(j.journal.record_cleared_doubt, record.key)
        return exc  # proven not spent: the caller may try again

    async def resolve_doubt(self, record: Record) -> bool:
        """For an intent left by a crash: True if the history shows it was charged."""
        # The intent is committed right before the request leaves; Getty may record the spend
        # up to `send_bound` later (connecting, then its answer), but never after the process
        # that sent it died, which was before this run started.
        intent_at = record.intent_at or 0.0
        since = min(intent_at + self.send_bound, self.started_at)
        spent = await self.was_spent(record, since=since, window_start=intent_at)
        j = self.journal
        if spent:
            why = "an earlier run's download was charged but its URI was lost"
            await j.call(j.journal.record_spent_without_uri, record.key, reacquire_message(why))
        else:
            await j.call(j.journal.record_cleared_doubt, record.key)
            if self.doubts_reserved:
                self.budget.release_reserved()
        return spent

    async def was_spent(
        self, record: Record, *, since: float, window_start: float | None = None
    ) -> bool:
        """Whether the history shows a spend of this asset at or after `window_start`.

        Asked no sooner than `history_settle` seconds after `since` (when the POST's outcome
        was known), so a spend still on its way into the history is not read as "nothing was
        spent". `window_start` (default: `since`) is the earliest the spend can be dated.
        """
        settle = since + self.history_settle - time.time()
        if settle > 0:
            await asyncio.sleep(settle)
        a = record.asset
        items = await self.client.asset_download_history(a.asset_type, a.id)
        start = since if window_start is None else window_start
        return any(_matches(item, record, start - HISTORY_SKEW) for item in items)

    def _failed(self, record: Record, error: str) -> Outcome:
        return Outcome(record.asset, Status.FAILED, error=error)


def _matches(item: HistoryItem, record: Record, since: float) -> bool:
    if record.asset.product_type and item.product_type not in (None, record.asset.product_type):
        return False
    return _epoch(item.date_downloaded) >= since


def _epoch(iso: str) -> float:
    """A history date as epoch seconds; a date that cannot be placed counts as a spend.

    Getty writes UTC, sometimes without a zone: such a date is UTC, never this machine's
    local time (east of UTC a local reading would date a fresh spend hours too early and
    take it for "not spent").
    """
    try:
        when = datetime.fromisoformat(iso.strip().replace("Z", "+00:00"))
    except ValueError:
        return float("inf")  # unreadable date: assume it is ours, never re-spend on a guess
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
