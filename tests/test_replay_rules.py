"""Replay sends only what changed (rule 7): `--resend-orders` forces only delivered orders whose mapped body
differs from the body delivered, and says exactly what the next cycle sends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline.cli import main
from pipeline.config import load_settings
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import OrderUpsertRequested
from pipeline.fakes.world import World, fake_world
from pipeline.mapping import orders as order_mapping
from pipeline.runtime import Runtime
from tests.ongoing_schema import fake_validator


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with fake_world(1, products=12, customers=6, invoices=16, requests_per_second=1000) as w:
        w.ongoing.validator = fake_validator
        yield w


@pytest.fixture
def config(world: World, tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(world.config_toml("pipeline.db", requests_per_second=1000), encoding="utf-8")
    return path


async def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = await anyio.to_thread.run_sync(main, list(args))
    return code, capsys.readouterr().out


async def forced(config: Path) -> list[str]:
    async with await SqliteEventLog.open(load_settings(config).database) as log:
        return [
            e.entity
            async for e in log.read(types=[OrderUpsertRequested.TYPE])
            if isinstance(e.event, OrderUpsertRequested) and e.event.force
        ]


@pytest.mark.anyio
async def test_rule7_resend_orders_forces_only_orders_whose_body_changed(
    world: World, config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    start = datetime.now(UTC) - timedelta(minutes=1)
    settings = load_settings(config)
    async with Runtime(settings) as runtime:
        await runtime.cycle()
    t = world.tenants[0]
    owner = world.ongoing.owner(t.goods_owner_id)
    delivered = {o.body["goodsOwnerOrderId"]: number for number, o in owner.orders.items()}
    assert len(delivered) >= 2, "the generated data should deliver some orders"
    window = ["--from", start.isoformat(), "--to", (datetime.now(UTC) + timedelta(minutes=1)).isoformat()]

    # Nothing changed: nothing is forced, and the message says the next cycle sends nothing.
    code, out = await cli(capsys, "--config", str(config), "replay", *window, "--kind", "orders", "--resend-orders")
    assert code == 0
    assert await forced(config) == []
    assert "sends nothing" in out
    writes = len(world.ongoing.writes())
    async with Runtime(settings) as runtime:
        await runtime.send()
    assert len(world.ongoing.writes()) == writes

    # One invoice maps differently now: only its order is forced, named in the message, and sent once.
    target = sorted(delivered)[0]
    original = order_mapping.map_invoice

    def changed(invoice: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        mapped = original(invoice, *args, **kwargs)
        if invoice.get("Id") == target:
            mapped.body["referenceNumber"] = "changed by a mapping fix"
        return mapped

    monkeypatch.setattr("pipeline.projectors.commands.map_invoice", changed)
    code, out = await cli(capsys, "--config", str(config), "replay", *window, "--kind", "orders", "--resend-orders")
    assert code == 0
    assert await forced(config) == [f"order:{target}"]
    assert f"order:{target}" in out
    assert "1 delivered order(s) again" in out
    async with Runtime(settings) as runtime:
        await runtime.send()
    order_writes = [w for w in world.ongoing.writes()[writes:] if w.entity and w.entity.startswith("order:")]
    assert len(order_writes) == 1
    assert owner.orders[delivered[target]].body["referenceNumber"] == "changed by a mapping fix"
