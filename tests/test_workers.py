"""Workers on one PostgreSQL log (`pipeline.workers`): exclusive claims, even shares, hand-over, take-over, fencing,
and the PowerOffice key's rate split between the live workers.

The coordinator tests run real `Runtime`s in this process against the fakes, on a schema of their own, with short
leases; they wait on conditions with timeouts, never for fixed times. They need `PIPELINE_TEST_POSTGRES`."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline.config import Settings
from pipeline.fakes.world import World, fake_world
from pipeline.runtime import Runtime
from pipeline.workers import Board, Coordinator, Timing, WorkerInfo, assign
from tests import postgres_server
from tests.postgres_server import drop_schemas, eventually, schema_dsn, unavailable

DSN = os.environ.get("PIPELINE_TEST_POSTGRES", "")
PREFIX = "pipeline_wtest_"
needs_postgres = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")


# ------------------------------------------------------------------------------------------------ pure: assign


def test_assign_splits_evenly_and_moves_the_fewest_on_join_and_leave() -> None:
    tenants = [f"t{i:02d}" for i in range(20)]
    two = assign(tenants, ["a", "b"])
    assert sorted(two) == tenants
    assert sorted(list(two.values()).count(w) for w in "ab") == [10, 10]
    assert assign(list(reversed(tenants)), ["b", "a"]) == two  # the same answer whatever the order read
    # A third joins while a and b hold their halves: it takes 6, 3 or 4 from each, nothing moves between a and b.
    three = assign(tenants, ["a", "b", "c"], two)
    assert sorted(list(three.values()).count(w) for w in "abc") == [6, 7, 7]
    moved = [t for t in tenants if two[t] != three[t]]
    assert len(moved) == 6
    assert all(three[t] == "c" for t in moved)
    # b leaves: only its tenants move, spread over a and c.
    left = assign(tenants, ["a", "c"], {t: w for t, w in three.items() if w != "b"})
    assert sorted(list(left.values()).count(w) for w in "ac") == [10, 10]
    assert all(left[t] == three[t] for t in tenants if three[t] != "b")
    # Held by a worker no longer live: free for the others. Uneven holdings are evened out within one.
    assert set(assign(tenants, ["a"], {"t00": "gone"}).values()) == {"a"}
    ten = [f"t{i}" for i in range(10)]
    held = assign(ten, ["a", "b", "c"])
    four = assign(ten, ["a", "b", "c", "d"], held)
    assert sorted(list(four.values()).count(w) for w in "abcd") == [2, 2, 3, 3]
    assert sum(held[t] != four[t] for t in ten) == 2
    assert assign(tenants, []) == {}


def test_assign_moves_the_fewest_for_random_shapes() -> None:
    import random

    rng = random.Random(13)
    for _ in range(200):
        tenants = [f"t{rng.random()}" for _ in range(rng.randint(1, 60))]
        workers = [f"w{rng.random()}" for _ in range(rng.randint(1, 5))]
        before = assign(tenants, workers)
        counts = [list(before.values()).count(w) for w in workers]
        assert max(counts) - min(counts) <= 1
        after = assign(tenants, [*workers, "new"], before)
        counts = [list(after.values()).count(w) for w in [*workers, "new"]]
        assert max(counts) - min(counts) <= 1
        moved = [t for t in tenants if before[t] != after[t]]
        assert all(after[t] == "new" for t in moved)
        assert len(moved) == list(after.values()).count("new")


def test_board_names_the_holder() -> None:
    from pipeline.workers import LeaseInfo

    me = WorkerInfo("me1", "host-a", 10, "run")
    board = Board(
        me,
        leases={
            "x": LeaseInfo("x", "other", "host-b", 20, True),
            "y": LeaseInfo("y", "gone", None, None, False),
            "z": LeaseInfo("z", "me1", "host-a", 10, True),
        },
        running=frozenset({"z"}),
    )
    assert board.holder("z") == "this worker"
    assert board.held_here("z")
    assert board.holder("x") == "worker other (pid 20 on host-b)"
    assert board.held_elsewhere("x") == "worker other (pid 20 on host-b)"
    assert board.holder("y") == "worker gone, expired: taken over after the grace"
    assert board.holder("w") == "unheld"
    assert board.held_elsewhere("w") is None


# ------------------------------------------------------------------------------------------------ with a server


def new_schema() -> str:
    return postgres_server.new_schema(PREFIX)


@pytest.fixture(scope="module", autouse=True)
def _clean_schemas() -> Iterator[None]:
    drop_schemas(PREFIX)
    yield
    drop_schemas(PREFIX)


@pytest.fixture
async def schema() -> str:
    import asyncpg

    name = new_schema()
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
    finally:
        await conn.close()
    return name


def worker_settings(world: World, schema: str, *, lease: float = 1.5, grace: float = 0.5, rps: float = 400) -> Settings:
    base = world.settings(Path("unused.db"), requests_per_second=rps)
    return dataclasses.replace(base, database=schema_dsn(schema), lease_seconds=lease, lease_grace_seconds=grace)


@asynccontextmanager
async def small_world(tenants: int = 20) -> AsyncIterator[World]:
    now = datetime.now(UTC)
    async with fake_world(tenants, products=3, customers=2, invoices=3, now=now, requests_per_second=1000) as world:
        yield world


class Worker:
    """A `pipeline run` worker in this process: its Runtime and the task running it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = anyio.Event()
        self.runtime: Runtime | None = None
        self.ended = anyio.Event()
        self.cycles: list[str] = []
        self._scope: anyio.CancelScope | None = None

    @property
    def board(self) -> Board:
        assert self.runtime is not None
        assert self.runtime.workers is not None
        return self.runtime.workers.board

    @property
    def running(self) -> frozenset[str]:
        if self.runtime is None or self.runtime.workers is None:
            return frozenset()
        return frozenset(self.runtime.workers._held)

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            with anyio.CancelScope() as self._scope:
                async with Runtime(self.settings, command="run") as runtime:
                    self.runtime = runtime
                    task_status.started()
                    await runtime.run(self.stop, interval=0.5, on_start=self.cycles.append)
        finally:
            self.ended.set()

    def die(self) -> None:
        """As if killed: everything stops at once, nothing is released."""
        assert self._scope is not None
        self._scope.cancel()


