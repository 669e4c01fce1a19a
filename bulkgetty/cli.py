"""The command line: a thin layer over the Python API (engine, plan, status, history,
search, progress, sandbox).

It reads the environment, parses options (one `_add_<command>` and one `<command>_command`
per sub-command), validates manifests before anything can be spent, and turns errors into one
clear line plus a hint and the exit codes PRODUCT.md promises.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TextIO, TypeAlias

import orjson
from rich.console import Console

from . import ledger_cli, shard_cli
from .assets import Asset
from .auth import Credentials
from .config import DEFAULT_API_RATE, DEFAULT_API_URL, HISTORY_SETTLE, RunOptions
from .connect import open_client
from .engine import Downloader, RunResult
from .errors import BulkGettyError, DiskFullError, ManifestError, UsageError
from .events import AssetAcquired, AssetFailed, Event, RunFinished
from .history import HistoryFilter, history_to_manifest
from .journal import STATE_DIR, private_file, private_state_dir
from .manifest import ManifestDefaults, read_manifest, validate_manifest
from .plan import estimate, journal_records, remaining_quota
from .progress import QuotaView, RunDisplay, summary_table
from .search import search_to_manifest
from .shard import parse_shard
from .status import journal_status

__all__ = ("main",)

EXIT_INTERRUPTED = 130

RUN_EXAMPLES = """\
examples:
  bulkgetty run manifests/sample.csv --out ./downloads --sandbox
  GETTY_API_KEY=... GETTY_API_SECRET=... bulkgetty run assets.csv --out /data/getty
  bulkgetty run ids.txt --out out --asset-type video --max-downloads 100 --json

On a terminal: live progress, then a summary table. Not a terminal, or --quiet: one summary
line. --json: one event per line (schema in the README). Ctrl-C stops cleanly (a second one
at once); run the same command again to resume.

exit status: 0 all on disk; 3 some wait for quota (run again later);
             1 some failed for good (see the report); 2 could not start, nothing spent.
"""

PLAN_EXAMPLES = """\
examples:
  bulkgetty plan manifests/sample.csv --sandbox
  bulkgetty plan assets.csv --out /data/getty --max-downloads 500
  bulkgetty plan assets.csv --json
  bulkgetty plan assets.csv --shards 64 --parallel 16       # per-shard caps for a job array

Reads the manifest and GET /v3/products (and the journal of --out DIR); spends nothing.
exit status: 0 the run fits; 3 some assets would wait for quota; 2 bad manifest or options.
"""

STATUS_EXAMPLES = """\
examples:
  bulkgetty status ./downloads
  bulkgetty status /data/getty --verify
  bulkgetty status /data/getty --json

Offline: reads DIR/.bulkgetty/journal.sqlite only (safe while a run is going).
exit status: 0; 1 when --verify finds a finished file missing or changed; 2 no journal.
"""

HISTORY_EXAMPLES = """\
examples:
  bulkgetty history --out last30days.csv
  bulkgetty history --date-from 2026-01-01 --date-to 2026-03-31 --product-type premiumaccess \\
      --out q1.csv
  bulkgetty history --company --out team.jsonl

Reads every page of GET /v3/downloads; each asset once, with the product and size bought.
The manifest format follows --out's extension; `bulkgetty run` accepts it as written.
"""

SEARCH_EXAMPLES = """\
examples:
  bulkgetty search "mountain lake" --out lakes.csv --limit 50
  bulkgetty search "city night" --asset-type video --out clips.jsonl

Each result with the product_type (and product_id) of its largest download.
"""

MERGE_EXAMPLES = """\
examples:
  bulkgetty merge out/shard-* --manifest assets.csv --out out/merged
