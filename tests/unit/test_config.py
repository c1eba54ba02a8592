from __future__ import annotations

import pytest

from tally.config import SettingsError, load_settings, settings_reference


def test_defaults_need_no_environment() -> None:
    settings = load_settings({})
    assert (settings.gateway_port, settings.billing_port, settings.tenant_port) == (
        8080,
        8081,
        8082,
    )
    assert settings.env == "dev"


def test_values_come_from_tally_prefixed_variables() -> None:
    settings = load_settings(
        {"TALLY_GATEWAY_PORT": "9000", "TALLY_ENV": "test", "GATEWAY_PORT": "1"}
    )
    assert settings.gateway_port == 9000
    assert settings.env == "test"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TALLY_GATEWAY_PORT", "eighty"),
        ("TALLY_GATEWAY_PORT", "70000"),
        ("TALLY_ENV", "prod"),
        ("TALLY_LOG_LEVEL", "loud"),
        ("TALLY_DB_POOL_MAX", "0"),
    ],
)
def test_a_bad_value_fails_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as excinfo:
        load_settings({variable: value})
    assert str(excinfo.value).startswith(variable + ":")


def test_production_requires_a_secret_key() -> None:
    with pytest.raises(SettingsError, match="TALLY_SECRET_KEY"):
        load_settings({"TALLY_ENV": "production"})


def test_pool_bounds_must_be_ordered() -> None:
    with pytest.raises(SettingsError, match="TALLY_DB_POOL_MIN"):
        load_settings({"TALLY_DB_POOL_MIN": "20", "TALLY_DB_POOL_MAX": "5"})


def test_every_setting_is_documented() -> None:
    rows = settings_reference()
    assert {name for name, _, _ in rows} >= {"TALLY_DATABASE_URL", "TALLY_REDIS_URL"}
    assert all(description for _, _, description in rows)


def test_the_configuration_reference_in_docs_matches_the_code() -> None:
    from pathlib import Path

    from tally.config import settings_markdown

    docs = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert docs.read_text() == settings_markdown(), (
        "docs/configuration.md is stale: run `.venv/bin/tally settings --markdown > "
        "docs/configuration.md`"
    )
