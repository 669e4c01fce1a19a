"""progress.py: the live display is a pure consumer of events; quota is one query, lazily."""

from __future__ import annotations

import asyncio
import io
import re

import pytest
from rich.console import Console

from bulkgetty import events as ev
from bulkgetty.cli.progress import QUOTA_REFRESH, QuotaView, RunDisplay, summary_table
from bulkgetty.errors import AuthenticationError
from bulkgetty.getty.api import ProductInfo


def product(
    kind: str, remaining: int | None, *, status: str = "active", overage: int | None = None
) -> ProductInfo:
    return ProductInfo(1, kind, None, status, 1000, remaining, None, None, overage)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def screen(display: RunDisplay) -> str:
    console = Console(file=io.StringIO(), width=120, force_terminal=False, color_system=None)
    console.print(display._render())
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def test_quota_view_subtracts_spends_after_the_answer_per_product_type() -> None:
    q = QuotaView()
    q.spent("premiumaccess")  # before any answer: nothing to subtract from
    assert q.remaining() is None and q.describe() == "remaining: …"
    q.set_products(
        [
            product("premiumaccess", 10, overage=5),
            product("premiumaccess", 3),
            product("editorialsubscription", 7),
            product("creditpack", 99, status="inactive"),
        ]
    )
    q.spent("premiumaccess")
    q.spent("premiumaccess")
    q.spent(None)  # several product types: the default one is unknown, so not counted
    assert q.remaining() == {"premiumaccess": 16, "editorialsubscription": 7}
    assert q.describe() == "remaining: editorialsubscription 7, premiumaccess 16"


def test_quota_view_charges_unnamed_spends_to_the_only_product() -> None:
    q = QuotaView()
    q.set_products([product("editorialsubscription", 2)])
    for _ in range(3):
        q.spent(None)
    assert q.remaining() == {"editorialsubscription": 0}


async def test_quota_view_asks_once_per_refresh_period_and_gives_up_on_refusal() -> None:
    clock = Clock()
    calls = 0

    async def products() -> list[ProductInfo]:
        nonlocal calls
        calls += 1
        return [product("premiumaccess", 50 - calls)]

    q = QuotaView(clock=clock)
    q.fetch_soon(products)
    q.fetch_soon(products)  # in flight: not asked twice
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    q.fetch_soon(products)  # answered, but too soon
    await asyncio.sleep(0)
    assert calls == 1 and q.remaining() == {"premiumaccess": 49}
    clock.now = QUOTA_REFRESH + 1
    q.fetch_soon(products)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert calls == 2 and q.remaining() == {"premiumaccess": 48}

    async def refused() -> list[ProductInfo]:
        raise AuthenticationError("GET /v3/products: 401", status=401)

    r = QuotaView(clock=clock)
    r.fetch_soon(refused)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert r.describe() == "remaining: unknown"
    r.cancel()


def test_display_shows_files_bytes_spends_and_the_largest_transfers() -> None:
    clock = Clock()
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True)
    display = RunDisplay(console, files_total=10, get_time=clock)
    display.handle(ev.AssetAcquired(id="1", asset_type="video", product_type=None, spends=4))
    flights = (
        ev.InFlight(id="big", asset_type="video", bytes_done=1_500_000, total=3_000_000),
        ev.InFlight(id="small", asset_type="image", bytes_done=0, total=None),
    )
    clock.now = 2.0
    display.handle(
        ev.Progress(
            files_done=3, files_total_seen=10, bytes_done=6_000_000, spends=4, in_flight=flights
        )
    )
    text = screen(display)
    assert re.search(r"files\s.*3/10\s+30%", text), text
    assert "bytes  6.0 MB" in text
    assert "spent 4 downloads" in text
    assert re.search(r"video big\s.*1\.5/3\.0 MB", text), text
    assert "image small" in text
    # A finished transfer's bar goes away with the next snapshot.
    display.handle(ev.Progress(files_done=4, files_total_seen=10, bytes_done=7_000_000, spends=4))
    assert "video big" not in screen(display)


def _progress(done: int, *flights: ev.InFlight) -> ev.Progress:
    return ev.Progress(
        files_done=done, files_total_seen=10, bytes_done=0, spends=0, in_flight=flights
    )


def test_display_labels_times_and_shows_files_per_second() -> None:
    clock = Clock()
    display = RunDisplay(Console(file=io.StringIO(), width=160), files_total=10, get_time=clock)
    for second, done in ((1.0, 2), (2.0, 4)):
        clock.now = second
        display.handle(_progress(done))
    text = screen(display)
    assert re.search(r"4/10\s+40% • 2\.0 files/s • elapsed 0:00:0\d • left 0:00:0\d", text), text


def test_a_file_bar_moves_with_its_bytes_and_says_finishing_once_they_are_all_in() -> None:
    clock = Clock()
    display = RunDisplay(Console(file=io.StringIO(), width=160), files_total=10, get_time=clock)
    seen = []
    for second, done in ((1.0, 1_000_000), (2.0, 2_000_000), (3.0, 4_000_000)):
        clock.now = second
        flight = ev.InFlight(id="v", asset_type="video", bytes_done=done, total=4_000_000)
        display.handle(_progress(0, flight))
        seen.append(next(line for line in screen(display).splitlines() if "video v" in line))
    assert re.search(r"1\.0/4\.0 MB\s+\?$", seen[0].rstrip()), seen  # one sample: no rate yet
    assert re.search(r"2\.0/4\.0 MB\s+1\.0 MB/s$", seen[1].rstrip()), seen
    assert re.search(r"4\.0/4\.0 MB\s+finishing$", seen[2].rstrip()), seen


def test_display_prints_failures_above_the_bars_up_to_a_limit() -> None:
    out = io.StringIO()
    display = RunDisplay(Console(file=out, width=200, force_terminal=False), files_total=50)
    for i in range(25):
        display.handle(ev.AssetFailed(id=str(i), asset_type="image", error="ImageNotFound"))
    lines = out.getvalue().splitlines()
    assert lines[0] == "failed image 0: ImageNotFound"
    assert len([x for x in lines if x.startswith("failed image")]) == 20
    assert lines[-1] == "more failures: see the report"
    assert "25/50" in screen(display)


@pytest.mark.parametrize(("failed", "waiting"), [(0, 0), (2, 5)])
def test_summary_table_holds_every_total(failed: int, waiting: int) -> None:
    finished = ev.RunFinished(
        downloaded=7,
        already_done=3,
        failed=failed,
        waiting_for_quota=waiting,
        bytes=12_345_678,
        spends=7,
        wall=4.25,
        exit_code=1 if failed else 0,
    )
    out = io.StringIO()
    Console(file=out, width=80, force_terminal=False).print(summary_table(finished))
    text = out.getvalue()
    for label, value in (
        ("downloaded", "7"),
        ("already done", "3"),
        ("failed", str(failed)),
        ("waiting for quota", str(waiting)),
        ("bytes", "12.3 MB"),
        ("wall", "4.2 s"),
        ("downloads spent", "7"),
    ):
        assert re.search(rf"{label}\s+│\s+{re.escape(value)}\s", text), (label, text)
