"""The CLI of the shared ledger: `ledger init|status|report` and `run --ledger`.

psycopg is imported only when a ledger is used, so the base install needs no database driver.
The connection string comes from `--ledger URL` or `$BULKGETTY_LEDGER`; keep the password out
of it (and so out of command lines and process lists): libpq reads `PGPASSWORD` or
`~/.pgpass`.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit

import orjson

from bulkgetty.assets import Asset
from bulkgetty.config import DEFAULT_API_RATE
from bulkgetty.errors import UsageError
from bulkgetty.scale.shard_cli import downloads_remaining
from bulkgetty.stages.manifest import ManifestDefaults, read_manifest, validate_manifest

if TYPE_CHECKING:
    from bulkgetty.stages.ledger.store import Ledger

__all__ = (
    "add_ledger_arguments",
    "ledger_command",
    "ledger_dsn",
    "ledger_rows",
    "ledger_status",
    "secrets_of",
)

ENV_LEDGER = "BULKGETTY_LEDGER"

LEDGER_EXAMPLES = """\
examples:
  export BULKGETTY_LEDGER=postgresql://getty@db.example.com/getty PGPASSWORD=...
  bulkgetty ledger init assets.csv --api-rate 5          # budget from /v3/products
  bulkgetty run --ledger --out /data/getty                # on every worker machine
  bulkgetty ledger status
  bulkgetty ledger report --out /data/getty/merged
"""


def ledger_dsn(value: str | None, env: Mapping[str, str]) -> str:
    """`--ledger URL`, or `--ledger` alone (or `ledger ...` without it): $BULKGETTY_LEDGER."""
    dsn = value or env.get(ENV_LEDGER, "")
    if not dsn:
        raise UsageError(f"no ledger given: pass --ledger postgresql://... or set {ENV_LEDGER}")
    return dsn


def secrets_of(dsn: str) -> list[str]:
    """A password written into the connection string, for the redactor."""
    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None
    found = [password] if password else []
    for part in dsn.split():
        if part.startswith("password="):
            found.append(part.split("=", 1)[1])
    return found


async def ledger_rows(journal: object, batch: int) -> AsyncIterator[Asset]:
    """The assets this worker claims from the ledger, `batch` at a time."""
    from bulkgetty.stages.ledger.store import AsyncLedger, claimed_rows

    if not isinstance(journal, AsyncLedger):
        raise UsageError("--ledger: the run's journal is not a ledger")
    async for asset in claimed_rows(journal, batch):
        yield asset


def add_ledger_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    init = sub.add_parser("init", help="create the tables, load a manifest, seed the budget")
    init.add_argument("manifest", help="a .csv, .jsonl or .txt manifest")
    init.add_argument(
        "--downloads-remaining",
        type=int,
        metavar="D",
        help="the team's budget (default: downloads_remaining from /v3/products)",
    )
    init.add_argument(
        "--api-rate",
        type=float,
        metavar="Q",
        help=f"the API key's queries per second, shared by all workers (default "
        f"{DEFAULT_API_RATE:g}; 0: unlimited)",
    )
    init.add_argument("--reseed", action="store_true", help="set the budget again (quota reset)")
    init.add_argument(
        "--lease",
        type=float,
        metavar="SECONDS",
        help="how long a worker's claims outlive its last word to the database (default 60): "
        "a worker gone longer loses them; one that reconnects sooner carries on",
    )
    init.add_argument("--product-type", metavar="T", help="for rows that name none")
    init.add_argument(
        "--asset-type", choices=("image", "video"), default="image", help="for rows naming none"
    )
    init.add_argument("--api-url", metavar="URL", help="API base URL (default: $GETTY_API_URL)")
    init.add_argument("--sandbox", action="store_true", help="ask the embedded emulator")
    status = sub.add_parser("status", help="assets per state, spends and the budget")
    report = sub.add_parser("report", help="write one report and one summary for all workers")
    report.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="for report.jsonl, summary.json"
    )
    for q in (init, status, report):
        q.add_argument("--ledger", metavar="URL", help=f"connection string (default ${ENV_LEDGER})")


async def ledger_command(args: argparse.Namespace, env: Mapping[str, str], out: TextIO) -> int:
    from bulkgetty.stages.ledger import store as ledger

    dsn = ledger_dsn(args.ledger, env)
    if args.ledger_command == "init":
        defaults = ManifestDefaults(asset_type=args.asset_type, product_type=args.product_type)
        manifest = Path(args.manifest)
        validate_manifest(manifest, defaults)
        remaining = args.downloads_remaining
        if remaining is None:
            remaining = await downloads_remaining(args, env)
            if remaining is None:
                raise UsageError("the account shows no downloads_remaining: give it as -D")
        rate = DEFAULT_API_RATE if args.api_rate is None else args.api_rate
        added, seeded = ledger.init_ledger(
            dsn,
            (row.asset for row in read_manifest(manifest, defaults)),
            downloads_remaining=remaining,
            api_rate=rate or None,
            reseed=args.reseed,
            lease=args.lease,
        )
        out.write(f"ledger: {added} assets added; budget {seeded} downloads; rate {rate:g}/s\n")
        return 0
    if args.ledger_command == "status":
        return ledger_status(dsn, env, out)
    led = ledger.Ledger(dsn, Path.cwd(), lock=False, worker=False)
    try:
        return _report(led, args.out, _summary(led), out)
    finally:
        led.close()


def ledger_status(value: str | None, env: Mapping[str, str], out: TextIO) -> int:
    """`ledger status` and `status --ledger`: assets per state, spends, the budget (JSON)."""
    from bulkgetty.stages.ledger.store import Ledger

    led = Ledger(ledger_dsn(value, env), Path.cwd(), lock=False, worker=False)
    try:
        summary = _summary(led)
    finally:
        led.close()
    out.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _summary(led: Ledger) -> dict[str, object]:
    totals = led.totals()
    budget = led.budget()
    return {
        "assets": sum(totals.by_state.values()),
        "by_state": totals.by_state,
        "spends": totals.spends,
        "bytes": totals.bytes_done,
        "in_doubt": totals.in_doubt,
        "budget_remaining": budget.remaining,
        "budget_spent": budget.spent,
    }


def _report(led: object, out_dir: Path, summary: dict[str, object], out: TextIO) -> int:
    from bulkgetty.stages.journal import AssetState
    from bulkgetty.stages.ledger.store import Ledger

    assert isinstance(led, Ledger)
    out_dir.mkdir(parents=True, exist_ok=True)
    where = led.locations()
    status = {
        AssetState.DONE: "downloaded",
        AssetState.FAILED: "failed",
        AssetState.WAITING_FOR_QUOTA: "waiting_for_quota",
    }
    with open(out_dir / "report.jsonl", "wb") as f:
        for rec in led.iter_records():
            a = rec.asset
            done = rec.state is AssetState.DONE
            row = {
                "id": a.id,
                "asset_type": a.asset_type,
                "product_type": a.product_type,
                "status": status.get(rec.state, "incomplete"),
                "path": f"{where.get(rec.key, '')}/{rec.path}" if done else None,
                "bytes": rec.bytes if done else None,
                "sha256": rec.sha256 if done else None,
                "error": rec.error,
            }
            f.write(orjson.dumps(row) + b"\n")
    (out_dir / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    out.write(f"report: {out_dir / 'report.jsonl'}; summary: {out_dir / 'summary.json'}\n")
    by_state = summary["by_state"]
    assert isinstance(by_state, dict)
    if by_state.get("failed"):
        return 1
    return 0 if by_state.get("done", 0) == summary["assets"] else 3
