"""Remote text is data: nothing a server says is read as rich markup or as a format string, anywhere it is shown."""

from __future__ import annotations

import io
import logging
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from pipeline.audit import Row
from pipeline.console import print_cycle, print_replay, print_rows, print_table
from pipeline.fakes.faults import Fault
from pipeline.fakes.world import World, fake_world
from pipeline.replay import Change, ReplayReport
from pipeline.runtime import CycleReport, Runtime, TenantReport

NOW = datetime.now(UTC)
# What a careless server may say: closing tags without opening ones, styles, %-format and str.format fields.
NASTY = "[/x] [bold]loud[/bold] [red] %s %(name)s {0} {name} \\[escaped] [link=http://x]click[/link]"


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=400, color_system=None), out


def test_cycle_summary_prints_remote_errors_literally() -> None:
    """An error holding `[/x]` no longer raises MarkupError; every character of it is printed as it came."""
    report = CycleReport(
        NOW, {"acme": TenantReport("acme", failed=1, errors=[f"ongoing PUT /articles -> 400: {NASTY}"])}
    )
    shown, out = console()
    print_cycle(shown, report)
    assert NASTY in out.getvalue()


def test_replay_audit_and_sql_output_print_remote_text_literally() -> None:
    """Entity names, field values, audit summaries and SQL results come from servers or the log: all literal."""
    shown, out = console()
    report = ReplayReport(NOW, NOW, dry_run=True)
    report.changes.append(Change("acme", f"article:{NASTY}", 7, [(f"articleName{NASTY}", "a", NASTY)], new=False))
    print_replay(shown, report)
    row = Row(9, "2026-01-01T00:00:00Z", "acme", f"article:{NASTY}", "command.failed", 7, None, NASTY, {})
    print_rows(shown, [row], as_json=False)
    print_table(shown, ("c0", "c1"), [(NASTY, 1)], as_json=False)
    text = out.getvalue()
    assert text.count("[/x] [bold]loud[/bold]") >= 4
    assert f"article:{NASTY}" in text
    assert orjson.dumps(NASTY).decode()[:70] in text  # the replay diff shows values as JSON, cut at 80


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with fake_world(2, products=6, customers=3, invoices=4, now=NOW, requests_per_second=500) as w:
        yield w


@pytest.mark.anyio
async def test_a_sync_whose_server_answers_markup_and_format_fields_reports_them_verbatim(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the real clients, sender, log and console: an Ongoing 400 saying `[/x] … %s {0}` is stored, logged
    and printed as that text, and the sync's summary prints without error."""
    caplog.set_level(logging.WARNING)
    body = orjson.dumps({"Message": NASTY})
    # Two goods owners: whichever one the invoice-lines failure hits, the other one's article writes meet the 400s.
    world.ongoing.faults.add(Fault("status", status=400, body=body), method="PUT", path="/articles", times=2)
    world.poweroffice.faults.add(Fault("status", status=400, body=body), path="/Lines", times=1)
    settings = world.settings(tmp_path / "pipeline.db", requests_per_second=500)
    async with Runtime(settings, clock=lambda: NOW) as runtime:
        report = await runtime.cycle()
    shown, out = console()
    print_cycle(shown, report)
    printed = out.getvalue()
    assert NASTY in printed
    with sqlite3.connect(settings.database) as db:
        failed = [
            orjson.loads(p)["message"]
            for (p,) in db.execute("SELECT payload FROM events WHERE type = ?", ("command.failed",))
        ]
    assert any(NASTY in message for message in failed)
    logged = [r.getMessage() for r in caplog.records]
    assert any(NASTY in line for line in logged)
