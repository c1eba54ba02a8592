"""No secret ever shows up in a response, a log line, an error, the event log or a table.

The tenant service runs as a real process (`tally serve tenant`, debug logging, JSON lines) with
its stderr captured to a file, and the CLI runs as real `tally` processes. Every credential
flow runs through them, including errors and a provider that echoes the key it was sent; then
every captured byte and every table is scanned for each secret.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tally.config import get_settings
from tests.fakes.model_listing import FakeProviderApi
from tests.integration.tenant.conftest import JWT_KEYS, SECRET_KEY

OPENAI_KEY = "sk-LEAKCANARY-openai-0123456789-WXYZ"
ROTATED_KEY = "sk-LEAKCANARY-rotated-9876543210-ABCD"
WRONG_KEY = "sk-LEAKCANARY-refused-5555555555-QQQQ"
ANTHROPIC_KEY = "sk-ant-LEAKCANARY-cli-stdin-key-7777"
BEDROCK_SECRET = "LEAKCANARY/bedrock/secretAccessKey/xyz"
BEDROCK_ACCESS_KEY_ID = "AKIALEAKCANARY12345"
OPERATOR_PASSWORD = "LEAKCANARY operator password"
WRONG_PASSWORD = "LEAKCANARY wrong password guess"
INVITEE_PASSWORD = "LEAKCANARY invitee password"
FIXED_SECRETS = [
    OPENAI_KEY,
    ROTATED_KEY,
    WRONG_KEY,
    ANTHROPIC_KEY,
    BEDROCK_SECRET,
    BEDROCK_ACCESS_KEY_ID,
    OPERATOR_PASSWORD,
    WRONG_PASSWORD,
    INVITEE_PASSWORD,
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _environment(port: int) -> dict[str, str]:
    settings = get_settings()
    return {
        **os.environ,
        "TALLY_DATABASE_URL": settings.database_url,
        "TALLY_REDIS_URL": settings.redis_url,
        "TALLY_JWT_KEYS": JWT_KEYS,
        "TALLY_SECRET_KEY": SECRET_KEY,
        "TALLY_TENANT_PORT": str(port),
        "TALLY_LOG_LEVEL": "debug",
        "TALLY_LOG_FORMAT": "json",
    }


def _tally(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tally.cli", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    port = _free_port()
    env = _environment(port)
    log_path = tmp_path / "tenant.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "tally.cli", "serve", "tenant"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.1)
        try:
            yield url, env, log_path
        finally:
            process.terminate()
            process.wait(15)


async def test_secrets_appear_nowhere(
    server: tuple[str, dict[str, str], Path], pool: asyncpg.Pool
) -> None:
    url, env, log_path = server
    captured: list[str] = []  # every response body and CLI output, except the one-time reveals
    revealed: list[str] = []  # secrets shown once by design (API key, tokens): scanned elsewhere
    upstream = FakeProviderApi({OPENAI_KEY, ROTATED_KEY}).start()
    try:
        created = await asyncio.to_thread(
            _tally,
            env,
            "user",
            "create",
            "--email",
            "op@platform.test",
            "--password-stdin",
            "--role",
            "operator",
            "--json",
            stdin=OPERATOR_PASSWORD + "\n",
        )
        assert created.returncode == 0, created.stderr
        captured += [created.stdout, created.stderr]

        async with aiohttp.ClientSession(base_url=url) as http:

            async def call(method: str, path: str, token: str | None = None, **kw: Any) -> Any:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with http.request(method, path, headers=headers, **kw) as response:
                    text = await response.text()
                    captured.append(text)
                    return response.status, (await response.json() if text else None)

            status, _ = await call(
                "POST",
                "/v1/auth/sign-in",
                json={"email": "op@platform.test", "password": WRONG_PASSWORD},
            )
            assert status == 401
            async with http.post(
                "/v1/auth/sign-in",
                json={"email": "op@platform.test", "password": OPERATOR_PASSWORD},
            ) as response:
                session = await response.json()
            op = session["access_token"]
            revealed += [session["refresh_token"]]

            status, openai = await call(
                "POST",
                "/v1/providers",
                op,
                json={
                    "kind": "openai",
                    "name": "oai",
                    "api_key": OPENAI_KEY,
                    "base_url": f"{upstream.url}/v1",
                },
            )
            assert status == 201
            assert openai["last4"] == "WXYZ"
            status, _ = await call(
                "POST",
                "/v1/providers",
                op,
                json={"kind": "openai", "name": "oai", "api_key": OPENAI_KEY},
            )
            assert status == 409
            status, _ = await call(
                "POST",
                "/v1/providers",
                op,
                json={"kind": "openai", "api_key": OPENAI_KEY, "base_url": "ftp://nope"},
            )
            assert status == 400
            status, _ = await call(
                "POST",
                "/v1/providers",
                op,
                json={"kind": "openai", "api_key": OPENAI_KEY + " with space"},
            )
            assert status == 400
            status, _ = await call(
                "POST",
                "/v1/providers",
                op,
                json={
                    "kind": "bedrock",
                    "access_key_id": BEDROCK_ACCESS_KEY_ID,
                    "secret_access_key": BEDROCK_SECRET,
                    "region": "us-east-1",
                },
            )
            assert status == 201
            status, _ = await call(
                "POST",
                "/v1/providers",
                op,
                json={
                    "kind": "bedrock",
                    "access_key_id": BEDROCK_ACCESS_KEY_ID,
                    "secret_access_key": BEDROCK_SECRET,
                },
            )
            assert status == 400  # no region
            status, result = await call("POST", f"/v1/providers/{openai['id']}/test", op)
            assert result["ok"] is True
            status, refused = await call(
                "POST",
                "/v1/providers",
                op,
                json={
                    "kind": "openai",
                    "name": "refused",
                    "api_key": WRONG_KEY,
                    "base_url": f"{upstream.url}/v1",
                },
            )
            status, result = await call("POST", f"/v1/providers/{refused['id']}/test", op)
            assert result["outcome"] == "rejected"  # the fake echoed the key; Tally did not
            status, _ = await call(
                "PATCH", f"/v1/providers/{openai['id']}", op, json={"api_key": ROTATED_KEY}
            )
            assert status == 200
            status, _ = await call(
                "PATCH", f"/v1/providers/{openai['id']}", op, json={"api_key": 42}
            )
            assert status == 400
            await call("GET", "/v1/providers", op)
            await call("GET", f"/v1/providers/{openai['id']}", op)

            status, tenant = await call("POST", "/v1/tenants", op, json={"name": "Acme"})
            async with http.post(
                f"/v1/tenants/{tenant['id']}/api-keys",
                json={"name": "prod"},
                headers={"Authorization": f"Bearer {op}"},
            ) as response:
                api_key = (await response.json())["key"]
            revealed.append(api_key)
            await call("GET", f"/v1/tenants/{tenant['id']}/api-keys", op)
            async with http.post(
                f"/v1/tenants/{tenant['id']}/invitations",
                json={"email": "new@acme.test", "role": "admin"},
                headers={"Authorization": f"Bearer {op}"},
            ) as response:
                invitation_token = (await response.json())["token"]
            revealed.append(invitation_token)
            status, accepted = await call(
                "POST",
                "/v1/invitations/accept",
                json={"token": invitation_token, "password": INVITEE_PASSWORD},
            )
            assert status == 200
            revealed.append(accepted["refresh_token"])
            await call("POST", "/v1/auth/refresh", json={"refresh_token": session["refresh_token"]})
            await call("POST", "/v1/auth/refresh", json={"refresh_token": session["refresh_token"]})
            await call("GET", "/v1/audit-events", op, params={"limit": "200"})

        for args, stdin in [
            (
                [
                    "provider",
                    "add",
                    "--kind",
                    "anthropic",
                    "--name",
                    "claude",
                    "--api-key-stdin",
                    "--json",
                ],
                ANTHROPIC_KEY + "\n",
            ),
            (
                [
                    "provider",
                    "add",
                    "--kind",
                    "anthropic",
                    "--name",
                    "claude",
                    "--api-key-stdin",
                    "--json",
                ],
                ANTHROPIC_KEY + "\n",
            ),
            (["provider", "test", "oai", "--json"], ""),
            (["provider", "list", "--json"], ""),
            (["secrets", "rotate", "--json"], ""),
        ]:
            done = await asyncio.to_thread(_tally, env, *args, stdin=stdin)
            captured += [done.stdout, done.stderr]
    finally:
        upstream.stop()

    await asyncio.sleep(0.2)  # let the server flush its last lines
    logs = log_path.read_text()
    assert '"provider credential tested"' in logs  # the log was captured, at debug level
    async with pool.acquire() as conn:
        tables = [
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ]
        database = "\n".join(
            [str(await conn.fetch(f"SELECT t::text FROM {table} t")) for table in tables]
        )
    everything = {
        "logs": logs,
        "responses and CLI output": "\n".join(captured),
        "database": database,
    }
    for secret in FIXED_SECRETS:
        for where, text in everything.items():
            assert secret not in text, f"{secret!r} leaked into {where}"
    for secret in revealed:
        for where in ("logs", "database"):
            assert secret not in everything[where], f"a one-time secret leaked into {where}"
