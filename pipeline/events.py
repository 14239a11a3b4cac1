"""Event types, their registry, the orjson codec and the upcasters.

Every event is a frozen, slotted dataclass registered under a type name and a schema version. The stored row
(position, tenant, entity, ...) is a separate envelope: see `pipeline.eventlog.base`.

Three kinds (DESIGN §3):
- observed: raw records exactly as an API returned them (`*Observed`);
- command: what should be written where (`*Requested`), made by a pure mapping from an observation;
- outcome: what the target answered (`CommandSucceeded`, `CommandFailed`, `CommandSkipped`), plus the
  projector's `MappingFailed` and the operator's `EntityRedriven` and `ReplayRecorded`.

Codec: `encode(event) -> bytes` and `decode(type, version, payload) -> Event`. Decoding an older schema version
runs the upcasters registered for (type, from_version) in order until the current version is reached.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, TypeVar

import orjson

from pipeline.errors import CodecError

JsonObject = dict[str, Any]


class Event:
    """Base of every event. Subclasses are frozen slotted dataclasses registered with `@register`."""

    __slots__ = ()
    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1
    # True for events whose payload values were parsed from JSON (API observations): they cannot hold NaN or
    # infinities, so encoding skips the search for them.
    FROM_JSON: ClassVar[bool] = False


E = TypeVar("E", bound=type[Event])
_REGISTRY: dict[str, type[Event]] = {}
_FIELDS: dict[str, tuple[str, ...]] = {}
_TO_DICT: dict[str, Callable[[Any], JsonObject]] = {}


class RowMeta(NamedTuple):
    """What the log needs per event class to store one: looked up once per row by class."""

    type: str
    version: int
    from_json: bool
    to_dict: Callable[[Any], JsonObject]


ROW_META: dict[type[Event], RowMeta] = {}
Upcaster = Callable[[JsonObject], JsonObject]
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def register(cls: E) -> E:
    """Class decorator: add an event class to the registry under its TYPE."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass")
    name = cls.TYPE
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise TypeError(f"event type {name!r} is registered twice")
    _REGISTRY[name] = cls
    _FIELDS[name] = tuple(f.name for f in dataclasses.fields(cls))
    _TO_DICT[name] = _dict_builder(_FIELDS[name])
    ROW_META[cls] = RowMeta(name, cls.VERSION, cls.FROM_JSON, _TO_DICT[name])
    return cls


def _dict_builder(fields: tuple[str, ...]) -> Callable[[Any], JsonObject]:
    """A function building the field dict with one literal: the log encodes every event through it, and this is
    about three times faster than a loop over the fields (the same trick `dataclasses` uses for `__init__`)."""
    for name in fields:
        if not name.isidentifier():
            raise TypeError(f"field name {name!r} is not an identifier")
    body = ", ".join(f"{name!r}: e.{name}" for name in fields)
    namespace: dict[str, Any] = {}
    exec(f"def to_dict(e):\n    return {{{body}}}\n", namespace)
    builder: Callable[[Any], JsonObject] = namespace["to_dict"]
    return builder


def upcaster(type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Decorator: register a function turning a payload of `from_version` into `from_version + 1`."""

    def deco(fn: Upcaster) -> Upcaster:
        _UPCASTERS[(type_name, from_version)] = fn
        return fn

    return deco


def registry() -> dict[str, type[Event]]:
    return dict(_REGISTRY)


def event_class(type_name: str) -> type[Event]:
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise CodecError(f"unknown event type {type_name!r}") from None


def to_dict(event: Event) -> JsonObject:
    """The event's fields as a plain dict (shallow: field values are already JSON-shaped)."""
    return _TO_DICT[event.TYPE](event)


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return value != value or value in (_INF, -_INF)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_non_finite(v) for v in value)
    return False


_INF = float("inf")


