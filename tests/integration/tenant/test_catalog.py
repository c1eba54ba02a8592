"""The model catalog: public names, metadata, and routes through provider credentials."""

from __future__ import annotations

import asyncpg

from tests.integration.tenant.conftest import Api, InvalidationWatch, count_rows, events_of


async def _operator_with_credentials(api: Api) -> tuple[str, dict[str, str]]:
    op = await api.operator()
    ids = {}
    for kind, name in [("openai", "oai-main"), ("openrouter", "router"), ("anthropic", "claude")]:
        response = await api.call(
            "POST",
            "/v1/providers",
            op,
            json={"kind": kind, "name": name, "api_key": "sk-" + "x" * 20},
        )
        ids[name] = response.json()["id"]
    return op, ids


async def test_a_model_with_failover_routes(
    api: Api, pool: asyncpg.Pool, invalidations: InvalidationWatch
) -> None:
    op, creds = await _operator_with_credentials(api)
    created = await api.call(
        "POST",
        "/v1/catalog/models",
        op,
        json={
            "name": "gpt-4o",
            "context_window": 128_000,
            "max_output_tokens": 16_384,
            "modalities": ["text", "image"],
        },
    )
    assert created.status_code == 201, created.text
    await invalidations.wait_for("model", "gpt-4o")
    primary = await api.call(
        "POST", "/v1/catalog/routes", op, json={"model": "gpt-4o", "provider": "oai-main"}
    )
    backup = await api.call(
        "POST",
        "/v1/catalog/routes",
        op,
        json={
            "model": "gpt-4o",
            "credential_id": creds["router"],
            "upstream_model": "openai/gpt-4o",
            "priority": 1,
            "weight": 3,
        },
    )
    assert primary.status_code == backup.status_code == 201
    assert primary.json()["upstream_model"] == "gpt-4o"
    assert backup.json()["provider_kind"] == "openrouter"

    model = (await api.call("GET", "/v1/catalog/models/gpt-4o", op)).json()
    assert [(r["credential_name"], r["priority"], r["weight"]) for r in model["routes"]] == [
        ("oai-main", 0, 1),
        ("router", 1, 3),
    ]
    added = await events_of(pool, "ModelRouteAdded")
    assert [e["upstream_model"] for e in added] == ["gpt-4o", "openai/gpt-4o"]
    (made,) = await events_of(pool, "ModelCreated")
    assert made["modalities"] == ["text", "image"]

    duplicate = await api.call(
        "POST", "/v1/catalog/routes", op, json={"model": "gpt-4o", "provider": "oai-main"}
    )
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == "route_exists"
    again = await api.call("POST", "/v1/catalog/models", op, json={"name": "gpt-4o"})
    assert again.status_code == 409


async def test_models_with_slashes_and_updates(
    api: Api, pool: asyncpg.Pool, invalidations: InvalidationWatch
) -> None:
    op, _ = await _operator_with_credentials(api)
    name = "meta-llama/llama-3.1-8b"
    assert (
        await api.call("POST", "/v1/catalog/models", op, json={"name": name})
    ).status_code == 201
    route = (
        await api.call("POST", "/v1/catalog/routes", op, json={"model": name, "provider": "router"})
    ).json()
    path = f"/v1/catalog/models/{name}"
    assert (await api.call("GET", path, op)).json()["name"] == name

    disabled = await api.call("PATCH", path, op, json={"enabled": False, "context_window": 8192})
    assert disabled.status_code == 200
    assert (disabled.json()["enabled"], disabled.json()["context_window"]) == (False, 8192)
    await invalidations.wait_for("model", name)
    (change,) = await events_of(pool, "ModelUpdated")
    assert change["before"] == {"enabled": True, "context_window": None}
    assert change["after"] == {"enabled": False, "context_window": 8192}
    listed = (await api.call("GET", "/v1/catalog/models", op)).json()["data"]
    assert listed == []
    every = (
        await api.call("GET", "/v1/catalog/models", op, params={"include_disabled": "true"})
    ).json()["data"]
    assert [m["name"] for m in every] == [name]

    route_path = f"/v1/catalog/routes/{route['id']}"
    changed = await api.call("PATCH", route_path, op, json={"priority": 5, "enabled": False})
    assert (changed.json()["priority"], changed.json()["enabled"]) == (5, False)
    (route_change,) = await events_of(pool, "ModelRouteUpdated")
    assert route_change["after"] == {"priority": 5, "enabled": False}
    assert (await api.call("DELETE", route_path, op)).status_code == 204
    assert (await api.call("DELETE", route_path, op)).status_code == 404
    assert len(await events_of(pool, "ModelRouteRemoved")) == 1


