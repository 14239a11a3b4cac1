"""Senders against the fakes: real clients, a real SQLite log, outcomes and checkpoints checked in the log."""

from __future__ import annotations

import itertools
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pipeline.clients.http import Attempts, RetryPolicy
from pipeline.clients.ongoing import OngoingClient, TenantOngoing
from pipeline.clients.poweroffice import PowerOfficeClient
from pipeline.clients.ratelimit import RateLimiter
from pipeline.config import OngoingSettings, PowerOfficeSettings, Secret, TenantSettings
from pipeline.eventlog.base import NewEvent
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import (
    COMMAND_TYPES,
    OUTCOME_TYPES,
    ArticleUpsertRequested,
    CommandFailed,
    CommandSkipped,
    CommandSucceeded,
    EntityRedriven,
    Event,
    OrderUpsertRequested,
    StockPatchRequested,
)
from pipeline.fakes.faults import Fault
from pipeline.fakes.generate import Company
from pipeline.fakes.ongoing import FakeOngoing, serve_ongoing
from pipeline.fakes.poweroffice import FakePowerOffice, serve_poweroffice
from pipeline.senders import Breakers, Sender, SendSummary
from tests.ongoing_schema import article_body, fake_validator, order_body

ACME, BETA = 159, 160
STAGE = "sender.ongoing"


def tenant(name: str, owner: int, client_key: str = "ck") -> TenantSettings:
    return TenantSettings(name=name, poweroffice_client_key=Secret(client_key), ongoing_goods_owner_id=owner)


def article_cmd(owner: int, number: str, name: str | None = None, **extra: Any) -> ArticleUpsertRequested:
    return ArticleUpsertRequested(body=dict(article_body(owner, number, name, **extra)))


def order_cmd(
    owner: int,
    invoice: str,
    number: str,
    lines: list[tuple[str, float]],
    *,
    refs: list[str] | None = None,
    force: bool = False,
) -> OrderUpsertRequested:
    return OrderUpsertRequested(
        body=dict(order_body(owner, number, lines, invoice_id=invoice)),
        invoice_id=invoice,
        article_numbers=refs if refs is not None else [a for a, _ in lines],
        force=force,
    )


def entity_of(event: Event) -> str:
    if isinstance(event, ArticleUpsertRequested):
        return f"article:{event.body['articleNumber']}"
    if isinstance(event, OrderUpsertRequested):
        return f"order:{event.invoice_id}"
    assert isinstance(event, StockPatchRequested)
    return f"stockback:{event.product_id}"


@dataclass
class World:
    log: SqliteEventLog
    fake: FakeOngoing
    client: OngoingClient
    tenants: list[TenantSettings] = field(default_factory=lambda: [tenant("acme", ACME)])

    def sender(self, **kw: Any) -> Sender:
        return Sender(self.log, self.tenants, ongoing=kw.pop("ongoing", self.client), **kw)

    async def run(self, **kw: Any) -> SendSummary:
        return await self.sender(**kw).run_once()

    async def add(self, event: Event, tenant_name: str = "acme", entity: str | None = None) -> int:
        await self.log.append([NewEvent(tenant_name, entity or entity_of(event), event, uuid.uuid4().hex)])
        return await self.log.max_position()

    async def outcomes(self) -> dict[int, list[Event]]:
        """command position -> its outcome events, in order."""
        out: dict[int, list[Event]] = defaultdict(list)
        async for stored in self.log.read(types=OUTCOME_TYPES):
            assert isinstance(stored.event, CommandSucceeded | CommandFailed | CommandSkipped)
            assert stored.causation == stored.event.command
            out[stored.event.command].append(stored.event)
        return out

    async def last(self, position: int) -> Event:
        return (await self.outcomes())[position][-1]

    async def unanswered(self) -> list[int]:
        """Command positions without any outcome."""
        answered = await self.outcomes()
        return [s.position async for s in self.log.read(types=COMMAND_TYPES) if s.position not in answered]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    fake = FakeOngoing(username="wms", password="pw", validator=fake_validator)
    log = await SqliteEventLog.open(tmp_path / "log.db")
    try:
        async with serve_ongoing(fake) as url, aiohttp.ClientSession() as http:
            settings = OngoingSettings(api_url=url, username="wms", password=Secret("pw"), timeout_seconds=0.3)
            yield World(log, fake, OngoingClient(http, settings, policy=RetryPolicy(attempts=3)))
    finally:
        await log.close()
    assert fake.schema_violations == []


pytestmark = pytest.mark.anyio


# ---------------------------------------------------------------------------------------------------------------
# Delivery, dependencies, idempotency


