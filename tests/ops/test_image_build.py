"""The image's build recipe, run for real without Docker (no engine here): the builder stage's
own `uv sync` commands on exactly the files its COPY instructions take from the build context,
then the result used the way the image uses it: `tally migrate` on a fresh database, and
`tally serve gateway` answering the image's health check.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.fixtures.services import database_url_for
from tests.ops.docker_context import ROOT, context_files, parse_stages

pytestmark = pytest.mark.slow

STAGES = parse_stages()
BUILDER, RUNTIME = STAGES[0], STAGES[-1]
SECRET_KEY = "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


def _uv() -> str:
    # `make test` installs the Makefile's pinned uv here before running the suite.
    local = ROOT / ".tools" / "bin" / "uv"
    found = str(local) if local.exists() else shutil.which("uv")
    if not found:
        pytest.fail("uv not found: run the suite with `make test`, which installs it")
    return found


def _stage_build_context(destination: Path) -> None:
    """Copy what the builder's COPY instructions take from the context into `destination`."""
    files = context_files()
    for copy in BUILDER.all("COPY"):
        *sources, target = copy.value
        for source in sources:
            matched = [f for f in files if f == source or f.startswith(f"{source}/")]
            assert matched, f"COPY {source}: nothing in the build context"
            for path in matched:
                if path == source:
                    # COPY file dir/ keeps the name; COPY file name renames it.
                    dest = destination / target / Path(path).name
                    if not target.endswith("/"):
                        dest = destination / target
                else:
                    dest = destination / target / Path(path).relative_to(source)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / path, dest)


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The virtual environment the runtime stage copies, built as the builder stage builds it."""
    work = tmp_path_factory.mktemp("image")
    source, venv = work / "src", work / "venv"
    source.mkdir()
    _stage_build_context(source)
    environ = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    environ.update(BUILDER.env())
    # The same commands with this machine's paths: the venv goes to a scratch folder, and this
    # suite's Python 3.11 plays /usr/local/bin/python3. Bytecode and copy mode only cost time.
    environ.update(
        UV_PROJECT_ENVIRONMENT=str(venv),
        UV_PYTHON=sys.executable,
        UV_COMPILE_BYTECODE="0",
        UV_LINK_MODE="hardlink",
    )
    commands = [shlex.split(i.value[0]) for i in BUILDER.all("RUN") if i.value[0].startswith("uv ")]
    assert commands, "the builder stage runs no uv command"
    for argv in commands:
        result = subprocess.run(
            [_uv(), *argv[1:]], cwd=source, env=environ, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{shlex.join(argv)}\n{result.stderr}"
    return venv


def _site_packages(venv: Path) -> Path:
    (found,) = venv.glob("lib/python3*/site-packages")
    return found


def _image_environment(**extra: str) -> dict[str, str]:
    """The runtime stage's ENV (PATH aside), plus what a deployment passes in."""
    environ = {k: v for k, v in RUNTIME.env().items() if k != "PATH"}
    environ.update(PATH=os.environ["PATH"], TALLY_SECRET_KEY=SECRET_KEY, **extra)
    return environ


def test_the_image_gets_tally_and_its_migrations_but_no_dev_tools(image_venv: Path) -> None:
    site = _site_packages(image_venv)
    packaged = sorted(p.name for p in (site / "tally" / "migrations_sql").glob("*.sql"))
    assert packaged == sorted(p.name for p in (ROOT / "migrations").glob("*.sql"))
    for service in ("gateway", "billing", "tenant"):
        assert (site / service / "app.py").is_file()
    assert (image_venv / "bin" / "tally").is_file()
    for dev_tool in ("pytest", "ruff", "mypy", "helm_python"):
        assert not (site / dev_tool).exists(), dev_tool
    # Installed as a wheel, not linked back to the source folder the runtime stage lacks.
    assert not list(site.glob("*tally*.pth"))


@pytest.fixture
def fresh_database(pg_admin_url: str) -> Iterator[str]:
    name = f"tally_test_image_{uuid.uuid4().hex[:10]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(pg_admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield database_url_for(pg_admin_url, name)
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_tally_migrate_applies_the_packaged_migrations(
    image_venv: Path, fresh_database: str, tmp_path: Path
) -> None:
    count = len(list((ROOT / "migrations").glob("*.sql")))
    environ = _image_environment(TALLY_DATABASE_URL=fresh_database)
    # Run from an empty folder: only the installed package can supply the .sql files.
    tally = str(image_venv / "bin" / "tally")
    first = subprocess.run(
        [tally, "migrate"], cwd=tmp_path, env=environ, capture_output=True, text=True, check=False
    )
    assert first.returncode == 0, first.stderr
    assert f"applied {count} migration(s)" in first.stdout
    again = subprocess.run(
        [tally, "migrate"], cwd=tmp_path, env=environ, capture_output=True, text=True, check=False
    )
    assert again.returncode == 0 and "applied 0 migration(s)" in again.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _health(venv: Path, environ: dict[str, str]) -> int:
    script = ROOT / "deploy" / "healthcheck.py"
    return subprocess.run(
        [str(venv / "bin" / "python"), str(script), "gateway"],
        env=environ,
        capture_output=True,
        check=False,
        timeout=30,
    ).returncode


def test_served_gateway_passes_the_image_health_check(
    image_venv: Path, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    environ = _image_environment(
        TALLY_DATABASE_URL=database_url,
        TALLY_REDIS_URL=redis_url,
        TALLY_GATEWAY_PORT=str(_free_port()),
    )
    server = subprocess.Popen(
        [str(image_venv / "bin" / "tally"), "serve", "gateway"],
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while _health(image_venv, environ) != 0:
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            assert time.monotonic() < deadline, "gateway never became healthy"
            time.sleep(0.3)
        # SIGTERM, as `docker stop` and Kubernetes send: uvicorn drains, runs the app's
        # shutdown, then re-raises the signal, so a clean stop exits by SIGTERM, not with 0.
        server.terminate()
        assert server.wait(timeout=35) in (0, -signal.SIGTERM)
        assert _health(image_venv, environ) == 1
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
