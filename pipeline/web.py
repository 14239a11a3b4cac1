"""The service's HTTP face while `pipeline run` is up: `/healthz`, `/metrics` (Prometheus text) and `/` (status).

- `/healthz`: 200 while the last cycle finished within twice the interval (plus a grace minute) and its setup
  was sound; 503 otherwise, with the reason. Before the first cycle ends it answers 200 "starting".
- `/metrics`: counters and gauges from `prometheus_client`, on a registry of our own (no process globals).
- `/`: a small page with the last cycle per tenant.
"""

from __future__ import annotations

import html
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pipeline.runtime import CycleReport
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
        self.quarantined = Gauge("pipeline_quarantined", "Entities held by a permanent failure", ["tenant"], registry=r)
        self.unmapped = Gauge(
            "pipeline_unmapped", "Entities whose latest record cannot be mapped", ["tenant"], registry=r
        )
        self.last_cycle = Gauge("pipeline_last_cycle_timestamp_seconds", "End of the last cycle", registry=r)


class Status:
    """What the service knows about itself; `record` is called after every cycle."""

    def __init__(self, interval_seconds: float, clock: Callable[[], datetime]) -> None:
        self.interval = timedelta(seconds=interval_seconds)
        self.clock = clock
        self.metrics = Metrics()
        self.last: CycleReport | None = None
        self.last_end: datetime | None = None

    def record(self, report: CycleReport, ended: datetime) -> None:
        self.last, self.last_end = report, ended
        m = self.metrics
        m.cycles.labels(["ok", "failures", "setup"][report.exit_code]).inc()
        m.duration.observe((ended - report.started).total_seconds())
        m.last_cycle.set(ended.timestamp())
        for t in report.tenants.values():
            m.observed.labels(t.name).inc(t.observed)
            m.commands.labels(t.name).inc(t.commands)
            m.delivered.labels(t.name).inc(t.delivered)
            m.skipped.labels(t.name).inc(t.skipped)
            m.failed.labels(t.name).inc(t.failed)
            m.waiting.labels(t.name).set(t.waiting)
            m.quarantined.labels(t.name).set(t.quarantined)
            m.unmapped.labels(t.name).set(t.unmapped)

    def health(self) -> tuple[bool, str]:
        if self.last is None or self.last_end is None:
            return True, "starting"
        late = self.clock() - self.last_end
        if late > 2 * self.interval + timedelta(minutes=1):
            return False, f"no cycle finished for {int(late.total_seconds())} s"
        if self.last.exit_code == 2:
            bad = [t.name for t in self.last.tenants.values() if t.setup_error]
            return False, f"tenants unreachable or refused: {', '.join(bad)}"
        return True, "ok"


def create_app(status: Status) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        ok, reason = status.health()
        return web.Response(status=200 if ok else 503, text=reason + "\n")

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(status.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def index(_: web.Request) -> web.Response:
        ok, reason = status.health()
        rows = ""
        if status.last is not None:
            for t in status.last.tenants.values():
                cells = (t.name, t.observed, t.commands, t.delivered, t.skipped, t.failed, t.waiting)
                rows += "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"
        ended = status.last_end.isoformat() if status.last_end else "not yet"
        page = (
            "<!doctype html><title>pipeline</title><h1>pipeline</h1>"
            f"<p>health: {html.escape(reason)} · last cycle ended: {html.escape(ended)}</p>"
            "<table border=1><tr><th>tenant<th>observed<th>commands<th>delivered<th>skipped<th>failed<th>waiting"
            f"{rows}</table>"
        )
        return web.Response(text=page, content_type="text/html", status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    return app


@asynccontextmanager
async def serve(status: Status, host: str, port: int) -> AsyncIterator[str]:
    """Serve the status app; yields its base URL."""
    async with serve_app(create_app(status), host, port) as origin:
        yield origin
