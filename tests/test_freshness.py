"""Freshness (answer time − the source's change time), from events already in the log: pure parts by table, then
against the fakes through a cycle's report, `audit stats`' numbers, `/metrics` and the status page."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from pipeline import freshness
from pipeline.commands import run_forever
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import InvoiceObserved, ProductObserved, StockObserved
from pipeline.fakes.world import fake_world
from pipeline.freshness import Sample, percentile, source_time, summarize
from pipeline.runtime import Runtime, TenantState
from pipeline.web import Status, create_app

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "payload", "expected"),
    [
        (
            ProductObserved.TYPE,
            {"product": {"LastChangedDateTimeOffset": "2026-11-29T11:58:00Z"}},
            T0 - timedelta(minutes=2),
        ),
        (
            InvoiceObserved.TYPE,
            {"invoice": {"BalanceLastChangedDateTimeOffset": "2026-11-29T13:00:00+01:00"}},
            T0,
        ),
        (StockObserved.TYPE, {"inventory": {"numberOfItems": 3}}, T0 + timedelta(seconds=5)),  # the poll time
        (ProductObserved.TYPE, {"product": {"LastChangedDateTimeOffset": "yesterday"}}, None),
        (ProductObserved.TYPE, {"product": {}}, None),
        (InvoiceObserved.TYPE, {"invoice": None}, None),
        ("command.succeeded", {}, None),
    ],
)
def test_source_time(kind: str, payload: dict[str, object], expected: datetime | None) -> None:
    assert source_time(kind, payload, T0 + timedelta(seconds=5)) == expected


def test_percentiles_and_summary() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.95), percentile(values, 1.0)) == (50.0, 95.0, 100.0)
    assert percentile([7.0], 0.95) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)
    samples = [Sample("a", "products", v) for v in (10.0, 30.0, 20.0)] + [Sample("a", "stock", 4.0)]
    assert summarize(samples) == [("a", "products", 3, 20.0, 30.0, 30.0), ("a", "stock", 1, 4.0, 4.0, 4.0)]


@pytest.mark.anyio
async def test_a_price_change_is_measured_from_its_change_time_to_the_answer(tmp_path: Path) -> None:
    """Freshness measures changes made while the pipeline watches a tenant. The first sync's backfill (products
    and invoices changed weeks or months before) is left out: it says how old the data was, not how long a
    change took (it made the first page's p95 read months)."""
    async with fake_world(1, products=6, customers=3, invoices=4, requests_per_second=1000) as world:
        settings = world.settings(tmp_path / "p.db", requests_per_second=1000)
        t = world.tenants[0]
        now = [datetime.now(UTC)]
        clock: Callable[[], datetime] = lambda: now[0]  # noqa: E731
        async with Runtime(settings, clock=clock) as runtime:
            first = await runtime.cycle()
            assert first.tenants[t.name].delivered > 0
            assert first.tenants[t.name].freshness == []  # a backfill, not latency
            code = sorted(str(p["Code"]) for p in t.company.products.values())[0]
            changed = world.poweroffice.set_price(t.client_key, code, 1234.5)["LastChangedDateTimeOffset"]
            changed_at = datetime.fromisoformat(changed.replace("Z", "+00:00"))
            now[0] = changed_at + timedelta(seconds=90)  # the pipeline's clock: the next cycle answers 90 s later
            start = now[0]
            report = await runtime.cycle()
        assert report.tenants[t.name].freshness == [("products", 90.0)]

        async with await SqliteEventLog.open(settings.database) as log:
            recent = await freshness.from_log(log, since=start)
            everything = await freshness.from_log(log)
            one_tenant = await freshness.from_log(log, tenant="nobody")
        assert recent == [Sample(t.name, "products", 90.0)]
        assert everything == recent  # the first cycle's deliveries: sources changed before the pipeline watched
        assert one_tenant == []


@pytest.mark.anyio
async def test_metrics_histogram_page_and_audit_stats_show_freshness(tmp_path: Path) -> None:
    import dataclasses

    from pipeline import commands
    from pipeline.cli import build_parser

    async with fake_world(1, products=6, customers=3, invoices=4, requests_per_second=1000) as world:
        settings = dataclasses.replace(world.settings(tmp_path / "p.db", requests_per_second=1000), status_port=0)
        t = world.tenants[0]
        status = Status(settings.interval_seconds, lambda: datetime.now(UTC))
        states: list[TenantState] = []

        def cycled(state: TenantState) -> None:
            states.append(state)
            if len(states) == 1:  # after the first sync (a backfill, not measured): a change to measure
                code = sorted(str(p["Code"]) for p in t.company.products.values())[0]
                world.poweroffice.set_price(t.client_key, code, 4321.0)

        code = await run_forever(
            Console(file=io.StringIO()), settings, cycles=2, interval=0, status=status, cycled=cycled
        )
        assert code == 0
        assert len(states) == 2
        assert states[1].report is not None
        assert states[1].report.delivered > 0
        assert [kind for kind, _ in states[1].report.freshness] == ["products"]
        from aiohttp.test_utils import TestClient, TestServer

        async with TestClient(TestServer(create_app(status))) as client:
            metrics = await (await client.get("/metrics")).text()
            page = await (await client.get("/")).text()
        counted = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("pipeline_freshness_seconds_count") and f'tenant="{t.name}"' in line
        ]
        assert sum(counted) == len(states[1].report.freshness) == 1
        assert "freshness p95" in page
        p95 = percentile([seconds for _, seconds in states[1].report.freshness], 0.95)
        assert f"{p95:.0f} s" in page

    args = build_parser().parse_args(["audit", "stats", "--since", "2000-01-01T00:00:00Z"])
    args.since = datetime(2000, 1, 1, tzinfo=UTC)  # what the CLI makes of it
    out = io.StringIO()
    assert await commands.audit(Console(file=out, width=200), settings, args) == 0
    text = out.getvalue()
    assert "delivery freshness" in text
    assert "p95_seconds" in text
    assert f"{t.name} " in text or t.name in text
