"""Every SQL statement of payments. Tenant-scoped statements take `tenant_id` explicitly.

Locks, in the one order every path takes them (so no two paths deadlock):
    webhook event row (FOR UPDATE) -> tenant payments lock (advisory) -> order / settings row.
The tenant lock serialises "credit a purchase" with "decide an auto top-up", so a top-up
decision always sees every purchase committed before it (see autotopup.py).
"""

# Statements splice in only the column lists below (module constants); every value is a bound
# parameter, so the f-strings cannot carry input into SQL.
# ruff: noqa: S608

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import msgspec

from tally.db import Connection
from tally.events.tenant import Actor

T = TypeVar("T")

# --- row types ---------------------------------------------------------------------------------


class TenantRow(msgspec.Struct, frozen=True):
    id: UUID
    name: str
    mode: str
    status: str
    billing_email: str | None


class PackRow(msgspec.Struct, frozen=True):
    id: UUID
    name: str
    credits: int
    price_minor: int
    currency: str
    active: bool
    created_at: datetime


class CustomerRow(msgspec.Struct, frozen=True):
    tenant_id: UUID
    customer_id: str | None
    payment_method: str | None
    payment_method_kind: str | None


class OrderRow(msgspec.Struct, frozen=True):
    id: UUID
    tenant_id: UUID
    source: str
    status: str
    pack_id: UUID | None
    credits: int
    amount_nano: int
    price_minor: int
    currency: str
    save_payment_method: bool
    stripe_customer: str | None
    payment_method: str | None
    stripe_session_id: str | None
    stripe_payment_intent: str | None
    stripe_charge: str | None
    checkout_url: str | None
    expires_at: datetime | None
    paid_minor: int | None
    credited_at: datetime | None
    refunded_minor: int
    refunded_nano: int
    failure_code: str | None
    failure_message: str | None
    created_at: datetime


class DisputeRow(msgspec.Struct, frozen=True):
    dispute_id: str
    order_id: UUID
    tenant_id: UUID
    disputed_minor: int
    frozen_nano: int
    outcome: str | None


class WebhookEventRow(msgspec.Struct, frozen=True):
    event_id: str
    type: str
    payload: dict[str, Any]
    status: str
    attempts: int
    received_at: datetime


class NotificationRow(msgspec.Struct, frozen=True):
    id: UUID
    tenant_id: UUID
    kind: str
    message: str
    data: dict[str, Any]
    created_at: datetime


class AutoTopupRow(msgspec.Struct, frozen=True):
    tenant_id: UUID
    enabled: bool
    threshold_nano: int
    pack_id: UUID
    disabled_reason: str | None
    updated_at: datetime


class RunRow(msgspec.Struct, frozen=True):
    id: UUID
    period_start: datetime
    period_end: datetime
    status: str
    stripe_payments: int
    stripe_refunds: int
    mismatches: int
    error: str | None
    created_at: datetime
    finished_at: datetime | None


class MismatchRow(msgspec.Struct, frozen=True):
    id: int
    run_id: UUID
    kind: str
    tenant_id: UUID | None
    stripe_id: str | None
    purchase_id: str | None
    expected_minor: int | None
    actual_minor: int | None
    detail: str


def _row(record: asyncpg.Record | None, type_: type[T]) -> T | None:
    return None if record is None else msgspec.convert(dict(record), type_)


def _rows(records: list[asyncpg.Record], type_: type[T]) -> list[T]:
    return [msgspec.convert(dict(r), type_) for r in records]


# --- tenants and the per-tenant lock -----------------------------------------------------------

_TENANT_COLUMNS = "id, name, mode, status, billing_email"
GET_TENANT = f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE id = $1"
GET_TENANT_BY_NAME = f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE lower(name) = lower($1)"
LOCK_TENANT_PAYMENTS = "SELECT pg_advisory_xact_lock(hashtextextended('payments:' || $1, 0))"


async def get_tenant(conn: Connection, tenant_id: UUID) -> TenantRow | None:
    return _row(await conn.fetchrow(GET_TENANT, tenant_id), TenantRow)


async def get_tenant_by_name(conn: Connection, name: str) -> TenantRow | None:
    return _row(await conn.fetchrow(GET_TENANT_BY_NAME, name), TenantRow)


async def lock_tenant_payments(conn: Connection, tenant_id: UUID) -> None:
    """Serialise crediting and top-up decisions of one tenant (until the transaction ends)."""
    await conn.execute(LOCK_TENANT_PAYMENTS, str(tenant_id))


