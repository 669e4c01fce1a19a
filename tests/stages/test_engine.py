"""engine.py through its public async API, against the embedded sandbox in this event loop.

Every test talks to real aiohttp servers on 127.0.0.1. Quota is checked against the sandbox's
own ledger (`spends_by_asset`), files against what the sandbox says they must hash to.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulkgetty.assets import Asset
from bulkgetty.config import RunOptions
from bulkgetty.errors import AuthenticationError, JournalError
from bulkgetty.events import (
    AssetAcquired,
    AssetDone,
    AssetFailed,
    AssetWaiting,
    Event,
    QuotaReached,
    RunFinished,
    RunStarted,
)
from bulkgetty.getty.auth import Credentials
from bulkgetty.getty.retry import RetryPolicy
from bulkgetty.sandbox import Faults, Product, Sandbox, SandboxConfig
from bulkgetty.stages import engine
from bulkgetty.stages.engine import Downloader, RunResult
from bulkgetty.stages.journal import Journal

pytestmark = pytest.mark.timeout(60)

POLICY = RetryPolicy(backoff_base=0.01, backoff_max=0.05)
BASE = SandboxConfig(image_bytes=(5_000, 60_000), video_bytes=(60_000, 150_000))
#: Seconds an in-doubt POST waits before the history is read (the sandbox has no lag).
SETTLE = 0.2
REPORT_FIELDS = {"id", "asset_type", "product_type", "status", "path", "bytes", "sha256", "error"}


# ------------------------------------------------------------------ helpers


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    async with Sandbox(BASE) as sandbox:
        yield sandbox


def images(n: int, start: int = 100) -> list[Asset]:
    return [Asset(str(i)) for i in range(start, start + n)]


class Run:
    """One finished run: its result, events and report rows."""

    def __init__(self, result: RunResult, events: list[Event]) -> None:
        self.result = result
        self.events = events
        self.rows: list[dict[str, Any]] = [
            orjson.loads(line) for line in result.report_path.read_bytes().splitlines()
        ]

    @property
    def exit_code(self) -> int:
        return self.result.exit_code

    def status(self) -> dict[str, str]:
        return {r["id"]: r["status"] for r in self.rows}

    def row(self, asset_id: str) -> dict[str, Any]:
        (found,) = [r for r in self.rows if r["id"] == asset_id]
        return found


async def download(
    sb: Sandbox,
    out: Path,
    rows: Iterable[Asset],
    *,
    credentials: Credentials | None = None,
    **options: Any,
) -> Run:
    # The sandbox's history shows a spend at once: no need to wait the default settle time.
    defaults = {"concurrency": 4, "history_settle": SETTLE}
    opts = RunOptions(out_dir=out, api_rate=None, **{**defaults, **options})
    creds = credentials or Credentials.from_env(sb.credentials_env())
    events: list[Event] = []
    async with asyncio.timeout(45):
        async with Downloader(
            creds, opts, api_url=sb.api_url, policy=POLICY, on_event=events.append
        ) as d:
            result = await d.run(list(rows))
    return Run(result, events)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_file_matches(sb: Sandbox, run: Run, asset: Asset, out: Path) -> Path:
    """The report row's file exists in `out`, and is byte for byte what the sandbox serves."""
    row = run.row(asset.id)
    exp = sb.expected(
        asset.asset_type,
        asset.id,
        height=asset.height,
        size=asset.size,
        file_type=asset.file_type,
    )
    assert row["status"] in ("downloaded", "already_done"), row
    path = Path(row["path"])
    assert path.parent.resolve() == out.resolve()
    assert path.stat().st_size == exp.length == row["bytes"]
    assert sha256_of(path) == exp.sha256 == row["sha256"]
    return path


def visible_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name != ".bulkgetty")


def assert_no_credentials_at_delivery(sb: Sandbox) -> None:
    assert sb.stats.delivery_requests, "no delivery request was recorded"
    for req in sb.stats.delivery_requests:
        names = {h.lower() for h in req.headers}
        assert "api-key" not in names, req
        assert "authorization" not in names, req


def requests_for(sb: Sandbox, asset_id: str) -> list[Any]:
    return [r for r in sb.stats.delivery_requests if f"/{asset_id}" in r.path.split(",")[0]]


