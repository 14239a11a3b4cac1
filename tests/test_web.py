"""The status side of `pipeline run`: /livez, /readyz, /metrics, the status page's view-model and HTML, entity pages.

The page is tested through its view-model and its HTML text; `test_status_browser.py` looks at it in Chromium.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pipeline.clients.http import RetryPolicy
from pipeline.config import Secret, load_settings
from pipeline.fakes.faults import Fault
from pipeline.fakes.world import World, fake_world
from pipeline.runtime import CycleReport, Runtime, TenantReport, TenantState
from pipeline.serving import serve_app
from pipeline.statuspage import MAX_BARS, chart_svg, render_page
from pipeline.web import CyclePoint, Status, create_app
from tests.postgres_server import unavailable as pg_unavailable

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# ------------------------------------------------------------------------------------------------ config


def test_status_host_and_port_come_from_the_config_file(tmp_path: Path) -> None:
    """`status_host` / `status_port` in the file reach the settings (they were dropped before)."""
    config = tmp_path / "p.toml"
    config.write_text(
        'database = "p.db"\nstatus_host = "0.0.0.0"\nstatus_port = 0\n'
        '[poweroffice]\napi_url = "http://x/v2"\ntoken_url = "http://x/t"\n'
        'application_key = "a"\nsubscription_key = "s"\n'
        '[ongoing]\napi_url = "http://y"\nusername = "u"\npassword = "p"\n'
        '[[tenants]]\nname = "acme"\npoweroffice_client_key = "k"\nongoing_goods_owner_id = 1\n',
        encoding="utf-8",
    )
    settings = load_settings(config)
    assert (settings.status_host, settings.status_port) == ("0.0.0.0", 0)


# ------------------------------------------------------------------------------------------------ health


def test_livez_turns_red_when_the_first_cycle_hangs() -> None:
    """A first cycle that shows no progress past the stall deadline makes /livez red; any HTTP answer is progress."""
    clock = Clock()
    status = Status(60, clock, tenants=["a"], stall_seconds=300)
    assert status.livez() == (True, "starting")
    status.cycle_started(clock())
    clock.advance(200)
    assert status.livez()[0]
    status.metrics.request("poweroffice", 200, 0.1, "a")  # what the HTTP edge's hook calls: progress
    clock.advance(200)
    assert status.livez()[0]
    clock.advance(101)
    ok, reason = status.livez()
    assert not ok
    assert reason == "a: its first cycle (started 12:00:00) has shown no progress for 301 s"


def test_livez_names_the_one_tenant_whose_cycle_hangs() -> None:
    """With a cycle per tenant, another tenant's requests are not this one's progress."""
    clock = Clock()
    status = Status(60, clock, tenants=["a", "b"], stall_seconds=300)
    status.cycle_started(clock(), ["a"])
    status.cycle_started(clock(), ["b"])
    for _ in range(4):
        clock.advance(100)
        status.metrics.request("ongoing", 200, 0.1, "b")
    ok, reason = status.livez()
    assert not ok
    assert reason.startswith("a: its first cycle")
    assert "b:" not in reason
    status.record(CycleReport(clock(), {"a": TenantReport("a")}), clock())
    assert status.livez() == (True, "ok: a cycle is running")


def test_livez_turns_red_when_no_cycle_starts_after_one_was_due() -> None:
    """Between cycles the loop is alive until the next cycle is overdue by more than the stall deadline."""
    clock = Clock()
    status = Status(60, clock, tenants=["a"], stall_seconds=300)
    status.cycle_started(clock())
    status.record(CycleReport(clock(), {"a": TenantReport("a")}), clock())
    status.next_cycle(clock() + timedelta(seconds=60))
    clock.advance(60 + 300)
    assert status.livez() == (True, "ok")
    clock.advance(1)
    ok, reason = status.livez()
    assert not ok
    assert "no cycle has started since" in reason


def test_readyz_names_the_tenants_refused_or_unreachable() -> None:
    """/readyz is 503 naming refused and unreachable tenants; ok and starting tenants keep it ready."""
    clock = Clock()
    status = Status(60, clock, tenants=["a", "b", "c"])
    assert status.readyz()[0]
    assert status.readyz()[1].startswith("starting")
    report = CycleReport(
        clock(),
        {
            "a": TenantReport("a"),
            "b": TenantReport("b", errors=["PowerOffice: 401 invalid_client"], setup_error=True, refused=True),
            "c": TenantReport("c", errors=["Ongoing stock: connection failed"], setup_error=True),
        },
    )
    status.record(report, clock())
    ok, text = status.readyz()
    assert not ok
    assert text.splitlines()[0] == "not ready: b, c"
    assert "b: refused (PowerOffice: 401 invalid_client)" in text
    assert "c: unreachable (Ongoing stock: connection failed)" in text
    status.record(CycleReport(clock(), {n: TenantReport(n) for n in "abc"}), clock())
    assert status.readyz() == (True, "ready\na: ok\nb: ok\nc: ok")


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with fake_world(2, products=10, customers=4, invoices=10, requests_per_second=1000) as w:
        yield w


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


def metric(text: str, name: str) -> float:
    """The value of one sample line `name{...} value` (exact name with labels)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.anyio
