"""plan.py: what each asset needs, decided from its journal record alone."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from bulkgetty.assets import Asset
from bulkgetty.stages.decide import URI_SAFETY_MARGIN, Action, Decision, decide, reacquire_message
from bulkgetty.stages.journal import AssetState, Record

NOW = 1_800_000_000.0
FRESH = NOW + 86_400.0


def rec(state: AssetState = AssetState.PENDING, **kw: object) -> Record:
    return Record(key="image/1", asset=Asset("1"), state=state, **kw)  # type: ignore[arg-type]


def decide_(r: Record, out: Path, *, reacquire: bool = False) -> Decision:
    return decide(r, now=NOW, out_dir=out, reacquire_expired=reacquire)


def done_record(out: Path, *, size: int = 10, on_disk: int | None = 10, **kw: object) -> Record:
    if on_disk is not None:
        (out / "GettyImages-1.jpg").write_bytes(b"x" * on_disk)
    return rec(
        AssetState.DONE,
        path="GettyImages-1.jpg",
        bytes=size,
        sha256="0" * 64,
        spends=1,
        **kw,
    )


# ------------------------------------------------------------------ already done


def test_done_with_whole_file_on_disk_is_already_done(tmp_path: Path) -> None:
    d = decide_(done_record(tmp_path), tmp_path)
    assert d.action is Action.ALREADY_DONE
    assert not d.may_spend


def test_done_but_file_missing_with_valid_uri_transfers_again(tmp_path: Path) -> None:
    r = done_record(tmp_path, on_disk=None, uri="http://d/1", uri_expires=FRESH)
    assert decide_(r, tmp_path).action is Action.TRANSFER


def test_done_but_file_truncated_is_not_already_done(tmp_path: Path) -> None:
    r = done_record(tmp_path, on_disk=5, uri="http://d/1", uri_expires=FRESH)
    assert decide_(r, tmp_path).action is Action.TRANSFER


def test_done_but_file_grew_is_not_already_done(tmp_path: Path) -> None:
    r = done_record(tmp_path, on_disk=11, uri="http://d/1", uri_expires=FRESH)
    assert decide_(r, tmp_path).action is Action.TRANSFER


def test_done_without_recorded_size_is_not_already_done(tmp_path: Path) -> None:
    r = replace(done_record(tmp_path), bytes=None, uri="http://d/1", uri_expires=FRESH)
    assert decide_(r, tmp_path).action is Action.TRANSFER


def test_done_file_missing_and_uri_expired_fails_naming_the_flag(tmp_path: Path) -> None:
    r = done_record(tmp_path, on_disk=None, uri="http://d/1", uri_expires=NOW - 1)
    d = decide_(r, tmp_path)
    assert d.action is Action.FAIL
    assert "--reacquire-expired" in d.reason
    assert "GettyImages-1.jpg" in d.reason
    assert not d.may_spend


def test_done_file_missing_and_uri_expired_acquires_with_the_flag(tmp_path: Path) -> None:
    r = done_record(tmp_path, on_disk=None, uri="http://d/1", uri_expires=NOW - 1)
    d = decide_(r, tmp_path, reacquire=True)
    assert d.action is Action.ACQUIRE
    assert d.may_spend


def test_a_directory_in_place_of_the_file_is_not_done(tmp_path: Path) -> None:
    (tmp_path / "GettyImages-1.jpg").mkdir()
    r = rec(AssetState.DONE, path="GettyImages-1.jpg", bytes=10, spends=1)
    assert decide_(r, tmp_path).action is not Action.ALREADY_DONE


def test_a_file_of_right_size_but_not_done_is_not_already_done(tmp_path: Path) -> None:
    """Only the DONE state counts: an acquired asset's file could be a stale .part rename."""
    (tmp_path / "GettyImages-1.jpg").write_bytes(b"x" * 10)
    r = rec(
        AssetState.ACQUIRED,
        path="GettyImages-1.jpg",
        bytes=10,
        spends=1,
        uri="http://d/1",
        uri_expires=FRESH,
    )
    assert decide_(r, tmp_path).action is Action.TRANSFER


# ------------------------------------------------------------------ URI validity


def test_acquired_with_valid_uri_transfers(tmp_path: Path) -> None:
    r = rec(AssetState.ACQUIRED, uri="http://d/1", uri_expires=FRESH, spends=1)
    d = decide_(r, tmp_path)
    assert d.action is Action.TRANSFER
    assert not d.may_spend


def test_uri_within_safety_margin_counts_as_expired(tmp_path: Path) -> None:
    r = rec(
        AssetState.ACQUIRED, uri="http://d/1", uri_expires=NOW + URI_SAFETY_MARGIN - 1, spends=1
    )
    assert decide_(r, tmp_path).action is Action.FAIL
    r2 = replace(r, uri_expires=NOW + URI_SAFETY_MARGIN + 1)
    assert decide_(r2, tmp_path).action is Action.TRANSFER


