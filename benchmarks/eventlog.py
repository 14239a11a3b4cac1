"""Event log throughput: the project's append API vs raw sqlite3.executemany, and a 1M-event streaming scan vs a
raw sqlite3 cursor.

    .venv/bin/python benchmarks/eventlog.py [--append N] [--scan N] [--batch B]

Both append paths write the identical schema (the real migrations: indexes, triggers, unique dedupe key) in WAL
mode with the same batch size. Both start each batch from a page of parsed records (as a poller has them after
reading an API response) and serialise each ~600-byte payload with orjson inside the timed loop (any writer must);
the API path additionally wraps each record in a typed event and an envelope and runs its transaction on
aiosqlite's thread. The scan runs in a child process so that its peak RSS is the scan's own, not the set-up's; there
the pipeline's `read` (typed events) and a raw baseline (a plain sqlite3 cursor over the same rows, `orjson.loads`
of each payload) take turns, best of `--rounds` each; `scan_ratio` = pipeline events/s ÷ raw events/s.
The machine is shared: single runs move by tens of percent, hence the alternation and the best of several.
Last line: `RESULT append_eps=… raw_eps=… append_ratio=… scan_eps=… raw_scan_eps=… scan_ratio=… scan_peak_rss_mb=…`.
"""

from __future__ import annotations

import argparse
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import orjson

from pipeline.eventlog.base import NewEvent
from pipeline.eventlog.sqlite import _COLUMNS, _INSERT, MIGRATIONS, SCHEMA_VERSION, SqliteEventLog, _split, format_time
from pipeline.events import ProductObserved


def payload(i: int) -> dict[str, Any]:
    """A product shaped like PowerOffice's ProductDto, about 600 bytes as JSON."""
    return {
        "Id": 100000 + i,
        "Code": f"ART-{i:07d}",
        "Name": f"Ullsokk merino str {i % 46} grå/blå",
        "Description": "Varm sokk i merinoull, strikket i Norge. Tåler maskinvask på 40 grader.",
        "Gtin": f"70{i:011d}",
        "UnitPrice": 149.0 + (i % 50),
        "UnitCost": 61.25,
        "UnitOfMeasureCode": "STK",
        "ProductGroupId": 7 + i % 5,
        "IsStockItem": True,
        "IsArchived": False,
        "StockOnHand": float(i % 300),
        "Type": "Product",
        "VatCode": "3",
        "SalesAccountNo": 3000,
        "CreatedDateTimeOffset": "2026-10-01T08:00:00.0000000Z",
        "LastChangedDateTimeOffset": f"2026-11-{1 + i % 28:02d}T10:53:00.{i % 10_000_000:07d}Z",
        "ExternalImportReference": None,
        "Weight": 0.12,
    }


def records(start: int, stop: int) -> list[dict[str, Any]]:
    """A page of records as a poller holds it after parsing an API response."""
    return [payload(i) for i in range(start, stop)]


def events(n: int, start: int = 0) -> list[NewEvent]:
    return [
        NewEvent("bench", f"product:{i}", ProductObserved(payload(i)), f"bench/product:{i}@1")
        for i in range(start, start + n)
    ]


async def api_append(path: Path, n: int, batch: int) -> float:
    """Append n events through the log API, a page of records per call, as a poller appends its pages."""
    log = await SqliteEventLog.open(path)
    try:
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            page = records(start, min(n, start + batch))
            await log.append(
                [
                    NewEvent("bench", f"product:{p['Id']}", ProductObserved(p), f"bench/product:{p['Id']}@1")
                    for p in page
                ]
            )
        return time.perf_counter() - t0
    finally:
        await log.close()


