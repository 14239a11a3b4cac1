"""Benchmark: a thousand small goods owners on one PowerOffice subscription key.

    .venv/bin/python benchmarks/breadth.py [--tenants 1000] [--store sqlite|postgres|both] [--rps 10]

The fakes run in a child process of their own (so they take none of the pipeline's CPU), with `--tenants` small
goods owners (`--products`, `--customers`, `--invoices` each). The fake PowerOffice enforces `--rps` per
subscription key with 429s, like the real gateway.

Each run first syncs everything in this process at a lifted rate (fake and limiter at `--setup-rps`), until a
cycle appends nothing. Then the rate drops to `--rps` at both ends and freshly started `pipeline run` processes
(interval one day, daily reconcile off: only the sweeps run) do two sweeps, a sweep being every tenant running one
cycle, which must append nothing: a *cold* one (their first cycles: start-up, every tenant renews its token) and
the measured *unchanged* one (tokens cached: a products page and an invoices page per tenant, and the Ongoing
stock poll). The measured sweep starts when the processes are sent SIGHUP (each tenant's loop starts again at
once) and ends when every tenant's cycle has ended, read from the processes' own per-tenant cycle log lines
(looked at every 2 s, every 0.1 s near the expected end), which costs them nothing. Meanwhile each process's
`/metrics` is fetched every `--scrape` seconds (15), as Prometheus would.

- **SQLite, one process**: one `pipeline run` on a SQLite file. (`--in-process` instead times
  `Runtime.cycle()` in this process, what `sync` does; `--profile FILE` then profiles its unchanged sweep.)
- **PostgreSQL, two workers**: two `pipeline run` processes on one PostgreSQL log (a schema of its own, named by
  `?search_path=` in the URL, which asyncpg passes to the server as a setting) share the tenants.

Figures per sweep: `sweep_s` (wall time), `bound_s` = PowerOffice requests of the sweep (counted by the fake,
token requests included: they count against the key) ÷ `--rps`, `breadth_ratio` = bound_s ÷ sweep_s (target
≥ 0.9), `throttled` = 429s the fake answered during the sweeps (target 0), and `rss_mb` = the peak resident size
of the pipeline processes (`VmHWM` of each `pipeline run`, the larger reported, each printed; `ru_maxrss` of this
process with `--in-process`, first sync included; the fakes' own memory is never counted; target < 1024).

The last line reports the **worse of the runs, key by key** (the lower ratio with its own sweep_s and bound_s, the
larger rss_mb, the larger throttled): `RESULT tenants=… sweep_s=… bound_s=… breadth_ratio=… rss_mb=… throttled=…`.
PostgreSQL needs `PIPELINE_TEST_POSTGRES` (or `--postgres URL`); without it `--store both` runs SQLite alone and
says so.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import dataclasses
import logging
import multiprocessing
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio

from pipeline.clients.ratelimit import max_in_window
from pipeline.config import Settings
from pipeline.fakes.world import (
    APPLICATION_KEY,
    ONGOING_PASSWORD,
    ONGOING_USER,
    SUBSCRIPTION_KEY,
    fake_settings,
    fake_world,
)
from pipeline.runtime import CycleReport, Runtime

INTERVAL = 86_400.0  # the workers' interval: no cycle starts on its own after the first; SIGHUP starts the next


# ---------------------------------------------------------------------------------------------- the fakes


def _serve(conn: Connection, args: dict[str, Any], now: datetime) -> None:
    """Child process: serve both fakes; answer the parent's questions until it says "stop"."""

    async def serve() -> None:
        async with fake_world(
            args["tenants"], products=args["products"], customers=args["customers"], invoices=args["invoices"],
            now=now, requests_per_second=args["setup_rps"],
        ) as world:  # fmt: skip
            po = world.poweroffice
            po.requests_kept = 10**6
            conn.send(
                {
                    "poweroffice": world.poweroffice_origin,
                    "ongoing": world.ongoing_url,
                    "orders_since": world.orders_since,
                    "tenants": [(t.name, t.client_key, t.goods_owner_id) for t in world.tenants],
                }
            )
            while True:
                command, value = await anyio.to_thread.run_sync(conn.recv)
                if command == "stop":
                    return
                if command == "rps":
                    po.requests_per_second = value
                    conn.send(None)
                elif command == "paths":  # PowerOffice requests after a time, by method and path
                    paths: dict[str, int] = {}
                    for r in po.requests:
                        if r.at >= value:
                            shape = re.sub(r"[0-9a-f-]{36}|\\d+", "#", r.path)
                            name = f"{r.method} {shape} {r.status}"
                            paths[name] = paths.get(name, 0) + 1
                    conn.send(paths)
                elif command == "count":  # PowerOffice requests so far: (served, 429s, tokens, peak in 1 s after)
                    after = value
                    recent = [r for r in po.requests if r.at >= after]
                    conn.send(
                        (
                            po.requests_served,
                            sum(1 for r in po.requests if r.status == 429),
                            po.tokens_issued,
                            max_in_window(r.at for r in recent),
                        )
                    )

    anyio.run(serve)