# --- packs -------------------------------------------------------------------------------------

_PACK_COLUMNS = "id, name, credits, price_minor, currency, active, created_at"
INSERT_PACK = f"""
INSERT INTO credit_packs (id, name, credits, price_minor, currency)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT DO NOTHING
RETURNING {_PACK_COLUMNS}
"""
GET_PACK = f"SELECT {_PACK_COLUMNS} FROM credit_packs WHERE id = $1"
LIST_PACKS = f"""
SELECT {_PACK_COLUMNS} FROM credit_packs WHERE active OR $1
ORDER BY active DESC, currency, price_minor, id
"""
ARCHIVE_PACK = f"""
UPDATE credit_packs SET active = false, archived_at = now() WHERE id = $1 AND active
RETURNING {_PACK_COLUMNS}
"""


async def insert_pack(
    conn: Connection, pack_id: UUID, name: str, credits: int, price_minor: int, currency: str
) -> PackRow | None:
    """None when an active pack already has this name."""
    record = await conn.fetchrow(INSERT_PACK, pack_id, name, credits, price_minor, currency)
    return _row(record, PackRow)


async def get_pack(conn: Connection, pack_id: UUID) -> PackRow | None:
    return _row(await conn.fetchrow(GET_PACK, pack_id), PackRow)


async def list_packs(conn: Connection, *, include_archived: bool) -> list[PackRow]:
    return _rows(await conn.fetch(LIST_PACKS, include_archived), PackRow)


async def archive_pack(conn: Connection, pack_id: UUID) -> PackRow | None:
    return _row(await conn.fetchrow(ARCHIVE_PACK, pack_id), PackRow)


# --- Stripe customers --------------------------------------------------------------------------

_CUSTOMER_COLUMNS = "tenant_id, customer_id, payment_method, payment_method_kind"
GET_CUSTOMER = f"SELECT {_CUSTOMER_COLUMNS} FROM stripe_customers WHERE tenant_id = $1"
# COALESCE keeps the first id stored: two processes racing to create the customer both end up
# with the same id (Stripe replays the first creation for the shared idempotency key anyway).
STORE_CUSTOMER_ID = f"""
INSERT INTO stripe_customers (tenant_id, customer_id) VALUES ($1, $2)
ON CONFLICT (tenant_id) DO UPDATE
SET customer_id = COALESCE(stripe_customers.customer_id, EXCLUDED.customer_id), updated_at = now()
RETURNING {_CUSTOMER_COLUMNS}
"""
STORE_PAYMENT_METHOD = """
UPDATE stripe_customers SET payment_method = $2, payment_method_kind = $3, updated_at = now()
WHERE tenant_id = $1 AND customer_id = $4
"""


async def get_customer(conn: Connection, tenant_id: UUID) -> CustomerRow | None:
    return _row(await conn.fetchrow(GET_CUSTOMER, tenant_id), CustomerRow)


async def store_customer_id(conn: Connection, tenant_id: UUID, customer_id: str) -> CustomerRow:
    try:
        row = _row(await conn.fetchrow(STORE_CUSTOMER_ID, tenant_id, customer_id), CustomerRow)
    except asyncpg.UniqueViolationError:
        # Two first purchases inserting the same customer at once: ON CONFLICT (tenant_id)
        # arbitrates only on tenant_id, so the loser trips customer_id's own unique index
        # once the winner commits. The winner's row is the answer.
        row = await get_customer(conn, tenant_id)
    assert row is not None
    return row


async def store_payment_method(
    conn: Connection, tenant_id: UUID, customer_id: str, payment_method: str, kind: str | None
) -> None:
    await conn.execute(STORE_PAYMENT_METHOD, tenant_id, payment_method, kind, customer_id)


# --- orders ------------------------------------------------------------------------------------