def raw_append(path: Path, n: int, batch: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    for script in MIGRATIONS:
        for statement in _split(script):
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    recorded = format_time(datetime.now(UTC))
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        page = records(start, min(n, start + batch))
        rows = [
            (
                recorded,
                "bench",
                f"product:{p['Id']}",
                "product.observed",
                1,
                orjson.dumps({"product": p, "group": None}).decode(),
                None,
                None,
                f"bench/product:{p['Id']}@1",
            )
            for p in page
        ]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


async def fill(path: Path, n: int) -> None:
    log = await SqliteEventLog.open(path)
    try:
        for start in range(0, n, 5000):
            await log.append(events(min(5000, n - start), start))
    finally:
        await log.close()


async def scan(path: Path) -> tuple[int, float]:
    log = await SqliteEventLog.open(path)
    try:
        count = 0
        t0 = time.perf_counter()
        async for e in log.read(batch_size=2000):
            count += 1
            assert e.event.TYPE == "product.observed"
        return count, time.perf_counter() - t0
    finally:
        await log.close()


def raw_scan(path: Path) -> tuple[int, float]:
    """The floor: a plain sqlite3 cursor over the same rows, decoding each payload with orjson."""
    conn = sqlite3.connect(path)
    try:
        count = 0
        loads = orjson.loads
        t0 = time.perf_counter()
        for row in conn.execute(f"SELECT {_COLUMNS} FROM events ORDER BY position"):
            count += 1
            assert loads(row[6])["product"]
        return count, time.perf_counter() - t0
    finally:
        conn.close()


def scan_child(path: str, rounds: int) -> None:
    api, raw = [], []
    count = 0
    for _ in range(rounds):
        count, elapsed = anyio.run(scan, Path(path))
        api.append(elapsed)
        raw_count, raw_elapsed = raw_scan(Path(path))
        assert raw_count == count
        raw.append(raw_elapsed)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(orjson.dumps({"count": count, "elapsed": min(api), "raw": min(raw), "peak_mb": peak_mb}).decode())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--append", type=int, default=200_000)
    parser.add_argument("--scan", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scan-child")
    args = parser.parse_args()
    if args.scan_child:
        scan_child(args.scan_child, args.rounds)
        return
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        # Alternate the two paths so neither always runs on a warmer (or busier) machine; keep the best of each.
        api_times, raw_times = [], []
        for round_ in range(args.rounds):
            raw_times.append(raw_append(d / f"raw{round_}.db", args.append, args.batch))
            api_times.append(anyio.run(api_append, d / f"api{round_}.db", args.append, args.batch))
        api_eps = args.append / min(api_times)
        raw_eps = args.append / min(raw_times)
        print(f"append: {args.append} events x ~600 B, batches of {args.batch}, best of {args.rounds} rounds")
        print(f"  pipeline API      {api_eps:>10,.0f} events/s  (runs: {', '.join(f'{t:.2f}s' for t in api_times)})")
        print(f"  raw executemany   {raw_eps:>10,.0f} events/s  (runs: {', '.join(f'{t:.2f}s' for t in raw_times)})")
        print(f"  ratio             {api_eps / raw_eps:.3f}")

        scan_db = d / "scan.db"
        t0 = time.perf_counter()
        anyio.run(fill, scan_db, args.scan)
        print(f"scan: filled {args.scan:,} events in {time.perf_counter() - t0:.1f}s")
        out = subprocess.run(
            [sys.executable, __file__, "--scan-child", str(scan_db), "--rounds", str(args.rounds)],
            capture_output=True,
            text=True,
            check=True,
        )
        result = orjson.loads(out.stdout.strip().splitlines()[-1])
        assert result["count"] == args.scan, result
        scan_eps = result["count"] / result["elapsed"]
        raw_scan_eps = result["count"] / result["raw"]
        print(f"  read + decode     {scan_eps:>10,.0f} events/s, peak RSS {result['peak_mb']:.1f} MB")
        print(f"  raw cursor+loads  {raw_scan_eps:>10,.0f} events/s")
        print(f"  ratio             {scan_eps / raw_scan_eps:.3f}")
        print(
            f"RESULT append_eps={api_eps:.0f} raw_eps={raw_eps:.0f} append_ratio={api_eps / raw_eps:.3f}"
            f" scan_eps={scan_eps:.0f} raw_scan_eps={raw_scan_eps:.0f} scan_ratio={scan_eps / raw_scan_eps:.3f}"
            f" scan_peak_rss_mb={result['peak_mb']:.1f}"
        )


if __name__ == "__main__":
    main()
