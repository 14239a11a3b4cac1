"""One process at a time sends from an event log: `sync` and `run` hold a lease (`<db>.lock`); a second one is
refused at once naming the holder; a holder that died is taken over; read-only and append-only commands work
beside the holder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from anyio.streams.text import TextReceiveStream

from pipeline.cli import main
from pipeline.eventlog.base import NewEvent
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import CommandFailed
from pipeline.fakes.world import fake_world
from pipeline.lease import Lease, LeaseHeldError, lock_path
from tests.test_e2e_crash import Tripwire

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

CONFIG = """
database = "pipeline.db"
status_port = 0

[poweroffice]
api_url = "http://127.0.0.1:9/v2"
token_url = "http://127.0.0.1:9/OAuth/Token"
application_key = "app"
subscription_key = "sub"

[ongoing]
api_url = "http://127.0.0.1:9/w/api/v1"
username = "user"
password = "pass"

[[tenants]]
name = "acme"
poweroffice_client_key = "client"
ongoing_goods_owner_id = 42
"""


def test_a_second_lease_is_refused_at_once_naming_the_holder(tmp_path: Path) -> None:
    """The second taker fails immediately with the holder's command, host, pid and start; after a release the
    lease can be taken again."""
    db = tmp_path / "pipeline.db"
    with Lease(db, "run"):
        assert lock_path(db).exists()
        with pytest.raises(LeaseHeldError) as refused:
            Lease(db, "sync").acquire()
        holder = refused.value.holder
        assert (holder.command, holder.host, holder.pid) == ("run", socket.gethostname(), os.getpid())
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in str(refused.value)
        assert "`pipeline run`" in str(refused.value)
    with Lease(db, "sync") as again:
        assert again.held
        assert again.holder().command == "sync"


def test_a_holder_that_died_is_taken_over(tmp_path: Path) -> None:
    """A process killed while holding the lease leaves the lock file behind but not the lock."""
    db = tmp_path / "pipeline.db"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pipeline.lease import Lease\n"
            f"Lease(__import__('pathlib').Path({str(db)!r}), 'run').acquire()\n"
            "print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeldError) as refused:
            Lease(db, "sync").acquire()
        assert refused.value.holder.pid == child.pid
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        with Lease(db, "sync") as lease:
            assert lease.holder().pid == os.getpid()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()


def test_sync_and_run_refuse_with_exit_2_while_read_only_commands_work_beside_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the lease held, `sync` and `run` exit 2 naming the holder before touching any API; `audit`,
    `replay --dry-run` and `redrive` (read-only or append-only) still work."""
    config = tmp_path / "pipeline.toml"
    config.write_text(CONFIG, encoding="utf-8")
    anyio.run(_quarantined_article, tmp_path / "pipeline.db")  # a log to read, and an entity to re-drive
    with Lease(tmp_path / "pipeline.db", "run"):
        for command in ("sync", "run"):
            assert main(["--config", str(config), command]) == 2
            err = capsys.readouterr().err
            assert f"is in use by `pipeline run` (pid {os.getpid()} on host {socket.gethostname()}" in err, err
        assert main(["--config", str(config), "audit", "stats"]) == 0
        window = ["--from", "2026-01-01T00:00:00Z", "--to", "2026-01-02T00:00:00Z"]
        assert main(["--config", str(config), "replay", *window, "--dry-run"]) == 0
        assert main(["--config", str(config), "redrive", "acme", "article:A1"]) == 0
        capsys.readouterr()


async def _quarantined_article(db: Path) -> None:
    async with await SqliteEventLog.open(db) as log:
        await log.append([NewEvent("acme", "article:A1", CommandFailed(1, 400, "refused", 1, True), "acme/a1/failed")])


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_run_and_sync_on_one_database_the_second_refuses_and_nothing_is_written_twice(tmp_path: Path) -> None:
    """`pipeline run` is sending; `pipeline sync` on the same database exits 2 naming it, and sends nothing. No two
    writes for a goods owner overlap, and every article is written exactly once."""
    async with fake_world(2, products=15, customers=5, invoices=10, requests_per_second=1000) as world:
        world.ongoing.write_latency = 0.01
        config = tmp_path / "pipeline.toml"
        config.write_text("status_port = 0\n" + world.config_toml("pipeline.db", requests_per_second=1000))
        first_write = anyio.Event()

        def seen() -> None:
            if any(r.write for r in world.ongoing.requests[-1:]):
                first_write.set()

        world.ongoing.requests = Tripwire(world.ongoing.requests, seen)
        command = [sys.executable, "-m", "pipeline", "--config", str(config)]
        service = await anyio.open_process([*command, "run"], env=ENV, stderr=subprocess.DEVNULL)
        try:
            with anyio.fail_after(60):
                await first_write.wait()
            second = await anyio.run_process([*command, "sync"], env=ENV, check=False)
            assert second.returncode == 2, second.stderr.decode()
            err = second.stderr.decode()
            assert f"in use by `pipeline run` (pid {service.pid} on host {socket.gethostname()}" in err, err

            # Let the service finish its first cycle for both tenants (each ends with a summary table).
            assert service.stdout is not None
            tables = 0
            with anyio.fail_after(60):
                async for chunk in TextReceiveStream(service.stdout):
                    tables += sum(line.startswith("└") for line in chunk.splitlines())
                    if tables >= 2:
                        break
            service.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                assert await service.wait() == 0
        finally:
            if service.returncode is None:
                service.kill()
            await service.aclose()

        # Now free: a sync takes the lease and finds nothing left to write.
        writes = len(world.ongoing.writes())
        after = await anyio.run_process([*command, "sync"], env=ENV, check=False)
        assert after.returncode == 0, after.stderr.decode()
        assert len(world.ongoing.writes()) == writes

        for t in world.tenants:
            assert world.ongoing.peak_in_flight(t.goods_owner_id) == 1
            owner = world.ongoing.owner(t.goods_owner_id)
            assert owner.articles
            for number in owner.articles:
                ok = [w for w in world.ongoing.writes(t.goods_owner_id, f"article:{number}") if w.status == 200]
                assert len(ok) == 1, (t.name, number, len(ok))