def total_spends(sb: Sandbox) -> int:
    return sum(sb.spends_by_asset().values())


# ------------------------------------------------------------------ the happy path


async def test_every_file_equals_what_the_sandbox_serves(sb: Sandbox, tmp_path: Path) -> None:
    out = tmp_path / "out"
    batch = [
        *images(6),
        Asset("200", "video"),
        Asset("201", "video", size="hd1"),
        Asset("300", height=500),
        Asset("301", file_type="eps"),
    ]
    run = await download(sb, out, batch)
    assert run.exit_code == 0
    assert run.result.summary.downloaded == len(batch)
    assert run.result.summary.spends == len(batch)
    assert len(run.rows) == len(batch)
    for row in run.rows:
        assert set(row) == REPORT_FIELDS
        assert row["error"] is None
    paths = {assert_file_matches(sb, run, a, out) for a in batch}
    assert len(paths) == len(batch)
    # finished files lie directly in DIR, nothing half-done is left
    assert visible_files(out) == sorted(p.name for p in paths)
    assert not [p for p in out.rglob("*.part")]
    # the default report lives in DIR/.bulkgetty/
    assert run.result.report_path == out / ".bulkgetty" / "report.jsonl"
    # each asset spent exactly once
    assert sb.spends_by_asset() == {f"{a.asset_type}/{a.id}": 1 for a in batch}
    # default Getty names are kept as sent
    exp = sb.expected("image", "100")
    assert Path(run.row("100")["path"]).name == exp.filename
    assert_no_credentials_at_delivery(sb)