class Fakes:
    """The fakes' child process, and the questions the benchmark asks it."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.world: dict[str, Any] = conn.recv()

    def set_rps(self, rps: float) -> None:
        self.conn.send(("rps", rps))
        self.conn.recv()

    def paths(self, after: float) -> dict[str, int]:
        self.conn.send(("paths", after))
        paths: dict[str, int] = self.conn.recv()
        return paths

    def count(self, after: float = 0.0) -> tuple[int, int, int, int]:
        self.conn.send(("count", after))
        served, throttled, tokens, peak = self.conn.recv()
        return served, throttled, tokens, peak


@contextlib.contextmanager
def fakes(args: argparse.Namespace, now: datetime) -> Iterator[Fakes]:
    ours, theirs = multiprocessing.Pipe()
    options = {k: getattr(args, k) for k in ("tenants", "products", "customers", "invoices", "setup_rps")}
    process = multiprocessing.get_context("spawn").Process(target=_serve, args=(theirs, options, now), daemon=True)
    process.start()
    try:
        yield Fakes(ours)
        ours.send(("stop", None))
        process.join(timeout=30)
    finally:
        if process.is_alive():
            process.kill()
            process.join()


def settings_for(world: dict[str, Any], database: str | Path, rps: float) -> Settings:
    settings = fake_settings(
        database,
        world["poweroffice"],
        world["ongoing"],
        world["tenants"],
        orders_since=world["orders_since"],
        requests_per_second=rps,
        timeout_seconds=30.0,
    )
    return dataclasses.replace(settings, interval_seconds=INTERVAL)


def config_toml(world: dict[str, Any], database: str, rps: float) -> str:
    """The same settings as a config file for `pipeline run` (the fakes' own demo keys, inline)."""
    since = world["orders_since"].strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [
        f'database = "{database}"',
        f"interval_seconds = {INTERVAL:g}",
        "reconcile_every_hours = 0",  # the daily reconcile is not a sweep's work (benchmarks/reconcile.py)
        'status_host = "127.0.0.1"',
        "status_port = 0",
        "",
        "[poweroffice]",
        f'api_url = "{world["poweroffice"]}/v2"',
        f'token_url = "{world["poweroffice"]}/OAuth/Token"',
        f'application_key = "{APPLICATION_KEY}"',
        f'subscription_key = "{SUBSCRIPTION_KEY}"',
        f"requests_per_second = {rps:g}",
        "timeout_seconds = 30",
        "",
        "[ongoing]",
        f'api_url = "{world["ongoing"]}"',
        f'username = "{ONGOING_USER}"',
        f'password = "{ONGOING_PASSWORD}"',
        "timeout_seconds = 30",
    ]
    for name, key, owner in world["tenants"]:
        lines += [
            "",
            "[[tenants]]",
            f'name = "{name}"',
            f'poweroffice_client_key = "{key}"',
            f"ongoing_goods_owner_id = {owner}",
            f"orders_since = {since}",
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- measuring


@dataclass
class Sweep:
    seconds: float
    cpu: float  # CPU seconds of the pipeline process(es) during the sweep
    requests: int
    tokens: int
    throttled: int
    peak: int
    rps: float

    @property
    def bound(self) -> float:
        return self.requests / self.rps

    @property
    def ratio(self) -> float:
        return self.bound / self.seconds

    def line(self, label: str) -> str:
        return (
            f"  {label}: {self.seconds:7.1f} s for {self.requests} PowerOffice requests ({self.tokens} tokens) -> "
            f"bound {self.bound:.1f} s, ratio {self.ratio:.3f}; peak {self.peak} in 1 s; 429s {self.throttled}; "
            f"pipeline CPU {self.cpu:.1f} s"
        )


@dataclass
class Run:
    store: str
    sweep: Sweep
    rss_mb: list[float]
    throttled: int


class Counter:
    """PowerOffice requests, 429s and tokens at the fake between two marks."""

    def __init__(self, fakes: Fakes, rps: float) -> None:
        self.fakes = fakes
        self.rps = rps
        self.served, self.throttled, self.tokens, _ = fakes.count()
        self.at = time.monotonic()

    def sweep(self, seconds: float, cpu: float) -> Sweep:
        served, throttled, tokens, peak = self.fakes.count(self.at)
        by_path = self.fakes.paths(self.at)
        print("    requests: " + ", ".join(f"{n} {p}" for p, n in sorted(by_path.items(), key=lambda x: -x[1])))
        return Sweep(
            seconds, cpu, served - self.served, tokens - self.tokens, throttled - self.throttled, peak, self.rps
        )


async def settle(runtime: Runtime, most: int = 6) -> int:
    """Cycles until one appends nothing; returns how many it took."""
    for n in range(1, most + 1):
        before = await runtime.log.max_position()
        report = await runtime.cycle()
        if report.exit_code not in (0, 1):
            raise SystemExit(f"the first sync failed: exit {report.exit_code}")
        if await runtime.log.max_position() == before:
            return n
    raise SystemExit(f"the log still grows after {most} cycles: not an unchanged sweep")


async def first_sync(world: dict[str, Any], database: str | Path, args: argparse.Namespace, label: str) -> None:
    started = time.perf_counter()
    async with Runtime(settings_for(world, database, args.setup_rps)) as runtime:
        cycles = await settle(runtime)
        events = await runtime.log.max_position()
    await anyio.sleep(1.5)  # the lifted rate's last requests leave the fake's one-second window first
    print(
        f"  [{label}] first sync at {args.setup_rps:g} rps: {cycles} cycles, {events:,} events, "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )


async def _profiled(profile: cProfile.Profile, runtime: Runtime) -> CycleReport:
    profile.enable()
    try:
        return await runtime.cycle()
    finally:
        profile.disable()


async def run_sqlite(fakes: Fakes, args: argparse.Namespace, folder: Path) -> Run:
    world = fakes.world
    db = folder / "breadth.db"
    fakes.set_rps(args.setup_rps)
    await first_sync(world, db, args, "sqlite")
    fakes.set_rps(args.rps)
    start = Counter(fakes, args.rps)
    sweeps: list[Sweep] = []
    async with Runtime(settings_for(world, db, args.rps), command="sync") as runtime:
        for label in ("cold", "unchanged"):
            counter = Counter(fakes, args.rps)
            before = await runtime.log.max_position()
            t0, cpu0 = time.perf_counter(), time.process_time()
            if label == "unchanged" and args.profile:
                profile = cProfile.Profile()
                report = await _profiled(profile, runtime)
                profile.dump_stats(args.profile)
            else:
                report = await runtime.cycle()
            sweeps.append(counter.sweep(time.perf_counter() - t0, time.process_time() - cpu0))
            appended = await runtime.log.max_position() - before
            print(sweeps[-1].line(f"[sqlite] {label} sweep"), flush=True)
            if appended or report.exit_code not in (0, 1):
                print(f"  [sqlite] WARNING: the sweep appended {appended} events, exit {report.exit_code}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    throttled = start.sweep(1.0, 0.0).throttled
    print(f"  [sqlite] peak RSS of the pipeline process {rss:.0f} MB; 429s over both sweeps {throttled}")
    return Run("sqlite", sweeps[-1], [rss], throttled)


# ---------------------------------------------------------------------------------------------- two workers


def schema_url(dsn: str, schema: str) -> str:
    """`dsn` with `search_path=<schema>` in its query (asyncpg passes unknown query keys as server settings)."""
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "search_path"] + [("search_path", schema)]
    return urlunsplit(parts._replace(query=urlencode(query)))


async def make_schema(dsn: str, schema: str, *, drop: bool = False) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        if drop:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        else:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    finally:
        await conn.close()


class Worker:
    """One `pipeline run` process; its status URL is read from its output."""

    def __init__(self, name: str, config: Path, folder: Path, profile: str | None = None) -> None:
        self.name = name
        self.output = folder / f"{name}.out"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        profiled = ["-m", "cProfile", "-o", str(Path(profile) / f"{name}.prof")] if profile else []
        with open(self.output, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, *profiled, "-m", "pipeline", "--config", str(config), "run"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.url: str | None = None

    async def status_url(self, within: float = 120.0) -> str:
        with anyio.fail_after(within):
            while self.url is None:
                found = re.search(r"status: (http://\S+?)/ ", self.output.read_text(errors="replace"))
                if found:
                    self.url = found.group(1)
                elif self.process.poll() is not None:
                    raise SystemExit(f"{self.name} ended: {self.output.read_text(errors='replace')[-2000:]}")
                else:
                    await anyio.sleep(0.2)
        return self.url

    def troubles(self, since: int) -> tuple[int, int]:
        """In the output after byte `since`: tenant cycles that observed, queued, delivered or failed something,
        and those that reported errors (a poll failed) or failed outright."""
        text = self.output.read_bytes()[since:].decode(errors="replace")
        lines = re.findall(r"tenant \S+: (observed=.*)$", text, re.M)
        busy = sum(1 for line in lines if re.search(r"(observed|commands|delivered|failed)=[1-9]", line))
        failed = sum(1 for line in lines if "errors=" in line) + text.count(": cycle failed:")
        return busy, failed

    def size(self) -> int:
        return self.output.stat().st_size

    def cycles(self) -> collections.Counter[str]:
        """Cycles ended per tenant so far: `run` logs one line per tenant's cycle (`tenant NAME: observed=…`)."""
        text = self.output.read_text(errors="replace")
        return collections.Counter(re.findall(r"tenant (\S+): observed=", text))

    async def held(self) -> int:
        """How many tenants this worker runs, from `/readyz`: a PostgreSQL worker marks its own `· this worker`;
        a process that does not share (one line per tenant, no marks) runs them all."""
        url = await self.status_url()
        text = await anyio.to_thread.run_sync(_get, f"{url}/readyz")
        lines = [line for line in text.splitlines()[1:] if line.strip()]
        if any("tenants held here" in line for line in lines):
            return sum(1 for line in lines if line.endswith("· this worker"))
        return len(lines)

    def cpu(self) -> float:
        """CPU seconds (user + system) the worker has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        return int(found.group(1)) / 1024 if found else float("nan")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            body: bytes = answer.read()
    except urllib.error.HTTPError as exc:  # /readyz answers 503 while a tenant is not ready: still one line each
        body = exc.read()
    return body.decode()


def cycles(workers: list[Worker]) -> collections.Counter[str]:
    total: collections.Counter[str] = collections.Counter()
    for w in workers:
        total.update(w.cycles())
    return total


async def wait_sweep(
    workers: list[Worker], tenants: list[str], before: collections.Counter[str], expected_s: float
) -> None:
    """Until every tenant has ended one more cycle than `before`, whichever worker ran it (read from the workers'
    output, which costs them nothing); looked at every 2 s, then every 0.1 s near the expected end."""
    started = time.monotonic()
    while True:
        done = cycles(workers)
        if all(done[t] > before[t] for t in tenants):
            return
        for w in workers:
            if w.process.poll() is not None:
                raise SystemExit(f"{w.name} ended: {w.output.read_text(errors='replace')[-2000:]}")
        left = expected_s - (time.monotonic() - started)
        await anyio.sleep(2.0 if left > 10 else 0.1)


async def run_workers(fakes: Fakes, args: argparse.Namespace, folder: Path, label: str, database: str, n: int) -> Run:
    """`n` `pipeline run` processes on `database`, after a first sync in this process: a cold sweep (their first
    cycles), then the measured one (SIGHUP: every tenant's loop starts again at once), scraped as Prometheus would."""
    world = fakes.world
    workers: list[Worker] = []
    fakes.set_rps(args.setup_rps)
    await first_sync(world, database, args, label)
    fakes.set_rps(args.rps)
    config = folder / f"{label}.toml"
    config.write_text(config_toml(world, database, args.rps))
    names = [name for name, _, _ in world["tenants"]]
    try:
        async with anyio.create_task_group() as tg:
            start = Counter(fakes, args.rps)
            counter = Counter(fakes, args.rps)
            t0 = time.monotonic()
            workers = [Worker(f"{label}-worker{i + 1}", config, folder, args.profile_workers) for i in range(n)]
            for w in workers:
                await w.status_url()
            if args.scrape > 0:
                tg.start_soon(scrape, workers, args.scrape)
            await wait_sweep(workers, names, collections.Counter(), 3 * args.tenants / args.rps)
            cold = counter.sweep(time.monotonic() - t0, sum(w.cpu() for w in workers))
            print(cold.line(f"[{label}] cold sweep (start-up included)"), flush=True)
            report_troubles(label, workers, [0] * len(workers))
            held = [await w.held() for w in workers]
            print(f"  [{label}] {len(workers)} worker(s) hold {' + '.join(map(str, held))} tenants", flush=True)
            done = cycles(workers)
            if any(k != 1 for k in done.values()):
                print(f"  [{label}] note: {sum(done.values()) - len(names)} more cycles than tenants (hand-overs)")
            counter = Counter(fakes, args.rps)
            marks = [w.size() for w in workers]
            t0, cpu0 = time.monotonic(), sum(w.cpu() for w in workers)
            for w in workers:
                w.process.send_signal(signal.SIGHUP)
            await wait_sweep(workers, names, done, 2 * args.tenants / args.rps)
            sweep = counter.sweep(time.monotonic() - t0, sum(w.cpu() for w in workers) - cpu0)
            print(sweep.line(f"[{label}] unchanged sweep"), flush=True)
            report_troubles(label, workers, marks)
            rss = [w.peak_rss_mb() for w in workers]
            throttled = start.sweep(1.0, 0.0).throttled
            shown = ", ".join(f"{w.name} {r:.0f} MB" for w, r in zip(workers, rss, strict=True))
            print(f"  [{label}] peak RSS: {shown}; 429s over both sweeps {throttled}", flush=True)
            tg.cancel_scope.cancel()
    finally:
        for w in workers:
            w.stop()
    return Run(label, sweep, rss, throttled)


def report_troubles(label: str, workers: list[Worker], marks: list[int]) -> None:
    busy = failed = 0
    for w, mark in zip(workers, marks, strict=True):
        b, f = w.troubles(mark)
        busy, failed = busy + b, failed + f
    if busy or failed:
        print(f"  [{label}] WARNING: {busy} tenant cycle(s) did something, {failed} failed: not an unchanged sweep")


async def scrape(workers: list[Worker], every: float) -> None:
    """GET each worker's /metrics every `every` seconds, as Prometheus would."""
    while True:
        for w in workers:
            await anyio.to_thread.run_sync(_get, f"{await w.status_url()}/metrics")
        await anyio.sleep(every)


async def run_sqlite_process(fakes: Fakes, args: argparse.Namespace, folder: Path) -> Run:
    return await run_workers(fakes, args, folder, "sqlite", str(folder / "breadth.db"), 1)


async def run_postgres(fakes: Fakes, args: argparse.Namespace, folder: Path) -> Run:
    schema = f"breadth_{os.getpid()}"
    await make_schema(args.postgres, schema)
    try:
        return await run_workers(fakes, args, folder, "postgres", schema_url(args.postgres, schema), args.workers)
    finally:
        await make_schema(args.postgres, schema, drop=True)


# ---------------------------------------------------------------------------------------------- main


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=1000, help="goods owners on the one key (default 1000)")
    parser.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--rps", type=float, default=10.0, help="the key's limit at the fake and ours (10)")
    parser.add_argument("--setup-rps", type=float, default=500.0, help="the lifted limit of the first sync")
    parser.add_argument("--products", type=int, default=4, help="products per goods owner")
    parser.add_argument("--customers", type=int, default=3, help="customers per goods owner")
    parser.add_argument("--invoices", type=int, default=3, help="invoices per goods owner")
    parser.add_argument(
        "--scrape", type=float, default=15.0, help="GET each worker's /metrics this often, s (0: never; 15)"
    )
    parser.add_argument(
        "--in-process", action="store_true", help="SQLite: Runtime.cycle() in this process instead of `pipeline run`"
    )
    parser.add_argument("--profile", metavar="FILE", help="with --in-process: cProfile the unchanged sweep to FILE")
    parser.add_argument("--profile-workers", metavar="DIR", help="cProfile each `pipeline run` into DIR/<name>.prof")
    parser.add_argument("--workers", type=int, default=2, help="`pipeline run` processes on PostgreSQL")
    parser.add_argument(
        "--postgres", default=os.environ.get("PIPELINE_TEST_POSTGRES", ""), help="PostgreSQL URL (a schema is made)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the generated data's mapping notes are not the point here
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    if "postgres" in stores and not args.postgres:
        if args.store == "postgres":
            raise SystemExit("no PostgreSQL: set PIPELINE_TEST_POSTGRES or pass --postgres URL")
        print("PostgreSQL: SKIPPED (no PIPELINE_TEST_POSTGRES / --postgres); the RESULT line is SQLite's alone")
        stores = ["sqlite"]
    now = datetime.now(UTC) - timedelta(minutes=1)
    runs: list[Run] = []
    print(
        f"{args.tenants} goods owners × {args.products} products, {args.invoices} invoices on one key at "
        f"{args.rps:g} rps; stores: {', '.join(stores)}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for store in stores:
            with fakes(args, now) as f:  # fresh fakes per store: the same data, tokens and counters from zero
                if store == "postgres":
                    run = await run_postgres(f, args, Path(tmp))
                elif args.in_process:
                    run = await run_sqlite(f, args, Path(tmp))
                else:
                    run = await run_sqlite_process(f, args, Path(tmp))
            runs.append(run)
    for run in runs:
        s = run.sweep
        print(
            f"{run.store:>8}: sweep_s={s.seconds:.1f} bound_s={s.bound:.1f} breadth_ratio={s.ratio:.3f} "
            f"rss_mb={max(run.rss_mb):.0f} throttled={run.throttled}"
        )
    worst = min(runs, key=lambda r: r.sweep.ratio)
    rss = max(max(r.rss_mb) for r in runs)
    throttled = max(r.throttled for r in runs)
    print(
        f"reported: the worse run key by key: ratio (with its sweep_s, bound_s) from {worst.store}, "
        f"rss_mb and throttled the larger of {', '.join(r.store for r in runs)}"
    )
    print(
        f"RESULT tenants={args.tenants} sweep_s={worst.sweep.seconds:.1f} bound_s={worst.sweep.bound:.1f} "
        f"breadth_ratio={worst.sweep.ratio:.3f} rss_mb={rss:.0f} throttled={throttled}"
    )


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
