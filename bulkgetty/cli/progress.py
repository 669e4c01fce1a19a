"""What a person at a terminal sees during `bulkgetty run`: rich live progress, then a table.

The display is one more consumer of the engine's events (events.py), like the `--json` stream
and `Downloader.events()`: it never asks the engine anything, so it cannot slow a run down or
disagree with the report. Rates and ETAs come from rich's own sample windows.

    files  ━━━━━━━━━━━━━━━━━━━━━━━━   18/40  45% • 1.5 files/s • elapsed 0:00:12 • left 0:00:15
    bytes  4.1 MB • 1.3 MB/s
    spent  18 downloads • remaining: premiumaccess 982, editorialsubscription 1000
      9600011  ━━━━━━━━━━━━━━━━━━━╸━━━━━━━━━━━━━━━━━━━━━━━━━━━━━   98.3/312.5 kB 80.1 kB/s

A file's bar moves with the bytes on disk (the engine reports them at most twice a second);
one seen only once its bytes are all in says "finishing" (its fsync and rename) instead of a
rate that one sample cannot give.

Remaining quota is not in any event (Getty's download answer does not say it), so
`QuotaView` asks `GET /v3/products` lazily, when the run first spends (and again at most every
`QUOTA_REFRESH` seconds while it spends), and counts the run's spends since the last answer.
A run that spends nothing sends no request for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import (
    Progress as RichProgress,
)
from rich.table import Table
from rich.text import Text

from bulkgetty.errors import BulkGettyError
from bulkgetty.events import (
    AssetAcquired,
    AssetDone,
    AssetFailed,
    AssetWaiting,
    Event,
    Progress,
    QuotaReached,
    RunFinished,
)
from bulkgetty.getty.api import ProductInfo

__all__ = ("QuotaView", "RunDisplay", "summary_table")

#: Failures printed above the bars; the rest are only in the report.
MAX_FAILURE_LINES: Final = 20
#: Screen refreshes per second (events arrive at most twice a second anyway).
REFRESH_PER_SECOND: Final = 4
#: Seconds between two `/v3/products` queries while the run spends.
QUOTA_REFRESH: Final = 30.0


@dataclass(slots=True)
class QuotaView:
    """Downloads remaining per product type: one `/v3/products` answer minus later spends."""

    snapshot: dict[str, int] | None = None
    #: The only product's type, when the account has one: spends naming no type go to it.
    default_type: str | None = None
    spent_since: dict[str, int] = field(default_factory=dict)
    unavailable: str | None = None
    clock: Callable[[], float] = time.monotonic
    _task: asyncio.Task[None] | None = None
    _asked_at: float | None = None

    def set_products(self, products: list[ProductInfo]) -> None:
        remaining: dict[str, int] = {}
        for p in products:
            if p.status not in (None, "active") or p.downloads_remaining is None:
                continue
            extra = p.overage_remaining or 0
            remaining[p.type] = remaining.get(p.type, 0) + p.downloads_remaining + extra
        self.snapshot = remaining
        types = {p.type for p in products}
        self.default_type = next(iter(types)) if len(types) == 1 else None
        self.spent_since = {}

    def spent(self, product_type: str | None) -> None:
        """One download spent; counted against the snapshot if it is already known."""
        kind = product_type or self.default_type
        if self.snapshot is not None and kind is not None:
            self.spent_since[kind] = self.spent_since.get(kind, 0) + 1

    def remaining(self) -> dict[str, int] | None:
        if self.snapshot is None:
            return None
        return {k: max(v - self.spent_since.get(k, 0), 0) for k, v in self.snapshot.items()}

    def fetch_soon(self, products: Callable[[], Awaitable[list[ProductInfo]]]) -> None:
        """Ask in the background, at most every QUOTA_REFRESH seconds; a refusal (some keys
        may not list products) only means the display shows no remainder and asks no more."""
        now = self.clock()
        if self.unavailable is not None or (self._task is not None and not self._task.done()):
            return
        if self._asked_at is not None and now - self._asked_at < QUOTA_REFRESH:
            return
        self._asked_at = now

        async def fetch() -> None:
            try:
                self.set_products(await products())
            except BulkGettyError as exc:
                self.unavailable = str(exc)
            except Exception as exc:  # the display must never break a run
                self.unavailable = type(exc).__name__

        self._task = asyncio.get_running_loop().create_task(fetch())

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def describe(self) -> str:
        left = self.remaining()
        if left is None:
            return "remaining: unknown" if self.unavailable else "remaining: …"
        if not left:
            return "remaining: no active product"
        return "remaining: " + ", ".join(f"{k} {v}" for k, v in sorted(left.items()))


class _Labeled(ProgressColumn):
    """Another column's text after a label: "elapsed 0:00:12", "left 0:00:15"."""

    def __init__(self, label: str, inner: ProgressColumn) -> None:
        super().__init__()
        self.label = label
        self.inner = inner

    def render(self, task: Task) -> Text:
        shown = self.inner.render(task)
        return Text.assemble(f"{self.label} ", shown if isinstance(shown, Text) else str(shown))


