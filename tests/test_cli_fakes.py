"""The manual flow from the README: `pipeline fakes --write-config F`, then `pipeline --config F sync`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fakes_command_serves_a_world_that_sync_can_use(tmp_path: Path) -> None:
    """`fakes` prints its URLs and writes a config; `sync` against it exits 0, a second sync too; Ctrl-C stops."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    config = tmp_path / "fake.toml"
    fakes = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "fakes",
            "--tenants",
            "2",
            "--poweroffice-port",
            "0",
            "--ongoing-port",
            "0",
            "--write-config",
            str(config),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert fakes.stdout is not None
        lines = []
        for line in fakes.stdout:
            lines.append(line)
            if "serving until Ctrl-C" in line:
                break
        assert any("PowerOffice Go (fake)" in line for line in lines), lines
        assert config.exists()
        for _ in range(2):
            done = subprocess.run(
                [sys.executable, "-m", "pipeline", "--config", str(config), "sync"],
                capture_output=True,
                text=True,
                env=env,
                timeout=90,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            assert "nordlys" in done.stdout
        assert (tmp_path / "pipeline.db").exists()

        # `run` against the same fakes: a cycle, then SIGTERM finishes it and exits 0.
        config.write_text("status_port = 0\n" + config.read_text(encoding="utf-8"), encoding="utf-8")
        service = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "--config", str(config), "run"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert service.stdout is not None
        seen = []
        for line in service.stdout:
            seen.append(line)
            if "tenant nordlys: observed=" in line:  # its first cycle's log line (quiet: no table on the console)
                break
        assert any(line.startswith("status: http://") for line in seen), seen
        service.send_signal(signal.SIGTERM)
        rest = service.stdout.read()
        assert service.wait(timeout=30) == 0
        service.stdout.close()
        assert "SIGTERM: finishing the current cycle, then stopping" in rest
    finally:
        fakes.send_signal(signal.SIGINT)
        assert fakes.wait(timeout=20) == 0
        if fakes.stdout:
            fakes.stdout.close()