def test_uri_without_expiry_is_not_trusted(tmp_path: Path) -> None:
    r = rec(AssetState.ACQUIRED, uri="http://d/1", uri_expires=None, spends=1)
    assert decide_(r, tmp_path).action is Action.FAIL


def test_expired_uri_with_spends_fails_naming_reacquire_expired(tmp_path: Path) -> None:
    r = rec(AssetState.ACQUIRED, uri="http://d/1", uri_expires=NOW - 10, spends=1)
    d = decide_(r, tmp_path)
    assert d.action is Action.FAIL
    assert "--reacquire-expired" in d.reason
    assert "expired" in d.reason


def test_expired_uri_with_spends_acquires_with_the_flag(tmp_path: Path) -> None:
    r = rec(AssetState.ACQUIRED, uri="http://d/1", uri_expires=NOW - 10, spends=1)
    d = decide_(r, tmp_path, reacquire=True)
    assert d.action is Action.ACQUIRE
    assert d.may_spend


def test_failed_with_lost_uri_and_spend_fails_again_without_the_flag(tmp_path: Path) -> None:
    """After an in-doubt spend shown by history, a rerun must not buy it silently."""
    r = rec(AssetState.FAILED, spends=1, error="lost")
    d = decide_(r, tmp_path)
    assert d.action is Action.FAIL
    assert "--reacquire-expired" in d.reason


def test_failed_with_valid_uri_transfers_again(tmp_path: Path) -> None:
    """A transfer that failed for a transient reason resumes on the URI already paid for."""
    r = rec(AssetState.FAILED, uri="http://d/1", uri_expires=FRESH, spends=1, error="503")
    assert decide_(r, tmp_path).action is Action.TRANSFER


# ------------------------------------------------------------------ never bought yet


@pytest.mark.parametrize(
    "state", [AssetState.PENDING, AssetState.FAILED, AssetState.WAITING_FOR_QUOTA]
)
def test_never_spent_assets_are_acquired(tmp_path: Path, state: AssetState) -> None:
    d = decide_(rec(state), tmp_path)
    assert d.action is Action.ACQUIRE
    assert d.may_spend


# ------------------------------------------------------------------ doubt


@pytest.mark.parametrize("state", [AssetState.INTENT, AssetState.IN_DOUBT])
@pytest.mark.parametrize("reacquire", [False, True])
def test_intent_and_in_doubt_are_resolved_first(
    tmp_path: Path, state: AssetState, reacquire: bool
) -> None:
    d = decide_(rec(state, spends=0), tmp_path, reacquire=reacquire)
    assert d.action is Action.RESOLVE_DOUBT
    assert d.reason


def test_intent_with_a_previous_valid_uri_is_still_resolved(tmp_path: Path) -> None:
    """A re-buy was started (intent) after an earlier URI: doubt comes before transfer."""
    r = rec(AssetState.INTENT, uri="http://d/old", uri_expires=FRESH, spends=1)
    assert decide_(r, tmp_path).action is Action.RESOLVE_DOUBT


# ------------------------------------------------------------------ the invariant


def test_never_acquires_an_asset_with_spends_unless_allowed(tmp_path: Path) -> None:
    """Over every combination of state, URI, expiry, file and spends: no silent re-buy."""
    (tmp_path / "whole.jpg").write_bytes(b"x" * 10)
    combos = itertools.product(
        list(AssetState),
        [None, "http://d/1"],
        [None, NOW - 1, NOW + 10, FRESH],
        [None, "whole.jpg", "missing.jpg"],
        [None, 10, 11],
        [0, 1, 2],
        [False, True],
    )
    seen = 0
    for state, uri, expires, path, size, spends, reacquire in combos:
        r = rec(state, uri=uri, uri_expires=expires, path=path, bytes=size, spends=spends)
        d = decide_(r, tmp_path, reacquire=reacquire)
        seen += 1
        if d.action is Action.ACQUIRE and spends > 0:
            assert reacquire, r
        if d.action is Action.FAIL:
            assert "--reacquire-expired" in d.reason, r
            assert spends > 0
        if d.action is Action.ALREADY_DONE:
            assert state is AssetState.DONE and path == "whole.jpg" and size == 10, r
        if d.action is Action.TRANSFER:
            assert uri and expires == FRESH, r
        assert d.may_spend == (d.action in (Action.ACQUIRE, Action.RESOLVE_DOUBT))
    assert seen > 1000


def test_reacquire_message_names_the_flag_and_the_reason() -> None:
    msg = reacquire_message("its URI expired")
    assert msg.startswith("its URI expired")
    assert "--reacquire-expired" in msg