async def test_health_endpoints_over_http_with_a_refused_tenant(world: World, tmp_path: Path) -> None:
    """A tenant whose client key PowerOffice refuses: /readyz and /healthz 503 naming it, /livez 200."""
    settings = world.settings(tmp_path / "p.db", requests_per_second=1000)
    bad = dataclasses.replace(settings.tenants[1], poweroffice_client_key=Secret("not-a-key"))
    settings = dataclasses.replace(settings, tenants=(settings.tenants[0], bad))
    clock = Clock(datetime.now(UTC))
    status = Status(60, clock, tenants=[t.name for t in settings.tenants])
    async with Runtime(settings) as runtime, serve_app(create_app(status)) as origin:
        await status.attach(runtime.log, runtime.poweroffice.limiter)
        status.cycle_started(clock())
        report = await runtime.cycle()
        status.record(report, clock(), await runtime.log.max_position())
        for path in ("/readyz", "/healthz"):
            code, text = await get(origin + path)
            assert code == 503
            assert text.startswith(f"not ready: {bad.name}\n")
            assert f"{bad.name}: refused (PowerOffice" in text
        assert await get(origin + "/livez") == (200, "ok\n")
        page = (await status.page()).tenants
        assert [(t.name, t.state) for t in page][1] == (bad.name, "refused")
        assert page[1].error is not None
        assert "not-a-key" not in page[1].error


# ------------------------------------------------------------------------------------------------ metrics


@pytest.mark.anyio
async def test_metrics_count_requests_429s_retries_limiter_and_cycles(world: World, tmp_path: Path) -> None:
    """/metrics: requests by system and status, a 429 and its retry, limiter totals, cycle duration and result,
    quarantined per tenant, the log head, build info and the process collectors; a failed cycle counts too."""
    world.poweroffice.faults.add(Fault("status", status=429, retry_after="0"), path=r"/v2/Products", times=1)
    settings = world.settings(tmp_path / "p.db", requests_per_second=1000)
    clock = Clock(datetime.now(UTC))
    status = Status(60, clock, tenants=[t.name for t in settings.tenants])
    policy = RetryPolicy(rate_limit_wait=0.0)
    async with Runtime(settings, policy=policy) as runtime, serve_app(create_app(status)) as origin:
        await status.attach(runtime.log, runtime.poweroffice.limiter)
        status.cycle_started(clock())
        report = await runtime.cycle()
        clock.advance(2)
        status.record(report, clock(), await runtime.log.max_position())
        status.cycle_started(clock())
        status.cycle_failed("append to p.db failed: disk I/O error", clock())
        code, text = await get(origin + "/metrics")
        head = await runtime.log.max_position()
    assert code == 200
    assert metric(text, 'pipeline_http_requests_total{status="429",system="poweroffice"}') == 1
    assert metric(text, 'pipeline_http_rate_limited_total{system="poweroffice"}') == 1
    assert metric(text, 'pipeline_http_retries_total{system="poweroffice"}') >= 1
    assert metric(text, 'pipeline_http_requests_total{status="200",system="poweroffice"}') > 5
    assert metric(text, 'pipeline_http_requests_total{status="200",system="ongoing"}') > 5
    assert metric(text, "pipeline_limiter_grants_total") == runtime.poweroffice.limiter.granted > 0
    assert metric(text, "pipeline_limiter_wait_seconds_total") >= 0
    assert metric(text, "pipeline_limiter_waiting") == 0
    assert metric(text, "pipeline_cycle_duration_seconds_count") == 2
    assert metric(text, 'pipeline_cycles_total{result="ok"}') == len(settings.tenants)  # one per tenant cycle
    assert metric(text, 'pipeline_cycles_total{result="error"}') == 1
    assert metric(text, "pipeline_log_head_position") == head > 0
    for t in settings.tenants:
        assert metric(text, f'pipeline_quarantined_entities{{tenant="{t.name}"}}') == 0
        assert metric(text, f'pipeline_waiting_commands{{tenant="{t.name}"}}') == 0
    assert re.search(r'^pipeline_build_info\{python="[\d.]+",version="[^"]+"\} 1\.0$', text, re.M)
    assert "process_resident_memory_bytes" in text
    assert "python_gc_collections_total" in text


