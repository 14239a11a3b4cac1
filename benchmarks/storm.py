"""Benchmark: a 5xx storm. Every Ongoing write answers 503; 3 goods owners × 20 articles; two sender runs (a cycle
sends twice). Without a circuit breaker every command uses up its retries, one after another per goods owner; with
one (the default: 3 transient failures in a row), a lane stops after three and the rest wait for the cool-down.

The retry waits are the production policy's divided by `--scale` (default 10), so the run without a breaker takes
seconds, not minutes; the figures at production waits are the measured ones times `--scale` (the waits dominate).
The commands that were not sent are checked to have no outcome (they wait; none is lost).

    RESULT storm_s_no_breaker=… storm_s_breaker=… storm_ratio=… writes_no_breaker=… writes_breaker=…

Run: .venv/bin/python benchmarks/storm.py [--owners 3] [--articles 20] [--scale 10]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import anyio

from pipeline.clients.http import RetryPolicy
from pipeline.clients.ongoing import OngoingClient
from pipeline.config import OngoingSettings, Secret, TenantSettings
from pipeline.eventlog.base import NewEvent
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import OUTCOME_TYPES, ArticleUpsertRequested
from pipeline.fakes.faults import Fault
from pipeline.fakes.ongoing import FakeOngoing, serve_ongoing
from pipeline.senders import Breakers, Sender


async def storm(owners: int, articles: int, policy: RetryPolicy, breakers: Breakers) -> tuple[float, int, int]:
    """Seconds for two sender runs under constant 503s, the writes the fake saw, and the commands answered."""
    fake = FakeOngoing(username="bench", password="bench")
    fake.faults.add(Fault("status", status=503), method="PUT", times=None)
    tenants = [
        TenantSettings(name=f"owner{o}", poweroffice_client_key=Secret("unused"), ongoing_goods_owner_id=o)
        for o in range(1, owners + 1)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        log = await SqliteEventLog.open(Path(tmp) / "storm.db")
        try:
            for t in tenants:
                await log.append(
                    [
                        NewEvent(
                            t.name,
                            f"article:A{i}",
                            ArticleUpsertRequested(
                                {"goodsOwnerId": t.ongoing_goods_owner_id, "articleNumber": f"A{i}"}
                            ),
                            f"{t.name}/{i}",
                        )
                        for i in range(articles)
                    ]
                )
            async with serve_ongoing(fake) as url, aiohttp.ClientSession() as http:
                client = OngoingClient(
                    http, OngoingSettings(api_url=url, username="bench", password=Secret("bench")), policy=policy
                )
                started = time.perf_counter()
                for _ in range(2):
                    await Sender(log, tenants, ongoing=client, parallel=owners, breakers=breakers).run_once()
                wall = time.perf_counter() - started
            answered = len({s.event.command async for s in log.read(types=OUTCOME_TYPES)})  # type: ignore[attr-defined]
        finally:
            await log.close()
    return wall, len(fake.writes()), answered


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--owners", type=int, default=3)
    parser.add_argument("--articles", type=int, default=20)
    parser.add_argument("--scale", type=float, default=10.0, help="divide the production retry waits by this")
    args = parser.parse_args(argv)
    base = RetryPolicy()
    policy = replace(
        base,
        wait_initial=base.wait_initial / args.scale,
        wait_max=base.wait_max / args.scale,
        wait_jitter=base.wait_jitter / args.scale,
    )
    logging.disable(logging.WARNING)  # every failure logs a warning: thousands of lines
    print(f"workload: {args.owners} goods owners × {args.articles} articles, every write 503, two sender runs")
    print(
        f"retry policy: {policy.attempts} attempts, waits from {policy.wait_initial:g} s (production ÷ {args.scale:g})"
    )

    off = Breakers(threshold=10**9)
    wall_off, writes_off, answered_off = await storm(args.owners, args.articles, policy, off)
    print(
        f"no breaker: {wall_off:.2f} s, {writes_off} writes, {answered_off} commands answered"
        f" (≈ {wall_off * args.scale / 60:.1f} min at production waits)"
    )
    wall_on, writes_on, answered_on = await storm(args.owners, args.articles, policy, Breakers())
    print(
        f"breaker:    {wall_on:.2f} s, {writes_on} writes, {answered_on} commands answered, the rest wait"
        f" (≈ {wall_on * args.scale / 60:.1f} min at production waits)"
    )
    print(
        f"RESULT storm_s_no_breaker={wall_off:.3f} storm_s_breaker={wall_on:.3f}"
        f" storm_ratio={wall_off / wall_on:.1f} writes_no_breaker={writes_off} writes_breaker={writes_on}"
    )


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
