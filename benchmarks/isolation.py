"""Benchmark: does one slow goods owner hold the others back?

Ten goods owners run under `Runtime.run` (each tenant its own loop, as `pipeline run` does) against both fakes.
One of them is slow: every Ongoing write for it takes `--slow-latency` seconds (3) and it starts with about
`--slow-pending` (300) articles to send, so its cycles always run into their deadline. The other nine are fast.
While the service runs, products of the fast nine change in PowerOffice at random moments; a change's *freshness*
is the time from the change to the end of Ongoing's answer to the write that carries it.

The same nine fast goods owners are measured twice in one run: alone (the slow one not configured) and beside the
slow one, each on a fresh log and fresh fakes, alternating (alone, with, with, alone, ... `--repeat` pairs) so that
machine noise falls on both. The PowerOffice limit is set high (`--rps`) so that the shared limiter, which
the tenants are meant to share, is not what is measured. The last line is machine-readable:

    RESULT p95_fast_alone_s=… p95_fast_with_slow_s=… isolation_ratio=…

with `isolation_ratio = p95_fast_with_slow_s / p95_fast_alone_s` (target ≤ 1.2). Freshness is bounded below by
the polling interval, so the p95 sits near `--interval` plus a cycle's work when nothing holds a tenant back.

Run: .venv/bin/python benchmarks/isolation.py [--interval 1.0] [--rounds 12] [--repeat 2] [--slow-latency 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio

from pipeline.fakes.generate import generate_company
from pipeline.fakes.ongoing import FakeOngoing, serve_ongoing
from pipeline.fakes.poweroffice import FakePowerOffice, serve_poweroffice
from pipeline.fakes.world import APPLICATION_KEY, ONGOING_PASSWORD, ONGOING_USER, SUBSCRIPTION_KEY, FakeTenant, World
from pipeline.runtime import Runtime, TenantState

FAST = 9


@dataclass
class Scenario:
    name: str
    freshness: list[float] = field(default_factory=list)
    slow_cycles: int = 0
    slow_delivered: int = 0
    slow_cut: int = 0
    slow_pending: int = 0
    fast_cycles: int = 0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def measure(args: argparse.Namespace, with_slow: bool, seed: int, out: Scenario) -> None:
    now = datetime.now(UTC)
    po = FakePowerOffice(
        application_key=APPLICATION_KEY, subscription_keys=[SUBSCRIPTION_KEY], requests_per_second=args.rps
    )
    wms = FakeOngoing(username=ONGOING_USER, password=ONGOING_PASSWORD, write_queue_timeout=600)
    tenants: list[FakeTenant] = []
    for i in range(FAST + (1 if with_slow else 0)):
        slow = i == FAST
        company = generate_company(
            seed + i,
            products=args.slow_pending if slow else args.products,
            customers=5,
            invoices=0 if slow else 6,
            now=now,
        )
        name = "slow" if slow else f"fast{i + 1}"
        po.add_company(f"key-{name}", company)
        tenants.append(FakeTenant(name, f"key-{name}", 100 + i, company))
    if with_slow:
        wms.write_latencies[tenants[-1].goods_owner_id] = args.slow_latency
    rng = random.Random(seed)

    async with serve_poweroffice(po) as po_origin, serve_ongoing(wms) as wms_url:
        world = World(po, wms, po_origin, wms_url, tenants, now - timedelta(days=30))
        with tempfile.TemporaryDirectory() as folder:
            settings = world.settings(Path(folder) / "pipeline.db", requests_per_second=args.rps)
            settings = dataclasses.replace(settings, interval_seconds=args.interval)
            cycles: Counter[str] = Counter()
            warm = {t.name: anyio.Event() for t in tenants if t.name != "slow"}

            def cycled(state: TenantState) -> None:
                cycles[state.name] += 1
                report = state.report
                if report is None:
                    return
                if state.name == "slow":
                    out.slow_delivered += report.delivered
                    out.slow_cut += report.deadline_reached
                    if cycles["slow"] == 1:
                        out.slow_pending = report.commands
                elif report.waiting == 0 and not report.deadline_reached and cycles[state.name] >= 2:
                    warm[state.name].set()

            changes: list[tuple[int, str, float]] = []

            async def change(t: FakeTenant) -> None:
                owner = wms.owner(t.goods_owner_id)
                codes = sorted(owner.articles)
                for n in range(args.rounds):
                    await anyio.sleep(rng.uniform(0.5, 1.5) * args.interval)
                    code = codes[n % len(codes)]
                    po.set_price(t.client_key, code, 1000.0 + n + rng.random())
                    changes.append((t.goods_owner_id, code, time.monotonic()))

            stop = anyio.Event()
            async with Runtime(settings) as runtime, anyio.create_task_group() as tg:
                tg.start_soon(lambda: runtime.run(stop, on_cycle=cycled))
                with anyio.fail_after(120):
                    for event in warm.values():
                        await event.wait()
                async with anyio.create_task_group() as changers:
                    for t in tenants:
                        if t.name != "slow":
                            changers.start_soon(change, t)
                for _ in range(2400):  # at most 2 minutes for the last answers
                    answered = _freshness(wms, changes)
                    if answered is not None:
                        break
                    await anyio.sleep(0.05)
                else:
                    raise TimeoutError("some changes never reached Ongoing")
                stop.set()
            out.freshness += answered
            out.slow_cycles += cycles["slow"]
            out.fast_cycles += sum(n for name, n in cycles.items() if name != "slow")


def _freshness(wms: FakeOngoing, changes: list[tuple[int, str, float]]) -> list[float] | None:
    """Seconds from each change to the end of the answer to the first write after it; None while one is open."""
    out = []
    for owner, code, at in changes:
        answers = [
            w.ended for w in wms.writes(owner, f"article:{code}") if w.at >= at and w.status == 200 and w.ended > 0
        ]
        if not answers:
            return None
        out.append(min(answers) - at)
    return out


async def main(args: argparse.Namespace) -> None:
    alone, beside = Scenario("alone"), Scenario("with the slow one")
    order = [False, True, True, False] * args.repeat
    for i, with_slow in enumerate(order[: 2 * args.repeat]):
        target = beside if with_slow else alone
        started = time.monotonic()
        await measure(args, with_slow, seed=11 + i, out=target)
        print(f"  run {i + 1}: {target.name:<18} {time.monotonic() - started:5.1f} s", flush=True)

    print(
        f"{FAST} fast goods owners, a change each about every {args.interval:g} s ({args.rounds} per owner per run);"
        f" interval {args.interval:g} s"
    )
    for s in (alone, beside):
        f = s.freshness
        print(
            f"  {s.name:<18} freshness p50 {statistics.median(f):.2f} s  p95 {percentile(f, 0.95):.2f} s"
            f"  max {max(f):.2f} s  ({len(f)} changes, {s.fast_cycles} fast cycles)"
        )
    print(
        f"  the slow one: {beside.slow_pending} commands pending at start, {args.slow_latency:g} s per write;"
        f" {beside.slow_cycles} cycles, {beside.slow_cut} cut at their deadline, {beside.slow_delivered} delivered"
    )
    p_alone, p_with = percentile(alone.freshness, 0.95), percentile(beside.freshness, 0.95)
    ratio = p_with / p_alone
    print(f"RESULT p95_fast_alone_s={p_alone:.3f} p95_fast_with_slow_s={p_with:.3f} isolation_ratio={ratio:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=1.0, help="every tenant's interval (and deadline), s")
    parser.add_argument("--rounds", type=int, default=12, help="changes per fast goods owner per run")
    parser.add_argument("--repeat", type=int, default=2, help="pairs of runs (alone, with the slow one)")
    parser.add_argument("--products", type=int, default=20, help="products of each fast goods owner")
    parser.add_argument("--slow-pending", type=int, default=300, help="products (pending articles) of the slow one")
    parser.add_argument("--slow-latency", type=float, default=3.0, help="seconds per write of the slow one")
    parser.add_argument("--rps", type=float, default=200.0, help="PowerOffice requests per second (fake and us)")
    logging.basicConfig(level=logging.ERROR)
    anyio.run(main, parser.parse_args())
