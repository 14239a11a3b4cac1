"""Prometheus metrics of `pipeline run`, on a registry of our own (served at `/metrics` by `pipeline.web`).

- `pipeline_http_requests_total{system,status}`: every request to the two APIs by its answer (`error`: no answer
  came); `pipeline_http_request_duration_seconds{system}`; `pipeline_http_rate_limited_total{system}` (429s).
  From the HTTP edge's hook (`pipeline.clients.http.request_listeners`).
- `pipeline_http_retries_total{system}`: retries scheduled after a transient failure (stamina's on-retry hook).
- `pipeline_limiter_wait_seconds_total`, `pipeline_limiter_grants_total`, `pipeline_limiter_waiting`: the
  PowerOffice key's limiter, read when scraped (average wait = rate of the first / rate of the second).
- `pipeline_cycle_duration_seconds` and `pipeline_cycles_total{result}` (ok, failures, setup, and `error` for a
  cycle that itself failed); `pipeline_observed_total{tenant}` … `pipeline_failed_total{tenant}` from the reports.
- `pipeline_quarantined_entities{tenant}` (from the log), `pipeline_waiting_commands{tenant}` (from the reports),
  `pipeline_log_head_position`, `pipeline_last_cycle_timestamp_seconds`.
- PostgreSQL workers: `pipeline_workers_live`, `pipeline_worker_tenants_held`, `pipeline_worker_requests_per_second`.
- `pipeline_build_info{version,python}`, and prometheus_client's process, platform and GC collectors.

The HTTP and retry hooks are process-wide (the edge has no other way to reach us); they fan out to every live
`Metrics`, so tests may make as many as they like.
"""

from __future__ import annotations

import platform
import weakref
from collections.abc import Callable, Iterator
from typing import Protocol

import stamina.instrumentation
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.registry import Collector

from pipeline import __version__
from pipeline.clients import http
from pipeline.errors import ApiError

_LIVE: weakref.WeakSet[Metrics] = weakref.WeakSet()
_HOOKED = False


class LimiterView(Protocol):
    """What the metrics read from a rate limiter (`pipeline.clients.ratelimit.RateLimiter`)."""

    @property
    def waiting(self) -> int: ...

    granted: int
    waited: float


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Info("pipeline_build", "Version of the running program", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        self.http_requests = Counter(
            "pipeline_http_requests", "HTTP requests to the two APIs, by answer", ["system", "status"], registry=r
        )
        self.http_seconds = Histogram(
            "pipeline_http_request_duration_seconds",
            "Time from sending a request to its answer",
            ["system"],
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.rate_limited = Counter("pipeline_http_rate_limited", "Answers 429 (rate limited)", ["system"], registry=r)
        self.retries = Counter(
            "pipeline_http_retries", "Retries scheduled after a transient failure", ["system"], registry=r
        )
        self.cycles = Counter("pipeline_cycles", "Sync cycles ended, by result", ["result"], registry=r)
        self.cycle_seconds = Histogram(
            "pipeline_cycle_duration_seconds",
            "Duration of a sync cycle (failed ones included)",
            registry=r,
            buckets=(1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600),
        )
        self.observed = Counter("pipeline_observed", "Observations appended", ["tenant"], registry=r)
        self.commands = Counter("pipeline_commands", "Commands appended", ["tenant"], registry=r)
        self.delivered = Counter("pipeline_delivered", "Commands delivered", ["tenant"], registry=r)
        self.skipped = Counter("pipeline_skipped", "Commands deliberately not sent", ["tenant"], registry=r)
        self.failed = Counter("pipeline_failed", "Entities that failed (mapping or delivery)", ["tenant"], registry=r)
        self.waiting = Gauge(
            "pipeline_waiting_commands",
            "Commands waiting (behind a quarantine or for articles)",
            ["tenant"],
            registry=r,
        )
        self.quarantined = Gauge(
            "pipeline_quarantined_entities",
            "Entities held: newest outcome a permanent failure, or a standing mapping failure",
            ["tenant"],
            registry=r,
        )
        self.unmapped = Gauge(
            "pipeline_unmapped_entities",
            "Entities whose newest record cannot be read or mapped (standing, whenever it began)",
            ["tenant"],
            registry=r,
        )
        self.degraded = Gauge(
            "pipeline_degraded",
            "1 while a sender's circuit breaker for the tenant is open (its system looks down), else 0",
            ["tenant"],
            registry=r,
        )
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
        self.log_head = Gauge("pipeline_log_head_position", "Newest position in the event log", registry=r)
        self.last_cycle = Gauge("pipeline_last_cycle_timestamp_seconds", "End of the last cycle", registry=r)
        # PostgreSQL workers (`pipeline.workers`), set when scraped; absent on SQLite.
        self.workers_live = Gauge("pipeline_workers_live", "Live workers sharing the PostgreSQL log", registry=r)
        self.tenants_held = Gauge("pipeline_worker_tenants_held", "Tenants whose lease this worker holds", registry=r)
        self.worker_share = Gauge(
            "pipeline_worker_requests_per_second", "This worker's share of the PowerOffice key's rate", registry=r
        )
        self.limiter = _LimiterCollector()
        r.register(self.limiter)
        # Others who want every HTTP answer (the status page: progress, PowerOffice's request rate).
        self.listeners: list[Callable[[str, int | None, float, str | None], None]] = []
        _install_hooks()
        _LIVE.add(self)

    def request(self, system: str, status: int | None, seconds: float, tenant: str | None = None) -> None:
        self.http_requests.labels(system, "error" if status is None else str(status)).inc()
        self.http_seconds.labels(system).observe(seconds)
        if status == 429:
            self.rate_limited.labels(system).inc()
        for listener in self.listeners:
            listener(system, status, seconds, tenant)


class _LimiterCollector(Collector):
    """Reads the PowerOffice key's limiter when scraped (the limiter keeps the running totals)."""

    def __init__(self) -> None:
        self.limiter: LimiterView | None = None

    def collect(self) -> Iterator[Metric]:
        lim = self.limiter
        wait = CounterMetricFamily(
            "pipeline_limiter_wait_seconds", "Time requests spent waiting at the PowerOffice limiter"
        )
        grants = CounterMetricFamily("pipeline_limiter_grants", "Requests the PowerOffice limiter let start")
        waiting = GaugeMetricFamily("pipeline_limiter_waiting", "Requests queued at the PowerOffice limiter now")
        if lim is not None:
            wait.add_metric([], lim.waited)
            grants.add_metric([], lim.granted)
            waiting.add_metric([], lim.waiting)
        yield from (wait, grants, waiting)


def _on_request(system: str, method: str, status: int | None, seconds: float, tenant: str | None) -> None:
    for m in list(_LIVE):
        m.request(system, status, seconds, tenant)


def _on_retry(details: stamina.instrumentation.RetryDetails) -> None:
    exc = details.caused_by
    system = exc.system if isinstance(exc, ApiError) else "other"
    for m in list(_LIVE):
        m.retries.labels(system).inc()


def _install_hooks() -> None:
    """Subscribe to the HTTP edge and to stamina's retries, once per process, keeping any hooks already set."""
    global _HOOKED
    if _HOOKED:
        return
    _HOOKED = True
    http.request_listeners.append(_on_request)
    stamina.instrumentation.set_on_retry_hooks([*stamina.instrumentation.get_on_retry_hooks(), _on_retry])
