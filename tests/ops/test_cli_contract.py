"""The checks every deployment test relies on do reject what they should."""

from __future__ import annotations

import pytest

from tests.ops.cli_contract import (
    DEFAULT_PORTS,
    SETTING_VARIABLES,
    parse_tally_command,
    role_of,
    unknown_settings,
)


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["tally", "serve", "gateway"], "gateway"),
        (["/opt/tally/venv/bin/tally", "serve", "tenant"], "tenant"),
        (["tally", "worker"], "worker"),
        (["tally", "migrate"], "migrate"),
    ],
)
def test_real_commands_parse_to_their_role(argv: list[str], role: str) -> None:
    assert role_of(parse_tally_command(argv)) == role


@pytest.mark.parametrize(
    "argv",
    [
        ["tally", "serve", "admin"],  # not one of the services
        ["tally", "serve"],
        ["tally", "frobnicate"],
        ["python", "-m", "tally.cli", "worker"],  # not the console script the image installs
    ],
)
def test_anything_else_fails_the_test(argv: list[str]) -> None:
    with pytest.raises(pytest.fail.Exception):
        parse_tally_command(argv)


def test_settings_are_known_by_their_variable_names() -> None:
    assert {"TALLY_DATABASE_URL", "TALLY_REDIS_URL", "TALLY_SECRET_KEY"} <= SETTING_VARIABLES
    assert unknown_settings(["TALLY_DATABASE_URL", "TALLY_DATABSE_URL", "PATH"]) == {
        "TALLY_DATABSE_URL"
    }
    assert DEFAULT_PORTS == {"gateway": 8080, "billing": 8081, "tenant": 8082}