"""

SANDBOX_EXAMPLES = """\
examples:
  bulkgetty sandbox --port 8099
  bulkgetty sandbox --tls --port 443
  bulkgetty sandbox --qps 5 --expires-in 60
  bulkgetty sandbox --rate 500000 --video-size 50000000
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bulkgetty",
        description="Bulk downloads from the Getty Images / iStock API: quota-exact, resumable.",
        epilog="`bulkgetty COMMAND --help` shows each command's options and examples.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_run,
        _add_plan,
        _add_status,
        _add_merge,
        _add_ledger,
        _add_history,
        _add_search,
        _add_sandbox,
    ):
        add(sub)
    return parser


SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _command(sub: SubParsers, name: str, help: str, epilog: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help=help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # SUPPRESS: `bulkgetty --debug run ...` must not be reset by the sub-command's default.
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    return p


def _add_api_options(p: argparse.ArgumentParser, *, sandbox: bool = True) -> None:
    """Where the API is and how fast to ask it: the same for every command that asks."""
    if sandbox:
        p.add_argument("--sandbox", action="store_true", help="use the embedded emulator")
    p.add_argument("--api-url", metavar="URL", help="API base URL (default: $GETTY_API_URL)")
    p.add_argument(
        "--api-rate",
        type=float,
        metavar="Q",
        help="API queries per second, slowed further on 429 (default 5; sandbox: unlimited)",
    )


def _add_defaults_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--product-type", metavar="T", help="product type for rows that name none")
    p.add_argument(
        "--asset-type", choices=("image", "video"), default="image", help="for rows naming none"
    )


def _add_run(sub: SubParsers) -> None:
    p = _command(
        sub, "run", "download every asset of a manifest into a folder (again: resume)", RUN_EXAMPLES
    )
    p.set_defaults(handler=run_command)
    p.add_argument(
        "manifest",
        nargs="?",
        help="a .csv, .jsonl or .txt manifest, or - for ids on stdin (none with --ledger)",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--concurrency", type=int, default=8, metavar="N", help="delivery streams")
    p.add_argument(
        "--max-downloads", type=int, metavar="N", help="hard cap on downloads spent in this run"
    )
    _add_defaults_options(p)
    p.add_argument("--auto-download", action="store_true", help="use the 303 redirect flow")
    p.add_argument("--report", type=Path, metavar="PATH", help="JSONL report path")
    p.add_argument("--json", action="store_true", help="one JSON event per line on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars, one summary line")
    _add_api_options(p)
    p.add_argument("--segments", type=int, default=4, metavar="N", help="ranges per large file")
    p.add_argument(
        "--reacquire-expired",
        action="store_true",
        help="allow spending another download when an asset's delivery URI expired or was lost",
    )
    p.add_argument(
        "--stall-timeout", type=float, default=60.0, metavar="S", help="seconds without a byte"
    )
    p.add_argument(
        "--history-settle",
        type=float,
        default=HISTORY_SETTLE,
        metavar="S",
        help="seconds after a POST that may have spent before the download history is "
        "believed when it shows nothing (default %(default)s)",
    )
    p.add_argument(
        "--no-fsync", action="store_true", help="skip fsync before rename (faster, not durable)"
    )
    p.add_argument(
        "--ledger",
        nargs="?",
        const="",
        metavar="URL",
        help="claim assets from the team's PostgreSQL ledger (URL or $BULKGETTY_LEDGER) "
        "instead of reading a manifest; budget and API rate are shared by all workers",
    )
    p.add_argument(
        "--shard",
        metavar="I/N|auto[/N]",
        help="only the rows of shard I of N (sha256 of the asset identity mod N); auto: from "
        "SLURM_ARRAY_TASK_ID/COUNT or JOB_COMPLETION_INDEX; --max-downloads then caps all runs",
    )


def _add_plan(sub: SubParsers) -> None:
    p = _command(
        sub, "plan", "what a run would spend, per product type, against what remains", PLAN_EXAMPLES
    )
    p.set_defaults(handler=plan_command)
    p.add_argument("manifest", help="a .csv, .jsonl or .txt manifest, or - for ids on stdin")
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="the run's output folder: count what is done"
    )
    _add_defaults_options(p)
    p.add_argument("--max-downloads", type=int, metavar="N", help="the cap the run would have")
    p.add_argument("--reacquire-expired", action="store_true", help="as the run would be given it")
    p.add_argument("--json", action="store_true", help="the plan as one JSON object")
    _add_api_options(p)
    shard_cli.add_plan_shard_arguments(p)


def _add_status(sub: SubParsers) -> None:
    p = _command(sub, "status", "what the journal in DIR says, offline", STATUS_EXAMPLES)
    p.set_defaults(handler=status_command)
    p.add_argument(
        "dir", nargs="?", type=Path, metavar="DIR", help="an output folder of `bulkgetty run`"
    )
    p.add_argument(
        "--ledger",
        nargs="?",
        const="",
        metavar="URL",
        help="the team's PostgreSQL ledger instead of DIR (URL or $BULKGETTY_LEDGER)",
    )
    p.add_argument(
        "--verify", action="store_true", help="re-hash finished files; name any that changed"
    )
    p.add_argument("--json", action="store_true", help="the status as one JSON object")


def _add_merge(sub: SubParsers) -> None:
    p = _command(
        sub,
        "merge",
        "check the shard folders of a job array and write one report and summary",
        MERGE_EXAMPLES,
    )
    p.set_defaults(handler=merge_command)
    shard_cli.add_merge_arguments(p)


def _add_ledger(sub: SubParsers) -> None:
    p = _command(
        sub,
        "ledger",
        "the team's shared PostgreSQL ledger: init, status, report",
        ledger_cli.LEDGER_EXAMPLES,
    )
    p.set_defaults(handler=ledger_command)
    ledger_cli.add_ledger_arguments(p)


def _add_history(sub: SubParsers) -> None:
    p = _command(sub, "history", "write earlier downloads as a manifest", HISTORY_EXAMPLES)
    p.set_defaults(handler=history_command)
    p.add_argument(
        "--out", required=True, type=Path, metavar="M", help="manifest to write (.csv/.jsonl/.txt)"
    )
    p.add_argument("--date-from", metavar="D", help="ISO 8601 date (default: 30 days before)")
    p.add_argument("--date-to", metavar="D", help="ISO 8601 date (default: now)")
    p.add_argument("--product-type", metavar="T", help="only downloads of this product type")
    p.add_argument(
        "--company", action="store_true", help="the whole company's downloads (needs permission)"
    )
    _add_api_options(p, sandbox=False)


def _add_search(sub: SubParsers) -> None:
    p = _command(sub, "search", "write search results as a manifest", SEARCH_EXAMPLES)
    p.set_defaults(handler=search_command)
    p.add_argument("phrase", help="what to search for")
    p.add_argument(
        "--out", required=True, type=Path, metavar="M", help="manifest to write (.csv/.jsonl/.txt)"
    )
    p.add_argument("--asset-type", choices=("image", "video"), default="image")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="rows to write (100)")
    _add_api_options(p)