async def test_order_waits_for_its_articles_and_goes_in_the_same_run(world: World) -> None:
    """An order logged before its articles is held until they succeed, then sent in the same run."""
    o1 = await world.add(order_cmd(ACME, "inv-1", "O1", [("A1", 1), ("A2", 2)]))
    a1 = await world.add(article_cmd(ACME, "A1"))
    a2 = await world.add(article_cmd(ACME, "A2"))
    summary = await world.run()
    assert (summary.delivered, summary.waiting, summary.failed) == (3, 0, 0)
    assert [w.entity for w in world.fake.writes()] == ["article:A1", "article:A2", "order:O1"]
    outcomes = await world.outcomes()
    order = world.fake.order(ACME, "O1")
    article = world.fake.article(ACME, "A1")
    assert order is not None
    assert article is not None
    (success,) = outcomes[o1]
    assert isinstance(success, CommandSucceeded)
    assert success.ids == {"orderId": order["orderInfo"]["orderId"], "orderNumber": "O1"}
    assert success.attempts == 1
    assert success.message is not None
    assert "Order number O1 created/updated" in success.message
    assert isinstance(outcomes[a1][0], CommandSucceeded)
    assert outcomes[a1][0].ids["articleSystemId"] == article["articleSystemId"]
    assert isinstance(outcomes[a2][0], CommandSucceeded)
    assert await world.log.checkpoint(STAGE, "acme") >= o1
    assert await world.unanswered() == []


async def test_order_without_its_articles_waits_across_runs(world: World) -> None:
    """An order whose article was never delivered waits (no failure, no write) and keeps the checkpoint below it."""
    o1 = await world.add(order_cmd(ACME, "inv-1", "O1", [("A9", 1)]))
    summary = await world.run()
    assert (summary.delivered, summary.waiting, summary.failed) == (0, 1, 0)
    assert world.fake.writes() == []
    assert await world.log.checkpoint(STAGE, "acme") < o1
    await world.add(article_cmd(ACME, "A9"))
    summary = await world.run()
    assert (summary.delivered, summary.waiting) == (2, 0)
    assert world.fake.creations(ACME, "O1") == 1
    writes = len(world.fake.writes())
    summary = await world.run()
    assert (summary.delivered, summary.skipped, summary.waiting) == (0, 0, 0)
    assert len(world.fake.writes()) == writes


async def test_article_upsert_then_update_then_identical_is_skipped(world: World) -> None:
    """An update goes to the same article; a command identical to the last delivered one is skipped."""
    v1 = await world.add(article_cmd(ACME, "A1", "Sko"))
    await world.run()
    v2 = await world.add(article_cmd(ACME, "A1", "Sko, rød"))
    await world.run()
    v3 = await world.add(article_cmd(ACME, "A1", "Sko, rød"))
    summary = await world.run()
    assert (summary.delivered, summary.skipped) == (0, 1)
    first, second, third = [await world.last(p) for p in (v1, v2, v3)]
    assert isinstance(first, CommandSucceeded)
    assert isinstance(second, CommandSucceeded)
    assert first.ids["articleSystemId"] == second.ids["articleSystemId"]
    assert third == CommandSkipped(v3, f"identical to the command at {v2}, which was delivered")
    assert len(world.fake.writes(entity="article:A1")) == 2
    stored = world.fake.article(ACME, "A1")
    assert stored is not None
    assert stored["articleName"] == "Sko, rød"


async def test_only_the_newest_command_of_an_entity_is_sent(world: World) -> None:
    """Three pending versions of one article: one write with the newest; the older two are skipped as superseded."""
    v1 = await world.add(article_cmd(ACME, "A1", "one"))
    v2 = await world.add(article_cmd(ACME, "A1", "two"))
    v3 = await world.add(article_cmd(ACME, "A1", "three"))
    summary = await world.run()
    assert (summary.delivered, summary.skipped) == (1, 2)
    assert len(world.fake.writes()) == 1
    assert await world.last(v1) == CommandSkipped(v1, f"superseded by the command at {v3}")
    assert await world.last(v2) == CommandSkipped(v2, f"superseded by the command at {v3}")
    assert isinstance(await world.last(v3), CommandSucceeded)


async def test_restarted_sender_sends_nothing_twice(world: World) -> None:
    """A new sender over the same log finds everything answered and writes nothing."""
    await world.add(article_cmd(ACME, "A1"))
    await world.add(order_cmd(ACME, "inv-1", "O1", [("A1", 1)]))
    await world.run()
    before = len(world.fake.requests)
    summary = await world.sender().run_once()
    assert (summary.delivered, summary.skipped, summary.failed, summary.waiting) == (0, 0, 0, 0)
    assert len(world.fake.requests) == before


# ---------------------------------------------------------------------------------------------------------------
# Orders and the warehouse


