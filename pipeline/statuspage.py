"""The status page: a view-model computed from the service's status and the log, and its HTML.

`read_log_view` asks the log what stands (quarantined and pending entities); `build_view` joins it with what the
loop reported (`pipeline.web.Status`) into a `PageView`; `render_page` turns that into one HTML document with an
inline SVG chart, a meta refresh and no script at all. Every text that comes from a remote system, the log or the
config is HTML-escaped here, and entity names are URL-quoted in links.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pipeline import audit
from pipeline.eventlog.base import EventLog, StoredEvent
from pipeline.eventlog.sqlite import format_time, recorded_time
from pipeline.events import (
    COMMAND_TYPES,
    OUTCOME_TYPES,
    CommandFailed,
    EntityRedriven,
    MappingFailed,
    ObservationRejected,
)
from pipeline.freshness import percentile
from pipeline.problems import standing_problems

if TYPE_CHECKING:
    from pipeline.eventlog import AnyLog
    from pipeline.runtime import TenantState
    from pipeline.web import CyclePoint, Status

REFRESH_SECONDS = 10
LIST_LIMIT = 50  # entities shown per list; the rest are counted
PENDING_LIMIT = 500  # pending commands read per refresh
SENDER_STAGES = ("sender.ongoing", "sender.poweroffice")  # the senders' checkpoint names

STATE_WORDS = {
    "ok": "syncing normally",
    "waiting": "commands waiting to be sent",
    "quarantined": "some entities are held until fixed and re-driven",
    "refused": "the credentials are refused",
    "unreachable": "a system could not be reached",
    "failed": "the last cycle failed (the event log, or a bug); the next one retries",
    "degraded": "a system looks down for this goods owner: sending paused, commands wait (none lost)",
    "starting": "no cycle has finished yet",
    "elsewhere": "another worker runs it now: its page tells how it goes",
    "unheld": "no worker holds it at the moment; a live worker takes it at its next heartbeat",
}


@dataclass(frozen=True, slots=True)
class Held:
    """A quarantined entity: its newest outcome is a permanent failure, or its newest observation cannot be mapped."""

    tenant: str
    entity: str
    reason: str
    since: str
    position: int
    subject: str = ""  # what the entity is, in words (the failed command or the observation that can't be mapped)


@dataclass(frozen=True, slots=True)
class Pending:
    """An entity whose newest command has no outcome yet, or failed transiently and goes again."""

    tenant: str
    entity: str
    reason: str
    since: str


@dataclass(frozen=True, slots=True)
class LogView:
    head: int
    held: Sequence[Held]
    pending: Sequence[Pending]


@dataclass(frozen=True, slots=True)
class RateUse:
    """The PowerOffice subscription key's use of its request rate."""

    limit: float
    last_10s: float  # requests per second, averaged over the last 10 s
    peak_second: int  # the most requests that started in any one second of the last minute
    queued: int  # requests waiting at the limiter now
    rate_limited: int  # 429 answers since the start


@dataclass(frozen=True, slots=True)
class TenantRow:
    name: str
    state: str
    error: str | None
    last_sync: datetime | None
    next_cycle: datetime | None
    held: int
    pending: int
    waiting: int
    delivered: int  # in the last cycle
    observed: int  # in the last cycle
    freshness_p95: float | None = None  # seconds, over the latest deliveries (`pipeline.freshness`)
    reconcile: str | None = None  # the last scheduled reconcile: "agreed" or its differences per kind
    holder: str | None = None  # PostgreSQL workers: "this worker", another worker by id and host, or "unheld"


@dataclass(frozen=True, slots=True)
class PageView:
    now: datetime
    started: datetime
    live: str
    live_ok: bool
    cycle_error: str | None
    running_since: datetime | None
    tenants: Sequence[TenantRow]
    held: Sequence[Held]
    pending: Sequence[Pending]
    totals: dict[str, int]
    chart: Sequence[CyclePoint]
    rate: RateUse
    head: int
    worker: str | None = None  # PostgreSQL: this worker, the live workers and its share of the key