def _add_sandbox(sub: SubParsers) -> None:
    p = _command(
        sub,
        "sandbox",
        "run the Getty API emulator and print its URL and test credentials",
        SANDBOX_EXAMPLES,
    )
    p.set_defaults(handler=sandbox_command)
    p.add_argument(
        "--port", type=int, default=0, help="API port (default: a free one; 443 needs root)"
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a private CA made at start (prints SSL_CERT_FILE to trust it)",
    )
    p.add_argument("--qps", type=float, help="answer 429 above this many queries per second")
    p.add_argument("--expires-in", type=int, default=1800, help="token lifetime in seconds")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to each request")
    p.add_argument(
        "--rate",
        type=int,
        metavar="BYTES_PER_S",
        help="serve each file at most this fast, to watch a run (default: unlimited)",
    )
    p.add_argument(
        "--video-size",
        type=int,
        metavar="BYTES",
        help="every video file this large (default: 1 to 8 MB each)",
    )


# shared ------------------------------------------------------------------------------------


async def api_access(
    args: argparse.Namespace,
    env: Mapping[str, str],
    stack: contextlib.AsyncExitStack,
    emit: Emitter,
) -> tuple[Credentials, str, float | None]:
    """Credentials, API URL and query rate for a command; `--sandbox` starts the emulator."""
    if getattr(args, "sandbox", False):
        from .sandbox import Sandbox

        sandbox = await stack.enter_async_context(Sandbox())
        env = {**env, **sandbox.credentials_env()}
        emit.note(f"sandbox: Getty API emulator at {sandbox.api_url}")
    credentials = Credentials.from_env(env)
    api_url = args.api_url or env.get("GETTY_API_URL") or DEFAULT_API_URL
    return credentials, api_url, api_rate(args)