# ------------------------------------------------------------------------------------------------ the page


@pytest.mark.anyio
async def test_page_shows_a_quarantined_entity_with_its_reason_escaped_and_a_link_to_its_history(
    world: World, tmp_path: Path
) -> None:
    """A product whose price arrives as markup: its tenant is `quarantined`, the reason is on the page escaped,
    and the link opens the entity's history (the observation and the mapping failure)."""
    t = world.tenants[0]
    bad = world.poweroffice.add_product(t.client_key, code="BAD-1", name="Broken", UnitPrice="<b>12,50</b> kr")
    settings = world.settings(tmp_path / "p.db", requests_per_second=1000)
    clock = Clock(datetime.now(UTC))
    status = Status(60, clock, tenants=[x.name for x in settings.tenants])
    async with Runtime(settings) as runtime, serve_app(create_app(status)) as origin:
        await status.attach(runtime.log, runtime.poweroffice.limiter)
        status.cycle_started(clock())
        report = await runtime.cycle()
        status.record(report, clock(), await runtime.log.max_position())
        status.next_cycle(clock() + timedelta(seconds=60))
        view = await status.page()
        code, html_text = await get(origin + "/")
        entity = f"product:{bad['Id']}"
        entity_code, entity_page = await get(f"{origin}/entity/{t.name}/{entity}")
        missing = await get(f"{origin}/entity/nobody/{entity}")

    states = {row.name: row.state for row in view.tenants}
    assert states == {t.name: "quarantined", world.tenants[1].name: "ok"}
    assert (
        view.tenants[0].error
        == f"newest: product:{bad['Id']}: cannot be mapped: UnitPrice: expected a number, got '<b>12,50</b> kr'"
    )
    assert view.tenants[1].error is None
    [held] = view.held
    assert (held.tenant, held.entity) == (t.name, entity)
    assert held.reason == "cannot be mapped: UnitPrice: expected a number, got '<b>12,50</b> kr'"
    assert held.subject.startswith("product 'BAD-1' 'Broken'")
    assert code == 200
    assert '<meta http-equiv="refresh"' in html_text
    assert "<script" not in html_text
    assert "cannot be mapped: UnitPrice: expected a number, got &#x27;&lt;b&gt;12,50&lt;/b&gt; kr&#x27;" in html_text
    assert f"href='/entity/{t.name}/{entity}'" in html_text
    assert "<svg" in html_text
    assert entity_code == 200
    assert "product.observed" in entity_page
    assert "mapping.failed" in entity_page
    assert "&lt;b&gt;12,50&lt;/b&gt;" in entity_page
    assert "<b>12,50</b>" not in entity_page
    assert missing[0] == 404


@pytest.mark.anyio
async def test_page_lists_an_order_waiting_for_its_quarantined_article(tmp_path: Path) -> None:
    """An article Ongoing refuses is quarantined with the answer's words; its orders are pending and say why."""
    async with fake_world(1, products=10, customers=4, invoices=20, requests_per_second=1000) as world:
        await _order_waits(world, tmp_path)


