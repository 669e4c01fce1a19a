"""Ctrl-C and SIGTERM for the commands: a first signal stops the run without losing a purchase,
a second one exits at once. Kept apart from the parser so the stop rules read in one place."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO

__all__ = ("EXIT_INTERRUPTED", "run_with_signals")

#: Exit status after a stop by signal (128 + SIGINT), as shells report Ctrl-C.
EXIT_INTERRUPTED = 130


def run_with_signals(
    coro_fn: Callable[[], Awaitable[int]],
    *,
    screen: TextIO | None,
    purchases: Callable[[], int],
) -> int:
    """Ctrl-C / SIGTERM stop the run: no new purchase starts, the POSTs on the wire are
    answered and their URIs committed (purchases.py), transfers stop (their `.part` resumes).
    A second Ctrl-C exits at once, abandoning those POSTs (the next run resolves them).

    `screen` is the terminal the live display draws on (None: no display): the cursor it
    hid is shown again there, never written into a stdout that is a file or a pipe."""

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        hits = 0

        def on_signal() -> None:
            nonlocal hits
            hits += 1
            if hits > 1:
                if screen is not None:
                    screen.write("\x1b[?25h\n")  # the live display hid the cursor
                    screen.flush()
                sys.stderr.write("bulkgetty: stopped at once; run the same command to resume\n")
                os._exit(EXIT_INTERRUPTED)
            in_flight = purchases()
            if in_flight:
                noun = "purchase" if in_flight == 1 else "purchases"
                sys.stderr.write(
                    f"bulkgetty: stopping: finishing {in_flight} {noun} in flight; "
                    "Ctrl-C again to abandon them\n"
                )
            else:
                sys.stderr.write("bulkgetty: stopping (Ctrl-C again to exit at once)...\n")
            sys.stderr.flush()
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        return int(await coro_fn())

    try:
        return asyncio.run(runner())
    except (asyncio.CancelledError, KeyboardInterrupt):
        sys.stderr.write(
            "bulkgetty: stopped; the journal is consistent and partial files are kept: "
            "run the same command again to resume\n"
        )
        return EXIT_INTERRUPTED