# --------------------------------------------------------------------------------------------- from the log


async def read_log_view(log: AnyLog, tenants: Sequence[str] = ()) -> LogView:
    """What stands in the log: the held entities (`pipeline.problems`: quarantined, unmapped, rejected; the same
    answer as `audit failures` and `sync`'s exit code), and entities whose newest command waits for an outcome
    or failed transiently.

    Unanswered commands are looked for above the lowest sender checkpoint of `tenants` (every command below it
    has an outcome or is held by a quarantine, which the held list shows); without tenants, in the whole log."""
    held: list[Held] = []
    pending: list[Pending] = []
    for tenant in tenants or sorted(await audit.tenants(log)):
        problems = await standing_problems(log, tenant)
        for stored in problems.quarantined:
            failed = stored.event
            assert isinstance(failed, CommandFailed)
            status = f" (status {failed.status})" if failed.status is not None else ""
            subject = await _subject(log, failed.command, len(held))
            held.append(_held_row(stored, f"{failed.message}{status}", subject))
        for stored in problems.mapping_failures:
            unmapped = stored.event
            assert isinstance(unmapped, MappingFailed)
            subject = await _subject(log, unmapped.source, len(held))
            held.append(_held_row(stored, f"cannot be mapped: {unmapped.field}: {unmapped.reason}", subject))
        for stored in problems.rejected:
            rejected = stored.event
            assert isinstance(rejected, ObservationRejected)
            held.append(_held_row(stored, f"cannot be read: {rejected.field}: {rejected.reason}"))
        # Entities whose newest outcome is a transient failure (heads only): sent again next cycle.
        failing = await log.entities(
            [CommandFailed.TYPE], tenant=tenant, newest_of=(*OUTCOME_TYPES, EntityRedriven.TYPE)
        )
        quarantined = {h.entity for h in held if h.tenant == tenant}
        if failing - quarantined:
            latest = await log.latest([CommandFailed.TYPE], tenant=tenant, entities=failing - quarantined)
            for stored in latest.values():
                failed = stored.event
                assert isinstance(failed, CommandFailed)
                reason = f"failed after {failed.attempts} attempt(s), sent again next cycle: {failed.message}"
                pending.append(Pending(tenant, stored.entity, reason, format_time(stored.recorded_at)))
    held.sort(key=lambda h: h.position)
    for tenant, entity, recorded_at, p in await _released(log):
        pending.append(Pending(tenant, entity, f"re-driven ({p.get('reason')}): sent again next cycle", recorded_at))
    taken = {(h.tenant, h.entity) for h in held} | {(q.tenant, q.entity) for q in pending}
    floor = min([await log.checkpoint(stage, t) for t in tenants for stage in SENDER_STAGES], default=0)
    unanswered = await _unanswered(log, floor)
    open_articles = taken | {(t, e) for t, e, *_ in unanswered}
    for tenant, entity, type_, recorded_at, payload in unanswered:
        if (tenant, entity) in taken:
            continue
        reason = "not sent yet: goes out in the next cycle"
        if type_ == "order.upsert_requested":
            waits = [n for n in payload.get("article_numbers", []) if (tenant, f"article:{n}") in open_articles]
            if waits:
                reason = "waits for its article(s) " + ", ".join(waits[:5]) + (" …" if len(waits) > 5 else "")
        pending.append(Pending(tenant, entity, reason, recorded_at))
    return LogView(head=await log.max_position(), held=held, pending=pending)


def _held_row(stored: StoredEvent, reason: str, subject: str = "") -> Held:
    return Held(stored.tenant, stored.entity, reason, format_time(stored.recorded_at), stored.position, subject)