_ORDER_COLUMNS = """id, tenant_id, source, status, pack_id, credits, amount_nano, price_minor,
currency, save_payment_method, stripe_customer, payment_method, stripe_session_id,
stripe_payment_intent,
stripe_charge, checkout_url, expires_at, paid_minor, credited_at, refunded_minor, refunded_nano,
failure_code, failure_message, created_at"""
INSERT_ORDER = f"""
INSERT INTO payment_orders (id, tenant_id, source, status, pack_id, credits, amount_nano,
                            price_minor, currency, save_payment_method, stripe_customer,
                            payment_method, actor)
VALUES ($1, $2, $3, 'creating', $4, $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING {_ORDER_COLUMNS}
"""
OPEN_CHECKOUT_ORDER = f"""
UPDATE payment_orders
SET status = 'open', stripe_session_id = $2, checkout_url = $3, expires_at = $4,
    updated_at = now()
WHERE id = $1 AND status = 'creating'
RETURNING {_ORDER_COLUMNS}
"""
SET_ORDER_ERROR = """
UPDATE payment_orders SET status = 'error', failure_message = $2, updated_at = now()
WHERE id = $1 AND status = 'creating'
"""
GET_ORDER = f"SELECT {_ORDER_COLUMNS} FROM payment_orders WHERE id = $1"
GET_TENANT_ORDER = f"SELECT {_ORDER_COLUMNS} FROM payment_orders WHERE id = $1 AND tenant_id = $2"
LOCK_ORDER = f"SELECT {_ORDER_COLUMNS} FROM payment_orders WHERE id = $1 FOR UPDATE"
GET_ORDER_BY_SESSION = f"SELECT {_ORDER_COLUMNS} FROM payment_orders WHERE stripe_session_id = $1"
GET_ORDER_BY_PAYMENT_INTENT = (
    f"SELECT {_ORDER_COLUMNS} FROM payment_orders WHERE stripe_payment_intent = $1"
)
LINK_PAYMENT_INTENT = """
UPDATE payment_orders
SET stripe_payment_intent = COALESCE(stripe_payment_intent, $2),
    stripe_charge = COALESCE($3, stripe_charge), updated_at = now()
WHERE id = $1
"""
MARK_ORDER_CREDITED = """
UPDATE payment_orders
SET status = 'paid', paid_minor = $2, credited_at = now(), failure_code = NULL,
    failure_message = NULL, updated_at = now()
WHERE id = $1 AND credited_at IS NULL
"""
# A late "failed" or "expired" never overrides a payment already credited.
MARK_ORDER_STATUS = """
UPDATE payment_orders
SET status = $2, failure_code = COALESCE($3, failure_code),
    failure_message = COALESCE($4, failure_message), updated_at = now()
WHERE id = $1 AND credited_at IS NULL
"""
ADD_ORDER_REFUND = """
UPDATE payment_orders
SET refunded_minor = refunded_minor + $2, refunded_nano = refunded_nano + $3, updated_at = now()
WHERE id = $1
"""
LIST_TENANT_ORDERS = f"""
SELECT {_ORDER_COLUMNS} FROM payment_orders
WHERE tenant_id = $1 AND status <> 'error'
ORDER BY created_at DESC, id DESC
LIMIT $2
"""


async def insert_order(
    conn: Connection,
    *,
    order_id: UUID,
    tenant_id: UUID,
    source: str,
    pack_id: UUID | None,
    credits: int,
    amount_nano: int,
    price_minor: int,
    currency: str,
    save_payment_method: bool,
    stripe_customer: str | None,
    actor: Actor,
    payment_method: str | None = None,
) -> OrderRow:
    record = await conn.fetchrow(
        INSERT_ORDER,
        order_id,
        tenant_id,
        source,
        pack_id,
        credits,
        amount_nano,
        price_minor,
        currency,
        save_payment_method,
        stripe_customer,
        payment_method,
        actor,
    )
    row = _row(record, OrderRow)
    assert row is not None
    return row


async def open_checkout_order(
    conn: Connection, order_id: UUID, session_id: str, url: str, expires_at: datetime | None
) -> OrderRow | None:
    record = await conn.fetchrow(OPEN_CHECKOUT_ORDER, order_id, session_id, url, expires_at)
    return _row(record, OrderRow)


async def set_order_error(conn: Connection, order_id: UUID, message: str) -> None:
    await conn.execute(SET_ORDER_ERROR, order_id, message)


async def get_order(conn: Connection, order_id: UUID) -> OrderRow | None:
    return _row(await conn.fetchrow(GET_ORDER, order_id), OrderRow)


async def get_tenant_order(conn: Connection, tenant_id: UUID, order_id: UUID) -> OrderRow | None:
    return _row(await conn.fetchrow(GET_TENANT_ORDER, order_id, tenant_id), OrderRow)


async def lock_order(conn: Connection, order_id: UUID) -> OrderRow | None:
    return _row(await conn.fetchrow(LOCK_ORDER, order_id), OrderRow)


async def get_order_by_session(conn: Connection, session_id: str) -> OrderRow | None:
    return _row(await conn.fetchrow(GET_ORDER_BY_SESSION, session_id), OrderRow)