def api_rate(args: argparse.Namespace) -> float | None:
    """--api-rate, or Getty's low default (unlimited against the embedded sandbox)."""
    if args.api_rate is not None:
        return float(args.api_rate)
    return None if getattr(args, "sandbox", False) else DEFAULT_API_RATE


def _defaults(args: argparse.Namespace) -> ManifestDefaults:
    return ManifestDefaults(asset_type=args.asset_type, product_type=args.product_type)


# run -------------------------------------------------------------------------------------


def run_options(args: argparse.Namespace, rate: float | None) -> RunOptions:
    return RunOptions(
        out_dir=args.out,
        concurrency=args.concurrency,
        max_downloads=args.max_downloads,
        auto_download=args.auto_download,
        api_rate=rate,
        segments=args.segments,
        reacquire_expired=args.reacquire_expired,
        stall_timeout=args.stall_timeout,
        history_settle=args.history_settle,
        report_path=args.report,
        durable=not args.no_fsync,
    )


def spool_stdin(out_dir: Path, stdin: TextIO) -> Path:
    """Keep stdin's ids in the state folder: the manifest is read twice (check, then run)."""
    state = out_dir / STATE_DIR
    private_state_dir(state)
    path = state / "stdin-manifest.txt"
    private_file(path)
    with open(path, "w", encoding="utf-8") as f:
        shutil.copyfileobj(stdin, f)
    return path


def manifest_assets(path: Path, defaults: ManifestDefaults, rows_hint: int = 0) -> Iterator[Asset]:
    for row in read_manifest(path, defaults, rows_hint=rows_hint):
        yield row.asset


async def run_command(args: argparse.Namespace, env: Mapping[str, str], emit: Emitter) -> int:
    if args.ledger is not None:
        return await ledger_run_command(args, env, emit)
    if args.manifest is None:
        raise UsageError("run needs a MANIFEST (or --ledger to claim from a shared ledger)")
    defaults = _defaults(args)
    manifest = Path(args.manifest)
    if args.manifest == "-":
        manifest = spool_stdin(args.out, sys.stdin)
    options = run_options(args, api_rate(args))  # bad options fail before anything starts
    summary = validate_manifest(manifest, defaults)  # every bad row named before any spend
    rows: Iterable[Asset] = manifest_assets(manifest, defaults, summary.unique)
    files_total: int | None = summary.unique
    if args.shard:
        spec = parse_shard(args.shard, env)
        options = shard_cli.shard_options(options, spec, manifest, defaults)
        rows = spec.select(rows)
        files_total = None
    async with contextlib.AsyncExitStack() as stack:
        credentials, api_url, _ = await api_access(args, env, stack, emit)
        downloader = Downloader(credentials, options, api_url=api_url, on_event=emit.event)
        emit.redact = downloader.redact
        emit.purchases_in_flight = lambda: downloader.purchases_in_flight
        await stack.enter_async_context(downloader)
        if emit.live:
            display = stack.enter_context(
                RunDisplay(emit.console(), files_total=files_total, quota=QuotaView())
            )
            emit.display = display

            def fetch_quota(event: Event) -> None:
                if isinstance(event, AssetAcquired):
                    display.quota.fetch_soon(downloader.client.products)

            downloader.add_listener(fetch_quota)
        result = await downloader.run(rows, manifest=str(manifest), unique=True)
    emit.finished(result)
    return result.exit_code


