"""The service's process model: it stays up through failed cycles, tenants run independent loops, and a cycle's
deadline leaves the rest for the next cycle without losing it. Real fakes and SQLite; the log is wrapped to inject
store faults."""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client import generate_latest
from rich.console import Console

from pipeline.commands import run_forever, sync
from pipeline.errors import ConfigError, StoreError
from pipeline.eventlog.base import AppendResult, NewEvent, StoredEvent
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import CommandSucceeded
from pipeline.fakes.world import World, fake_world
from pipeline.runtime import Runtime, TenantState
from pipeline.web import Status
from tests.test_e2e import expected_articles

NOW = datetime.now(UTC)


def fixed_clock() -> datetime:
    return NOW


class FaultyLog:
    """A real log that fails on command, for one tenant only: `fault` is None, "append" (every append), "read"
    (every read) or "outcome" (appending a delivery's success: raised inside the sender's task group)."""

    def __init__(self, inner: SqliteEventLog, tenant: str) -> None:
        self.inner = inner
        self.tenant = tenant
        self.fault: str | None = None
        self.raised: list[str] = []

    def _fail(self, what: str) -> None:
        self.raised.append(what)
        raise StoreError(f"{what} on {self.inner.path} failed: database or disk is full")

    async def append(
        self,
        events: Sequence[NewEvent],
        *,
        cursors: Any = None,
        checkpoints: Any = None,
    ) -> AppendResult:
        mine = any(e.tenant == self.tenant for e in events) or any(
            t == self.tenant for _, t in [*(cursors or {}), *(checkpoints or {})]
        )
        if mine and self.fault == "append":
            self._fail("append")
        if mine and self.fault == "outcome" and any(isinstance(e.event, CommandSucceeded) for e in events):
            self._fail("outcome")
        return await self.inner.append(events, cursors=cursors, checkpoints=checkpoints)

    def read(self, **query: Any) -> AsyncIterator[StoredEvent]:
        if self.fault in ("read", "config") and query.get("tenant") == self.tenant:
            return self._broken()
        return self.inner.read(**query)

    async def _broken(self) -> AsyncIterator[StoredEvent]:
        if self.fault == "config":
            raise ConfigError(["tenants[0]: made unusable by the test"])
        self._fail("read")
        yield  # pragma: no cover: makes this an async generator

    async def latest(self, types: Collection[str], **query: Any) -> dict[tuple[str, str], StoredEvent]:
        return await self.inner.latest(types, **query)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with fake_world(2, products=10, customers=4, invoices=8, now=NOW, requests_per_second=1000) as w:
        yield w


def articles(world: World, index: int) -> set[str]:
    return set(world.ongoing.owner(world.tenants[index].goods_owner_id).articles)


def written_once(world: World, repeated: int = 0) -> None:
    """Every article was written once, but `repeated` of them twice (a change after the first write, or a write
    whose outcome could not be recorded), one write at a time per goods owner."""
    seen: dict[tuple[int, str], int] = {}
    for t in world.tenants:
        for request in world.ongoing.writes(t.goods_owner_id):
            if request.entity and request.entity.startswith("article:") and request.status == 200:
                key = (t.goods_owner_id, request.entity)
                seen[key] = seen.get(key, 0) + 1
        assert world.ongoing.peak_in_flight(t.goods_owner_id) <= 1
    again = {e: n for e, n in seen.items() if n != 1}
    assert len(again) == repeated, again
    assert all(n == 2 for n in again.values()), again


