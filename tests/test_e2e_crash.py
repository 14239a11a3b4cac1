"""`pipeline sync` killed with SIGKILL at many points, then rerun: the final state is exact and no order is
created twice. The fakes run in this process; `pipeline` runs as a real subprocess with a config file."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline.config import Settings
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


async def run_sync(config: Path, world: World, kill_after: int | None) -> int | None:
    """Run `pipeline --config config sync`; SIGKILL it once the fakes have served `kill_after` more requests."""
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

    world.poweroffice.requests = Tripwire(world.poweroffice.requests, count)
    world.ongoing.requests = Tripwire(world.ongoing.requests, count)
    try:
        with anyio.fail_after(60):
            return await process.wait()
    finally:
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
            if product.get("IsStockItem"):
                assert product["StockOnHand"] == article.model["inventoryInfo"]["numberOfItems"], number


def world_args(now: datetime) -> dict[str, Any]:
    return {"products": 12, "customers": 6, "invoices": 16, "now": now, "requests_per_second": 1000}


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.timeout(300)
async def test_sync_killed_at_many_points_then_rerun_ends_exact(tmp_path: Path) -> None:
    """SIGKILL at 12 points spread over a whole sync, each followed by a rerun: exact state, each order once."""
    now = datetime.now(UTC)
    rng = random.Random(20261125)
    async with fake_world(1, **world_args(now)) as world:
        config = tmp_path / "probe" / "pipeline.toml"
        config.parent.mkdir()
        config.write_text(world.config_toml("pipeline.db", requests_per_second=1000), encoding="utf-8")
        assert await run_sync(config, world, kill_after=None) == 0
        total = len(world.poweroffice.requests) + len(world.ongoing.requests)
        _check(world, config)
    # One kill point in each of 12 equal slices of the run, so every stage gets hit.
    points = sorted({rng.randrange(i * total // 12 + 1, (i + 1) * total // 12 + 1) for i in range(12)})
    killed = 0
    for i, point in enumerate(points):
        async with fake_world(1, **world_args(now)) as world:
            config = tmp_path / f"run{i}" / "pipeline.toml"
            config.parent.mkdir()
            config.write_text(world.config_toml("pipeline.db", requests_per_second=1000), encoding="utf-8")
            code = await run_sync(config, world, kill_after=point)
            killed += code == -signal.SIGKILL
            assert await run_sync(config, world, kill_after=None) == 0, f"rerun after a kill at request {point}"
            _check(world, config)
            writes = len(world.ongoing.writes())
            assert await run_sync(config, world, kill_after=None) == 0
            assert len(world.ongoing.writes()) == writes, "a third run found something left to write"
    assert killed >= 10, (killed, points, total)