async def leases(schema: str) -> dict[str, tuple[str, datetime, datetime]]:
    import asyncpg

    conn = await asyncpg.connect(schema_dsn(schema))
    try:
        rows = await conn.fetch("SELECT tenant, holder, acquired_at, expires_at FROM tenant_leases")
    finally:
        await conn.close()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


@needs_postgres
@pytest.mark.anyio
async def test_claims_are_exclusive_under_concurrent_claimers(schema: str) -> None:
    """Eight coordinators claim the same 20 tenants at once, again and again: every tenant is won exactly once."""
    tenants = [f"t{i:02d}" for i in range(20)]
    timing = Timing(lease=30, grace=0)
    coordinators = [
        await Coordinator.open(schema_dsn(schema), WorkerInfo(f"w{i}", "h", i, "run"), timing) for i in range(8)
    ]
    try:
        won: dict[str, list[str]] = {}

        async def claim(c: Coordinator) -> None:
            for name in await c.claim(tenants):
                won.setdefault(name, []).append(c.me.id)

        async with anyio.create_task_group() as tg:
            for c in coordinators:
                tg.start_soon(claim, c)
        assert sorted(won) == tenants
        assert all(len(holders) == 1 for holders in won.values()), won
        # A second round: every lease is live, so nobody wins anything; its holder renews it.
        again: list[str] = []
        for c in coordinators:
            again += await c.claim(tenants)
        assert again == []
        holder = won["t00"][0]
        mine = next(c for c in coordinators if c.me.id == holder)
        assert "t00" in await mine.renew(["t00"])
        assert await next(c for c in coordinators if c.me.id != holder).renew(["t00"]) == set()
    finally:
        for c in coordinators:
            await c.close()


