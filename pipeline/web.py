"""The service's HTTP face while `pipeline run` is up: `/readyz` (and `/healthz`, the same), `/metrics` (Prometheus
text) and `/` (status).

- `/readyz`: 200 while every tenant's last cycle ended within twice its interval (plus a grace minute) and did not
  fail (`TenantState.failing`: the cycle raised, a poll failed, or the tenant could not be reached); 503 otherwise,
  naming each tenant and why. Before the first cycle ends it answers 200 "starting". `/healthz` is an alias.
- `/metrics`: counters and gauges from `prometheus_client`, on a registry of our own (no process globals).
- `/`: a small page with the last cycle per tenant.
"""

from __future__ import annotations

import html
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pipeline.freshness import percentile
from pipeline.runtime import CycleReport, TenantState
from pipeline.serving import serve_app


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.cycles = Counter("pipeline_cycles", "Sync cycles finished", ["result"], registry=r)
        self.duration = Histogram(
            "pipeline_cycle_seconds", "Duration of a sync cycle", registry=r, buckets=(1, 5, 15, 60, 300, 900, 3600)
        )
        self.observed = Counter("pipeline_observed", "Observations appended", ["tenant"], registry=r)
        self.commands = Counter("pipeline_commands", "Commands appended", ["tenant"], registry=r)
        self.delivered = Counter("pipeline_delivered", "Commands delivered", ["tenant"], registry=r)
        self.skipped = Counter("pipeline_skipped", "Commands deliberately not sent", ["tenant"], registry=r)
        self.failed = Counter("pipeline_failed", "Entities that failed (mapping or delivery)", ["tenant"], registry=r)
        self.waiting = Gauge("pipeline_waiting", "Commands waiting (quarantine or articles)", ["tenant"], registry=r)
        self.last_cycle = Gauge("pipeline_last_cycle_timestamp_seconds", "End of the last cycle", registry=r)
        self.cycles_failed = Counter(
            "pipeline_cycles_failed", "Tenant cycles that failed (the log, a poll, a bug)", ["tenant"], registry=r
        )
        self.last_success = Gauge(
            "pipeline_last_success_timestamp_seconds",
            "End of the tenant's last cycle that did not fail",
            ["tenant"],
            registry=r,
        )
        self.reconcile_differences = Gauge(
            "pipeline_reconcile_differences",
            "Differences the last scheduled reconcile found between PowerOffice and Ongoing",
            ["tenant", "kind"],
            registry=r,
        )
        self.freshness = Histogram(
            "pipeline_freshness_seconds",
            "Per delivery: the target's answer time minus the source's change time",
            ["tenant", "kind"],
            registry=r,
            buckets=(10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600),
        )


