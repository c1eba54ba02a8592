"""The operator CLI: every command's --json prints one JSON object, through the same services."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from tally.cli import main
from tally.config import get_settings
from tally.crypto import new_key_entry
from tests.fakes.model_listing import FakeProviderApi
from tests.integration.tenant.conftest import SECRET_KEY, InvalidationWatch

OPENAI_KEY = "sk-cli-test-key-0123456789-LAST"


@pytest.fixture(autouse=True)
def _cli_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TALLY_SECRET_KEY", SECRET_KEY)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def tally(*args: str, code: int = 0) -> Any:
    """Run `tally ARGS --json`; return the one JSON object it printed on stdout.

    Only stdout is redirected: logs go to stderr, which pytest captures for the whole session
    (structlog keeps the stream it first wrote to, so it must outlive each test).
    """
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main([*args, "--json"]) == code
    out = stdout.getvalue()
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    return json.loads(lines[0])


def query(pool: asyncpg.Pool, sql: str, *args: Any) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(get_settings().database_url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def test_tenant_commands(pool: asyncpg.Pool) -> None:
    created = tally("tenant", "create", "Acme", "--mode", "metered", "--credits", "250")
    assert {"id", "name", "mode", "status"} <= set(created)
    assert (created["name"], created["mode"]) == ("Acme", "metered")
    grants = query(pool, "SELECT data::text FROM events WHERE type = 'CreditsGranted'")
    assert len(grants) == 1
    grant = json.loads(grants[0][0])
    assert (grant["amount_nano"], grant["kind"], grant["actor"]["kind"]) == (
        250 * 10**9,
        "manual",
        "cli",
    )

    duplicate = tally("tenant", "create", "acme", code=1)
    assert "exists" in duplicate["error"]["message"]
    bad = tally("tenant", "create", "Other", "--country", "usa", code=1)
    assert "country" in bad["error"]["message"]

    shown = tally("tenant", "show", "ACME")
    assert shown["id"] == created["id"]
    assert tally("tenant", "show", created["id"])["name"] == "Acme"
    updated = tally(
        "tenant",
        "update",
        "Acme",
        "--margin",
        "15",
        "--budget-cap",
        "1000",
        "--country",
        "FR",
    )
    assert (updated["margin_override_pct"], updated["budget_cap_nano"], updated["country"]) == (
        "15",
        10**12,
        "FR",
    )
    cleared = tally("tenant", "update", "Acme", "--margin", "none", "--country", "none")
    assert (cleared["margin_override_pct"], cleared["country"]) == (None, None)
    assert tally("tenant", "suspend", "Acme", "--reason", "audit")["status"] == "suspended"
    assert tally("tenant", "reactivate", "Acme")["status"] == "active"
    tally("tenant", "create", "Beta")
    listed = tally("tenant", "list", "--limit", "1")
    assert [t["name"] for t in listed["data"]] == ["Beta"]
    assert listed["next_cursor"]
    following = tally("tenant", "list", "--limit", "1", "--cursor", listed["next_cursor"])
    assert [t["name"] for t in following["data"]] == ["Acme"]
    assert tally("tenant", "show", "nobody", code=1)["error"]["type"] == "command_error"


def test_key_commands(pool: asyncpg.Pool) -> None:
    tenant = tally("tenant", "create", "Acme")
    key = tally(
        "key",
        "create",
        "--tenant",
        "Acme",
        "--name",
        "ci",
        "--models",
        "m1,m2",
        "--rpm",
        "60",
        "--spend-cap",
        "2.5",
    )
    assert {"id", "key", "prefix"} <= set(key)
    assert key["key"].startswith("tk_")
    assert (key["allowed_models"], key["rpm_limit"], key["spend_cap_nano"]) == (
        ["m1", "m2"],
        60,
        2_500_000_000,
    )
    assert key["tenant_id"] == tenant["id"]
    listed = tally("key", "list", "--tenant", tenant["id"])
    assert [k["id"] for k in listed["data"]] == [key["id"]]
    assert "key" not in listed["data"][0]
    rotated = tally("key", "rotate", key["id"], "--grace", "60")
    assert rotated["key"] != key["key"]
    revoked = tally("key", "revoke", rotated["id"])
    assert revoked["status"] == "revoked"
    assert tally("key", "revoke", rotated["id"], code=1)["error"]["message"]
    assert tally("key", "revoke", "not-a-uuid", code=1)["error"]["message"]
    assert tally("key", "create", "--tenant", "Acme", "--rpm", "0", code=1)["error"]
    actors = query(
        pool, "SELECT DISTINCT data->'actor'->>'kind' FROM events WHERE type LIKE 'ApiKey%'"
    )
    assert [r[0] for r in actors] == ["cli"]


def test_provider_and_model_commands() -> None:
    upstream = FakeProviderApi({OPENAI_KEY}).start()
    try:
        added = tally(
            "provider",
            "add",
            "--kind",
            "openai",
            "--api-key",
            OPENAI_KEY,
            "--base-url",
            f"{upstream.url}/v1",
            "--weight",
            "3",
        )
        assert {"id", "name", "kind", "last4"} <= set(added)
        assert (added["name"], added["last4"], added["weight"]) == ("openai", "LAST", 3)
        assert OPENAI_KEY not in json.dumps(added)
        second = tally(
            "provider",
            "add",
            "--kind",
            "openai",
            "--api-key",
            "sk-other-key-000000000",
            "--name",
            "backup",
        )
        assert second["name"] == "backup"
        bedrock = tally(
            "provider",
            "add",
            "--kind",
            "bedrock",
            "--access-key-id",
            "AKIAEXAMPLE00000",
            "--secret-access-key",
            "s" * 40,
            "--region",
            "us-west-2",
        )
        assert bedrock["options"] == {"region": "us-west-2"}
        assert tally("provider", "add", "--kind", "openai", code=1)["error"]["message"]
        assert tally(
            "provider",
            "add",
            "--kind",
            "openai",
            "--api-key",
            OPENAI_KEY,
            "--base-url",
            "nope",
            code=1,
        )["error"]

        tested = tally("provider", "test", "openai")
        assert (tested["ok"], tested["outcome"]) == (True, "ok")
        assert [c["name"] for c in tally("provider", "list")["data"]] == [
            "bedrock",
            "backup",
            "openai",
        ]
        assert tally("provider", "disable", "backup", "--reason", "spare")["enabled"] is False
        assert tally("provider", "enable", "backup")["enabled"] is True
        assert tally("provider", "show", added["id"])["name"] == "openai"
        changed = tally(
            "provider",
            "update",
            "backup",
            "--api-key",
            "sk-replaced-key-00000WXYZ",
            "--weight",
            "7",
        )
        assert (changed["last4"], changed["weight"], changed["base_url"]) == ("WXYZ", 7, None)
        assert tally("provider", "update", "backup", "--base-url", "https://x.test/v1")["base_url"]
        assert tally("provider", "update", "backup", "--base-url", "none")["base_url"] is None
        assert tally("provider", "update", "backup", "--weight", "-1", code=1)["error"]

        route = tally(
            "model", "add", "gpt-4o", "--provider", "openai", "--context-window", "128000"
        )
        assert route["model_created"] is True
        assert (route["credential_name"], route["upstream_model"], route["priority"]) == (
            "openai",
            "gpt-4o",
            0,
        )
        backup = tally(
            "model",
            "add",
            "gpt-4o",
            "--provider",
            "backup",
            "--upstream-model",
            "gpt-4o-2024",
            "--priority",
            "1",
        )
        assert backup["model_created"] is False
        models = tally("model", "list")["data"]
        assert [(m["name"], m["context_window"], len(m["routes"])) for m in models] == [
            ("gpt-4o", 128000, 2)
        ]
        assert tally("model", "disable", "gpt-4o")["enabled"] is False
        assert tally("model", "list")["data"] == []
        assert len(tally("model", "list", "--all")["data"]) == 1
        assert tally("model", "enable", "gpt-4o")["enabled"] is True
        assert tally("model", "add", "gpt-4o", "--provider", "ghost", code=1)["error"]
        assert tally("model", "add", "bad name", "--provider", "openai", code=1)["error"]
    finally:
        upstream.stop()


def test_secrets_rotate(monkeypatch: pytest.MonkeyPatch, pool: asyncpg.Pool) -> None:
    tally("provider", "add", "--kind", "openai", "--api-key", OPENAI_KEY)
    tally("provider", "add", "--kind", "xai", "--api-key", OPENAI_KEY)
    new = new_key_entry("k2")
    monkeypatch.setenv("TALLY_SECRET_KEY", f"{new},{SECRET_KEY}")
    get_settings.cache_clear()
    assert tally("secrets", "rotate") == {"key_id": "k2", "reencrypted": 2}
    assert tally("secrets", "rotate") == {"key_id": "k2", "reencrypted": 0}
    monkeypatch.setenv("TALLY_SECRET_KEY", new)
    get_settings.cache_clear()
    assert tally("provider", "test", "openai", code=1)["outcome"] == "unreachable"
    ids = query(pool, "SELECT DISTINCT secret_key_id FROM provider_credentials")
    assert [r[0] for r in ids] == ["k2"]


def test_user_commands_bootstrap_the_first_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("the first operator password\n"))
    operator = tally(
        "user",
        "create",
        "--email",
        "root@platform.test",
        "--password-stdin",
        "--role",
        "operator",
    )
    assert (operator["email"], operator["platform_roles"], operator["has_password"]) == (
        "root@platform.test",
        ["operator"],
        True,
    )
    assert tally(
        "user",
        "create",
        "--email",
        "root@platform.test",
        "--password",
        "another long pw",
        "--role",
        "finance",
        code=1,
    )
    assert tally(
        "user",
        "create",
        "--email",
        "x@y.test",
        "--password",
        "short",
        "--role",
        "finance",
        code=1,
    )
    assert tally(
        "user", "create", "--email", "x@y.test", "--role", "owner", code=1
    )  # needs --tenant
    tally("tenant", "create", "Acme")
    owner = tally(
        "user",
        "create",
        "--email",
        "owner@acme.test",
        "--password",
        "owner password 1",
        "--role",
        "owner",
        "--tenant",
        "Acme",
    )
    assert owner["tenant_id"]
    invite = tally(
        "user", "invite", "--email", "new@acme.test", "--role", "admin", "--tenant", "Acme"
    )
    assert invite["token"].startswith("inv_")
    assert (invite["role"], invite["status"]) == ("admin", "pending")
    platform = tally("user", "invite", "--email", "fin@platform.test", "--role", "finance")
    assert platform["tenant_id"] is None
    users = tally("user", "list", "--search", "acme.test")
    assert [u["email"] for u in users["data"]] == ["owner@acme.test"]
    reset = tally("user", "set-password", "owner@acme.test", "--password", "a new owner password")
    assert reset["email"] == "owner@acme.test"


def test_every_cli_command_takes_json() -> None:
    from tally.cli import build_parser

    parser = build_parser()
    groups = {"tenant", "key", "provider", "model", "user", "secrets"}
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for group in groups:
        actions = commands[group]._subparsers._group_actions[0].choices
        for name, sub in actions.items():
            flags = {opt for action in sub._actions for opt in action.option_strings}
            assert "--json" in flags, f"tally {group} {name}"


async def test_cli_changes_reach_the_gateway_cache_after_commit(
    invalidations: InvalidationWatch, pool: asyncpg.Pool
) -> None:
    # main() runs its own event loop, so it runs in a thread here.
    await asyncio.to_thread(tally, "tenant", "create", "Acme")
    key = await asyncio.to_thread(tally, "key", "create", "--tenant", "Acme")

    async def revoked_already() -> None:
        async with pool.acquire() as conn:
            status = await conn.fetchval(
                "SELECT status FROM api_keys WHERE id = $1", UUID(key["id"])
            )
        assert status == "revoked"

    await asyncio.to_thread(tally, "key", "revoke", key["id"])
    await invalidations.wait_for("api_key", key["id"], on_receipt=revoked_already)
    suspended = await asyncio.to_thread(tally, "tenant", "suspend", "Acme")
    await invalidations.wait_for("tenant", suspended["id"])