async def ledger_run_command(
    args: argparse.Namespace, env: Mapping[str, str], emit: Emitter
) -> int:
    """A worker of a shared ledger: claims assets until none is left that no live worker holds."""
    if args.manifest is not None or args.shard:
        raise UsageError("--ledger takes its rows from the ledger: give no MANIFEST or --shard")
    dsn = ledger_cli.ledger_dsn(args.ledger, env)
    # Claim (and plan) a few rows at a time: a worker holds only what it is about to work on,
    # so the team shares the work even when one worker starts well before the others.
    batch = 2 * args.concurrency
    options = replace(run_options(args, api_rate(args)), ledger=dsn, plan_batch=batch)
    async with contextlib.AsyncExitStack() as stack:
        credentials, api_url, _ = await api_access(args, env, stack, emit)
        downloader = Downloader(credentials, options, api_url=api_url, on_event=emit.event)
        downloader.redact.add(ledger_cli.secrets_of(dsn))
        emit.redact = downloader.redact
        emit.purchases_in_flight = lambda: downloader.purchases_in_flight
        await stack.enter_async_context(downloader)
        rows = ledger_cli.ledger_rows(downloader.journal, batch)
        result = await downloader.run(rows, manifest="<ledger>")
    emit.finished(result)
    return result.exit_code


class Emitter:
    """Where output goes: JSON events on stdout, live bars on a terminal, or plain lines."""

    def __init__(self, *, json_mode: bool, quiet: bool, out: TextIO, err: TextIO) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.out = out
        self.err = err
        self.redact: Callable[[str], str] = lambda s: s
        #: Live progress only for a person at a terminal.
        self.live = not json_mode and not quiet and out.isatty()
        self.display: RunDisplay | None = None
        self.last: RunFinished | None = None
        #: POSTs on the wire now (set by `run`): what a first Ctrl-C waits for.
        self.purchases_in_flight: Callable[[], int] = lambda: 0

    def console(self) -> Console:
        return Console(file=self.out, highlight=False)

    def event(self, event: Event) -> None:
        if isinstance(event, RunFinished):
            self.last = event
        if self.json_mode:
            line = orjson.dumps(event.to_dict()).decode()
            self.out.write(self.redact(line) + "\n")
            self.out.flush()
        elif self.display is not None:
            if isinstance(event, AssetFailed):
                event = replace(event, error=self.redact(event.error))
            self.display.handle(event)

    def note(self, text: str) -> None:
        if not self.quiet:
            self.err.write(text + "\n")

    def finished(self, result: RunResult) -> None:
        if result.error is not None:  # stopped after spending: say why, then the totals
            self.err.write(fatal_text(result.error, self.redact) + "\n")
        if self.json_mode:
            return
        if self.live and self.last is not None:
            self.console().print(summary_table(self.last))
        else:
            self.out.write(result.summary.line() + "\n")
        if result.exit_code == 3:
            self.err.write("some assets wait for quota: run the same command again later\n")
        elif result.exit_code == 1:
            self.err.write(f"some assets failed: see {result.report_path}\n")


# plan ------------------------------------------------------------------------------------


