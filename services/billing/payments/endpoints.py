"""Payments HTTP routes: thin handlers over service.py, autotopup.py and reconciliation.py.

Access is checked by guards, which run before the body is read: a caller without access gets
401/403/404 whatever it sent. Tenant routes answer 404 to people outside the tenant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from uuid import UUID

from arq.connections import ArqRedis
from litestar import Litestar, Request, Router, get, post, put
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from redis.asyncio import ConnectionPool

from billing.payments.autotopup import AutoTopups
from billing.payments.reconciliation import Reconciliation
from billing.payments.runtime import PaymentsRuntime, arq_enqueue
from billing.payments.schemas import (
    AutoTopup,
    AutoTopupRequest,
    CheckoutCreated,
    CheckoutRequest,
    CreatePackRequest,
    NotificationList,
    Order,
    OrderList,
    Pack,
    PackList,
    ReconciliationRequest,
    ReconciliationRun,
    ReconciliationRunList,
    WebhookReceived,
)
from billing.payments.service import PaymentsService
from tally.auth import (
    Principal,
    TenantRole,
    provide_principal,
    require_platform_role,
)
from tally.errors import Forbidden
from tally.events.tenant import Actor
from tally.http import bind_tenant

Limit = Annotated[int, QueryParameter(ge=1, le=200, description="Most items to return")]
Runtime = NamedDependency[PaymentsRuntime]
Caller = NamedDependency[Principal]


@asynccontextmanager
async def payments_lifespan(app: Litestar) -> AsyncIterator[None]:
    """The app's PaymentsRuntime (and its ARQ pool for queueing jobs) for the app's life.

    The ARQ pool connects lazily (no ping at start): with Redis down the service still starts,
    webhooks are still stored, and the sweeper job processes them once Redis is back.
    """
    settings = app.state.settings
    arq_pool = ArqRedis(ConnectionPool.from_url(settings.redis_url))
    app.state.payments = PaymentsRuntime(
        pool=app.state.pool,
        settings=settings,
        redis=app.state.redis,
        enqueue=arq_enqueue(arq_pool),
    )
    try:
        yield
    finally:
        await app.state.payments.close()
        await arq_pool.aclose()


def _runtime(state: State) -> PaymentsRuntime:
    runtime: PaymentsRuntime = state.payments
    return runtime


async def _authenticated(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    await provide_principal(connection)


def _tenant_role(min_role: TenantRole) -> Any:
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = await provide_principal(connection)
        tenant_id = connection.path_params["tenant_id"]
        principal.require_tenant(tenant_id, min_role)
        bind_tenant(tenant_id)

    return guard


def _actor(principal: Caller) -> Actor:
    return Actor(kind="user", id=str(principal.user_id))


_TENANT = "/billing/tenants/{tenant_id:uuid}"


@post(f"{_TENANT}/checkout-sessions", guards=[_tenant_role("admin")], status_code=201)
async def create_checkout_session(
    tenant_id: FromPath[UUID], data: JSONBody[CheckoutRequest], principal: Caller, runtime: Runtime
) -> CheckoutCreated:
    """Start buying credits: a Stripe Checkout Session for a pack or a custom amount."""
    return await PaymentsService(runtime).create_checkout(tenant_id, data, _actor(principal))


@get(f"{_TENANT}/orders", guards=[_tenant_role("member")])
async def list_orders(tenant_id: FromPath[UUID], runtime: Runtime, limit: Limit = 50) -> OrderList:
    """The tenant's purchases and top-ups, newest first."""
    return await PaymentsService(runtime).list_orders(tenant_id, limit)


@get(f"{_TENANT}/orders/{{order_id:uuid}}", guards=[_tenant_role("member")])
async def get_order(tenant_id: FromPath[UUID], order_id: FromPath[UUID], runtime: Runtime) -> Order:
    return await PaymentsService(runtime).get_order(tenant_id, order_id)