async def test_a_folder_in_memory_runs_the_journal_and_small_files_on_the_loop(
    sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a memory filesystem (tmpfs) no journal thread runs and every file is still exactly
    what the sandbox serves, bought once; a rerun spends nothing."""
    seen: list[str] = []
    monkeypatch.setattr(engine, "on_memory_filesystem", lambda path: seen.append(str(path)) or True)
    out = tmp_path / "out"
    batch = [*images(6), Asset("200", "video")]
    threads: set[str] = set()

    def watch(event: Event) -> None:
        threads.update(t.name for t in threading.enumerate())

    opts = RunOptions(out_dir=out, api_rate=None, concurrency=4, history_settle=SETTLE)
    creds = Credentials.from_env(sb.credentials_env())
    async with asyncio.timeout(45):
        async with Downloader(creds, opts, api_url=sb.api_url, policy=POLICY, on_event=watch) as d:
            result = await d.run(batch)
    assert seen == [str(out)]
    assert "bulkgetty-journal" not in threads
    assert result.exit_code == 0 and result.summary.downloaded == len(batch)
    assert sb.spends_by_asset() == {f"{a.asset_type}/{a.id}": 1 for a in batch}
    for a in batch:
        exp = sb.expected(a.asset_type, a.id)
        assert sha256_of(out / exp.filename) == exp.sha256
    again = await download(sb, out, batch)
    assert set(again.status().values()) == {"already_done"}
    assert total_spends(sb) == len(batch)


async def test_rerun_spends_nothing_and_sends_no_request(sb: Sandbox, tmp_path: Path) -> None:
    out = tmp_path / "out"
    batch = images(5)
    first = await download(sb, out, batch)
    assert first.exit_code == 0
    api, tokens, deliveries = (
        sb.stats.api_requests,
        sb.stats.token_requests,
        len(sb.stats.delivery_requests),
    )
    second = await download(sb, out, batch)
    assert second.exit_code == 0
    assert set(second.status().values()) == {"already_done"}
    assert second.result.summary.already_done == 5
    assert second.result.summary.spends == 0
    assert sb.stats.api_requests == api
    assert sb.stats.token_requests == tokens
    assert len(sb.stats.delivery_requests) == deliveries
    assert total_spends(sb) == 5
    for a in batch:
        assert_file_matches(sb, second, a, out)


async def test_deleted_file_is_fetched_again_on_its_paid_uri(sb: Sandbox, tmp_path: Path) -> None:
    """A finished file that went missing is not already_done; its URI is still valid."""
    out = tmp_path / "out"
    batch = images(2)
    first = await download(sb, out, batch)
    Path(first.row("100")["path"]).unlink()
    second = await download(sb, out, batch)
    assert second.status() == {"100": "downloaded", "101": "already_done"}
    assert_file_matches(sb, second, batch[0], out)
    assert total_spends(sb) == 2


async def test_duplicate_rows_are_bought_and_reported_once(sb: Sandbox, tmp_path: Path) -> None:
    out = tmp_path / "out"
    a, b = Asset("100"), Asset("101")
    run = await download(sb, out, [a, b, a, Asset("100"), b])
    assert run.exit_code == 0
    assert sorted(r["id"] for r in run.rows) == ["100", "101"]
    assert sb.spends_by_asset() == {"image/100": 1, "image/101": 1}
    assert sb.stats.post_requests == {"image/100": 1, "image/101": 1}
    assert len(visible_files(out)) == 2


async def test_same_id_with_other_options_is_another_download(sb: Sandbox, tmp_path: Path) -> None:
    out = tmp_path / "out"
    small, large = Asset("100", height=300), Asset("100")
    run = await download(sb, out, [small, large])
    assert run.exit_code == 0
    assert sb.spends_by_asset() == {"image/100": 2}
    files = visible_files(out)
    assert len(files) == 2  # neither overwrote the other
    hashes = {sha256_of(out / f) for f in files}
    assert hashes == {
        sb.expected("image", "100", height=300).sha256,
        sb.expected("image", "100").sha256,
    }


async def test_auto_download_303_flow(sb: Sandbox, tmp_path: Path) -> None:
    out = tmp_path / "out"
    batch = [*images(3), Asset("200", "video")]
    run = await download(sb, out, batch, auto_download=True)
    assert run.exit_code == 0
    for a in batch:
        assert_file_matches(sb, run, a, out)
    assert total_spends(sb) == 4
    assert_no_credentials_at_delivery(sb)


async def test_segmented_transfer_assembles_the_exact_file(sb: Sandbox, tmp_path: Path) -> None:
    # Capped per connection: a file starts on one stream and is split only when it is slow.
    sb.configure(sizes={"100": 300_001, "101": 250_000}, bandwidth=100_000)
    out = tmp_path / "out"
    batch = images(2)
    run = await download(sb, out, batch, segments=4, segment_threshold=100_000)
    assert run.exit_code == 0
    for a in batch:
        assert_file_matches(sb, run, a, out)
    ranged = [r for r in requests_for(sb, "100") if "Range" in r.headers]
    assert len(ranged) >= 2  # it really was fetched in ranges


# ------------------------------------------------------------------ quota


async def test_max_downloads_spends_exactly_k_then_rerun_finishes(
    sb: Sandbox, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    batch = images(7)
    first = await download(sb, out, batch, max_downloads=3)
    assert first.exit_code == 3
    assert total_spends(sb) == 3
    statuses = list(first.status().values())
    assert statuses.count("downloaded") == 3
    assert statuses.count("waiting_for_quota") == 4
    for row in first.rows:
        if row["status"] == "waiting_for_quota":
            assert row["path"] is None
            assert "--max-downloads" in (row["error"] or "")
    assert sum(isinstance(e, AssetWaiting) for e in first.events) == 4

    second = await download(sb, out, batch)
    assert second.exit_code == 0
    assert sorted(second.status().values()) == ["already_done"] * 3 + ["downloaded"] * 4
    assert sb.spends_by_asset() == {f"image/{a.id}": 1 for a in batch}
    for a in batch:
        assert_file_matches(sb, second, a, out)


async def test_max_downloads_zero_spends_nothing(sb: Sandbox, tmp_path: Path) -> None:
    run = await download(sb, tmp_path / "out", images(3), max_downloads=0)
    assert run.exit_code == 3
    assert set(run.status().values()) == {"waiting_for_quota"}
    assert total_spends(sb) == 0
    assert sum(sb.stats.post_requests.values()) == 0


async def test_product_limit_reached_then_reset_then_rerun_completes(tmp_path: Path) -> None:
    limit, n = 4, 7  # the reset limit covers what is left
    config = replace(BASE, products=(Product(1001, "premiumaccess", download_limit=limit),))
    async with Sandbox(config) as sb:
        out = tmp_path / "out"
        batch = images(n)
        first = await download(sb, out, batch, concurrency=2)
        assert first.exit_code == 3
        assert total_spends(sb) == limit
        statuses = list(first.status().values())
        assert statuses.count("downloaded") == limit
        assert statuses.count("waiting_for_quota") == n - limit
        quota_events = [e for e in first.events if isinstance(e, QuotaReached)]
        assert len(quota_events) == 1
        # after OverageLimitReached no new POST starts; only those already in flight may be refused
        assert sum(sb.stats.post_requests.values()) <= limit + 2

        sb.reset_quota()
        second = await download(sb, out, batch, concurrency=2)
        assert second.exit_code == 0
        assert total_spends(sb) == n
        assert sb.spends_by_asset() == {f"image/{a.id}": 1 for a in batch}
        for a in batch:
            assert_file_matches(sb, second, a, out)


# ------------------------------------------------------------------ delivery faults


async def test_connection_cut_is_resumed_from_the_bytes_on_disk(
    sb: Sandbox, tmp_path: Path
) -> None:
    total, cut = 3_000_000, 1_500_000
    # A bandwidth cap makes the client read bytes as they come: aiohttp drops what it still
    # buffers when the connection dies, so without it the loss is not measurable.
    sb.configure(
        sizes={"100": total}, bandwidth=4_000_000, faults=Faults(close_after={"100": (cut, 1)})
    )
    out = tmp_path / "out"
    run = await download(sb, out, [Asset("100")])
    assert run.exit_code == 0
    assert_file_matches(sb, run, Asset("100"), out)
    gets = requests_for(sb, "100")
    assert len(gets) == 2
    assert "Range" not in gets[0].headers
    resumed = gets[1].headers.get("Range", "")
    assert resumed.startswith("bytes="), gets[1].headers
    start = int(resumed.removeprefix("bytes=").split("-")[0])
    # it asked only for what was missing (never for bytes the cut connection did not send)
    assert 0 < start <= cut
    assert "If-Range" in gets[1].headers
    assert total_spends(sb) == 1


async def test_html_error_page_is_never_saved_as_media(sb: Sandbox, tmp_path: Path) -> None:
    sb.configure(faults=Faults(html_error={"100": 1, "101": 1000}))
    out = tmp_path / "out"
    run = await download(sb, out, images(2))
    assert run.exit_code == 1
    assert_file_matches(sb, run, Asset("100"), out)
    failed = run.row("101")
    assert failed["status"] == "failed"
    assert failed["path"] is None
    assert failed["error"]
    for name in visible_files(out):
        assert b"<html" not in (out / name).read_bytes()[:200].lower()
    assert len(visible_files(out)) == 1
    assert total_spends(sb) == 2


async def test_redirect_chain_across_origins(sb: Sandbox, tmp_path: Path) -> None:
    sb.configure(faults=Faults(redirects={"100": (302, 307, 301, 303)}))
    out = tmp_path / "out"
    run = await download(sb, out, [Asset("100")])
    assert run.exit_code == 0
    assert_file_matches(sb, run, Asset("100"), out)
    origins = {r.origin for r in requests_for(sb, "100")}
    assert origins == set(sb.delivery_urls)
    assert_no_credentials_at_delivery(sb)


async def test_redirect_loop_fails_without_extra_spend(sb: Sandbox, tmp_path: Path) -> None:
    sb.configure(faults=Faults(redirect_loop=frozenset({"100"})))
    run = await download(sb, tmp_path / "out", [Asset("100")])
    assert run.exit_code == 1
    assert run.row("100")["status"] == "failed"
    assert total_spends(sb) == 1


async def test_expired_uri_fails_naming_the_flag_then_reacquires_exactly_once(
    sb: Sandbox, tmp_path: Path
) -> None:
    sb.configure(faults=Faults(expired=frozenset({"100"})))
    out = tmp_path / "out"
    batch = images(2)
    first = await download(sb, out, batch)
    assert first.exit_code == 1
    assert first.row("101")["status"] == "downloaded"
    row = first.row("100")
    assert row["status"] == "failed"
    assert "--reacquire-expired" in row["error"]
    assert sb.spends_by_asset()["image/100"] == 1

    # without the flag, a rerun does not buy again
    again = await download(sb, out, batch)
    assert again.row("100")["status"] == "failed"
    assert "--reacquire-expired" in again.row("100")["error"]
    assert again.row("101")["status"] == "already_done"
    assert sb.spends_by_asset()["image/100"] == 1

    # with the flag: exactly one more download, and the file arrives
    sb.configure(faults=Faults())
    flagged = await download(sb, out, batch, reacquire_expired=True)
    assert flagged.exit_code == 0
    assert_file_matches(sb, flagged, Asset("100"), out)
    assert sb.spends_by_asset() == {"image/100": 2, "image/101": 1}


async def test_reacquire_expired_spends_at_most_one_more_per_run(
    sb: Sandbox, tmp_path: Path
) -> None:
    """With the flag, a URI refused again after the re-buy is not bought a third time."""
    sb.configure(faults=Faults(expired=frozenset({"100"})))
    out = tmp_path / "out"
    first = await download(sb, out, [Asset("100")])
    assert first.row("100")["status"] == "failed"
    assert sb.spends_by_asset()["image/100"] == 1

    flagged = await download(sb, out, [Asset("100")], reacquire_expired=True)
    assert flagged.row("100")["status"] == "failed"
    assert flagged.row("100")["error"]
    assert sb.spends_by_asset()["image/100"] == 2  # exactly one more, not two
    assert flagged.result.summary.spends == 1


async def test_reacquire_expired_in_first_run_buys_at_most_twice(
    sb: Sandbox, tmp_path: Path
) -> None:
    """First purchase, refused, one re-buy allowed by the flag, refused again: stop."""
    sb.configure(faults=Faults(expired=frozenset({"100"})))
    run = await download(sb, tmp_path / "out", [Asset("100")], reacquire_expired=True)
    assert run.row("100")["status"] == "failed"
    assert sb.spends_by_asset()["image/100"] == 2


async def test_hostile_content_disposition_never_escapes_the_folder(
    sb: Sandbox, tmp_path: Path
) -> None:
    hostile = {
        "100": 'attachment; filename="../../escape.jpg"',
        "101": "attachment; filename*=UTF-8''..%2F..%2Fescape2.jpg",
        "102": 'attachment; filename="/tmp/abs-escape.jpg"',
        "103": 'attachment; filename="..\\\\..\\\\win-escape.jpg"',
        "104": "attachment; filename*=UTF-8''bad%01name%7F%0A.jpg",
        "105": 'attachment; filename=".."',
        "106": 'attachment; filename="' + "a" * 400 + '.jpg"',
        "107": 'attachment; filename=".bulkgetty"',
    }
    sb.configure(faults=Faults(disposition=hostile))
    root = tmp_path / "root"
    out = root / "a" / "out"
    batch = [Asset(i) for i in hostile]
    before = set(Path("/tmp").glob("abs-escape*"))
    run = await download(sb, out, batch)
    assert run.exit_code == 0
    for a in batch:
        path = assert_file_matches(sb, run, a, out)
        name = path.name
        assert "/" not in name and "\\" not in name
        assert not any(ord(c) < 32 or ord(c) == 127 for c in name)
        assert len(name.encode()) <= 255
        assert name not in (".", "..", ".bulkgetty")
    # nothing landed anywhere but in DIR
    outside = [p for p in root.rglob("*") if out not in p.parents and p != out]
    assert outside == [root / "a"]
    assert set(Path("/tmp").glob("abs-escape*")) == before
    assert not (tmp_path / "escape.jpg").exists()
    assert len(visible_files(out)) == len(batch)
    # the journal still lives where it should
    assert (out / ".bulkgetty" / "journal.sqlite").is_file()


# ------------------------------------------------------------------ doubtful POSTs


async def test_post_5xx_that_spent_is_resolved_through_history_not_retried(
    sb: Sandbox, tmp_path: Path
) -> None:
    sb.configure(faults=Faults(post_status={"100": (500, 1, True)}))
    out = tmp_path / "out"
    batch = images(2)
    first = await download(sb, out, batch)
    assert first.exit_code == 1
    row = first.row("100")
    assert row["status"] == "failed"
    assert "--reacquire-expired" in row["error"]
    assert sb.stats.post_requests["image/100"] == 1  # never blind-retried
    assert sb.spends_by_asset() == {"image/100": 1, "image/101": 1}
    assert first.result.summary.spends == 2  # the charged-but-lost one counts

    second = await download(sb, out, batch)
    assert second.row("100")["status"] == "failed"
    assert "--reacquire-expired" in second.row("100")["error"]
    assert sb.spends_by_asset()["image/100"] == 1

    third = await download(sb, out, batch, reacquire_expired=True)
    assert third.exit_code == 0
    assert_file_matches(sb, third, Asset("100"), out)
    assert sb.spends_by_asset()["image/100"] == 2


@pytest.mark.parametrize(("settle", "posts"), [(0.0, 2), (1.5, 1)])
async def test_settle_time_keeps_a_lagging_history_from_causing_a_second_purchase(
    sb: Sandbox, tmp_path: Path, settle: float, posts: int
) -> None:
    """A POST charged but answered 503, and a history that shows spends 1 s late: read at
    once (settle 0) it says "unspent" and the asset is bought twice; read once the POST is
    `settle` seconds old, the spend is there and nothing is bought again."""
    sb.configure(faults=Faults(post_status={"100": (503, 1, True)}), history_lag=1.0)
    run = await download(sb, tmp_path / "out", images(1), history_settle=settle)
    assert sb.stats.post_requests["image/100"] == posts
    assert sb.spends_by_asset()["image/100"] == posts
    assert run.status() == {"100": "downloaded" if posts == 2 else "failed"}


async def test_post_5xx_that_spent_nothing_is_retried_and_bought_once(
    sb: Sandbox, tmp_path: Path
) -> None:
    sb.configure(faults=Faults(post_status={"100": (503, 2, False)}))
    out = tmp_path / "out"
    run = await download(sb, out, [Asset("100")])
    assert run.exit_code == 0
    assert_file_matches(sb, run, Asset("100"), out)
    assert sb.stats.post_requests["image/100"] == 3
    assert sb.spends_by_asset() == {"image/100": 1}
    assert run.result.summary.spends == 1


async def test_missing_asset_fails_without_spending(sb: Sandbox, tmp_path: Path) -> None:
    sb.configure(missing_ids=frozenset({"404"}))
    run = await download(sb, tmp_path / "out", [Asset("404"), Asset("100")])
    assert run.exit_code == 1
    assert run.row("404")["status"] == "failed"
    assert run.row("404")["error"]
    assert sb.spends_by_asset() == {"image/100": 1}


# ------------------------------------------------------------------ secrets


async def test_no_secret_reaches_report_or_events(tmp_path: Path) -> None:
    config = replace(
        BASE,
        api_secret="very-secret-api-secret",
        password="very-secret-password",
        missing_ids=frozenset({"404"}),
        faults=Faults(
            post_status={"500": (500, 1, True)},
            expired=frozenset({"410"}),
            html_error={"501": 100},
        ),
    )
    async with Sandbox(config) as sb:
        out = tmp_path / "out"
        run = await download(sb, out, [Asset(i) for i in ("100", "404", "500", "410", "501")])
        assert run.exit_code == 1
        tokens = [*sb._state.access_tokens, *sb._state.refresh_tokens]
        assert tokens, "the run used no token?"
        secrets = [config.api_secret, config.password, *tokens]
        report_text = run.result.report_path.read_text()
        events_text = "\n".join(orjson.dumps(e.to_dict()).decode() for e in run.events)
        journal_errors = "".join(r["error"] or "" for r in run.rows)
        assert journal_errors  # there were errors to leak through
        for secret in secrets:
            assert secret not in report_text
            assert secret not in events_text
        assert_no_credentials_at_delivery(sb)


# ------------------------------------------------------------------ events


async def test_events_stream_from_run_started_to_run_finished(sb: Sandbox, tmp_path: Path) -> None:
    out = tmp_path / "out"
    opts = RunOptions(out_dir=out, api_rate=None, concurrency=3)
    creds = Credentials.from_env(sb.credentials_env())
    seen: list[Event] = []
    async with asyncio.timeout(30):
        async with Downloader(creds, opts, api_url=sb.api_url, policy=POLICY) as d:
            async for event in d.events(images(4)):
                seen.append(event)
    assert isinstance(seen[0], RunStarted)
    assert isinstance(seen[-1], RunFinished)
    assert sum(isinstance(e, RunStarted) for e in seen) == 1
    assert sum(isinstance(e, RunFinished) for e in seen) == 1
    done = [e for e in seen if isinstance(e, AssetDone)]
    assert sorted(e.id for e in done) == ["100", "101", "102", "103"]
    acquired = [e for e in seen if isinstance(e, AssetAcquired)]
    assert len(acquired) == 4
    finished = seen[-1]
    assert isinstance(finished, RunFinished)
    assert (finished.downloaded, finished.spends, finished.exit_code) == (4, 4, 0)
    for e in seen:
        d_ = e.to_dict()
        assert {"event", "v", "t"} <= set(d_)
    # each asset is acquired before it is done
    order = {(type(e), getattr(e, "id", None)): i for i, e in enumerate(seen)}
    for e in done:
        assert order[(AssetAcquired, e.id)] < order[(AssetDone, e.id)]


async def test_failed_and_waiting_assets_have_events(sb: Sandbox, tmp_path: Path) -> None:
    sb.configure(missing_ids=frozenset({"404"}))
    run = await download(sb, tmp_path / "out", [Asset("404"), *images(3)], max_downloads=1)
    kinds = [type(e) for e in run.events]
    assert kinds[0] is RunStarted and kinds[-1] is RunFinished
    failed = [e for e in run.events if isinstance(e, AssetFailed)]
    waiting = [e for e in run.events if isinstance(e, AssetWaiting)]
    done = [e for e in run.events if isinstance(e, AssetDone)]
    assert len(failed) + len(waiting) + len(done) == 4
    assert len(done) <= 1


# ------------------------------------------------------------------ cancellation


def _bulkgetty_tasks() -> list[asyncio.Task[Any]]:
    current = asyncio.current_task()
    found = []
    for task in asyncio.all_tasks():
        if task is current or task.done():
            continue
        coro = task.get_coro()
        code = getattr(coro, "cr_code", None) or getattr(coro, "ag_code", None)
        filename = code.co_filename if code else ""
        stack = "".join(str(f.f_code.co_filename) for f in task.get_stack())
        text = filename + stack
        if f"bulkgetty{os.sep}" in text and f"sandbox{os.sep}" not in text:
            found.append(task)
    return found


async def test_cancelled_run_leaves_no_task_and_rerun_completes(tmp_path: Path) -> None:
    """Cancel while transfers are in flight (all purchases recorded), then run again."""
    n = 6
    config = replace(BASE, image_bytes=(80_000, 120_000), bandwidth=200_000)
    async with Sandbox(config) as sb:
        out = tmp_path / "out"
        batch = images(n)
        opts = RunOptions(out_dir=out, api_rate=None, concurrency=3, acquire_ahead=n)
        creds = Credentials.from_env(sb.credentials_env())
        events: list[Event] = []
        async with Downloader(
            creds, opts, api_url=sb.api_url, policy=POLICY, on_event=events.append
        ) as d:
            task = asyncio.create_task(d.run(batch))
            async with asyncio.timeout(20):
                while not (
                    sum(isinstance(e, AssetAcquired) for e in events) == n
                    and any(isinstance(e, AssetDone) for e in events)
                ):
                    assert not task.done(), "the run finished before it could be cancelled"
                    await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
        await asyncio.sleep(0)
        assert _bulkgetty_tasks() == []
        done_before = sum(isinstance(e, AssetDone) for e in events)
        assert done_before < n
        assert total_spends(sb) == n

        run = await download(sb, out, batch)
        assert run.exit_code == 0
        assert sb.spends_by_asset() == {f"image/{a.id}": 1 for a in batch}
        for a in batch:
            assert_file_matches(sb, run, a, out)
        assert not list(out.rglob("*.part"))


async def test_cancel_during_a_slow_post_waits_for_its_answer_and_keeps_the_uri(
    tmp_path: Path,
) -> None:
    """Cancelling the run while a charged POST is still answering does not drop it: the run
    waits for the answer, commits the URI, and the rerun downloads it without spending."""
    config = replace(BASE, faults=Faults(post_hang={"100": 1.5}))
    async with Sandbox(config) as sb:
        out = tmp_path / "out"
        opts = RunOptions(out_dir=out, api_rate=None, concurrency=1, history_settle=SETTLE)
        creds = Credentials.from_env(sb.credentials_env())
        async with Downloader(creds, opts, api_url=sb.api_url, policy=POLICY) as d:
            task = asyncio.create_task(d.run([Asset("100"), Asset("101")]))
            async with asyncio.timeout(20):
                while not sb.ledger:
                    await asyncio.sleep(0.01)
            assert d.purchases_in_flight == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
        assert total_spends(sb) == 1, "the stop started a new purchase"

        run = await download(sb, out, [Asset("100"), Asset("101")])
        assert run.exit_code == 0
        assert sb.stats.post_requests["image/100"] == 1
        assert total_spends(sb) == 2  # 100 once (its URI was kept), 101 once
        assert_file_matches(sb, run, Asset("100"), out)


async def test_cancel_before_a_post_leaves_sends_nothing(tmp_path: Path) -> None:
    """A purchase still waiting for the rate limiter when the run is cancelled never leaves:
    no spend, and the asset is pending (not in doubt) for the next run."""
    async with Sandbox(BASE) as sb:
        out = tmp_path / "out"
        opts = RunOptions(out_dir=out, api_rate=0.4, concurrency=1, history_settle=SETTLE)
        creds = Credentials.from_env(sb.credentials_env())
        async with Downloader(creds, opts, api_url=sb.api_url, policy=POLICY) as d:
            task = asyncio.create_task(d.run([Asset("100"), Asset("101")]))
            async with asyncio.timeout(20):
                while not sb.ledger:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # the second POST now waits ~2 s for its limiter slot
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
        assert total_spends(sb) == 1
        assert sb.stats.post_requests["image/101"] == 0
        journal = Journal(out, lock=False, read_only=True)
        try:
            record = journal.get(Asset("101").key)
        finally:
            journal.close()
        assert record is not None and record.state.value == "pending"


async def test_a_journal_failure_after_spending_reports_every_row_and_exits_1(
    sb: Sandbox, tmp_path: Path
) -> None:
    """The journal fails (here: `record_done` of the 3rd file) after downloads were spent:
    the run does not raise as if nothing was spent (exit 2) but ends reported: every asset
    has a row, RunFinished is emitted, the exit status is 1 and the error is kept."""
    out = tmp_path / "out"
    opts = RunOptions(out_dir=out, api_rate=None, concurrency=2, history_settle=SETTLE)
    events: list[Event] = []
    creds = Credentials.from_env(sb.credentials_env())
    async with Downloader(
        creds, opts, api_url=sb.api_url, policy=POLICY, on_event=events.append
    ) as d:
        journal = d.journal.journal
        real = journal.record_done
        calls = 0

        def failing_done(*args: Any, **kwargs: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise JournalError("journal commit failed: disk I/O error")
            real(*args, **kwargs)

        journal.record_done = failing_done  # type: ignore[method-assign]
        async with asyncio.timeout(30):
            result = await d.run(images(8))
    run = Run(result, events)
    assert run.exit_code == 1
    assert isinstance(result.error, JournalError)
    assert sorted(run.status()) == sorted(a.id for a in images(8))
    assert isinstance(events[-1], RunFinished) and events[-1].exit_code == 1
    assert result.summary.spends == total_spends(sb) >= 3


# ------------------------------------------------------------------ credentials


async def test_bad_credentials_raise_and_spend_nothing(sb: Sandbox, tmp_path: Path) -> None:
    env = {**sb.credentials_env(), "GETTY_PASSWORD": "wrong-password"}
    out = tmp_path / "out"
    with pytest.raises(AuthenticationError) as info:
        await download(sb, out, images(3), credentials=Credentials.from_env(env))
    assert "wrong-password" not in str(info.value)
    assert total_spends(sb) == 0
    assert sum(sb.stats.post_requests.values()) == 0
    assert sb.stats.delivery_requests == []
    assert visible_files(out) == []


async def test_bad_api_key_raises_and_spends_nothing(sb: Sandbox, tmp_path: Path) -> None:
    env = {**sb.credentials_env(), "GETTY_API_KEY": "not-the-key"}
    with pytest.raises(AuthenticationError):
        await download(sb, tmp_path / "out", images(2), credentials=Credentials.from_env(env))
    assert total_spends(sb) == 0


async def test_downloader_with_no_rows_exits_zero(sb: Sandbox, tmp_path: Path) -> None:
    run = await download(sb, tmp_path / "out", [])
    assert run.exit_code == 0
    assert run.rows == []
    assert total_spends(sb) == 0
