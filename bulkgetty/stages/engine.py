r"""The run: manifest rows in, files, journal and report out.

`Downloader` owns what outlives one run (the folder, the journal, the HTTP sessions, the token
and the rate limiter) and what every way out of a run must do: wait for the purchases on the
wire, report every asset, close the run in the journal, and exit 2 only when nothing was spent.
The stages themselves are in pipeline.py, one asset's steps in steps.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, final

import anyio

from bulkgetty.assets import Asset, DigestTable
from bulkgetty.config import RunOptions, api_url_from_env
from bulkgetty.errors import BulkGettyError, DiskFullError, StorageError, UsageError
from bulkgetty.events import Event, Progress, RunFinished, RunStarted
from bulkgetty.getty.api import GettyClient
from bulkgetty.getty.auth import Credentials, TokenProvider
from bulkgetty.getty.http import Timeouts, check_url_scheme, new_session
from bulkgetty.getty.ratelimit import RateLimiter
from bulkgetty.getty.retry import RetryPolicy
from bulkgetty.stages.acquire import Acquirer, Budget
from bulkgetty.stages.backend import AsyncJournalLike
from bulkgetty.stages.files import OutputDir
from bulkgetty.stages.journal import AsyncJournal, on_memory_filesystem
from bulkgetty.stages.pipeline import Pipeline, Rows, RunContext, aiter_rows
from bulkgetty.stages.report import Redactor, ReportWriter, RunSummary
from bulkgetty.stages.workers.pool import WorkerPool

__all__ = ("Downloader", "RunResult", "run")

#: Unread events past which `events()` stops queueing progress snapshots.
PROGRESS_BACKLOG: Final = 100


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a run did: the summary, where its report is, and its exit status."""

    summary: RunSummary
    report_path: Path
    exit_code: int
    #: What stopped the run early after it had spent (a full disk, the journal, refused
    #: credentials): the run still reported every asset and exits 1, not 2.
    error: BulkGettyError | None = None