async def _released(log: AnyLog) -> list[tuple[str, str, str, dict[str, Any]]]:
    """Entities an operator re-drove whose newest command has not been answered since."""
    rows = await log.query(
        "SELECT r.tenant, r.entity, r.recorded_at, r.payload FROM events r WHERE r.type = ?"
        " AND NOT EXISTS (SELECT 1 FROM events n WHERE n.tenant = r.tenant AND n.entity = r.entity"
        f" AND n.position > r.position AND n.type IN (?, {', '.join('?' * len(OUTCOME_TYPES))}))"
        " ORDER BY r.position",
        [EntityRedriven.TYPE, EntityRedriven.TYPE, *OUTCOME_TYPES],
    )
    return [(str(t), str(e), format_time(recorded_time(at)), json.loads(p)) for t, e, at, p in rows]


async def _subject(log: EventLog, position: object, shown: int) -> str:
    """The event at `position` in words (looked up only for the entities the page lists)."""
    if not isinstance(position, int) or shown >= LIST_LIMIT:
        return ""
    event = await log.get(position)
    return audit.summarize(event) if event is not None else ""


async def _unanswered(log: AnyLog, floor: int) -> list[tuple[str, str, str, str, dict[str, Any]]]:
    """Each entity's newest command above `floor` when nothing answered it (outcomes point at it by `causation`)."""
    cmd = ", ".join("?" * len(COMMAND_TYPES))
    out = ", ".join("?" * len(OUTCOME_TYPES))
    rows = await log.query(
        f"SELECT c.tenant, c.entity, c.type, c.recorded_at, c.payload FROM events c"
        f" WHERE c.position > ? AND c.type IN ({cmd})"
        f" AND NOT EXISTS (SELECT 1 FROM events o WHERE o.causation = c.position AND o.type IN ({out}))"
        f" AND NOT EXISTS (SELECT 1 FROM events n WHERE n.tenant = c.tenant AND n.entity = c.entity"
        f" AND n.position > c.position AND n.type IN ({cmd}))"
        f" ORDER BY c.position LIMIT {PENDING_LIMIT}",
        [floor, *COMMAND_TYPES, *OUTCOME_TYPES, *COMMAND_TYPES],
    )
    return [(str(t), str(e), str(ty), format_time(recorded_time(at)), json.loads(p)) for t, e, ty, at, p in rows]


async def with_causes(log: EventLog, rows: list[audit.Row], limit: int = 20) -> list[audit.Row]:
    """`rows` (an entity's history) plus the chain above it: the observation that caused its first command."""
    have = {r.position for r in rows}
    extra: dict[int, audit.Row] = {}
    for r in rows:
        if r.causation is not None and r.causation not in have and len(extra) < limit:
            for up in await audit.lineage(log, r.causation):
                if up.position not in have and up.position <= r.causation:
                    extra[up.position] = up
            have |= extra.keys()
    return sorted([*rows, *extra.values()], key=lambda r: r.position)


# ------------------------------------------------------------------------------------------- the view-model


def _error_words(state: str, last_error: str | None, held: Held | None) -> str | None:
    """The error beside a tenant's state: the cycle's own error, or the newest quarantined entity's reason."""
    if state in ("failed", "refused", "unreachable", "degraded"):
        return last_error
    if state == "quarantined" and held is not None:
        return f"newest: {held.entity}: {held.reason}"
    return None


def _p95(recent: Sequence[float] | None) -> float | None:
    return percentile(list(recent), 0.95) if recent else None


def _reconcile_words(state: TenantState | None) -> str | None:
    if state is None or state.reconcile_differences is None:
        return None
    found = {kind: n for kind, n in state.reconcile_differences.items() if n}
    return "agreed" if not found else ", ".join(f"{kind}: {n} differ" for kind, n in found.items())