@pytest.mark.anyio
async def test_run_survives_store_faults_on_append_read_and_in_a_sender_task_group(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log fails on append, then on read, then while the sender records an outcome: each cycle is logged with
    its cause, counted, shown in /readyz; run stays up, and recovers when the fault goes away. The other tenant is
    never held back."""
    settings = dataclasses.replace(world.settings(tmp_path / "p.db", requests_per_second=1000), status_port=0)
    hit, other = settings.tenants
    faulty: list[FaultyLog] = []

    def wrap(log: SqliteEventLog) -> FaultyLog:
        faulty.append(FaultyLog(log, hit.name))
        faulty[0].fault = "append"
        return faulty[0]

    status = Status(settings.interval_seconds, fixed_clock, tenants=[t.name for t in settings.tenants])
    seen: list[tuple[str, str, str | None, bool]] = []
    plan = ["read", "outcome", None, None]

    def cycled(state: TenantState) -> None:
        if state.name != hit.name:
            return
        ready, reason = status.readyz()
        seen.append((state.result, faulty[0].fault or "-", state.last_error, ready))
        if state.result == "failed":
            assert hit.name in reason, reason
            assert "StoreError" in reason, reason
        faulty[0].fault = plan.pop(0) if plan else None

    caplog.set_level(logging.ERROR, logger="pipeline.runtime")
    code = await run_forever(
        Console(file=io.StringIO()),
        settings,
        cycled=cycled,
        cycles=5,
        interval=0,
        clock=fixed_clock,
        wrap_log=wrap,
        status=status,
    )
    assert code == 0
    assert faulty[0].raised[0] == "append"
    assert {"append", "read", "outcome"} <= set(faulty[0].raised)
    assert [(result, fault) for result, fault, _, _ in seen] == [
        ("failed", "append"),
        ("failed", "read"),
        ("failed", "outcome"),
        ("ok", "-"),
        ("ok", "-"),
    ]
    for _, _, error, ready in seen[:3]:
        assert error is not None
        assert "StoreError" in error
        assert "disk is full" in error
        assert not ready
    assert seen[3][2] is None
    assert seen[4][3]
    # The fault while recording an outcome came out of the sender as the StoreError itself (the lane raises it,
    # not its task group), and was survived.
    recording = [
        r
        for r in caplog.records
        if r.name == "pipeline.runtime" and r.getMessage().startswith(f"{hit.name}: cycle failed: StoreError: outcome")
    ]
    assert len(recording) == 1, [r.getMessage() for r in caplog.records]
    assert recording[0].exc_info is not None
    assert isinstance(recording[0].exc_info[1], StoreError)

    state = status.states[hit.name]
    assert (state.cycles, state.failed_cycles, state.result) == (5, 3, "ok")
    assert status.states[other.name].failed_cycles == 0
    assert status.readyz()[0]
    metrics = generate_latest(status.metrics.registry).decode()
    assert f'pipeline_cycles_failed_total{{tenant="{hit.name}"}} 3.0' in metrics
    assert f'pipeline_cycles_failed_total{{tenant="{other.name}"}}' not in metrics

    # Nothing was lost: both tenants hold every article, each written once.
    for i, tenant in enumerate(settings.tenants):
        assert articles(world, i) == set(expected_articles(world.tenants[i], tenant))
    written_once(world, repeated=1)  # the write whose success could not be recorded went once more


@pytest.mark.anyio
async def test_only_a_configuration_error_ends_run(world: World, tmp_path: Path) -> None:
    """A ConfigError out of a cycle (even from inside task groups) ends `run` as itself, so the CLI says it and
    exits 2; the other tenant's loop is stopped with it."""
    settings = dataclasses.replace(world.settings(tmp_path / "p.db", requests_per_second=1000), status_port=0)

    def wrap(log: SqliteEventLog) -> FaultyLog:
        faulty = FaultyLog(log, settings.tenants[0].name)
        faulty.fault = "config"
        return faulty

    with pytest.raises(ConfigError, match="made unusable"):
        await run_forever(Console(file=io.StringIO()), settings, interval=0, clock=fixed_clock, wrap_log=wrap)


@pytest.mark.anyio
async def test_sync_reports_a_failed_cycle_in_one_line_with_exit_3(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store failure in sync is one line on stderr naming the tenant and the cause, exit 3 (not 1), no
    traceback; the other tenant's cycle still completes."""
    settings = world.settings(tmp_path / "p.db", requests_per_second=1000)
    hit = settings.tenants[0]

    def wrap(log: SqliteEventLog) -> FaultyLog:
        faulty = FaultyLog(log, hit.name)
        faulty.fault = "outcome"
        return faulty

    code = await sync(Console(file=io.StringIO()), settings, wrap_log=wrap)
    assert code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: the cycle failed for {hit.name}: StoreError: ")
    assert "Traceback" not in err[0]
    assert articles(world, 1)
    # Without the fault, the next sync delivers what was left, and nothing twice.
    assert await sync(Console(file=io.StringIO()), settings) == 0
    assert articles(world, 0) == set(expected_articles(world.tenants[0], hit))
    written_once(world, repeated=1)


async def _first_sync(world: World, tmp_path: Path) -> Any:
    settings = world.settings(tmp_path / "p.db", requests_per_second=1000)
    async with Runtime(settings, clock=fixed_clock) as runtime:
        assert (await runtime.cycle()).exit_code == 0
    return settings


@pytest.mark.anyio
async def test_tenants_are_independent_a_stuck_write_holds_back_only_its_own_tenant(
    world: World, tmp_path: Path
) -> None:
    """While one goods owner's write hangs at the warehouse, the other tenant's loop goes on: its change is
    delivered and it completes cycle after cycle; the stuck tenant resumes when the write returns."""
    settings = await _first_sync(world, tmp_path)
    slow, fast = world.tenants
    slow_code = sorted(articles(world, 0))[0]
    fast_code = sorted(articles(world, 1))[-1]
    assert slow_code != fast_code
    world.poweroffice.set_price(slow.client_key, slow_code, 1234.5)
    world.poweroffice.set_price(fast.client_key, fast_code, 999.0)
    hold = world.ongoing.hold(path="/articles$", entity=f"article:{slow_code}")
    fast_done = anyio.Event()
    states: dict[str, list[TenantState]] = {slow.name: [], fast.name: []}

    def cycled(state: TenantState) -> None:
        states[state.name].append(state)
        if state.name == fast.name and len(states[fast.name]) == 3:
            fast_done.set()

    async with Runtime(settings, clock=fixed_clock) as runtime, anyio.create_task_group() as tg:
        tg.start_soon(lambda: runtime.run(anyio.Event(), cycles=3, interval=0, on_cycle=cycled))
        with anyio.fail_after(30):
            await hold.reached.wait()
            await fast_done.wait()
        assert states[slow.name] == []  # still in its first cycle, waiting for the warehouse
        fast_writes = world.ongoing.writes(fast.goods_owner_id, f"article:{fast_code}")
        assert [w.status for w in fast_writes][-1] == 200
        assert world.ongoing.article(fast.goods_owner_id, fast_code) is not None
        hold.release.set()
    assert len(states[slow.name]) == 3
    first = states[slow.name][0].report
    assert first is not None
    assert first.delivered == 1
    assert all(s.result == "ok" for s in states[slow.name] + states[fast.name])


@pytest.mark.anyio
async def test_deadline_stops_new_deliveries_and_the_rest_follows_next_cycle(tmp_path: Path) -> None:
    """Once a cycle is past its deadline (here: the service is stopping) it starts no new write; the write in
    flight finishes and is recorded; the commands left are sent by the next cycle, each once."""
    async with fake_world(1, products=10, customers=4, invoices=8, now=NOW, requests_per_second=1000) as world:
        settings = await _first_sync(world, tmp_path)
        t = world.tenants[0]
        codes = sorted(articles(world, 0))[:4]
        for n, code in enumerate(codes):
            world.poweroffice.set_price(t.client_key, code, 100.0 + n)
        hold = world.ongoing.hold(path="/articles$")
        stop = anyio.Event()
        states: list[TenantState] = []
        async with Runtime(settings, clock=fixed_clock) as runtime, anyio.create_task_group() as tg:
            tg.start_soon(lambda: runtime.run(stop, interval=0, on_cycle=states.append))
            with anyio.fail_after(30):
                await hold.reached.wait()
            stop.set()  # past the deadline from here on: the held write must still finish and be recorded
            hold.release.set()
        assert len(states) == 1
        first = states[0].report
        assert first is not None
        assert first.deadline_reached
        assert (first.delivered, first.waiting) == (1, 3)

        async with Runtime(settings, clock=fixed_clock) as runtime:
            again = (await runtime.cycle()).tenants[t.name]
        assert (again.delivered, again.waiting, again.deadline_reached) == (3, 0, False)
        for n, code in enumerate(codes):
            writes = [w for w in world.ongoing.writes(t.goods_owner_id, f"article:{code}") if w.status == 200]
            assert len(writes) == 2, code  # the first sync, then the price change: once
            article = world.ongoing.article(t.goods_owner_id, code)
            assert article is not None
            assert article["customerPrice"] == 100.0 + n


@pytest.mark.anyio
async def test_a_time_deadline_cuts_a_long_send_and_nothing_is_lost(tmp_path: Path) -> None:
    """With a short deadline and slow warehouse writes, a cycle sends part of its work and says so; later
    cycles send the rest; every article ends up written exactly once, one write at a time."""
    async with fake_world(1, products=12, customers=4, invoices=6, now=NOW, requests_per_second=1000) as world:
        t = world.tenants[0]
        world.ongoing.write_latencies[t.goods_owner_id] = 0.05  # 12 articles: 0.6 s of writes at least
        settings = world.settings(tmp_path / "p.db", requests_per_second=1000)
        expected = set(expected_articles(t, settings.tenants[0]))
        states: list[TenantState] = []
        async with Runtime(settings, clock=fixed_clock) as runtime:
            await runtime.run(anyio.Event(), cycles=1, interval=0, deadline=0.3, on_cycle=states.append)
            first = states[0].report
            assert first is not None
            assert first.deadline_reached
            assert len(articles(world, 0)) < len(expected)
            cycles = 1
            while articles(world, 0) != expected:
                await runtime.run(anyio.Event(), cycles=1, interval=0, deadline=0.3, on_cycle=states.append)
                cycles += 1
                assert cycles < 200, "the work was never finished"
            assert all(s.report is not None and s.report.result == "ok" for s in states)
            # Without the deadline, nothing is left: every command was sent by some cycle.
            states.clear()
            await runtime.run(anyio.Event(), cycles=1, interval=0, on_cycle=states.append)
            last = states[0].report
            assert last is not None
            assert (last.waiting, last.deadline_reached, last.result) == (0, False, "ok")
        assert cycles > 1
        written_once(world)


@pytest.mark.anyio
async def test_a_cycle_past_its_deadline_still_sends_one_write_so_it_always_progresses(tmp_path: Path) -> None:
    """Even a cycle whose deadline passed before it could send (slow polls) delivers the first command of each of
    its two send steps; the rest waits for the next cycle."""
    async with fake_world(1, products=10, customers=4, invoices=8, now=NOW, requests_per_second=1000) as world:
        settings = await _first_sync(world, tmp_path)
        t = world.tenants[0]
        for n, code in enumerate(sorted(articles(world, 0))[:3]):
            world.poweroffice.set_price(t.client_key, code, 200.0 + n)
        states: list[TenantState] = []
        async with Runtime(settings, clock=fixed_clock) as runtime:
            for _ in range(3):
                await runtime.run(anyio.Event(), cycles=1, interval=0, deadline=0, on_cycle=states.append)
        reports = [s.report for s in states]
        assert [(r.delivered, r.waiting, r.deadline_reached) for r in reports if r] == [
            (2, 1, True),
            (1, 0, True),
            (0, 0, True),
        ]
        written_once(world, repeated=3)  # the three changed articles: the first sync, then their change


def test_a_tenant_interval_defaults_to_the_global_one_and_is_checked() -> None:
    """`tenants[].interval_seconds` is optional (None: the global interval) and at least 1 s."""
    from pipeline.config import parse_settings

    def raw(**tenant: Any) -> dict[str, Any]:
        return {
            "database": "p.db",
            "interval_seconds": 600,
            "poweroffice": {"application_key": "a", "subscription_key": "s"},
            "ongoing": {"api_url": "https://x/api/v1", "username": "u", "password": "p"},
            "tenants": [{"name": "t", "poweroffice_client_key": "k", "ongoing_goods_owner_id": 1, **tenant}],
        }

    plain = parse_settings(raw(), base=Path("/tmp"), env={})
    assert plain.tenants[0].interval_seconds is None
    own = parse_settings(raw(interval_seconds=60), base=Path("/tmp"), env={})
    assert own.tenants[0].interval_seconds == 60.0
    with pytest.raises(ConfigError, match=r"tenants\[0\]\.interval_seconds: must be at least 1"):
        parse_settings(raw(interval_seconds=0), base=Path("/tmp"), env={})


@pytest.mark.anyio
async def test_each_tenant_is_scheduled_on_its_own_interval(world: World, tmp_path: Path) -> None:
    """A tenant with its own interval is next due after that interval; the others after the global one."""
    settings = world.settings(tmp_path / "p.db", requests_per_second=1000)
    quick, plain = settings.tenants
    settings = dataclasses.replace(
        settings, interval_seconds=900, tenants=(dataclasses.replace(quick, interval_seconds=60), plain)
    )
    stop = anyio.Event()
    states: dict[str, TenantState] = {}

    def cycled(state: TenantState) -> None:
        states[state.name] = state
        if len(states) == 2:
            stop.set()

    async with Runtime(settings, clock=fixed_clock) as runtime:
        assert (runtime.interval_of(settings.tenants[0]), runtime.interval_of(plain)) == (60, 900)
        with anyio.fail_after(30):
            await runtime.run(stop, on_cycle=cycled)
    for name, interval in ((quick.name, 60), (plain.name, 900)):
        state = states[name]
        assert state.next_cycle is not None
        assert state.last_ended == NOW
        due = (state.next_cycle - NOW).total_seconds()
        assert interval - 20 < due <= interval, (name, due)
