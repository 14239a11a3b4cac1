"""Recording outcomes off the lane's critical path (`pipeline/senders/recorder.py`): batching across lanes, order,
checkpoints over recorded outcomes only, the bound on what waits, dependencies in the log before an order goes, and
a failed append. Crashes with outcomes still waiting are in `tests/test_sender_crash.py`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from anyio import wait_all_tasks_blocked

from pipeline.clients.http import Attempts, RetryPolicy, retrying
from pipeline.clients.ongoing import OngoingClient, TenantOngoing
from pipeline.config import OngoingSettings, Secret, TenantSettings
from pipeline.errors import StoreError, TransientApiError
from pipeline.eventlog.base import AppendResult, NewEvent
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import (
    COMMAND_TYPES,
    OUTCOME_TYPES,
    ArticleUpsertRequested,
    CommandFailed,
    CommandSkipped,
    CommandSucceeded,
    Event,
    OrderUpsertRequested,
)
from pipeline.fakes.ongoing import FakeOngoing, serve_ongoing
from pipeline.senders import Sender
from pipeline.senders.recorder import Recorder, Watermark
from tests.ongoing_schema import article_body, fake_validator, order_body

pytestmark = pytest.mark.anyio

STAGE = "sender.ongoing"
ACME, BETA = 159, 160


class WatchedLog(SqliteEventLog):
    """A real log that notes each outcome it committed, and can hold (`hold_outcomes`) or refuse (`refuse`)
    appends of outcomes: a slow or a failing disk, as the recorder meets it."""

    committed: list[NewEvent]
    hold_outcomes: anyio.Event | None
    settle_first: bool
    refuse: set[str]
    appends: int

    def watch(self) -> WatchedLog:
        self.committed, self.hold_outcomes, self.settle_first, self.refuse, self.appends = [], None, False, set(), 0
        return self

    async def append(self, events: Sequence[NewEvent], **moves: Any) -> AppendResult:
        outcomes = [e for e in events if e.event.TYPE in OUTCOME_TYPES]
        if outcomes:
            if self.hold_outcomes is not None:
                await self.hold_outcomes.wait()
            if self.settle_first:
                await wait_all_tasks_blocked()  # the lanes go as far as they may before this append lands
            if any(e.tenant in self.refuse for e in outcomes):
                raise StoreError("append refused: disk full")
        result = await super().append(events, **moves)
        self.appends += 1
        self.committed.extend(outcomes)
        return result

    def successes(self, tenant: str) -> list[str]:
        return [e.entity for e in self.committed if e.tenant == tenant and isinstance(e.event, CommandSucceeded)]


@dataclass
class Began:
    tenant: str
    call: str  # "put_article A1", "find_order O1", ...
    started: int  # writes of the tenant begun so far, this one included
    recorded: list[str]  # entities whose success the log held when it began


@dataclass
class Watched:
    """Ongoing through the real client, noting when each call began what the log held."""

    client: OngoingClient
    log: WatchedLog
    calls: list[Began] = field(default_factory=list)

    def for_tenant(self, tenant: TenantSettings) -> WatchedTenant:
        return WatchedTenant(self, self.client.for_tenant(tenant), tenant.name)

    def began(self, tenant: str, call: str, write: bool) -> None:
        started = sum(1 for c in self.calls if c.tenant == tenant and c.call.startswith("put_")) + write
        self.calls.append(Began(tenant, call, started, self.log.successes(tenant)))


@dataclass
class WatchedTenant:
    watched: Watched
    inner: TenantOngoing
    tenant: str

    async def put_article(self, body: dict[str, Any], *, attempts: Attempts | None = None) -> dict[str, Any]:
        self.watched.began(self.tenant, f"put_article {body['articleNumber']}", True)
        return await self.inner.put_article(body, attempts=attempts)

    async def put_order(self, body: dict[str, Any], *, attempts: Attempts | None = None) -> dict[str, Any]:
        self.watched.began(self.tenant, f"put_order {body['orderNumber']}", True)
        return await self.inner.put_order(body, attempts=attempts)

    async def find_order(self, order_number: str) -> dict[str, Any] | None:
        self.watched.began(self.tenant, f"find_order {order_number}", False)
        return await self.inner.find_order(order_number)


@dataclass
class World:
    log: WatchedLog
    fake: FakeOngoing
    ongoing: Watched
    tenants: list[TenantSettings]

    async def run(self) -> Any:
        return await Sender(self.log, self.tenants, ongoing=self.ongoing).run_once()

    async def add(self, tenant: str, event: Event) -> int:
        if isinstance(event, ArticleUpsertRequested):
            entity = f"article:{event.body['articleNumber']}"
        else:
            assert isinstance(event, OrderUpsertRequested)
            entity = f"order:{event.invoice_id}"
        await self.log.append([NewEvent(tenant, entity, event, uuid.uuid4().hex)])
        return await self.log.max_position()

    async def successes(self) -> dict[int, int]:
        """command position -> how many successes the log holds for it."""
        counts = {s.position: 0 async for s in self.log.read(types=COMMAND_TYPES)}
        async for stored in self.log.read(types=OUTCOME_TYPES):
            if isinstance(stored.event, CommandSucceeded):
                counts[stored.event.command] += 1
        return counts


def tenant(name: str, owner: int) -> TenantSettings:
    return TenantSettings(name=name, poweroffice_client_key=Secret("ck"), ongoing_goods_owner_id=owner)


def article(owner: int, number: str) -> ArticleUpsertRequested:
    return ArticleUpsertRequested(dict(article_body(owner, number)))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    fake = FakeOngoing(username="wms", password="pw", validator=fake_validator)
    log = (await WatchedLog.open(tmp_path / "log.db")).watch()
    try:
        async with serve_ongoing(fake) as url, aiohttp.ClientSession() as http:
            settings = OngoingSettings(api_url=url, username="wms", password=Secret("pw"), timeout_seconds=5)
            client = OngoingClient(http, settings, policy=RetryPolicy(attempts=3))
            yield World(log, fake, Watched(client, log), [tenant("acme", ACME), tenant("beta", BETA)])
    finally:
        await log.close()
    assert fake.schema_violations == []


# ---------------------------------------------------------------------------------------------------------------
# The lane does not wait for the log


async def test_a_lane_writes_on_while_its_last_outcome_is_appended_and_never_further(world: World) -> None:
    """The first outcome's append is held until the lane has begun its second write: the lane does not wait for
    the log. It never begins a write while more than one of its outcomes waits (in flight 1: two answers at most
    are lost to a crash). Every command ends with one success, and the checkpoint reaches the head."""
    world.tenants = world.tenants[:1]
    commands = [await world.add("acme", article(ACME, f"A{i}")) for i in range(6)]
    held = world.log.hold_outcomes = anyio.Event()
    real = world.ongoing.began

    def began(tenant: str, call: str, write: bool) -> None:
        real(tenant, call, write)
        if world.ongoing.calls[-1].started == 2:
            held.set()

    world.ongoing.began = began  # type: ignore[method-assign]
    summary = await world.run()

    assert summary.delivered == 6
    writes = [c for c in world.ongoing.calls if c.call.startswith("put_")]
    assert [c.call for c in writes] == [f"put_article A{i}" for i in range(6)]
    assert writes[1].recorded == []  # the second write began before the first outcome was in the log
    assert max(c.started - len(c.recorded) for c in writes) == 2  # begun minus recorded, this write included
    assert await world.successes() == dict.fromkeys(commands, 1)
    assert await world.log.checkpoint(STAGE, "acme") == commands[-1]
    # The log holds the outcomes in the order of the writes.
    assert world.log.successes("acme") == [f"article:A{i}" for i in range(6)]


async def test_an_order_begins_only_once_its_articles_deliveries_are_in_the_log(world: World) -> None:
    """The lane runs ahead of the log, but not past what an order depends on: when the order's look-up begins, its
    articles' successes are recorded, and the log holds them before the order's."""
    world.tenants = world.tenants[:1]
    world.log.settle_first = True  # each append of outcomes waits until the lane can go no further
    await world.add("acme", article(ACME, "A1"))
    await world.add("acme", article(ACME, "A2"))
    order = OrderUpsertRequested(
        dict(order_body(ACME, "O1", [("A1", 1), ("A2", 2)], invoice_id="inv-1")),
        invoice_id="inv-1",
        article_numbers=["A1", "A2"],
    )
    await world.add("acme", order)
    summary = await world.run()

    assert summary.delivered == 3
    calls = {c.call: c for c in world.ongoing.calls}
    assert calls["put_article A2"].recorded in ([], ["article:A1"])  # the lane ran ahead of the articles...
    assert set(calls["find_order O1"].recorded) == {"article:A1", "article:A2"}  # ...not ahead of the order
    assert world.log.successes("acme") == ["article:A1", "article:A2", "order:inv-1"]
    assert world.fake.creations(ACME, "O1") == 1


# ---------------------------------------------------------------------------------------------------------------
# A failed append


async def test_a_failed_append_stops_only_its_lane_and_the_next_run_delivers_the_rest(world: World) -> None:
    """The log refuses acme's outcomes: acme's lane begins at most two writes, records nothing, leaves its
    checkpoint, and the run raises StoreError; beta's lane, batched with it, is recorded whole. Once the log takes
    outcomes again, the next run delivers acme's commands, each with exactly one success."""
    acme = [await world.add("acme", article(ACME, f"A{i}")) for i in range(4)]
    beta = [await world.add("beta", article(BETA, f"B{i}")) for i in range(3)]
    world.log.refuse = {"acme"}

    with pytest.raises(StoreError, match="disk full"):
        await world.run()

    acme_writes = [c for c in world.ongoing.calls if c.tenant == "acme"]
    assert 1 <= len(acme_writes) <= 2  # one in flight and one waiting for the recorder, no more
    counts = await world.successes()
    assert [counts[p] for p in acme] == [0, 0, 0, 0]
    assert [counts[p] for p in beta] == [1, 1, 1]
    assert await world.log.checkpoint(STAGE, "acme") < acme[0]
    assert await world.log.checkpoint(STAGE, "beta") == beta[-1]

    world.log.refuse = set()
    head = await world.log.max_position()
    summary = await world.run()
    assert (summary.delivered, summary.failed) == (4, 0)
    counts = await world.successes()
    assert [counts[p] for p in acme + beta] == [1] * 7
    assert await world.log.checkpoint(STAGE, "acme") == head
    for i in range(4):  # an article written in the failed run is written again, once
        assert len(world.fake.writes(ACME, f"article:A{i}")) == 1 + (i < len(acme_writes))


