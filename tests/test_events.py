"""events.py: every event serialises to one JSON object with `event`, `v` and `t`."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import jsonschema
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
        id="1",
        asset_type="image",
        status="downloaded",
        path="/out/a.jpg",
        bytes=3,
        sha256="a" * 64,
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


# the schema as data (EVENT_SCHEMA) and the README's table of it ----------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def _schema_of(kind: str) -> dict[str, Any]:
    return next(s for s in ev.EVENT_SCHEMA["oneOf"] if s["properties"]["event"]["const"] == kind)


def test_schema_is_valid_json_schema_and_names_every_kind_once() -> None:
    jsonschema.Draft202012Validator.check_schema(ev.EVENT_SCHEMA)
    kinds = [s["properties"]["event"]["const"] for s in ev.EVENT_SCHEMA["oneOf"]]
    assert kinds == list(ev.EVENT_KINDS)
    assert sorted(kinds) == sorted(type(e).kind for e in SAMPLES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_every_sample_validates_and_its_fields_are_exactly_the_schemas(event: Event) -> None:
    data = orjson.loads(orjson.dumps(event.to_dict()))
    jsonschema.Draft202012Validator(ev.EVENT_SCHEMA).validate(data)
    schema = _schema_of(type(event).kind)
    assert set(schema["properties"]) == set(data) == set(schema["required"])


def test_progress_with_transfers_in_flight_validates() -> None:
    flights = tuple(
        ev.InFlight(id=str(i), asset_type="video", bytes_done=i, total=None) for i in range(3)
    )
    event = ev.Progress(files_done=0, files_total_seen=3, bytes_done=3, spends=3, in_flight=flights)
    data = orjson.loads(orjson.dumps(event.to_dict()))
    jsonschema.Draft202012Validator(ev.EVENT_SCHEMA).validate(data)
    assert data["in_flight"][2] == {
        "id": "2",
        "asset_type": "video",
        "bytes_done": 2,
        "total": None,
    }


@pytest.mark.parametrize(
    "change",
    [
        {"bytes": -1},
        {"sha256": "not-hex"},
        {"v": 2},
        {"status": "failed"},
        {"asset_type": "audio"},
    ],
)
def test_schema_rejects_what_breaks_the_contract(change: dict[str, Any]) -> None:
    good = SAMPLES[3].to_dict() | {"sha256": "a" * 64}
    validator = jsonschema.Draft202012Validator(ev.EVENT_SCHEMA)
    validator.validate(good)
    assert not validator.is_valid(good | change)
    missing = dict(good)
    del missing["path"]
    assert not validator.is_valid(missing)


def test_readme_documents_the_schema_exactly() -> None:
    """The README's event table lists each kind with the fields EVENT_SCHEMA requires."""
    text = README.read_text()
    assert f"schema version {ev.EVENT_SCHEMA_VERSION}" in text
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| ([^|]+) \|", text, flags=re.M))
    for kind in ev.EVENT_KINDS:
        required = [f for f in _schema_of(kind)["required"] if f not in ("event", "v", "t")]
        assert kind in rows, kind
        assert re.findall(r"`([a-z_0-9]+)`", rows[kind]) == required, kind