async def test_unknown_article_on_an_order_quarantines_that_order_only(world: World) -> None:
    """A 400 for an unknown article fails that order permanently; other orders flow; a re-drive releases it."""
    await world.add(article_cmd(ACME, "A1"))
    # GHOST is not in the article registry (so not in the references), and Ongoing does not know it either.
    bad = await world.add(order_cmd(ACME, "inv-1", "O1", [("A1", 1), ("GHOST", 1)], refs=["A1"]))
    good = await world.add(order_cmd(ACME, "inv-2", "O2", [("A1", 1)]))
    summary = await world.run()
    assert (summary.delivered, summary.failed) == (2, 1)
    assert summary.tenants["acme"].quarantined == 1
    failed = await world.last(bad)
    assert isinstance(failed, CommandFailed)
    assert failed.permanent
    assert failed.status == 400
    assert "GHOST" in failed.message
    assert failed.attempts == 1
    assert isinstance(await world.last(good), CommandSucceeded)

    fixed = await world.add(order_cmd(ACME, "inv-1", "O1", [("A1", 1)]))
    summary = await world.run()  # a new command for the quarantined order is tried, and ends the quarantine
    assert (summary.delivered, summary.waiting, summary.tenants["acme"].quarantined) == (1, 0, 0)
    assert isinstance(await world.last(fixed), CommandSucceeded)
    assert world.fake.creations(ACME, "O1") == 1
    assert await world.unanswered() == []


async def test_order_started_in_the_warehouse_is_never_changed(world: World) -> None:
    """Once picking started, a changed order is skipped (already delivered; forced: the status), never sent."""
    await world.add(article_cmd(ACME, "A1"))
    await world.add(order_cmd(ACME, "inv-1", "O1", [("A1", 1)]))
    await world.run()
    world.fake.set_order_status(ACME, "O1", 400)

    changed = await world.add(order_cmd(ACME, "inv-1", "O1", [("A1", 5)]))
    summary = await world.run()
    assert (summary.delivered, summary.skipped) == (0, 1)
    skip = await world.last(changed)
    assert isinstance(skip, CommandSkipped)
    assert "inv-1 already has a delivered order" in skip.reason

    forced = await world.add(order_cmd(ACME, "inv-1", "O1", [("A1", 5)], force=True))
    summary = await world.run()
    assert (summary.delivered, summary.skipped) == (0, 1)
    skip = await world.last(forced)
    assert isinstance(skip, CommandSkipped)
    assert "warehouse has started on order O1 (status 400 Picked)" in skip.reason
    assert len(world.fake.writes(entity="order:O1")) == 1
    order = world.fake.order(ACME, "O1")
    assert order is not None
    assert order["orderLines"][0]["orderedNumberOfItems"] == 1.0


async def test_forced_order_updates_an_open_order_without_a_second_creation(world: World) -> None:
    """A forced command for a delivered, still open order is sent as an update of the same order."""
    await world.add(article_cmd(ACME, "A1"))
    await world.add(order_cmd(ACME, "inv-1", "O1", [("A1", 1)]))
    await world.run()
    forced = await world.add(order_cmd(ACME, "inv-1", "O1", [("A1", 4)], force=True))
    summary = await world.run()
    assert summary.delivered == 1
    assert isinstance(await world.last(forced), CommandSucceeded)
    order = world.fake.order(ACME, "O1")
    assert order is not None
    assert order["orderLines"][0]["orderedNumberOfItems"] == 4.0
    assert world.fake.creations(ACME, "O1") == 1


class StartsPickingOnWrite:
    """The real client, but the warehouse starts picking just as the write arrives (after the look-up)."""

    def __init__(self, client: OngoingClient, fake: FakeOngoing) -> None:
        self.client, self.fake = client, fake

    def for_tenant(self, t: TenantSettings) -> StartsPickingOnWrite.Target:
        return StartsPickingOnWrite.Target(self.client.for_tenant(t), self.fake)

    class Target:
        def __init__(self, inner: TenantOngoing, fake: FakeOngoing) -> None:
            self.inner, self.fake = inner, fake
            self.put_article = inner.put_article
            self.find_order = inner.find_order

        async def put_order(self, body: dict[str, Any], *, attempts: Attempts | None = None) -> dict[str, Any]:
            if self.fake.order(ACME, body["orderNumber"]) is not None:
                self.fake.set_order_status(ACME, body["orderNumber"], 320)
            return await self.inner.put_order(body, attempts=attempts)


async def test_warehouse_starting_between_lookup_and_write_is_a_skip(world: World) -> None:
    """If the write is refused because picking began after the look-up, the outcome is a skip with the status."""
    await world.add(article_cmd(ACME, "A1"))
    await world.add(order_cmd(ACME, "inv-1", "O1", [("A1", 1)]))
    await world.run()
    forced = await world.add(order_cmd(ACME, "inv-1", "O1", [("A1", 2)], force=True))
    summary = await world.run(ongoing=StartsPickingOnWrite(world.client, world.fake))
    assert (summary.skipped, summary.failed, summary.tenants["acme"].quarantined) == (1, 0, 0)
    skip = await world.last(forced)
    assert isinstance(skip, CommandSkipped)
    assert "status 320 Allocated" in skip.reason
    assert "refused the update" in skip.reason


