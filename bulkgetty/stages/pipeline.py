r"""The run's stages as tasks joined by bounded channels (channel.py).

A million-row manifest flows at flat memory, and acquiring runs only a bounded window ahead of
transferring (URIs expire, and spend should not run far ahead of the bytes):

    rows --plan--> [acquire stream] --acquire x N--> [transfer stream] --transfer x N--> report
                \______________ already acquired, URI still valid ____/

The planner reads the journal for each batch of rows and decides (plan.py) what each needs;
the workers hand single assets to `AssetSteps` (steps.py). Everything one run shares lives in
`RunContext`, so the stages and the steps read the same counters and the same fatal error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
import anyio

from bulkgetty.assets import Asset
from bulkgetty.config import RunOptions
from bulkgetty.errors import BulkGettyError
from bulkgetty.events import (
    MAX_IN_FLIGHT,
    AssetDone,
    AssetFailed,
    AssetWaiting,
    Event,
    InFlight,
    Progress,
)
from bulkgetty.getty.retry import RetryPolicy
from bulkgetty.stages.acquire import Acquirer
from bulkgetty.stages.backend import AsyncJournalLike
from bulkgetty.stages.channel import Channel, Sender
from bulkgetty.stages.decide import Action, decide
from bulkgetty.stages.files import OutputDir
from bulkgetty.stages.journal import Record
from bulkgetty.stages.report import Outcome, ReportWriter, RunSummary, Status
from bulkgetty.stages.steps import DOUBT, AssetSteps, Flight, Work
from bulkgetty.stages.transfer import TransferResult, transfer

__all__ = ("Pipeline", "Rows", "RunContext", "aiter_rows")

PLAN_BATCH: Final = 500
#: Progress events and journal progress flushes happen at most this often.
TICK: Final = 0.5

Rows = Iterable[Asset] | AsyncIterable[Asset]


@dataclass(slots=True)
class RunContext:
    """What one run's stages and steps share."""

    options: RunOptions
    journal: AsyncJournalLike
    out: OutputDir
    acquirer: Acquirer
    report: ReportWriter
    policy: RetryPolicy
    delivery_session: aiohttp.ClientSession
    emit: Callable[[Event], None]
    #: `stages.transfer.transfer`, or a worker pool's call of the same signature.
    transfer: Callable[..., Awaitable[TransferResult]] = transfer
    #: Whether a worker process died during this run (a whole file it renamed may be unowned).
    workers_died: Callable[[], bool] = lambda: False
    summary: RunSummary = field(default_factory=RunSummary)
    started_wall: float = field(default_factory=time.time)
    #: Rows the planner has read, and assets it has looked up.
    rows_read: int = 0
    seen: int = 0
    bytes_moved: int = 0
    #: Assets read from the rows and not yet finished (bounded by the stream windows).
    pending: dict[bytes, Asset] = field(default_factory=dict)
    flights: dict[str, Flight] = field(default_factory=dict)
    #: The error that stopped the run from buying (refused credentials, the journal...).
    fatal: BulkGettyError | None = None

    def abort(self, error: BulkGettyError) -> None:
        """A fatal error: start no new purchase, keep what is done.

        Nothing is cancelled: a POST in flight is let finish (cancelling it would leave a
        charged download without its URI), and what was bought is still transferred.
        """
        if self.fatal is None:
            self.fatal = error

    def spent_or_maybe(self) -> bool:
        """Whether this run spent, or may have spent, a download (then it never exits 2)."""
        return self.acquirer.spends > 0 or self.acquirer.maybe_spent > 0

    def finish(self, outcome: Outcome) -> None:
        """One asset is settled: count it, write its report row, tell the listeners."""
        self.pending.pop(outcome.asset.digest, None)
        self.summary.count(outcome)
        row = self.report.write(outcome)
        a = outcome.asset
        if outcome.status is Status.FAILED:
            self.emit(AssetFailed(id=a.id, asset_type=a.asset_type, error=row.error or ""))
        elif outcome.status is Status.WAITING_FOR_QUOTA:
            self.emit(AssetWaiting(id=a.id, asset_type=a.asset_type, error=row.error or ""))
        else:
            self.emit(
                AssetDone(
                    id=a.id,
                    asset_type=a.asset_type,
                    status=outcome.status.value,
                    path=row.path,
                    bytes=outcome.size,
                    sha256=outcome.sha256,
                )
            )


