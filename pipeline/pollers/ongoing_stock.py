"""The Ongoing stock poller: article stock figures → `stock.observed` events (only when a figure changed).

Ongoing's `GET /articles` rows carry `inventoryInfo`. The first poll of a tenant, and any poll once the last full
sweep is older than `full_sweep_every` (a day by default), reads every article; polls in between ask only for
articles whose stock changed since the previous poll (`stockInfoChangedFrom`, minus an overlap). Ongoing refuses
that filter older than 24 hours, so a delta that would need it falls back to a full sweep.

An observation is appended only when one of the stock figures differs from the article's previous observation;
each page of observations and the cursor move are one append, and the cursor is written only by the last page
of a successful poll, so a failed poll moves nothing.

A row the poller cannot read (no `articleNumber`, no `inventoryInfo` object, or a row the JSON parser refused)
is appended as `observation.rejected` naming the field, once per distinct row; the rest of the page flows.
A refusal of the credentials (401/403) is the client's `AuthError`: the poll moves nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson

from pipeline.clients.lenient_json import Page
from pipeline.config import TenantSettings
from pipeline.eventlog.base import EventLog, NewEvent, StoredEvent
from pipeline.events import ObservationRejected, StockObserved

CURSOR = "ongoing.stock"
RESOURCE = "articles"
MAX_DELTA_AGE = timedelta(hours=24)
# Stay clear of Ongoing's 24 h limit: a delta whose start is within this margin of it becomes a full sweep.
DELTA_MARGIN = timedelta(minutes=30)
FIGURES = (
    "numberOfItems",
    "sellableNumberOfItems",
    "numberOfBookedItems",
    "numberOfLockedItems",
    "allocatedNumberOfItems",
)


class StockSource(Protocol):
    def articles(self, *, stock_changed_from: datetime | None = None, page_size: int = 1000) -> AsyncIterator[Page]: ...


@dataclass
class StockPollResult:
    observed: int = 0
    unchanged: int = 0
    rows: int = 0
    full_sweep: bool = False
    rejected: int = 0


def _figures(inventory: dict[str, Any]) -> dict[str, Any]:
    return {k: inventory.get(k) for k in FIGURES}


def _cursor(text: str | None) -> tuple[datetime | None, datetime | None]:
    if not text:
        return None, None
    data = orjson.loads(text)
    full = datetime.fromisoformat(data["full_at"]) if data.get("full_at") else None
    last = datetime.fromisoformat(data["polled_at"]) if data.get("polled_at") else None
    return full, last


async def poll_stock(
    log: EventLog,
    source: StockSource,
    tenant: TenantSettings,
    *,
    now: datetime,
    full_sweep_every: timedelta = timedelta(hours=24),
    overlap: timedelta = timedelta(minutes=5),
    page_size: int = 1000,
) -> StockPollResult:
    """Poll one tenant's stock. Raises the client's ApiError on failure (the cursor stays where it was)."""
    full_at, polled_at = _cursor(await log.cursor(CURSOR, tenant.name))
    since = polled_at - overlap if polled_at else None
    full = (
        full_at is None
        or since is None
        or now - full_at >= full_sweep_every
        or now - since >= MAX_DELTA_AGE - DELTA_MARGIN
    )
    result = StockPollResult(full_sweep=full)
    # The latest observation or rejection per article: a row read again after a rejection is observed even
    # when its figures equal the last observation's, so the rejection stops standing.
    latest = await log.latest([StockObserved.TYPE, ObservationRejected.TYPE], tenant=tenant.name)
    previous: dict[str, StoredEvent] = {entity: e for (_, entity), e in latest.items()}
    full_mark = now if full or full_at is None else full_at
    cursor_value = orjson.dumps({"full_at": full_mark.isoformat(), "polled_at": now.isoformat()}).decode()
    pending: list[NewEvent] = []
    async for page in source.articles(stock_changed_from=None if full else since, page_size=page_size):
        if pending:
            await log.append(pending)
            pending = []
        for item in page.rejected:
            result.rows += 1
            result.rejected += 1
            rejection = ObservationRejected(RESOURCE, item.field, item.reason, item.readable, item.raw)
            pending.append(_rejected(tenant, item.readable.get("articleNumber"), rejection, item.raw, previous))
        for row in page:
            result.rows += 1
            number = row.get("articleNumber")
            inventory = row.get("inventoryInfo")
            if not isinstance(number, str) or not number.strip() or not isinstance(inventory, dict):
                field = "inventoryInfo" if isinstance(number, str) and number.strip() else "articleNumber"
                shown = orjson.dumps(row.get(field)).decode()[:60]
                result.rejected += 1
                rejection = ObservationRejected(RESOURCE, field, f"cannot read {field} {shown}", row)
                pending.append(_rejected(tenant, number, rejection, row, previous))
                continue
            entity = f"stock:{number}"
            figures = _figures(inventory)
            before = previous.get(entity)
            last = before.event if before is not None else None
            if isinstance(last, StockObserved) and _figures(last.inventory) == figures:
                result.unchanged += 1
                continue
            digest = hashlib.sha256(orjson.dumps(figures, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
            after = before.position if before is not None else 0
            event = StockObserved(number, _int(row.get("articleSystemId")), inventory)
            pending.append(NewEvent(tenant.name, entity, event, f"{tenant.name}/{entity}/{after}/{digest}"))
            result.observed += 1
    # The last page goes with the cursor move: a poll that failed before here moved nothing.
    await log.append(pending, cursors={(CURSOR, tenant.name): cursor_value})
    return result


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _rejected(
    tenant: TenantSettings,
    number: object,
    event: ObservationRejected,
    content: object,
    previous: dict[str, StoredEvent],
) -> NewEvent:
    """A rejection under `stock:<number>` (or a name made from the row when it has none), keyed by content and
    the article's previous event, so the same broken row read again adds nothing."""
    digest = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]
    entity = f"stock:{number}" if isinstance(number, str) and number.strip() else f"stock:?{digest[:12]}"
    before = previous.get(entity)
    after = before.position if before is not None and not isinstance(before.event, ObservationRejected) else 0
    return NewEvent(tenant.name, entity, event, f"{tenant.name}/{entity}/{after}/rejected#{digest}")
