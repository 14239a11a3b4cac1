"""Failover: two `pipeline run` processes on one PostgreSQL schema share 20 goods owners; one is killed with SIGKILL
in the middle of a write, and the other takes its tenants over once their leases expired (plus the grace).

What must hold at the end, measured at the fakes (which run in this process): the final state is exact, every
order was created once, no goods owner ever saw two writes at the server at once (from either process), and the
PowerOffice key never received more than 10 requests in any one second, from both processes together (no 429)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from pipeline.clients.ratelimit import max_in_window
from pipeline.config import Settings, load_settings
from pipeline.fakes.world import SUBSCRIPTION_KEY, World, fake_world
from tests.postgres_server import eventually, unavailable
from tests.test_e2e import expected_articles, expected_orders
from tests.test_workers import _clean_schemas, schema, schema_dsn  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent
LEASE, GRACE = 4.0, 3.0
RATE = 10

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")


def exact(world: World, settings: Settings) -> bool:
    """Both fakes hold exactly what the mapping makes of PowerOffice's data (articles and orders)."""
    for t, tenant in zip(world.tenants, settings.tenants, strict=True):
        owner = world.ongoing.owner(t.goods_owner_id)
        articles = expected_articles(t, tenant)
        if set(owner.articles) != set(articles):
            return False
        orders = expected_orders(world, t, tenant, set(articles))
        if {o.body["goodsOwnerOrderId"] for o in owner.orders.values()} != set(orders):
            return False
    return True


async def holders(in_schema: str) -> dict[str, int]:
    """tenant -> the pid of the worker holding its live lease."""
    import asyncpg

    conn = await asyncpg.connect(schema_dsn(in_schema))
    try:
        rows = await conn.fetch(
            "SELECT l.tenant, w.pid FROM tenant_leases l JOIN workers w ON w.id = l.holder"
            " WHERE l.expires_at > clock_timestamp()"
        )
    except asyncpg.UndefinedTableError:
        return {}
    finally:
        await conn.close()
    return {str(t): int(p) for t, p in rows}


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_two_workers_one_killed_mid_write_the_other_takes_over(tmp_path: Path, schema: str) -> None:  # noqa: F811
    now = datetime.now(UTC)
    async with fake_world(
        20, products=2, customers=2, invoices=3, now=now, requests_per_second=RATE, write_latency=0.05
    ) as world:
        config = tmp_path / "pipeline.toml"
        head = f"status_port = 0\nlease_seconds = {LEASE}\nlease_grace_seconds = {GRACE}\nreconcile_every_hours = 0\n"
        body = world.config_toml(schema_dsn(schema), requests_per_second=RATE, interval_seconds=5)
        body = body.replace("[ongoing]\n", "[ongoing]\ntimeout_seconds = 1.5\n")
        config.write_text(head + body, encoding="utf-8")
        settings = load_settings(config)
        owner_of = {t.name: t.goods_owner_id for t in world.tenants}
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        logs = [(tmp_path / f"worker{i}.log").open("w") for i in range(2)]
        procs = [
            await anyio.open_process(
                [sys.executable, "-m", "pipeline", "--config", str(config), "run"],
                env=env,
                stdout=logs[i],
                stderr=subprocess.STDOUT,
            )
            for i in range(2)
        ]
        try:
            first, second = procs
            split: dict[str, int] = {}

            async def shared() -> bool:
                split.update(await holders(schema))
                pids = list(split.values())
                return len(split) == 20 and pids.count(first.pid) == 10 and pids.count(second.pid) == 10

            await eventually(shared, 40, "the two workers hold 10 tenants each")
            victims = {owner_of[t] for t, pid in split.items() if pid == second.pid}
            # Whenever the split came (before or after the first cycles), there is writing to do after it: every
            # product is renamed, so each goods owner's next cycle writes its articles again.
            for t in world.tenants:
                for product in list(t.company.products.values()):
                    if isinstance(product.get("Code"), str):
                        renamed = f"{product.get('Name') or 'product'} (2)"
                        world.poweroffice.update_product(t.client_key, product["Code"], Name=renamed)
            writes = len(world.ongoing.writes())

            async def mid_write() -> bool:
                busy = any(world.ongoing.owner(g).in_flight for g in victims)
                later = world.ongoing.writes()[writes:]
                return busy and len([w for w in later if w.goods_owner_id in victims]) >= 5

            await eventually(mid_write, 40, "the second worker is writing")
            second.send_signal(signal.SIGKILL)
            await second.wait()
            killed = anyio.current_time()

            async def all_on_first() -> bool:
                held = await holders(schema)
                return len(held) == 20 and set(held.values()) == {first.pid}

            took = await eventually(all_on_first, 30, "the survivor holds all 20 tenants")
            # Within the lease's expiry (plus the grace a dead holder's write is given, and a heartbeat or two).
            assert took <= LEASE + GRACE + 2 * LEASE / 3 + 1.0, took

            async def done() -> bool:
                return exact(world, settings)

            await eventually(done, 60 - (anyio.current_time() - killed), "the final state is exact")
            first.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                assert await first.wait() == 0
        finally:
            for p in procs:
                if p.returncode is None:
                    p.kill()
                await p.aclose()
            for f in logs:
                f.close()

        orders = 0
        for t in world.tenants:
            for number in world.ongoing.owner(t.goods_owner_id).orders:
                assert world.ongoing.creations(t.goods_owner_id, number) == 1, (t.name, number)
                orders += 1
        assert orders >= 10  # (16 paid invoices in this world become orders)
        assert world.ongoing.overlapping_writes() == 0
        arrivals = world.poweroffice.arrivals(SUBSCRIPTION_KEY)
        assert len(arrivals) > 100
        assert max_in_window(arrivals) <= RATE
        assert not [r for r in world.poweroffice.requests if r.status == 429]
        assert await holders(schema) == {}  # SIGTERM released everything
