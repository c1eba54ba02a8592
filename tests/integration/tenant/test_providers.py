"""Provider credentials: sealed secrets, last four only, test connection, key rotation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from tally.crypto import KeyRing, new_key_entry
from tally.events.tenant import Actor
from tenant.app import create_app
from tenant.providers.service import provider_service
from tests.fakes.model_listing import FakeProviderApi
from tests.integration.tenant.conftest import (
    Api,
    InvalidationWatch,
    count_rows,
    events_of,
    tenant_settings,
)

OPENAI_KEY = "sk-live-0123456789abcdefWXYZ"
ANTHROPIC_KEY = "sk-ant-api03-secretsecretQRST"
GEMINI_KEY = "AIzaSyD-secret-gemini-key-MNOP"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeProviderApi]:
    fake = FakeProviderApi({OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY}).start()
    yield fake
    fake.stop()


async def _row(pool: asyncpg.Pool, credential_id: str) -> Any:
    async with pool.acquire() as conn:
        return await conn.fetchrow(
            "SELECT * FROM provider_credentials WHERE id = $1", UUID(credential_id)
        )


async def test_a_credential_is_sealed_with_aes_gcm_bound_to_its_id(
    api: Api, pool: asyncpg.Pool, invalidations: InvalidationWatch
) -> None:
    op = await api.operator()
    response = await api.call(
        "POST",
        "/v1/providers",
        op,
        json={"kind": "openai", "api_key": OPENAI_KEY, "base_url": "https://example.test/v1/"},
    )
    assert response.status_code == 201, response.text
    credential = response.json()
    assert credential["name"] == "openai"
    assert credential["last4"] == "WXYZ"
    assert credential["base_url"] == "https://example.test/v1"
    assert credential["secret_key_id"] == "k1"
    assert OPENAI_KEY not in response.text
    await invalidations.wait_for("credential", credential["id"])

    row = await _row(pool, credential["id"])
    assert OPENAI_KEY.encode() not in bytes(row["secret_ciphertext"])
    ring = api.runtime.key_ring
    opened = ring.decrypt(
        row["secret_key_id"], bytes(row["secret_ciphertext"]), context=row["id"].bytes
    )
    # The gateway opens the plain key (Bedrock: a JSON pair).
    assert opened == OPENAI_KEY.encode()
    with pytest.raises(Exception, match="authentication"):
        ring.decrypt(row["secret_key_id"], bytes(row["secret_ciphertext"]), context=b"other")
    (event,) = await events_of(pool, "CredentialAdded")
    assert event["last4"] == "WXYZ"
    assert OPENAI_KEY not in str(event)

    second = await api.call(
        "POST", "/v1/providers", op, json={"kind": "openai", "api_key": OPENAI_KEY}
    )
    assert second.json()["name"] == "openai-2"


async def test_bedrock_takes_an_access_key_pair_and_a_region(api: Api, pool: asyncpg.Pool) -> None:
    op = await api.operator()
    response = await api.call(
        "POST",
        "/v1/providers",
        op,
        json={
            "kind": "bedrock",
            "access_key_id": "AKIAEXAMPLEKEY1234",
            "secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRET",
            "region": "eu-west-1",
        },
    )
    assert response.status_code == 201, response.text
    credential = response.json()
    assert credential["options"] == {"region": "eu-west-1"}
    assert credential["last4"] == "1234"
    assert "wJalr" not in response.text
    row = await _row(pool, credential["id"])
    pair = msgspec.json.decode(
        api.runtime.key_ring.decrypt(
            row["secret_key_id"], bytes(row["secret_ciphertext"]), context=row["id"].bytes
        )
    )
    assert pair == {
        "access_key_id": "AKIAEXAMPLEKEY1234",
        "secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRET",
    }
    tested = await api.call("POST", f"/v1/providers/{credential['id']}/test", op)
    assert tested.json()["outcome"] == "unsupported"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"kind": "openai"}, "api_key"),
        ({"kind": "azure", "api_key": "k" * 20}, "kind"),
        ({"kind": "openai", "api_key": "has space in it"}, "api_key"),
        ({"kind": "openai", "api_key": 12345}, "api_key"),
        ({"kind": "bedrock", "access_key_id": "A" * 16}, "secret_access_key"),
        ({"kind": "bedrock", "access_key_id": "A" * 16, "secret_access_key": "s" * 30}, "region"),
        ({"kind": "bedrock", "api_key": "k" * 20}, "api_key"),
        ({"kind": "openai", "api_key": "k" * 20, "region": "us-east-1"}, "region"),
        ({"kind": "openai", "api_key": "k" * 20, "access_key_id": "A" * 16}, "access_key_id"),
        ({"kind": "openai", "api_key": "k" * 20, "base_url": "ftp://x.test"}, "base_url"),
        ({"kind": "openai", "api_key": "k" * 20, "base_url": "https://u:p@x.test"}, "base_url"),
        ({"kind": "openai", "api_key": "k" * 20, "base_url": "https://x.test/?a=1"}, "base_url"),
        ({"kind": "openai", "api_key": "k" * 20, "weight": -1}, "weight"),
        ({"kind": "openai", "api_key": "k" * 20, "name": "has space"}, "name"),
        ({"kind": "openai", "api_key": "k" * 20, "options": {"Bad-Key": "x"}}, "options"),
        ({"kind": "openai", "api_key": "k" * 20, "enabled": False}, "data"),
    ],
)
async def test_malformed_credentials_are_400_and_write_nothing(
    api: Api, pool: asyncpg.Pool, body: dict[str, Any], param: str
) -> None:
    op = await api.operator()
    before = await count_rows(pool)
    response = await api.call("POST", "/v1/providers", op, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert param in (error["param"] or "") or param in error["message"], error
    assert await count_rows(pool) == before


async def test_ollama_needs_no_key_and_duplicate_names_are_409(
    api: Api, pool: asyncpg.Pool
) -> None:
    op = await api.operator()
    local = await api.call(
        "POST",
        "/v1/providers",
        op,
        json={"kind": "ollama", "name": "local", "base_url": "http://127.0.0.1:11434/v1"},
    )
    assert local.status_code == 201
    assert local.json()["last4"] == ""
    before = await count_rows(pool)
    again = await api.call(
        "POST", "/v1/providers", op, json={"kind": "openai", "name": "local", "api_key": OPENAI_KEY}
    )
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "name_taken"
    assert await count_rows(pool) == before


async def test_short_secrets_show_no_last_four(api: Api) -> None:
    op = await api.operator()
    response = await api.call(
        "POST", "/v1/providers", op, json={"kind": "xai", "api_key": "tiny-key"}
    )
    assert response.json()["last4"] == ""


async def test_credentials_are_for_operators_only(api: Api) -> None:
    op = await api.operator()
    tenant = await api.new_tenant(op, "Acme")
    owner = await api.tenant_admin(tenant["id"], "owner@acme.test", role="owner")
    await api.create_user("fin@platform.test", roles=["finance"])
    finance = await api.token_for("fin@platform.test")
    for token in (owner, finance):
        assert (await api.call("GET", "/v1/providers", token)).status_code == 403
        body = {"kind": "openai", "api_key": OPENAI_KEY}
        assert (await api.call("POST", "/v1/providers", token, json=body)).status_code == 403


async def test_test_connection_calls_each_providers_model_list(
    api: Api, upstream: FakeProviderApi
) -> None:
    op = await api.operator()
    cases = [
        ("openai", {"api_key": OPENAI_KEY, "base_url": f"{upstream.url}/v1"}, "ok"),
        (
            "deepseek",
            {"api_key": "sk-wrong-key-000000", "base_url": f"{upstream.url}/v1"},
            "rejected",
        ),
        ("anthropic", {"api_key": ANTHROPIC_KEY, "base_url": upstream.url}, "ok"),
        ("anthropic", {"api_key": "sk-ant-wrong-00000000", "base_url": upstream.url}, "rejected"),
        ("gemini", {"api_key": GEMINI_KEY, "base_url": f"{upstream.url}/v1beta"}, "ok"),
        (
            "gemini",
            {"api_key": "AIza-wrong-000000000", "base_url": f"{upstream.url}/v1beta"},
            "rejected",
        ),
        ("openrouter", {"api_key": OPENAI_KEY, "base_url": f"{upstream.url}/broken/v1"}, "error"),
        ("xai", {"api_key": OPENAI_KEY, "base_url": "http://127.0.0.1:9/v1"}, "unreachable"),
    ]
    for kind, fields, outcome in cases:
        created = await api.call("POST", "/v1/providers", op, json={"kind": kind, **fields})
        result = await api.call("POST", f"/v1/providers/{created.json()['id']}/test", op)
        assert result.status_code == 200
        body = result.json()
        assert body["outcome"] == outcome, (kind, body)
        assert body["ok"] is (outcome == "ok")
        assert fields["api_key"] not in result.text
    anthropic_call = next(h for h in upstream.requests if "X-Api-Key" in h or "x-api-key" in h)
    assert {k.lower(): v for k, v in anthropic_call.items()}["anthropic-version"] == "2023-06-01"


async def test_disable_enable_and_update_publish_invalidations(
    api: Api, pool: asyncpg.Pool, invalidations: InvalidationWatch
) -> None:
    op = await api.operator()
    credential = (
        await api.call("POST", "/v1/providers", op, json={"kind": "openai", "api_key": OPENAI_KEY})
    ).json()
    path = f"/v1/providers/{credential['id']}"
    disabled = await api.call("POST", f"{path}/disable", op, json={"reason": "quota exhausted"})
    assert disabled.json()["enabled"] is False
    assert disabled.json()["disabled_reason"] == "quota exhausted"
    assert (await api.call("POST", f"{path}/disable", op)).status_code == 409
    assert (await api.call("POST", f"{path}/enable", op)).json()["enabled"] is True
    assert (await api.call("POST", f"{path}/enable", op)).status_code == 409

    new_key = "sk-live-rotated-key-000000ABCD"
    updated = await api.call(
        "PATCH", path, op, json={"api_key": new_key, "weight": 5, "name": "primary"}
    )
    assert updated.status_code == 200, updated.text
    assert (updated.json()["last4"], updated.json()["weight"]) == ("ABCD", 5)
    row = await _row(pool, credential["id"])
    assert (
        api.runtime.key_ring.decrypt(
            row["secret_key_id"], bytes(row["secret_ciphertext"]), context=row["id"].bytes
        )
        == new_key.encode()
    )
    (event,) = await events_of(pool, "CredentialUpdated")
    assert event["before"] == {"name": "openai", "weight": 1, "secret_last4": "WXYZ"}
    assert event["after"] == {"name": "primary", "weight": 5, "secret_last4": "ABCD"}
    assert [e["reason"] for e in await events_of(pool, "CredentialDisabled")] == ["quota exhausted"]
    assert len(await events_of(pool, "CredentialEnabled")) == 1
    await invalidations.wait_for("credential", credential["id"])
    assert (await api.call("PATCH", path, op, json={"region": "us-east-1"})).status_code == 400
    assert (
        await api.call("GET", "/v1/providers/00000000-0000-4000-8000-000000000000", op)
    ).status_code == 404


async def test_secrets_rotate_reseals_every_secret_under_the_new_key(
    api: Api, pool: asyncpg.Pool
) -> None:
    op = await api.operator()
    ids = []
    for kind, key in [("openai", OPENAI_KEY), ("anthropic", ANTHROPIC_KEY)]:
        ids.append(
            (
                await api.call("POST", "/v1/providers", op, json={"kind": kind, "api_key": key})
            ).json()["id"]
        )
    old_entry = api.runtime.settings.secret_key
    new_entry = new_key_entry("k2")
    rotated_ring = KeyRing.parse(f"{new_entry},{old_entry}")
    async with api.runtime.unit(Actor(kind="cli", id="test")) as uow:
        result = await provider_service.reseal_all(uow, rotated_ring)
    assert (result.key_id, result.reencrypted) == ("k2", 2)
    for credential_id, key in zip(ids, [OPENAI_KEY, ANTHROPIC_KEY], strict=True):
        row = await _row(pool, credential_id)
        assert row["secret_key_id"] == "k2"
        # The old key can now be dropped: the new one alone opens every secret.
        alone = KeyRing.parse(new_entry)
        assert (
            alone.decrypt("k2", bytes(row["secret_ciphertext"]), context=row["id"].bytes)
            == key.encode()
        )
    (event,) = await events_of(pool, "CredentialsReencrypted")
    assert (event["key_id"], event["count"]) == ("k2", 2)

    # An app that knows only the new key still reads and tests them.
    settings = tenant_settings(secret_key=new_entry)
    async with AsyncTestClient(create_app(settings)) as client:
        rotated_api = Api(client, api.runtime)
        listed = await rotated_api.call(
            "GET", "/v1/providers", await rotated_api.token_for("op@platform.test")
        )
        assert {c["secret_key_id"] for c in listed.json()["data"]} == {"k2"}