class Status:
    """What the service knows about itself: each tenant's `TenantState`, given to `record_tenant` after each of
    its cycles (`record` takes a whole `CycleReport` instead)."""

    def __init__(self, interval_seconds: float, clock: Callable[[], datetime]) -> None:
        self.interval = timedelta(seconds=interval_seconds)
        self.clock = clock
        self.metrics = Metrics()
        self.since = clock()
        self.tenants: dict[str, TenantState] = {}
        self.last_end: datetime | None = None
        # The latest deliveries' freshness per tenant (seconds), for the p95 on the page.
        self.recent_freshness: dict[str, deque[float]] = {}

    def record_tenant(self, state: TenantState) -> None:
        self.tenants[state.name] = state
        ended = state.last_ended or self.clock()
        self.last_end = ended
        m = self.metrics
        m.cycles.labels(state.result).inc()
        m.last_cycle.set(ended.timestamp())
        if state.last_started is not None:
            m.duration.observe((ended - state.last_started).total_seconds())
        t = state.report
        if t is None:
            return
        m.observed.labels(t.name).inc(t.observed)
        m.commands.labels(t.name).inc(t.commands)
        m.delivered.labels(t.name).inc(t.delivered)
        m.skipped.labels(t.name).inc(t.skipped)
        m.failed.labels(t.name).inc(t.failed)
        m.waiting.labels(t.name).set(t.waiting)
        if t.cycle_failed:
            m.cycles_failed.labels(t.name).inc()
        if state.last_success is not None:
            m.last_success.labels(t.name).set(state.last_success.timestamp())
        for kind, n in (state.reconcile_differences or {}).items():
            m.reconcile_differences.labels(state.name, kind).set(n)
        recent = self.recent_freshness.setdefault(t.name, deque(maxlen=1000))
        for kind, seconds in t.freshness:
            m.freshness.labels(t.name, kind).observe(seconds)
            recent.append(seconds)

    def record(self, report: CycleReport, ended: datetime) -> None:
        """Record a cycle of every tenant (each tenant's state follows from its report)."""
        interval = self.interval.total_seconds()
        for t in report.tenants.values():
            before = self.tenants.get(t.name) or TenantState(t.name, interval)
            failed = t.cycle_failed
            last_error = t.cycle_error or ("; ".join(t.errors) if t.errors else None)
            self.record_tenant(
                TenantState(
                    t.name,
                    before.interval_seconds,
                    result=t.result,
                    report=t,
                    last_error=last_error,
                    last_started=report.started,
                    last_ended=ended,
                    last_success=before.last_success if failed else ended,
                    cycles=before.cycles + 1,
                    failed_cycles=before.failed_cycles + failed,
                )
            )

    def health(self) -> tuple[bool, str]:
        """Readiness: (ready, reason). Not ready while a tenant's last cycle failed or none ended for too long."""
        now = self.clock()
        problems: list[str] = []
        for state in self.tenants.values():
            if state.failing and state.report is not None and state.report.setup_error:
                detail = f": {state.last_error}" if state.last_error else ""
                problems.append(f"{state.name}: unreachable or refused{detail}")
            elif state.failing:
                problems.append(f"{state.name}: last cycle failed ({state.failed_cycles} so far): {state.last_error}")
            late = now - (state.last_ended or self.since)
            if late > 2 * timedelta(seconds=state.interval_seconds) + timedelta(minutes=1):
                problems.append(f"{state.name}: no cycle finished for {int(late.total_seconds())} s")
        if problems:
            return False, "; ".join(problems)
        if all(state.report is None for state in self.tenants.values()):
            return True, "starting"
        return True, "ok"


def create_app(status: Status) -> web.Application:
    async def readyz(_: web.Request) -> web.Response:
        ok, reason = status.health()
        return web.Response(status=200 if ok else 503, text=reason + "\n")

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(status.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def index(_: web.Request) -> web.Response:
        ok, reason = status.health()
        rows = ""
        for state in status.tenants.values():
            t = state.report
            counts = (t.observed, t.commands, t.delivered, t.skipped, t.failed, t.waiting) if t else ("",) * 6
            cells = (
                state.name,
                *counts,
                state.result,
                state.last_error or "",
                _when(state.last_success),
                _when(state.next_cycle),
                state.failed_cycles,
            )
            rows += "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"
        ended = status.last_end.isoformat() if status.last_end else "not yet"
        page = (
            "<!doctype html><title>pipeline</title><h1>pipeline</h1>"
            f"<p>health: {html.escape(reason)} · last cycle ended: {html.escape(ended)}</p>"
            "<table border=1><tr><th>tenant<th>observed<th>commands<th>delivered<th>skipped<th>failed<th>waiting"
            "<th>last cycle<th>last error<th>last success<th>next cycle<th>failed cycles"
            f"{rows}</table>"
        )
        for state in status.tenants.values():
            if state.reconcile_differences is not None:
                found = ", ".join(f"{k} {n}" for k, n in state.reconcile_differences.items())
                when = _when(state.last_reconciled)
                page += f"<p>reconcile {html.escape(state.name)} at {when}: differences {html.escape(found)}</p>"
        for name, recent in status.recent_freshness.items():
            if recent:
                p95 = percentile(list(recent), 0.95)
                page += f"<p>freshness {html.escape(name)}: p95 {p95:.0f} s over the last {len(recent)} deliveries</p>"
        return web.Response(text=page, content_type="text/html", status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    return app


@asynccontextmanager
async def serve(status: Status, host: str, port: int) -> AsyncIterator[str]:
    """Serve the status app; yields its base URL."""
    async with serve_app(create_app(status), host, port) as origin:
        yield origin


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "—"