async def test_order_number_of_another_invoice_is_not_overwritten(world: World) -> None:
    """An order number already used by another invoice's order fails permanently instead of overwriting it."""
    await world.add(article_cmd(ACME, "A1"))
    await world.add(order_cmd(ACME, "inv-A", "O1", [("A1", 1)]))
    await world.run()
    other = await world.add(order_cmd(ACME, "inv-B", "O1", [("A1", 9)]))
    summary = await world.run()
    assert summary.failed == 1
    failed = await world.last(other)
    assert isinstance(failed, CommandFailed)
    assert failed.permanent
    assert "already belongs to another order" in failed.message
    body = world.fake.order_body(ACME, "O1")
    assert body is not None
    assert body["goodsOwnerOrderId"] == "inv-A"


async def test_body_for_another_goods_owner_fails_without_sending(world: World) -> None:
    """A command whose body names another goods owner fails permanently and nothing is written."""
    cmd = await world.add(article_cmd(BETA, "A1"))
    summary = await world.run()
    assert summary.failed == 1
    failed = await world.last(cmd)
    assert isinstance(failed, CommandFailed)
    assert failed.permanent
    assert failed.status is None
    assert world.fake.requests == []


# ---------------------------------------------------------------------------------------------------------------
# Concurrency


async def test_goods_owners_in_parallel_each_one_write_at_a_time(world: World) -> None:
    """Two goods owners are served side by side, while each sees its writes strictly one after another."""
    world.tenants = [tenant("acme", ACME), tenant("beta", BETA)]
    world.fake.write_latency = 0.01
    for name, owner in (("acme", ACME), ("beta", BETA)):
        for i in range(8):
            await world.add(article_cmd(owner, f"A{i}"), name)
        await world.add(order_cmd(owner, f"inv-{name}", "O1", [("A0", 1), ("A7", 1)]), name)
    summary = await world.run(parallel=4)
    assert summary.delivered == 18
    for owner in (ACME, BETA):
        writes = sorted(world.fake.writes(owner), key=lambda r: r.at)
        assert len(writes) == 9
        assert all(a.ended <= b.at for a, b in itertools.pairwise(writes)), "two writes overlapped"
        assert world.fake.peak_in_flight(owner) == 1
    acme, beta = world.fake.writes(ACME), world.fake.writes(BETA)
    assert any(a.at < b.ended and b.at < a.ended for a in acme for b in beta), "goods owners did not overlap"


# ---------------------------------------------------------------------------------------------------------------
# Failures


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault("status", status=503), id="5xx"),
        pytest.param(Fault("hang", seconds=0.6), id="timeout"),
        pytest.param(Fault("drop"), id="dropped-connection"),
    ],
)
async def test_transient_failures_then_success(world: World, fault: Fault) -> None:
    """Two transient failures and then success: one success outcome counting the attempts."""
    world.fake.faults.add(fault, method="PUT", path="/articles", times=2)
    cmd = await world.add(article_cmd(ACME, "A1"))
    summary = await world.run()
    assert (summary.delivered, summary.failed) == (1, 0)
    outcome = await world.last(cmd)
    assert isinstance(outcome, CommandSucceeded)
    assert outcome.attempts == 3 or (fault.kind == "drop" and outcome.attempts == 2)
    assert world.fake.article(ACME, "A1") is not None


async def test_transient_failure_past_the_retries_is_retried_next_run(world: World) -> None:
    """Failing beyond the retry budget records a non-permanent failure; others flow; the next run retries it."""
    world.fake.faults.add(Fault("status", status=503), method="PUT", path="/articles", times=3)
    a1 = await world.add(article_cmd(ACME, "A1"))
    a2 = await world.add(article_cmd(ACME, "A2"))
    await world.add(order_cmd(ACME, "inv-1", "O1", [("A1", 1)]))
    summary = await world.run()
    assert (summary.delivered, summary.failed, summary.waiting) == (1, 1, 1)
    failed = await world.last(a1)
    assert isinstance(failed, CommandFailed)
    assert (failed.status, failed.attempts, failed.permanent) == (503, 3, False)
    assert "503" in failed.message
    assert isinstance(await world.last(a2), CommandSucceeded)
    summary = await world.run()
    assert (summary.delivered, summary.failed, summary.waiting) == (2, 0, 0)
    assert isinstance(await world.last(a1), CommandSucceeded)
    assert world.fake.creations(ACME, "O1") == 1