async def get_order_by_payment_intent(conn: Connection, payment_intent: str) -> OrderRow | None:
    return _row(await conn.fetchrow(GET_ORDER_BY_PAYMENT_INTENT, payment_intent), OrderRow)


async def link_payment_intent(
    conn: Connection, order_id: UUID, payment_intent: str, charge: str | None
) -> None:
    await conn.execute(LINK_PAYMENT_INTENT, order_id, payment_intent, charge)


async def mark_order_credited(conn: Connection, order_id: UUID, paid_minor: int) -> bool:
    return bool(await conn.execute(MARK_ORDER_CREDITED, order_id, paid_minor) == "UPDATE 1")


async def mark_order_status(
    conn: Connection,
    order_id: UUID,
    status: str,
    *,
    failure_code: str | None = None,
    failure_message: str | None = None,
) -> bool:
    result = await conn.execute(MARK_ORDER_STATUS, order_id, status, failure_code, failure_message)
    return bool(result == "UPDATE 1")


async def add_order_refund(
    conn: Connection, order_id: UUID, refunded_minor: int, refunded_nano: int
) -> None:
    await conn.execute(ADD_ORDER_REFUND, order_id, refunded_minor, refunded_nano)


async def list_tenant_orders(conn: Connection, tenant_id: UUID, limit: int) -> list[OrderRow]:
    return _rows(await conn.fetch(LIST_TENANT_ORDERS, tenant_id, limit), OrderRow)


# --- refunds and disputes ----------------------------------------------------------------------

INSERT_REFUND = """
INSERT INTO payment_refunds (refund_id, order_id, tenant_id, amount_minor, amount_nano, currency)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (refund_id) DO NOTHING
"""
REFUND_APPLIED = "SELECT 1 FROM payment_refunds WHERE refund_id = $1"
_DISPUTE_COLUMNS = "dispute_id, order_id, tenant_id, disputed_minor, frozen_nano, outcome"
LOCK_DISPUTE = f"SELECT {_DISPUTE_COLUMNS} FROM payment_disputes WHERE dispute_id = $1 FOR UPDATE"
INSERT_DISPUTE = """
INSERT INTO payment_disputes (dispute_id, order_id, tenant_id, disputed_minor, frozen_nano)
VALUES ($1, $2, $3, $4, $5)
"""
CLOSE_DISPUTE = """
UPDATE payment_disputes SET outcome = $2, closed_at = now()
WHERE dispute_id = $1 AND outcome IS NULL
"""
OPEN_DISPUTES_FROZEN = """
SELECT coalesce(sum(frozen_nano), 0) FROM payment_disputes WHERE order_id = $1 AND outcome IS NULL
"""
LOST_DISPUTES_NANO = """
SELECT coalesce(sum(frozen_nano), 0) FROM payment_disputes WHERE order_id = $1 AND outcome = 'lost'
"""


async def insert_refund(
    conn: Connection,
    *,
    refund_id: str,
    order_id: UUID,
    tenant_id: UUID,
    amount_minor: int,
    amount_nano: int,
    currency: str,
) -> bool:
    result = await conn.execute(
        INSERT_REFUND, refund_id, order_id, tenant_id, amount_minor, amount_nano, currency
    )
    return bool(result == "INSERT 0 1")


async def refund_applied(conn: Connection, refund_id: str) -> bool:
    return await conn.fetchval(REFUND_APPLIED, refund_id) is not None


async def lock_dispute(conn: Connection, dispute_id: str) -> DisputeRow | None:
    return _row(await conn.fetchrow(LOCK_DISPUTE, dispute_id), DisputeRow)


async def insert_dispute(
    conn: Connection,
    *,
    dispute_id: str,
    order_id: UUID,
    tenant_id: UUID,
    disputed_minor: int,
    frozen_nano: int,
) -> None:
    await conn.execute(INSERT_DISPUTE, dispute_id, order_id, tenant_id, disputed_minor, frozen_nano)


async def close_dispute(conn: Connection, dispute_id: str, outcome: str) -> None:
    await conn.execute(CLOSE_DISPUTE, dispute_id, outcome)


async def frozen_nano_of_order(conn: Connection, order_id: UUID) -> int:
    """Credits of the order held by open disputes or removed by lost ones."""
    open_ = await conn.fetchval(OPEN_DISPUTES_FROZEN, order_id)
    lost = await conn.fetchval(LOST_DISPUTES_NANO, order_id)
    return int(open_) + int(lost)


# --- the webhook inbox -------------------------------------------------------------------------

