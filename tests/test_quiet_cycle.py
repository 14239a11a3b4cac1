"""A cycle over unchanged data reads what changed (nothing) plus the heads it needs, not the tenants' history."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import pipeline.eventlog.sqlite as sqlite_log
from pipeline.eventlog.base import NewEvent
from pipeline.events import StockObserved
from pipeline.fakes.world import World, fake_world
from pipeline.runtime import Runtime

NOW = datetime.now(UTC)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with fake_world(2, products=20, customers=5, invoices=15, now=NOW, requests_per_second=500) as w:
        yield w


@pytest.mark.anyio
async def test_quiet_cycle_decodes_only_stock_heads_however_long_the_history(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the data settles, a cycle decodes only the heads the pollers compare with, and no more when every
    entity's history is six times as long."""
    settings = world.settings(tmp_path / "p.db", requests_per_second=500)
    decoded: list[int] = []
    real = sqlite_log._rows_to_events

    def counting(rows: Any) -> Any:
        decoded.append(len(rows))
        return real(rows)

    async with Runtime(settings, clock=lambda: NOW) as runtime:
        for _ in range(3):
            await runtime.cycle()
        stock_heads = 0
        for t in world.tenants:
            stock_heads += len(await runtime.log.latest([StockObserved.TYPE], tenant=t.name))
        monkeypatch.setattr(sqlite_log, "_rows_to_events", counting)
        head = await runtime.log.max_position()
        await runtime.cycle()
        assert await runtime.log.max_position() == head  # unchanged: nothing appended
        quiet = sum(decoded)
        # The stock poller compares with each article's last figures; the invoice poller looks up the few
        # invoices it re-reads in its overlap window. Nothing else.
        invoices = sum(len(t.company.invoices) for t in world.tenants)
        assert quiet <= stock_heads + invoices, (quiet, stock_heads)

        # Older-looking history: many more events for the same entities, behind every checkpoint.
        monkeypatch.setattr(sqlite_log, "_rows_to_events", real)
        stored = [e async for e in runtime.log.read()]
        for round_ in range(5):
            copies = [NewEvent(e.tenant, e.entity, e.event, f"copy{round_}/{e.position}") for e in stored]
            await runtime.log.append(copies)
        new_head = await runtime.log.max_position()
        await runtime.log.append(
            [],
            checkpoints={
                (stage, t.name): new_head
                for t in world.tenants
                for stage in ("projector", "sender.ongoing", "sender.poweroffice")
            },
        )
        await runtime.cycle()  # the copies are the entities' heads now: settle on them
        monkeypatch.setattr(sqlite_log, "_rows_to_events", counting)
        decoded.clear()
        head = await runtime.log.max_position()
        await runtime.cycle()
        assert await runtime.log.max_position() == head
        assert sum(decoded) <= quiet, (sum(decoded), quiet)


@pytest.mark.anyio
async def test_quiet_cycle_goes_to_the_reader_thread_once_per_tenant(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quiet cycle's reads are point reads on the event loop's own connection (a cursor, a checkpoint, the head,
    the flags, a few named heads) and no read at all where the checkpoint is at the head. Only the stock poller's
    catalogue of last figures (one tenant-wide read) goes to the reader's thread, where every read queues behind
    the other tenants' reads."""
    settings = world.settings(tmp_path / "p.db", requests_per_second=500)
    trips: list[str] = []
    fetch, fetch_events = sqlite_log.SqliteEventLog._fetch, sqlite_log.SqliteEventLog._fetch_events

    async def counted_fetch(self: Any, sql: str, params: Any) -> Any:
        trips.append(sql)
        return await fetch(self, sql, params)

    async def counted_fetch_events(self: Any, sql: str, params: Any, decode: Any) -> Any:
        trips.append(sql)
        return await fetch_events(self, sql, params, decode)

    async with Runtime(settings, clock=lambda: NOW) as runtime:
        for _ in range(3):
            await runtime.cycle()
        monkeypatch.setattr(sqlite_log.SqliteEventLog, "_fetch", counted_fetch)
        monkeypatch.setattr(sqlite_log.SqliteEventLog, "_fetch_events", counted_fetch_events)
        head = await runtime.log.max_position()
        await runtime.cycle()
        assert await runtime.log.max_position() == head  # unchanged: nothing appended
    assert len(trips) <= len(world.tenants), trips
