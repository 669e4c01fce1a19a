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
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TextIO, TypeAlias

import orjson

from bulkgetty.assets import Asset
from bulkgetty.cli.args import HelpFormatter, Parser
from bulkgetty.cli.examples import (
    HISTORY_EXAMPLES,
    MERGE_EXAMPLES,
    PLAN_EXAMPLES,
    RUN_EXAMPLES,
    SEARCH_EXAMPLES,
    STATUS_EXAMPLES,
)
from bulkgetty.cli.output import Emitter, fatal_text, warn_relicensing
from bulkgetty.cli.signals import run_with_signals
from bulkgetty.commands.history import (
    HistoryFilter,
    account_licences,
    history_to_manifest,
)
from bulkgetty.commands.plan import estimate, journal_records, remaining_quota
from bulkgetty.commands.search import search_to_manifest
from bulkgetty.commands.status import journal_status
from bulkgetty.config import DEFAULT_API_RATE, HISTORY_SETTLE, RunOptions, api_url_from_env
from bulkgetty.errors import BulkGettyError, ManifestError, UsageError
from bulkgetty.events import AssetAcquired, Event
from bulkgetty.getty.auth import Credentials
from bulkgetty.getty.connect import ApiAccess, ConnectWatch
from bulkgetty.getty.http import check_url_scheme
from bulkgetty.getty.retry import RetryPolicy
from bulkgetty.scale import ledger_cli, shard_cli
from bulkgetty.scale.shard import parse_shard
from bulkgetty.stages.engine import Downloader
from bulkgetty.stages.journal import STATE_DIR, private_file, private_state_dir
from bulkgetty.stages.manifest import ManifestDefaults, read_manifest, validate_manifest
from bulkgetty.version import __version__

__all__ = ("main",)


