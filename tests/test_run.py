"""`pipeline run`: cycles until stopped, with /healthz, /metrics and a status page while it is up."""

from __future__ import annotations

import dataclasses
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import anyio
import pytest
from rich.console import Console

from pipeline.commands import run_forever
from pipeline.fakes.world import fake_world
from pipeline.runtime import CycleReport, TenantReport
from pipeline.web import Status


@pytest.mark.anyio
async def test_run_serves_health_and_metrics_and_stops_cleanly(tmp_path: Path) -> None:
    """After a cycle, /healthz says ok, /metrics counts it, the page lists tenants; a stop ends the loop."""
    async with fake_world(1, products=8, customers=4, invoices=8, requests_per_second=1000) as world:
        settings = dataclasses.replace(world.settings(tmp_path / "p.db", requests_per_second=1000), status_port=0)
        stop = anyio.Event()
        cycled = anyio.Event()
        urls: list[str] = []
        result: list[int] = []

        async def service() -> None:
            result.append(
                await run_forever(
                    Console(file=io.StringIO()),
                    settings,
                    stop=stop,
                    started=urls.append,
                    cycled=lambda _report: cycled.set(),
                )
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(service)
            await cycled.wait()
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{urls[0]}/healthz") as resp:
                    assert (resp.status, (await resp.text()).splitlines()[0]) == (200, "ready")
                async with session.get(f"{urls[0]}/metrics") as resp:
                    text = await resp.text()
                    assert 'pipeline_cycles_total{result="ok"} 1.0' in text
                    assert f'pipeline_delivered_total{{tenant="{world.tenants[0].name}"}}' in text
                async with session.get(f"{urls[0]}/") as resp:
                    assert world.tenants[0].name in await resp.text()
            stop.set()
        assert result == [0]


def test_health_turns_red_when_cycles_stop_or_setup_fails() -> None:
    """Liveness is red when no cycle started long after one was due; readiness when a tenant can't be reached."""
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    clock = [now]
    status = Status(60, lambda: clock[0], tenants=["a"], stall_seconds=120)
    assert status.livez() == (True, "starting")
    report = CycleReport(now, {"a": TenantReport("a")})
    status.record(report, now)
    assert status.livez() == (True, "ok")
    assert status.readyz() == (True, "ready\na: ok")
    clock[0] = now + timedelta(minutes=4)
    ok, reason = status.livez()
    assert not ok
    assert "no cycle has started" in reason
    bad = CycleReport(now, {"a": TenantReport("a", errors=["Ongoing: connection failed"], setup_error=True)})
    status.record(bad, clock[0])
    assert status.readyz() == (False, "not ready: a\na: unreachable (Ongoing: connection failed)")