async def test_permanent_400_quarantines_one_article_while_the_others_are_delivered(world: World) -> None:
    """A 400 quarantines its article and its order waits (not sent), the others flow; with nothing new, later
    runs send nothing; a re-drive sends the failed command again and the order follows in the same run."""
    world.fake.faults.add(
        Fault("status", status=400, body=b'{"Message":"The request is invalid."}'), method="PUT", path="/articles"
    )
    a1 = await world.add(article_cmd(ACME, "A1"))
    await world.add(article_cmd(ACME, "A2"))
    await world.add(article_cmd(ACME, "A3"))
    o1 = await world.add(order_cmd(ACME, "inv-1", "O1", [("A1", 1)]))
    summary = await world.run()
    assert (summary.delivered, summary.failed, summary.waiting) == (2, 1, 1)
    failed = await world.last(a1)
    assert isinstance(failed, CommandFailed)
    assert failed.permanent
    assert (failed.status, failed.attempts) == (400, 1)
    assert "The request is invalid." in failed.message

    writes = len(world.fake.writes())
    summary = await world.run()
    assert (summary.delivered, summary.waiting, summary.tenants["acme"].quarantined) == (0, 1, 1)
    assert len(world.fake.writes()) == writes
    assert await world.unanswered() == [o1]

    await world.log.append([NewEvent("acme", "article:A1", EntityRedriven("fixed", "ops"), "redrive-a1")])
    summary = await world.run()
    assert (summary.delivered, summary.waiting, summary.failed) == (2, 0, 0)
    assert summary.tenants["acme"].quarantined == 0
    assert isinstance(await world.last(a1), CommandSucceeded)
    assert await world.unanswered() == []
    assert await world.log.checkpoint(STAGE, "acme") >= o1


async def test_redrive_of_a_healthy_entity_is_a_recorded_skip(world: World) -> None:
    """Re-driving an entity whose command was delivered sends nothing, says so once, and then rests."""
    a1 = await world.add(article_cmd(ACME, "A1"))
    await world.run()
    await world.log.append([NewEvent("acme", "article:A1", EntityRedriven("just in case", "ops"), "redrive")])
    summary = await world.run()
    assert (summary.delivered, summary.skipped) == (0, 1)
    assert len(world.fake.writes()) == 1
    assert [type(o) for o in (await world.outcomes())[a1]] == [CommandSucceeded, CommandSkipped]
    summary = await world.run()
    assert (summary.delivered, summary.skipped) == (0, 0)


# ---------------------------------------------------------------------------------------------------------------
# Stock write-back to PowerOffice


async def test_stock_write_back_goes_through_the_one_poweroffice_limiter(tmp_path: Path) -> None:
    """Stock patches of two tenants are delivered through the real client and its limiter; a non-stock product
    is quarantined alone; an unchanged value is skipped next time."""
    fake = FakePowerOffice(application_key="app", subscription_keys=["sub"], requests_per_second=200)
    products: dict[str, list[int]] = {}
    for key in ("ck-acme", "ck-beta"):
        fake.add_company(key, Company(name=key))
        products[key] = [fake.add_product(key, code=f"P{i}", name=f"P{i}")["Id"] for i in range(6)]
    not_stock = fake.add_product("ck-acme", code="SERVICE", name="Service", IsStockItem=False)["Id"]
    tenants = [tenant("acme", ACME, "ck-acme"), tenant("beta", BETA, "ck-beta")]
    log = await SqliteEventLog.open(tmp_path / "log.db")
    try:
        async with serve_poweroffice(fake) as origin, aiohttp.ClientSession() as http:
            settings = PowerOfficeSettings(
                api_url=f"{origin}/v2",
                token_url=f"{origin}/OAuth/Token",
                application_key=Secret("app"),
                subscription_key=Secret("sub"),
                requests_per_second=200,
            )
            limiter = RateLimiter(200)
            client = PowerOfficeClient(http, settings, limiter, policy=RetryPolicy(attempts=3))
            for t in tenants:
                ids = products[t.poweroffice_client_key.reveal()] + ([not_stock] if t.name == "acme" else [])
                for pid in ids:
                    event = StockPatchRequested(pid, f"P{pid}", float(pid + 1))
                    await log.append([NewEvent(t.name, f"stockback:{pid}", event, f"{t.name}/{pid}/1")])
            head = await log.max_position()
            summary = await Sender(log, tenants, poweroffice=client, stock_in_flight=3).run_once()
            assert (summary.delivered, summary.failed) == (12, 1)
            assert summary.tenants["acme"].quarantined == 1
            for key, ids in products.items():
                for pid in ids:
                    assert fake.company(key).products[pid]["StockOnHand"] == float(pid + 1)
            outcome = (await log.latest(OUTCOME_TYPES, tenant="acme", entity=f"stockback:{not_stock}")).popitem()[1]
            assert isinstance(outcome.event, CommandFailed)
            assert outcome.event.permanent
            assert outcome.event.status == 400
            # Every request PowerOffice saw (token calls included) was granted by the one limiter; none got a 429.
            assert limiter.granted == len(fake.requests)
            assert all(r.status != 429 for r in fake.requests)
            assert await log.checkpoint("sender.poweroffice", "beta") == head

            pid = products["ck-beta"][0]
            again = StockPatchRequested(pid, f"P{pid}", float(pid + 1))
            await log.append([NewEvent("beta", f"stockback:{pid}", again, "beta/again")])
            before = len(fake.requests)
            summary = await Sender(log, tenants, poweroffice=client).run_once()
            assert (summary.delivered, summary.skipped) == (0, 1)
            assert len(fake.requests) == before
    finally:
        await log.close()


# ---------------------------------------------------------------------------------------------------------------
# Issue 8: no silent loss (each test failed on the code before the sender's plan)