SANDBOX_EXAMPLES = """\
examples:
  bulkgetty sandbox --port 8099
  bulkgetty sandbox --tls --port 443
  bulkgetty sandbox --qps 5 --expires-in 60
  bulkgetty sandbox --rate 500000 --video-size 50000000
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="bulkgetty",
        description="Bulk downloads from the Getty Images / iStock API: quota-exact, resumable.",
        epilog="`bulkgetty COMMAND --help` shows each command's options and examples.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument(
        "--version", action="version", version=f"bulkgetty {__version__}", help="print the version"
    )
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


SubParsers: TypeAlias = "argparse._SubParsersAction[Parser]"


def _command(sub: SubParsers, name: str, help: str, epilog: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, epilog=epilog, formatter_class=HelpFormatter)
    # SUPPRESS: `bulkgetty --debug run ...` must not be reset by the sub-command's default.
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    return p


def _add_api_options(p: argparse.ArgumentParser) -> None:
    """Where the API is and how fast to ask it: the same for every command that asks."""
    p.add_argument(
        "--sandbox", action="store_true", help="use the embedded emulator (no account needed)"
    )
    p.add_argument(
        "--api-url",
        metavar="URL",
        help="API base URL (default: $GETTY_API_URL, else https://api.gettyimages.com)",
    )
    p.add_argument(
        "--api-rate",
        type=float,
        metavar="Q",
        help="API queries per second, slowed further on 429 (default 5; sandbox: unlimited)",
    )


def _add_defaults_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--product-type",
        metavar="T",
        help="product type for rows that name none (default: the key's default product)",
    )
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
    p.add_argument(
        "--concurrency", type=int, default=8, metavar="N", help="delivery streams in flight"
    )
    cap = "hard cap on downloads spent in this run, 1 or more (default: no cap)"
    p.add_argument("--max-downloads", type=int, metavar="N", help=cap)
    _add_defaults_options(p)
    p.add_argument("--auto-download", action="store_true", help="use the 303 redirect flow")
    report = "JSONL report path (default: DIR/.bulkgetty/report.jsonl)"
    p.add_argument("--report", type=Path, metavar="PATH", help=report)
    p.add_argument("--json", action="store_true", help="one JSON event per line on stdout")
    quiet = "no progress bars: one summary line, failures on stderr"
    p.add_argument("--quiet", action="store_true", help=quiet)
    _add_api_options(p)
    p.add_argument(
        "--segments",
        type=int,
        default=4,
        metavar="N",
        help="most ranges per file of 64 MiB or more, used only when its one stream is slow"
        " (1: never split)",
    )
    p.add_argument(
        "--reacquire-expired",
        action="store_true",
        help="allow spending another download when an asset's delivery URI expired or was lost",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=60,
        metavar="S",
        help="seconds without a byte before a transfer is retried",
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
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="worker processes that fetch and write files (every core; purchases, journal and "
        "report stay in the main process); 0: all in the main process",
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
        "--out",
        type=Path,
        metavar="DIR",
        help="the run's output folder: count what is done (default: none, all is to do)",
    )
    _add_defaults_options(p)
    p.add_argument(
        "--max-downloads", type=int, metavar="N", help="the cap the run would have (default: none)"
    )
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
    p.add_argument("--date-from", metavar="D", help="ISO 8601 date (default: 30 days ago)")
    p.add_argument("--date-to", metavar="D", help="ISO 8601 date (default: now)")
    p.add_argument(
        "--product-type", metavar="T", help="only downloads of this product type (default: all)"
    )
    p.add_argument(
        "--company", action="store_true", help="the whole company's downloads (needs permission)"
    )
    _add_api_options(p)


def _add_search(sub: SubParsers) -> None:
    p = _command(sub, "search", "write search results as a manifest", SEARCH_EXAMPLES)
    p.set_defaults(handler=search_command)
    p.add_argument("phrase", help="what to search for")
    p.add_argument(
        "--out", required=True, type=Path, metavar="M", help="manifest to write (.csv/.jsonl/.txt)"
    )
    p.add_argument(
        "--asset-type", choices=("image", "video"), default="image", help="what to search"
    )
    p.add_argument("--limit", type=int, default=100, metavar="N", help="rows to write")
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
    p.add_argument(
        "--catalogue",
        metavar="FILE",
        help="only the ids in FILE exist, one a line (default: every id with a digit)",
    )
    p.add_argument(
        "--require-user-token",
        action="store_true",
        help="refuse downloads to client_credentials tokens (UserTokenRequired), as Getty may",
    )


# shared ------------------------------------------------------------------------------------


async def api_access(
    args: argparse.Namespace,
    env: Mapping[str, str],
    stack: contextlib.AsyncExitStack,
    emit: Emitter,
) -> ApiAccess:
    """Credentials, API URL, query rate and retry policy; `--sandbox` starts the emulator."""
    if getattr(args, "sandbox", False):
        from bulkgetty.sandbox import Sandbox

        sandbox = await stack.enter_async_context(Sandbox())
        env = {**env, **sandbox.credentials_env()}
        emit.note(f"sandbox: Getty API emulator at {sandbox.api_url}")
    credentials = Credentials.from_env(env)
    api_url = args.api_url or api_url_from_env(env)
    check_url_scheme(api_url, what="the API URL")
    watch = ConnectWatch(api_url, emit.say)
    return ApiAccess(credentials, api_url, api_rate(args), RetryPolicy(on_retry=watch), watch)


def api_rate(args: argparse.Namespace) -> float | None:
    """--api-rate, or Getty's low default (unlimited against the embedded sandbox)."""
    if args.api_rate is not None:
        return float(args.api_rate)
    return None if getattr(args, "sandbox", False) else DEFAULT_API_RATE


def _defaults(args: argparse.Namespace) -> ManifestDefaults:
    return ManifestDefaults(asset_type=args.asset_type, product_type=args.product_type)


# run -------------------------------------------------------------------------------------


