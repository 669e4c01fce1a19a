"""Creating the team's ledger and loading a manifest into it (`bulkgetty ledger init`)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Final

import psycopg

from bulkgetty.assets import Asset
from bulkgetty.errors import JournalError, UsageError
from bulkgetty.stages.journal.records import asset_json
from bulkgetty.stages.ledger.lease import WORKERS_SCHEMA, connect, pg_message

__all__ = ("LEASE_META", "SCHEMA", "init_ledger")

SCHEMA: Final = (
    """
CREATE TABLE IF NOT EXISTS bulkgetty_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bulkgetty_budget (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    remaining BIGINT NOT NULL CHECK (remaining >= 0),
    spent BIGINT NOT NULL DEFAULT 0,
    seeded DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS bulkgetty_rate (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    rate DOUBLE PRECISION CHECK (rate > 0),
    next_slot DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS bulkgetty_runs (
    id BIGSERIAL PRIMARY KEY,
    started DOUBLE PRECISION NOT NULL,
    finished DOUBLE PRECISION,
    manifest TEXT NOT NULL,
    worker TEXT NOT NULL,
    spends INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER
);
CREATE TABLE IF NOT EXISTS bulkgetty_assets (
    key TEXT PRIMARY KEY,
    asset BYTEA NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'intent', 'in_doubt', 'acquired', 'done',
                                         'failed', 'waiting_for_quota')),
    uri TEXT,
    uri_expires DOUBLE PRECISION,
    transfer BYTEA,
    path TEXT,
    bytes BIGINT,
    sha256 TEXT,
    error TEXT,
    spends INTEGER NOT NULL DEFAULT 0 CHECK (spends >= 0),
    attempts INTEGER NOT NULL DEFAULT 0,
    intent_at DOUBLE PRECISION,
    acquired_at DOUBLE PRECISION,
    done_at DOUBLE PRECISION,
    -- one download of the budget is reserved for this asset's POST in flight or in doubt
    holds_budget BOOLEAN NOT NULL DEFAULT false,
    -- host:/folder whose .part files the transfer state refers to
    out_dir TEXT,
    run_id BIGINT,
    updated DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS bulkgetty_assets_open ON bulkgetty_assets (key) WHERE state <> 'done';
"""
    + WORKERS_SCHEMA
)

#: bulkgetty_meta's name for the team's lease (`ledger init --lease`).
LEASE_META: Final = "worker_lease"


def init_ledger(
    dsn: str,
    assets: Iterable[Asset],
    *,
    downloads_remaining: int,
    api_rate: float | None,
    reseed: bool = False,
    lease: float | None = None,
) -> tuple[int, int]:
    """Create the tables, load the manifest's rows and seed the budget and the shared rate.

    Loading again adds only new rows. The budget is seeded once; `reseed` sets it again (the
    account's quota was reset) and never counts downloads reserved by POSTs in flight twice.
    `lease` sets the workers' lease in seconds (default `ledger_lease.LEASE`). Running it again
    also upgrades the tables of a ledger made by an older bulkgetty. Returns (rows added,
    remaining budget).
    """
    if downloads_remaining < 0:
        raise UsageError(f"downloads remaining must be 0 or more, got {downloads_remaining}")
    if lease is not None and lease <= 0:
        raise UsageError(f"--lease must be more than 0 seconds, got {lease:g}")
    db = connect(dsn)
    try:
        with db.transaction():
            db.execute(SCHEMA)
        added = _load(db, assets)
        with db.transaction():
            held = db.execute("SELECT count(*) FROM bulkgetty_assets WHERE holds_budget").fetchone()
            in_flight = int(held[0]) if held else 0
            seed = max(0, downloads_remaining - in_flight)
            if reseed:
                db.execute(
                    "INSERT INTO bulkgetty_budget (id, remaining, seeded) VALUES (1, %s, %s) "
                    "ON CONFLICT (id) DO UPDATE SET remaining = excluded.remaining, "
                    "seeded = excluded.seeded",
                    (seed, time.time()),
                )
            else:
                db.execute(
                    "INSERT INTO bulkgetty_budget (id, remaining, seeded) VALUES (1, %s, %s) "
                    "ON CONFLICT (id) DO NOTHING",
                    (seed, time.time()),
                )
            db.execute(
                "INSERT INTO bulkgetty_rate (id, rate) VALUES (1, %s) "
                "ON CONFLICT (id) DO UPDATE SET rate = excluded.rate",
                (api_rate,),
            )
            if lease is not None:
                db.execute(
                    "INSERT INTO bulkgetty_meta VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (LEASE_META, repr(lease)),
                )
            row = db.execute("SELECT remaining FROM bulkgetty_budget WHERE id = 1").fetchone()
        return added, int(row[0]) if row else 0
    except psycopg.Error as exc:
        raise JournalError(f"ledger: {pg_message(exc)}") from None
    finally:
        db.close()


def _load(db: psycopg.Connection[Any], assets: Iterable[Asset]) -> int:
    """COPY the rows into a temporary table, then add the new ones: fast for millions."""
    now = time.time()
    with db.transaction():
        db.execute("CREATE TEMP TABLE bulkgetty_load (key TEXT, asset BYTEA) ON COMMIT DROP")
        with db.cursor() as cur, cur.copy("COPY bulkgetty_load (key, asset) FROM STDIN") as copy:
            for asset in assets:
                copy.write_row((asset.key, asset_json(asset)))
        cur2 = db.execute(
            "INSERT INTO bulkgetty_assets (key, asset, state, updated) "
            "SELECT DISTINCT ON (key) key, asset, 'pending', %s FROM bulkgetty_load "
            "ON CONFLICT (key) DO NOTHING",
            (now,),
        )
        return cur2.rowcount
