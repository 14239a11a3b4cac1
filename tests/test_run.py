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
from pipeline.runtime import CycleReport, TenantReport, TenantState
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


@pytest.mark.anyio
async def test_run_shows_on_the_console_only_the_cycles_that_did_something(tmp_path: Path) -> None:
    """A tenant's cycle that read, wrote, waited or failed gets its table on the console; an unchanged one prints
    nothing there (its INFO log line says it), so a thousand quiet goods owners cost no rendering."""
    async with fake_world(2, products=6, customers=3, invoices=4, requests_per_second=1000) as world:
        settings = dataclasses.replace(world.settings(tmp_path / "p.db", requests_per_second=1000), status_port=0)
        out = io.StringIO()
        states: list[TenantState] = []
        code = await run_forever(Console(file=out, width=200), settings, cycles=3, interval=0, cycled=states.append)
    assert code == 0
    busy = [s for s in states if s.report is not None and s.report.observed]
    assert len(states) == 6
    assert len(busy) == 2  # each tenant's first cycle; the next two are unchanged
    assert out.getvalue().count("cycle started") == len(busy)


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


@pytest.mark.anyio
async def test_readyz_healthz_and_page_show_a_failed_cycle_until_the_next_one_succeeds() -> None:
    """A tenant's failed cycle makes /readyz (and /healthz) 503 naming the tenant and the cause; the page shows the
    error, the last success and the next cycle; /metrics counts it. The next good cycle makes it ready again."""
    from pipeline.runtime import TenantState
    from pipeline.serving import serve_app
    from pipeline.web import create_app

    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    status = Status(60, lambda: now, tenants=["a", "b"])
    good = TenantState("a", 60, result="ok", report=TenantReport("a"), last_started=now, last_ended=now)
    status.record_tenant(dataclasses.replace(good, last_success=now, cycles=1))
    broken = TenantReport("b", cycle_error="StoreError: append failed: database or disk is full <x>")
    status.record_tenant(
        TenantState(
            "b",
            60,
            result="failed",
            report=broken,
            last_error=broken.cycle_error,
            last_started=now,
            last_ended=now,
            next_cycle=now + timedelta(seconds=60),
            cycles=1,
            failed_cycles=1,
        )
    )
    async with serve_app(create_app(status)) as origin, aiohttp.ClientSession() as session:
        for path in ("/readyz", "/healthz"):
            async with session.get(origin + path) as resp:
                text = await resp.text()
                assert resp.status == 503
                assert text.startswith("not ready: b\n")
                assert "b: failed (StoreError: append failed: database or disk is full <x>)" in text
                assert "a: ok" in text
        async with session.get(origin + "/") as resp:
            page = await resp.text()
            assert "database or disk is full &lt;x&gt;" in page
            assert "12:01" in page  # b's next cycle
        async with session.get(origin + "/metrics") as resp:
            metrics = await resp.text()
            assert 'pipeline_cycles_failed_total{tenant="b"} 1.0' in metrics
            assert 'pipeline_cycles_total{result="failed"} 1.0' in metrics
        status.record_tenant(TenantState("b", 60, result="ok", report=TenantReport("b"), last_ended=now, cycles=2))
        async with session.get(origin + "/readyz") as resp:
            assert (resp.status, (await resp.text()).strip()) == (200, "ready\na: ok\nb: ok")
