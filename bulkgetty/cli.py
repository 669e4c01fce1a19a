"""The command line: a thin layer over the async API (engine.Downloader, sandbox.Sandbox).

It reads the environment, parses options, validates the manifest before anything can be
spent, and turns errors into one clear line and the exit codes PRODUCT.md promises.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TextIO

import orjson

from . import ledger_cli, shard_cli
from .assets import Asset
from .auth import Credentials
from .config import DEFAULT_API_RATE, DEFAULT_API_URL, RunOptions
from .engine import Downloader, RunResult
from .errors import BulkGettyError, ManifestError, UsageError
from .events import Event
from .journal import STATE_DIR
from .manifest import ManifestDefaults, read_manifest, validate_manifest
from .shard import parse_shard

__all__ = ("main",)

EXIT_INTERRUPTED = 130

RUN_EXAMPLES = """\
examples:
  bulkgetty run manifests/sample.csv --out ./downloads --sandbox
  GETTY_API_KEY=... GETTY_API_SECRET=... bulkgetty run assets.csv --out /data/getty
  bulkgetty run ids.txt --out out --asset-type video --max-downloads 100 --json

exit status: 0 all on disk; 3 some wait for quota (run again later);
             1 some failed for good (see the report); 2 could not start, nothing spent.
"""

PLAN_EXAMPLES = """\
examples:
  bulkgetty plan --shards 64 --parallel 16                  # quota from /v3/products
  bulkgetty plan assets.csv --shards 8 --parallel 4 --downloads-remaining 5000 --api-rate 5
"""

MERGE_EXAMPLES = """\
examples:
  bulkgetty merge out/shard-* --manifest assets.csv --out out/merged
"""

SANDBOX_EXAMPLES = """\
examples:
  bulkgetty sandbox --port 8099
  bulkgetty sandbox --qps 5 --expires-in 60
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bulkgetty",
        description="Bulk downloads from the Getty Images / iStock API: quota-exact, resumable.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    _add_sandbox(sub)
    _add_plan(sub)
    _add_merge(sub)
    _add_ledger(sub)
    return parser


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="download every asset of a manifest into a folder (again: resume)",
        epilog=RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "manifest",
        nargs="?",
        help="a .csv, .jsonl or .txt manifest, or - for ids on stdin (none with --ledger)",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--sandbox", action="store_true", help="run against the embedded emulator")
    p.add_argument("--concurrency", type=int, default=8, metavar="N", help="delivery streams")
    p.add_argument(
        "--max-downloads", type=int, metavar="N", help="hard cap on downloads spent in this run"
    )
    p.add_argument("--product-type", metavar="T", help="product type for rows that name none")
    p.add_argument(
        "--asset-type", choices=("image", "video"), default="image", help="for rows naming none"
    )
    p.add_argument("--auto-download", action="store_true", help="use the 303 redirect flow")
    p.add_argument("--report", type=Path, metavar="PATH", help="JSONL report path")
    p.add_argument("--json", action="store_true", help="one JSON event per line on stdout")
    p.add_argument("--quiet", action="store_true", help="only the summary line")
    p.add_argument("--api-url", metavar="URL", help="API base URL (default: $GETTY_API_URL)")
    p.add_argument(
        "--api-rate",
        type=float,
        metavar="Q",
        help="API queries per second, slowed further on 429 (default 5; sandbox: unlimited)",
    )
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