class _FilesRate(ProgressColumn):
    """Files finished per second over rich's sample window."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text("… files/s" if speed is None else f"{speed:.1f} files/s")


class _FileRate(TransferSpeedColumn):
    """A transfer's rate; "finishing" once all its bytes are in (fsync, rename)."""

    def render(self, task: Task) -> Text:
        if task.total is not None and task.completed >= task.total:
            return Text("finishing")
        return super().render(task)


class RunDisplay:
    """Live bars on a terminal: overall files (rate, ETA), bytes, spends, largest transfers.

    Use as a context manager around the run and feed it every event with `handle`.
    """

    def __init__(
        self,
        console: Console,
        *,
        files_total: int | None = None,
        quota: QuotaView | None = None,
        get_time: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.quota = quota or QuotaView()
        self._overall = RichProgress(
            TextColumn("[bold]files[/] "),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("•"),
            _FilesRate(),
            TextColumn("•"),
            _Labeled("elapsed", TimeElapsedColumn()),
            TextColumn("•"),
            _Labeled("left", TimeRemainingColumn()),
            console=console,
            get_time=get_time,
            expand=True,
        )
        self._files_task = self._overall.add_task("files", total=files_total)
        self._bytes = RichProgress(
            TextColumn("[bold]bytes[/] "),
            TextColumn("{task.fields[size]}"),
            TextColumn("•"),
            TransferSpeedColumn(),
            console=console,
            get_time=get_time,
        )
        self._bytes_task = self._bytes.add_task("bytes", total=None, size="0 B")
        self._files = RichProgress(
            TextColumn("  {task.description}"),
            BarColumn(bar_width=None),
            DownloadColumn(),
            _FileRate(),
            console=console,
            get_time=get_time,
            expand=True,
        )
        self._file_tasks: dict[str, TaskID] = {}
        self._spends = 0
        self._failures = 0
        self._live = Live(
            self._render(),
            console=console,
            refresh_per_second=REFRESH_PER_SECOND,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
            get_renderable=self._render,
        )

    def __enter__(self) -> RunDisplay:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.quota.cancel()
        self._live.stop()

    def _render(self) -> Group:
        spent = Text.assemble(
            ("spent ", "bold"), f"{self._spends} downloads • {self.quota.describe()}"
        )
        return Group(self._overall, self._bytes, spent, self._files)

    # events ------------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        if isinstance(event, Progress):
            self._progress(event)
        elif isinstance(event, AssetAcquired):
            self._spends = event.spends
            self.quota.spent(event.product_type)
        elif isinstance(event, AssetDone):
            self._overall.advance(self._files_task)
        elif isinstance(event, AssetFailed | AssetWaiting):
            self._overall.advance(self._files_task)
            if isinstance(event, AssetFailed):
                self._failed(event)
        elif isinstance(event, QuotaReached):
            self.console.print(f"[yellow]quota reached:[/] {event.reason}")
        elif isinstance(event, RunFinished):
            self._spends = event.spends
            done = event.downloaded + event.already_done + event.failed + event.waiting_for_quota
            self._overall.update(self._files_task, completed=done)

    def _failed(self, event: AssetFailed) -> None:
        self._failures += 1
        if self._failures <= MAX_FAILURE_LINES:
            self.console.print(
                f"[red]failed[/] {event.asset_type} {event.id}: {event.error}",
                markup=True,
                highlight=False,
            )
        elif self._failures == MAX_FAILURE_LINES + 1:
            self.console.print("[red]more failures[/]: see the report")

    def _progress(self, event: Progress) -> None:
        self._spends = event.spends
        self._overall.update(self._files_task, completed=event.files_done)
        task = self._overall.tasks[0]
        if task.total is not None and event.files_total_seen > task.total:
            self._overall.update(self._files_task, total=event.files_total_seen)
        self._bytes.update(
            self._bytes_task, completed=event.bytes_done, size=_size(event.bytes_done)
        )
        current = {f.id for f in event.in_flight}
        for gone in [k for k in self._file_tasks if k not in current]:
            self._files.remove_task(self._file_tasks.pop(gone))
        for f in event.in_flight:
            task_id = self._file_tasks.get(f.id)
            if task_id is None:
                task_id = self._files.add_task(f"{f.asset_type} {f.id}", total=f.total)
                self._file_tasks[f.id] = task_id
            self._files.update(task_id, completed=f.bytes_done, total=f.total)


def _size(n: int) -> str:
    """Decimal units, as rich's download columns use."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000 or unit == "GB":
            break
    return f"{value:.1f} {unit}"


def summary_table(event: RunFinished) -> Table:
    """The final table on a terminal: what the report says, in numbers."""
    table = Table(title="bulkgetty run", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("downloaded", str(event.downloaded))
    table.add_row("already done", str(event.already_done))
    table.add_row("failed", str(event.failed), style="red" if event.failed else None)
    waiting = str(event.waiting_for_quota)
    table.add_row("waiting for quota", waiting, style="yellow" if event.waiting_for_quota else None)
    table.add_row("bytes", _size(event.bytes))
    table.add_row("wall", f"{event.wall:.1f} s")
    table.add_row("downloads spent", str(event.spends))
    return table
