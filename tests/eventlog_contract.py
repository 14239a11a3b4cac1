"""The contract every `EventLog` implementation passes. Subclass `EventLogContract` and provide `open_log`."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.eventlog.base import FLAG_GROUPS, EventLog, NewEvent
from pipeline.events import (
    CommandFailed,
    CommandSkipped,
    CommandSucceeded,
    EntityRedriven,
    Event,
    MappingFailed,
    ObservationRejected,
    OrderUpsertRequested,
    ProductObserved,
    StockObserved,
)


class StepClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def product(tenant: str, pid: int, price: float, key: str | None = None) -> NewEvent:
    return NewEvent(
        tenant=tenant,
        entity=f"product:{pid}",
        event=ProductObserved(product={"Id": pid, "Code": f"P{pid}", "UnitPrice": price}),
        dedupe_key=key or f"{tenant}/product:{pid}@{price}",
    )


def flagging_history(rng: random.Random, n: int, start: int) -> list[NewEvent]:
    """Random observations, outcomes, re-drives, mapping failures and rejections over a few tenants and entities,
    several for one entity in one append now and then, duplicates among them."""
    out = []
    for i in range(start, start + n):
        tenant = f"t{rng.randrange(2)}"
        entity = f"x:{rng.randrange(8)}"
        event: Event = rng.choice(
            [
                ProductObserved({"Id": i}),
                StockObserved("A", i, {"numberOfItems": i}),
                CommandSucceeded(i, {}, 1),
                CommandFailed(i, 400, "no", 1, True),
                CommandFailed(i, 503, "later", 3, False),
                CommandSkipped(i, "superseded"),
                EntityRedriven("fixed", "op"),
                MappingFailed(i, "Code", "conflict"),
                ObservationRejected("products", "Id", "no Id"),
            ]
        )
        out.append(NewEvent(tenant, entity, event, f"{tenant}/{entity}/{rng.randrange(3 * n)}"))
    return out


class EventLogContract:
    """Behaviour every event log must show."""

    async def open_log(self, path: Path, clock: StepClock) -> EventLog:
        raise NotImplementedError

    @pytest.fixture
    def clock(self) -> StepClock:
        return StepClock()

    @pytest.fixture
    async def log(self, tmp_path: Path, clock: StepClock) -> AsyncIterator[EventLog]:
        log = await self.open_log(tmp_path / "events.db", clock)
        try:
            yield log
        finally:
            await log.close()

    @pytest.mark.anyio
    async def test_empty_log(self, log: EventLog) -> None:
        """A new log has position 0, no cursors, no checkpoints, nothing to read."""
        assert await log.max_position() == 0
        assert await log.cursor("p", "t") is None
        assert await log.checkpoint("s", "t") == 0
        assert [e async for e in log.read()] == []
        assert await log.get(1) is None

    @pytest.mark.anyio
    async def test_append_and_read_back(self, log: EventLog, clock: StepClock) -> None:
        """Appended events come back decoded, in order, with their envelope."""
        result = await log.append([product("a", 1, 10.0), product("a", 2, 20.0)])
        assert (result.appended, result.skipped) == (2, 0)
        events = [e async for e in log.read()]
        assert [e.position for e in events] == [1, 2]
        assert events[0].event == ProductObserved(product={"Id": 1, "Code": "P1", "UnitPrice": 10.0})
        assert events[0].recorded_at == clock.now
        assert (events[1].tenant, events[1].entity, events[1].type) == ("a", "product:2", "product.observed")
        assert await log.max_position() == 2
        got = await log.get(2)
        assert got is not None
        assert got.dedupe_key == "a/product:2@20.0"

    @pytest.mark.anyio
    async def test_duplicate_dedupe_keys_are_skipped(self, log: EventLog) -> None:
        """Re-appending a known dedupe key is counted as skipped and stores nothing new."""
        await log.append([product("a", 1, 10.0)])
        result = await log.append([product("a", 1, 10.0), product("a", 3, 30.0)])
        assert (result.appended, result.skipped) == (1, 1)
        assert [e.entity async for e in log.read()] == ["product:1", "product:3"]

    @pytest.mark.anyio
    async def test_cursor_and_checkpoint_move_with_events(self, log: EventLog) -> None:
        """Cursors and checkpoints are written by the same append, and can move without events."""
        await log.append([product("a", 1, 1.0)], cursors={("products", "a"): "2026-11-01T00:00:00Z"})
        assert await log.cursor("products", "a") == "2026-11-01T00:00:00Z"
        assert await log.cursor("products", "b") is None
        await log.append([], checkpoints={("projector", "a"): 1})
        assert await log.checkpoint("projector", "a") == 1
        await log.append([], cursors={("products", "a"): "2026-11-02T00:00:00Z"})
        assert await log.cursor("products", "a") == "2026-11-02T00:00:00Z"

    @pytest.mark.anyio
    async def test_read_filters(self, log: EventLog, clock: StepClock) -> None:
        """read() filters by position range, tenant, entity, type and time window."""
        await log.append([product("a", 1, 1.0), product("b", 1, 1.0)])
        clock.advance(60)
        t1 = clock.now
        await log.append(
            [
                product("a", 1, 2.0),
                NewEvent("a", "stock:X", StockObserved("X", 7, {"numberOfItems": 3}), "a/stock:X/1"),
            ]
        )
        clock.advance(60)
        await log.append([product("a", 2, 5.0)])

        async def positions(**kw: object) -> list[int]:
            return [e.position async for e in log.read(**kw)]  # type: ignore[arg-type]

        assert await positions(after=2) == [3, 4, 5]
        assert await positions(after=1, upto=3) == [2, 3]
        assert await positions(tenant="b") == [2]
        assert await positions(tenant="a", entity="product:1") == [1, 3]
        assert await positions(types=["stock.observed"]) == [4]
        assert await positions(types=[]) == []
        assert await positions(since=t1, until=t1 + timedelta(seconds=1)) == [3, 4]
        assert await positions(since=t1, batch_size=1) == [3, 4, 5]

    @pytest.mark.anyio
    async def test_read_streams_in_batches(self, log: EventLog) -> None:
        """A read longer than one batch returns every event exactly once, in order."""
        await log.append([product("a", i, 1.0) for i in range(1, 26)])
        assert [e.position async for e in log.read(batch_size=7)] == list(range(1, 26))

    @pytest.mark.anyio
    async def test_latest_per_entity(self, log: EventLog) -> None:
        """latest() gives the newest event of the asked types for each (tenant, entity)."""
        await log.append([product("a", 1, 1.0), product("a", 2, 1.0), product("b", 1, 9.0)])
        await log.append([product("a", 1, 2.0)])
        await log.append([NewEvent("a", "product:1", CommandSucceeded(1, {}, 1), "a/ok/1")])
        latest = await log.latest(["product.observed"], tenant="a")
        assert sorted(latest) == [("a", "product:1"), ("a", "product:2")]
        assert latest[("a", "product:1")].position == 4
        assert (await log.latest(["product.observed"]))[("b", "product:1")].position == 3
        only = await log.latest(["product.observed", "command.succeeded"], tenant="a", entity="product:1")
        assert [e.type for e in only.values()] == ["command.succeeded"]
        assert await log.latest([]) == {}

    @pytest.mark.anyio
    async def test_causation_and_mapping_version_kept(self, log: EventLog) -> None:
        """The envelope's causation and mapping version survive the round trip."""
        await log.append([product("a", 1, 1.0)])
        await log.append([NewEvent("a", "x", CommandSucceeded(1, {"id": 5}, 2), "k", causation=1, mapping_version=3)])
        got = await log.get(2)
        assert got is not None
        assert (got.causation, got.mapping_version) == (1, 3)
        assert got.event == CommandSucceeded(1, {"id": 5}, 2)

    @pytest.mark.anyio
    async def test_caused_by(self, log: EventLog) -> None:
        """caused_by() finds the events whose causation is one of the given positions."""
        await log.append([product("a", 1, 1.0), product("a", 2, 1.0)])
        await log.append(
            [
                NewEvent("a", "x", CommandSucceeded(1, {}, 1), "k1", causation=1),
                NewEvent("a", "y", CommandSucceeded(2, {}, 1), "k2", causation=2),
                NewEvent("a", "z", CommandSucceeded(1, {}, 1), "k3", causation=1),
            ]
        )
        assert [e.position for e in await log.caused_by([1])] == [3, 5]
        assert [e.position for e in await log.caused_by([2, 1, 99])] == [3, 4, 5]
        assert await log.caused_by([]) == []

    @pytest.mark.anyio
    async def test_latest_for_some_entities(self, log: EventLog) -> None:
        """latest(entities=…) answers only for those entities; entities() names those with an event of the types."""
        await log.append([product("a", i, 1.0) for i in range(1, 6)] + [product("b", 1, 1.0)])
        await log.append([product("a", 2, 2.0), NewEvent("a", "product:3", CommandSucceeded(3, {}, 1), "a/ok/3")])
        got = await log.latest(["product.observed"], tenant="a", entities=["product:2", "product:3", "product:9"])
        assert {k: e.position for k, e in got.items()} == {("a", "product:2"): 7, ("a", "product:3"): 3}
        both = await log.latest(["product.observed", "command.succeeded"], tenant="a", entities=["product:3"])
        assert [e.type for e in both.values()] == ["command.succeeded"]
        assert await log.latest(["product.observed"], tenant="a", entities=[]) == {}
        many = await log.latest(["product.observed"], tenant="a", entities=[f"product:{i}" for i in range(2000)])
        assert len(many) == 5
        assert await log.entities(["command.succeeded"], tenant="a") == {"product:3"}
        assert await log.entities(["product.observed"], tenant="b") == {"product:1"}
        assert await log.entities([], tenant="a") == set()
        # newest_of: only entities whose newest event of those types is of `types`
        await log.append([product("a", 4, 7.0)])
        await log.append([NewEvent("a", "product:4", CommandSucceeded(4, {}, 1), "a/ok/4")])
        await log.append([product("a", 3, 7.0)])
        newest_ok = await log.entities(
            ["command.succeeded"], tenant="a", newest_of=["product.observed", "command.succeeded"]
        )
        assert newest_ok == {"product:4"}

    @pytest.mark.anyio
    async def test_flagged_entities_are_those_whose_newest_event_of_the_group_is_a_flag(self, log: EventLog) -> None:
        """entities(types, newest_of=<a flag group>) (served by the flags table) names exactly the entities whose
        newest event of the group is of `types`, as read from the events, after every append."""
        rng = random.Random(4)
        for batch in range(12):
            await log.append(flagging_history(rng, 25, batch * 25))
            newest: dict[tuple[str, str, str], str] = {}
            async for stored in log.read():
                for group in FLAG_GROUPS:
                    if stored.type in group.members:
                        newest[(stored.tenant, group.name, stored.entity)] = stored.type
            for group, tenant in itertools.product(FLAG_GROUPS, ("t0", "t1")):
                for n in range(1, len(group.flags) + 1):
                    for types in itertools.combinations(sorted(group.flags), n):
                        expected = {e for (t, g, e), type_ in newest.items() if (t, g) == (tenant, group.name)}
                        expected = {e for e in expected if newest[(tenant, group.name, e)] in types}
                        got = await log.entities(types, tenant=tenant, newest_of=sorted(group.members))
                        assert got == expected, (batch, group.name, tenant, types)

    @pytest.mark.anyio
    async def test_order_commands_numbered_are_the_heads_holding_those_numbers(self, log: EventLog) -> None:
        """order_commands_numbered names, per order entity, its newest order command, when that carries one of the
        numbers: an order renumbered since no longer holds its old number; other tenants' orders are not asked."""

        def order(tenant: str, invoice: str, number: str, key: str) -> NewEvent:
            body = {"orderNumber": number, "orderLines": []}
            return NewEvent(tenant, f"order:{invoice}", OrderUpsertRequested(body, invoice, []), key)

        await log.append(
            [
                order("a", "i1", "100", "k1"),
                order("a", "i2", "100", "k2"),
                order("a", "i3", "200", "k3"),
                order("b", "i9", "100", "k4"),
                NewEvent("a", "order:i4", CommandSucceeded(1, {}, 1), "k5"),
            ]
        )
        await log.append([order("a", "i2", "100-7", "k6"), order("a", "i3", "200", "k7")])
        got = await log.order_commands_numbered("a", ["100", "200", "300"])
        assert [(e.entity, e.position) for e in got] == [("order:i1", 1), ("order:i3", 7)]
        assert [e.entity for e in await log.order_commands_numbered("a", ["100-7"])] == ["order:i2"]
        assert [e.tenant for e in await log.order_commands_numbered("b", ["100"])] == ["b"]
        assert await log.order_commands_numbered("a", []) == []
