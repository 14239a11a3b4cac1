"""Standing problems (rule 8, counts tell the truth): what holds an entity now, whenever it began, and how the
cycle's exit code, summary and metrics show it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.eventlog.base import NewEvent
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import (
    ArticleUpsertRequested,
    CommandFailed,
    CommandSkipped,
    CommandSucceeded,
    EntityRedriven,
    Event,
    MappingFailed,
    ObservationSkipped,
    ProductObserved,
)
from pipeline.problems import standing_problems
from tests.eventlog_contract import StepClock


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[SqliteEventLog]:
    log = await SqliteEventLog.open(tmp_path / "p.db", clock=StepClock())
    try:
        yield log
    finally:
        await log.close()


class Script:
    """Appends events for one entity of tenant acme; `at(i)` is the position of the i-th event appended."""

    def __init__(self, log: SqliteEventLog) -> None:
        self.log = log
        self.positions: list[int] = []

    async def add(self, entity: str, make: Callable[[Script], Event], causation: int | None = None) -> int:
        event = make(self)
        await self.log.append([NewEvent("acme", entity, event, f"k{len(self.positions)}", causation=causation)])
        self.positions.append(await self.log.max_position())
        return self.positions[-1]

    def at(self, i: int) -> int:
        return self.positions[i]


ARTICLE = "article:A1"
PRODUCT = "product:7"


def command(_: Script) -> Event:
    return ArticleUpsertRequested({"goodsOwnerId": 1, "articleNumber": "A1"})


def failed(permanent: bool) -> Callable[[Script], Event]:
    return lambda s: CommandFailed(s.at(0), 400 if permanent else 503, "no", 1, permanent)


def succeeded(s: Script) -> Event:
    return CommandSucceeded(s.at(0), {}, 1)


def skipped(s: Script) -> Event:
    return CommandSkipped(s.at(0), "identical")


def redriven(_: Script) -> Event:
    return EntityRedriven("fixed", "operator")


# (entity, event maker) appended in order after a first article command (index 0).
Steps = list[Callable[[Script], Event]]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("steps", "held"),
    [
        pytest.param([failed(True)], True, id="rule8-permanent-failure-quarantines"),
        pytest.param([failed(False)], False, id="rule8-transient-failure-is-not-a-quarantine"),
        pytest.param([failed(True), succeeded], False, id="rule8-delivery-ends-quarantine"),
        pytest.param([failed(True), redriven], False, id="rule8-redrive-ends-quarantine"),
        pytest.param([failed(True), skipped], True, id="rule8-skip-does-not-end-quarantine"),
        pytest.param([failed(True), failed(False)], True, id="rule8-transient-after-permanent-still-held"),
        pytest.param([failed(True), redriven, failed(False)], False, id="rule8-transient-after-redrive-not-held"),
        pytest.param([failed(True), redriven, failed(True)], True, id="rule8-failed-again-after-redrive"),
    ],
)
async def test_rule8_quarantine_stands_until_delivered_or_redriven(
    log: SqliteEventLog, steps: Steps, held: bool
) -> None:
    """An entity is quarantined from a permanent failure until a delivery or a re-drive, whatever came between."""
    script = Script(log)
    await script.add(ARTICLE, command)
    for make in steps:
        await script.add(ARTICLE, make, causation=script.at(0))
    problems = await standing_problems(log, "acme")
    assert [e.entity for e in problems.quarantined] == ([ARTICLE] if held else [])
    assert problems.count == (1 if held else 0)


def observed(_: Script) -> Event:
    return ProductObserved({"Id": 7, "Code": None})


def mapfail(i: int) -> Callable[[Script], Event]:
    return lambda s: MappingFailed(s.at(i), "Code", "no code")


def settled(i: int) -> Callable[[Script], Event]:
    return lambda s: ObservationSkipped(s.at(i), "settled")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("steps", "stands"),
    [
        pytest.param([(observed, None), (mapfail(0), 0)], True, id="rule8-mapping-failure-stands"),
        pytest.param(
            [(observed, None), (mapfail(0), 0), (observed, None)], False, id="rule8-newer-observation-ends-it"
        ),
        pytest.param(
            [(observed, None), (mapfail(0), 0), (observed, None), (mapfail(2), 2)],
            True,
            id="rule8-newer-observation-failing-again-stands",
        ),
        pytest.param(
            [(observed, None), (mapfail(0), 0), (settled(0), 0)], False, id="rule8-settled-observation-ends-it"
        ),
    ],
)
async def test_rule8_mapping_failure_stands_until_its_record_changes(
    log: SqliteEventLog, steps: list[tuple[Callable[[Script], Event], int | None]], stands: bool
) -> None:
    """A mapping failure counts until a newer observation of the record comes, or something else is made of the
    same observation; not only in the cycle that met it."""
    script = Script(log)
    for make, cause in steps:
        await script.add(PRODUCT, make, causation=None if cause is None else script.at(cause))
    problems = await standing_problems(log, "acme")
    assert [e.entity for e in problems.mapping_failures] == ([PRODUCT] if stands else [])
    assert (await standing_problems(log, "other")).count == 0


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.anyio
async def test_rule8_a_standing_failure_keeps_sync_failing(tmp_path: Path) -> None:
    """A product that cannot be mapped fails the first cycle and every later one until it is fixed; the summary
    table and /metrics show it for its tenant; fixing it brings exit code 0 back."""
    from rich.console import Console

    from pipeline.console import print_cycle
    from pipeline.fakes.world import fake_world
    from pipeline.runtime import Runtime
    from pipeline.web import Status

    async with fake_world(1, products=6, customers=3, invoices=4, requests_per_second=1000) as world:
        t = world.tenants[0]
        code = next(p["Code"] for p in t.company.products.values() if p.get("Code"))
        world.poweroffice.update_product(t.client_key, code, UnitPrice=1e308)
        settings = world.settings(tmp_path / "p.db", requests_per_second=1000)
        reports = []
        async with Runtime(settings) as runtime:
            for _ in range(2):
                reports.append(await runtime.cycle())
            world.poweroffice.update_product(t.client_key, code, UnitPrice=10.0)
            reports.append(await runtime.cycle())
    first, second, fixed = reports
    assert first.exit_code == 1
    assert second.exit_code == 1, second
    assert second.tenants[t.name].unmapped == 1
    assert fixed.exit_code == 0, fixed
    assert fixed.tenants[t.name].unmapped == 0

    console = Console(record=True, width=200)
    print_cycle(console, second)
    text = console.export_text()
    assert f"{t.name}: 0 quarantined, 1 unmapped" in text
    status = Status(900, lambda: second.started)
    status.record(second, second.started)
    metrics = _metrics(status)
    assert metrics[f'pipeline_unmapped_entities{{tenant="{t.name}"}}'] == 1.0


def _metrics(status: Any) -> dict[str, float]:
    from prometheus_client import generate_latest

    out = {}
    for line in generate_latest(status.metrics.registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out