async def test_rule1_new_commands_for_a_quarantined_entity_are_tried_and_none_is_lost(world: World) -> None:
    """Quarantined, then two new commands in one window: the older is superseded, the newest is sent, nothing is
    left without an outcome, and the checkpoint never passes a command without one."""
    world.fake.faults.add(Fault("status", status=400), method="PUT", path="/articles")
    a1 = await world.add(article_cmd(ACME, "A1", "broken"))
    summary = await world.run()
    assert (summary.failed, summary.tenants["acme"].quarantined) == (1, 1)
    assert isinstance(await world.last(a1), CommandFailed)

    v2 = await world.add(article_cmd(ACME, "A1", "two"))
    v3 = await world.add(article_cmd(ACME, "A1", "three"))
    summary = await world.run()
    assert await world.last(v2) == CommandSkipped(v2, f"superseded by the command at {v3}")
    assert isinstance(await world.last(v3), CommandSucceeded)
    assert (summary.delivered, summary.tenants["acme"].quarantined) == (1, 0)
    stored = world.fake.article(ACME, "A1")
    assert stored is not None
    assert stored["articleName"] == "three"
    assert await world.unanswered() == []


async def test_rule1_superseded_skip_never_ends_quarantine(world: World) -> None:
    """A quarantined entity whose newest command fails again stays quarantined, though its older one was skipped."""
    world.fake.faults.add(Fault("status", status=400), method="PUT", path="/articles", times=2)
    await world.add(article_cmd(ACME, "A1", "broken"))
    await world.run()
    await world.add(article_cmd(ACME, "A1", "two"))
    v3 = await world.add(article_cmd(ACME, "A1", "three"))
    summary = await world.run()
    assert (summary.failed, summary.skipped, summary.tenants["acme"].quarantined) == (1, 1, 1)
    failed = await world.last(v3)
    assert isinstance(failed, CommandFailed)
    assert failed.permanent
    summary = await world.run()  # nothing new: still quarantined, nothing sent
    assert (summary.tenants["acme"].quarantined, len(world.fake.writes())) == (1, 2)


async def test_rule2_a_write_applied_but_answered_5xx_is_not_taken_as_delivered(world: World) -> None:
    """Delivered "five", then "seven" applied by Ongoing but answered 503, then back to "five": "five" is sent."""
    await world.add(article_cmd(ACME, "A1", "five"))
    await world.run()
    world.fake.after_apply.add(Fault("status", status=503), method="PUT", path="/articles", times=3)
    seven = await world.add(article_cmd(ACME, "A1", "seven"))
    summary = await world.run()
    failed = await world.last(seven)
    assert isinstance(failed, CommandFailed)
    assert not failed.permanent
    stored = world.fake.article(ACME, "A1")
    assert stored is not None
    assert stored["articleName"] == "seven"  # applied, though the answer said otherwise

    back = await world.add(article_cmd(ACME, "A1", "five"))
    summary = await world.run()
    assert (summary.delivered, summary.skipped) == (1, 1)  # "seven", which is no longer due, is superseded
    assert await world.last(seven) == CommandSkipped(seven, f"superseded by the command at {back}")
    assert isinstance(await world.last(back), CommandSucceeded)
    stored = world.fake.article(ACME, "A1")
    assert stored is not None
    assert stored["articleName"] == "five"
    again = await world.add(article_cmd(ACME, "A1", "five"))
    summary = await world.run()
    assert await world.last(again) == CommandSkipped(again, f"identical to the command at {back}, which was delivered")


async def test_rule4_refused_credentials_on_a_write_stop_the_tenant_and_quarantine_nothing(world: World) -> None:
    """A 401 on a write stops that tenant's lane for the run: no outcome, no quarantine, the refusal reported for
    the tenant; once the password is right again the next run delivers everything without a re-drive."""
    world.tenants = [tenant("acme", ACME), tenant("beta", BETA)]
    world.fake.goods_owner_credentials = {ACME: ("acme-user", "new-password")}
    for name, owner in (("acme", ACME), ("beta", BETA)):
        await world.add(article_cmd(owner, "A1"), name)
        await world.add(article_cmd(owner, "A2"), name)
        await world.add(order_cmd(owner, f"inv-{name}", "O1", [("A1", 1)]), name)
    summary = await world.run()
    acme, beta = summary.tenants["acme"], summary.tenants["beta"]
    assert acme.refused is not None
    assert "credentials" in acme.refused
    assert "pw" not in acme.refused
    assert (acme.delivered, acme.failed, acme.quarantined) == (0, 0, 0)
    assert len(world.fake.writes(ACME)) == 1  # the first refusal stops the lane
    assert (beta.delivered, beta.refused) == (3, None)
    assert len(await world.unanswered()) == 3

    world.fake.goods_owner_credentials = {}
    summary = await world.run()
    assert (summary.tenants["acme"].delivered, summary.tenants["acme"].refused) == (3, None)
    assert await world.unanswered() == []
    assert world.fake.creations(ACME, "O1") == 1


