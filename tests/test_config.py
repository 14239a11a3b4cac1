"""Config loading: TOML in, one frozen Settings out; every problem reported at once; secrets never shown."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import Secret, load_settings
from pipeline.errors import ConfigError

GOOD = """
database = "data/pipeline.db"
interval_seconds = 600

[poweroffice]
application_key = "${PO_APP}"
subscription_key = "${PO_SUB}"
requests_per_second = 8

[ongoing]
api_url = "https://api.ongoingsystems.se/WH/api/v1"
username = "${WMS_USER}"
password = "${WMS_PASS}"

[[tenants]]
name = "acme"
poweroffice_client_key = "${ACME_KEY}"
ongoing_goods_owner_id = 42
orders_since = 2026-11-01T00:00:00Z
product_group_codes = ["10", "20"]
stock_items_only = true
stock_figure = "sellableNumberOfItems"

[[tenants]]
name = "beta"
poweroffice_client_key = "beta-key-inline"
ongoing_goods_owner_id = 43
ongoing_username = "beta-user"
ongoing_password = "${BETA_PASS}"
orders_since = "2026-10-15T08:30:00+02:00"
"""

ENV = {
    "PO_APP": "app-secret-1",
    "PO_SUB": "sub-secret-2",
    "WMS_USER": "wms",
    "WMS_PASS": "wms-secret-3",
    "ACME_KEY": "acme-secret-4",
    "BETA_PASS": "beta-secret-5",
}
SECRETS = ["app-secret-1", "sub-secret-2", "wms-secret-3", "acme-secret-4", "beta-secret-5", "beta-key-inline"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "pipeline.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_good_config_loads_with_env_paths_and_defaults(tmp_path: Path) -> None:
    """Environment references are replaced, paths resolved against the file, defaults filled, times in UTC."""
    s = load_settings(write(tmp_path, GOOD), env=ENV)
    assert s.database == (tmp_path / "conf" / "data" / "pipeline.db").resolve()
    assert s.interval_seconds == 600
    assert s.poweroffice.api_url == "https://goapi.poweroffice.net/v2"
    assert s.poweroffice.application_key.reveal() == "app-secret-1"
    assert s.poweroffice.requests_per_second == 8
    acme, beta = s.tenants
    assert acme.orders_since == datetime(2026, 11, 1, tzinfo=UTC)
    assert acme.product_group_codes == ("10", "20")
    assert acme.stock_items_only is True
    assert acme.stock_figure == "sellableNumberOfItems"
    assert acme.order_trigger == "paid"
    assert beta.orders_since == datetime(2026, 10, 15, 6, 30, tzinfo=UTC)
    assert beta.ongoing_password == Secret("beta-secret-5")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.interval_seconds = 1  # type: ignore[misc]


def test_secrets_never_show_in_repr(tmp_path: Path) -> None:
    """No secret value appears in the repr of the settings tree."""
    text = repr(load_settings(write(tmp_path, GOOD), env=ENV))
    for secret in SECRETS:
        assert secret not in text


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Missing keys, wrong types, unknown keys, unset variables and duplicates all come in one error."""
    bad = """
database = 5
colour = "blue"

[poweroffice]
application_key = "${NOT_SET_ANYWHERE}"
requests_per_second = "fast"

[ongoing]
api_url = "ftp://nope"
username = "u"

[[tenants]]
name = "acme"
poweroffice_client_key = "k1"
ongoing_goods_owner_id = 7
stock_figure = "lots"

[[tenants]]
name = "acme"
poweroffice_client_key = "k2"
ongoing_goods_owner_id = 7
orders_since = "yesterday"
surprise = 1
"""
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, bad), env={})
    problems = "\n".join(caught.value.problems)
    for expected in (
        "database: expected a string, got an integer",
        "colour: unknown key",
        "poweroffice.application_key: environment variable NOT_SET_ANYWHERE is not set",
        "poweroffice.subscription_key: missing",
        "poweroffice.requests_per_second: expected a number, got a string",
        "ongoing.api_url: expected an http(s) URL",
        "ongoing.password: missing",
        "tenants[0].stock_figure: expected one of numberOfItems, sellableNumberOfItems",
        "tenants[1].name: duplicate tenant name 'acme'",
        "tenants[1].ongoing_goods_owner_id: duplicate goods owner id 7",
        "tenants[1].orders_since: expected an RFC 3339 date-time",
        "tenants[1].surprise: unknown key",
    ):
        assert expected in problems, expected
    assert len(caught.value.problems) >= 12


