"""The service files in deploy/: the systemd unit verifies, and its config loads with systemd credentials."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "pipeline.service"
INSTALLED = "/opt/pipeline/bin/pipeline"


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_runs_the_service_the_way_the_readme_says() -> None:
    """Restart on failure (not on a setup error), secrets as credentials, the log in the state directory."""
    unit = unit_settings()
    assert unit["ExecStart"] == [f"{INSTALLED} --log-format json run"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["RestartPreventExitStatus"] == ["2"]
    assert unit["StateDirectory"] == ["pipeline"]
    assert unit["LoadCredential"] == ["secret:/etc/pipeline/credentials"]
    assert unit["Environment"] == ["PIPELINE_CONFIG=/etc/pipeline/pipeline.toml"]
    assert unit["KillSignal"] == ["SIGTERM"]


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds nothing to say (it only warns on bad values, so any output fails)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (Debian: apt-get install systemd)")
    # verify checks that ExecStart's program exists: point it at this checkout's entry point.
    program = Path(sys.executable).parent / "pipeline"
    if not program.exists():
        pytest.skip(f"no installed entry point at {program} (run ./scripts/setup)")
    copy = tmp_path / "pipeline.service"
    copy.write_text(UNIT.read_text(encoding="utf-8").replace(INSTALLED, str(program)), encoding="utf-8")
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_service_config_loads_with_systemd_credentials(tmp_path: Path) -> None:
    """deploy/pipeline.toml reads every secret from ${CREDENTIALS_DIRECTORY}; the log is in the state directory."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    names = ["poweroffice-application-key", "poweroffice-subscription-key", "ongoing-password", "acme-client-key"]
    for name in names:
        (creds / f"secret_{name}").write_text(f"value of {name}\n", encoding="utf-8")
    settings = load_settings(ROOT / "deploy" / "pipeline.toml", env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert settings.database == Path("/var/lib/pipeline/pipeline.db")
    assert settings.ongoing.password.reveal() == "value of ongoing-password"
    assert settings.tenants[0].poweroffice_client_key.reveal() == "value of acme-client-key"