@needs_postgres
@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_join_rebalances_then_graceful_leave_hands_over_at_once(schema: str) -> None:
    """One worker holds all 20 tenants; a second joins and they settle at 10/10, disjoint, and the key's rate is
    split in two; the second stops (SIGTERM's path): the first holds all 20 again long before a lease could
    expire, and takes the whole rate back."""
    async with small_world() as world:
        settings = worker_settings(world, schema, lease=3.0, grace=30.0)  # a take-over by expiry would be slow
        a, b = Worker(settings), Worker(settings)
        async with anyio.create_task_group() as tg:
            await tg.start(a.serve)
            await eventually(lambda: len(a.running) == 20, 20, "the first worker holds all 20")
            assert a.board.share == settings.poweroffice.requests_per_second
            await tg.start(b.serve)
            assert b.runtime is not None
            # The newcomer sends nothing to PowerOffice until the first has lowered its share.
            paused = b.runtime.poweroffice.limiter._paused_until - time.monotonic()
            assert paused > Timing.of(settings).join_wait - 1, paused
            await eventually(
                lambda: len(a.running) == 10 and len(b.running) == 10, 20, "the two workers hold 10 tenants each"
            )
            assert not a.running & b.running
            held = await leases(schema)
            assert {t: h for t, (h, *_) in held.items()} == {
                **dict.fromkeys(a.running, a.board.me.id),
                **dict.fromkeys(b.running, b.board.me.id),
            }
            await eventually(lambda: a.board.share == b.board.share == 200, 5, "each worker runs at half the rate")
            assert a.runtime is not None
            assert a.runtime.poweroffice.limiter.requests_per_second == 200
            # Hand-over happened between cycles: every tenant ran whole cycles on one worker at a time.
            assert set(b.cycles) <= set(b.running) | set(a.running)

            b.stop.set()
            took = await eventually(lambda: len(a.running) == 20, 10, "the first worker takes all 20 back")
            # Released, not expired: a take-over by expiry could come no sooner than the grace (30 s) after it.
            assert took < settings.lease_grace_seconds, took
            await b.ended.wait()
            await eventually(lambda: a.board.share == 400, 5, "the remaining worker takes the whole rate again")
            assert len(a.board.workers) == 1
            a.stop.set()
        assert await leases(schema) == {}  # a graceful stop releases everything


@needs_postgres
@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_a_dead_workers_tenants_are_taken_after_expiry_and_grace(schema: str) -> None:
    """A worker that dies releases nothing: its tenants are claimed by the survivor only once their leases expired
    and the grace passed, and then within a heartbeat or two."""
    async with small_world(6) as world:
        settings = worker_settings(world, schema, lease=1.5, grace=1.0)
        a, b = Worker(settings), Worker(settings)
        async with anyio.create_task_group() as tg:
            await tg.start(a.serve)
            await tg.start(b.serve)
            await eventually(lambda: len(a.running) == 3 and len(b.running) == 3, 20, "3 and 3")
            theirs = set(b.running)
            before = await leases(schema)
            b.die()
            await b.ended.wait()
            took = await eventually(lambda: len(a.running) == 6, 15, "the survivor takes the dead one's tenants")
            after = await leases(schema)
            for name in theirs:
                _, _, expired = before[name]
                holder, acquired, _ = after[name]
                assert holder == a.board.me.id
                # Never before the dead holder's expiry plus the grace (its last renewal may be later than
                # `before`, never earlier).
                assert (acquired - expired).total_seconds() >= 1.0, name  # the grace
            timing = Timing.of(settings)
            assert took <= timing.lease + timing.grace + 3 * timing.heartbeat + 2, took
            a.stop.set()


@needs_postgres
@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_a_worker_that_cannot_renew_stops_its_work_before_its_lease_expires(schema: str) -> None:
    """Renewals blocked (the lease table locked by another session): the worker cancels its tenants' work, writes
    included, while the database still counts its leases as live, and no Ongoing write of it starts after that."""
    import asyncpg

    now = datetime.now(UTC)
    async with fake_world(2, products=40, customers=2, invoices=2, now=now, requests_per_second=1000) as world:
        world.ongoing.write_latency = 0.05  # the first cycle's 80 article writes take ~4 s per goods owner
        settings = worker_settings(world, schema, lease=1.5, grace=5.0)
        a = Worker(settings)
        async with anyio.create_task_group() as tg:
            await tg.start(a.serve)
            await eventually(lambda: len(world.ongoing.writes()) >= 4, 20, "article writes are under way")
            blocker = await asyncpg.connect(schema_dsn(schema))
            try:
                tx = blocker.transaction()
                await tx.start()
                await blocker.execute("LOCK TABLE tenant_leases IN ACCESS EXCLUSIVE MODE")
                await eventually(lambda: not a.running, 10, "the worker fences itself")
                fenced = anyio.current_time()
                db_now = await blocker.fetchval("SELECT clock_timestamp()")
                expiries = await blocker.fetch("SELECT expires_at FROM tenant_leases")
                assert expiries
                assert all(e > db_now for (e,) in expiries)
                writes = len(world.ongoing.writes())
                await anyio.sleep(0.5)  # no condition to wait for: that nothing more happens
                assert len(world.ongoing.writes()) == writes
                assert all(w.at <= fenced for w in world.ongoing.writes())
                assert a.runtime is not None
                assert a.runtime.workers is not None
                assert a.runtime.workers.failed_ticks >= 1
                await tx.rollback()
            finally:
                await blocker.close()
            # Its own fenced leases are not renewed: they expire and wait out the grace like anyone's.
            a.stop.set()