@get(f"{_TENANT}/auto-topup", guards=[_tenant_role("member")])
async def get_auto_topup(tenant_id: FromPath[UUID], runtime: Runtime) -> AutoTopup:
    return await AutoTopups(runtime).get(tenant_id)


@put(f"{_TENANT}/auto-topup", guards=[_tenant_role("admin")])
async def set_auto_topup(
    tenant_id: FromPath[UUID], data: JSONBody[AutoTopupRequest], principal: Caller, runtime: Runtime
) -> AutoTopup:
    """Turn auto top-up on (threshold, pack, saved card) or off."""
    return await AutoTopups(runtime).configure(tenant_id, data, _actor(principal))


@get(f"{_TENANT}/payment-notifications", guards=[_tenant_role("member")])
async def list_payment_notifications(
    tenant_id: FromPath[UUID], runtime: Runtime, limit: Limit = 50
) -> NotificationList:
    """Failed payments and auto top-up changes the tenant should know about."""
    return await PaymentsService(runtime).list_notifications(tenant_id, limit)


@get("/billing/packs", guards=[_authenticated])
async def list_packs(
    principal: Caller, runtime: Runtime, include_archived: FromQuery[bool] = False
) -> PackList:
    """The packs on sale and the custom-amount rule (archived ones too, for operators)."""
    if include_archived and not principal.has_platform_role("operator", "finance"):
        raise Forbidden("only operators see archived packs", param="include_archived")
    return await PaymentsService(runtime).list_packs(include_archived=include_archived)


@post("/billing/packs", guards=[require_platform_role("operator")], status_code=201)
async def create_pack(
    data: JSONBody[CreatePackRequest], principal: Caller, runtime: Runtime
) -> Pack:
    return await PaymentsService(runtime).create_pack(data, _actor(principal))


@post(
    "/billing/packs/{pack_id:uuid}/archive",
    guards=[require_platform_role("operator")],
    status_code=200,
)
async def archive_pack(pack_id: FromPath[UUID], principal: Caller, runtime: Runtime) -> Pack:
    return await PaymentsService(runtime).archive_pack(pack_id, _actor(principal))


@post("/billing/reconciliation/runs", guards=[require_platform_role("operator")], status_code=202)
async def request_reconciliation(
    data: JSONBody[ReconciliationRequest], runtime: Runtime
) -> ReconciliationRun:
    """Queue a comparison of Stripe's payments and refunds with the log for a period."""
    return await Reconciliation(runtime).request(data.period_start, data.period_end)


@get("/billing/reconciliation/runs", guards=[require_platform_role("operator", "finance")])
async def list_reconciliation_runs(runtime: Runtime, limit: Limit = 50) -> ReconciliationRunList:
    return await Reconciliation(runtime).list_runs(limit)


@get(
    "/billing/reconciliation/runs/{run_id:uuid}",
    guards=[require_platform_role("operator", "finance")],
)
async def get_reconciliation_run(run_id: FromPath[UUID], runtime: Runtime) -> ReconciliationRun:
    """One run with every mismatch it found."""
    return await Reconciliation(runtime).get(run_id)


@post("/webhooks/stripe", status_code=200, include_in_schema=True)
async def stripe_webhook(request: Request[Any, Any, Any], runtime: Runtime) -> WebhookReceived:
    """Stripe's events: verified, stored once, processed by a job. 400 if not Stripe's."""
    payload = await request.body()
    signature = request.headers.get("stripe-signature")
    return await PaymentsService(runtime).receive_webhook(payload, signature)


payments_router = Router(
    path="/",
    route_handlers=[
        create_checkout_session,
        list_orders,
        get_order,
        get_auto_topup,
        set_auto_topup,
        list_payment_notifications,
        list_packs,
        create_pack,
        archive_pack,
        request_reconciliation,
        list_reconciliation_runs,
        get_reconciliation_run,
        stripe_webhook,
    ],
    dependencies={
        "runtime": Provide(_runtime, sync_to_thread=False),
    },
)