def build_view(status: Status, log_view: LogView, now: datetime) -> PageView:
    """Everything the page shows, decided here (so tests need no browser)."""
    newest_held: dict[str, Held] = {}
    held_by: dict[str, int] = {}
    pending_by: dict[str, int] = {}
    for h in log_view.held:
        held_by[h.tenant] = held_by.get(h.tenant, 0) + 1
        if h.tenant not in newest_held or h.position > newest_held[h.tenant].position:
            newest_held[h.tenant] = h
    for q in log_view.pending:
        pending_by[q.tenant] = pending_by.get(q.tenant, 0) + 1
    rows = []
    board = status.board
    for ts in status.tenant_status.values():
        state = ts.state
        waiting = ts.last.waiting if ts.last else 0
        if state == "ok":
            if held_by.get(ts.name):
                state = "quarantined"
            elif waiting or pending_by.get(ts.name):
                state = "waiting"
        if board is not None and ts.name not in board.running:
            # What this worker last saw of a tenant it no longer runs (or never ran) is stale: say who runs it.
            if board.held_elsewhere(ts.name) is not None:
                state = "elsewhere"
            elif board.holder(ts.name) == "unheld":
                state = "unheld"
        rows.append(
            TenantRow(
                name=ts.name,
                state=state,
                error=_error_words(state, ts.last_error, newest_held.get(ts.name)),
                last_sync=ts.last_ok,
                next_cycle=status.next_by_tenant.get(ts.name, status.next_at),
                held=held_by.get(ts.name, 0),
                pending=pending_by.get(ts.name, 0),
                waiting=waiting,
                delivered=ts.last.delivered if ts.last else 0,
                observed=ts.last.observed if ts.last else 0,
                freshness_p95=_p95(status.recent_freshness.get(ts.name)),
                reconcile=_reconcile_words(status.states.get(ts.name)),
                holder=board.holder(ts.name) if board is not None else None,
            )
        )
    t = status.totals
    live_ok, live = status.livez()
    return PageView(
        now=now,
        started=status.started,
        live=live,
        live_ok=live_ok,
        cycle_error=status.last_cycle_error,
        running_since=status.running_since,
        tenants=rows,
        held=list(log_view.held),
        pending=list(log_view.pending),
        totals={
            "cycles": t.cycles,
            "failed cycles": t.cycles_failed,
            "observed": t.observed,
            "commands": t.commands,
            "delivered": t.delivered,
            "skipped": t.skipped,
            "failed": t.failed,
        },
        chart=[p for p in status.history if p.ended >= now - timedelta(days=1)],
        rate=status.poweroffice_use(now),
        head=log_view.head,
        worker=None
        if board is None
        else f"{board.me.describe()} · {len(board.workers)} worker(s) live · this one holds"
        f" {len(board.running)} tenant(s) and sends up to {board.share:g} PowerOffice requests/s",
    )


# ------------------------------------------------------------------------------------------------- HTML


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def entity_href(tenant: str, entity: str) -> str:
    return f"/entity/{quote(tenant, safe='')}/{quote(entity, safe=':')}"


