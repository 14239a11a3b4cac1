"""What the commands print: cycle summaries, replay previews, audit rows. Output only; no decisions here.

Remote text is data: anything that came from a server or the log (error details, entity names, payloads, SQL
results) is printed as plain `Text`, never parsed as rich markup, and is scrubbed of secrets once more on its
way out (`pipeline.errors.scrub`). Only this module's own fixed strings use markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline.audit import Row
from pipeline.errors import scrub
from pipeline.replay import ReplayReport
from pipeline.runtime import CycleReport


def cycle_table(report: CycleReport, title: str = "sync") -> Table:
    table = Table(title=f"{title} started {report.started:%Y-%m-%d %H:%M:%S} UTC")
    for column in ("tenant", "observed", "commands", "delivered", "skipped", "failed", "waiting"):
        table.add_column(column, justify="left" if column == "tenant" else "right")
    for t in report.tenants.values():
        table.add_row(
            Text(t.name),
            str(t.observed),
            str(t.commands),
            str(t.delivered),
            str(t.skipped),
            Text(str(t.failed), style="red") if t.failed else "0",
            str(t.waiting),
        )
    return table


LEGEND = (
    "observed: new records read · commands: writes queued · delivered: writes done · skipped: writes not needed"
    " (superseded, unchanged, order started) and records that make none (filtered, not a stock item) ·"
    " failed: mapping or delivery failures · waiting: held by a quarantine or by undelivered articles"
)


WAITS_SHOWN = 5  # waiting entities named in the summary; the status page and audit have them all


def print_cycle(console: Console, report: CycleReport, title: str = "sync") -> None:
    console.print(cycle_table(report, title))
    console.print(LEGEND, highlight=False, markup=False)
    for t in report.tenants.values():
        if t.held_by:  # PostgreSQL: another worker runs this tenant's cycles
            held = Text.assemble((t.name, "yellow"), ": not run here: held by ", remote(t.held_by))
            console.print(held, highlight=False)
        for error in t.errors:
            console.print(Text.assemble((t.name, "red"), ": ", remote(error)), highlight=False)
        if t.degraded:
            console.print(Text.assemble((t.name, "red"), ": degraded: ", remote(t.degraded)), highlight=False)
        if t.waits:
            shown = "; ".join(f"{entity} {why}" for entity, why in sorted(t.waits.items())[:WAITS_SHOWN])
            more = f" (and {len(t.waits) - WAITS_SHOWN} more)" if len(t.waits) > WAITS_SHOWN else ""
            console.print(
                Text.assemble((t.name, "yellow"), f": {len(t.waits)} waiting: ", remote(shown + more)), highlight=False
            )
        if t.quarantined or t.unmapped:
            console.print(
                Text.assemble(
                    (t.name, "red"),
                    f": {t.quarantined} quarantined, {t.unmapped} unmapped"
                    " (standing, whenever they began: `pipeline audit failures` lists them)",
                ),
                highlight=False,
            )


def print_replay(console: Console, report: ReplayReport, *, limit: int = 200) -> None:
    mode = "preview (nothing sent)" if report.dry_run else "applied"
    console.print(f"replay {report.window_from.isoformat()} .. {report.window_to.isoformat()}: {mode}", markup=False)
    console.print(", ".join(f"{k} {v}" for k, v in report.counts().items()), markup=False)
    for change in report.changes[:limit]:
        label = "new" if change.new else "changed"
        console.print(remote(f"  {change.tenant} {change.entity} ({label}, from #{change.source})"), highlight=False)
        for path, before, after in change.fields[:30]:
            console.print(remote(f"      {path}: {_show(before)} -> {_show(after)}"), highlight=False)
    if len(report.changes) > limit:
        console.print(f"  ... and {len(report.changes) - limit} more")
    if report.failures:
        console.print(f"{len(report.failures)} observation(s) the current mapping cannot map:")
    for failure in report.failures:
        console.print(
            f"  {failure.tenant} {failure.entity} (from #{failure.source}): {failure.field}: {failure.reason}",
            highlight=False,
            markup=False,
        )


def print_rows(console: Console, rows: Sequence[Row], *, as_json: bool) -> None:
    if as_json:
        console.print_json(orjson.dumps([r.as_json() for r in rows]).decode())
        return
    if not rows:
        console.print("nothing found")
        return
    for r in rows:
        cause = f" <- #{r.causation}" if r.causation else ""
        console.print(
            remote(f"#{r.position:<7} {r.recorded_at[:19]} {r.tenant:<10} {r.entity:<48} {r.summary}{cause}"),
            highlight=False,
        )


def print_table(console: Console, header: Sequence[str], rows: Sequence[Sequence[Any]], *, as_json: bool) -> None:
    if as_json:
        console.print_json(orjson.dumps([dict(zip(header, r, strict=False)) for r in rows]).decode())
        return
    table = Table()
    for h in header:
        table.add_column(Text(h))
    for r in rows:
        table.add_row(*(remote(str(v)) for v in r))
    console.print(table)


def remote(text: str) -> Text:
    """Text from outside (a server, the log) made safe to print: scrubbed, never read as markup."""
    return Text(scrub(text))


def _show(value: Any) -> str:
    text = orjson.dumps(value).decode() if value is not None else "—"
    return text if len(text) <= 80 else text[:79] + "…"
