"""`pipeline sync` killed with SIGKILL at 20 random points, then rerun: the final state is exact and no order is
created twice. The fakes run in this process; `pipeline` runs as a real subprocess with a config file.

Most points kill when the fakes have seen a given number of requests (the kill lands as a request arrives); the
others kill inside an Ongoing write the server has applied but not yet answered (`FakeOngoing.hold`). Points run a
few at a time, each on its own fakes and database, to keep the test in seconds."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline.config import Settings
from pipeline.fakes.ongoing import Hold
from pipeline.fakes.world import World, fake_world
from tests.test_e2e import expected_articles, expected_orders

ROOT = Path(__file__).resolve().parent.parent


class Tripwire(list[Any]):
    """A request log that calls `on_append` with its new length after each request is logged."""

    def __init__(self, items: list[Any], on_append: Callable[[], None]) -> None:
        super().__init__(items)
        self.on_append = on_append

    def append(self, item: Any) -> None:
        super().append(item)
        self.on_append()


async def run_sync(config: Path, world: World, kill_after: int | None, hold: Hold | None = None) -> int | None:
    """Run `pipeline --config config sync`; SIGKILL it once the fakes have served `kill_after` more requests, or
    once the fake has applied the write `hold` parks (its answer is released after the kill)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await anyio.open_process(
        [sys.executable, "-m", "pipeline", "--config", str(config), "sync"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    served = 0

    def count() -> None:
        nonlocal served
        served += 1
        if kill_after is not None and served == kill_after and process.returncode is None:
            process.send_signal(signal.SIGKILL)

    async def kill_when_applied(parked: Hold) -> None:
        await parked.reached.wait()
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()
        parked.release.set()

    world.poweroffice.requests = Tripwire(world.poweroffice.requests, count)
    world.ongoing.requests = Tripwire(world.ongoing.requests, count)
    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                if hold is not None:
                    tg.start_soon(kill_when_applied, hold)
                code = await process.wait()
                tg.cancel_scope.cancel()
            return code
    finally:
        if hold is not None:
            hold.release.set()
        world.poweroffice.requests = list(world.poweroffice.requests)
        world.ongoing.requests = list(world.ongoing.requests)
        await process.aclose()


def _check(world: World, config: Path) -> None:
    from pipeline.config import load_settings

    check_final_state(world, load_settings(config))


def check_final_state(world: World, settings: Settings) -> None:
    """Both fakes hold exactly what the mapping makes of PowerOffice's data; each order was created once."""
    for t, tenant in zip(world.tenants, settings.tenants, strict=True):
        owner = world.ongoing.owner(t.goods_owner_id)
        articles = expected_articles(t, tenant)
        assert set(owner.articles) == set(articles)
        orders = expected_orders(world, t, tenant, set(articles))
        assert orders
        got = {o.body["goodsOwnerOrderId"] for o in owner.orders.values()}
        assert got == set(orders)
        for number in owner.orders:
            assert world.ongoing.creations(t.goods_owner_id, number) == 1, number
        for number, article in owner.articles.items():
            product = t.company.product_by_code(number)
            held = article.model["inventoryInfo"]["numberOfItems"] or article.model["inventoryInfo"].get("lastInDate")
            if product.get("IsStockItem") and held:  # never held: PowerOffice's figure is left alone (rule 14)
                assert product["StockOnHand"] == article.model["inventoryInfo"]["numberOfItems"], number


def world_args(now: datetime) -> dict[str, Any]:
    return {"products": 12, "customers": 6, "invoices": 16, "now": now, "requests_per_second": 1000}


@dataclass(frozen=True)
class KillPoint:
    after_requests: int | None = None  # kill when the fakes have seen this many requests
    applied: str | None = None  # or: kill inside this Ongoing write (entity), applied but not answered

    def __str__(self) -> str:
        return f"request {self.after_requests}" if self.applied is None else f"applied write of {self.applied}"


def kill_points(total: int, writes: list[str], rng: random.Random) -> list[KillPoint]:
    """20 points: one in each of 15 equal slices of the run's requests, and 5 inside applied Ongoing writes (orders
    first: a lost answer there is what could create an order twice)."""
    slices = 15
    points = [KillPoint(rng.randrange(i * total // slices + 1, (i + 1) * total // slices + 1)) for i in range(slices)]
    orders = [w for w in writes if w.startswith("order:")]
    articles = [w for w in writes if w.startswith("article:")]
    chosen = rng.sample(orders, 3) + rng.sample(articles, 2)
    return points + [KillPoint(applied=entity) for entity in chosen]


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.timeout(300)
async def test_sync_killed_at_many_points_then_rerun_ends_exact(tmp_path: Path) -> None:
    """SIGKILL at 20 points spread over a whole sync (5 of them inside applied writes), each followed by a rerun:
    exact state, each order once; every fourth point also checks that a third run has nothing left to write."""
    now = datetime.now(UTC)
    rng = random.Random(20261125)
    async with fake_world(1, **world_args(now)) as world:
        config = tmp_path / "probe" / "pipeline.toml"
        config.parent.mkdir()
        config.write_text(world.config_toml("pipeline.db", requests_per_second=1000), encoding="utf-8")
        assert await run_sync(config, world, kill_after=None) == 0
        total = len(world.poweroffice.requests) + len(world.ongoing.requests)
        writes = sorted({w.entity for w in world.ongoing.writes() if w.entity})
        _check(world, config)
    points = kill_points(total, writes, rng)
    assert len(points) == 20
    killed: list[KillPoint] = []

    async def one(i: int, point: KillPoint) -> None:
        async with fake_world(1, **world_args(now)) as world:
            config = tmp_path / f"run{i}" / "pipeline.toml"
            config.parent.mkdir()
            config.write_text(world.config_toml("pipeline.db", requests_per_second=1000), encoding="utf-8")
            hold = None
            if point.applied is not None:
                hold = world.ongoing.hold(path="/(articles|orders)$", entity=point.applied)
            code = await run_sync(config, world, kill_after=point.after_requests, hold=hold)
            if code == -signal.SIGKILL:
                killed.append(point)
            assert await run_sync(config, world, kill_after=None) == 0, f"rerun after a kill at {point}"
            _check(world, config)
            if i % 4 == 0:
                writes = len(world.ongoing.writes())
                assert await run_sync(config, world, kill_after=None) == 0
                assert len(world.ongoing.writes()) == writes, f"a third run found something left to write ({point})"

    limiter = anyio.CapacityLimiter(4)

    async def limited(i: int, point: KillPoint) -> None:
        async with limiter:
            await one(i, point)

    async with anyio.create_task_group() as tg:
        for i, point in enumerate(points):
            tg.start_soon(limited, i, point)
    assert len(killed) >= 17, (killed, total)
    assert sum(1 for p in killed if p.applied is not None) == 5, killed
