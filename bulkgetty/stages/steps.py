"""One asset's steps: buy its URI (resolving an earlier doubt first), then fetch its file.

Why apart from the pipeline: these are the rules a reader checks line by line for money and
data (when to buy again, when a refused URI may be bought a second time, which file on disk is
this asset's after a kill), while the pipeline only moves records between workers. Both share
one `RunContext` (pipeline.py): the journal, the folder, the acquirer and the run's counters.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from bulkgetty.assets import Asset
from bulkgetty.errors import (
    ApiUnreachableError,
    AuthenticationError,
    BulkGettyError,
    CertificateError,
    DiskFullError,
    JournalError,
    UriExpiredError,
)
from bulkgetty.getty.api import DownloadGrant
from bulkgetty.getty.retry import with_retries
from bulkgetty.stages.decide import reacquire_message
from bulkgetty.stages.files import sha256_file
from bulkgetty.stages.journal import AssetState, Record
from bulkgetty.stages.report import Outcome, Status
from bulkgetty.stages.transfer import TransferOptions, TransferResult, TransferState

if TYPE_CHECKING:
    from bulkgetty.stages.pipeline import RunContext

__all__ = ("DOUBT", "AssetSteps", "Flight", "Work")

#: The ` (N)` that `OutputDir.reserve` adds before the extension of a colliding name.
_COPY_SUFFIX: Final = re.compile(r" \((\d+)\)(\.[^.]*)?$")
#: States in which an earlier POST may have spent without its URI reaching the journal.
DOUBT = (AssetState.INTENT, AssetState.IN_DOUBT)
#: Errors after which no purchase of this run can do better: the run stops buying.
_FATAL = (AuthenticationError, CertificateError, JournalError, ApiUnreachableError)


@dataclass(slots=True)
class Work:
    """An asset with a URI to fetch."""

    record: Record
    uri: str
    #: The URI was bought again in this run (the asset had been paid for before): if it is
    #: refused too, do not buy a third time.
    rebought: bool = False


@dataclass(slots=True)
class Flight:
    """One transfer in flight, for progress displays (not for resuming: the journal is)."""

    asset: Asset
    done: int = 0
    total: int | None = None


class AssetSteps:
    """Buy and fetch single assets within one run (see the module docstring)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    # buy -------------------------------------------------------------------------------

    async def buy(self, record: Record, *, resolve: bool = True) -> DownloadGrant | Outcome | None:
        """Resolve any doubt, then POST; None when the run is being aborted."""
        ctx = self.ctx
        try:
            if (
                resolve
                and record.state in DOUBT
                and await ctx.acquirer.resolve_doubt(record)
                and not ctx.options.reacquire_expired
            ):
                why = "an earlier run's download was charged but its URI was lost"
                return Outcome(record.asset, Status.FAILED, error=reacquire_message(why))
            return await ctx.acquirer.acquire(record)
        except _FATAL as exc:
            ctx.abort(exc)
            return None
        except BulkGettyError as exc:
            msg = f"in doubt: the download history could not be checked ({exc}); run again"
            return Outcome(record.asset, Status.FAILED, error=msg)

    # fetch -----------------------------------------------------------------------------

    async def fetch(self, work: Work) -> Outcome:
        """One asset's transfer, tracked as in flight for progress displays."""
        key = work.record.key
        flight = self.ctx.flights[key] = Flight(work.record.asset)
        try:
            return await self._attempts(work, flight)
        finally:
            del self.ctx.flights[key]

    async def _attempts(self, work: Work, flight: Flight) -> Outcome:
        """Attempts of one asset's transfer, resuming from the last recorded state each time."""
        ctx = self.ctx
        record, uri = work.record, work.uri
        j = ctx.journal
        state = TransferState.from_json(record.transfer) if record.transfer else None
        adopted = await self._adopt_renamed(record, state)
        if adopted is not None:
            return adopted
        options = TransferOptions(
            segments=ctx.options.segments,
            segment_threshold=ctx.options.segment_threshold,
            durable=ctx.options.durable,
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
            ctx.bytes_moved += n
            flight.done += n

        async def attempt() -> TransferResult:
            return await ctx.transfer(  # stages.transfer.transfer, or in a worker process
                ctx.delivery_session,
                uri,
                out=ctx.out,
                owner=record.key,
                asset_id=record.asset.id,
                state=state,
                options=options,
                on_state=on_state,
                on_progress=on_progress,
                on_new_part=on_new_part,
            )

        reacquired = work.rebought
        while True:
            try:
                result = await with_retries(ctx.policy, attempt)
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
        return await self._done(record, result)

    async def _done(self, record: Record, result: TransferResult) -> Outcome:
        j = self.ctx.journal
        name = await self._collapse_duplicate(result)
        j.drop_progress(record.key)
        await j.call(
            j.journal.record_done, record.key, path=name, size=result.bytes, sha256=result.sha256
        )
        self.ctx.out.release(record.key)
        return Outcome(
            record.asset, Status.DOWNLOADED, path=name, size=result.bytes, sha256=result.sha256
        )

    async def _adopt_renamed(self, record: Record, state: TransferState | None) -> Outcome | None:
        """A kill between the final rename and the journal's `done` leaves the whole file
        under the name this asset reserved, and no `.part`: record it as done instead of
        fetching it again as `NAME (2).ext`. Only when its length is the one the journal
        knows and no other asset owns the name."""
        if state is None or state.name is None or state.total is None:
            return None
        name, j, out = state.name, self.ctx.journal, self.ctx.out
        st = await asyncio.to_thread(out.renamed_stat, name)
        size = None if st is None else st.st_size
        if size is None or size != state.total or await j.call(j.journal.uses_name, name):
            return None
        digest = (await sha256_file(out.final_path(name))).hexdigest()
        j.drop_progress(record.key)
        await j.call(j.journal.record_done, record.key, path=name, size=size, sha256=digest)
        return Outcome(record.asset, Status.DOWNLOADED, path=name, size=size, sha256=digest)

    async def _collapse_duplicate(self, result: TransferResult) -> str:
        """`NAME (2).ext` that is a byte-for-byte copy of an unowned `NAME.ext` older than this
        run is what a kill after the rename leaves when the journal never heard the name (a
        small file): keep the original, drop the copy, and return the name to record. A
        worker process killed after its rename leaves the same within this run. Kills in
        more than one run can leave more copies (`NAME (2).ext` when this is `NAME (3).ext`):
        those that are unowned byte-for-byte copies go too."""
        match = _COPY_SUFFIX.search(result.name)
        if match is None:
            return result.name
        stem, number, ext = result.name[: match.start()], int(match[1]), match[2] or ""
        base = stem + ext
        if not await self._orphan_copy(base, result):
            return result.name
        out = self.ctx.out
        for name in (f"{stem} ({n}){ext}" for n in range(2, number)):
            if await self._orphan_copy(name, result):
                await asyncio.to_thread(out.remove_duplicate, name, original=base)
        await asyncio.to_thread(out.remove_duplicate, result.name, original=base)
        return base

    async def _orphan_copy(self, name: str, result: TransferResult) -> bool:
        """Whether `name` is a whole file, owned by no asset in the journal, from before this
        run (or from a worker that died in it), with exactly `result`'s bytes."""
        out, j = self.ctx.out, self.ctx.journal
        st = await asyncio.to_thread(out.renamed_stat, name)
        if st is None or st.st_size != result.bytes:
            return False
        if st.st_mtime >= self.ctx.started_wall and not self.ctx.workers_died():
            return False
        if await j.call(j.journal.uses_name, name):
            return False
        digest: str = (await sha256_file(out.final_path(name))).hexdigest()
        return digest == result.sha256

    async def _fail(self, record: Record, error: str, *, uri_refused: bool = False) -> Outcome:
        """Keep the .part and its state for the next run, and say why in journal and report."""
        j = self.ctx.journal
        await j.flush()
        fail = j.journal.record_uri_refused if uri_refused else j.journal.record_failed
        await j.call(fail, record.key, error)
        self.ctx.out.release(record.key)
        return Outcome(record.asset, Status.FAILED, error=error)

    async def _reacquire(self, record: Record, exc: UriExpiredError) -> DownloadGrant | Outcome:
        """The URI died before the file was whole: buy again only when the user allowed it."""
        if not self.ctx.options.reacquire_expired:
            why = f"the delivery URI was refused as expired ({exc})"
            return await self._fail(record, reacquire_message(why), uri_refused=True)
        await self.ctx.journal.flush()
        result = await self.buy(record, resolve=False)
        if result is None:
            return Outcome(record.asset, Status.FAILED, error="run aborted")
        return result