def when(at: datetime | None, now: datetime) -> str:
    """`22:05:03 (12 s ago)` (UTC; the date too when it is not today's), or `never`."""
    if at is None:
        return "never"
    delta = (at - now).total_seconds()
    ago = abs(delta)
    span = f"{ago:.0f} s" if ago < 120 else f"{ago / 60:.0f} min" if ago < 7200 else f"{ago / 3600:.1f} h"
    rel = f"in {span}" if delta > 0 else f"{span} ago"
    shown = f"{at:%H:%M:%S}" if at.date() == now.date() else f"{at:%Y-%m-%d %H:%M:%S}"
    return f"{shown} ({rel})"


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d232a;background:#f7f8fa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff;min-width:40em}
th,td{border:1px solid #d8dde3;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.state{display:inline-block;padding:.05em .5em;border-radius:.8em;font-weight:600;color:#fff}
.ok{background:#2e7d32}.waiting{background:#b26a00}.quarantined{background:#c62828}
.refused{background:#6a1b9a}.failed{background:#b71c1c}.degraded{background:#e65100}.unreachable{background:#37474f}.starting{background:#607d8b}
.elsewhere{background:#78909c}.unheld{background:#8d6e63}
.muted{color:#5f6b76}.bad{color:#c62828;font-weight:600}
.bar{width:20em;height:.9em;background:#e3e7eb;border-radius:.3em;overflow:hidden;display:inline-block;
vertical-align:middle}.bar span{display:block;height:100%;background:#1565c0}
dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:0}dt{color:#5f6b76}dd{margin:0}
"""


def render_page(view: PageView) -> str:
    now = view.now
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        "<meta name=viewport content='width=device-width'>",
        f"<title>pipeline: {e(_summary(view))}</title><style>{_CSS}</style></head><body>",
        "<h1>pipeline</h1>",
        f"<p class=muted>{e(now.strftime('%Y-%m-%d %H:%M:%S'))} UTC (all times UTC) · up since"
        f" {e(when(view.started, now))}"
        f" · log head #{view.head} · refreshes every {REFRESH_SECONDS} s</p>",
    ]
    if view.worker:
        parts.append(f"<p>{e(view.worker)}</p>")
    loop = "a cycle is running since " + when(view.running_since, now) if view.running_since else view.live
    cls = "" if view.live_ok else " class=bad"
    parts.append(f"<p{cls}>loop: {e(loop)}</p>")
    if view.cycle_error:
        parts.append(f"<p class=bad>the last cycle failed: {e(view.cycle_error)}</p>")
    parts.append(_tenants(view))
    parts.append(_held(view))
    parts.append(_pending(view))
    parts.append("<h2>Events and deliveries per cycle, last 24 h</h2>")
    parts.append(chart_svg(view.chart, now))
    parts.append(_rate(view.rate))
    parts.append("<h2>Since the start</h2><dl>")
    parts += [f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in view.totals.items()]
    parts.append("</dl>")
    parts.append(
        "<p class=muted>Also: <a href=/metrics>/metrics</a> · <a href=/readyz>/readyz</a> · "
        "<a href=/livez>/livez</a></p></body></html>"
    )
    return "".join(parts)


def _parse(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _summary(view: PageView) -> str:
    bad = [t for t in view.tenants if t.state not in ("ok", "starting", "elsewhere", "unheld")]
    return "all ok" if not bad else ", ".join(f"{t.name} {t.state}" for t in bad)


def _tenants(view: PageView) -> str:
    now = view.now
    out = [
        "<h2>Goods owners</h2><table><tr><th>tenant<th>state<th>last successful sync<th>next cycle"
        "<th>quarantined<th>pending<th>freshness p95<th>reconcile<th>last cycle"
        + ("<th>held by" if any(t.holder is not None for t in view.tenants) else "")
        + "</tr>"
    ]
    for t in view.tenants:
        words = STATE_WORDS.get(t.state, "")
        detail = f"<br><span class=bad>{e(t.error)}</span>" if t.error else f"<br><span class=muted>{e(words)}</span>"
        out.append(
            f"<tr><td>{e(t.name)}</td><td><span class='state {e(t.state)}'>{e(t.state)}</span>{detail}</td>"
            f"<td>{e(when(t.last_sync, now))}</td><td>{e(when(t.next_cycle, now))}</td>"
            f"<td class=n>{t.held}</td><td class=n>{t.pending}</td>"
            f"<td class=n>{'' if t.freshness_p95 is None else f'{t.freshness_p95:.0f} s'}</td>"
            f"<td>{e(t.reconcile or '')}</td>"
            f"<td class=muted>{t.observed} observed, {t.delivered} delivered, {t.waiting} waiting</td>"
            + ("" if t.holder is None else f"<td>{e(t.holder)}</td>")
            + "</tr>"
        )
    out.append("</table>")
    return "".join(out)


def _held(view: PageView) -> str:
    if not view.held:
        return "<h2>Quarantined</h2><p class=muted>nothing is quarantined</p>"
    out = [
        f"<h2>Quarantined ({len(view.held)})</h2><p class=muted>held until fixed at the source or re-driven"
        " (<code>pipeline redrive TENANT ENTITY</code>)</p>"
        "<table><tr><th>tenant<th>entity<th>what<th>reason<th>since</tr>"
    ]
    for h in view.held[:LIST_LIMIT]:
        out.append(
            f"<tr><td>{e(h.tenant)}</td><td><a href='{e(entity_href(h.tenant, h.entity))}'>{e(h.entity)}</a></td>"
            f"<td class=muted>{e(h.subject)}</td><td>{e(h.reason)}</td>"
            f"<td class=muted>{e(when(_parse(h.since), view.now))}</td></tr>"
        )
    out.append("</table>")
    if len(view.held) > LIST_LIMIT:
        out.append(f"<p class=muted>… and {len(view.held) - LIST_LIMIT} more (pipeline audit failures)</p>")
    return "".join(out)


def _pending(view: PageView) -> str:
    if not view.pending:
        return "<h2>Pending</h2><p class=muted>nothing is waiting to be sent</p>"
    out = [f"<h2>Pending ({len(view.pending)})</h2><table><tr><th>tenant<th>entity<th>why<th>since</tr>"]
    for q in view.pending[:LIST_LIMIT]:
        out.append(
            f"<tr><td>{e(q.tenant)}</td><td><a href='{e(entity_href(q.tenant, q.entity))}'>{e(q.entity)}</a></td>"
            f"<td>{e(q.reason)}</td><td class=muted>{e(when(_parse(q.since), view.now))}</td></tr>"
        )
    out.append("</table>")
    if len(view.pending) > LIST_LIMIT:
        out.append(f"<p class=muted>… and {len(view.pending) - LIST_LIMIT} more</p>")
    return "".join(out)


def _rate(rate: RateUse) -> str:
    share = min(1.0, rate.last_10s / rate.limit) if rate.limit > 0 else 0.0
    return (
        "<h2>PowerOffice key</h2>"
        f"<p><span class=bar><span style='width:{share * 100:.0f}%'></span></span> "
        f"{rate.last_10s:.1f} of {rate.limit:g} requests/s (last 10 s)</p>"
        f"<p class=muted>busiest second in the last minute: {rate.peak_second} requests · "
        f"queued at the limiter now: {rate.queued} · 429 answers since the start: {rate.rate_limited}</p>"
    )


CHART_W, CHART_H, MAX_BARS, MIN_SLOTS = 720, 140, 96, 24


def chart_svg(points: Sequence[CyclePoint], now: datetime) -> str:
    """Bars per cycle (merged in groups when there are more than MAX_BARS): events appended and deliveries.

    Heights are on a square-root scale: a first cycle's backfill of thousands would otherwise flatten every
    later cycle into the axis. Each bar's exact figures are in its tooltip (SVG `<title>`, no script)."""
    if not points:
        return "<p class=muted>no cycle has finished yet</p>"
    group = -(-len(points) // MAX_BARS)
    bars: list[tuple[datetime, datetime, int, int, bool]] = []
    for i in range(0, len(points), group):
        chunk = points[i : i + group]
        bars.append(
            (
                chunk[0].ended,
                chunk[-1].ended,
                sum(p.events for p in chunk),
                sum(p.delivered for p in chunk),
                any(p.failed for p in chunk),
            )
        )
    top = max(1, max(max(b[2], b[3]) for b in bars))
    plot_h = CHART_H - 24
    slot = (CHART_W - 50) / max(MIN_SLOTS, len(bars))
    width = max(1.0, slot / 2 - 1)

    def height(value: int) -> float:
        return plot_h * math.sqrt(value / top)

    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{CHART_W}' height='{CHART_H}' role='img'"
        f" aria-label='events and deliveries per cycle' style='background:#fff;border:1px solid #d8dde3'>",
        f"<text x='4' y='12' font-size='10' fill='#5f6b76'>{top}</text>",
        f"<text x='4' y='{plot_h + 2}' font-size='10' fill='#5f6b76'>0</text>",
        f"<line x1='40' y1='{plot_h}' x2='{CHART_W - 4}' y2='{plot_h}' stroke='#d8dde3'/>",
    ]
    for i, (first, last, events, delivered, failed) in enumerate(bars):
        x = 44 + i * slot
        he, hd = height(events), height(delivered)
        span = f"{first:%H:%M:%S}" if first == last else f"{first:%H:%M}–{last:%H:%M}"
        tip = f"{span}: {events} events, {delivered} deliveries" + (" (a cycle failed)" if failed else "")
        out.append(f"<g><title>{e(tip)}</title>")
        out.append(f"<rect x='{x:.1f}' y='{plot_h - he:.1f}' width='{width:.1f}' height='{he:.1f}' fill='#90a4ae'/>")
        out.append(
            f"<rect x='{x + width:.1f}' y='{plot_h - hd:.1f}' width='{width:.1f}' height='{hd:.1f}' fill='#2e7d32'/>"
        )
        if failed:
            out.append(f"<rect x='{x:.1f}' y='{plot_h}' width='{2 * width:.1f}' height='4' fill='#c62828'/>")
        out.append("</g>")
    out.append(
        f"<text x='44' y='{CHART_H - 6}' font-size='10' fill='#5f6b76'>{e(f'{bars[0][0]:%H:%M}')}</text>"
        f"<text x='{CHART_W - 4}' y='{CHART_H - 6}' font-size='10' fill='#5f6b76' text-anchor='end'>"
        f"{e(f'{bars[-1][1]:%H:%M}')} UTC</text>"
        f"<rect x='200' y='{CHART_H - 14}' width='8' height='8' fill='#90a4ae'/>"
        f"<text x='211' y='{CHART_H - 6}' font-size='10'>events appended</text>"
        f"<rect x='310' y='{CHART_H - 14}' width='8' height='8' fill='#2e7d32'/>"
        f"<text x='321' y='{CHART_H - 6}' font-size='10'>deliveries</text>"
        f"<text x='400' y='{CHART_H - 6}' font-size='10' fill='#5f6b76'>(square-root scale)</text></svg>"
    )
    return "".join(out)


def render_entity(tenant: str, entity: str, rows: Sequence[audit.Row], now: datetime) -> str:
    """One entity's history (and the observation above it) as a page."""
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{e(tenant)} {e(entity)}</title><style>{_CSS}pre{{white-space:pre-wrap;margin:0}}</style></head><body>",
        f"<p><a href='/'>← status</a></p><h1>{e(tenant)} · {e(entity)}</h1>",
    ]
    if not rows:
        parts.append("<p>The log holds nothing for this entity.</p></body></html>")
        return "".join(parts)
    parts.append(
        f"<p class=muted>{len(rows)} events, oldest first; the same as "
        f"<code>pipeline audit history {e(tenant)} {e(entity)}</code>. {e(now.strftime('%H:%M:%S'))} UTC</p>"
        "<table><tr><th>#<th>recorded<th>entity<th>event<th>what<th>caused by</tr>"
    )
    for r in rows:
        payload = json.dumps(r.payload, indent=1, ensure_ascii=False, default=str)
        cls = " class=bad" if r.type in ("command.failed", "mapping.failed") else ""
        parts.append(
            f"<tr><td class=n>{r.position}</td><td class=muted>{e(r.recorded_at[:19].replace('T', ' '))}</td>"
            f"<td>{e(r.entity)}</td><td{cls}>{e(r.type)}</td>"
            f"<td>{e(r.summary)}<details><summary class=muted>payload</summary><pre>{e(payload)}</pre></details></td>"
            f"<td class=n>{'' if r.causation is None else f'#{r.causation}'}</td></tr>"
        )
    parts.append("</table></body></html>")
    return "".join(parts)
