"""Audit: read-only questions to the log. Every function here only reads.

- `history`: everything that happened to one entity of a tenant, or to a source record and what it caused
  (`invoice:<id>` shows the observations, the order command they made and the order's outcomes);
- `lineage`: the whole causation chain through one position: up to its observation, then everything that
  observation caused (its command, the command's outcomes);
- `failures`: entities whose latest outcome is a failure (quarantined), mapping failures not yet superseded, and
  records a poller rejected that have not been observed since;
- `stats`: event counts per tenant and type;
- `sql`: read-only SQL against the log, on a connection of its own that may only read, with a time limit.

`resolve` turns what an operator types (a SKU, an order or invoice number) into the entity keys of the log.

One exception writes, and only derived data: `rebuild_heads` recomputes the `entity_heads` table (and
`entity_flags` from it) from the events (never touching an event) and says how many of their rows were wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from pipeline.eventlog.base import EventLog, StoredEvent
from pipeline.eventlog.sqlite import HeadsRebuilt, SqliteEventLog, untrusted_query
from pipeline.events import (
    OUTCOME_TYPES,
    CommandFailed,
    EntityRedriven,
    MappingFailed,
    ObservationRejected,
    ObservationSkipped,
    to_dict,
)
from pipeline.problems import standing_problems

if TYPE_CHECKING:
    from pipeline.eventlog import AnyLog


@dataclass(frozen=True)
class Row:
    position: int
    recorded_at: str
    tenant: str
    entity: str
    type: str
    causation: int | None
    mapping_version: int | None
    summary: str
    payload: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "recorded_at": self.recorded_at,
            "tenant": self.tenant,
            "entity": self.entity,
            "type": self.type,
            "causation": self.causation,
            "mapping_version": self.mapping_version,
            "summary": self.summary,
            "payload": self.payload,
        }


def summarize(e: StoredEvent) -> str:
    """One line saying what an event means."""
    d = to_dict(e.event)
    t = e.type
    if t == "product.observed":
        p = d["product"]
        return f"product {p.get('Code')!r} {p.get('Name')!r} price {p.get('UnitPrice')}"
    if t == "invoice.observed":
        i = d["invoice"]
        return f"invoice {i.get('InvoiceNo')} balance {i.get('Balance')} ({len(d['lines'])} lines)"
    if t == "stock.observed":
        return f"stock of {d['article_number']}: {d['inventory'].get('numberOfItems')} items"
    if t == "article.upsert_requested":
        return f"PUT article {d['body'].get('articleNumber')}"
    if t == "order.upsert_requested":
        extra = " (forced)" if d.get("force") else ""
        return f"PUT order {d['body'].get('orderNumber')} for invoice {d['invoice_id']}{extra}"
    if t == "stock.patch_requested":
        return f"PATCH StockOnHand of product {d['product_code']} to {d['value']}"
    if t == "command.succeeded":
        return f"delivered #{d['command']} after {d['attempts']} attempt(s): {d['ids']}"
    if t == "command.failed":
        kind = "permanent" if d["permanent"] else "transient"
        return f"#{d['command']} failed ({kind}, status {d['status']}, {d['attempts']} attempts): {d['message']}"
    if t == "command.skipped":
        return f"#{d['command']} skipped: {d['reason']}"
    if t == "mapping.failed":
        return f"cannot map #{d['source']}: {d['field']}: {d['reason']}"
    if t == "observation.skipped":
        return f"no command for #{d['source']}: {d['reason']}"
    if t == "observation.rejected":
        return f"cannot read a {d['resource']} record: {d['field']}: {d['reason']}"
    if t == "entity.redriven":
        return f"re-driven by {d['by']}: {d['reason']}"
    if t == "replay.recorded":
        return f"replay by {d['by']} {d['window_from']}..{d['window_to']} dry_run={d['dry_run']}: {d['counts']}"
    if t == "reconcile.recorded":
        state = "agreed" if d["agreed"] else (f"could not read a side: {d['error']}" if d.get("error") else "differ")
        return (
            f"reconcile by {d['by']} ({', '.join(d['kinds'])}): {state}, repairs {d.get('repairs', 0)}: {d['counts']}"
        )
    return t


def to_row(e: StoredEvent) -> Row:
    return Row(
        e.position,
        e.recorded_at.isoformat(),
        e.tenant,
        e.entity,
        e.type,
        e.causation,
        e.mapping_version,
        summarize(e),
        to_dict(e.event),
    )


async def history(log: EventLog, tenant: str, entity: str) -> list[Row]:
    """The entity's own events plus everything they caused (commands, outcomes), in position order."""
    seen = {e.position: e async for e in log.read(tenant=tenant, entity=entity)}
    # Follow causation downwards: commands caused by these observations, outcomes caused by those commands.
    causes = set(seen)
    while causes:
        found = [e for e in await log.caused_by(causes) if e.position not in seen]
        seen.update((e.position, e) for e in found)
        causes = {e.position for e in found}
    return [to_row(e) for e in sorted(seen.values(), key=lambda e: e.position)]


