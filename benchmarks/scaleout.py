"""Scale-out row: assets/s with 1, 2 and 4 workers against the sandbox's API rate limit.

    python -m benchmarks.scaleout                       # shards and ledger, 1/2/4 workers
    python -m benchmarks.scaleout --mode shards --assets 400 --qps 20 --runs 3

Each asset costs one download POST, so with small files the key's rate (`--qps`, enforced by
the sandbox with 429s) is the ceiling: the question is how close a team of workers gets to it
without ever exceeding it. Two ways to split the rate:

- `shards`: K processes `run --shard i/K --api-rate QPS/K` (each keeps to its share);
- `ledger`: K processes `run --ledger` claiming from one PostgreSQL ledger whose shared limiter
  hands out the key's slots to all of them (a PostgreSQL 15 is started for it in a temp dir,
  as the tests do, unless `--ledger-dsn` names one; skipped when it cannot start).

Per run: wall from the first process start to the last exit (interpreter starts included),
assets/s, API requests/s seen by the sandbox, that as a share of `--qps`, and the sandbox's
429 count (must be 0). Every file is checked against the sandbox's sha256 and every asset
must be spent exactly once, or the run is marked failed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bulkgetty.sandbox import Product, SandboxConfig, SandboxThread

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Row:
    mode: str
    workers: int
    assets: int
    wall: float
    assets_per_s: float
    api_per_s: float
    share_of_limit: float
    #: POSTs/s between the first and the last spend the sandbox saw (no interpreter starts).
    steady_per_s: float
    rejected_429: int
    ok: bool


def _env(sb: SandboxThread) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GETTY_")}
    env.update(sb.credentials_env())
    return env


def _bulkgetty(*args: str) -> list[str]:
    return [sys.executable, "-m", "bulkgetty", *args]


def _check(sb: SandboxThread, root: Path, ids: list[str]) -> bool:
    """Every asset spent once, every reported file hashing as the sandbox served it."""
    spends = sb.spends_by_asset()
    if sorted(spends) != sorted(f"image/{i}" for i in ids) or set(spends.values()) != {1}:
        return False
    done = 0
    for report in root.glob("*/.bulkgetty/report.jsonl"):
        for line in report.read_text().splitlines():
            row = json.loads(line)
            if row["status"] != "downloaded":
                return False
            data = Path(row["path"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != sb.expected("image", row["id"]).sha256:
                return False
            done += 1
    return done == len(ids)


def one_run(mode: str, workers: int, n: int, qps: float, dsn: str | None) -> Row:
    ids = [str(9_000_000 + i) for i in range(n)]
    config = SandboxConfig(
        image_bytes=(2_000, 8_000),
        qps=qps,
        products=(Product(1001, "premiumaccess", n * 2),),
        record_delivery=False,
    )
    with (
        tempfile.TemporaryDirectory(prefix="bulkgetty-scaleout-") as tmp,
        SandboxThread(config) as sb,
    ):
        root = Path(tmp)
        manifest = root / "ids.txt"
        manifest.write_text("\n".join(ids) + "\n")
        env = _env(sb)
        common = ("--concurrency", "8", "--quiet")
        if mode == "shards":
            cmds = [
                _bulkgetty(
                    "run",
                    str(manifest),
                    "--out",
                    str(root / f"w{i}"),
                    "--shard",
                    f"{i}/{workers}",
                    "--api-rate",
                    f"{qps / workers:g}",
                    *common,
                )
                for i in range(workers)
            ]
        else:
            assert dsn is not None
            _reset_ledger(dsn)
            subprocess.run(
                _bulkgetty(
                    "ledger",
                    "init",
                    str(manifest),
                    "--ledger",
                    dsn,
                    "--downloads-remaining",
                    str(n),
                    "--api-rate",
                    f"{qps:g}",
                ),
                env=env,
                check=True,
                capture_output=True,
                cwd=REPO,
            )
            cmds = [
                _bulkgetty("run", "--ledger", dsn, "--out", str(root / f"w{i}"), *common)
                for i in range(workers)
            ]
        before = sb.stats.api_requests
        start = time.monotonic()
        procs = [subprocess.Popen(c, env=env, cwd=REPO, stdout=subprocess.DEVNULL) for c in cmds]
        codes = [p.wait(timeout=600) for p in procs]
        wall = time.monotonic() - start
        api = sb.stats.api_requests - before
        ok = all(c == 0 for c in codes) and _check(sb, root, ids)
        stamps = sorted(spend.at for spend in sb.ledger)
        steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
        return Row(
            mode=mode,
            workers=workers,
            assets=n,
            wall=round(wall, 2),
            assets_per_s=round(n / wall, 2),
            api_per_s=round(api / wall, 2),
            share_of_limit=round(api / wall / qps, 3),
            steady_per_s=round(steady, 2),
            rejected_429=sb.stats.rejected_429,
            ok=ok,
        )


def _reset_ledger(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(
            "DROP TABLE IF EXISTS bulkgetty_assets, bulkgetty_budget, bulkgetty_rate, "
            "bulkgetty_runs, bulkgetty_meta"
        )


@contextlib.contextmanager
def ledger_dsn(given: str | None) -> Iterator[str | None]:
    if given:
        yield given
        return
    sys.path.insert(0, str(REPO))
    from tests.postgres import postgres_server, unavailable

    why = unavailable()
    if why:
        print(f"ledger rows skipped: {why}", file=sys.stderr)
        yield None
        return
    try:
        with postgres_server() as pg:
            yield pg.database()
    except RuntimeError as exc:
        print(f"ledger rows skipped: {exc}", file=sys.stderr)
        yield None


def limiter_precision(dsn: str, rate: float, workers: int, slots: int) -> str:
    """How closely the ledger's shared limiter holds its rate: `workers` limiters (one
    connection each, as separate worker processes have) take `slots` slots as fast as they
    can; the achieved rate is measured between the first and the last slot."""
    import asyncio

    from bulkgetty.stages.ledger.store import SharedRateLimiter, init_ledger

    _reset_ledger(dsn)
    init_ledger(dsn, [], downloads_remaining=0, api_rate=rate)

    async def measure() -> float:
        limiters = [await SharedRateLimiter.open(dsn) for _ in range(workers)]
        stamps: list[float] = []

        async def take(lim: SharedRateLimiter, n: int) -> None:
            for _ in range(n):
                await lim.acquire()
                stamps.append(time.monotonic())

        try:
            await asyncio.gather(*(take(lim, slots // workers) for lim in limiters))
        finally:
            for lim in limiters:
                await lim.close()
        stamps.sort()
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    achieved = asyncio.run(measure())
    return (
        f"shared limiter: {workers} workers took {slots} slots at {rate:g}/s: "
        f"achieved {achieved:.2f}/s ({achieved / rate:.1%} of the rate)"
    )


def table(rows: Sequence[Row], qps: float) -> str:
    lines = [
        f"| mode | workers | assets | wall s | assets/s | API q/s | of {qps:g} q/s "
        "| POST/s first to last | 429 | ok |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.mode} | {r.workers} | {r.assets} | {r.wall:.2f} | {r.assets_per_s:.2f} | "
            f"{r.api_per_s:.2f} | {r.share_of_limit:.0%} | {r.steady_per_s:.2f} | "
            f"{r.rejected_429} | "
            f"{'yes' if r.ok else 'NO'} |"
        )
    return "\n".join(lines)


def median_row(runs: list[Row]) -> Row:
    mid = sorted(runs, key=lambda r: r.wall)[len(runs) // 2]
    return Row(
        **{
            **asdict(mid),
            "ok": all(r.ok for r in runs),
            "rejected_429": max(r.rejected_429 for r in runs),
            "assets_per_s": round(statistics.median(r.assets_per_s for r in runs), 2),
        }
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaleout", description=__doc__)
    p.add_argument("--mode", choices=("shards", "ledger", "both"), default="both")
    p.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    p.add_argument("--assets", type=int, default=200)
    p.add_argument("--qps", type=float, default=20.0, help="the sandbox's API rate limit")
    p.add_argument("--runs", type=int, default=1, help="reps per row (median wall shown)")
    p.add_argument("--ledger-dsn", help="an existing PostgreSQL (its bulkgetty_* tables reset)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")]
    modes = ["shards", "ledger"] if args.mode == "both" else [args.mode]
    rows: list[Row] = []
    with ledger_dsn(args.ledger_dsn if "ledger" in modes else "-") as dsn:
        for mode in modes:
            if mode == "ledger" and dsn is None:
                continue
            for k in counts:
                runs = [one_run(mode, k, args.assets, args.qps, dsn) for _ in range(args.runs)]
                rows.append(median_row(runs))
                print(f"{mode} x{k}: {rows[-1].assets_per_s} assets/s", file=sys.stderr)
        if "ledger" in modes and dsn is not None:
            print(limiter_precision(dsn, args.qps * 2.5, max(counts), args.assets))
    print(table(rows, args.qps))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 0 if rows and all(r.ok and r.rejected_429 == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