async def test_bad_catalog_input_is_4xx_and_writes_nothing(api: Api, pool: asyncpg.Pool) -> None:
    op, creds = await _operator_with_credentials(api)
    await api.call("POST", "/v1/catalog/models", op, json={"name": "m1"})
    before = await count_rows(pool)
    cases = [
        ("POST", "/v1/catalog/models", {"name": ""}, 400),
        ("POST", "/v1/catalog/models", {"name": "has space"}, 400),
        ("POST", "/v1/catalog/models", {"name": "m2", "context_window": 0}, 400),
        ("POST", "/v1/catalog/models", {"name": "m2", "modalities": ["smell"]}, 400),
        ("POST", "/v1/catalog/models", {"name": "m2", "modalities": []}, 400),
        ("POST", "/v1/catalog/models", {"name": "m2", "enabled": "yes"}, 400),
        ("POST", "/v1/catalog/routes", {"model": "m1"}, 400),
        (
            "POST",
            "/v1/catalog/routes",
            {"model": "m1", "provider": "oai-main", "credential_id": creds["router"]},
            400,
        ),
        ("POST", "/v1/catalog/routes", {"model": "nope", "provider": "oai-main"}, 404),
        ("POST", "/v1/catalog/routes", {"model": "m1", "provider": "ghost"}, 404),
        ("POST", "/v1/catalog/routes", {"model": "m1", "credential_id": "not-a-uuid"}, 400),
        (
            "POST",
            "/v1/catalog/routes",
            {"model": "m1", "provider": "oai-main", "priority": 5000},
            400,
        ),
        ("POST", "/v1/catalog/routes", {"model": "m1", "provider": "oai-main", "weight": -2}, 400),
        ("PATCH", "/v1/catalog/models/nope", {"enabled": False}, 404),
        ("PATCH", "/v1/catalog/models/m1", {"name": "m9"}, 400),
        ("PATCH", "/v1/catalog/routes/00000000-0000-4000-8000-000000000000", {"weight": 1}, 404),
    ]
    for method, path, body, status in cases:
        response = await api.call(method, path, op, json=body)
        assert response.status_code == status, (path, body, response.text)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert await count_rows(pool) == before


async def test_tenants_read_the_catalog_without_routes_and_cannot_change_it(api: Api) -> None:
    op, _ = await _operator_with_credentials(api)
    await api.call("POST", "/v1/catalog/models", op, json={"name": "m1"})
    await api.call("POST", "/v1/catalog/routes", op, json={"model": "m1", "provider": "oai-main"})
    tenant = await api.new_tenant(op, "Acme")
    member = await api.tenant_admin(tenant["id"], "m@acme.test", role="member")
    listed = (await api.call("GET", "/v1/catalog/models", member)).json()["data"]
    assert [(m["name"], m["routes"]) for m in listed] == [("m1", None)]
    assert (
        await api.call("POST", "/v1/catalog/models", member, json={"name": "m2"})
    ).status_code == 403
    assert (
        await api.call("PATCH", "/v1/catalog/models/m1", member, json={"enabled": False})
    ).status_code == 403