def test_missing_tenants_and_unreadable_file(tmp_path: Path) -> None:
    """A config without tenants, and a file that is not TOML, are clear errors."""
    with pytest.raises(ConfigError, match="at least one"):
        load_settings(write(tmp_path, '[poweroffice]\n[ongoing]\napi_url="http://x"\n'), env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "this is [not toml"), env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.toml", env={})


def test_cli_exits_2_and_keeps_secrets_out_of_the_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pipeline --config BAD sync` prints every problem, no secret, and exits 2."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WMS_PASS")
    path = write(tmp_path, GOOD.replace("ongoing_goods_owner_id = 43", 'ongoing_goods_owner_id = "x"'))
    assert main(["--config", str(path), "sync"]) == 2
    err = capsys.readouterr().err
    assert "ongoing.password: environment variable WMS_PASS is not set" in err
    assert "tenants[1].ongoing_goods_owner_id: expected an integer" in err
    for secret in SECRETS:
        assert secret not in err


def test_cli_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--help lists the commands and --version prints the version."""
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "sync", "run", "replay", "audit", "fakes"):
        assert command in out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("pipeline ")


def test_status_host_and_port_come_from_the_file(tmp_path: Path) -> None:
    """`status_host` / `status_port` in the file reach Settings (load_settings used to drop them)."""
    s = load_settings(write(tmp_path, 'status_host = "0.0.0.0"\nstatus_port = 0\n' + GOOD), env=ENV)
    assert (s.status_host, s.status_port) == ("0.0.0.0", 0)
    assert s.source == (tmp_path / "conf" / "pipeline.toml").resolve()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("requests_per_second = 8", "requests_per_second = nan", "poweroffice.requests_per_second: expected a finite"),
        ("[poweroffice]", "[poweroffice]\noverlap_seconds = inf", "poweroffice.overlap_seconds: expected a finite"),
        (
            "[poweroffice]",
            "[poweroffice]\noverlap_seconds = 1e300",
            "poweroffice.overlap_seconds: must be at most 86400",
        ),
        ("interval_seconds = 600", "interval_seconds = nan", "interval_seconds: expected a finite number"),
        ("interval_seconds = 600", "interval_seconds = -inf", "interval_seconds: expected a finite number"),
        ("[ongoing]", "[ongoing]\ntimeout_seconds = 1e9", "ongoing.timeout_seconds: must be at most 3600"),
        ("interval_seconds = 600", "status_port = 70000", "status_port: must be at most 65535"),
        ("[poweroffice]", "[poweroffice]\npage_size = 20001", "poweroffice.page_size: must be at most 20000"),
    ],
)
def test_rule_numbers_are_finite_and_sensible(tmp_path: Path, old: str, new: str, expected: str) -> None:
    """nan, inf and absurd values are config errors with their key path, not tracebacks later."""
    assert old in GOOD
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, GOOD.replace(old, new, 1)), env=ENV)
    assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems


def test_rule_a_non_utf8_file_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A stray Latin-1 byte gives one line naming the problem and its line, exit 2, no traceback."""
    path = write(tmp_path, GOOD)
    path.write_bytes(b"# bl\xe5 config\n" + GOOD.encode())
    with pytest.raises(ConfigError, match=r"not UTF-8 text: byte 0xe5 on line 1"):
        load_settings(path, env=ENV)
    assert main(["--config", str(path), "sync"]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err
    assert "Traceback" not in err


def test_secrets_can_be_files(tmp_path: Path) -> None:
    """`*_file` keys read the secret from a file (systemd credentials); relative to the config, ${VAR} allowed."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "wms").write_text("wms-from-file\n", encoding="utf-8")
    (creds / "acme").write_text("acme-from-file", encoding="utf-8")
    text = GOOD.replace('password = "${WMS_PASS}"', 'password_file = "${CREDENTIALS_DIRECTORY}/wms"').replace(
        'poweroffice_client_key = "${ACME_KEY}"', 'poweroffice_client_key_file = "../creds/acme"'
    )
    s = load_settings(write(tmp_path, text), env={**ENV, "CREDENTIALS_DIRECTORY": str(creds)})
    assert s.ongoing.password.reveal() == "wms-from-file"
    assert s.tenants[0].poweroffice_client_key.reveal() == "acme-from-file"
    assert "from-file" not in repr(s)


def test_secret_files_that_are_missing_or_doubled_are_named(tmp_path: Path) -> None:
    """A missing secret file, and a secret given both ways, are problems naming the key and never the value."""
    text = GOOD.replace('password = "${WMS_PASS}"', 'password_file = "/nonexistent/wms"').replace(
        'poweroffice_client_key = "${ACME_KEY}"',
        'poweroffice_client_key = "${ACME_KEY}"\npoweroffice_client_key_file = "x"',
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), env=ENV)
    problems = "\n".join(caught.value.problems)
    assert "ongoing.password_file: cannot read /nonexistent/wms" in problems
    assert "tenants[0].poweroffice_client_key: give either poweroffice_client_key or poweroffice_client_key_file" in (
        problems
    )
    for secret in SECRETS:
        assert secret not in problems


def test_pipeline_config_is_the_default_config_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --config, PIPELINE_CONFIG names the file; without either, the error says both."""
    path = write(tmp_path, GOOD.replace("interval_seconds = 600", "interval_seconds = nan"))
    monkeypatch.setenv("PIPELINE_CONFIG", str(path))
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert main(["sync"]) == 2
    assert "interval_seconds: expected a finite number" in capsys.readouterr().err
    monkeypatch.delenv("PIPELINE_CONFIG")
    assert main(["sync"]) == 2
    assert "--config FILE (or PIPELINE_CONFIG) is required" in capsys.readouterr().err


def test_reload_takes_tenants_and_interval_and_names_what_needs_a_restart(tmp_path: Path) -> None:
    """For SIGHUP: a tenant added or removed and a new interval apply; other changes are named, not applied;
    an invalid file raises ConfigError (the service keeps its settings)."""
    from pipeline.config import reload_settings

    path = write(tmp_path, GOOD)
    current = load_settings(path, env=ENV)
    changed = GOOD.replace("interval_seconds = 600", "interval_seconds = 60\nstatus_port = 9999").replace(
        'name = "beta"', 'name = "gamma"'
    )
    path.write_text(changed, encoding="utf-8")
    applied, notes = reload_settings(current, env=ENV)
    assert [t.name for t in applied.tenants] == ["acme", "gamma"]
    assert applied.interval_seconds == 60
    assert applied.status_port == current.status_port
    assert notes == [
        "status_port: changed; needs a restart (kept as it was)",
        "tenant gamma: added",
        "tenant beta: removed",
    ]
    path.write_text(GOOD.replace("interval_seconds = 600", "interval_seconds = nan"), encoding="utf-8")
    with pytest.raises(ConfigError, match="interval_seconds"):
        reload_settings(current, env=ENV)


def test_commands_on_the_log_need_no_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """audit/replay/redrive/backup/migrate load the config without reading a secret (none of the variables or
    credential files exist here); sync still requires them."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    text = GOOD.replace('password = "${WMS_PASS}"', 'password_file = "/nonexistent/credential"')
    path = write(tmp_path, text)
    s = load_settings(path, env={}, secrets=False)
    assert [t.name for t in s.tenants] == ["acme", "beta"]
    assert s.ongoing.password.reveal() == ""
    assert main(["--config", str(path), "audit", "stats"]) == 2
    assert "no event log at" in capsys.readouterr().err  # got past the config: it is the log that is missing
    assert main(["--config", str(path), "sync"]) == 2
    assert "environment variable PO_APP is not set" in capsys.readouterr().err