def run_options(args: argparse.Namespace, rate: float | None) -> RunOptions:
    """The run's options; what cannot work is refused here, before anything starts."""
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(
            f"--out {args.out} is a file, not a folder: name a folder to download into"
        )
    if args.max_downloads == 0:
        raise UsageError(
            "--max-downloads 0: nothing could be downloaded; give 1 or more, or leave it out"
        )
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
        workers=args.workers,
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
    options = run_options(args, api_rate(args))  # bad options fail before anything starts
    manifest = Path(args.manifest)
    if args.manifest == "-":
        manifest = spool_stdin(args.out, sys.stdin)
    summary = validate_manifest(manifest, defaults)  # every bad row named before any spend
    rows: Iterable[Asset] = manifest_assets(manifest, defaults, summary.unique)
    files_total: int | None = summary.unique
    if args.shard:
        spec = parse_shard(args.shard, env)
        options = shard_cli.shard_options(options, spec, manifest, defaults)
        rows = spec.select(rows)
        files_total = None
    async with contextlib.AsyncExitStack() as stack:
        api = await api_access(args, env, stack, emit)
        downloader = Downloader(
            api.credentials, options, api_url=api.url, policy=api.policy, on_event=emit.event
        )
        downloader.add_listener(api.watch.event)
        emit.redact = downloader.redact
        emit.purchases_in_flight = lambda: downloader.purchases_in_flight
        await stack.enter_async_context(downloader)
        if emit.live:
            from bulkgetty.cli.progress import QuotaView, RunDisplay  # rich: only to draw

            display = stack.enter_context(
                RunDisplay(emit.console(), files_total=files_total, quota=QuotaView())
            )
            emit.display = display

            def fetch_quota(event: Event) -> None:
                if isinstance(event, AssetAcquired):
                    display.quota.fetch_soon(downloader.client.products)

            downloader.add_listener(fetch_quota)

        def again() -> Iterable[Asset]:  # the manifest once more, for the relicensing check
            again = manifest_assets(manifest, defaults)  # no presized table: often 1 row read
            return spec.select(again) if args.shard else again

        await warn_relicensing(downloader, again, emit)
        result = await downloader.run(rows, manifest=str(manifest), unique=True)
    emit.finished(result, args.out)
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
        api = await api_access(args, env, stack, emit)
        downloader = Downloader(
            api.credentials, options, api_url=api.url, policy=api.policy, on_event=emit.event
        )
        downloader.add_listener(api.watch.event)
        downloader.redact.add(ledger_cli.secrets_of(dsn))
        emit.redact = downloader.redact
        emit.purchases_in_flight = lambda: downloader.purchases_in_flight
        await stack.enter_async_context(downloader)
        rows = ledger_cli.ledger_rows(downloader.journal, batch)
        result = await downloader.run(rows, manifest="<ledger>")
    emit.finished(result, args.out)
    return result.exit_code


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
        api = await api_access(args, env, stack, emit)
        client = await stack.enter_async_context(api.client())
        remaining, why = await remaining_quota(client)
        licensed, history_why = await account_licences(client)
    if why is not None:
        emit.err.write(f"bulkgetty: downloads remaining are unknown: {why}\n")
    if history_why is not None:
        emit.err.write(f"bulkgetty: earlier licences are unknown: {history_why}\n")
    rows = (row.asset for row in read_manifest(args.manifest, defaults, stdin=stdin()))
    estimate_ = await asyncio.to_thread(
        lambda: estimate(
            journal_records(args.out, rows),
            now=time.time(),
            out_dir=args.out or Path("."),
            remaining=remaining,
            reacquire_expired=args.reacquire_expired,
            max_downloads=args.max_downloads,
            licensed=licensed,
        )
    )
    if licensed is not None and (note := estimate_.relicensing_note(licensed)):
        emit.err.write(f"bulkgetty: {note}\n")
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
        api = await api_access(args, env, stack, emit)
        client = await stack.enter_async_context(api.client())
        written, read = await history_to_manifest(client, args.out, filters)
    emit.out.write(f"{args.out}: {written} assets from {read} earlier downloads\n")
    return 0


async def search_command(args: argparse.Namespace, env: Mapping[str, str], emit: Emitter) -> int:
    async with contextlib.AsyncExitStack() as stack:
        api = await api_access(args, env, stack, emit)
        client = await stack.enter_async_context(api.client())
        written = await search_to_manifest(
            client, args.phrase, args.out, asset_type=args.asset_type, limit=args.limit
        )
    emit.out.write(f"{args.out}: {written} {args.asset_type}s for {args.phrase!r}\n")
    return 0


# sandbox -----------------------------------------------------------------------------------


async def sandbox_command(args: argparse.Namespace, env: Mapping[str, str], emit: Emitter) -> int:
    """Serve until Ctrl-C; a port that cannot be bound is one line and exit 2."""
    from bulkgetty.sandbox import Sandbox, SandboxConfig, banner, serve_forever
    from bulkgetty.sandbox.catalogue import read_catalogue

    config = SandboxConfig(qps=args.qps, expires_in=args.expires_in, api_latency=args.latency)
    if args.rate is not None:
        config = replace(config, bandwidth=args.rate)
    if args.video_size is not None:
        config = replace(config, video_bytes=(args.video_size, args.video_size))
    if args.require_user_token:
        config = replace(config, client_credentials_can_download=False)
    if args.catalogue is not None:
        try:
            config = replace(config, catalogue=read_catalogue(Path(args.catalogue).read_text()))
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the catalogue {args.catalogue}: {exc}") from exc

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


Handler = Callable[[argparse.Namespace, Mapping[str, str], "Emitter"], Awaitable[int]]


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
        return run_with_signals(
            lambda: handler(args, os.environ, emit),
            screen=emit.screen,
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