class Pipeline:
    """Plan, acquire and transfer workers over one run's rows (see the module docstring)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.steps = AssetSteps(ctx)

    async def run(self, rows: Rows, run_id: int) -> None:
        window = self.ctx.options.window
        acquiring = Channel[Record](window)
        transferring = Channel[Work](window)
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._ticker)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._plan, rows, run_id, acquiring.sender(), transferring.sender())
                for _ in range(self.ctx.options.concurrency):
                    tg.start_soon(self._acquire_worker, acquiring, transferring.sender())
                    tg.start_soon(self._transfer_worker, transferring)
            outer.cancel_scope.cancel()

    async def report_unprocessed(self, rows: Rows) -> None:
        """After a fatal error mid-run, one report row for every asset not yet finished.

        Those read but not finished are in `pending`; the rows the planner never read follow
        from the same iterator (a re-iterable is skipped past what was read).
        """
        ctx = self.ctx
        why = f"not processed: the run stopped ({ctx.fatal}); run the same command again"
        for asset in list(ctx.pending.values()):
            ctx.finish(Outcome(asset, Status.FAILED, error=why))
        skip = 0 if isinstance(rows, Iterator | AsyncIterator) else ctx.rows_read
        async for asset in aiter_rows(rows):  # rows are unique here (see Downloader.run)
            if skip:
                skip -= 1
            else:
                ctx.finish(Outcome(asset, Status.FAILED, error=why))

    async def _ticker(self) -> None:
        """Flush batched journal progress and emit progress events at a bounded rate."""
        ctx = self.ctx
        while True:
            await anyio.sleep(TICK)
            await ctx.journal.flush()
            ctx.emit(
                Progress(
                    files_done=ctx.summary.assets,
                    files_total_seen=ctx.seen,
                    bytes_done=ctx.bytes_moved,
                    spends=ctx.acquirer.spends,
                    in_flight=self._largest_flights(),
                )
            )

    def _largest_flights(self) -> tuple[InFlight, ...]:
        flights = sorted(
            self.ctx.flights.values(), key=lambda f: (f.total or f.done, f.done), reverse=True
        )
        return tuple(
            InFlight(id=f.asset.id, asset_type=f.asset.asset_type, bytes_done=f.done, total=f.total)
            for f in flights[:MAX_IN_FLIGHT]
        )

    # stage: plan -----------------------------------------------------------------------

    async def _plan(
        self,
        rows: Rows,
        run_id: int,
        acq: Sender[Record],
        xfer: Sender[Work],
    ) -> None:
        ctx = self.ctx
        async with acq, xfer:
            batch: list[Asset] = []
            async for asset in aiter_rows(rows):
                ctx.rows_read += 1
                ctx.pending[asset.digest] = asset
                if ctx.fatal is not None:
                    return  # the rest is reported by report_unprocessed
                batch.append(asset)
                if len(batch) >= (ctx.options.plan_batch or PLAN_BATCH):
                    await self._plan_batch(batch, run_id, acq, xfer)
                    batch = []
            if batch and ctx.fatal is None:
                await self._plan_batch(batch, run_id, acq, xfer)

    async def _plan_batch(
        self,
        batch: list[Asset],
        run_id: int,
        acq: Sender[Record],
        xfer: Sender[Work],
    ) -> None:
        ctx = self.ctx
        j = ctx.journal
        records = await j.call(j.journal.upsert, batch, run_id)
        ctx.seen += len(records)
        now = time.time()
        out_dir = Path(ctx.out.path)
        reacquire = ctx.options.reacquire_expired
        decisions = await asyncio.to_thread(
            lambda: [
                decide(r, now=now, out_dir=out_dir, reacquire_expired=reacquire) for r in records
            ]
        )
        for record, decision in zip(records, decisions, strict=True):
            if decision.action is Action.ALREADY_DONE:
                ctx.finish(
                    Outcome(
                        record.asset,
                        Status.ALREADY_DONE,
                        path=record.path,
                        size=record.bytes,
                        sha256=record.sha256,
                    )
                )
            elif decision.action is Action.TRANSFER:
                assert record.uri is not None
                await xfer.send(Work(record, record.uri))
            elif decision.action is Action.FAIL:
                await j.call(j.journal.record_failed, record.key, decision.reason)
                ctx.finish(Outcome(record.asset, Status.FAILED, error=decision.reason))
            elif decision.action is Action.ACQUIRE and (
                refused := ctx.acquirer.refused_now(record)
            ):
                ctx.finish(refused)
            else:
                await acq.send(record)

    # stage: acquire --------------------------------------------------------------------

    async def _acquire_worker(self, inbox: Channel[Record], xfer: Sender[Work]) -> None:
        async with xfer:
            async for record in inbox:
                if self.ctx.fatal is not None:
                    continue  # stays pending: reported as not processed
                result = await self.steps.buy(record)
                if isinstance(result, Outcome):
                    self.ctx.finish(result)
                elif result is not None:
                    # An asset paid for before (or maybe, when in doubt) was bought again.
                    rebought = record.spends > 0 or record.state in DOUBT
                    await xfer.send(Work(record, result.uri, rebought=rebought))

    # stage: transfer -------------------------------------------------------------------

    async def _transfer_worker(self, inbox: Channel[Work]) -> None:
        async for work in inbox:
            self.ctx.finish(await self.steps.fetch(work))


async def aiter_rows(rows: Rows) -> AsyncIterator[Asset]:
    """Rows as one async iterator; a huge in-memory list yields to the workers now and then."""
    if isinstance(rows, AsyncIterable):
        async for row in rows:
            yield row
    else:
        for i, row in enumerate(rows):
            yield row
            if i % 256 == 255:
                await asyncio.sleep(0)
