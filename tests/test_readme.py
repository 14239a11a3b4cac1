"""The README's first screen is honest: its two commands exist, and the demo runs as it says."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_readme_shows_the_two_commands_and_they_are_executable() -> None:
    """The first code block names ./scripts/demo and ./scripts/test, both executable; CI calls the test one."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert "./scripts/demo" in commands
    assert "./scripts/test" in commands
    for script in ("scripts/demo", "scripts/test", "scripts/setup", ".ci/run"):
        assert os.access(ROOT / script, os.X_OK), script
    assert "./scripts/test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_scripts_demo_runs_offline_and_leaves_its_database(tmp_path: Path) -> None:
    """./scripts/demo sets up, syncs three goods owners twice, and a third cycle appends nothing."""
    done = subprocess.run(
        ["./scripts/demo", "--dir", str(tmp_path / "demo")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for tenant in ("nordlys", "fjellgear", "havbris"):
        assert tenant in out
    assert "cycle 3 appended 0 events and wrote nothing to either system" in out
    assert (tmp_path / "demo" / "pipeline.db").exists()
    assert (tmp_path / "demo" / "pipeline.toml").exists()
    assert "audit" in out
    assert "replay" in out


def test_readme_config_example_loads(tmp_path: Path) -> None:
    """The README's config example is a valid config once its environment variables are set."""
    from pipeline.config import load_settings

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```toml\n(.*?)```", readme, re.S)
    assert block is not None
    path = tmp_path / "pipeline.toml"
    path.write_text(block.group(1), encoding="utf-8")
    names = set(re.findall(r"\$\{([A-Z_]+)\}", block.group(1)))
    settings = load_settings(path, env={name: f"value-of-{name}" for name in names})
    assert [t.name for t in settings.tenants] == ["acme"]
    assert settings.database == tmp_path / "pipeline.db"


def test_readme_commands_exist_and_operating_it_is_there() -> None:
    """Every `pipeline <command>` the README shows is a command of the CLI; "Operating it" covers its topics."""
    from pipeline.cli import build_parser

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    commands = set(sub.choices)  # type: ignore[union-attr]
    shown = set(re.findall(r"pipeline --config pipeline\.toml ([a-z]+)", readme))
    assert shown <= commands, shown - commands
    for name in ("sync", "run", "check", "migrate", "backup", "audit", "replay", "redrive"):
        assert f"pipeline --config pipeline.toml {name}" in readme, name
        assert name in commands
    section = readme.split("## Operating it", 1)[1].split("\n## ", 1)[0]
    for topic in (
        "deploy/pipeline.service",
        "journalctl",
        "/healthz",
        "pipeline backup",
        "rollback",
        "One process per database",
        "pipeline check",
        ".bak",
    ):
        assert topic.lower() in section.lower(), topic