# The raw body is stored as text cast to jsonb, so what Stripe signed is what is kept.
INSERT_WEBHOOK_EVENT = """
INSERT INTO stripe_webhook_events (event_id, type, livemode, api_version, stripe_created, payload)
VALUES ($1, $2, $3, $4, to_timestamp($5), $6::text::jsonb)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""
_WEBHOOK_COLUMNS = "event_id, type, payload, status, attempts, received_at"
GET_WEBHOOK_EVENT = f"SELECT {_WEBHOOK_COLUMNS} FROM stripe_webhook_events WHERE event_id = $1"
LOCK_WEBHOOK_EVENT = (
    f"SELECT {_WEBHOOK_COLUMNS} FROM stripe_webhook_events WHERE event_id = $1 FOR UPDATE"
)
FINISH_WEBHOOK_EVENT = """
UPDATE stripe_webhook_events
SET status = $2, outcome = $3, processed_at = now(), attempts = attempts + 1, last_error = NULL
WHERE event_id = $1
"""
FAIL_WEBHOOK_EVENT = """
UPDATE stripe_webhook_events
SET status = 'failed', attempts = attempts + 1, last_error = $2
WHERE event_id = $1 AND status IN ('pending', 'failed')
"""
# Events whose job never ran (enqueue lost) or failed; the oldest first, bounded attempts.
LIST_UNFINISHED_WEBHOOK_EVENTS = """
SELECT event_id FROM stripe_webhook_events
WHERE status IN ('pending', 'failed') AND received_at < now() - make_interval(secs => $1)
  AND attempts < $2
ORDER BY received_at
LIMIT $3
"""


async def insert_webhook_event(
    conn: Connection,
    *,
    event_id: str,
    type_: str,
    livemode: bool,
    api_version: str | None,
    created: int,
    payload: str,
) -> bool:
    """True when stored now, False when this event id was already stored."""
    inserted = await conn.fetchval(
        INSERT_WEBHOOK_EVENT, event_id, type_, livemode, api_version, created, payload
    )
    return inserted is not None


async def get_webhook_event(conn: Connection, event_id: str) -> WebhookEventRow | None:
    return _row(await conn.fetchrow(GET_WEBHOOK_EVENT, event_id), WebhookEventRow)


async def lock_webhook_event(conn: Connection, event_id: str) -> WebhookEventRow | None:
    return _row(await conn.fetchrow(LOCK_WEBHOOK_EVENT, event_id), WebhookEventRow)


async def finish_webhook_event(conn: Connection, event_id: str, status: str, outcome: str) -> None:
    await conn.execute(FINISH_WEBHOOK_EVENT, event_id, status, outcome)


async def fail_webhook_event(conn: Connection, event_id: str, error: str) -> None:
    await conn.execute(FAIL_WEBHOOK_EVENT, event_id, error[:1000])


async def list_unfinished_webhook_events(
    conn: Connection, *, older_than_seconds: float, max_attempts: int, limit: int
) -> list[str]:
    rows = await conn.fetch(LIST_UNFINISHED_WEBHOOK_EVENTS, older_than_seconds, max_attempts, limit)
    return [r["event_id"] for r in rows]


# --- notifications -----------------------------------------------------------------------------

INSERT_NOTIFICATION = """
INSERT INTO payment_notifications (id, tenant_id, kind, message, data, dedupe_key)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (dedupe_key) DO NOTHING
RETURNING id
"""
LIST_NOTIFICATIONS = """
SELECT id, tenant_id, kind, message, data, created_at FROM payment_notifications
WHERE tenant_id = $1 ORDER BY created_at DESC, id LIMIT $2
"""


async def insert_notification(
    conn: Connection,
    *,
    notification_id: UUID,
    tenant_id: UUID,
    kind: str,
    message: str,
    data: dict[str, Any],
    dedupe_key: str,
) -> bool:
    inserted = await conn.fetchval(
        INSERT_NOTIFICATION, notification_id, tenant_id, kind, message, data, dedupe_key
    )
    return inserted is not None


async def list_notifications(
    conn: Connection, tenant_id: UUID, limit: int
) -> list[NotificationRow]:
    return _rows(await conn.fetch(LIST_NOTIFICATIONS, tenant_id, limit), NotificationRow)


# --- auto top-up -------------------------------------------------------------------------------

_TOPUP_COLUMNS = "tenant_id, enabled, threshold_nano, pack_id, disabled_reason, updated_at"
GET_AUTO_TOPUP = f"SELECT {_TOPUP_COLUMNS} FROM auto_topup_settings WHERE tenant_id = $1"
LOCK_AUTO_TOPUP = (
    f"SELECT {_TOPUP_COLUMNS} FROM auto_topup_settings WHERE tenant_id = $1 FOR UPDATE"
)
UPSERT_AUTO_TOPUP = f"""
INSERT INTO auto_topup_settings (tenant_id, enabled, threshold_nano, pack_id)
VALUES ($1, $2, $3, $4)
ON CONFLICT (tenant_id) DO UPDATE
SET enabled = EXCLUDED.enabled, threshold_nano = EXCLUDED.threshold_nano,
    pack_id = EXCLUDED.pack_id, disabled_reason = NULL, updated_at = now()
