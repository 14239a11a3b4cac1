"""Events to rows and back (`pipeline.eventlog.rows`, shared by both stores): the page-at-once encoder writes
exactly what the codec writes, the fast constructors give exactly what the dataclasses give, and every event that
cannot be written or row that cannot be read is a CodecError."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings

from pipeline import events as ev
from pipeline.errors import CodecError
from pipeline.eventlog import sqlite as sqlite_log
from pipeline.eventlog.base import NewEvent, StoredEvent
from pipeline.eventlog.rows import builder, decode_rows, encode_columns
from pipeline.eventlog.sqlite import SqliteEventLog, parse_time
from tests.eventlog_contract import product
from tests.test_eventlog_sqlite import _strategy_for

WHEN = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def row(event: ev.Event, payload: bytes | str | None = None, *, version: int | None = None) -> tuple[Any, ...]:
    data = ev.encode(event) if payload is None else payload
    return (7, WHEN, "acme", "x:1", event.TYPE, event.VERSION if version is None else version, data, 3, 2, "k")


@pytest.mark.parametrize("type_name", sorted(ev.registry()))
def test_every_registered_type_decodes_as_the_codec_does(type_name: str) -> None:
    """For every type, a stored row (payload as bytes or as text) decodes to an event equal to the one written, of
    the same class, and as frozen as one made by its constructor."""
    cls = ev.registry()[type_name]

    @settings(max_examples=40, deadline=None)
    @given(_strategy_for(cls))
    def check(event: ev.Event) -> None:
        payload = ev.encode(event)
        for stored in (payload, payload.decode()):
            (got,) = decode_rows([row(event, stored)])
            assert got == StoredEvent(7, WHEN, "acme", "x:1", type_name, cls.VERSION, event, 3, 2, "k")
            assert type(got.event) is cls
            assert got.event == ev.decode(type_name, cls.VERSION, payload)
            field = dataclasses.fields(cls)[0].name  # type: ignore[arg-type]
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(got.event, field, None)

    check()


def test_fields_left_out_take_their_defaults() -> None:
    """A payload without its optional fields (an older writer, a hand-written row) gets the dataclass defaults,
    a fresh default list each time."""
    first, second = decode_rows(
        [row(ev.ArticleUpsertRequested(body={}), b'{"body": {"ArticleNumber": "A"}}')] * 2, None
    )
    assert first.event == ev.ArticleUpsertRequested(body={"ArticleNumber": "A"}, product_id=None, warnings=[])
    assert isinstance(first.event, ev.ArticleUpsertRequested)
    assert isinstance(second.event, ev.ArticleUpsertRequested)
    assert first.event.warnings is not second.event.warnings


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"product": {}, "group": null, "extra": 1}', "bad payload for product.observed v1"),
        (b'{"product": {}, "extra": 1}', "bad payload for product.observed v1"),  # as many fields, one unknown
        (b'{"group": null}', "bad payload for product.observed v1"),  # a required field missing
        (b"[1, 2]", "bad payload for product.observed v1"),
        (b'{"product": ', "event 7: payload is not JSON"),
    ],
)
def test_bad_payloads_are_codec_errors(payload: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_rows([row(ev.ProductObserved({}), payload)])


def test_unknown_type_and_newer_version_are_codec_errors() -> None:
    with pytest.raises(CodecError, match="unknown event type 'nope'"):
        decode_rows([(1, WHEN, "t", "e", "nope", 1, b"{}", None, None, "k")])
    with pytest.raises(CodecError, match="newer than this program"):
        decode_rows([row(ev.ProductObserved({}), version=2)])


def test_older_versions_are_upcast() -> None:
    """A row at an older schema version goes through the upcasters, not the fast constructor."""

    @ev.register
    @dataclasses.dataclass(frozen=True, slots=True)
    class Moved(ev.Event):
        TYPE: ClassVar[str] = "test.rows.moved"
        VERSION: ClassVar[int] = 2
        new_name: str

    ev.upcaster("test.rows.moved", 1)(lambda d: {"new_name": d["old_name"]})
    old, new = decode_rows(
        [
            (1, WHEN, "t", "e", "test.rows.moved", 1, b'{"old_name": "x"}', None, None, "k1"),
            (2, WHEN, "t", "e", "test.rows.moved", 2, b'{"new_name": "y"}', None, None, "k2"),
        ]
    )
    assert (old.event, new.event) == (Moved("x"), Moved("y"))


def test_classes_with_post_init_keep_their_constructor() -> None:
    """A class that checks or derives fields in `__post_init__` is always built through it."""

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked(ev.Event):
        TYPE: ClassVar[str] = "test.rows.checked"
        n: int

        def __post_init__(self) -> None:
            if self.n < 0:
                raise TypeError("n must not be negative")

    build = builder(Checked)
    assert build({"n": 1}) == Checked(1)
    with pytest.raises(TypeError, match="negative"):
        build({"n": -1})


def test_recorded_text_is_parsed_once_per_time() -> None:
    """SQLite keeps `recorded_at` as text: rows of one append share one datetime object."""
    text = "2026-11-01T12:00:00.000000Z"
    a, b = decode_rows(
        [(i, text, "t", "e", "product.observed", 1, b'{"product": {}}', None, None, f"k{i}") for i in (1, 2)],
        parse_time,
    )
    assert a.recorded_at == WHEN
    assert a.recorded_at is b.recorded_at


@pytest.mark.anyio
async def test_a_read_decodes_on_the_readers_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page of a read is decoded beside its query on the reader's thread: the event loop only hands events
    out, so a long scan does not hold up the other tasks for the decoding."""
    threads: list[threading.Thread] = []
    real = sqlite_log._rows_to_events

    def noting(rows: Any) -> Any:
        threads.append(threading.current_thread())
        return real(rows)

    async with await SqliteEventLog.open(tmp_path / "log.db") as log:
        await log.append([product("acme", i, 1.0) for i in range(5)])
        monkeypatch.setattr(sqlite_log, "_rows_to_events", noting)
        got = [e async for e in log.read(batch_size=2)]
    assert [e.entity for e in got] == [f"product:{i}" for i in range(5)]
    assert len(threads) == 3
    assert threading.current_thread() not in threads