@pytest.mark.parametrize("theirs", [pytest.param("", id="empty"), pytest.param(None, id="missing")])
async def test_rule10_an_order_the_pipeline_did_not_make_is_never_overwritten(world: World, theirs: Any) -> None:
    """An Ongoing order with our number but an empty or missing goodsOwnerOrderId fails permanently, naming it."""
    await world.add(article_cmd(ACME, "A1"))
    await world.run()
    body: dict[str, Any] = dict(order_body(ACME, "O1", [("A1", 7)], invoice_id="x"))
    if theirs is None:
        del body["goodsOwnerOrderId"]
    else:
        body["goodsOwnerOrderId"] = theirs
    await world.client.for_tenant(world.tenants[0]).put_order(body)
    ours = await world.add(order_cmd(ACME, "inv-1", "O1", [("A1", 1)]))
    summary = await world.run()
    assert (summary.failed, summary.tenants["acme"].quarantined) == (1, 1)
    failed = await world.last(ours)
    assert isinstance(failed, CommandFailed)
    assert failed.permanent
    assert "order number O1 already belongs to another order" in failed.message
    assert "'inv-1'" in failed.message
    order = world.fake.order(ACME, "O1")
    assert order is not None
    assert order["orderLines"][0]["orderedNumberOfItems"] == 7.0


async def test_rule9_an_order_waits_naming_its_quarantined_article_and_goes_once_it_is_delivered(
    world: World,
) -> None:
    """An order whose article failed (quarantined, never delivered) waits and says which article; a later run
    that delivers the article sends the order."""
    world.fake.faults.add(Fault("status", status=400), method="PUT", path="/articles")
    await world.add(article_cmd(ACME, "A1", "broken"))
    order = await world.add(order_cmd(ACME, "inv-1", "O1", [("A1", 1)]))
    summary = await world.run()
    acme = summary.tenants["acme"]
    assert (acme.failed, acme.waiting, acme.quarantined) == (1, 1, 1)
    assert "article:A1" in acme.waits["order:inv-1"]
    assert await world.log.checkpoint(STAGE, "acme") < order

    summary = await world.run()  # nothing changed: still waiting, still named, nothing written
    assert summary.tenants["acme"].waiting == 1
    assert "article:A1" in summary.tenants["acme"].waits["order:inv-1"]
    assert world.fake.order(ACME, "O1") is None

    await world.add(article_cmd(ACME, "A1", "fixed"))
    summary = await world.run()
    assert (summary.delivered, summary.waiting, summary.tenants["acme"].quarantined) == (2, 0, 0)
    assert summary.tenants["acme"].waits == {}
    assert isinstance(await world.last(order), CommandSucceeded)
    assert world.fake.creations(ACME, "O1") == 1


async def test_rule9_an_order_waits_while_its_delivered_article_is_quarantined(world: World) -> None:
    """An article delivered once and then quarantined holds new orders until it is delivered again."""
    await world.add(article_cmd(ACME, "A1"))
    await world.run()
    world.fake.faults.add(Fault("status", status=400), method="PUT", path="/articles")
    await world.add(article_cmd(ACME, "A1", "bad"))
    order = await world.add(order_cmd(ACME, "inv-1", "O1", [("A1", 1)]))
    summary = await world.run()
    assert (summary.failed, summary.waiting) == (1, 1)
    assert "article:A1" in summary.tenants["acme"].waits["order:inv-1"]
    await world.log.append([NewEvent("acme", "article:A1", EntityRedriven("fixed in Ongoing", "ops"), "redrive")])
    summary = await world.run()
    assert (summary.delivered, summary.waiting) == (2, 0)
    assert isinstance(await world.last(order), CommandSucceeded)


