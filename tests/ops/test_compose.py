"""deploy/compose.yaml: a valid Compose file that starts Tally's roles in the right order."""

from __future__ import annotations

import shlex
import subprocess
import sys
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from compose_spec import PyOptions

from tally.auth import load_signing_keys
from tally.config import SettingsError, load_settings
from tally.crypto import load_key_ring, new_key_entry
from tests.ops.cli_contract import (
    DEFAULT_PORTS,
    SETTING_VARIABLES,
    parse_tally_command,
    role_of,
    unknown_settings,
)
from tests.ops.compose_file import (
    COMPOSE,
    ENV_EXAMPLE,
    ROOT,
    InterpolationError,
    interpolate,
    load,
    read_env_file,
    required_variables,
)
from tests.ops.docker_context import (
    DOCKERFILE,
    context_files,
    ignore_rules,
    in_context,
    parse_stages,
)

TALLY_SERVICES = ("migrate", "gateway", "billing", "tenant", "worker")
HTTP_SERVICES = ("gateway", "billing", "tenant")
# The services that issue (tenant) or verify (both) people's access tokens.
TOKEN_SERVICES = ("billing", "tenant")
RUNTIME = parse_stages()[-1]
EXAMPLE = read_env_file()
COMPOSE_TEXT = COMPOSE.read_text()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def test_the_file_follows_the_compose_specification() -> None:
    # A typed parser of the Compose spec: unknown keys, bad durations, ports or depends_on
    # conditions are errors. Compose resolves `<<` merges and ${...} before it validates.
    project = PyOptions(apply_merge=True).from_yaml(interpolate(COMPOSE_TEXT, EXAMPLE))
    project.validate()
    assert set(project.service_names()) == {"postgres", "redis", *TALLY_SERVICES}


def test_the_spec_parser_rejects_a_misspelt_key() -> None:
    broken = interpolate(COMPOSE_TEXT, EXAMPLE).replace("healthcheck:", "healtcheck:", 1)
    with pytest.raises(ValueError, match="healtcheck"):
        PyOptions(apply_merge=True).from_yaml(broken)


@pytest.mark.parametrize("variable", ["POSTGRES_PASSWORD", "TALLY_SECRET_KEY", "TALLY_JWT_KEYS"])
def test_a_missing_secret_stops_compose_with_a_hint(variable: str) -> None:
    environ = {k: v for k, v in EXAMPLE.items() if k != variable}
    with pytest.raises(InterpolationError, match=rf"{variable}: set {variable} in deploy/\.env"):
        load(environ)


def test_the_example_env_file_covers_every_required_variable() -> None:
    required = required_variables(COMPOSE_TEXT)
    assert required == {"POSTGRES_PASSWORD", "TALLY_SECRET_KEY", "TALLY_JWT_KEYS"}
    assert all(EXAMPLE.get(name) for name in required)
    assert unknown_settings(EXAMPLE) == set()


def test_databases_are_postgres_16_and_redis_7(services: dict[str, dict[str, Any]]) -> None:
    assert services["postgres"]["image"].partition(":")[2].split(".")[0].split("-")[0] == "16"
    assert services["redis"]["image"].partition(":")[2].split(".")[0].split("-")[0] == "7"
    # Neither is published on the host: only Tally's own services talk to them.
    assert "ports" not in services["postgres"] and "ports" not in services["redis"]


def test_every_tally_service_runs_its_own_role(services: dict[str, dict[str, Any]]) -> None:
    entrypoint = list(RUNTIME.last("ENTRYPOINT").value)  # type: ignore[union-attr]
    for name in TALLY_SERVICES:
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        args = parse_tally_command([*service.get("entrypoint", entrypoint), *service["command"]])
        assert role_of(args) == name


def test_the_image_is_built_from_this_checkout(services: dict[str, dict[str, Any]]) -> None:
    build = services["gateway"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_published_ports_are_the_setting_defaults(services: dict[str, dict[str, Any]]) -> None:
    for name in TALLY_SERVICES:
        ports = services[name].get("ports", [])
        if name in HTTP_SERVICES:
            (mapping,) = ports
            host, container = str(mapping).rsplit(":", 1)
            assert int(container) == DEFAULT_PORTS[name], name
            assert int(host) == DEFAULT_PORTS[name], name
        else:
            assert ports == [], name


def test_health_checks_ask_each_service_and_skip_roles_without_http(
    services: dict[str, dict[str, Any]],
) -> None:
    (copy,) = [i for i in RUNTIME.all("COPY") if "deploy/healthcheck.py" in i.value[:-1]]
    script = copy.value[-1]
    for name in HTTP_SERVICES:
        assert services[name]["healthcheck"]["test"] == ["CMD", "python", script, name]
    for name in ("migrate", "worker"):
        assert services[name]["healthcheck"] == {"disable": True}
    assert services["postgres"]["healthcheck"]["test"][1] == "pg_isready"
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]