async def plan_command(args: argparse.Namespace, env: Mapping[str, str], emit: Emitter) -> int:
    """Manifest, journal and /v3/products in; a per-product table out; nothing spent."""
    if args.shards is not None:  # a job array: per-shard caps and rates (shard_cli)
        return await shard_cli.plan_command(args, env, emit.out)
    defaults = _defaults(args)
    if args.max_downloads is not None and args.max_downloads < 0:
        raise UsageError(f"--max-downloads must be 0 or more, got {args.max_downloads}")
    text = sys.stdin.read() if args.manifest == "-" else None  # stdin is read twice

    def stdin() -> TextIO | None:
        return io.StringIO(text) if text is not None else None

    summary = validate_manifest(args.manifest, defaults, stdin=stdin())
    async with contextlib.AsyncExitStack() as stack:
        credentials, api_url, rate = await api_access(args, env, stack, emit)
        client = await stack.enter_async_context(open_client(credentials, api_url, api_rate=rate))
        remaining, why = await remaining_quota(client)
    if why is not None:
        emit.err.write(f"bulkgetty: downloads remaining are unknown: {why}\n")
    rows = (row.asset for row in read_manifest(args.manifest, defaults, stdin=stdin()))
    estimate_ = await asyncio.to_thread(
        lambda: estimate(
            journal_records(args.out, rows),
            now=time.time(),
            out_dir=args.out or Path("."),
            remaining=remaining,
            reacquire_expired=args.reacquire_expired,
            max_downloads=args.max_downloads,
        )
    )
    if args.json:
        data = {"manifest": args.manifest, "unique_assets": summary.unique, **estimate_.to_dict()}
        emit.out.write(orjson.dumps(data).decode() + "\n")
    else:
        emit.out.write(
            "\n".join(estimate_.lines(f"{args.manifest}: {summary.unique} assets")) + "\n"
        )
    return 3 if estimate_.fits is False else 0


# status ----------------------------------------------------------------------------------


async def status_command(args: argparse.Namespace, env: Mapping[str, str], emit: Emitter) -> int:
    if args.ledger is not None:
        return await asyncio.to_thread(ledger_cli.ledger_status, args.ledger, env, emit.out)
    if args.dir is None:
        raise UsageError("status needs a DIR (or --ledger for the team's shared ledger)")
    report = await asyncio.to_thread(journal_status, args.dir, verify=args.verify)
    if args.json:
        emit.out.write(orjson.dumps(report.to_dict()).decode() + "\n")
    else:
        emit.out.write("\n".join(report.lines()) + "\n")
    return 1 if report.changed else 0


# merge and ledger ------------------------------------------------------------------------


async def merge_command(args: argparse.Namespace, env: Mapping[str, str], emit: Emitter) -> int:
    return await asyncio.to_thread(shard_cli.merge_command, args, emit.out)


async def ledger_command(args: argparse.Namespace, env: Mapping[str, str], emit: Emitter) -> int:
    return await ledger_cli.ledger_command(args, env, emit.out)


# history and search ----------------------------------------------------------------------


async def history_command(args: argparse.Namespace, env: Mapping[str, str], emit: Emitter) -> int:
    filters = HistoryFilter(args.date_from, args.date_to, args.product_type, args.company)
    async with contextlib.AsyncExitStack() as stack:
        credentials, api_url, rate = await api_access(args, env, stack, emit)
        client = await stack.enter_async_context(open_client(credentials, api_url, api_rate=rate))
        written, read = await history_to_manifest(client, args.out, filters)
    emit.out.write(f"{args.out}: {written} assets from {read} earlier downloads\n")
    return 0


async def search_command(args: argparse.Namespace, env: Mapping[str, str], emit: Emitter) -> int:
    async with contextlib.AsyncExitStack() as stack:
        credentials, api_url, rate = await api_access(args, env, stack, emit)
        client = await stack.enter_async_context(open_client(credentials, api_url, api_rate=rate))
        written = await search_to_manifest(
            client, args.phrase, args.out, asset_type=args.asset_type, limit=args.limit
        )
    emit.out.write(f"{args.out}: {written} {args.asset_type}s for {args.phrase!r}\n")
    return 0