def encode(event: Event) -> bytes:
    """The event's payload as JSON bytes. Raises CodecError for values JSON cannot hold.

    orjson writes NaN and infinities
    as `null`, which would change the event silently. They can only show up as `null` in the output, and only in
    events not parsed from JSON, so the search runs only then: first a cheap round-trip comparison, then (only
    when that differs) the walk that finds them.
    """
    data = to_dict(event)
    try:
        out = orjson.dumps(data)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise CodecError(f"cannot encode {event.TYPE}: {exc}") from exc
    if not event.FROM_JSON and b"null" in out and orjson.loads(out) != data and _non_finite(data):
        raise CodecError(f"cannot encode {event.TYPE}: NaN or infinity in the payload")
    return out


def decode_dict(type_name: str, version: int, data: JsonObject) -> Event:
    """Build an event from its payload dict, upcasting older versions first."""
    cls = _REGISTRY.get(type_name) or event_class(type_name)
    if version == cls.VERSION:  # the common case, kept short: scans decode millions
        try:
            return cls(**data)
        except TypeError as exc:
            raise CodecError(f"bad payload for {type_name} v{version}: {exc}") from exc
    while version < cls.VERSION:
        up = _UPCASTERS.get((type_name, version))
        if up is None:
            raise CodecError(f"no upcaster for {type_name} v{version}")
        data = up(data)
        version += 1
    if version > cls.VERSION:
        raise CodecError(f"{type_name} v{version} is newer than this program (v{cls.VERSION})")
    try:
        return cls(**data)
    except TypeError as exc:
        raise CodecError(f"bad payload for {type_name} v{version}: {exc}") from exc


def decode(type_name: str, version: int, payload: bytes | str) -> Event:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"payload of {type_name} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CodecError(f"payload of {type_name} is not a JSON object")
    return decode_dict(type_name, version, data)


# ---------------------------------------------------------------------------------------------------------------
# Observed


@register
@dataclasses.dataclass(frozen=True, slots=True)
class ProductObserved(Event):
    """A PowerOffice product as `GET /Products` returned it, with its product group (None when it has none)."""

    TYPE: ClassVar[str] = "product.observed"
    FROM_JSON: ClassVar[bool] = True
    product: JsonObject
    group: JsonObject | None = None


@register
@dataclasses.dataclass(frozen=True, slots=True)
class InvoiceObserved(Event):
    """A PowerOffice outgoing invoice with its lines and snapshots of its customer and delivery addresses,
    so that projecting it never needs the network."""

    TYPE: ClassVar[str] = "invoice.observed"
    FROM_JSON: ClassVar[bool] = True
    invoice: JsonObject
    lines: list[JsonObject]
    customer: JsonObject | None = None
    delivery_addresses: list[JsonObject] = dataclasses.field(default_factory=list)


@register
@dataclasses.dataclass(frozen=True, slots=True)
class StockObserved(Event):
    """An Ongoing article's stock figures (`inventoryInfo`), appended only when a figure changed."""

    TYPE: ClassVar[str] = "stock.observed"
    FROM_JSON: ClassVar[bool] = True
    article_number: str
    article_system_id: int | None
    inventory: JsonObject


# ---------------------------------------------------------------------------------------------------------------
# Commands


@register
@dataclasses.dataclass(frozen=True, slots=True)
class ArticleUpsertRequested(Event):
    """`PUT /articles` with `body` (a PostArticleModel) for the tenant's goods owner."""

    TYPE: ClassVar[str] = "article.upsert_requested"
    body: JsonObject
    product_id: int | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)


@register
@dataclasses.dataclass(frozen=True, slots=True)
class OrderUpsertRequested(Event):
    """`PUT /orders` with `body` (a PostOrderModel). `force` re-sends an order that was already delivered."""

    TYPE: ClassVar[str] = "order.upsert_requested"
    body: JsonObject
    invoice_id: str
    article_numbers: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    force: bool = False
    # Set when the invoice's own number was taken by another invoice of the tenant.
    renumbered_from: str | None = None


@register
@dataclasses.dataclass(frozen=True, slots=True)
class StockPatchRequested(Event):
    """`PATCH /Products/{product_id}` setting `StockOnHand` to `value`."""

    TYPE: ClassVar[str] = "stock.patch_requested"
    product_id: int
    product_code: str
    value: float


