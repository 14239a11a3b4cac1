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
