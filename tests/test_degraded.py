"""A goods owner whose warehouse is down is noticed: the breaker's `degraded` reaches the cycle report, the sync
summary, `/readyz` (503 naming it), `/metrics` and the status page; orders waiting for its articles are named."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from rich.console import Console

from pipeline.console import print_cycle
from pipeline.fakes.faults import Fault
from pipeline.fakes.world import fake_world
from pipeline.runtime import CycleReport, Runtime, TenantReport
from pipeline.web import Status

NOW = datetime.now(UTC)


@pytest.mark.anyio
async def test_a_goods_owner_that_is_down_is_reported_degraded_everywhere(tmp_path: Path) -> None:
    """Every article write answers 503: after the breaker opens the tenant is `degraded` in the report, the
    summary, readiness and metrics; its paid invoices' orders wait, each naming the articles it waits for."""
    async with fake_world(1, products=10, customers=4, invoices=8, now=NOW, requests_per_second=1000) as world:
        world.ongoing.faults.add(Fault("status", status=503), method="PUT", path="/articles", times=None)
        settings = world.settings(tmp_path / "p.db", requests_per_second=1000)
        (t,) = world.tenants
        async with Runtime(settings, clock=lambda: NOW) as runtime:
            report = await runtime.cycle()
    r = report.tenants[t.name]
    assert r.degraded is not None
    assert "sender.ongoing" in r.degraded
    assert r.waiting > 0  # held behind the open breaker, with no outcome: none lost

    out = io.StringIO()
    print_cycle(Console(file=out, width=200), report)
    text = out.getvalue()
    assert f"{t.name}: degraded: sender.ongoing" in text

    status = Status(900, lambda: NOW, tenants=[t.name])
    status.record(report, NOW)
    ready, reason = status.readyz()
    assert not ready
    assert reason.startswith(f"not ready: {t.name}\n")
    assert f"{t.name}: degraded (" in reason
    metrics = generate_latest(status.metrics.registry).decode()
    assert f'pipeline_degraded{{tenant="{t.name}"}} 1.0' in metrics


def test_the_summary_names_what_waiting_orders_wait_for() -> None:
    """Rule 9 made visible: the sync summary names, per waiting order, the article it waits for (five at most)."""
    waits = {f"order:{i}": f"waits for article:A{i} (quarantined)" for i in range(7)}
    report = CycleReport(NOW, {"acme": TenantReport("acme", waiting=7, waits=waits)})
    out = io.StringIO()
    print_cycle(Console(file=out, width=300), report)
    text = out.getvalue()
    assert "acme: 7 waiting: order:0 waits for article:A0 (quarantined);" in text
    assert "(and 2 more)" in text
