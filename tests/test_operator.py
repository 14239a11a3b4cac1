"""Operator features through the CLI: audit, replay (preview and apply), re-drive of a quarantined entity."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline.cli import main
from pipeline.config import load_settings
from pipeline.errors import MappingError
from pipeline.eventlog.sqlite import SCHEMA_VERSION, SqliteEventLog
from pipeline.events import ArticleUpsertRequested, ReplayRecorded
from pipeline.fakes.faults import Fault
from pipeline.fakes.world import World, fake_world
from pipeline.mapping import products as product_mapping
from pipeline.runtime import CycleReport, Runtime
from tests.ongoing_schema import fake_validator


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with fake_world(1, products=12, customers=6, invoices=16, requests_per_second=1000) as w:
        w.ongoing.validator = fake_validator  # every body the pipeline sends must fit the schema
        yield w
    assert w.ongoing.schema_violations == []


@pytest.fixture
def config(world: World, tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(world.config_toml("pipeline.db", requests_per_second=1000), encoding="utf-8")
    return path


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


async def cycle(config: Path) -> CycleReport:
    async with Runtime(load_settings(config)) as runtime:
        return await runtime.cycle()


async def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the CLI in a worker thread (it starts its own event loop) and capture what it printed."""
    capsys.readouterr()
    code = await anyio.to_thread.run_sync(main, list(args))
    return code, capsys.readouterr().out


