"""The status page in a real browser: headless Chromium (Debian's package) against a running `pipeline run`.

`pipeline fakes --activity` starts a moving world whose first change is a malformed product; `pipeline run`
(status on port 0) syncs it; Chromium renders the page. The test reads what a person would see (the DOM's text),
and saves a screenshot in its temp dir. Without Chromium that test skips, saying how to get it (`.ci/run` installs
it); the same service is also checked over plain HTTP and with `audit`, which needs no browser.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.slow
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium; .ci/run does it in CI)"
)


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def visible_text(dom: str) -> str:
    """The text a person sees: no tags, no style, entities decoded, whitespace folded."""
    dom = re.sub(r"<(style|script|title)[^>]*>.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def read_until(proc: subprocess.Popen[str], marker: str) -> list[str]:
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"{marker!r} never printed; got:\n{''.join(lines)}")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()


@dataclass(frozen=True)
class Service:
    url: str
    config: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def running_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`pipeline fakes --activity` and `pipeline run` against it; yields the status page's URL after one cycle."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    config = tmp_path_factory.mktemp("service") / "fake.toml"
    ports = ["--poweroffice-port", "0", "--ongoing-port", "0"]
    fakes = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "fakes",
            "--activity",
            "--tenants",
            "2",
            *ports,
            "--write-config",
            str(config),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    service: subprocess.Popen[str] | None = None
    try:
        read_until(fakes, "serving until Ctrl-C")
        text = config.read_text(encoding="utf-8").replace("interval_seconds = 10\n", "interval_seconds = 1\n")
        config.write_text("status_port = 0\n" + text, encoding="utf-8")
        service = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "--config", str(config), "run"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        lines = read_until(service, "status: http://")
        url = re.search(r"status: (http://\S+/)", lines[-1])
        assert url, lines
        # Each tenant's loop prints its cycle's summary table once the cycle is on the page: wait for both.
        read_until(service, "└")
        read_until(service, "└")
        yield Service(url.group(1), config, env)
    finally:
        if service is not None:
            stop(service)
        stop(fakes)


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.timeout(180)
def test_run_on_a_moving_world_serves_health_metrics_and_audit_sees_it(running_service: Service) -> None:
    """The README's try-it flow from the command line: readiness names every goods owner, /metrics counts the
    requests, and `audit failures` (beside the running service) lists the malformed product with its reason."""
    code, ready = fetch(running_service.url + "readyz")
    assert code == 200, ready
    assert ready.splitlines()[1:] == ["nordlys: ok", "fjellgear: ok"]
    assert fetch(running_service.url + "livez")[0] == 200
    code, metrics = fetch(running_service.url + "metrics")
    assert code == 200
    assert 'pipeline_http_requests_total{status="200",system="poweroffice"}' in metrics
    held = re.findall(r'^pipeline_quarantined_entities\{tenant="\w+"\} (\d+)\.0$', metrics, re.M)
    assert len(held) == 2
    assert sum(map(int, held)) >= 1  # the activity's first change is a malformed product
    audit = subprocess.run(
        [sys.executable, "-m", "pipeline", "--config", str(running_service.config), "audit", "--json", "failures"],
        capture_output=True,
        text=True,
        env=running_service.env,
        timeout=60,
        check=False,
    )
    assert audit.returncode == 1, audit.stderr
    rows = json.loads(audit.stdout)
    assert any(r["type"] == "mapping.failed" and r["payload"]["field"] == "UnitPrice" for r in rows), rows


@needs_chromium
@pytest.mark.timeout(180)
def test_an_operator_sees_tenant_states_and_a_quarantined_reason(running_service: Service, tmp_path: Path) -> None:
    """Rendered by Chromium: each goods owner with a state, the malformed product quarantined with its reason,
    and a link to its history; a screenshot is saved beside the test's files."""
    dumped = chromium(tmp_path / "profile", "--dump-dom", running_service.url)
    assert dumped.returncode == 0, dumped.stderr
    text = visible_text(dumped.stdout)
    assert "Goods owners" in text
    assert re.search(r"nordlys (ok|waiting|quarantined) ", text), text
    assert re.search(r"fjellgear (ok|waiting|quarantined) ", text), text
    assert "quarantined" in text
    assert "cannot be mapped: UnitPrice: expected a number, got '" in text, text
    assert re.search(r"href=\"/entity/[a-z]+/product:\d+\"", dumped.stdout)

    shot = tmp_path / "status.png"
    taken = chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,1400", running_service.url)
    assert taken.returncode == 0, taken.stderr
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000  # a page, not a blank image
