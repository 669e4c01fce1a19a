"""Where the CLI's output goes: JSON events on stdout, live bars on a terminal, plain lines.

Why apart from cli.py: the choice of stream is the whole point. stdout carries what a script
reads (events, the summary line); a person's view (bars, retry notices, the failures by reason
at the end) goes to whichever stream is a terminal, so `bulkgetty run ... > log` still shows
progress on stderr, as curl does, and a run that no one watched still ends with its failures
named on stderr instead of one "see the report" line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import orjson

from bulkgetty.assets import Asset
from bulkgetty.commands.history import relicensing_note
from bulkgetty.commands.plan import journal_records
from bulkgetty.commands.status import ReasonTally, reason_lines
from bulkgetty.errors import BulkGettyError, DiskFullError
from bulkgetty.events import AssetFailed, AssetWaiting, Event, RunFinished
from bulkgetty.stages.engine import Downloader, RunResult

if TYPE_CHECKING:  # rich is imported only for a live display (~80 ms of every start)
    from rich.console import Console

    from bulkgetty.cli.progress import RunDisplay

__all__ = ("Emitter", "fatal_text")


class Emitter:
    """Where output goes: JSON events on stdout, live bars on a terminal, or plain lines."""

    def __init__(self, *, json_mode: bool, quiet: bool, out: TextIO, err: TextIO) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.out = out
        self.err = err
        self.redact: Callable[[str], str] = lambda s: s
        #: Live progress only for a person at a terminal: stdout's, else stderr's.
        self.live = not json_mode and not quiet and (out.isatty() or err.isatty())
        self.display: RunDisplay | None = None
        self.last: RunFinished | None = None
        self.failed = ReasonTally()
        self.waiting = ReasonTally()
        #: POSTs on the wire now (set by `run`): what a first Ctrl-C waits for.
        self.purchases_in_flight: Callable[[], int] = lambda: 0

    @property
    def screen(self) -> TextIO | None:
        """Where the live display draws: stdout when it is a terminal, else stderr; None
        when there is no live display."""
        if not self.live:
            return None
        return self.out if self.out.isatty() else self.err

    def console(self) -> Console:
        """The live display's console (see `screen`)."""
        from rich.console import Console

        return Console(file=self.screen or self.err, highlight=False)

    def event(self, event: Event) -> None:
        if isinstance(event, RunFinished):
            self.last = event
        elif isinstance(event, AssetFailed):
            event = replace(event, error=self.redact(event.error))
            self.failed.add(event.error, event.id)
        elif isinstance(event, AssetWaiting):
            self.waiting.add(event.error, event.id)
        if self.json_mode:
            line = orjson.dumps(event.to_dict()).decode()
            self.out.write(self.redact(line) + "\n")
            self.out.flush()
        elif self.display is not None:
            self.display.handle(event)

    def note(self, text: str) -> None:
        if not self.quiet:
            self.err.write(text + "\n")

    def say(self, text: str) -> None:
        """A line for a person now (a retry notice), even with --quiet: above the live bars
        when they are drawn, else on stderr."""
        line = f"bulkgetty: {self.redact(text)}"
        if self.display is not None:
            self.display.console.print(line, markup=False, highlight=False)
        else:
            self.err.write(line + "\n")
            self.err.flush()

    def finished(self, result: RunResult, out_dir: Path) -> None:
        if result.error is not None:  # stopped after spending: say why, then the totals
            self.err.write(fatal_text(result.error, self.redact) + "\n")
        if self.json_mode:
            return
        watched = self.live and self.out.isatty()
        if watched and self.last is not None:
            from bulkgetty.cli.progress import summary_table

            self.console().print(summary_table(self.last))
        else:
            self.out.write(result.summary.line() + "\n")
            self.out.flush()
        if result.exit_code not in (1, 3):
            return
        if not watched:  # nobody saw the failures go by: name them, grouped
            lines = reason_lines("failed", self.failed.groups())
            lines += reason_lines("waiting for quota", self.waiting.groups())
            self.err.write("".join(f"{line}\n" for line in lines))
        if result.exit_code == 3:
            self.err.write("some assets wait for quota: run the same command again later\n")
        else:
            self.err.write(
                f"some assets failed: `bulkgetty status {out_dir}` sums them up, "
                f"{result.report_path} has each one's reason\n"
            )


def fatal_text(exc: BulkGettyError, redact: Callable[[str], str]) -> str:
    """The lines for an error that stopped a command, with what to do about it."""
    text = f"bulkgetty: error: {redact(str(exc))}"
    if isinstance(exc, DiskFullError):
        text += (
            "\nbulkgetty: the disk is full: free some space, then run the same command again: the "
            "journal is "
            "consistent and partial files are kept"
        )
    return text


#: On a terminal, seconds to wait after saying that assets licensed before will be bought
#: again: time for the person to press Ctrl-C before anything is spent.
RELICENSING_PAUSE = 5.0


async def warn_relicensing(
    downloader: Downloader, rows: Callable[[], Iterable[Asset]], emit: Emitter
) -> None:
    """Before spending: say how many downloads go to assets this account licensed before."""
    out = Path(downloader.out.path)
    note = await relicensing_note(
        downloader.client,
        lambda: journal_records(out, rows()),
        out_dir=out,
        reacquire_expired=downloader.options.reacquire_expired,
    )
    if note is None:
        return
    emit.err.write(f"bulkgetty: {note}\n")
    if emit.live:
        emit.err.write(f"bulkgetty: starting in {RELICENSING_PAUSE:.0f} s; Ctrl-C to stop\n")
        emit.err.flush()
        await asyncio.sleep(RELICENSING_PAUSE)