@pytest.mark.anyio
async def test_audit_history_shows_an_invoice_from_observation_to_delivery(
    world: World, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """History of a paid invoice lists its observation, its order command and the delivery, in order."""
    await cycle(config)
    t = world.tenants[0]
    owner = world.ongoing.owner(t.goods_owner_id)
    invoice_id = next(iter(owner.orders.values())).body["goodsOwnerOrderId"]
    code, out = await cli(
        capsys, "--config", str(config), "audit", "--json", "history", t.name, f"invoice:{invoice_id}"
    )
    assert code == 0
    rows = json.loads(out)
    assert [r["type"] for r in rows][:3] == ["invoice.observed", "order.upsert_requested", "command.succeeded"]
    assert rows[1]["causation"] == rows[0]["position"]
    assert rows[2]["payload"]["command"] == rows[1]["position"]
    code, out = await cli(capsys, "--config", str(config), "audit", "stats")
    assert code == 0
    assert "order.upsert_requested" in out
    code, out = await cli(capsys, "--config", str(config), "audit", "failures")
    assert (code, out.strip()) == (0, "nothing found")


@pytest.mark.anyio
async def test_replay_previews_then_applies_a_mapping_fix(
    world: World, config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a mapping change, --dry-run shows per-field diffs and sends nothing; applying sends only those."""
    start = datetime.now(UTC) - timedelta(minutes=1)
    await cycle(config)
    t = world.tenants[0]
    writes = len(world.ongoing.writes())
    original = product_mapping.map_product

    def fixed(product: dict[str, Any], group: Any, tenant: Any) -> Any:
        mapped = original(product, group, tenant)
        if mapped.body["articleNumber"].endswith(("1", "3")):
            mapped.body["articleName"] = f"{mapped.body.get('articleName')} (fixed)"
        return mapped

    monkeypatch.setattr("pipeline.projectors.commands.map_product", fixed)
    window = ["--from", start.isoformat(), "--to", (datetime.now(UTC) + timedelta(minutes=1)).isoformat()]
    code, out = await cli(capsys, "--config", str(config), "replay", *window, "--kind", "products", "--dry-run")
    assert code == 0
    assert "articleName" in out
    assert "(fixed)" in out
    assert len(world.ongoing.writes()) == writes
    settings = load_settings(config)
    async with await SqliteEventLog.open(settings.database) as log:
        records = [e.event async for e in log.read(types=[ReplayRecorded.TYPE])]
        commands_before = [e async for e in log.read(types=[ArticleUpsertRequested.TYPE])]
    assert len(records) == 1
    assert isinstance(records[0], ReplayRecorded)
    assert records[0].dry_run
    changed = records[0].counts["changed"]
    assert changed > 0

    code, out = await cli(capsys, "--config", str(config), "replay", *window, "--kind", "products")
    assert code == 0
    async with await SqliteEventLog.open(settings.database) as log:
        commands_after = [e async for e in log.read(types=[ArticleUpsertRequested.TYPE])]
    assert len(commands_after) == len(commands_before) + changed
    async with Runtime(settings) as runtime:
        await runtime.send()
    new_writes = world.ongoing.writes()[writes:]
    assert len(new_writes) == changed
    for w in new_writes:
        assert w.entity is not None
        assert w.entity.endswith(("1", "3"))
        assert world.ongoing.article(t.goods_owner_id, w.entity.split(":", 1)[1])["articleName"].endswith("(fixed)")


@pytest.mark.anyio
async def test_permanent_failure_quarantines_one_article_until_redriven(
    world: World, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 400 on one article fails only that entity (exit 1); after a re-drive the next cycle delivers it."""
    t = world.tenants[0]
    world.ongoing.faults.add(
        Fault("status", status=400, body=b'{"Message":"The request is invalid."}'),
        method="PUT",
        path="/articles$",
        times=1,
    )
    first = await cycle(config)
    assert first.exit_code == 1
    assert first.tenants[t.name].failed == 1
    owner = world.ongoing.owner(t.goods_owner_id)
    missing = {p["Code"] for p in t.company.products.values()} - set(owner.articles)
    assert len(missing) == 1
    (entity_code,) = missing
    code, out = await cli(capsys, "--config", str(config), "audit", "failures")
    assert code == 1
    assert f"article:{entity_code}" in out
    again = await cycle(config)
    assert entity_code not in owner.articles  # still quarantined: not retried by itself
    assert again.tenants[t.name].failed == 0
    code, _ = await cli(capsys, "--config", str(config), "redrive", t.name, f"article:{entity_code}")
    assert code == 0
    await cycle(config)
    assert entity_code in owner.articles


@pytest.mark.anyio
async def test_replay_never_sends_an_older_observation_back(
    world: World, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a price change, replaying a window that holds the old observation changes nothing (no stale price)."""
    start = datetime.now(UTC) - timedelta(minutes=1)
    await cycle(config)
    t = world.tenants[0]
    product = next(iter(t.company.products.values()))
    world.poweroffice.set_price(t.client_key, product["Code"], 4321.0)
    await cycle(config)
    middle = datetime.now(UTC)
    end = middle + timedelta(minutes=1)

    whole = ["--from", start.isoformat(), "--to", end.isoformat()]
    code, out = await cli(capsys, "--config", str(config), "replay", *whole, "--kind", "products", "--dry-run")
    assert code == 0
    assert "changed 0" in out
    # A window holding only the first observation: the product was observed again after it, so it is left alone.
    settings = load_settings(config)
    async with await SqliteEventLog.open(settings.database) as log:
        first_cycle_end = max(
            [e.recorded_at async for e in log.read(types=["product.observed"], entity=f"product:{product['Id']}")]
        )
    early = ["--from", start.isoformat(), "--to", first_cycle_end.isoformat()]
    code, out = await cli(capsys, "--config", str(config), "replay", *early, "--kind", "products")
    assert code == 0
    assert "superseded 1" in out
    assert "appended 0" in out
    assert world.ongoing.article(t.goods_owner_id, product["Code"])["customerPrice"] == 4321.0


@pytest.mark.anyio
async def test_rule_redrive_refuses_unknown_tenants_entities_and_entities_not_quarantined(
    world: World, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """redrive exits 2 and appends nothing for a typo'd tenant or entity, or an entity that is not held."""
    await cycle(config)
    t = world.tenants[0]
    settings = load_settings(config)
    async with await SqliteEventLog.open(settings.database) as log:
        before = await log.max_position()
    delivered = f"article:{next(iter(world.ongoing.owner(t.goods_owner_id).articles))}"
    for args, expected in (
        (("nobody", delivered), "no tenant named 'nobody'"),
        ((t.name, "article:NO-SUCH"), "has no entity 'article:NO-SUCH'"),
        ((t.name, delivered), "is not quarantined (its last outcome is #"),
    ):
        capsys.readouterr()
        assert await anyio.to_thread.run_sync(main, ["--config", str(config), "redrive", *args]) == 2
        assert expected in capsys.readouterr().err
    async with await SqliteEventLog.open(settings.database) as log:
        assert await log.max_position() == before


@pytest.mark.anyio
async def test_rule_replay_lists_every_failed_entity_and_audit_failures_shows_them(
    world: World, config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mapping that now fails for some products: replay names each with its field and reason; once applied,
    `audit failures` lists them too."""
    start = datetime.now(UTC) - timedelta(minutes=1)
    await cycle(config)
    original = product_mapping.map_product

    def broken(product: dict[str, Any], group: Any, tenant: Any) -> Any:
        if str(product.get("Code", "")).endswith("2"):
            raise MappingError("UnitPrice", "refused by the new rule")
        return original(product, group, tenant)

    monkeypatch.setattr("pipeline.projectors.commands.map_product", broken)
    failing = sorted(
        f"product:{p['Id']}" for p in world.tenants[0].company.products.values() if str(p["Code"]).endswith("2")
    )
    assert failing
    window = ["--from", start.isoformat(), "--to", (datetime.now(UTC) + timedelta(minutes=1)).isoformat()]
    code, out = await cli(capsys, "--config", str(config), "replay", *window, "--kind", "products", "--dry-run")
    assert code == 0
    for entity in failing:
        assert f"{entity} (from #" in out
    assert "UnitPrice: refused by the new rule" in out
    code, out = await cli(capsys, "--config", str(config), "audit", "failures")
    assert code == 0  # a dry run records nothing but its replay.recorded
    code, out = await cli(capsys, "--config", str(config), "replay", *window, "--kind", "products")
    code, out = await cli(capsys, "--config", str(config), "audit", "--json", "failures")
    assert code == 1
    assert sorted(r["entity"] for r in json.loads(out)) == failing


@pytest.mark.anyio
async def test_audit_history_accepts_a_sku_an_order_number_or_an_invoice_number(
    world: World, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What people type (SKU, order number, invoice number) finds the same events as the internal keys."""
    await cycle(config)
    t = world.tenants[0]
    order = next(iter(world.ongoing.owner(t.goods_owner_id).orders.values())).body
    invoice = t.company.invoices[order["goodsOwnerOrderId"]]
    product = next(
        p for p in t.company.products.values() if p["Code"] in world.ongoing.owner(t.goods_owner_id).articles
    )
    base = ["--config", str(config), "audit", "history", t.name]
    code, out = await cli(capsys, *base, product["Code"], "--json")
    assert code == 0
    entities = {r["entity"] for r in json.loads(out)}
    assert {f"product:{product['Id']}", f"article:{product['Code']}"} <= entities
    for number in (str(order["orderNumber"]), str(invoice["InvoiceNo"])):
        code, out = await cli(capsys, *base, number, "--json")
        assert code == 0
        types = [r["type"] for r in json.loads(out)]
        assert types[:3] == ["invoice.observed", "order.upsert_requested", "command.succeeded"]
    capsys.readouterr()
    assert await anyio.to_thread.run_sync(main, [*base, "NO-SUCH-THING"]) == 2
    assert "no entity, SKU, order number or invoice number 'NO-SUCH-THING'" in capsys.readouterr().err
    assert await anyio.to_thread.run_sync(main, [*base, "product:999999999"]) == 2
    assert "'product:999999999'" in capsys.readouterr().err


@pytest.mark.anyio
async def test_rule_an_unknown_tenant_is_an_error_not_nothing_found(
    world: World, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`audit history`/`failures` with a tenant neither the config nor the log knows: exit 2, naming the tenants."""
    await cycle(config)
    for args in (["history", "nobody", "product:1"], ["failures", "--tenant", "nobody"]):
        capsys.readouterr()
        assert await anyio.to_thread.run_sync(main, ["--config", str(config), "audit", *args]) == 2
        err = capsys.readouterr().err
        assert "no tenant named 'nobody'" in err
        assert world.tenants[0].name in err


@pytest.mark.anyio
async def test_audit_lineage_from_an_observation_shows_the_command_and_its_delivery(
    world: World, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """lineage of an observation, of its command and of the outcome all show the same whole chain."""
    await cycle(config)
    settings = load_settings(config)
    async with await SqliteEventLog.open(settings.database) as log:
        observation = await anext(aiter(log.read(types=["product.observed"])))
    code, out = await cli(capsys, "--config", str(config), "audit", "--json", "lineage", str(observation.position))
    assert code == 0
    rows = json.loads(out)
    assert [r["type"] for r in rows] == ["product.observed", "article.upsert_requested", "command.succeeded"]
    for row in rows[1:]:
        code, again = await cli(capsys, "--config", str(config), "audit", "lineage", str(row["position"]), "--json")
        assert [r["position"] for r in json.loads(again)] == [r["position"] for r in rows]


@pytest.mark.anyio
async def test_audit_sql_names_columns_by_alias(world: World, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Columns are the query's own names; JSON keys too."""
    await cycle(config)
    query = "SELECT type AS kind, count(*) AS n FROM events WHERE type = 'product.observed' GROUP BY type"
    code, out = await cli(capsys, "--config", str(config), "audit", "sql", query, "--json")
    assert code == 0
    assert json.loads(out) == [{"kind": "product.observed", "n": len(world.tenants[0].company.products)}]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "query",
    [
        "ATTACH DATABASE '{tmp}/attached.db' AS x",
        "VACUUM INTO '{tmp}/vacuumed.db'",
        "PRAGMA user_version = 99",
        "PRAGMA journal_mode = DELETE",
        "INSERT INTO cursors VALUES ('a', 'b', 'c', 'd')",
        "CREATE TABLE scratch (a)",
        "DELETE FROM events",
    ],
)
async def test_rule_audit_sql_only_reads(
    world: World, config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], query: str
) -> None:
    """ATTACH, VACUUM INTO, pragma writes and every write are refused (exit 2); no file appears; nothing changes."""
    await cycle(config)
    before = files(tmp_path)
    code, _ = await cli(capsys, "--config", str(config), "audit", "sql", query.format(tmp=tmp_path))
    assert code == 2
    assert files(tmp_path) == before
    code, out = await cli(capsys, "--config", str(config), "audit", "sql", "PRAGMA user_version", "--json")
    assert code == 0
    assert json.loads(out)[0]["user_version"] == SCHEMA_VERSION


@pytest.mark.anyio
async def test_rule_audit_sql_stops_at_its_timeout(
    world: World, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A query without end (a recursive CTE) is stopped after --timeout and named as such, exit 2."""
    await cycle(config)
    endless = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
    capsys.readouterr()
    code = await anyio.to_thread.run_sync(main, ["--config", str(config), "audit", "sql", endless, "--timeout", "0.2"])
    assert code == 2
    assert "query stopped after 0.2 s (--timeout)" in capsys.readouterr().err