@pytest.mark.anyio
async def test_read_payloads_are_the_stored_text(tmp_path: Path) -> None:
    """Reads take the payload column as bytes; what audit SQL sees is still the JSON text as written."""
    async with await SqliteEventLog.open(tmp_path / "log.db") as log:
        await log.append([NewEvent("acme", "product:1", ev.ProductObserved({"Name": "grå"}), "k")])
        (stored,) = [e async for e in log.read()]
        assert stored.event == ev.ProductObserved({"Name": "grå"})
        assert await log.query("SELECT typeof(payload), payload FROM events") == [
            ("text", '{"product":{"Name":"grå"},"group":null}')
        ]


@pytest.mark.parametrize("type_name", sorted(ev.registry()))
def test_every_registered_type_encodes_as_the_codec_does(type_name: str) -> None:
    """A page of one class (encoded page-at-once) and a mixed page (one by one) both store the codec's bytes."""
    cls = ev.registry()[type_name]

    @settings(max_examples=40, deadline=None)
    @given(_strategy_for(cls))
    def check(event: ev.Event) -> None:
        page = [NewEvent("acme", "x:1", event, "k1", 5, 2), NewEvent("acme", "x:2", event, "k2")]
        mixed = [*page, NewEvent("acme", "e:1", ev.EntityRedriven("r", "op"), "k3")]
        for events in (page, mixed):
            cols = encode_columns(events)
            assert [list(c) for c in zip(*cols, strict=True)][:2] == [
                ["acme", "x:1", type_name, cls.VERSION, ev.encode(event).decode(), 5, 2, "k1"],
                ["acme", "x:2", type_name, cls.VERSION, ev.encode(event).decode(), None, None, "k2"],
            ]

    check()


def test_an_empty_page_has_empty_columns() -> None:
    assert encode_columns([]) == ((),) * 8


@pytest.mark.parametrize("mixed", [False, True])
def test_unencodable_events_are_named(mixed: bool) -> None:
    """The CodecError names the first event that cannot be written, whether its page is of one class or not."""
    good = NewEvent("acme", "article:A", ev.ArticleUpsertRequested(body={"v": 1.0}), "k1")
    bad = NewEvent("acme", "article:B", ev.ArticleUpsertRequested(body={"v": float("nan")}), "k2")
    other = NewEvent("acme", "e:1", ev.EntityRedriven("r", "op"), "k3")
    with pytest.raises(CodecError, match=r"cannot encode article\.upsert_requested for acme/article:B: .*NaN"):
        encode_columns([good, other, bad] if mixed else [good, bad])
    unparsed = NewEvent("acme", "product:1", ev.ProductObserved({"x": {1, 2}}), "k4")
    with pytest.raises(CodecError, match=r"cannot encode product\.observed for acme/product:1"):
        encode_columns([unparsed])


def test_an_unregistered_class_is_refused() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Stray(ev.Event):
        TYPE: ClassVar[str] = "test.rows.stray"

    with pytest.raises(CodecError, match="Stray is not a registered event class"):
        encode_columns([NewEvent("acme", "s:1", Stray(), "k")])


def test_fields_orjson_would_leave_out_are_written() -> None:
    """orjson skips a dataclass's "_" fields when given the event itself; such a class is encoded field by field."""

    @ev.register
    @dataclasses.dataclass(frozen=True, slots=True)
    class Private(ev.Event):
        TYPE: ClassVar[str] = "test.rows.private"
        FROM_JSON: ClassVar[bool] = True
        record: dict[str, Any]
        _note: str

    event = Private({"a": 1}, "kept")
    assert encode_columns([NewEvent("acme", "p:1", event, "k")])[4] == ['{"record":{"a":1},"_note":"kept"}']
