"""plan.py `estimate`: the plan command's tally is `decide` per asset, per product type."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aiohttp import web

from bulkgetty.assets import Asset
from bulkgetty.commands.history import Licensed
from bulkgetty.commands.plan import (
    DEFAULT_PRODUCT,
    PlanEstimate,
    ProductPlan,
    estimate,
    journal_records,
    remaining_by_type,
    remaining_quota,
)
from bulkgetty.errors import AuthenticationError
from bulkgetty.getty.api import ProductInfo
from bulkgetty.getty.auth import Credentials
from bulkgetty.getty.connect import open_client
from bulkgetty.stages.journal import AssetState, Journal, Record

NOW = 1_800_000_000.0


def rec(asset: Asset, state: AssetState = AssetState.PENDING, **kw: object) -> Record:
    return Record(key=asset.key, asset=asset, state=state, **kw)  # type: ignore[arg-type]


def test_each_action_lands_in_its_column_per_product_type(tmp_path: Path) -> None:
    pa, ed, none = (
        Asset(str(i), product_type=t)
        for i, t in enumerate(["premiumaccess", "editorialsubscription", None])
    )
    (tmp_path / "done.jpg").write_bytes(b"x" * 5)
    records = [
        rec(pa, AssetState.DONE, path="done.jpg", bytes=5, spends=1),  # already done
        rec(pa, AssetState.ACQUIRED, uri="u", uri_expires=NOW + 86_400, spends=1),  # transfer
        rec(pa),  # acquire
        rec(pa, AssetState.INTENT),  # in doubt
        rec(pa, AssetState.ACQUIRED, uri="u", uri_expires=NOW - 1, spends=1),  # expired
        rec(ed),
        rec(none),
    ]
    plan = estimate(
        records,
        now=NOW,
        out_dir=tmp_path,
        remaining={"premiumaccess": 2, "editorialsubscription": 9},
    )
    by_type = {p.product_type: p for p in plan.products}
    assert list(by_type) == ["editorialsubscription", "premiumaccess", DEFAULT_PRODUCT]
    assert by_type["premiumaccess"] == ProductPlan(
        "premiumaccess",
        assets=5,
        already_done=1,
        transfer_only=1,
        to_acquire=1,
        in_doubt=1,
        needs_reacquire=1,
        remaining=2,
    )
    assert by_type["premiumaccess"].may_spend == 2 and by_type["premiumaccess"].fits is True
    # Rows naming no product are checked against the smallest remainder of any type.
    assert by_type[DEFAULT_PRODUCT].remaining == 2
    assert plan.may_spend == 4 and plan.fits is True
    with_flag = estimate(
        records, now=NOW, out_dir=tmp_path, remaining={"premiumaccess": 2}, reacquire_expired=True
    )
    pa_plan = next(p for p in with_flag.products if p.product_type == "premiumaccess")
    assert (pa_plan.to_acquire, pa_plan.needs_reacquire, pa_plan.fits) == (2, 0, False)
    assert with_flag.fits is False


def test_fits_is_unknown_without_products_and_false_over_the_cap() -> None:
    plans = (ProductPlan("premiumaccess", assets=3, to_acquire=3, remaining=None),)
    assert PlanEstimate(plans).fits is None
    assert PlanEstimate(plans, max_downloads=2).fits is False
    nothing = (ProductPlan("premiumaccess", assets=3, already_done=3, remaining=None),)
    assert PlanEstimate(nothing).fits is True
    data = PlanEstimate(plans, max_downloads=2).to_dict()
    assert data["fits"] is False and data["may_spend"] == 3
    assert data["products"] == [
        {
            "product_type": "premiumaccess",
            "assets": 3,
            "already_done": 0,
            "transfer_only": 0,
            "to_acquire": 3,
            "in_doubt": 0,
            "needs_reacquire": 0,
            "licensed_before": 0,
            "remaining": None,
            "may_spend": 3,
            "fits": None,
        }
    ]


def test_remaining_by_type_adds_overage_and_skips_inactive_products() -> None:
    products = [
        ProductInfo(1, "premiumaccess", None, "active", 100, 40, None, None, 10),
        ProductInfo(2, "premiumaccess", None, "active", 100, 5, None, None, None),
        ProductInfo(3, "imagepack", None, "inactive", 100, 100, None, None, None),
        ProductInfo(4, "creditpack", None, None, None, None, None, None, None),
    ]
    assert remaining_by_type(products) == {"premiumaccess": 55}


def test_journal_records_reads_the_journal_read_only_and_fills_in_new_assets(
    tmp_path: Path,
) -> None:
    known, new = Asset("1"), Asset("2", "video", size="hd1")
    j = Journal(tmp_path)
    try:
        run = j.begin_run("m")
        j.upsert([known], run)
        j.record_intent(known.key)
        j.record_acquired(known.key, "https://d.invalid/1", time.time() + 3600)
        # Read while the writer still holds the lock, as `plan` beside a live run would.
        got = list(journal_records(tmp_path, [known, new]))
    finally:
        j.close()
    assert [(r.key, r.state, r.spends) for r in got] == [
        (known.key, AssetState.ACQUIRED, 1),
        (new.key, AssetState.PENDING, 0),
    ]
    assert [r.state for r in journal_records(None, [known])] == [AssetState.PENDING]
    assert [r.state for r in journal_records(tmp_path / "never-run", [known])] == [
        AssetState.PENDING
    ]
    assert not (tmp_path / "never-run").exists()


async def _products_server(status: int, body: dict[str, str]) -> tuple[web.AppRunner, str]:
    """A real server on 127.0.0.1: a token for anyone, `/v3/products` answers `status`."""

    async def token(request: web.Request) -> web.Response:
        return web.json_response(
            {"access_token": "token-789", "token_type": "Bearer", "expires_in": 1800}
        )

    async def products(request: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_post("/oauth2/token", token)
    app.router.add_get("/v3/products", products)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


CREDS = Credentials(api_key="test-key-123", api_secret="test-secret-456")


async def test_a_key_that_may_not_list_products_gives_a_plan_without_remainders() -> None:
    body = {"ErrorCode": "UserTokenRequired", "ErrorMessage": "Security token must contain a user."}
    runner, url = await _products_server(401, body)
    try:
        async with open_client(CREDS, url, api_rate=None) as client:
            remaining, why = await remaining_quota(client)
    finally:
        await runner.cleanup()
    assert remaining is None
    assert why is not None and "UserTokenRequired" in why


async def test_refused_credentials_still_stop_the_plan() -> None:
    runner, url = await _products_server(401, {"message": "Unauthorized"})
    try:
        async with open_client(CREDS, url, api_rate=None) as client:
            with pytest.raises(AuthenticationError):
                await remaining_quota(client)
    finally:
        await runner.cleanup()


def test_assets_to_buy_that_the_account_licensed_before_are_counted_and_named(
    tmp_path: Path,
) -> None:
    """Only assets that would be bought count (done ones spend nothing), per product type,
    and the note says how many downloads they cost again."""
    licensed = Licensed(frozenset({("image", "1"), ("image", "2")}), "2026-09-04")
    records = [
        Record(Asset("1").key, Asset("1"), AssetState.PENDING),
        Record(Asset("2").key, Asset("2"), AssetState.ACQUIRED, uri="u", uri_expires=NOW + 9e4),
        Record(Asset("3").key, Asset("3"), AssetState.PENDING),
    ]
    plan = estimate(records, now=NOW, out_dir=tmp_path, remaining=None, licensed=licensed)
    assert plan.licensed_before == 1
    note = plan.relicensing_note(licensed)
    assert note is not None and note.startswith("1 asset of this manifest was licensed before")
    assert "since 2026-09-04" in note and "buying it spends 1 more download " in note
    assert estimate(records, now=NOW, out_dir=tmp_path, remaining=None).licensed_before == 0