def _add_sandbox(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sandbox",
        help="run the Getty API emulator and print its URL and test credentials",
        epilog=SANDBOX_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    p.add_argument("--qps", type=float, help="answer 429 above this many queries per second")
    p.add_argument("--expires-in", type=int, default=1800, help="token lifetime in seconds")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to each request")


def _add_plan(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "plan",
        help="per-shard --max-downloads and --api-rate for a job array (--shards N)",
        epilog=PLAN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    shard_cli.add_plan_arguments(p)


def _add_merge(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "merge",
        help="check the shard folders of a job array and write one report and summary",
        epilog=MERGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    shard_cli.add_merge_arguments(p)


def _add_ledger(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ledger",
        help="the team's shared PostgreSQL ledger: init, status, report",
        epilog=ledger_cli.LEDGER_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ledger_cli.add_ledger_arguments(p)


# run -------------------------------------------------------------------------------------


def run_options(args: argparse.Namespace) -> RunOptions:
    api_rate = args.api_rate
    if api_rate is None:
        api_rate = None if args.sandbox else DEFAULT_API_RATE
    return RunOptions(
        out_dir=args.out,
        concurrency=args.concurrency,
        max_downloads=args.max_downloads,
        auto_download=args.auto_download,
        api_rate=api_rate,
        segments=args.segments,
        reacquire_expired=args.reacquire_expired,
        stall_timeout=args.stall_timeout,
        report_path=args.report,
        durable=not args.no_fsync,
    )


def spool_stdin(out_dir: Path, stdin: TextIO) -> Path:
    """Keep stdin's ids in the state folder: the manifest is read twice (check, then run)."""
    state = out_dir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    path = state / "stdin-manifest.txt"
    with open(path, "w", encoding="utf-8") as f:
        shutil.copyfileobj(stdin, f)
    return path


def manifest_assets(path: Path, defaults: ManifestDefaults) -> Iterator[Asset]:
    for row in read_manifest(path, defaults):
        yield row.asset


async def run_command(args: argparse.Namespace, env: Mapping[str, str], emit: Emitter) -> int:
    options = run_options(args)
    if args.ledger is not None:
        return await ledger_run_command(args, options, env, emit)
    if args.manifest is None:
        raise UsageError("run needs a MANIFEST (or --ledger to claim from a shared ledger)")
    defaults = ManifestDefaults(asset_type=args.asset_type, product_type=args.product_type)
    manifest = Path(args.manifest)
    if args.manifest == "-":
        manifest = spool_stdin(options.out_dir, sys.stdin)
    validate_manifest(manifest, defaults)  # every bad row named before anything is spent
    rows: Iterable[Asset] = manifest_assets(manifest, defaults)
    if args.shard:
        spec = parse_shard(args.shard, env)
        options = shard_cli.shard_options(options, spec, manifest, defaults)
        rows = spec.select(rows)
    async with contextlib.AsyncExitStack() as stack:
        if args.sandbox:
            from .sandbox import Sandbox

            sandbox = await stack.enter_async_context(Sandbox())
            env = {**env, **sandbox.credentials_env()}
            emit.note(f"sandbox: Getty API emulator at {sandbox.api_url}")
        credentials = Credentials.from_env(env)
        api_url = args.api_url or env.get("GETTY_API_URL") or DEFAULT_API_URL
        downloader = Downloader(credentials, options, api_url=api_url, on_event=emit.event)
        emit.redact = downloader.redact
        async with downloader:
            result = await downloader.run(rows, manifest=str(args.manifest))
    emit.finished(result)
    return result.exit_code


async def ledger_run_command(
    args: argparse.Namespace, options: RunOptions, env: Mapping[str, str], emit: Emitter
) -> int:
    """A worker of a shared ledger: claims assets until none is left that no live worker holds."""
    if args.manifest is not None or args.shard:
        raise UsageError("--ledger takes its rows from the ledger: give no MANIFEST or --shard")
    dsn = ledger_cli.ledger_dsn(args.ledger, env)
    # Claim (and plan) a few rows at a time: a worker holds only what it is about to work on,
    # so the team shares the work even when one worker starts well before the others.
    batch = 2 * options.concurrency
    options = dataclasses.replace(options, ledger=dsn, plan_batch=batch)
    async with contextlib.AsyncExitStack() as stack:
        if args.sandbox:
            from .sandbox import Sandbox

            sandbox = await stack.enter_async_context(Sandbox())
            env = {**env, **sandbox.credentials_env()}
        credentials = Credentials.from_env(env)
        api_url = args.api_url or env.get("GETTY_API_URL") or DEFAULT_API_URL
        downloader = Downloader(credentials, options, api_url=api_url, on_event=emit.event)
        downloader.redact.add(ledger_cli.secrets_of(dsn))
        emit.redact = downloader.redact
        async with downloader:
            rows = ledger_cli.ledger_rows(downloader.journal, batch)
            result = await downloader.run(rows, manifest="<ledger>")
    emit.finished(result)
    return result.exit_code


class Emitter:
    """Where run output goes: JSON events on stdout, or human lines (stderr for notes)."""

    def __init__(self, *, json_mode: bool, quiet: bool, out: TextIO, err: TextIO) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.out = out
        self.err = err
        self.redact: Callable[[str], str] = lambda s: s

    def event(self, event: Event) -> None:
        if self.json_mode:
            line = orjson.dumps(event.to_dict()).decode()
            self.out.write(self.redact(line) + "\n")
            self.out.flush()

    def note(self, text: str) -> None:
        if not self.quiet:
            self.err.write(text + "\n")

    def finished(self, result: RunResult) -> None:
        if self.json_mode:
            return
        self.out.write(result.summary.line() + "\n")
        if result.exit_code == 3:
            self.err.write("some assets wait for quota: run the same command again later\n")
        elif result.exit_code == 1:
            self.err.write(f"some assets failed: see {result.report_path}\n")


# sandbox -----------------------------------------------------------------------------------


async def sandbox_command(args: argparse.Namespace, emit: Emitter) -> int:
    from .sandbox import SandboxConfig, serve_forever

    config = SandboxConfig(qps=args.qps, expires_in=args.expires_in, api_latency=args.latency)

    def ready(sandbox: object) -> None:
        env: dict[str, str] = sandbox.credentials_env()  # type: ignore[attr-defined]
        lines = [f"Getty API emulator listening at {sandbox.api_url}", "", "credentials:"]  # type: ignore[attr-defined]
        lines += [f"  export {k}={v}" for k, v in env.items()]
        lines += [
            "",
            "try it:",
            "  bulkgetty run manifests/sample.csv --out ./downloads",
            "",
            "Ctrl-C stops it.",
        ]
        emit.out.write("\n".join(lines) + "\n")
        emit.out.flush()

    await serve_forever(config, host="127.0.0.1", port=args.port, on_ready=ready)
    return 0


# entry point -------------------------------------------------------------------------------


async def _main_async(args: argparse.Namespace, emit: Emitter) -> int:
    if args.command == "run":
        return await run_command(args, os.environ, emit)
    if args.command == "plan":
        return await shard_cli.plan_command(args, os.environ, emit.out)
    if args.command == "merge":
        return shard_cli.merge_command(args, emit.out)
    if args.command == "ledger":
        return await ledger_cli.ledger_command(args, os.environ, emit.out)
    return await sandbox_command(args, emit)


def _run_with_signals(coro_fn: Callable[[], object]) -> int:
    """Ctrl-C / SIGTERM cancel the run (journal stays consistent); a second Ctrl-C exits now."""

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        hits = 0

        def on_signal() -> None:
            nonlocal hits
            hits += 1
            if hits > 1:
                os._exit(EXIT_INTERRUPTED)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        result = await coro_fn()  # type: ignore[misc]
        return int(result)

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
    try:
        return _run_with_signals(lambda: _main_async(args, emit))
    except ManifestError as exc:
        sys.stderr.write(f"{exc}\nbulkgetty: the manifest has bad rows; nothing was spent\n")
        return exc.exit_code
    except BulkGettyError as exc:
        if args.debug:
            traceback.print_exc()
        sys.stderr.write(f"bulkgetty: error: {exc}\n")
        if isinstance(exc, UsageError):
            sys.stderr.write("bulkgetty: nothing was spent; see `bulkgetty run --help`\n")
        return exc.exit_code
    except Exception as exc:  # a bug or an environment failure: one line, not a traceback
        if args.debug:
            traceback.print_exc()
        text = str(exc).split("?", 1)[0]  # never print a signed URL's query
        sys.stderr.write(
            f"bulkgetty: unexpected error: {type(exc).__name__}: {text}\n"
            "bulkgetty: the journal keeps what was done; rerun with --debug for the traceback\n"
        )
        return 1