def test_services_start_after_their_dependencies_are_ready(
    services: dict[str, dict[str, Any]],
) -> None:
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    for name in ("gateway", "billing", "tenant", "worker"):
        assert services[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            if condition["condition"] == "service_healthy":
                # Waiting for health needs a health check to wait for.
                assert not services[dependency]["healthcheck"].get("disable"), dependency


def test_every_variable_is_a_setting_and_loads(services: dict[str, dict[str, Any]]) -> None:
    image_env = RUNTIME.env()
    postgres = services["postgres"]["environment"]
    for name in TALLY_SERVICES:
        environment = {k: str(v) for k, v in services[name]["environment"].items()}
        assert unknown_settings(environment) == set(), name
        assert set(environment) <= SETTING_VARIABLES
        try:
            # What the process sees: the image's ENV, overridden by the service's environment.
            settings = load_settings({**image_env, **environment})
        except SettingsError as exc:
            pytest.fail(f"{name}: {exc}")
        assert settings.production and settings.host == "0.0.0.0"
        dsn = urlsplit(settings.database_url)
        assert (dsn.hostname, dsn.port, dsn.path) == (
            "postgres",
            5432,
            f"/{postgres['POSTGRES_DB']}",
        )
        assert (dsn.username, dsn.password) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
        )
        assert urlsplit(settings.redis_url).hostname == "redis"
        if name in TOKEN_SERVICES:
            # What the service does at start-up in production; it raises without a ring.
            assert load_signing_keys(settings).current_kid == "j1"
        else:
            assert settings.jwt_keys == "", f"{name} needs no token signing keys"


def test_app_containers_are_locked_down(services: dict[str, dict[str, Any]]) -> None:
    for name in TALLY_SERVICES:
        service = services[name]
        assert service["read_only"] is True, name
        assert service["tmpfs"] == ["/tmp"], name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name


def test_the_env_file_stays_out_of_git_and_the_image() -> None:
    ignored = [line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()]
    assert "deploy/.env" in ignored
    assert not in_context("deploy/.env", ignore_rules())
    assert "deploy/.env.example" not in context_files()


@pytest.mark.parametrize("variable", ["TALLY_SECRET_KEY", "TALLY_JWT_KEYS"])
def test_the_example_placeholder_keys_are_refused_until_replaced(variable: str) -> None:
    assert "REPLACE" in EXAMPLE[variable]
    with pytest.raises(SettingsError, match=variable):
        load_settings({variable: EXAMPLE[variable]})


def _generate_commands() -> dict[str, list[str]]:
    """`# Generate one:  python3 -c "..."` comments, by the variable on the next line."""
    commands: dict[str, list[str]] = {}
    pending: list[str] | None = None
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith("# Generate one:"):
            pending = shlex.split(line.partition(":")[2])
        elif pending is not None and line and not line.startswith("#"):
            commands[line.partition("=")[0]] = pending
            pending = None
    return commands


def test_every_secret_comes_with_a_command_that_generates_a_valid_one() -> None:
    commands = _generate_commands()
    assert set(commands) == {"POSTGRES_PASSWORD", "TALLY_SECRET_KEY", "TALLY_JWT_KEYS"}
    for variable, command in commands.items():
        assert command[:2] == ["python3", "-c"], command
        generated = subprocess.run(
            [sys.executable, "-c", command[2]], capture_output=True, text=True, check=True
        ).stdout.strip()
        if variable == "POSTGRES_PASSWORD":
            # It goes into TALLY_DATABASE_URL as is, so it must need no URL escaping.
            assert quote(generated, safe="") == generated and len(generated) >= 24
            continue
        # Production, as in the image: a key that loads there loads everywhere.
        environ = {"TALLY_ENV": "production", "TALLY_SECRET_KEY": new_key_entry("k0")}
        settings = load_settings({**environ, variable: generated})
        kid = generated.partition(":")[0]
        if variable == "TALLY_SECRET_KEY":
            assert load_key_ring(settings).current_kid == kid
        else:
            assert load_signing_keys(settings).current_kid == kid