@pytest.mark.anyio
async def test_the_ongoing_fake_counts_writes_that_overlap_per_goods_owner() -> None:
    """Two clients (connections of their own) writing one goods owner at once overlap; writing two goods owners at
    once, or one after the other, does not. The failover test relies on this count."""
    import base64

    import aiohttp

    from pipeline.fakes.ongoing import FakeOngoing, serve_ongoing

    fake = FakeOngoing(username="u", password="p", write_latency=0.2)
    async with serve_ongoing(fake) as url:
        auth = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}

        async def put(owner: int, number: str) -> None:
            async with (
                aiohttp.ClientSession(headers=auth) as session,  # a connection of its own, as another process has
                session.put(f"{url}/articles", json={"goodsOwnerId": owner, "articleNumber": number}) as answer,
            ):
                assert answer.status == 200, await answer.text()

        await put(1, "A")
        await put(1, "B")
        async with anyio.create_task_group() as tg:
            tg.start_soon(put, 1, "C")
            tg.start_soon(put, 2, "C")
        assert fake.overlapping_writes() == 0
        async with anyio.create_task_group() as tg:
            tg.start_soon(put, 1, "D")
            tg.start_soon(put, 1, "E")
        assert fake.overlapping_writes(1) == 1
        assert fake.overlapping_writes(2) == 0


def test_readyz_livez_and_the_page_name_the_holder_and_count_only_tenants_held_here() -> None:
    """A worker is unready only for a tenant it holds; a tenant another worker holds (even one that failed here
    before it was handed over) is named with its holder; the page shows this worker and a holder per tenant."""
    from datetime import timedelta

    from pipeline.runtime import CycleReport, TenantReport
    from pipeline.statuspage import LogView, build_view, render_page
    from pipeline.web import Status
    from pipeline.workers import LeaseInfo

    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    clock = [now]
    status = Status(60, lambda: clock[0], tenants=["a", "b", "c"], stall_seconds=300)
    me = WorkerInfo("me1", "host-a", 10, "run")
    board = Board(
        me,
        workers=(me, WorkerInfo("w2", "host-b", 20, "run")),
        leases={
            "a": LeaseInfo("a", "me1", "host-a", 10, True),
            "b": LeaseInfo("b", "w2", "host-b", 20, True),
        },
        running=frozenset({"a"}),
        share=5,
    )
    status.attach_workers(lambda: board)
    failed = TenantReport("b", errors=["Ongoing stock: connection failed"], setup_error=True)
    status.cycle_started(now, ["b"])  # b's cycle here was cut short when it was handed over: it never reports
    status.record(CycleReport(now, {"a": TenantReport("a"), "b": failed}), now)
    status.cycle_started(now, ["b"])
    ok, text = status.readyz()
    assert ok, text
    lines = text.splitlines()
    assert lines[0] == "ready"
    assert lines[1].startswith("worker me1 (pid 10 on host-a): 1 of 3 tenants held here, 2 worker(s) live, 5 ")
    assert "a: ok · this worker" in lines
    assert "b: worker w2 (pid 20 on host-b)" in lines
    assert "c: unheld" in lines
    clock[0] = now + timedelta(seconds=400)
    assert status.livez()[0], status.livez()  # b's stale cycle and c's missing one are not this worker's
    status.record(CycleReport(now, {"a": TenantReport("a", errors=["PowerOffice: 401"], setup_error=True)}), now)
    ok, text = status.readyz()
    assert not ok
    assert text.splitlines()[0] == "not ready: a"
    view = build_view(status, LogView(head=0, held=(), pending=()), clock[0])
    assert [(r.name, r.holder) for r in view.tenants] == [
        ("a", "this worker"),
        ("b", "worker w2 (pid 20 on host-b)"),
        ("c", "unheld"),
    ]
    assert view.rate.limit == 5  # this worker's share of the key, not the key's whole rate
    # What this worker last saw of b (a failure before the hand-over) and of c (nothing) is not their state now.
    assert [(r.name, r.state) for r in view.tenants][1:] == [("b", "elsewhere"), ("c", "unheld")]
    page = render_page(view)
    assert "worker me1 (pid 10 on host-a) · 2 worker(s) live" in page
    assert "<th>held by" in page
    assert "<td>worker w2 (pid 20 on host-b)</td>" in page
    assert "another worker runs it now" in page
    # Not in the headline's list of problems either.
    assert "b unreachable" not in page
    assert "b elsewhere" not in page


