r"""The run: manifest rows in, files, journal and report out.

Stages run as tasks joined by bounded memory streams, so a million-row manifest flows at flat
memory and acquiring runs only a bounded window ahead of transferring (URIs expire, and spend
should not run far ahead of the bytes):

    rows --plan--> [acquire stream] --acquire x N--> [transfer stream] --transfer x N--> report
                \______________ already acquired, URI still valid ____/

The planner reads the journal for each batch of rows and decides (plan.py) what each needs.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .acquire import Acquirer, Budget
from .api import DownloadGrant, GettyClient
from .assets import Asset, DigestTable
from .auth import Credentials, TokenProvider
from .backend import AsyncJournalLike
from .config import RunOptions, api_url_from_env
from .errors import (
    ApiUnreachableError,
    AuthenticationError,
    BulkGettyError,
    CertificateError,
    DiskFullError,
    JournalError,
    StorageError,
    UriExpiredError,
    UsageError,
)
from .events import (
    MAX_IN_FLIGHT,
    AssetDone,
    AssetFailed,
    AssetWaiting,
    Event,
    InFlight,
    Progress,
    RunFinished,
    RunStarted,
)
from .files import OutputDir, sha256_file
from .http import Timeouts, check_url_scheme, new_session
from .journal import AssetState, AsyncJournal, Record
from .plan import Action, decide, reacquire_message
from .ratelimit import RateLimiter
from .report import Outcome, Redactor, ReportWriter, RunSummary, Status
from .retry import RetryPolicy, with_retries
from .transfer import TransferOptions, TransferResult, TransferState, transfer

__all__ = ("Downloader", "RunResult", "run")

PLAN_BATCH: Final = 500
#: The ` (N)` that `OutputDir.reserve` adds before the extension of a colliding name.
_COPY_SUFFIX: Final = re.compile(r" \(\d+\)(\.[^.]*)?$")
#: Progress events and journal progress flushes happen at most this often.
TICK: Final = 0.5
#: Unread events past which `events()` stops queueing progress snapshots.
PROGRESS_BACKLOG: Final = 100

Rows = Iterable[Asset] | AsyncIterable[Asset]
_DOUBT = (AssetState.INTENT, AssetState.IN_DOUBT)


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a run did: the summary, where its report is, and its exit status."""

    summary: RunSummary
    report_path: Path
    exit_code: int
    #: What stopped the run early after it had spent (a full disk, the journal, refused
    #: credentials): the run still reported every asset and exits 1, not 2.
    error: BulkGettyError | None = None


@dataclass(slots=True)
class _Work:
    record: Record
    uri: str
    #: The URI was bought again in this run (the asset had been paid for before): if it is
    #: refused too, do not buy a third time.
    rebought: bool = False