# ---------------------------------------------------------------------------------------------------------------
# The recorder on its own


def outcome(tenant: str, entity: str, event: Event) -> NewEvent:
    return NewEvent(tenant, entity, event, uuid.uuid4().hex, causation=getattr(event, "command", None))


async def commands(log: SqliteEventLog, tenant: str, n: int) -> list[int]:
    positions = []
    for i in range(n):
        await log.append([NewEvent(tenant, f"article:X{i}", article(1, f"X{i}"), uuid.uuid4().hex)])
        positions.append(await log.max_position())
    return positions


def watermark(head: int, *open_: int) -> Watermark:
    mark = Watermark(head)
    for position in open_:
        mark.open(position)
    return mark


async def test_outcomes_of_several_lanes_go_in_one_append_with_each_lane_checkpoint(tmp_path: Path) -> None:
    """What several lanes handed over meanwhile is one append, in hand-off order, each lane's checkpoint in it;
    a checkpoint stops below a command whose outcome is not terminal (a transient failure)."""
    async with await SqliteEventLog.open(tmp_path / "log.db") as log:
        a = await commands(log, "a", 2)
        b = await commands(log, "b", 2)
        head = await log.max_position()
        recorder = Recorder(log)
        ta = recorder.track((STAGE, "a"), 0, watermark(head, *a), limit=4)
        tb = recorder.track((STAGE, "b"), 0, watermark(head, *b), limit=4)
        handed = [
            (ta, outcome("a", "article:X0", CommandSucceeded(a[0], {}, 1)), a[0], True),
            (tb, outcome("b", "article:X0", CommandFailed(b[0], 503, "down", 3, False)), b[0], False),
            (ta, outcome("a", "article:X1", CommandSkipped(a[1], "identical")), a[1], True),
            (tb, outcome("b", "article:X1", CommandSucceeded(b[1], {}, 1)), b[1], True),
        ]
        for track, new, position, terminal in handed:
            track.hand(new, position, terminal=terminal)
        assert (ta.waiting, tb.waiting) == (2, 2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(recorder.run)
            await ta.flush()
            await tb.flush()
            recorder.close()

        assert recorder.batches == 1
        stored = [s async for s in log.read(types=OUTCOME_TYPES)]
        assert [(s.tenant, s.event) for s in stored] == [(new.tenant, new.event) for _, new, _, _ in handed]
        assert await log.checkpoint(STAGE, "a") == head
        assert await log.checkpoint(STAGE, "b") == b[0] - 1  # b's first command failed transiently: still open
        assert (ta.recorded, tb.recorded, ta.waiting, tb.waiting) == (2, 2, 0, 0)


async def test_a_lane_waits_for_room_and_for_its_dependencies_until_the_recorder_catches_up(tmp_path: Path) -> None:
    """With more than `limit` outcomes waiting, `room` holds the lane; `settled` holds it only for the entities it
    names; neither checkpoint nor log moves before the recorder appends."""
    async with await SqliteEventLog.open(tmp_path / "log.db") as log:
        a = await commands(log, "a", 3)
        recorder = Recorder(log)
        track = recorder.track((STAGE, "a"), 0, watermark(a[-1], *a), limit=1)
        track.hand(outcome("a", "article:X0", CommandSucceeded(a[0], {}, 1)), a[0], terminal=True)
        await track.room()  # one waits: room for the next write
        await track.settled(["article:X9"])  # nothing of X9 waits
        track.hand(outcome("a", "article:X1", CommandSucceeded(a[1], {}, 1)), a[1], terminal=True)
        assert track.waits_for(["article:X1"])
        passed: list[str] = []

        async def wait(what: str) -> None:
            await (track.room() if what == "room" else track.settled(["article:X1"]))
            passed.append(what)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, "room")
            tg.start_soon(wait, "settled")
            await wait_all_tasks_blocked()
            assert passed == []
            assert await log.checkpoint(STAGE, "a") == 0
            tg.start_soon(recorder.run)
            await track.flush()
            recorder.close()
        assert sorted(passed) == ["room", "settled"]
        assert await log.checkpoint(STAGE, "a") == a[2] - 1  # the third command is still open


