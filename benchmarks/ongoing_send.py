"""Benchmark: the Ongoing sender against the fake with 20 ms per write, 10 goods owners × 500 articles.

Ongoing processes writes one at a time per goods owner, so no sender can beat `writes per goods owner × latency`
(the *bound*). The parallel sender should come close to it (target: bound / wall ≥ 0.9) and beat a sequential
sender (one write at a time overall, `parallel=1`) by ≥ 8×.

The sequential sender needs about 10 × the bound (≈ 100 s), so by default it is measured on a sample of the goods
owners (`--sequential-owners`, default 2) and scaled linearly to all of them; `--sequential-owners 10` measures
it whole. Each measurement gets a fresh log and a fresh fake; the fake runs in its own process (the real server
is elsewhere too), so its work does not load the sender's event loop. For scale, the same writes are also sent
from bare client loops (no log, no sender): the HTTP floor of the machine. The last line is machine-readable:

    RESULT wall_s=… bound_s=… bound_ratio=… sequential_s=… speedup=… sender_vs_floor=…

`sender_vs_floor` = bare-client-loop wall ÷ parallel-sender wall: how close the sender (log reads, outcome appends,
checkpoints) comes to the HTTP floor of this machine (target ≥ 0.95). The machine is shared: expect noise, so the
parallel sender and the bare loops are measured `--repeat` times (default 3), alternately, and each side's best
wall is taken; every round's pair is printed too.

Run: .venv/bin/python benchmarks/ongoing_send.py [--owners 10] [--articles 500] [--latency 0.02] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
import anyio

from pipeline.clients.ongoing import OngoingClient
from pipeline.config import OngoingSettings, Secret, TenantSettings
from pipeline.eventlog.base import NewEvent
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import ArticleUpsertRequested
from pipeline.fakes.ongoing import FakeOngoing, OngoingRequest, serve_ongoing
from pipeline.senders import Sender, SendSummary

FIRST_OWNER = 1001


def tenants(owners: int) -> list[TenantSettings]:
    return [
        TenantSettings(name=f"owner{owner}", poweroffice_client_key=Secret("unused"), ongoing_goods_owner_id=owner)
        for owner in range(FIRST_OWNER, FIRST_OWNER + owners)
    ]


async def fill(log: SqliteEventLog, owners: list[TenantSettings], articles: int) -> None:
    """One ArticleUpsertRequested per (goods owner, article), as a projector would append them."""
    for t in owners:
        batch = [
            NewEvent(
                t.name,
                f"article:ART-{i:05}",
                ArticleUpsertRequested(
                    {
                        "goodsOwnerId": t.ongoing_goods_owner_id,
                        "articleNumber": f"ART-{i:05}",
                        "articleName": f"Article {i} of goods owner {t.ongoing_goods_owner_id}",
                        "customerPrice": 100.0 + i,
                        "unitCode": "st",
                    }
                ),
                f"bench/{t.name}/{i}",
            )
            for i in range(articles)
        ]
        await log.append(batch)


@dataclass(frozen=True, slots=True)
class FakeStats:
    peak_in_flight: int  # most writes one goods owner ever had at the fake at once
    overlaps: int  # pairs of consecutive writes of one goods owner whose times overlapped
    writes: int
    # Median time from the fake's answer to a write until the next write of that goods owner arrives: the
    # client's turnaround per write (answer and request in transit, plus whatever the client does between two
    # writes). Measured by the fake's clock, it isolates the per-write cost from the server's latency.
    turnaround_ms: float


def _serve_fake(conn: Connection, latency: float) -> None:
    """Child process: serve a fresh FakeOngoing, send its URL, answer one "stats" request, stop on "stop"."""

    async def serve() -> None:
        fake = FakeOngoing(username="bench", password="bench", write_latency=latency, write_queue_timeout=60)
        async with serve_ongoing(fake) as url:
            conn.send(url)
            while (request := await anyio.to_thread.run_sync(conn.recv)) != "stop":
                assert request == "stats"
                owners: dict[int, list[OngoingRequest]] = {}
                for r in fake.writes():
                    owners.setdefault(r.goods_owner_id or 0, []).append(r)
                overlaps = 0
                gaps: list[float] = []
                for writes in owners.values():
                    writes.sort(key=lambda r: r.at)
                    overlaps += sum(1 for a, b in itertools.pairwise(writes) if b.at < a.ended)
                    gaps += [b.at - a.ended for a, b in itertools.pairwise(writes)]
                peak = max((fake.peak_in_flight(o) for o in owners), default=0)
                turnaround = statistics.median(gaps) * 1000 if gaps else 0.0
                conn.send(FakeStats(peak, overlaps, len(fake.writes()), turnaround))

    anyio.run(serve)


@contextlib.contextmanager
def fake_in_subprocess(latency: float) -> Iterator[tuple[str, Connection]]:
    """The fake runs in its own process, as the real server is elsewhere: its work does not load our event loop."""
    ours, theirs = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_serve_fake, args=(theirs, latency), daemon=True)
    process.start()
    try:
        url = ours.recv()
        yield url, ours
        ours.send("stop")
        process.join(timeout=10)
    finally:
        if process.is_alive():
            process.kill()
            process.join()


async def measure(
    owners: list[TenantSettings], articles: int, latency: float, parallel: int
) -> tuple[float, SendSummary, FakeStats]:
    """Wall time of one sender run over a fresh log and a fresh fake."""
    with tempfile.TemporaryDirectory() as tmp, fake_in_subprocess(latency) as (url, conn):
        log = await SqliteEventLog.open(Path(tmp) / "bench.db")
        try:
            await fill(log, owners, articles)
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as http:
                settings = OngoingSettings(api_url=url, username="bench", password=Secret("bench"))
                sender = Sender(log, owners, ongoing=OngoingClient(http, settings), parallel=parallel)
                started = time.perf_counter()
                summary = await sender.run_once()
                wall = time.perf_counter() - started
        finally:
            await log.close()
        conn.send("stats")
        stats: FakeStats = conn.recv()
    expected = len(owners) * articles
    if summary.delivered != expected or stats.writes != expected:
        raise SystemExit(f"expected {expected} deliveries, got {summary.total} and {stats.writes} writes")
    return wall, summary, stats


async def raw_client_floor(owners: list[TenantSettings], articles: int, latency: float) -> tuple[float, FakeStats]:
    """The same writes from bare client loops (no log, no sender): what the HTTP path alone allows here."""
    with fake_in_subprocess(latency) as (url, conn):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            client = OngoingClient(http, OngoingSettings(api_url=url, username="bench", password=Secret("bench")))

            async def lane(t: TenantSettings) -> None:
                ongoing = client.for_tenant(t)
                for i in range(articles):
                    body = {"goodsOwnerId": t.ongoing_goods_owner_id, "articleNumber": f"ART-{i:05}"}
                    await ongoing.put_article(body)

            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for t in owners:
                    tg.start_soon(lane, t)
            wall = time.perf_counter() - started
        conn.send("stats")
        stats: FakeStats = conn.recv()
    return wall, stats


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--owners", type=int, default=10)
    parser.add_argument("--articles", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per write at the fake")
    parser.add_argument("--sequential-owners", type=int, default=2, help="goods owners the sequential run covers")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of (bare loops, parallel sender); best of each")
    args = parser.parse_args(argv)

    everyone = tenants(args.owners)
    bound = args.articles * args.latency
    print(f"workload: {args.owners} goods owners × {args.articles} articles, {args.latency * 1000:g} ms per write")
    print(f"bound (writes per goods owner × latency): {bound:.2f} s")

    walls: list[float] = []
    floors: list[float] = []
    turnarounds: list[tuple[float, float]] = []  # (bare loops, sender) per round
    peak = overlaps = 0
    for round_ in range(1, max(1, args.repeat) + 1):
        floor, bare = await raw_client_floor(everyone, args.articles, args.latency)
        floors.append(floor)
        wall, _, stats = await measure(everyone, args.articles, args.latency, parallel=args.owners)
        walls.append(wall)
        peak, overlaps = max(peak, stats.peak_in_flight), max(overlaps, stats.overlaps)
        turnarounds.append((bare.turnaround_ms, stats.turnaround_ms))
        print(
            f"round {round_}: bare loops {floor:.2f} s, parallel sender {wall:.2f} s ({floor / wall:.3f});"
            f" turnaround per write (median, from the fake's answer to the next write): bare loops"
            f" {bare.turnaround_ms:.2f} ms, sender {stats.turnaround_ms:.2f} ms"
        )
    wall, floor = min(walls), min(floors)
    bare_turn, sender_turn = (min(t[i] for t in turnarounds) for i in (0, 1))
    ratio = bound / wall
    rate = args.owners * args.articles / wall
    print(f"parallel sender (parallel={args.owners}), best: {wall:.2f} s, {rate:.0f} writes/s, bound/wall {ratio:.3f}")
    print(f"  writes in flight per goods owner at most {peak}; overlapping writes per goods owner: {overlaps}")
    print(
        f"bare client loops, no log (the HTTP floor on this machine), best: {floor:.2f} s,"
        f" bound/wall {bound / floor:.3f}; the sender's own cost: {wall - floor:+.2f} s"
    )

    print(
        f"turnaround per write, best round: bare loops {bare_turn:.2f} ms, sender {sender_turn:.2f} ms"
        f" (the sender's own cost per write: {sender_turn - bare_turn:+.2f} ms)"
    )

    sample = everyone[: max(1, min(args.sequential_owners, args.owners))]
    seq_wall, _, _ = await measure(sample, args.articles, args.latency, parallel=1)
    scale = len(everyone) / len(sample)
    sequential = seq_wall * scale
    how = "measured" if scale == 1 else f"measured on {len(sample)} goods owners ({seq_wall:.2f} s), scaled ×{scale:g}"
    print(f"sequential sender (parallel=1): {sequential:.2f} s ({how})")
    speedup = sequential / wall
    print(f"speedup over sequential: {speedup:.1f}× (target ≥ 8×); bound ratio {ratio:.3f} (target ≥ 0.9)")
    print(f"sender vs floor (bare loops wall ÷ sender wall): {floor / wall:.3f} (target ≥ 0.95)")
    print(
        f"RESULT wall_s={wall:.3f} bound_s={bound:.3f} bound_ratio={ratio:.3f} "
        f"sequential_s={sequential:.3f} speedup={speedup:.2f} sender_vs_floor={floor / wall:.3f}"
    )


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