RETURNING {_TOPUP_COLUMNS}
"""
DISABLE_AUTO_TOPUP = """
UPDATE auto_topup_settings SET enabled = false, disabled_reason = $2, updated_at = now()
WHERE tenant_id = $1 AND enabled
"""
LIST_ENABLED_AUTO_TOPUPS = "SELECT tenant_id FROM auto_topup_settings WHERE enabled ORDER BY 1"
COUNT_TOPUPS_SINCE = """
SELECT count(*) FROM payment_orders
WHERE tenant_id = $1 AND source = 'auto_topup' AND created_at >= $2
"""
# A top-up whose outcome is not known yet: no second one starts until it is settled.
UNSETTLED_TOPUPS = f"""
SELECT {_ORDER_COLUMNS} FROM payment_orders
WHERE tenant_id = $1 AND source = 'auto_topup' AND status IN ('creating', 'processing')
ORDER BY created_at
"""
STALE_UNSETTLED_TOPUPS = """
SELECT id FROM payment_orders
WHERE source = 'auto_topup' AND status = 'creating'
  AND updated_at < now() - make_interval(secs => $1)
ORDER BY created_at LIMIT 100
"""


async def get_auto_topup(conn: Connection, tenant_id: UUID) -> AutoTopupRow | None:
    return _row(await conn.fetchrow(GET_AUTO_TOPUP, tenant_id), AutoTopupRow)


async def lock_auto_topup(conn: Connection, tenant_id: UUID) -> AutoTopupRow | None:
    return _row(await conn.fetchrow(LOCK_AUTO_TOPUP, tenant_id), AutoTopupRow)


async def upsert_auto_topup(
    conn: Connection, tenant_id: UUID, *, enabled: bool, threshold_nano: int, pack_id: UUID
) -> AutoTopupRow:
    record = await conn.fetchrow(UPSERT_AUTO_TOPUP, tenant_id, enabled, threshold_nano, pack_id)
    row = _row(record, AutoTopupRow)
    assert row is not None
    return row


async def disable_auto_topup(conn: Connection, tenant_id: UUID, reason: str) -> bool:
    return bool(await conn.execute(DISABLE_AUTO_TOPUP, tenant_id, reason) == "UPDATE 1")


async def list_enabled_auto_topups(conn: Connection) -> list[UUID]:
    return [r["tenant_id"] for r in await conn.fetch(LIST_ENABLED_AUTO_TOPUPS)]


async def count_topups_since(conn: Connection, tenant_id: UUID, since: datetime) -> int:
    return int(await conn.fetchval(COUNT_TOPUPS_SINCE, tenant_id, since))


async def unsettled_topups(conn: Connection, tenant_id: UUID) -> list[OrderRow]:
    return _rows(await conn.fetch(UNSETTLED_TOPUPS, tenant_id), OrderRow)


async def stale_unsettled_topups(conn: Connection, older_than_seconds: float) -> list[UUID]:
    return [r["id"] for r in await conn.fetch(STALE_UNSETTLED_TOPUPS, older_than_seconds)]


# --- the balance as the log has it -------------------------------------------------------------

SHARD_OF = "SELECT mod(hashtextextended($1::text, 0) & 9223372036854775807, $2)::int"
# One statement, so one snapshot: the folded balance and the events the fold has not applied
# yet (after its checkpoint) cannot be read at two different moments and double-count or miss
# a fold that commits in between.
BALANCE_FROM_LOG = """
WITH checkpoint AS (
    SELECT coalesce((SELECT txid FROM consumer_checkpoints WHERE consumer = $2), '0') AS txid,
           coalesce((SELECT position FROM consumer_checkpoints WHERE consumer = $2), 0) AS position
), unfolded AS (
    SELECT e.type, e.data FROM events e, checkpoint c
    WHERE e.tenant_id = $1 AND (e.txid, e.position) > (c.txid, c.position)
      AND e.type IN ('CreditsPurchased', 'CreditsGranted', 'BalanceAdjusted', 'CreditsRefunded',
                     'CreditsFrozen', 'UsageRecorded')
)
SELECT
    coalesce((SELECT balance_nano FROM balances WHERE tenant_id = $1), 0) AS balance_nano,
    coalesce((SELECT folded_events FROM balances WHERE tenant_id = $1), 0) AS folded_events,
    coalesce((SELECT sum(CASE WHEN type IN ('CreditsRefunded', 'CreditsFrozen')
                              THEN -(data->>'amount_nano')::bigint
                              ELSE (data->>'amount_nano')::bigint END)
              FROM unfolded WHERE type <> 'UsageRecorded'), 0)::bigint AS unfolded_credit_nano,
    coalesce((SELECT sum((data->>'charge_nano')::bigint)
              FROM unfolded WHERE type = 'UsageRecorded'), 0)::bigint AS unfolded_usage_nano