async def test_a_refused_batch_is_retried_lane_by_lane_and_fails_only_the_refused_lane(tmp_path: Path) -> None:
    """The log refuses lane b's outcomes: lane a's, batched with them, are recorded; lane b's `room` and `flush`
    raise the error from then on, what it hands over later is dropped, and its checkpoint stays."""
    log = (await WatchedLog.open(tmp_path / "log.db")).watch()
    try:
        a = await commands(log, "a", 2)
        b = await commands(log, "b", 2)
        head = await log.max_position()
        log.refuse = {"b"}
        recorder = Recorder(log)
        ta = recorder.track((STAGE, "a"), 0, watermark(head, *a), limit=1)
        tb = recorder.track((STAGE, "b"), 0, watermark(head, *b), limit=1)
        tb.hand(outcome("b", "article:X0", CommandSucceeded(b[0], {}, 1)), b[0], terminal=True)
        ta.hand(outcome("a", "article:X0", CommandSucceeded(a[0], {}, 1)), a[0], terminal=True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(recorder.run)
            await ta.flush()
            with pytest.raises(StoreError, match="disk full"):
                await tb.flush()
            tb.hand(outcome("b", "article:X1", CommandSucceeded(b[1], {}, 1)), b[1], terminal=True)
            ta.hand(outcome("a", "article:X1", CommandSucceeded(a[1], {}, 1)), a[1], terminal=True)
            await ta.flush()
            with pytest.raises(StoreError):
                await tb.room()
            recorder.close()
        assert [(e.tenant, e.entity) for e in log.committed] == [("a", "article:X0"), ("a", "article:X1")]
        assert await log.checkpoint(STAGE, "a") == head
        assert await log.checkpoint(STAGE, "b") == 0
        assert tb.waiting == 0
    finally:
        await log.close()


# ---------------------------------------------------------------------------------------------------------------
# The write path


async def test_a_one_attempt_policy_makes_exactly_one_attempt_and_counts_it() -> None:
    """The sender's one-attempt writer: a call under `RetryPolicy(attempts=1)` is made once, counted once, and
    its transient error comes straight back (the stage does the retrying)."""
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise TransientApiError("ongoing", "PUT", "/articles", 503, "down")

    attempts = Attempts()
    with pytest.raises(TransientApiError):
        await retrying(RetryPolicy(attempts=1), failing, attempts)
    assert (calls, attempts.count) == (1, 1)

    async def answer() -> str:
        return "ok"

    attempts = Attempts()
    assert await retrying(RetryPolicy(attempts=1), answer, attempts) == "ok"
    assert attempts.count == 1