# ---------------------------------------------------------------------------------------------------------------
# Outcomes and operator events


@register
@dataclasses.dataclass(frozen=True, slots=True)
class CommandSucceeded(Event):
    """The target accepted the command at `command` (a log position). `ids` holds what it returned."""

    TYPE: ClassVar[str] = "command.succeeded"
    command: int
    ids: JsonObject
    attempts: int
    message: str | None = None


@register
@dataclasses.dataclass(frozen=True, slots=True)
class CommandFailed(Event):
    """The command at `command` failed. `permanent` quarantines its entity until an `EntityRedriven`."""

    TYPE: ClassVar[str] = "command.failed"
    command: int
    status: int | None
    message: str
    attempts: int
    permanent: bool


@register
@dataclasses.dataclass(frozen=True, slots=True)
class CommandSkipped(Event):
    """The command at `command` was deliberately not sent, and why."""

    TYPE: ClassVar[str] = "command.skipped"
    command: int
    reason: str


@register
@dataclasses.dataclass(frozen=True, slots=True)
class MappingFailed(Event):
    """The observation at `source` could not be mapped; `field` names the source field at fault."""

    TYPE: ClassVar[str] = "mapping.failed"
    source: int
    field: str
    reason: str


@register
@dataclasses.dataclass(frozen=True, slots=True)
class ObservationSkipped(Event):
    """The observation at `source` makes no command, on purpose: a product the tenant's filters leave out, or
    stock of an article PowerOffice has no stock item for. `reason` says which."""

    TYPE: ClassVar[str] = "observation.skipped"
    source: int
    reason: str


@register
@dataclasses.dataclass(frozen=True, slots=True)
class EntityRedriven(Event):
    """An operator released a quarantined entity: its waiting commands are sent again."""

    TYPE: ClassVar[str] = "entity.redriven"
    reason: str
    by: str


@register
@dataclasses.dataclass(frozen=True, slots=True)
class ReplayRecorded(Event):
    """A replay ran: who, which window, which mapping version, and what it found."""

    TYPE: ClassVar[str] = "replay.recorded"
    by: str
    window_from: str
    window_to: str
    kind: str | None
    mapping_version: int
    dry_run: bool
    counts: JsonObject


OBSERVED_TYPES = (ProductObserved.TYPE, InvoiceObserved.TYPE, StockObserved.TYPE)
COMMAND_TYPES = (ArticleUpsertRequested.TYPE, OrderUpsertRequested.TYPE, StockPatchRequested.TYPE)
OUTCOME_TYPES = (CommandSucceeded.TYPE, CommandFailed.TYPE, CommandSkipped.TYPE)


@register
@dataclasses.dataclass(frozen=True, slots=True)
class ObservationRejected(Event):
    """A record a poller read but could not take as an observation: no usable `Id`, a field the poller needs
    (`ProductGroupId`, say) of the wrong type, a value the JSON parser refused, or details (lines, customer,
    delivery addresses) that would not parse. `field` names the field(s) at fault. The record is kept: `record`
    as it was read (only the members that parsed, when it would not parse) and `raw`, the text as received of
    what would not parse (the record, or the line, customer or address of an invoice). It stands in
    `audit failures` until the record is observed again."""

    TYPE: ClassVar[str] = "observation.rejected"
    FROM_JSON: ClassVar[bool] = True
    resource: str
    field: str
    reason: str
    record: JsonObject | None = None
    raw: str | None = None


@register
@dataclasses.dataclass(frozen=True, slots=True)
class ReconcileRecorded(Event):
    """A reconcile of one tenant ran (`pipeline.reconcile`): who, which kinds, the orders window, the mapping
    version, whether PowerOffice and Ongoing agreed, the counts per kind, the requests per side, and how many
    repair commands it appended (they carry this event as their causation)."""

    TYPE: ClassVar[str] = "reconcile.recorded"
    by: str
    kinds: list[str]
    window_from: str | None
    mapping_version: int
    repair: bool
    agreed: bool
    counts: JsonObject
    requests: JsonObject = dataclasses.field(default_factory=dict)
    repairs: int = 0
    error: str | None = None
