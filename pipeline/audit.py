"""Audit: read-only questions to the log. Every function here only reads.

- `history`: everything that happened to one entity of a tenant, or to a source record and what it caused
  (`invoice:<id>` shows the observations, the order command they made and the order's outcomes);
- `lineage`: the causation chain through one position, up to the observation and down to the outcomes;
- `failures`: entities whose latest outcome is a failure (quarantined), and mapping failures not yet superseded;
- `stats`: event counts per tenant and type;
- `sql`: any read-only SQL against the log (the connection refuses writes).

One exception writes, and only derived data: `rebuild_heads` recomputes the `entity_heads` table from the events
(never touching an event) and says how many of its rows were wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.eventlog.base import EventLog, StoredEvent
from pipeline.eventlog.sqlite import HeadsRebuilt
from pipeline.events import (
    OBSERVED_TYPES,
    OUTCOME_TYPES,
    CommandFailed,
    EntityRedriven,
    MappingFailed,
    to_dict,
)

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
    if t == "entity.redriven":
        return f"re-driven by {d['by']}: {d['reason']}"
    if t == "replay.recorded":
        return f"replay by {d['by']} {d['window_from']}..{d['window_to']} dry_run={d['dry_run']}: {d['counts']}"
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
    """The chain through `position`: its causes up to the observation, then what it caused."""
    start = await log.get(position)
    if start is None:
        return []
    chain = [start]
    cur = start
    while cur.causation is not None:
        parent = await log.get(cur.causation)
        if parent is None:
            break
        chain.insert(0, parent)
        cur = parent
    return [to_row(e) for e in chain + await log.caused_by([position])]


async def failures(log: EventLog, tenant: str | None = None) -> list[Row]:
    """Entities whose latest outcome is a failure (and not re-driven since), plus current mapping failures."""
    latest = await log.latest([*OUTCOME_TYPES, EntityRedriven.TYPE], tenant=tenant)
    out = [e for e in latest.values() if isinstance(e.event, CommandFailed)]
    mapping = await log.latest([MappingFailed.TYPE], tenant=tenant)
    observed = await log.latest(OBSERVED_TYPES, tenant=tenant)
    # A mapping failure stands until a newer observation of the same record arrives.
    failed_sources = [
        e
        for key, e in mapping.items()
        if isinstance(e.event, MappingFailed) and key in observed and observed[key].position == e.event.source
    ]
    return [to_row(e) for e in sorted(out + failed_sources, key=lambda e: e.position)]


async def stats(log: AnyLog) -> list[tuple[Any, ...]]:
    return await log.query("SELECT tenant, type, count(*) FROM events GROUP BY tenant, type ORDER BY tenant, type")


async def sql(log: AnyLog, query: str) -> list[tuple[Any, ...]]:
    return await log.query(query)


async def rebuild_heads(log: AnyLog) -> HeadsRebuilt:
    """Recompute `entity_heads` from the events (`pipeline audit rebuild-heads`)."""
    return await log.rebuild_heads()
