from __future__ import annotations

import base64

import pytest

from tally.auth import load_signing_keys
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


def _key_entry(kid: str, seed: bytes) -> str:
    return f"{kid}:{base64.b64encode(seed).decode()}"


def test_a_jwt_key_ring_in_the_documented_format_loads() -> None:
    ring = _key_entry("j2", bytes(range(32))) + ", " + _key_entry("j1", bytes(32))
    settings = load_settings({"TALLY_JWT_KEYS": ring})
    keys = load_signing_keys(settings)
    # The first entry signs; every entry verifies (so a rotation keeps old tokens valid).
    assert keys.current_kid == "j2"
    assert keys.public_key("j1") is not None and keys.public_key("j2") is not None


@pytest.mark.parametrize(
    "ring",
    [
        "j1:REPLACE_WITH_32_RANDOM_BYTES_BASE64",  # the .env.example placeholder
        "j1:" + base64.b64encode(bytes(16)).decode(),  # a seed of the wrong size
        "j1:" + base64.b64encode(bytes(33)).decode(),
        "j1:not base64!",
        ":" + base64.b64encode(bytes(32)).decode(),  # no key id
        base64.b64encode(bytes(32)).decode(),  # no KID: prefix at all
        "j1:" + base64.b64encode(b"x" * 32).decode() + ",j2",  # a good entry, then a bad one
        ",",  # nothing but separators
    ],
)
def test_a_malformed_jwt_key_ring_stops_start_up_naming_the_variable(ring: str) -> None:
    with pytest.raises(SettingsError) as excinfo:
        load_settings({"TALLY_JWT_KEYS": ring})
    assert str(excinfo.value).startswith("TALLY_JWT_KEYS:")


def test_a_bad_jwt_key_ring_fails_the_cli_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tally.cli import main
    from tally.config import get_settings

    monkeypatch.setenv("TALLY_JWT_KEYS", "j1:REPLACE_WITH_32_RANDOM_BYTES_BASE64")
    get_settings.cache_clear()
    try:
        assert main(["migrate"]) == 2
    finally:
        get_settings.cache_clear()
    assert "configuration error: TALLY_JWT_KEYS:" in capsys.readouterr().err


def test_production_settings_load_without_jwt_keys_but_services_refuse_to_sign() -> None:
    # Only the services that issue or verify access tokens get the ring (least privilege):
    # the gateway, the worker and migrations run in production without it.
    settings = load_settings(
        {"TALLY_ENV": "production", "TALLY_SECRET_KEY": _key_entry("k1", bytes(32))}
    )
    with pytest.raises(ValueError, match="TALLY_JWT_KEYS: required when TALLY_ENV=production"):
        load_signing_keys(settings)
