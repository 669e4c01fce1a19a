"""events.py: every event serialises to one JSON object with `event`, `v` and `t`."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from bulkgetty import events as ev
from bulkgetty.events import EVENT_SCHEMA_VERSION, Event

MADE_AT = time.time()  # the samples are built at import, long before some tests run
SAMPLES: list[Event] = [
    ev.RunStarted(out_dir="/out", manifest="m.csv", run_id=1),
    ev.AssetAcquired(id="1", asset_type="image", product_type=None, spends=1),
    ev.Progress(files_done=1, files_total_seen=2, bytes_done=3, spends=1),
    ev.AssetDone(
        id="1", asset_type="image", status="downloaded", path="/out/a.jpg", bytes=3, sha256="a"
    ),
    ev.AssetFailed(id="1", asset_type="video", error="boom"),
    ev.AssetWaiting(id="1", asset_type="image", error="limit"),
    ev.QuotaReached(product_type="premiumaccess", reason="limit"),
    ev.RunFinished(
        downloaded=1,
        already_done=0,
        failed=0,
        waiting_for_quota=0,
        bytes=3,
        spends=1,
        wall=0.1,
        exit_code=0,
    ),
]


def test_samples_cover_every_exported_event_kind() -> None:
    exported = {
        getattr(ev, name)
        for name in ev.__all__
        if isinstance(getattr(ev, name), type)
        and issubclass(getattr(ev, name), Event)
        and getattr(ev, name) is not Event
    }
    assert {type(e) for e in SAMPLES} == exported


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_event_serialises_with_event_v_and_t(event: Event) -> None:
    d: dict[str, Any] = event.to_dict()
    assert d["event"] == type(event).kind
    assert d["v"] == EVENT_SCHEMA_VERSION == 1
    assert isinstance(d["t"], float)
    assert MADE_AT <= d["t"] <= time.time()
    line = orjson.dumps(d)
    assert b"\n" not in line
    assert orjson.loads(line) == d


def test_event_kinds_are_unique() -> None:
    kinds = [type(e).kind for e in SAMPLES]
    assert len(set(kinds)) == len(kinds)
    assert "event" not in kinds


def test_event_fields_do_not_clobber_the_envelope() -> None:
    for e in SAMPLES:
        d = e.to_dict()
        assert d["event"] == type(e).kind  # no field named `event` or `v` overrides
        assert d["v"] == EVENT_SCHEMA_VERSION
