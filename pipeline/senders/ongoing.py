"""The Ongoing stage: article and order upserts for each tenant's goods owner (DESIGN §3, reference NOTES §1).

Rules on top of the machinery in `pipeline.senders.base` (checkpoint `sender.ongoing` per tenant):
- One delivery at a time per tenant (`in_flight = 1`): Ongoing processes writes one at a time per goods owner and
  lets parallel ones queue and time out. Goods owners run side by side in separate lanes.
- An article command identical to the one last delivered for that article is skipped, not sent (unless it is a
  reconcile repair: reconcile found Ongoing's article differing from it).
- An order waits (is not failed) until every article in its `article_numbers` has been delivered for the tenant;
  within one run it goes the moment its last article succeeds.
- An order whose invoice already has a delivered order is skipped unless the command is `force`d.
- Before any order write, the order is looked up by number (`GET /orders?orderNumber=`): once the warehouse has
  started on it (status ≥ 300) the command is skipped with the status as the reason; it is never updated then. If
  the number belongs to another invoice's order in Ongoing, the command fails (permanently) rather than overwrite
  it. A 400 on the write is checked the same way, for a warehouse that started between the look-up and the write.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from pipeline.clients.http import Attempts
from pipeline.clients.ongoing import WAREHOUSE_STARTED_STATUS, order_status
from pipeline.config import TenantSettings
from pipeline.errors import ApiError, AuthError, PermanentApiError
from pipeline.eventlog.base import StoredEvent
from pipeline.events import ArticleUpsertRequested, OrderUpsertRequested, ReconcileRecorded
from pipeline.senders.base import Delivered, Fail, LaneView, Result, Skip, Stage


class OngoingTarget(Protocol):
    """What the stage needs from Ongoing for one tenant (`pipeline.clients.ongoing.TenantOngoing` is one)."""

    async def put_article(self, body: dict[str, Any], *, attempts: Attempts | None = None) -> dict[str, Any]: ...

    async def put_order(self, body: dict[str, Any], *, attempts: Attempts | None = None) -> dict[str, Any]: ...

    async def find_order(self, order_number: str) -> dict[str, Any] | None: ...


def article_entity(article_number: str) -> str:
    return f"article:{article_number}"


class OngoingStage(Stage):
    """Delivers `ArticleUpsertRequested` and `OrderUpsertRequested` to each tenant's goods owner."""

    name = "sender.ongoing"
    command_types = (ArticleUpsertRequested.TYPE, OrderUpsertRequested.TYPE)
    entity_prefixes = ("article:", "order:")
    in_flight = 1

    def __init__(self, targets: Callable[[TenantSettings], OngoingTarget]) -> None:
        self._make_target = targets
        self._targets: dict[str, OngoingTarget] = {}

    def target(self, tenant: TenantSettings) -> OngoingTarget:
        if tenant.name not in self._targets:
            self._targets[tenant.name] = self._make_target(tenant)
        return self._targets[tenant.name]

    def blockers(self, command: StoredEvent, view: LaneView) -> set[str]:
        event = command.event
        if not isinstance(event, OrderUpsertRequested):
            return set()
        return {article_entity(n) for n in event.article_numbers if article_entity(n) not in view.delivered}

    async def deliver(self, command: StoredEvent, view: LaneView, attempts: Attempts) -> Result:
        event = command.event
        target = self.target(view.tenant)
        if isinstance(event, ArticleUpsertRequested):
            return await self._article(command, event, view, target, attempts)
        if isinstance(event, OrderUpsertRequested):
            return await self._order(command, event, view, target, attempts)
        return Fail(f"{command.type} is not a command for Ongoing")

    async def _article(
        self,
        command: StoredEvent,
        event: ArticleUpsertRequested,
        view: LaneView,
        target: OngoingTarget,
        attempts: Attempts,
    ) -> Result:
        previous = await view.delivered_command(command.entity)
        if (
            previous is not None
            and isinstance(previous.event, ArticleUpsertRequested)
            and previous.event.body == event.body
            and not await repairs(view, command)
        ):
            return Skip(f"identical to the command at {previous.position}, which was delivered")
        answer = await target.put_article(event.body, attempts=attempts)
        return Delivered(
            {"articleSystemId": answer.get("articleSystemId"), "articleNumber": event.body.get("articleNumber")},
            answer.get("message"),
        )

    async def _order(
        self,
        command: StoredEvent,
        event: OrderUpsertRequested,
        view: LaneView,
        target: OngoingTarget,
        attempts: Attempts,
    ) -> Result:
        previous = view.delivered.get(command.entity)
        if previous is not None and not event.force:
            return Skip(
                f"invoice {event.invoice_id} already has a delivered order (orderId {previous.ids.get('orderId')},"
                f" command at {previous.command}); only a forced command sends it again"
            )
        number = event.body.get("orderNumber")
        if not isinstance(number, str) or not number:
            return Fail("the order body has no orderNumber")

        existing = await target.find_order(number)
        if existing is not None:
            started = _started(existing, number)
            if started:
                return Skip(started)
            theirs = (existing.get("orderInfo") or {}).get("goodsOwnerOrderId")
            ours = event.body.get("goodsOwnerOrderId")
            if theirs and ours and theirs != ours:
                return Fail(
                    f"order number {number} already belongs to another order in Ongoing"
                    f" (goodsOwnerOrderId {theirs!r}, this command's {ours!r}); not overwritten"
                )
        try:
            answer = await target.put_order(event.body, attempts=attempts)
        except PermanentApiError as exc:
            if exc.status == 400 and not isinstance(exc, AuthError):
                # The warehouse may have started between the look-up and the write: then it is a skip.
                again: dict[str, Any] | None = None
                with contextlib.suppress(ApiError):
                    again = await target.find_order(number)
                started = _started(again, number) if again is not None else None
                if started:
                    return Skip(f"{started} (it refused the update: {exc.detail})")
            raise
        return Delivered({"orderId": answer.get("orderId"), "orderNumber": number}, answer.get("message"))


async def repairs(view: LaneView, command: StoredEvent) -> bool:
    """Whether `command` is a reconcile repair (caused by a `reconcile.recorded`): reconcile saw the target differ
    from what was delivered, so a command identical to the delivered one must go all the same."""
    if command.causation is None:
        return False
    cause = await view.log.get(command.causation)
    return cause is not None and cause.type == ReconcileRecorded.TYPE


def _started(order: dict[str, Any], number: str) -> str | None:
    """The skip reason when the warehouse has started on `order`, else None."""
    status, text = order_status(order)
    if status is None or status < WAREHOUSE_STARTED_STATUS:
        return None
    label = f"{status} {text}".strip()
    return f"the warehouse has started on order {number} (status {label}); an order is not changed after that"