async def _order_waits(world: World, tmp_path: Path) -> None:
    t = world.tenants[0]
    world.ongoing.faults.add(Fault("status", status=400, body=b'{"Message":"Article refused"}'), path=r"/articles")
    settings = world.settings(tmp_path / "p.db", requests_per_second=1000)
    settings = dataclasses.replace(settings, tenants=settings.tenants[:1])
    clock = Clock(datetime.now(UTC))
    status = Status(60, clock, tenants=[t.name])
    async with Runtime(settings) as runtime:
        await status.attach(runtime.log)
        report = await runtime.cycle()
        status.record(report, clock(), await runtime.log.max_position())
        view = await status.page()
    assert view.tenants[0].state == "quarantined"
    assert view.held
    assert all("Article refused (status 400)" in h.reason for h in view.held)
    orders = [p for p in view.pending if p.entity.startswith("order:")]
    assert orders
    assert all(p.reason.startswith("waits for its article(s) ") for p in orders)
    html_text = render_page(view)
    assert "Article refused (status 400)" in html_text
    assert "waits for its article(s)" in html_text


def test_page_totals_rate_and_chart_from_reports() -> None:
    """Totals add up over cycles; a failed cycle is marked in the chart; PowerOffice's request rate is shown."""
    clock = Clock()
    status = Status(60, clock, tenants=["a"], requests_per_second=10)
    for i in range(3):
        status.cycle_started(clock())
        report = CycleReport(clock(), {"a": TenantReport("a", observed=5, commands=4, delivered=3 + i)})
        clock.advance(30)
        status.record(report, clock(), head=100 * (i + 1))
    status.cycle_failed("disk full", clock())
    for k in range(20):  # 20 PowerOffice answers in the last 2 s
        clock.advance(0.1)
        status.metrics.request("poweroffice", 429 if k == 0 else 200, 0.05)
    status.metrics.request("ongoing", 200, 0.05)
    from pipeline.statuspage import LogView, build_view

    view = build_view(status, LogView(head=300, held=(), pending=()), clock())
    assert view.totals["cycles"] == 3
    assert view.totals["failed cycles"] == 1
    assert view.totals["delivered"] == 3 + 4 + 5
    assert [(p.events, p.delivered, p.failed) for p in view.chart] == [
        (100, 3, False),
        (100, 4, False),
        (100, 5, False),
        (0, 0, True),
    ]
    assert view.rate.last_10s == 2.0
    assert view.rate.peak_second == 10
    assert view.rate.rate_limited == 1
    page = render_page(view)
    assert "2.0 of 10 requests/s" in page
    assert "the last cycle failed: disk full" in page


def test_chart_history_keeps_a_point_per_ten_seconds_however_many_tenants_cycle() -> None:
    """Each tenant's loop reports its own cycles: a thousand tenants ending cycles together make one point per ten
    seconds (their sums), not a thousand, so a day of history stays small. A failed cycle keeps its own point."""
    clock = Clock()
    names = [f"t{i}" for i in range(1000)]
    status = Status(900, clock, tenants=names)
    for round_ in range(2):
        for i, name in enumerate(names):
            clock.now = T0 + timedelta(seconds=30 * round_, milliseconds=5 * i)  # 5 s of answers per round
            report = TenantReport(name, observed=2, delivered=1)
            status.record_tenant(TenantState(name, 900, report=report, last_started=T0, last_ended=clock()))
    status.cycle_failed("disk full", clock(), ["t0"])
    assert [(p.events, p.delivered, p.failed) for p in status.history] == [
        (3000, 1000, False),
        (3000, 1000, False),
        (0, 0, True),
    ]


@pytest.mark.anyio
async def test_metrics_are_rendered_off_the_event_loop() -> None:
    """/metrics of a thousand tenants is tens of thousands of lines (a second of CPU): it is rendered in a thread, so
    the tenants' loops (and the rate limiter's grants) go on meanwhile."""
    import threading

    import pipeline.web

    loop_thread = threading.get_ident()
    rendered_on: list[int] = []
    real = pipeline.web.generate_latest

    def recording(registry: Any) -> bytes:
        rendered_on.append(threading.get_ident())
        return real(registry)

    status = Status(60, Clock(), tenants=["a"])
    pipeline.web.generate_latest = recording  # type: ignore[assignment]
    try:
        async with serve_app(create_app(status), "127.0.0.1", 0) as origin:
            code, text = await get(f"{origin}/metrics")
    finally:
        pipeline.web.generate_latest = real
    assert code == 200
    assert "pipeline_build_info" in text
    assert rendered_on
    assert loop_thread not in rendered_on


