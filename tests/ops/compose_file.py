"""deploy/compose.yaml read as Compose reads it: `${...}` filled in from deploy/.env first."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"

# $$ | ${NAME} | ${NAME:-default} ${NAME-default} ${NAME:?error} ${NAME?error} ${NAME:+alt} | $NAME
_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)"
)


class InterpolationError(Exception):
    """A `${NAME:?message}` variable is unset: Compose refuses to run with this message."""


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match["name"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        value = environ.get(name)
        unset_or_empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset_or_empty else str(value)
        if op in (":?", "?"):
            if unset_or_empty:
                raise InterpolationError(f"{name}: {arg}")
            return str(value)
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return value or ""

    return _VARIABLE.sub(substitute, text)


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """KEY=VALUE lines, as Compose's .env reader takes them (comments and blanks skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def required_variables(text: str) -> set[str]:
    return {m["name"] for m in _VARIABLE.finditer(text) if m["op"] in (":?", "?")}


def example_filled_in() -> dict[str, str]:
    """.env.example as an operator leaves it after following its comments: the placeholder
    keys replaced by freshly generated ones (the placeholders themselves must fail validation)."""
    from tally.auth import new_signing_key_entry
    from tally.crypto import new_key_entry

    values = read_env_file()
    generators = {"TALLY_SECRET_KEY": new_key_entry, "TALLY_JWT_KEYS": new_signing_key_entry}
    for variable, generate in generators.items():
        kid, _, placeholder = values.get(variable, "").partition(":")
        if "REPLACE" in placeholder:
            values[variable] = generate(kid)
    return values


def load(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file with variables filled in from `environ` (default: .env.example, filled)."""
    environ = example_filled_in() if environ is None else environ
    loaded: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), environ))
    return loaded