# sandbox -----------------------------------------------------------------------------------


async def sandbox_command(args: argparse.Namespace, env: Mapping[str, str], emit: Emitter) -> int:
    """Serve until Ctrl-C; a port that cannot be bound is one line and exit 2."""
    from .sandbox import Sandbox, SandboxConfig, banner, serve_forever

    config = SandboxConfig(qps=args.qps, expires_in=args.expires_in, api_latency=args.latency)
    if args.rate is not None:
        config = replace(config, bandwidth=args.rate)
    if args.video_size is not None:
        config = replace(config, video_bytes=(args.video_size, args.video_size))

    def ready(sandbox: Sandbox) -> None:
        emit.out.write(banner(sandbox))
        emit.out.flush()

    try:
        await serve_forever(config, port=args.port, on_ready=ready, tls=args.tls)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        sys.stderr.write(
            f"bulkgetty: the sandbox cannot listen on 127.0.0.1:{args.port} ({why.lower()}); "
            "choose another --port, or 0 for a free one\n"
        )
        return UsageError.exit_code
    except asyncio.CancelledError:
        sys.stderr.write("bulkgetty: sandbox stopped (its quota, tokens and spends are gone)\n")
    return 0


# entry point -------------------------------------------------------------------------------


def fatal_text(exc: BulkGettyError, redact: Callable[[str], str]) -> str:
    """The lines for an error that stopped a command, with what to do about it."""
    text = f"bulkgetty: error: {redact(str(exc))}"
    if isinstance(exc, DiskFullError):
        text += (
            "\nbulkgetty: free some space, then run the same command again: the journal is "
            "consistent and partial files are kept"
        )
    return text


Handler = Callable[[argparse.Namespace, Mapping[str, str], "Emitter"], Awaitable[int]]


def _run_with_signals(
    coro_fn: Callable[[], Awaitable[int]], *, tty: bool, purchases: Callable[[], int]
) -> int:
    """Ctrl-C / SIGTERM stop the run: no new purchase starts, the POSTs on the wire are
    answered and their URIs committed (purchases.py), transfers stop (their `.part` resumes).
    A second Ctrl-C exits at once, abandoning those POSTs (the next run resolves them)."""

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        hits = 0

        def on_signal() -> None:
            nonlocal hits
            hits += 1
            if hits > 1:
                if tty:
                    sys.stdout.write("\x1b[?25h\n")  # the live display hid the cursor
                    sys.stdout.flush()
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    emit = Emitter(
        json_mode=getattr(args, "json", False),
        quiet=getattr(args, "quiet", False),
        out=sys.stdout,
        err=sys.stderr,
    )
    handler: Handler = args.handler
    try:
        return _run_with_signals(
            lambda: handler(args, os.environ, emit),
            tty=emit.live,
            purchases=lambda: emit.purchases_in_flight(),
        )
    except ManifestError as exc:
        sys.stderr.write(f"{exc}\nbulkgetty: the manifest has bad rows; nothing was spent\n")
        return exc.exit_code
    except BulkGettyError as exc:
        if args.debug:
            traceback.print_exc()
        sys.stderr.write(fatal_text(exc, emit.redact) + "\n")
        if isinstance(exc, UsageError):
            spent = "nothing was spent; " if args.command in ("run", "plan") else ""
            sys.stderr.write(f"bulkgetty: {spent}see `bulkgetty {args.command} --help`\n")
        return exc.exit_code
    except Exception as exc:  # a bug or an environment failure: one line, not a traceback
        if args.debug:
            traceback.print_exc()
        text = str(exc).split("?", 1)[0]  # never print a signed URL's query
        sys.stderr.write(
            f"bulkgetty: unexpected error: {type(exc).__name__}: {emit.redact(text)}\n"
            "bulkgetty: the journal keeps what was done; rerun with --debug for the traceback\n"
        )
        return 1
