"""Every payments route refuses bad input with a precise 4xx in the error shape, writes nothing,
and never shows one tenant's data to another (404)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from billing.payments.runtime import PaymentsRuntime
from tally.config import Settings
from tests.fakes.stripe_api import FakeStripe, WebhookSender
from tests.integration.payments.conftest import (
    Tenants,
    admin_of,
    buy,
    operator,
    token,
)

WRITABLE = (
    "credit_packs",
    "stripe_customers",
    "payment_orders",
    "payment_refunds",
    "payment_disputes",
    "stripe_webhook_events",
    "payment_notifications",
    "auto_topup_settings",
    "reconciliation_runs",
    "events",
)


@dataclass
class World:
    """Two tenants (A with a purchase), a pack, an archived pack, a metered tenant."""

    settings: Settings
    a: uuid.UUID
    b: uuid.UUID
    metered: uuid.UUID
    pack: str
    archived_pack: str
    order_a: str


@pytest.fixture
async def world(billing: httpx.AsyncClient, payment_settings: Settings, tenants: Tenants) -> World:
    a, b = await tenants.create("Alpha"), await tenants.create("Beta")
    metered = await tenants.create("Meter", mode="metered")
    ops = operator(payment_settings)
    pack = (
        await billing.post(
            "/billing/packs", json={"name": "P", "credits": 10, "price": "10"}, headers=ops
        )
    ).json()["id"]
    archived = (
        await billing.post(
            "/billing/packs", json={"name": "Old", "credits": 10, "price": "9"}, headers=ops
        )
    ).json()["id"]
    assert (
        await billing.post(f"/billing/packs/{archived}/archive", headers=ops)
    ).status_code == 200
    order = await buy(billing, payment_settings, a, credits=10)
    return World(payment_settings, a, b, metered, pack, archived, order["order_id"])


Case = tuple[str, str, Callable[[World], Any], Callable[[World], dict[str, str]], int, str]

NO_AUTH: Callable[[World], dict[str, str]] = lambda w: {}  # noqa: E731


def admin_a(w: World) -> dict[str, str]:
    return admin_of(w.settings, w.a)


def member_a(w: World) -> dict[str, str]:
    return token(w.settings, tenants={w.a: "member"})


def admin_b(w: World) -> dict[str, str]:
    return admin_of(w.settings, w.b)


def ops(w: World) -> dict[str, str]:
    return operator(w.settings)


def finance(w: World) -> dict[str, str]:
    return token(w.settings, roles=frozenset({"finance"}))


CHECKOUT = "/billing/tenants/{a}/checkout-sessions"
CASES: list[tuple[str, str, str, Any, Callable[[World], dict[str, str]], int, str]] = [
    # checkout
    ("checkout without a token", "POST", CHECKOUT, {"credits": 10}, NO_AUTH, 401, "missing_token"),
    (
        "checkout with a forged token",
        "POST",
        CHECKOUT,
        {"credits": 10},
        lambda w: {"Authorization": "Bearer abc.def.ghi"},
        401,
        "invalid_token",
    ),
    ("checkout for another tenant", "POST", CHECKOUT, {"credits": 10}, admin_b, 404, "not_found"),
    ("checkout by a member", "POST", CHECKOUT, {"credits": 10}, member_a, 403, "forbidden"),
    ("checkout, not JSON", "POST", CHECKOUT, b"{credits", admin_a, 400, "invalid_request"),
    (
        "checkout, unknown field",
        "POST",
        CHECKOUT,
        {"credits": 10, "price": 1},
        admin_a,
        400,
        "invalid_request",
    ),
    (
        "checkout, credits as float",
        "POST",
        CHECKOUT,
        {"credits": 10.5},
        admin_a,
        400,
        "invalid_request",
    ),
    ("checkout, zero credits", "POST", CHECKOUT, {"credits": 0}, admin_a, 400, "invalid_request"),
    (
        "checkout, below the minimum",
        "POST",
        CHECKOUT,
        {"credits": 4},
        admin_a,
        400,
        "invalid_purchase",
    ),
    (
        "checkout, above the maximum",
        "POST",
        CHECKOUT,
        {"credits": 5001},
        admin_a,
        400,
        "invalid_purchase",
    ),
    (
        "checkout, pack and credits",
        "POST",
        CHECKOUT,
        "pack+credits",
        admin_a,
        400,
        "invalid_purchase",
    ),
    ("checkout, neither", "POST", CHECKOUT, {}, admin_a, 400, "invalid_purchase"),
    (
        "checkout, unknown pack",
        "POST",
        CHECKOUT,
        {"pack_id": str(uuid.uuid4())},
        admin_a,
        404,
        "pack_not_found",
    ),
    ("checkout, archived pack", "POST", CHECKOUT, "archived", admin_a, 404, "pack_not_found"),
    (
        "checkout, malformed pack id",
        "POST",
        CHECKOUT,
        {"pack_id": "nope"},
        admin_a,
        400,
        "invalid_request",
    ),
    (
        "checkout, metered tenant",
        "POST",
        "/billing/tenants/{metered}/checkout-sessions",
        {"credits": 10},
        ops,
        409,
        "tenant_not_prepaid",
    ),
    (
        "checkout, unknown tenant",
        "POST",
        "/billing/tenants/{unknown}/checkout-sessions",
        {"credits": 10},
        ops,
        404,
        "tenant_not_found",
    ),
    (
        "checkout, tenant id not a uuid",
        "POST",
        "/billing/tenants/acme/checkout-sessions",
        {"credits": 10},
        ops,
        404,
        "not_found",
    ),
    # orders and notifications
    (
        "orders of another tenant",
        "GET",
        "/billing/tenants/{a}/orders",
        None,
        admin_b,
        404,
        "not_found",
    ),
    (
        "orders, limit 0",
        "GET",
        "/billing/tenants/{a}/orders?limit=0",
        None,
        admin_a,
        400,
        "invalid_request",
    ),
    (
        "orders, limit text",
        "GET",
        "/billing/tenants/{a}/orders?limit=all",
        None,
        admin_a,
        400,
        "invalid_request",
    ),
    (
        "A's order through B's path",
        "GET",
        "/billing/tenants/{b}/orders/{order_a}",
        None,
        admin_b,
        404,
        "order_not_found",
    ),
    (
        "A's order, B's token",
        "GET",
        "/billing/tenants/{a}/orders/{order_a}",
        None,
        admin_b,
        404,
        "not_found",
    ),
    (
        "notifications of another tenant",
        "GET",
        "/billing/tenants/{a}/payment-notifications",
        None,
        admin_b,
        404,
        "not_found",
    ),
    (
        "notifications, limit 201",
        "GET",
        "/billing/tenants/{a}/payment-notifications?limit=201",
        None,
        admin_a,
        400,
        "invalid_request",
    ),
    # auto top-up
    (
        "auto top-up of another tenant",
        "GET",
        "/billing/tenants/{a}/auto-topup",
        None,
        admin_b,
        404,
        "not_found",
    ),
    (
        "auto top-up by a member",
        "PUT",
        "/billing/tenants/{a}/auto-topup",
        {"enabled": False},
        member_a,
        403,
        "forbidden",
    ),
    (
        "auto top-up, enabled missing",
        "PUT",
        "/billing/tenants/{a}/auto-topup",
        {"threshold_credits": 5},
        admin_a,
        400,
        "invalid_request",
    ),
    (
        "auto top-up, no threshold",
        "PUT",
        "/billing/tenants/{a}/auto-topup",
        "topup-no-threshold",
        admin_a,
        400,
        "invalid_purchase",
    ),
    (
        "auto top-up, no pack",
        "PUT",
        "/billing/tenants/{a}/auto-topup",
        {"enabled": True, "threshold_credits": 5},
        admin_a,
        400,
        "invalid_purchase",
    ),
    (
        "auto top-up, threshold 0",
        "PUT",
        "/billing/tenants/{a}/auto-topup",
        {"enabled": True, "threshold_credits": 0},
        admin_a,
        400,
        "invalid_request",
    ),
    # packs
    ("packs without a token", "GET", "/billing/packs", None, NO_AUTH, 401, "missing_token"),
    (
        "archived packs for a tenant user",
        "GET",
        "/billing/packs?include_archived=true",
        None,
        admin_a,
        403,
        "forbidden",
    ),
    (
        "pack by a tenant admin",
        "POST",
        "/billing/packs",
        {"name": "X", "credits": 1, "price": "1.00"},
        admin_a,
        403,
        "forbidden",
    ),
    (
        "pack, price as number",
        "POST",
        "/billing/packs",
        {"name": "X", "credits": 1, "price": 1},
        ops,
        400,
        "invalid_request",
    ),
    (
        "pack, price with sub-cents",
        "POST",
        "/billing/packs",
        {"name": "X", "credits": 1, "price": "1.005"},
        ops,
        400,
        "invalid_purchase",
    ),
    (
        "pack, price too small",
        "POST",
        "/billing/packs",
        {"name": "X", "credits": 1, "price": "0.49"},
        ops,
        400,
        "invalid_purchase",
    ),
    (
        "pack, negative credits",
        "POST",
        "/billing/packs",
        {"name": "X", "credits": -1, "price": "1.00"},
        ops,
        400,
        "invalid_request",
    ),
    (
        "pack, bad currency",
        "POST",
        "/billing/packs",
        {"name": "X", "credits": 1, "price": "1.00", "currency": "dollars"},
        ops,
        400,
        "invalid_request",
    ),
    (
        "pack, blank name",
        "POST",
        "/billing/packs",
        {"name": " ", "credits": 1, "price": "1.00"},
        ops,
        400,
        "invalid_purchase",
    ),
    (
        "pack, name taken",
        "POST",
        "/billing/packs",
        {"name": "p", "credits": 5, "price": "5.00"},
        ops,
        400,
        "invalid_purchase",
    ),
    (
        "archive an unknown pack",
        "POST",
        "/billing/packs/{unknown}/archive",
        None,
        ops,
        404,
        "pack_not_found",
    ),
    (
        "archive an archived pack",
        "POST",
        "/billing/packs/{archived_pack}/archive",
        None,
        ops,
        404,
        "pack_not_found",
    ),
    # reconciliation
    (
        "reconcile by finance",
        "POST",
        "/billing/reconciliation/runs",
        {"period_start": "2026-11-01T00:00:00Z", "period_end": "2026-11-02T00:00:00Z"},
        finance,
        403,
        "forbidden",
    ),
    (
        "reconcile, reversed period",
        "POST",
        "/billing/reconciliation/runs",
        {"period_start": "2026-11-02T00:00:00Z", "period_end": "2026-11-01T00:00:00Z"},
        ops,
        400,
        "invalid_purchase",
    ),
    (
        "reconcile, no time zone",
        "POST",
        "/billing/reconciliation/runs",
        {"period_start": "2026-11-01T00:00:00", "period_end": "2026-11-02T00:00:00"},
        ops,
        400,
        "invalid_purchase",
    ),
    (
        "reconcile, a year",
        "POST",
        "/billing/reconciliation/runs",
        {"period_start": "2025-11-01T00:00:00Z", "period_end": "2026-11-01T00:00:00Z"},
        ops,
        400,
        "invalid_purchase",
    ),
    (
        "reconcile, not a date",
        "POST",
        "/billing/reconciliation/runs",
        {"period_start": "yesterday", "period_end": "2026-11-01T00:00:00Z"},
        ops,
        400,
        "invalid_request",
    ),
    (
        "runs for a tenant user",
        "GET",
        "/billing/reconciliation/runs",
        None,
        admin_a,
        403,
        "forbidden",
    ),
    (
        "unknown run",
        "GET",
        "/billing/reconciliation/runs/{unknown}",
        None,
        finance,
        404,
        "reconciliation_run_not_found",
    ),
]


def _body(spec: Any, w: World) -> Any:
    match spec:
        case "pack+credits":
            return {"pack_id": w.pack, "credits": 10}
        case "archived":
            return {"pack_id": w.archived_pack}
        case "topup-no-threshold":
            return {"enabled": True, "pack_id": w.pack}
    return spec


async def _snapshot(pool: asyncpg.Pool) -> dict[str, int]:
    async with pool.acquire() as conn:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in WRITABLE}


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_bad_requests_get_a_precise_4xx_and_write_nothing(
    method: str,
    path: str,
    body: Any,
    headers: Callable[[World], dict[str, str]],
    status: int,
    code: str,
    world: World,
    billing: httpx.AsyncClient,
    fake_stripe: FakeStripe,
    pool: asyncpg.Pool,
) -> None:
    url = path.format(
        a=world.a,
        b=world.b,
        metered=world.metered,
        unknown=uuid.uuid4(),
        order_a=world.order_a,
        archived_pack=world.archived_pack,
    )
    before, stripe_calls = await _snapshot(pool), len(fake_stripe.requests)
    payload = _body(body, world)
    kwargs: dict[str, Any] = {"headers": headers(world)}
    if isinstance(payload, bytes):
        kwargs["content"] = payload
        kwargs["headers"] = {**kwargs["headers"], "Content-Type": "application/json"}
    elif payload is not None:
        kwargs["json"] = payload

    response = await billing.request(method, url, **kwargs)

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["message"]
    assert await _snapshot(pool) == before
    assert len(fake_stripe.requests) == stripe_calls


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json at all", "not a Stripe event"),
        (b'{"id": "evt_1"}', "not a Stripe event"),
        (b"\xff\xfe", "not UTF-8"),
        (b"", "missing Stripe-Signature"),
    ],
)
async def test_signed_garbage_and_empty_webhooks_get_400_and_store_nothing(
    body: bytes,
    expected: str,
    billing: httpx.AsyncClient,
    sender: WebhookSender,
    pool: asyncpg.Pool,
) -> None:
    headers = {"Content-Type": "application/json"}
    if body:
        headers["Stripe-Signature"] = sender.sign(body.decode("latin-1"))
    response = await billing.post("/webhooks/stripe", content=body, headers=headers)
    assert response.status_code == 400
    assert expected in response.json()["error"]["message"]
    assert await _snapshot(pool) == dict.fromkeys(WRITABLE, 0)


async def test_a_tenant_sees_only_its_own_orders_and_notifications(
    world: World, billing: httpx.AsyncClient, runtime: PaymentsRuntime
) -> None:
    await buy(billing, world.settings, world.b, credits=20)
    orders_a = await billing.get(f"/billing/tenants/{world.a}/orders", headers=admin_a(world))
    orders_b = await billing.get(f"/billing/tenants/{world.b}/orders", headers=admin_b(world))
    assert [o["credits"] for o in orders_a.json()["data"]] == [10]
    assert [o["credits"] for o in orders_b.json()["data"]] == [20]
    assert {o["tenant_id"] for o in orders_b.json()["data"]} == {str(world.b)}