@needs_postgres
@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_sync_runs_the_tenants_nobody_holds_and_reports_the_others_held(schema: str) -> None:
    """`sync` beside a live worker holding two of four tenants: it cycles the other two (and releases them), reports
    the two as held by that worker, counts itself in the key's share while it runs, and leaves no row behind."""
    async with small_world(4) as world:
        settings = worker_settings(world, schema, lease=9.0, grace=30.0)  # `other` stays live through the sync
        other = await Coordinator.open(
            schema_dsn(schema), WorkerInfo("other1", "host-b", 4242, "run"), Timing.of(settings)
        )
        try:
            await other.heartbeat()
            names = [t.name for t in world.tenants]
            assert await other.claim(names[:2]) == set(names[:2])
            async with Runtime(settings, command="sync") as runtime:
                assert runtime.workers is not None
                assert runtime.poweroffice.limiter.requests_per_second == settings.poweroffice.requests_per_second / 2
                report = await runtime.cycle()
            assert report.exit_code == 0
            for name in names[:2]:
                assert report.tenants[name].held_by == "worker other1 (pid 4242 on host-b)"
                assert not world.ongoing.owner(world.tenant(name).goods_owner_id).articles
            for name in names[2:]:
                assert report.tenants[name].held_by is None
                assert report.tenants[name].delivered > 0
            held = await leases(schema)
            assert sorted(held) == sorted(names[:2])
            assert {h for h, *_ in held.values()} == {"other1"}
            assert [w.id for w in await other.heartbeat()] == ["other1"]  # sync left
            # The command says so, and exits 0: a tenant another worker runs is no failure.
            import io

            from rich.console import Console

            from pipeline.commands import sync

            assert await other.renew(names[:2]) == set(names[:2])  # still live through a second sync
            out = io.StringIO()
            assert await sync(Console(file=out, width=200), settings) == 0
            assert f"{names[0]}: not run here: held by worker other1 (pid 4242 on host-b)" in out.getvalue()
        finally:
            await other.close()


@pytest.mark.anyio
async def test_a_limiter_share_applies_from_the_next_grant_and_grows_back() -> None:
    """`set_rate`: 10 rps split in two gives 5 per window from the next grant (places held stay held); back to
    10 when the other worker left; a third of 10 is 3 per window; a 429 cut in force survives a new rate."""
    from pipeline.clients.ratelimit import RateLimiter, max_in_window
    from tests.test_ratelimit import VirtualTime, grant_times

    time = VirtualTime()
    limiter = RateLimiter(10, clock=time.clock, sleep=time.sleep, window_margin=0)
    limiter.set_rate(5)
    times = [t for _, t in await grant_times(limiter, time, ["a"] * 12)]
    assert times == [0.0] * 5 + [1.0] * 5 + [2.0] * 2
    limiter.set_rate(10)
    more = [t for _, t in await grant_times(limiter, time, ["a"] * 18)]
    assert max_in_window(times + more) == 10
    limiter.set_rate(10 / 3)
    assert limiter.capacity == 3
    assert limiter.window == pytest.approx(1.0)
    grant = await limiter.acquire("a")
    limiter.throttled(grant, 1.0)
    limiter.release(grant)
    cut = limiter.pace()
    assert cut == 1
    limiter.set_rate(10)
    assert limiter.pace() == cut  # the cut stays; its pace grows back towards the new limit
    with pytest.raises(ValueError, match="positive"):
        limiter.set_rate(0)


@pytest.mark.anyio
async def test_readyz_and_metrics_over_http_name_the_worker() -> None:
    """Served: /readyz answers 200 with the worker's line while a tenant held elsewhere failed; /metrics has the
    live workers, the tenants held here and this worker's share of the key."""
    import aiohttp

    from pipeline.runtime import CycleReport, TenantReport
    from pipeline.web import Status, serve
    from pipeline.workers import LeaseInfo

    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    status = Status(60, lambda: now, tenants=["a", "b"])
    me = WorkerInfo("me1", "host-a", 10, "run")
    board = Board(
        me,
        workers=(me, WorkerInfo("w2", "host-b", 20, "run")),
        leases={"b": LeaseInfo("b", "w2", "host-b", 20, True)},
        running=frozenset({"a"}),
        share=5,
    )
    status.attach_workers(lambda: board)
    status.record(CycleReport(now, {"b": TenantReport("b", errors=["down"], setup_error=True)}), now)
    async with serve(status, "127.0.0.1", 0) as url, aiohttp.ClientSession() as session:
        async with session.get(f"{url}/readyz") as answer:
            assert answer.status == 200
            text = await answer.text()
        assert "worker me1 (pid 10 on host-a): 1 of 2 tenants held here" in text
        assert "b: worker w2 (pid 20 on host-b)" in text
        async with session.get(f"{url}/metrics") as answer:
            metrics = await answer.text()
    assert "pipeline_workers_live 2.0" in metrics
    assert "pipeline_worker_tenants_held 1.0" in metrics
    assert "pipeline_worker_requests_per_second 5.0" in metrics


