"""Events to rows of `events` and back, shared by both stores: an append's and a scan's own cost is here.

Writing: `encode_columns` turns a page of `NewEvent`s into the table's columns. A page of one event class (what a
poller appends) is encoded in a chain of `map`s with no Python-level loop: the envelope is transposed by `zip`, and
events parsed from JSON go from `to_dict` straight to orjson (they cannot hold NaN). Other events go through the
checking codec (`encode`).

Reading: a row is `(position, recorded_at, tenant, entity, type, schema_version, payload, causation, mapping_version,
dedupe_key)`; the payload is JSON as bytes or text. The common case (the current schema version, a payload with
exactly the event's fields) is inlined: each event is built by a constructor made for its class, which fills the
slots without the dataclass `__init__` and its keyword binding; anything else (an older version to upcast, a field
left out or one too many) takes `decode_dict`, whose errors are the codec's.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson

from pipeline.errors import CodecError
from pipeline.eventlog.base import NewEvent, StoredEvent
from pipeline.events import ROW_META, Event, JsonObject, decode_dict, encode, event_class

Build = Callable[[JsonObject], Event]
Encoder = Callable[[Any], bytes]

# event class -> (type name, schema version, payload encoder); filled as classes are met
_WRITERS: dict[type[Event], tuple[str, int, Encoder]] = {}

# type name -> (current schema version, constructor from a payload dict); filled as types are met
_KINDS: dict[str, tuple[int, Build]] = {}

_new_stored = tuple.__new__  # StoredEvent(...) without the NamedTuple's Python-level __new__: scans build millions


def _kind(type_name: str) -> tuple[int, Build]:
    cls = event_class(type_name)  # CodecError for an unknown type
    kind = _KINDS[type_name] = (cls.VERSION, builder(cls))
    return kind


def builder(cls: type[Event]) -> Build:
    """A function building a `cls` from a payload dict, as `cls(**data)` would.

    When the dict holds exactly the class's fields (what `encode` writes), the slots are filled directly; else it
    falls back to `cls(**data)`, so defaults, missing and unknown fields behave as the dataclass says. Classes with
    a `__post_init__`, or whose fields are not plain slots, always take `cls(**data)`.
    """
    names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    slots = [cls.__dict__.get(name) for name in names]
    if (
        hasattr(cls, "__post_init__")
        or not all(isinstance(s, types.MemberDescriptorType) for s in slots)
        or not all(name.isidentifier() for name in names)
    ):
        return lambda data: cls(**data)
    namespace: dict[str, Any] = {"cls": cls, "new": object.__new__}
    sets = []
    for i, (name, slot) in enumerate(zip(names, slots, strict=True)):
        namespace[f"set{i}"] = slot.__set__  # type: ignore[union-attr]
        sets.append(f"set{i}(event, data[{name!r}])")
    body = "; ".join(sets) if sets else "pass"
    source = (
        "def build(data):\n"
        f"    if len(data) != {len(names)}:\n"
        "        return cls(**data)\n"
        "    event = new(cls)\n"
        "    try:\n"
        f"        {body}\n"
        "    except KeyError:\n"
        "        return cls(**data)\n"
        "    return event\n"
    )
    exec(source, namespace)
    build: Build = namespace["build"]
    return build


def decode_rows(
    rows: Sequence[Sequence[Any]], parse_time: Callable[[str], datetime] | None = None
) -> list[StoredEvent]:
    """Decode a page of rows. `parse_time` turns a stored `recorded_at` into a datetime (SQLite keeps text; None
    when the driver gives datetimes already). Raises CodecError naming the position of a bad row."""
    out: list[StoredEvent] = []
    append = out.append
    loads = orjson.loads
    kinds = _KINDS
    times: dict[Any, datetime] = {}  # events of one append share their recorded time: parse each once
    for row in rows:
        position, recorded, tenant, entity, type_, version, payload, causation, mapping_version, dedupe = row
        try:
            data = loads(payload)
        except orjson.JSONDecodeError as exc:
            raise CodecError(f"event {position}: payload is not JSON: {exc}") from exc
        current, build = kinds.get(type_) or _kind(type_)
        if version == current and type(data) is dict:
            try:
                event = build(data)
            except TypeError as exc:
                raise CodecError(f"bad payload for {type_} v{version}: {exc}") from exc
        else:
            event = decode_dict(type_, version, data)
        if parse_time is not None:
            when = times.get(recorded)
            if when is None:
                when = times[recorded] = parse_time(recorded)
            recorded = when
        append(
            _new_stored(
                StoredEvent,
                (position, recorded, tenant, entity, type_, version, event, causation, mapping_version, dedupe),
            )
        )
    return out


def _writer(cls: type[Event]) -> tuple[str, int, Encoder]:
    meta = ROW_META.get(cls)
    if meta is None:
        raise CodecError(f"{cls.__name__} is not a registered event class")
    encoder: Encoder = encode  # may hold NaN or infinities: the codec refuses them
    if meta.from_json:  # parsed from JSON: nothing to refuse, the field dict goes to orjson as it is
        to_dict, dumps = meta.to_dict, orjson.dumps
        encoder = lambda event: dumps(to_dict(event))  # noqa: E731
    writer = _WRITERS[cls] = (meta.type, meta.version, encoder)
    return writer


Columns = tuple[Sequence[Any], ...]


def encode_columns(events: Sequence[NewEvent]) -> Columns:
    """The columns `(tenant, entity, type, schema_version, payload, causation, mapping_version, dedupe_key)` of the
    rows storing `events`, each a sequence in the events' order; payloads are JSON text. Raises CodecError, naming
    the first event that cannot be encoded, before anything is written."""
    if not events:
        return ((),) * 8
    tenants, entities, evs, keys, causations, mappings = zip(*events, strict=True)
    classes = set(map(type, evs))
    writers = _WRITERS
    try:
        if len(classes) == 1:
            (cls,) = classes
            type_, version, encoder = writers.get(cls) or _writer(cls)
            meta = ROW_META[cls]
            encoded = map(orjson.dumps, map(meta.to_dict, evs)) if meta.from_json else map(encoder, evs)
            payloads = list(map(bytes.decode, encoded))
            types_: Sequence[str] = [type_] * len(evs)
            versions: Sequence[int] = [version] * len(evs)
        else:
            types_, versions, payloads = [], [], []
            for ev in evs:
                type_, version, encoder = writers.get(type(ev)) or _writer(type(ev))
                types_.append(type_)
                versions.append(version)
                payloads.append(encoder(ev).decode())
    except (TypeError, CodecError) as exc:  # orjson.JSONEncodeError is a TypeError
        _name_the_unencodable(events)
        raise CodecError(f"cannot encode the events: {exc}") from exc
    return tenants, entities, types_, versions, payloads, causations, mappings, keys


def _name_the_unencodable(events: Iterable[NewEvent]) -> None:
    """Raise CodecError for the first of `events` that cannot be encoded, naming its tenant and entity."""
    for tenant, entity, ev, *_ in events:
        try:
            encoder = (_WRITERS.get(type(ev)) or _writer(type(ev)))[2]
            encoder(ev)
        except (TypeError, CodecError) as exc:
            raise CodecError(
                f"cannot encode {getattr(ev, 'TYPE', type(ev).__name__)} for {tenant}/{entity}: {exc}"
            ) from exc