@dataclass(slots=True)
class _Flight:
    """One transfer in flight, for progress displays (not for resuming: the journal is)."""

    asset: Asset
    done: int = 0
    total: int | None = None


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
        self.redact = Redactor(credentials.secrets())

    # lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Downloader:
        opts = self.options
        try:
            self.out = await asyncio.to_thread(OutputDir, opts.out_dir)
        except OSError as exc:
            raise UsageError(f"cannot use output folder {opts.out_dir}: {exc.strerror}") from exc
        except StorageError as exc:  # read-only, full, not ours: the run cannot start
            raise UsageError(str(exc)) from exc
        self._journal = await self._open_journal()
        self._stack.push_async_callback(self._journal.close)
        timeouts = Timeouts(connect=opts.connect_timeout, stall=opts.stall_timeout)
        self.api_session = await self._stack.enter_async_context(new_session(timeouts))
        self.delivery_session = await self._stack.enter_async_context(
            new_session(timeouts, limit=max(opts.concurrency * opts.segments, 10))
        )
        self.limiter = await self._open_limiter()
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

    async def _open_journal(self) -> AsyncJournalLike:
        """The SQLite journal in DIR, or with `ledger` the team's PostgreSQL ledger."""
        if self.options.ledger is None:
            return await AsyncJournal.open(Path(self.out.path))
        from .ledger import AsyncLedger  # psycopg is an optional extra

        return await AsyncLedger.open(
            self.options.ledger, Path(self.out.path), settle=self.options.history_settle
        )

    async def _open_limiter(self) -> RateLimiter:
        """This process's API rate, or with `ledger` the rate all workers share."""
        if self.options.ledger is None:
            return RateLimiter(self.options.api_rate)
        from .ledger import SharedRateLimiter

        limiter = await SharedRateLimiter.open(self.options.ledger)
        self._stack.push_async_callback(limiter.close)
        return limiter

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
        acquirer = getattr(self, "acquirer", None)
        return 0 if acquirer is None else acquirer.purchases.sent

    async def _drain_purchases(self) -> None:
        """Start no new POST; wait for those on the wire, which commit their own outcome.

        Shielded: this runs while the run is being cancelled, and abandoning a POST that left
        would lose a paid URI. Bounded by the POSTs' own HTTP timeouts.
        """
        acquirer = getattr(self, "acquirer", None)
        if acquirer is None:
            return
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
        self.summary = RunSummary()
        self.report = ReportWriter(self.options.report, Path(self.out.path), self.redact)
        self.budget = Budget(await self._cap())
        self.acquirer = Acquirer(
            self.client,
            j,
            self.budget,
            self.policy,
            self._emit,
            history_settle=self.options.history_settle,
            send_bound=self.options.connect_timeout + self.options.stall_timeout,
            doubts_reserved=self.options.cap_all_runs,
        )
        self._seen = 0
        self._rows_read = 0
        #: Assets read from the rows and not yet finished (bounded by the stream windows).
        self._pending: dict[bytes, Asset] = {}
        self._started_wall = time.time()
        self._bytes_moved = 0
        self._flights: dict[str, _Flight] = {}
        self._fatal: BulkGettyError | None = None
        self._emit(RunStarted(out_dir=str(self.out.path), manifest=manifest, run_id=run_id))
        try:
            await self._stages(rows if unique else _unique(rows), run_id)
        finally:
            await self._drain_purchases()
            self.report.close()
            await self._flush_journal()
        return await self._finish_run(run_id)

    async def _stages(self, source: Rows, run_id: int) -> None:
        """The pipeline; an error of ours that stops it after a spend ends the run reported."""
        try:
            await self._pipeline(source, run_id)
        except BaseExceptionGroup as group:
            error = _bulkgetty_error_in(group)
            if error is None:
                raise
            await self._stopped_by(error)
        except BulkGettyError as error:
            await self._stopped_by(error)
        if self._fatal is not None and self._spent_or_maybe():
            await self._report_unprocessed(source)
        await self._flush_journal()
        if self._fatal is None:  # after a fatal stop, a `.part` may still be the journal's
            await self._sweep_orphan_parts()

    async def _flush_journal(self) -> None:
        """Flush staged progress (shielded: it runs while a run is cancelled too). After a
        fatal error a journal that fails again is that same error, already being reported."""
        with anyio.CancelScope(shield=True):
            try:
                await self.journal.flush()
            except BulkGettyError:
                if self._fatal is None:
                    raise

    async def _finish_run(self, run_id: int) -> RunResult:
        """Close the run in the journal and say how it ended; exit 2 only if nothing spent."""
        self.summary.spends = self.acquirer.spends
        self.summary.wall = time.monotonic() - self.summary.started
        code = self._exit_code()
        j = self.journal
        try:
            await j.call(j.journal.finish_run, run_id, spends=self.summary.spends, exit_code=code)
        except BulkGettyError:
            if self._fatal is None:
                raise
        s = self.summary
        self._emit(
            RunFinished(
                downloaded=s.downloaded,
                already_done=s.already_done,
                failed=s.failed,
                waiting_for_quota=s.waiting_for_quota,
                bytes=s.bytes,
                spends=s.spends,
                wall=s.wall,
                exit_code=code,
            )
        )
        if self._fatal is not None and not self._spent_or_maybe():
            raise self._fatal
        return RunResult(self.summary, self.report.path, code, error=self._fatal)

    def _spent_or_maybe(self) -> bool:
        """Whether this run spent, or may have spent, a download (then it never exits 2)."""
        return self.acquirer.spends > 0 or self.acquirer.maybe_spent > 0

    async def _stopped_by(self, error: BulkGettyError) -> None:
        """A stage failed for good (disk full, journal): nothing new starts; POSTs on the wire
        finish and commit their URIs (the journal's reserve gives them room on a full disk)."""
        self._abort(error)
        await self._drain_purchases()
        if not self._spent_or_maybe():
            raise error

    async def _cap(self) -> int | None:
        """This run's `--max-downloads`, less what earlier runs spent (or may have spent) when
        the cap spans runs."""
        cap = self.options.max_downloads
        if cap is None or not self.options.cap_all_runs:
            return cap
        j = self.journal
        totals = await j.call(j.journal.totals)
        # An intent or in-doubt POST of an earlier run may have spent: it holds its download
        # until the history says otherwise (the acquirer gives it back then).
        return max(0, cap - totals.spends - totals.in_doubt)

    async def _sweep_orphan_parts(self) -> None:
        """Remove `.part` files that no unfinished asset can resume into (see files.py)."""
        j = self.journal
        keep = await j.call(j.journal.part_names_in_use)
        await asyncio.to_thread(self.out.remove_stale_parts, keep)

    def _exit_code(self) -> int:
        if self._fatal is not None:
            return 1 if self._spent_or_maybe() else self._fatal.exit_code
        return self.summary.exit_code

    async def _pipeline(self, rows: Rows, run_id: int) -> None:
        window = self.options.window
        acq_send, acq_recv = anyio.create_memory_object_stream[Record](window)
        xfer_send, xfer_recv = anyio.create_memory_object_stream[_Work](window)
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._ticker)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._plan, rows, run_id, acq_send, xfer_send.clone())
                for _ in range(self.options.concurrency):
                    tg.start_soon(self._acquire_worker, acq_recv.clone(), xfer_send.clone())
                    tg.start_soon(self._transfer_worker, xfer_recv.clone())
                acq_recv.close()
                xfer_send.close()
                xfer_recv.close()
            outer.cancel_scope.cancel()

    async def _ticker(self) -> None:
        """Flush batched journal progress and emit progress events at a bounded rate."""
        while True:
            await anyio.sleep(TICK)
            await self.journal.flush()
            s = self.summary
            self._emit(
                Progress(
                    files_done=s.assets,
                    files_total_seen=self._seen,
                    bytes_done=self._bytes_moved,
                    spends=self.acquirer.spends,
                    in_flight=self._largest_flights(),
                )
            )

    def _largest_flights(self) -> tuple[InFlight, ...]:
        flights = sorted(
            self._flights.values(), key=lambda f: (f.total or f.done, f.done), reverse=True
        )
        return tuple(
            InFlight(id=f.asset.id, asset_type=f.asset.asset_type, bytes_done=f.done, total=f.total)
            for f in flights[:MAX_IN_FLIGHT]
        )

    def _finish(self, outcome: Outcome) -> None:
        self._pending.pop(outcome.asset.digest, None)
        self.summary.count(outcome)
        row = self.report.write(outcome)
        a = outcome.asset
        if outcome.status is Status.FAILED:
            self._emit(AssetFailed(id=a.id, asset_type=a.asset_type, error=row.error or ""))
        elif outcome.status is Status.WAITING_FOR_QUOTA:
            self._emit(AssetWaiting(id=a.id, asset_type=a.asset_type, error=row.error or ""))
        else:
            self._emit(
                AssetDone(
                    id=a.id,
                    asset_type=a.asset_type,
                    status=outcome.status.value,
                    path=row.path,
                    bytes=outcome.size,
                    sha256=outcome.sha256,
                )
            )

    async def _report_unprocessed(self, rows: Rows) -> None:
        """After a fatal error mid-run, one report row for every asset not yet finished.

        Those read but not finished are in `_pending`; the rows the planner never read follow
        from the same iterator (a re-iterable is skipped past what was read).
        """
        why = f"not processed: the run stopped ({self._fatal}); run the same command again"
        for asset in list(self._pending.values()):
            self._finish(Outcome(asset, Status.FAILED, error=why))
        skip = 0 if isinstance(rows, Iterator | AsyncIterator) else self._rows_read
        async for asset in _aiter(rows):  # rows are unique here (see run)
            if skip:
                skip -= 1
            else:
                self._finish(Outcome(asset, Status.FAILED, error=why))

    def _abort(self, error: BulkGettyError) -> None:
        """A fatal error (credentials refused): start no new purchase, keep what is done.

        Nothing is cancelled: a POST in flight is let finish (cancelling it would leave a
        charged download without its URI), and what was bought is still transferred.
        """
        if self._fatal is None:
            self._fatal = error

    # stage: plan -----------------------------------------------------------------------

    async def _plan(
        self,
        rows: Rows,
        run_id: int,
        acq: MemoryObjectSendStream[Record],
        xfer: MemoryObjectSendStream[_Work],
    ) -> None:
        async with acq, xfer:
            batch: list[Asset] = []
            async for asset in _aiter(rows):
                self._rows_read += 1
                self._pending[asset.digest] = asset
                if self._fatal is not None:
                    return  # the rest is reported by _report_unprocessed
                batch.append(asset)
                if len(batch) >= (self.options.plan_batch or PLAN_BATCH):
                    await self._plan_batch(batch, run_id, acq, xfer)
                    batch = []
            if batch and self._fatal is None:
                await self._plan_batch(batch, run_id, acq, xfer)

    async def _plan_batch(
        self,
        batch: list[Asset],
        run_id: int,
        acq: MemoryObjectSendStream[Record],
        xfer: MemoryObjectSendStream[_Work],
    ) -> None:
        j = self.journal
        records = await j.call(j.journal.upsert, batch, run_id)
        self._seen += len(records)
        now = time.time()
        out_dir = Path(self.out.path)
        reacquire = self.options.reacquire_expired
        decisions = await asyncio.to_thread(
            lambda: [
                decide(r, now=now, out_dir=out_dir, reacquire_expired=reacquire) for r in records
            ]
        )
        for record, decision in zip(records, decisions, strict=True):
            if decision.action is Action.ALREADY_DONE:
                self._finish(
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
                await xfer.send(_Work(record, record.uri))
            elif decision.action is Action.FAIL:
                await j.call(j.journal.record_failed, record.key, decision.reason)
                self._finish(Outcome(record.asset, Status.FAILED, error=decision.reason))
            elif decision.action is Action.ACQUIRE and (
                refused := self.acquirer.refused_now(record)
            ):
                self._finish(refused)
            else:
                await acq.send(record)

    # stage: acquire --------------------------------------------------------------------

    async def _acquire_worker(
        self, inbox: MemoryObjectReceiveStream[Record], xfer: MemoryObjectSendStream[_Work]
    ) -> None:
        async with inbox, xfer:
            async for record in inbox:
                if self._fatal is not None:
                    continue  # stays pending: reported as not processed
                result = await self._buy(record)
                if isinstance(result, Outcome):
                    self._finish(result)
                elif result is not None:
                    # An asset paid for before (or maybe, when in doubt) was bought again.
                    rebought = record.spends > 0 or record.state in _DOUBT
                    await xfer.send(_Work(record, result.uri, rebought=rebought))

    async def _buy(self, record: Record, *, resolve: bool = True) -> DownloadGrant | Outcome | None:
        """Resolve any doubt, then POST; None when the run is being aborted."""
        try:
            in_doubt = record.state in _DOUBT
            if (
                resolve
                and in_doubt
                and await self.acquirer.resolve_doubt(record)
                and not self.options.reacquire_expired
            ):
                why = "an earlier run's download was charged but its URI was lost"
                return Outcome(record.asset, Status.FAILED, error=reacquire_message(why))
            return await self.acquirer.acquire(record)
        except (
            AuthenticationError,
            CertificateError,
            JournalError,
            ApiUnreachableError,
        ) as exc:  # fatal
            self._abort(exc)
            return None
        except BulkGettyError as exc:
            msg = f"in doubt: the download history could not be checked ({exc}); run again"
            return Outcome(record.asset, Status.FAILED, error=msg)

    # stage: transfer -------------------------------------------------------------------

    async def _transfer_worker(self, inbox: MemoryObjectReceiveStream[_Work]) -> None:
        async with inbox:
            async for work in inbox:
                self._finish(await self._transfer(work))

    async def _transfer(self, work: _Work) -> Outcome:
        """One asset's transfer, tracked as in flight for progress displays."""
        key = work.record.key
        self._flights[key] = _Flight(work.record.asset)
        try:
            return await self._transfer_attempts(work, self._flights[key])
        finally:
            del self._flights[key]

    async def _transfer_attempts(self, work: _Work, flight: _Flight) -> Outcome:
        """Attempts of one asset's transfer, resuming from the last recorded state each time."""
        record, uri = work.record, work.uri
        asset = record.asset
        j = self.journal
        state = TransferState.from_json(record.transfer) if record.transfer else None
        adopted = await self._adopt_renamed(record, state)
        if adopted is not None:
            return adopted
        options = TransferOptions(
            segments=self.options.segments,
            segment_threshold=self.options.segment_threshold,
            durable=self.options.durable,
        )

        def on_state(new: TransferState) -> None:
            nonlocal state
            state = new
            flight.done, flight.total = new.done, new.total
            j.stage_progress(record.key, new.to_json())

        async def on_new_part(new: TransferState) -> None:
            # Committed now, not at the next tick: a kill before then must find the name.
            on_state(new)
            await j.flush()

        def on_progress(n: int) -> None:
            self._bytes_moved += n
            flight.done += n

        async def attempt() -> TransferResult:
            return await transfer(
                self.delivery_session,
                uri,
                out=self.out,
                owner=record.key,
                asset_id=asset.id,
                state=state,
                options=options,
                on_state=on_state,
                on_progress=on_progress,
                on_new_part=on_new_part,
            )

        reacquired = work.rebought
        while True:
            try:
                result = await with_retries(self.policy, attempt)
                break
            except UriExpiredError as exc:
                if reacquired:  # bought again and refused again: do not spend a third time
                    why = f"the new delivery URI was refused too ({exc})"
                    return await self._fail(record, why, uri_refused=True)
                reacquired = True
                regrant = await self._reacquire(record, exc)
                if isinstance(regrant, Outcome):
                    return regrant
                uri = regrant.uri
            except DiskFullError:
                raise  # every asset would fail so, after being bought: stop the run
            except BulkGettyError as exc:
                return await self._fail(record, str(exc))
        name = await self._collapse_duplicate(result)
        j.drop_progress(record.key)
        await j.call(
            j.journal.record_done,
            record.key,
            path=name,
            size=result.bytes,
            sha256=result.sha256,
        )
        self.out.release(record.key)
        return Outcome(asset, Status.DOWNLOADED, path=name, size=result.bytes, sha256=result.sha256)

    async def _adopt_renamed(self, record: Record, state: TransferState | None) -> Outcome | None:
        """A kill between the final rename and the journal's `done` leaves the whole file
        under the name this asset reserved, and no `.part`: record it as done instead of
        fetching it again as `NAME (2).ext`. Only when its length is the one the journal
        knows and no other asset owns the name."""
        if state is None or state.name is None or state.total is None:
            return None
        name, j = state.name, self.journal
        st = await asyncio.to_thread(self.out.renamed_stat, name)
        size = None if st is None else st.st_size
        if size is None or size != state.total or await j.call(j.journal.uses_name, name):
            return None
        digest = (await sha256_file(self.out.final_path(name))).hexdigest()
        j.drop_progress(record.key)
        await j.call(j.journal.record_done, record.key, path=name, size=size, sha256=digest)
        return Outcome(record.asset, Status.DOWNLOADED, path=name, size=size, sha256=digest)

    async def _collapse_duplicate(self, result: TransferResult) -> str:
        """`NAME (2).ext` that is a byte-for-byte copy of an unowned `NAME.ext` older than this
        run is what a kill after the rename leaves when the journal never heard the name (a
        small file): keep the original, drop the copy, and return the name to record."""
        base = _COPY_SUFFIX.sub(r"\1", result.name, count=1)
        if base == result.name:
            return result.name
        st = await asyncio.to_thread(self.out.renamed_stat, base)
        if st is None or st.st_size != result.bytes or st.st_mtime >= self._started_wall:
            return result.name
        j = self.journal
        if await j.call(j.journal.uses_name, base):
            return result.name
        if (await sha256_file(self.out.final_path(base))).hexdigest() != result.sha256:
            return result.name
        await asyncio.to_thread(self.out.remove_duplicate, result.name, original=base)
        return base

    async def _fail(self, record: Record, error: str, *, uri_refused: bool = False) -> Outcome:
        """Keep the .part and its state for the next run, and say why in journal and report."""
        j = self.journal
        await j.flush()
        fail = j.journal.record_uri_refused if uri_refused else j.journal.record_failed
        await j.call(fail, record.key, error)
        self.out.release(record.key)
        return Outcome(record.asset, Status.FAILED, error=error)

    async def _reacquire(self, record: Record, exc: UriExpiredError) -> DownloadGrant | Outcome:
        """The URI died before the file was whole: buy again only when the user allowed it."""
        if not self.options.reacquire_expired:
            why = f"the delivery URI was refused as expired ({exc})"
            return await self._fail(record, reacquire_message(why), uri_refused=True)
        await self.journal.flush()
        result = await self._buy(record, resolve=False)
        if result is None:
            return Outcome(record.asset, Status.FAILED, error="run aborted")
        return result


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
    async for asset in _aiter(rows):
        if not seen.setdefault(asset.digest, 1):
            yield asset


async def _aiter(rows: Rows) -> AsyncIterator[Asset]:
    if isinstance(rows, AsyncIterable):
        async for row in rows:
            yield row
    else:
        for i, row in enumerate(rows):
            yield row
            if i % 256 == 255:
                await asyncio.sleep(0)  # a huge in-memory list must not starve the workers


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