@pytest.mark.parametrize("status", [pytest.param(401, id="401"), pytest.param(403, id="403")])
async def test_rule4_refused_stock_write_stops_the_tenant_and_the_next_run_delivers(
    tmp_path: Path, status: int
) -> None:
    """PowerOffice refusing a stock patch (401 after a token renewal, or 403) stops that tenant's stock stage for
    the run with nothing recorded or quarantined; once it is accepted again the next run writes every value."""
    fake = FakePowerOffice(application_key="app", subscription_keys=["sub"], requests_per_second=200)
    fake.add_company("ck-acme", Company(name="acme"))
    ids = [fake.add_product("ck-acme", code=f"P{i}", name=f"P{i}")["Id"] for i in range(5)]
    acme = tenant("acme", ACME, "ck-acme")
    log = await SqliteEventLog.open(tmp_path / "log.db")
    try:
        async with serve_poweroffice(fake) as origin, aiohttp.ClientSession() as http:
            settings = PowerOfficeSettings(
                api_url=f"{origin}/v2",
                token_url=f"{origin}/OAuth/Token",
                application_key=Secret("app"),
                subscription_key=Secret("sub"),
                requests_per_second=200,
            )
            client = PowerOfficeClient(http, settings, RateLimiter(200), policy=RetryPolicy(attempts=3))
            for pid in ids:
                event = StockPatchRequested(pid, f"P{pid}", 3.0)
                await log.append([NewEvent("acme", f"stockback:{pid}", event, f"acme/{pid}")])
            first = await log.max_position() - len(ids) + 1
            fake.faults.add(Fault("status", status=status, body=b"{}"), method="PATCH", times=None)
            summary = await Sender(log, [acme], poweroffice=client, stock_in_flight=1).run_once()
            counts = summary.tenants["acme"]
            assert counts.refused is not None
            assert "sender.poweroffice" in counts.refused
            assert (counts.delivered, counts.failed, counts.quarantined) == (0, 0, 0)
            assert [s async for s in log.read(types=OUTCOME_TYPES)] == []
            assert await log.checkpoint("sender.poweroffice", "acme") < first
            patches = [r for r in fake.requests if r.method == "PATCH"]
            assert len(patches) == (2 if status == 401 else 1)  # one product tried, then the lane stopped

            fake.faults.clear()
            summary = await Sender(log, [acme], poweroffice=client).run_once()
            assert (summary.delivered, summary.tenants["acme"].refused) == (5, None)
            assert all(fake.company("ck-acme").products[pid]["StockOnHand"] == 3.0 for pid in ids)
    finally:
        await log.close()


# ---------------------------------------------------------------------------------------------------------------
# Issue 9: a goods owner that is down is noticed


async def test_a_goods_owner_that_is_down_is_noticed_paused_and_probed(world: World) -> None:
    """After 3 transient failures in a row the lane stops sending (the rest wait, no outcome), reports degraded,
    probes with one command once the cool-down is over, doubles the cool-down (capped) while the probe fails, and
    delivers everything once a probe succeeds. Virtual time: the breakers' clock is a variable."""
    now = [0.0]
    breakers = Breakers(threshold=3, cooldown=10.0, max_cooldown=30.0, clock=lambda: now[0])
    world.tenants = [tenant("acme", ACME), tenant("beta", BETA)]
    world.fake.faults.add(Fault("status", status=503), method="PUT", path="/articles", times=None)
    for i in range(20):
        await world.add(article_cmd(ACME, f"A{i}"))
    await world.add(article_cmd(BETA, "B1"), "beta")

    def puts() -> int:
        return len(world.fake.writes(ACME))

    summary = await world.run(breakers=breakers)
    acme = summary.tenants["acme"]
    assert (acme.delivered, acme.failed, acme.waiting) == (0, 3, 17)  # held by the open breaker: they wait
    assert acme.degraded is not None
    assert "3 transient failures in a row" in acme.degraded
    assert "17 commands wait" in acme.degraded
    assert puts() == 3 * 3  # three commands, three attempts each (the fixture's policy)
    assert summary.tenants["beta"].degraded is None  # beta's writes fail too, but only one in a row
    assert len(await world.unanswered()) == 17  # beta's B1 failed transiently: it has an outcome

    world.fake.requests.clear()
    for at, sent, degraded in [(9.9, 0, True), (10.0, 3, True), (29.9, 0, True), (30.0, 3, True)]:
        now[0] = at
        summary = await world.run(breakers=breakers)
        assert (puts(), summary.tenants["acme"].degraded is not None) == (sent, degraded), at
        assert summary.tenants["acme"].failed == sent // 3
        world.fake.requests.clear()
    # The cool-down grew 10 → 20 → 40, capped at 30: the next probe is due at 60, not 70.
    world.fake.faults.clear()
    now[0] = 59.9
    assert (await world.run(breakers=breakers)).tenants["acme"].delivered == 0
    now[0] = 60.0
    summary = await world.run(breakers=breakers)
    assert (summary.tenants["acme"].delivered, summary.tenants["acme"].degraded) == (20, None)
    assert await world.unanswered() == []
    assert len(world.fake.writes(ACME)) == 20  # since the last clear: one write per article, the probe included


# ---------------------------------------------------------------------------------------------------------------
# Issue 9: one write in flight, truly


async def test_a_write_that_timed_out_is_settled_before_the_next_write_goes(world: World) -> None:
    """The server takes longer over a write than the client waits: the retry and the next write wait until the
    timed-out write has settled, so the goods owner never has two writes at the server at once."""
    world.fake.slow_turns.add(Fault("latency", seconds=0.8), method="PUT", path="/articles", times=1)
    for i in range(3):
        await world.add(article_cmd(ACME, f"A{i}"))
    summary = await world.run(ongoing_settle=1.0)
    assert (summary.delivered, summary.failed) == (3, 0)
    assert world.fake.peak_in_flight(ACME) == 1
    writes = sorted(world.fake.writes(ACME), key=lambda r: r.at)
    assert len(writes) == 4  # the timed-out write (applied), its retry, and the two others
    assert all(a.ended <= b.at for a, b in itertools.pairwise(writes)), "two writes overlapped at the server"