@final
class Downloader:
    """Download manifest rows into a folder, within quota, resumably.

        async with Downloader(credentials, RunOptions(out_dir=Path("out"))) as d:
            result = await d.run(assets)

    Runs in the caller's event loop. Cancelling `run()` leaves transfers resumable and the
    journal consistent; no task outlives the `async with` block.
    """

    def __init__(
        self,
        credentials: Credentials,
        options: RunOptions,
        *,
        api_url: str | None = None,
        policy: RetryPolicy | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        api_url = api_url or api_url_from_env()  # as the CLI reads it
        check_url_scheme(api_url, what="the API URL")
        self.credentials = credentials
        self.options = options
        self.api_url = api_url.rstrip("/")
        self.policy = policy or RetryPolicy()
        self._listeners: list[Callable[[Event], None]] = [on_event] if on_event else []
        self._stack = AsyncExitStack()
        self._journal: AsyncJournalLike | None = None
        self._ctx: RunContext | None = None
        self.pool: WorkerPool | None = None
        self.redact = Redactor(credentials.secrets())

    # lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Downloader:
        opts = self.options
        # A folder in memory (tmpfs): small files and journal commits run on the loop.
        inline = await asyncio.to_thread(on_memory_filesystem, Path(opts.out_dir))
        try:
            self.out = await asyncio.to_thread(OutputDir, opts.out_dir, inline=inline)
        except OSError as exc:
            raise UsageError(f"cannot use output folder {opts.out_dir}: {exc.strerror}") from exc
        except StorageError as exc:  # read-only, full, not ours: the run cannot start
            raise UsageError(str(exc)) from exc
        self._journal = await _open_journal(opts, Path(self.out.path), inline=inline)
        self._stack.push_async_callback(self._journal.close)
        timeouts = Timeouts(connect=opts.connect_timeout, stall=opts.stall_timeout)
        self.api_session = await self._stack.enter_async_context(new_session(timeouts))
        limit = max(opts.concurrency * opts.segments, 10)
        self.delivery_session = await self._stack.enter_async_context(
            new_session(timeouts, limit=limit)
        )
        self.pool = _worker_pool(opts, self.out, self._journal, timeouts, limit)
        if self.pool is not None:
            self._stack.push_async_callback(self.pool.close)
            self.pool.warm_up()  # the workers' interpreters start while the run gets ready
        self.limiter = await _open_limiter(opts, self._stack)
        self.tokens = TokenProvider(
            self.api_session,
            self.api_url,
            self.credentials,
            limiter=self.limiter,
            policy=self.policy,
        )
        self.client = GettyClient(
            self.api_session,
            self.api_url,
            self.tokens,
            limiter=self.limiter,
            policy=self.policy,
            auto_download=opts.auto_download,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._drain_purchases()
        finally:
            await self._stack.aclose()

    @property
    def purchases_in_flight(self) -> int:
        """Download POSTs on the wire now: a stop waits for their answers (and URIs)."""
        return 0 if self._ctx is None else self._ctx.acquirer.purchases.sent

    async def _drain_purchases(self) -> None:
        """Start no new POST; wait for those on the wire, which commit their own outcome.

        Shielded: this runs while the run is being cancelled, and abandoning a POST that left
        would lose a paid URI. Bounded by the POSTs' own HTTP timeouts.
        """
        if self._ctx is None:
            return
        acquirer = self._ctx.acquirer
        acquirer.purchases.stop()
        with anyio.CancelScope(shield=True):
            await acquirer.purchases.drain()

    @property
    def journal(self) -> AsyncJournalLike:
        if self._journal is None:
            raise RuntimeError("use `async with Downloader(...)` before run()")
        return self._journal

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    async def events(self, rows: Rows, *, manifest: str = "<api>") -> AsyncIterator[Event]:
        """Run, yielding every event as it happens; the last one is RunFinished."""
        # Per-asset events are never dropped (a slow consumer costs memory, not events);
        # progress snapshots are skipped while the consumer is behind.
        send, recv = anyio.create_memory_object_stream[Event](math.inf)

        def forward(event: Event) -> None:
            behind = send.statistics().current_buffer_used > PROGRESS_BACKLOG
            if not (behind and isinstance(event, Progress)):
                send.send_nowait(event)

        self._listeners.append(forward)
        try:
            async with anyio.create_task_group() as tg:

                async def drive() -> None:
                    async with send:
                        await self.run(rows, manifest=manifest)

                tg.start_soon(drive)
                async with recv:
                    async for event in recv:
                        yield event
        finally:
            self._listeners.remove(forward)

    def _emit(self, event: Event) -> None:
        for listener in self._listeners:
            listener(event)

    # the run ---------------------------------------------------------------------------

    async def run(self, rows: Rows, *, manifest: str = "<api>", unique: bool = False) -> RunResult:
        """Download every asset in `rows`; the same rows again resume and spend nothing twice.

        Duplicate rows are skipped; `unique=True` says the caller already dropped them (as
        `read_manifest` does), which saves the 24 bytes a row the check would cost.
        """
        j = self.journal
        if self.options.journal_meta:
            await j.call(j.journal.bind_meta, dict(self.options.journal_meta))
        run_id = await j.call(j.journal.begin_run, manifest)
        acquirer = Acquirer(
            self.client,
            j,
            Budget(await _cap_left(self.journal, self.options)),
            self.policy,
            self._emit,
            history_settle=self.options.history_settle,
            send_bound=self.options.connect_timeout + self.options.stall_timeout,
            doubts_reserved=self.options.cap_all_runs,
        )
        ctx = self._ctx = RunContext(
            options=self.options,
            journal=j,
            out=self.out,
            acquirer=acquirer,
            report=ReportWriter(self.options.report, Path(self.out.path), self.redact),
            policy=self.policy,
            delivery_session=self.delivery_session,
            emit=self._emit,
        )
        if (pool := self.pool) is not None:
            ctx.transfer, ctx.workers_died = pool.transfer, lambda: pool.deaths > 0
        self._emit(RunStarted(out_dir=str(self.out.path), manifest=manifest, run_id=run_id))
        try:
            await self._stages(ctx, rows if unique else _unique(rows), run_id)
        finally:
            await self._drain_purchases()
            try:
                ctx.report.close()
            except StorageError:
                if ctx.fatal is None:
                    raise
            await self._flush_journal(ctx)
        return await self._finish_run(ctx, run_id)

    async def _stages(self, ctx: RunContext, source: Rows, run_id: int) -> None:
        """The pipeline; an error of ours that stops it after a spend ends the run reported."""
        pipeline = Pipeline(ctx)
        try:
            await pipeline.run(source, run_id)
        except BaseExceptionGroup as group:
            error = _bulkgetty_error_in(group)
            if error is None:
                raise
            await self._stopped_by(ctx, error)
        except BulkGettyError as error:
            await self._stopped_by(ctx, error)
        if ctx.fatal is not None and ctx.spent_or_maybe():
            # The full disk that stopped the run may take no report either: say why it stopped.
            with contextlib.suppress(StorageError):
                await pipeline.report_unprocessed(source)
        await self._flush_journal(ctx)
        if ctx.fatal is None:  # after a fatal stop, a `.part` may still be the journal's
            await _sweep_orphan_parts(self.journal, self.out)

    async def _stopped_by(self, ctx: RunContext, error: BulkGettyError) -> None:
        """A stage failed for good (disk full, journal): nothing new starts; POSTs on the wire
        finish and commit their URIs (the journal's reserve gives them room on a full disk)."""
        ctx.abort(error)
        await self._drain_purchases()
        if not ctx.spent_or_maybe():
            raise error

    async def _flush_journal(self, ctx: RunContext) -> None:
        """Flush staged progress (shielded: it runs while a run is cancelled too). After a
        fatal error a journal that fails again is that same error, already being reported."""
        with anyio.CancelScope(shield=True):
            try:
                await self.journal.flush()
            except BulkGettyError:
                if ctx.fatal is None:
                    raise

    async def _finish_run(self, ctx: RunContext, run_id: int) -> RunResult:
        """Close the run in the journal and say how it ended; exit 2 only if nothing spent."""
        s = ctx.summary
        s.spends = ctx.acquirer.spends
        s.wall = time.monotonic() - s.started
        code = s.exit_code
        if ctx.fatal is not None:
            code = 1 if ctx.spent_or_maybe() else ctx.fatal.exit_code
        j = self.journal
        try:
            await j.call(j.journal.finish_run, run_id, spends=s.spends, exit_code=code)
        except BulkGettyError:
            if ctx.fatal is None:
                raise
        self._emit(_finished_event(s, code))
        if ctx.fatal is not None and not ctx.spent_or_maybe():
            raise ctx.fatal
        return RunResult(s, ctx.report.path, code, error=ctx.fatal)


async def _open_journal(options: RunOptions, out: Path, *, inline: bool) -> AsyncJournalLike:
    """The SQLite journal in DIR (`inline`: on the loop's thread), or with `ledger` the team's
    PostgreSQL ledger."""
    if options.ledger is None:
        return await AsyncJournal.open(out, inline=inline)
    from bulkgetty.stages.ledger.store import AsyncLedger  # psycopg is an optional extra

    return await AsyncLedger.open(options.ledger, out, settle=options.history_settle)


def _worker_pool(
    options: RunOptions, out: OutputDir, journal: AsyncJournalLike, timeouts: Timeouts, limit: int
) -> WorkerPool | None:
    """`--workers N`: transfers in N processes (started by the first transfer)."""
    if not options.workers:
        return None
    return WorkerPool(
        options.workers,
        out=out,
        timeouts=timeouts,
        limit=limit,
        held=lambda: journal.call(journal.journal.part_names_in_use),
    )


async def _open_limiter(options: RunOptions, stack: AsyncExitStack) -> RateLimiter:
    """This process's API rate, or with `ledger` the rate all workers share."""
    if options.ledger is None:
        return RateLimiter(options.api_rate)
    from bulkgetty.stages.ledger.store import SharedRateLimiter

    limiter = await SharedRateLimiter.open(options.ledger)
    stack.push_async_callback(limiter.close)
    return limiter


def _finished_event(s: RunSummary, exit_code: int) -> RunFinished:
    return RunFinished(
        downloaded=s.downloaded,
        already_done=s.already_done,
        failed=s.failed,
        waiting_for_quota=s.waiting_for_quota,
        bytes=s.bytes,
        spends=s.spends,
        wall=s.wall,
        exit_code=exit_code,
    )


async def _cap_left(journal: AsyncJournalLike, options: RunOptions) -> int | None:
    """This run's `--max-downloads`, less what earlier runs spent (or may have spent) when
    the cap spans runs."""
    cap = options.max_downloads
    if cap is None or not options.cap_all_runs:
        return cap
    totals = await journal.call(journal.journal.totals)
    # An intent or in-doubt POST of an earlier run may have spent: it holds its download
    # until the history says otherwise (the acquirer gives it back then).
    return max(0, cap - totals.spends - totals.in_doubt)


async def _sweep_orphan_parts(journal: AsyncJournalLike, out: OutputDir) -> None:
    """Remove `.part` files that no unfinished asset can resume into (see stages/files/)."""
    keep = await journal.call(journal.journal.part_names_in_use)
    await asyncio.to_thread(out.remove_stale_parts, keep)


def _bulkgetty_error_in(group: BaseExceptionGroup[BaseException]) -> BulkGettyError | None:
    """The error of ours that stopped a stage (a full disk first), so the caller sees it."""
    found: list[BulkGettyError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner = _bulkgetty_error_in(exc)
            if inner is not None:
                found.append(inner)
        elif isinstance(exc, BulkGettyError):
            found.append(exc)
        else:
            return None  # a bug or a cancellation: let it through as it is
    return next((e for e in found if isinstance(e, DiskFullError)), found[0] if found else None)


async def _unique(rows: Rows) -> AsyncIterator[Asset]:
    seen = DigestTable()  # 24 bytes a row, not a set's 100+
    async for asset in aiter_rows(rows):
        if not seen.setdefault(asset.digest, 1):
            yield asset


async def run(
    rows: Rows,
    credentials: Credentials,
    options: RunOptions,
    *,
    api_url: str | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> RunResult:
    """One call for the common case: open a Downloader, run the rows, close it."""
    async with Downloader(credentials, options, api_url=api_url, on_event=on_event) as d:
        return await d.run(rows)