"""


class BalanceFromLog(msgspec.Struct, frozen=True):
    balance_nano: int
    folded_events: int
    unfolded_credit_nano: int
    unfolded_usage_nano: int


async def shard_of(conn: Connection, tenant_id: UUID, shards: int) -> int:
    return int(await conn.fetchval(SHARD_OF, str(tenant_id), shards))


async def balance_from_log(conn: Connection, tenant_id: UUID, consumer: str) -> BalanceFromLog:
    row = _row(await conn.fetchrow(BALANCE_FROM_LOG, tenant_id, consumer), BalanceFromLog)
    assert row is not None
    return row


# --- reconciliation ----------------------------------------------------------------------------

_RUN_COLUMNS = """id, period_start, period_end, status, stripe_payments, stripe_refunds,
mismatches, error, created_at, finished_at"""
INSERT_RUN = f"""
INSERT INTO reconciliation_runs (id, period_start, period_end, status)
VALUES ($1, $2, $3, 'queued')
RETURNING {_RUN_COLUMNS}
"""
START_RUN = "UPDATE reconciliation_runs SET status = 'running' WHERE id = $1 AND status = 'queued'"
FINISH_RUN = """
UPDATE reconciliation_runs
SET status = 'done', stripe_payments = $2, stripe_refunds = $3, mismatches = $4,
    finished_at = now()