async def lineage(log: EventLog, position: int) -> list[Row]:
    """The whole chain through `position`: its causes up to the root (the observation), then everything the root
    caused, transitively (from an observation: its command and that command's outcomes)."""
    start = await log.get(position)
    if start is None:
        return []
    root = start
    while root.causation is not None:
        parent = await log.get(root.causation)
        if parent is None:
            break
        root = parent
    seen = {root.position: root}
    causes = {root.position}
    while causes:
        found = [e for e in await log.caused_by(causes) if e.position not in seen]
        seen.update((e.position, e) for e in found)
        causes = {e.position for e in found}
    return [to_row(e) for e in sorted(seen.values(), key=lambda e: e.position)]


ENTITY_KINDS = ("product", "invoice", "article", "order", "stock", "stockback")


async def resolve(log: AnyLog, tenant: str, text: str) -> list[str]:
    """The entity keys in the log that `text` stands for: itself if it is a key (`product:7001007`); for a SKU its
    product, article, stock and stock write-back; for an order or invoice number its invoice and order. Empty if
    the log has none of them."""
    found: set[str] = set()
    if text.split(":", 1)[0] in ENTITY_KINDS and ":" in text:
        found.add(text)
    else:
        found.update(await _named(log, tenant, text))
    if not found:
        return []
    present = await log.query(
        f"SELECT DISTINCT entity FROM events WHERE tenant = ? AND entity IN ({', '.join('?' * len(found))})",
        (tenant, *sorted(found)),
    )
    return sorted(entity for (entity,) in present)


async def _named(log: AnyLog, tenant: str, text: str) -> set[str]:
    """Entity keys for a SKU, an order number or an invoice number (as JSON text or number in the payloads)."""
    found = {f"article:{text}", f"stock:{text}"}  # a SKU is the article number
    product_ids = await log.query(
        "SELECT DISTINCT json_extract(payload, '$.product.Id') FROM events WHERE type = 'product.observed'"
        " AND tenant = ? AND CAST(json_extract(payload, '$.product.Code') AS TEXT) = ?",
        (tenant, text),
    )
    for (product_id,) in product_ids:
        found.update((f"product:{product_id}", f"stockback:{product_id}"))
    invoices = await log.query(
        "SELECT DISTINCT json_extract(payload, '$.invoice.Id') FROM events WHERE type = 'invoice.observed'"
        " AND tenant = ? AND CAST(json_extract(payload, '$.invoice.InvoiceNo') AS TEXT) = ?"
        " UNION SELECT DISTINCT json_extract(payload, '$.invoice_id') FROM events"
        " WHERE type = 'order.upsert_requested' AND tenant = ?"
        " AND CAST(json_extract(payload, '$.body.orderNumber') AS TEXT) = ?",
        (tenant, text, tenant, text),
    )
    for (invoice_id,) in invoices:
        found.update((f"invoice:{invoice_id}", f"order:{invoice_id}"))
    return found


async def histories(log: EventLog, tenant: str, entities: list[str]) -> list[Row]:
    """`history` of several entities merged, each event once, in position order."""
    rows: dict[int, Row] = {}
    for entity in entities:
        rows.update((r.position, r) for r in await history(log, tenant, entity))
    return [rows[p] for p in sorted(rows)]


async def observation_skips(log: EventLog, after: int) -> dict[str, int]:
    """`observation.skipped` events per tenant after position `after` (what a cycle's summary calls skipped)."""
    counts: dict[str, int] = {}
    async for stored in log.read(after=after, types=[ObservationSkipped.TYPE]):
        counts[stored.tenant] = counts.get(stored.tenant, 0) + 1
    return counts


async def tenants(log: AnyLog) -> set[str]:
    """The tenants that have events in the log."""
    return {name for (name,) in await log.query("SELECT DISTINCT tenant FROM events")}


async def failures(log: EventLog, tenant: str | None = None) -> list[Row]:
    """Quarantined entities, entities whose latest outcome is a transient failure (not re-driven since), and
    standing mapping failures and rejected records (`pipeline.problems`), of one tenant or all."""
    latest = await log.latest([*OUTCOME_TYPES, EntityRedriven.TYPE], tenant=tenant)
    found = {e.position: e for e in latest.values() if isinstance(e.event, CommandFailed) and not e.event.permanent}
    with_failures = await log.latest([CommandFailed.TYPE, MappingFailed.TYPE, ObservationRejected.TYPE], tenant=tenant)
    tenants = sorted({t for t, _ in with_failures})
    for name in tenants:
        problems = await standing_problems(log, name)
        found.update((e.position, e) for e in problems.quarantined + problems.mapping_failures + problems.rejected)
    return [to_row(e) for e in sorted(found.values(), key=lambda e: e.position)]


async def stats(log: AnyLog) -> list[tuple[Any, ...]]:
    return await log.query("SELECT tenant, type, count(*) FROM events GROUP BY tenant, type ORDER BY tenant, type")


async def sql(log: AnyLog, query: str, *, timeout: float = 30.0) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(column names, rows) of operator SQL: only reading is allowed, and it stops after `timeout` seconds. (On
    PostgreSQL: a read-only transaction with a statement timeout; columns are numbered.)"""
    if isinstance(log, SqliteEventLog):
        path = log.path
        return await anyio.to_thread.run_sync(lambda: untrusted_query(path, query, timeout=timeout))
    rows = await log.query(query)
    return [f"c{i}" for i in range(len(rows[0]) if rows else 0)], rows


async def rebuild_heads(log: AnyLog) -> HeadsRebuilt:
    """Recompute `entity_heads` and `entity_flags` from the events (`pipeline audit rebuild-heads`)."""
    return await log.rebuild_heads()
