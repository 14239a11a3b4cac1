"""Reconcile against both fakes and a real SQLite log: each kind of difference is reported once with the right
fields; `--repair` fixes what it may through the normal senders; the next reconcile agrees."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pipeline import reconcile
from pipeline.config import Settings
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import ReconcileRecorded
from pipeline.fakes.world import FakeTenant, World, fake_world
from pipeline.runtime import Runtime

pytestmark = pytest.mark.anyio

NOW = datetime.now(UTC)


def fixed_clock() -> datetime:
    return NOW


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with fake_world(1, products=20, customers=8, invoices=20, now=NOW, requests_per_second=500) as w:
        yield w


def settings_for(world: World, tmp_path: Path) -> Settings:
    return world.settings(tmp_path / "pipeline.db", requests_per_second=500)


async def sync(settings: Settings) -> None:
    async with Runtime(settings, clock=fixed_clock) as runtime:
        report = await runtime.cycle()
    assert report.exit_code in (0, 1)


def by_issue(report: reconcile.ReconcileReport, kind: str, issue: str) -> dict[str, reconcile.Difference]:
    found: dict[str, reconcile.Difference] = {}
    for t in report.tenants.values():
        for d in t.differences:
            if d.kind == kind and d.issue == issue:
                assert d.key not in found, f"{kind} {issue} {d.key} reported twice"
                found[d.key] = d
    return found


def fields(d: reconcile.Difference) -> dict[str, tuple[Any, Any]]:
    return {f.field: (f.poweroffice, f.ongoing) for f in d.fields}


async def test_after_a_sync_both_systems_agree_and_the_run_is_recorded(world: World, tmp_path: Path) -> None:
    settings = settings_for(world, tmp_path)
    await sync(settings)
    report = await reconcile.run(settings, by="tester")
    assert [d.as_json() for t in report.tenants.values() for d in t.differences] == []
    assert report.exit_code == 0
    t = report.tenants[world.tenants[0].name]
    assert t.kinds["products"].checked > 0
    assert t.kinds["orders"].checked > 0
    assert t.kinds["stock"].checked > 0
    async with await SqliteEventLog.open(settings.database) as log:
        records = [e async for e in log.read(types=[ReconcileRecorded.TYPE])]
    assert len(records) == 1
    event = records[0].event
    assert isinstance(event, ReconcileRecorded)
    assert event.agreed is True
    assert event.by == "tester"
    assert event.counts["products"]["checked"] == t.kinds["products"].checked
    assert event.requests == t.requests
    assert event.requests["poweroffice"] > 0
    assert event.requests["ongoing"] > 0