WHERE id = $1
"""
FAIL_RUN = """
UPDATE reconciliation_runs SET status = 'failed', error = $2, finished_at = now() WHERE id = $1
"""
GET_RUN = f"SELECT {_RUN_COLUMNS} FROM reconciliation_runs WHERE id = $1"
LIST_RUNS = f"SELECT {_RUN_COLUMNS} FROM reconciliation_runs ORDER BY created_at DESC, id LIMIT $1"
DELETE_RUN_MISMATCHES = "DELETE FROM reconciliation_mismatches WHERE run_id = $1"
INSERT_MISMATCH = """
INSERT INTO reconciliation_mismatches
    (run_id, kind, tenant_id, stripe_id, purchase_id, expected_minor, actual_minor, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""
LIST_MISMATCHES = """
SELECT id, run_id, kind, tenant_id, stripe_id, purchase_id, expected_minor, actual_minor, detail
FROM reconciliation_mismatches WHERE run_id = $1 ORDER BY id
"""
PURCHASE_EVENTS_BY_PAYMENT_INTENT = """
SELECT data->>'stripe_payment_intent' AS payment_intent, tenant_id, data->>'purchase_id' AS
       purchase_id, (data->>'paid_minor')::bigint AS paid_minor, data->>'currency' AS currency
FROM events
WHERE type = 'CreditsPurchased' AND data->>'stripe_payment_intent' = ANY($1::text[])
"""
PURCHASE_EVENTS_RECORDED = """
SELECT data->>'stripe_payment_intent' AS payment_intent, tenant_id, data->>'purchase_id' AS
       purchase_id, (data->>'paid_minor')::bigint AS paid_minor, data->>'currency' AS currency
FROM events
WHERE type = 'CreditsPurchased' AND data->>'source' IN ('checkout', 'auto_topup')
  AND recorded_at >= $1 AND recorded_at < $2
"""
REFUND_EVENTS_BY_ID = """
SELECT data->>'refund_id' AS refund_id, tenant_id, data->>'purchase_id' AS purchase_id,
       (data->>'refunded_minor')::bigint AS refunded_minor, data->>'currency' AS currency
FROM events
WHERE type = 'CreditsRefunded' AND data->>'refund_id' = ANY($1::text[])
"""
REFUND_EVENTS_RECORDED = """
SELECT data->>'refund_id' AS refund_id, tenant_id, data->>'purchase_id' AS purchase_id,
       (data->>'refunded_minor')::bigint AS refunded_minor, data->>'currency' AS currency
FROM events
WHERE type = 'CreditsRefunded' AND recorded_at >= $1 AND recorded_at < $2
"""


class LoggedPurchase(msgspec.Struct, frozen=True):
    payment_intent: str | None
    tenant_id: UUID
    purchase_id: str
    paid_minor: int
    currency: str


class LoggedRefund(msgspec.Struct, frozen=True):
    refund_id: str
    tenant_id: UUID
    purchase_id: str
    refunded_minor: int
    currency: str


class MismatchIn(msgspec.Struct, frozen=True):
    kind: str
    detail: str
    tenant_id: UUID | None = None
    stripe_id: str | None = None
    purchase_id: str | None = None
    expected_minor: int | None = None
    actual_minor: int | None = None


async def insert_run(
    conn: Connection, run_id: UUID, period_start: datetime, period_end: datetime
) -> RunRow:
    row = _row(await conn.fetchrow(INSERT_RUN, run_id, period_start, period_end), RunRow)
    assert row is not None
    return row


async def start_run(conn: Connection, run_id: UUID) -> bool:
    return bool(await conn.execute(START_RUN, run_id) == "UPDATE 1")


async def finish_run(
    conn: Connection,
    run_id: UUID,
    *,
    payments: int,
    refunds: int,
    mismatches: list[MismatchIn],
) -> None:
    await conn.execute(DELETE_RUN_MISMATCHES, run_id)
    await conn.executemany(
        INSERT_MISMATCH,
        [
            (
                run_id,
                m.kind,
                m.tenant_id,
                m.stripe_id,
                m.purchase_id,
                m.expected_minor,
                m.actual_minor,
                m.detail,
            )
            for m in mismatches
        ],
    )
    await conn.execute(FINISH_RUN, run_id, payments, refunds, len(mismatches))


async def fail_run(conn: Connection, run_id: UUID, error: str) -> None:
    await conn.execute(FAIL_RUN, run_id, error[:1000])


async def get_run(conn: Connection, run_id: UUID) -> RunRow | None:
    return _row(await conn.fetchrow(GET_RUN, run_id), RunRow)


async def list_runs(conn: Connection, limit: int) -> list[RunRow]:
    return _rows(await conn.fetch(LIST_RUNS, limit), RunRow)


async def list_mismatches(conn: Connection, run_id: UUID) -> list[MismatchRow]:
    return _rows(await conn.fetch(LIST_MISMATCHES, run_id), MismatchRow)


async def purchase_events_by_payment_intent(
    conn: Connection, payment_intents: list[str]
) -> list[LoggedPurchase]:
    return _rows(
        await conn.fetch(PURCHASE_EVENTS_BY_PAYMENT_INTENT, payment_intents), LoggedPurchase
    )


async def purchase_events_recorded(
    conn: Connection, start: datetime, end: datetime
) -> list[LoggedPurchase]:
    return _rows(await conn.fetch(PURCHASE_EVENTS_RECORDED, start, end), LoggedPurchase)


async def refund_events_by_id(conn: Connection, refund_ids: list[str]) -> list[LoggedRefund]:
    return _rows(await conn.fetch(REFUND_EVENTS_BY_ID, refund_ids), LoggedRefund)


async def refund_events_recorded(
    conn: Connection, start: datetime, end: datetime
) -> list[LoggedRefund]:
    return _rows(await conn.fetch(REFUND_EVENTS_RECORDED, start, end), LoggedRefund)


# --- monitoring (platform-wide counts, read when billing's /metrics is scraped) ----------------

AUTO_TOPUP_ORDERS_BY_STATUS = (
    "SELECT status, count(*) AS n FROM payment_orders WHERE source = 'auto_topup' GROUP BY status"
)
STRIPE_EVENTS_BY_STATUS = "SELECT status, count(*) AS n FROM stripe_webhook_events GROUP BY status"


async def auto_topup_orders_by_status(conn: Connection) -> dict[str, int]:
    return {r["status"]: r["n"] for r in await conn.fetch(AUTO_TOPUP_ORDERS_BY_STATUS)}


async def stripe_events_by_status(conn: Connection) -> dict[str, int]:
    return {r["status"]: r["n"] for r in await conn.fetch(STRIPE_EVENTS_BY_STATUS)}
