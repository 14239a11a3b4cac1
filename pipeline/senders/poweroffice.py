"""The stock write-back stage: `StockPatchRequested` → PowerOffice `PATCH /Products/{id}` (`StockOnHand`).

Same machinery as the Ongoing stage (`pipeline.senders.base`; checkpoint `sender.poweroffice` per tenant): one
pending command per product, outcomes recorded with the checkpoint, permanent failures quarantine the product
only (e.g. PowerOffice refusing stock on a product that is not a stock item), a value equal to the one last
delivered for the product is skipped (unless it is a reconcile repair).

Pacing is **not** done here. Every request goes through the PowerOffice client, whose one limiter per
subscription key (shared with the pollers and fair across tenants) decides when it may start. This stage only
bounds how many patches a tenant has waiting at that limiter (`in_flight`), so a big tenant queues a few requests,
not thousands, and the limiter's round-robin keeps the tenants even.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from pipeline.clients.http import Attempts
from pipeline.config import TenantSettings
from pipeline.eventlog.base import StoredEvent
from pipeline.events import StockPatchRequested
from pipeline.senders.base import Delivered, Fail, LaneView, Result, Stage


class StockTarget(Protocol):
    """What the stage needs from PowerOffice for one tenant (`pipeline.clients.poweroffice.TenantPowerOffice`)."""

    async def patch_stock_on_hand(
        self, product_id: int, value: float, *, attempts: Attempts | None = None
    ) -> dict[str, Any]: ...


class StockBackStage(Stage):
    """Delivers `StockPatchRequested` to each tenant's PowerOffice company."""

    name = "sender.poweroffice"
    command_types = (StockPatchRequested.TYPE,)
    entity_prefixes = ("stockback:",)

    def __init__(self, targets: Callable[[TenantSettings], StockTarget], *, in_flight: int = 4) -> None:
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        self.in_flight = in_flight
        self._make_target = targets
        self._targets: dict[str, StockTarget] = {}

    def target(self, tenant: TenantSettings) -> StockTarget:
        if tenant.name not in self._targets:
            self._targets[tenant.name] = self._make_target(tenant)
        return self._targets[tenant.name]

    def identical(self, new: StoredEvent, last: StoredEvent) -> str | None:
        a, b = new.event, last.event
        if (
            isinstance(a, StockPatchRequested)
            and isinstance(b, StockPatchRequested)
            and (a.product_id, a.value) == (b.product_id, b.value)
        ):
            return f"StockOnHand {a.value:g} was delivered already (command at {last.position})"
        return None

    async def deliver(self, command: StoredEvent, view: LaneView, attempts: Attempts) -> Result:
        event = command.event
        if not isinstance(event, StockPatchRequested):
            return Fail(f"{command.type} is not a command for PowerOffice")
        await self.target(view.tenant).patch_stock_on_hand(event.product_id, event.value, attempts=attempts)
        return Delivered({"productId": event.product_id, "stockOnHand": event.value})