@needs_postgres
@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_sighup_on_a_worker_adds_a_tenant_and_keeps_its_registration(tmp_path: Path, schema: str) -> None:
    """`run` on PostgreSQL: a reload that adds a tenant claims and cycles it at once; the worker stays the same
    registration (no leave and join between the configurations); a stop leaves no lease and no worker row."""
    import io
    import signal

    import asyncpg
    from rich.console import Console

    from pipeline.commands import run_forever
    from pipeline.config import load_settings
    from pipeline.runtime import TenantState

    async with small_world(2) as world:
        config = tmp_path / "pipeline.toml"
        head = "status_port = 0\nlease_seconds = 1.5\nlease_grace_seconds = 0.5\n"
        full = head + world.config_toml(schema_dsn(schema), requests_per_second=400)
        base, first, _ = full.split("[[tenants]]")
        config.write_text(base + "[[tenants]]" + first, encoding="utf-8")
        settings = load_settings(config)
        stop = anyio.Event()
        cycled: list[str] = []

        def record(state: TenantState) -> None:
            cycled.append(state.name)

        async def workers() -> list[str]:
            conn = await asyncpg.connect(schema_dsn(schema))
            try:
                return [str(r[0]) for r in await conn.fetch("SELECT id FROM workers")]
            finally:
                await conn.close()

        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: run_forever(
                    Console(file=io.StringIO()), settings, stop=stop, cycled=record, hangup=signal.SIGHUP
                )
            )
            await eventually(lambda: world.tenants[0].name in cycled, 20, "the first tenant cycles")
            before = await workers()
            assert len(before) == 1
            config.write_text(full, encoding="utf-8")
            os.kill(os.getpid(), signal.SIGHUP)
            await eventually(lambda: world.tenants[1].name in cycled, 20, "the added tenant cycles")
            assert await workers() == before
            held = await leases(schema)
            assert sorted(held) == sorted(t.name for t in world.tenants)
            assert {h for h, *_ in held.values()} == set(before)
            stop.set()
        assert await leases(schema) == {}
        assert await workers() == []


@needs_postgres
@pytest.mark.anyio
@pytest.mark.timeout(60)
async def test_a_workers_status_page_reads_the_postgresql_log(tmp_path: Path, schema: str) -> None:
    """`run` on PostgreSQL serves the page and /metrics from the log too (head, held and pending lists), as on
    SQLite: the log head is the log's newest position, not 0, and a standing mapping failure is on the page."""
    import io

    import aiohttp
    from rich.console import Console

    from pipeline.commands import run_forever
    from pipeline.config import load_settings
    from pipeline.runtime import TenantState

    async with small_world(1) as world:
        tenant = world.tenants[0]
        world.poweroffice.add_product(tenant.client_key, code="BROKEN", name="Broken price", UnitPrice="n/a")
        config = tmp_path / "pipeline.toml"
        head = "status_port = 0\nlease_seconds = 1.5\nlease_grace_seconds = 0.5\n"
        config.write_text(head + world.config_toml(schema_dsn(schema), requests_per_second=400), encoding="utf-8")
        stop = anyio.Event()
        cycled: list[str] = []
        urls: list[str] = []

        def record(state: TenantState) -> None:
            cycled.append(state.name)

        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: run_forever(
                    Console(file=io.StringIO()), load_settings(config), stop=stop, cycled=record, started=urls.append
                )
            )
            await eventually(lambda: bool(cycled), 20, "the tenant cycles")
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{urls[0]}/metrics") as answer:
                    metrics = await answer.text()
                async with session.get(f"{urls[0]}/") as answer:
                    page = await answer.text()
            stop.set()
    head = [line for line in metrics.splitlines() if line.startswith("pipeline_log_head_position ")]
    assert head, metrics
    assert float(head[0].split()[1]) > 0
    assert "log head #0 " not in page
    assert "cannot be mapped" in page
