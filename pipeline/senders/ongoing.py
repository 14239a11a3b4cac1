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
- One write in flight, truly: given `writers` (targets that make one attempt per call) and a `policy`, the stage
  retries writes itself, and after a write that got no answer (a time-out, a dropped connection) neither the retry
  nor the lane's next write starts until `settle` seconds have passed: the server may still be working on it.
  (The client's own retries cannot know that and would send the next attempt beside the one still running.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio

from pipeline.clients.http import Attempts, RetryPolicy, retrying
from pipeline.clients.ongoing import WAREHOUSE_STARTED_STATUS, order_status
from pipeline.config import TenantSettings
from pipeline.errors import ApiError, AuthError, PermanentApiError, TransientApiError
from pipeline.eventlog.base import StoredEvent
from pipeline.events import ArticleUpsertRequested, Event, OrderUpsertRequested
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

    def __init__(
        self,
        targets: Callable[[TenantSettings], OngoingTarget],
        *,
        writers: Callable[[TenantSettings], OngoingTarget] | None = None,
        policy: RetryPolicy | None = None,
        settle: float = 0.0,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        """`targets` serve reads, and writes too unless `writers` (one attempt per call) and `policy` are given:
        then the stage retries writes under `policy`, settling after a write that got no answer."""
        if (writers is None) != (policy is None):
            raise ValueError("writers and policy go together")
        self._make_target = targets
        self._make_writer = writers
        self._targets: dict[str, OngoingTarget] = {}
        self._writers: dict[str, OngoingTarget] = {}
        self.policy = policy
        self.settle = settle
        self._sleep = sleep

    def target(self, tenant: TenantSettings) -> OngoingTarget:
        if tenant.name not in self._targets:
            self._targets[tenant.name] = self._make_target(tenant)
        return self._targets[tenant.name]

    def writer(self, tenant: TenantSettings) -> OngoingTarget:
        if self._make_writer is None:
            return self.target(tenant)
        if tenant.name not in self._writers:
            self._writers[tenant.name] = self._make_writer(tenant)
        return self._writers[tenant.name]

    async def _write(
        self,
        view: LaneView,
        put: Callable[..., Awaitable[dict[str, Any]]],
        body: dict[str, Any],
        attempts: Attempts,
    ) -> dict[str, Any]:
        """One write, retried; with a `policy`, none starts before an unanswered earlier one has settled."""
        if self.policy is None:
            return await put(body, attempts=attempts)
        breaker = view.breaker

        async def once() -> dict[str, Any]:
            wait = breaker.settle_until - breaker.clock()
            if wait > 0:
                await self._sleep(wait)
            try:
                result: dict[str, Any] = await put(body)
                return result
            except TransientApiError as exc:
                if exc.status is None:  # no answer: the write may still be queued or running at the server
                    breaker.settle_until = breaker.clock() + self.settle
                raise

        return await retrying(self.policy, once, attempts)

    def needs(self, command: Event) -> tuple[str, ...]:
        if not isinstance(command, OrderUpsertRequested):
            return ()
        return tuple(article_entity(n) for n in command.article_numbers)

    def identical(self, new: StoredEvent, last: StoredEvent) -> str | None:
        if (
            isinstance(new.event, ArticleUpsertRequested)
            and isinstance(last.event, ArticleUpsertRequested)
            and new.event.body == last.event.body
        ):
            return f"identical to the command at {last.position}, which was delivered"
        return None

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
        answer = await self._write(view, self.writer(view.tenant).put_article, event.body, attempts)
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
            theirs = (existing.get("orderInfo") or {}).get("goodsOwnerOrderId") or ""
            ours = event.body.get("goodsOwnerOrderId") or ""
            if not ours or theirs != ours:
                # An order the pipeline did not make (another id, or none at all) is never overwritten.
                return Fail(
                    f"order number {number} already belongs to another order in Ongoing"
                    f" (goodsOwnerOrderId {theirs or 'empty'!r}, this command's {ours or 'empty'!r});"
                    " not overwritten"
                )
        try:
            answer = await self._write(view, self.writer(view.tenant).put_order, event.body, attempts)
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


def _started(order: dict[str, Any], number: str) -> str | None:
    """The skip reason when the warehouse has started on `order`, else None."""
    status, text = order_status(order)
    if status is None or status < WAREHOUSE_STARTED_STATUS:
        return None
    label = f"{status} {text}".strip()
    return f"the warehouse has started on order {number} (status {label}); an order is not changed after that"
