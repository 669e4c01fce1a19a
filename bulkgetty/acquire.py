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
from datetime import datetime

from .api import DownloadGrant, GettyClient, HistoryItem
from .backend import AsyncJournalLike
from .config import HISTORY_SETTLE
from .errors import (
    AuthenticationError,
    BulkGettyError,
    CertificateError,
    QuotaExceededError,
)
from .events import AssetAcquired, Event, QuotaReached
from .journal import AssetState, Record
from .plan import reacquire_message
from .report import Outcome, Status
from .retry import RetryPolicy

__all__ = ("HISTORY_SKEW", "Acquirer", "Budget")

#: How far before our own intent a history entry may be dated and still count as our spend
#: (clock skew between this machine and Getty's).
HISTORY_SKEW = 300.0


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
    history_settle: float = HISTORY_SETTLE

    async def acquire(self, record: Record) -> DownloadGrant | Outcome:
        """POST for one asset, or say why not. Raises only AuthenticationError, CertificateError."""
        attempt = 0
        while True:
            attempt += 1
            refused = await self._refusal(record)
            if refused is not None:
                return refused
            result = await self._post_once(record)
            if not isinstance(result, BulkGettyError):
                return result
            if not (result.retryable and attempt < self.policy.attempts):
                return self._failed(record, str(result))
            await asyncio.sleep(self.policy.delay(attempt))

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

    async def _post_once(self, record: Record) -> DownloadGrant | Outcome | BulkGettyError:
        """One POST with its journal brackets. A returned error certainly spent nothing."""
        j = self.journal
        intent_at = time.time()
        try:
            await j.call(j.journal.record_intent, record.key)
        except QuotaExceededError as exc:  # a shared ledger's budget is spent: nothing sent
            self.budget.give_back()
            return await self._quota_reached(record, exc)
        try:
            grant = await self.client.download(record.asset)
        except QuotaExceededError as exc:
            self.budget.give_back()
            return await self._quota_reached(record, exc)
        except (AuthenticationError, CertificateError):  # fatal for the run, nothing sent
            self.budget.give_back()
            await j.call(j.journal.record_not_spent, record.key, AssetState.PENDING, None)
            raise
        except BulkGettyError as exc:
            if exc.may_have_spent:
                return await self._in_doubt(record, exc, intent_at)
            self.budget.give_back()
            await j.call(j.journal.record_not_spent, record.key, AssetState.FAILED, str(exc))
            return exc
        await j.call(j.journal.record_acquired, record.key, grant.uri, grant.expires_at)
        self.spends += 1
        a = record.asset
        self.emit(
            AssetAcquired(
                id=a.id, asset_type=a.asset_type, product_type=a.product_type, spends=self.spends
            )
        )
        return grant

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

    async def _in_doubt(
        self, record: Record, exc: BulkGettyError, intent_at: float
    ) -> Outcome | BulkGettyError:
        """The POST may have been charged: ask the history before anything else."""
        j = self.journal
        await j.call(j.journal.record_in_doubt, record.key, f"in doubt: {exc}")
        try:
            spent = await self.was_spent(record, since=intent_at)
        except BulkGettyError as hist_exc:
            return self._failed(
                record,
                f"in doubt: the download request failed ({exc}) and the download history could "
                f"not be checked ({hist_exc}); run again to resolve it",
            )
        if spent:
            self.spends += 1
            why = f"the download was charged but its URI was lost ({exc})"
            await j.call(j.journal.record_spent_without_uri, record.key, reacquire_message(why))
            return self._failed(record, reacquire_message(why))
        self.budget.give_back()
        await j.call(j.journal.record_cleared_doubt, record.key)
        return exc

    async def resolve_doubt(self, record: Record) -> bool:
        """For an intent left by a crash: True if the history shows it was charged."""
        spent = await self.was_spent(record, since=record.intent_at or 0.0)
        j = self.journal
        if spent:
            why = "an earlier run's download was charged but its URI was lost"
            await j.call(j.journal.record_spent_without_uri, record.key, reacquire_message(why))
        else:
            await j.call(j.journal.record_cleared_doubt, record.key)
        return spent

    async def was_spent(self, record: Record, *, since: float) -> bool:
        """Whether the history shows a spend of this asset since `since` (our intent).

        Asked no sooner than `history_settle` seconds after `since`, so a spend still on
        its way into the history is not read as "nothing was spent".
        """
        settle = since + self.history_settle - time.time()
        if settle > 0:
            await asyncio.sleep(settle)
        a = record.asset
        items = await self.client.asset_download_history(a.asset_type, a.id)
        return any(_matches(item, record, since - HISTORY_SKEW) for item in items)

    def _failed(self, record: Record, error: str) -> Outcome:
        return Outcome(record.asset, Status.FAILED, error=error)


def _matches(item: HistoryItem, record: Record, since: float) -> bool:
    if record.asset.product_type and item.product_type not in (None, record.asset.product_type):
        return False
    return _epoch(item.date_downloaded) >= since


def _epoch(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("inf")  # unreadable date: assume it is ours, never re-spend on a guess
