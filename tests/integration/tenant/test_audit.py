"""The audit log: admin events with actor, time and before/after, filtered and paged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.integration.tenant.conftest import Api


async def _history(api: Api) -> tuple[str, str, str, str]:
    """Some admin activity in two tenants; (operator, tenant A, admin of A, tenant B)."""
    op = await api.operator()
    a = (await api.new_tenant(op, "Alpha"))["id"]
    b = (await api.new_tenant(op, "Beta"))["id"]
    admin_a = await api.tenant_admin(a, "admin@alpha.test")
    await api.call("POST", f"/v1/tenants/{a}/api-keys", admin_a, json={"name": "one"})
    await api.call("POST", f"/v1/tenants/{b}/api-keys", op, json={"name": "two"})
    await api.call("PATCH", f"/v1/tenants/{a}", op, json={"billing_email": "ap@alpha.test"})
    await api.call(
        "POST", "/v1/providers", op, json={"kind": "openai", "api_key": "sk-secret-value-1234"}
    )
    return op, a, admin_a, b


async def test_the_platform_audit_log_filters_by_tenant_type_actor_and_time(api: Api) -> None:
    op, a, _, _ = await _history(api)
    everything = (await api.call("GET", "/v1/audit-events", op, params={"limit": 200})).json()[
        "data"
    ]
    types = [e["type"] for e in everything]
    assert types[0] == "CredentialAdded"  # newest first
    assert {"TenantCreated", "ApiKeyCreated", "TenantUpdated", "UserSignedIn"} <= set(types)
    positions = [e["position"] for e in everything]
    assert positions == sorted(positions, reverse=True)

    only_a = (await api.call("GET", "/v1/audit-events", op, params={"tenant_id": a})).json()["data"]
    assert {e["tenant_id"] for e in only_a} == {a}
    keys = (
        await api.call(
            "GET", "/v1/audit-events", op, params={"type": ["ApiKeyCreated", "TenantUpdated"]}
        )
    ).json()["data"]
    assert sorted(e["type"] for e in keys) == ["ApiKeyCreated", "ApiKeyCreated", "TenantUpdated"]
    update = next(e for e in keys if e["type"] == "TenantUpdated")
    assert update["data"]["before"] == {"billing_email": None}
    assert update["data"]["after"] == {"billing_email": "ap@alpha.test"}
    operator_id = update["actor"]["id"]

    by_operator = (
        await api.call(
            "GET", "/v1/audit-events", op, params={"actor_id": operator_id, "limit": 200}
        )
    ).json()["data"]
    assert by_operator and all(e["actor"]["id"] == operator_id for e in by_operator)
    by_kind = (await api.call("GET", "/v1/audit-events", op, params={"actor_kind": "cli"})).json()[
        "data"
    ]
    assert by_kind == []

    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert (await api.call("GET", "/v1/audit-events", op, params={"since": later})).json()[
        "data"
    ] == []
    until_now = (
        await api.call("GET", "/v1/audit-events", op, params={"until": later, "limit": 200})
    ).json()
    assert len(until_now["data"]) == len(everything)

    pages, cursor = [], None
    while True:
        params: dict[str, object] = {"limit": 4}
        if cursor:
            params["cursor"] = cursor
        page = (await api.call("GET", "/v1/audit-events", op, params=params)).json()
        pages += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert [e["position"] for e in pages] == positions

    for params in [
        {"type": "NoSuchEvent"},
        {"actor_kind": "robot"},
        {"since": "yesterday"},
        {"tenant_id": "x"},
        {"cursor": "%%%"},
    ]:
        assert (await api.call("GET", "/v1/audit-events", op, params=params)).status_code == 400, (
            params
        )


async def test_a_tenant_admin_sees_only_their_tenants_audit_log(api: Api) -> None:
    _, a, admin_a, b = await _history(api)
    own = (await api.call("GET", f"/v1/tenants/{a}/audit-events", admin_a)).json()["data"]
    assert own and {e["tenant_id"] for e in own} == {a}
    assert (await api.call("GET", f"/v1/tenants/{b}/audit-events", admin_a)).status_code == 404
    assert (await api.call("GET", "/v1/audit-events", admin_a)).status_code == 403
    member = await api.tenant_admin(a, "member@alpha.test", role="member")
    assert (await api.call("GET", f"/v1/tenants/{a}/audit-events", member)).status_code == 403


async def test_audit_entries_never_carry_secrets(api: Api) -> None:
    op, a, admin_a, _ = await _history(api)
    issued = (await api.call("POST", f"/v1/tenants/{a}/api-keys", admin_a, json={})).json()
    log = await api.call("GET", "/v1/audit-events", op, params={"limit": 200})
    assert "sk-secret-value-1234" not in log.text
    assert issued["key"] not in log.text
    credential = next(e for e in log.json()["data"] if e["type"] == "CredentialAdded")
    assert credential["data"]["last4"] == "1234"


def test_redaction_reaches_nested_fields() -> None:
    from tenant.audit.service import redact

    assert redact({"a": {"api_key": "k", "list": [{"password": "p", "ok": 1}]}, "token": "t"}) == {
        "a": {"api_key": "[redacted]", "list": [{"password": "[redacted]", "ok": 1}]},
        "token": "[redacted]",
    }
