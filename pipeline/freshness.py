"""Freshness: how long a change in the source takes to reach its target, measured from the log.

Freshness of a delivery = the time of the target's answer − the source's change time. Both are read from events
already in the log; no event is changed for it:

- the answer time is the `command.succeeded` event's `recorded_at` (appended as the answer arrives);
- the change time comes from the observation the command was made from (outcome → command → observation, by
  causation): a product's `LastChangedDateTimeOffset`, an invoice's `BalanceLastChangedDateTimeOffset` (a payment
  moves it), and for stock the time it was polled (the observation's `recorded_at`: Ongoing's `inventoryInfo`
  carries no change time, and the poll found the change no earlier than that).

Commands not made from an observation (a reconcile repair) have no source change and are left out, as are
change times that cannot be read, and changes from before the tenant's first cycle (the cursor `FIRST_CYCLE`): the
first sync's backfill delivers records changed weeks or months earlier, which says how old the data was, not how
long the pipeline took.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.eventlog import AnyLog

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from pipeline.clients.poweroffice import parse_timestamp
from pipeline.eventlog.base import EventLog
from pipeline.eventlog.sqlite import SqliteEventLog, format_time, recorded_time
from pipeline.events import CommandSucceeded, InvoiceObserved, ProductObserved, StockObserved, to_dict

KINDS: dict[str, str] = {ProductObserved.TYPE: "products", InvoiceObserved.TYPE: "orders", StockObserved.TYPE: "stock"}
# (record, field) holding the source's change time, per observation type; stock has none (the poll time counts).
CHANGE_FIELDS: dict[str, tuple[str, str]] = {
    ProductObserved.TYPE: ("product", "LastChangedDateTimeOffset"),
    InvoiceObserved.TYPE: ("invoice", "BalanceLastChangedDateTimeOffset"),
}
HEADER = ("tenant", "kind", "deliveries", "p50_seconds", "p95_seconds", "max_seconds")
# The cursor holding when the pipeline began watching a tenant (its first cycle's start), written by that cycle.
FIRST_CYCLE = "tenant.first_cycle"


@dataclass(frozen=True, slots=True)
class Sample:
    tenant: str
    kind: str
    seconds: float


def source_time(observation_type: str, payload: Mapping[str, Any], observed_at: datetime) -> datetime | None:
    """When the source changed, for an observation of `observation_type` with this payload recorded at
    `observed_at`: the record's change field, else (stock) the poll time. None when it cannot be read."""
    if observation_type == StockObserved.TYPE:
        return observed_at
    where = CHANGE_FIELDS.get(observation_type)
    if where is None:
        return None
    record = payload.get(where[0])
    raw = record.get(where[1]) if isinstance(record, dict) else None
    if not isinstance(raw, str):
        return None
    try:
        return parse_timestamp(raw)
    except ValueError:
        return None


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile of `values` (sorted or not); `share` in (0, 1]. Raises ValueError when empty."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def summarize(samples: Iterable[Sample]) -> list[tuple[str, str, int, float, float, float]]:
    """Rows of `HEADER`: per tenant and kind, the number of deliveries and p50 / p95 / max seconds."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for s in samples:
        groups[(s.tenant, s.kind)].append(s.seconds)
    rows = []
    for (tenant, kind), values in sorted(groups.items()):
        rows.append(
            (
                tenant,
                kind,
                len(values),
                round(percentile(values, 0.5), 1),
                round(percentile(values, 0.95), 1),
                round(max(values), 1),
            )
        )
    return rows


_SQL = """
SELECT s.tenant, s.recorded_at, o.type, o.recorded_at, o.payload
FROM events s
JOIN events c ON c.position = s.causation
JOIN events o ON o.position = c.causation
WHERE s.type = ? AND o.type IN (?, ?, ?) {extra}
ORDER BY s.position
"""


async def from_log(log: AnyLog, *, since: datetime | None = None, tenant: str | None = None) -> list[Sample]:
    """Every delivery's freshness since `since` (all when None), optionally of one tenant: one SQL join over the
    read-only connection, for `audit stats`."""
    params: list[Any] = [CommandSucceeded.TYPE, *KINDS]
    extra = ""
    if since is not None:  # SQLite keeps the time as text, PostgreSQL as a timestamptz
        extra += " AND s.recorded_at >= ?"
        params.append(format_time(since) if isinstance(log, SqliteEventLog) else since)
    if tenant is not None:
        extra += " AND s.tenant = ?"
        params.append(tenant)
    rows = await log.query(_SQL.format(extra=extra), params)
    watched = await first_cycles(log)
    out = []
    for name, answered, obs_type, observed, payload in rows:
        data = orjson.loads(payload)
        sample = _sample(name, recorded_time(answered), obs_type, recorded_time(observed), data, watched.get(name))
        if sample is not None:
            out.append(sample)
    return out


async def first_cycles(log: AnyLog) -> dict[str, datetime]:
    """Each tenant's first cycle start (`FIRST_CYCLE`), where recorded."""
    rows = await log.query("SELECT tenant, value FROM cursors WHERE poller = ?", [FIRST_CYCLE])
    return {str(tenant): datetime.fromisoformat(str(value)) for tenant, value in rows}


async def after(log: EventLog, tenant: str, position: int, *, watched: datetime | None) -> list[Sample]:
    """The freshness of each delivery of `tenant` recorded after `position` (a cycle's), through the log's own
    reads (any `EventLog`); changes from before `watched` (the tenant's first cycle start) are left out."""
    out = []
    head = await log.max_position()  # a cycle that appended nothing reads nothing
    async for success in log.read(after=position, upto=head, tenant=tenant, types=[CommandSucceeded.TYPE]):
        command = await log.get(success.causation) if success.causation else None
        observation = await log.get(command.causation) if command and command.causation else None
        if observation is None or observation.type not in KINDS:
            continue
        payload = to_dict(observation.event)
        sample = _sample(tenant, success.recorded_at, observation.type, observation.recorded_at, payload, watched)
        if sample is not None:
            out.append(sample)
    return out


def _sample(
    tenant: str,
    answered: datetime,
    obs_type: str,
    observed: datetime,
    payload: Mapping[str, Any],
    watched: datetime | None,
) -> Sample | None:
    """The delivery's sample; None when its change time cannot be read or came before `watched` (the first
    cycle: a backfilled record)."""
    changed = source_time(obs_type, payload, observed)
    if changed is None or (watched is not None and changed < watched):
        return None
    return Sample(tenant, KINDS[obs_type], max(0.0, (answered - changed).total_seconds()))