def test_chart_merges_cycles_beyond_its_width() -> None:
    """More cycles than bars: neighbours are summed into one bar, so a day of 10-second cycles still draws."""
    points = [CyclePoint(T0 + timedelta(seconds=10 * i), 2, 1) for i in range(MAX_BARS * 3)]
    svg = chart_svg(points, T0 + timedelta(days=1))
    assert svg.count("<title>") == MAX_BARS
    assert ": 6 events, 3 deliveries" in svg
    assert chart_svg([], T0) == "<p class=muted>no cycle has finished yet</p>"


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.skipif(pg_unavailable() is not None, reason=str(pg_unavailable()))),
    ]
)
async def any_log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """An empty log of each store (the PostgreSQL one in a schema of its own; skipped without a server)."""
    if request.param == "sqlite":
        from pipeline.eventlog.sqlite import SqliteEventLog

        async with await SqliteEventLog.open(tmp_path / "p.db") as log:
            yield log
        return
    import os

    from pipeline.eventlog.postgres import PostgresEventLog
    from tests.postgres_server import ENV, new_schema

    # (the prefix of tests/test_eventlog_postgres.py, whose clean-up drops the schema)
    async with await PostgresEventLog.open(os.environ[ENV], schema=new_schema("pipeline_test_")) as log:
        yield log


@pytest.mark.anyio
async def test_the_page_finds_the_same_failures_as_audit(any_log: Any) -> None:
    """The page's own failure query answers as `audit failures` does, on either store: a permanent failure stands
    until a re-drive or a newer outcome, a transient one too (as pending), a mapping failure until the record is
    observed again."""
    from pipeline import audit
    from pipeline.eventlog.base import NewEvent
    from pipeline.events import (
        ArticleUpsertRequested,
        CommandFailed,
        CommandSucceeded,
        EntityRedriven,
        MappingFailed,
        ProductObserved,
    )
    from pipeline.statuspage import read_log_view

    log = any_log
    n = 0

    async def add(entity: str, event: object, causation: int | None = None) -> int:
        nonlocal n
        n += 1
        await log.append([NewEvent("a", entity, event, f"k{n}", causation)])  # type: ignore[arg-type]
        return await log.max_position()

    for name in ("held", "redriven", "healed", "transient"):
        cmd = await add(f"article:{name}", ArticleUpsertRequested({"articleNumber": name}))
        await add(f"article:{name}", CommandFailed(cmd, 400, f"{name} refused", 1, name != "transient"), cmd)
    await add("article:redriven", EntityRedriven("fixed", "operator"))
    cmd = await add("article:healed", ArticleUpsertRequested({"articleNumber": "healed", "x": 1}))
    await add("article:healed", CommandSucceeded(cmd, {}, 1), cmd)
    for name in ("broken", "repaired"):
        obs = await add(f"product:{name}", ProductObserved({"Id": 1, "Code": None}))
        await add(f"product:{name}", MappingFailed(obs, "Code", "no Code"), obs)
    await add("product:repaired", ProductObserved({"Id": 1, "Code": "R"}))
    cmd = await add("article:waiting", ArticleUpsertRequested({"articleNumber": "waiting"}))

    expected = {r.entity for r in await audit.failures(log)}
    assert expected == {"article:held", "article:transient", "product:broken"}
    view = await read_log_view(log, ["a"])
    # The page holds what `audit failures` lists, less the transient failure, which it shows as pending.
    assert {h.entity for h in view.held} == expected - {"article:transient"} == {"article:held", "product:broken"}
    assert {(p.entity, p.reason.split(":")[0]) for p in view.pending} == {
        ("article:transient", "failed after 1 attempt(s), sent again next cycle"),
        ("article:waiting", "not sent yet"),
        ("article:redriven", "re-driven (fixed)"),
    }
