"""Low-balance alerts: configuration, crossing detection (inside the fold), signed delivery."""

from __future__ import annotations

import base64
import ipaddress
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit
from uuid import UUID

import aiohttp
import asyncpg
import msgspec

from billing.alerts import repository
from billing.alerts.schemas import (
    LowBalanceAlertIn,
    LowBalanceAlertOut,
    NotificationOut,
    NotificationPage,
)
from billing.alerts.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, new_signing_secret, sign
from billing.errors import AlertNotConfigured, InvalidBillingRequest
from tally.config import Settings
from tally.crypto import load_key_ring
from tally.db import Connection
from tally.eventlog import StoredEvent
from tally.log import get_logger
from tally.money import format_credits

log = get_logger(__name__)

RETRY_CAP_SECONDS = 3600.0
# A delivery in progress owns the notification for its timeout plus this margin.
_LEASE_MARGIN_SECONDS = 30.0


def _secret_context(tenant_id: UUID) -> bytes:
    # Binds the ciphertext to its tenant: a sealed secret copied to another row will not open.
    return f"low_balance_alert:{tenant_id}".encode()


def validate_url(url: str, *, production: bool) -> str:
    """http(s) with a host; in production https only and never a private or loopback address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidBillingRequest("url must be an absolute http or https URL", param="url")
    if production:
        if parts.scheme != "https":
            raise InvalidBillingRequest("url must use https", param="url")
        host = parts.hostname
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if host == "localhost" or (
            address is not None
            and (address.is_private or address.is_loopback or address.is_link_local)
        ):
            raise InvalidBillingRequest("url must not point at a private address", param="url")
    return url


def _alert_out(row: asyncpg.Record, secret: str | None = None) -> LowBalanceAlertOut:
    return LowBalanceAlertOut(
        tenant_id=row["tenant_id"],
        threshold_nano=row["threshold_nano"],
        url=row["url"],
        armed=row["armed"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        signing_secret=secret,
    )


class AlertService:
    async def configure(
        self, conn: Connection, settings: Settings, tenant_id: UUID, data: LowBalanceAlertIn
    ) -> LowBalanceAlertOut:
        """Set the tenant's threshold and URL; a new secret on first use or when rotating."""
        url = validate_url(data.url, production=settings.production)
        async with conn.transaction():
            existing = await repository.get_alert(conn, tenant_id)
            secret: str | None = None
            sealed = None
            if existing is None or data.rotate_secret:
                secret = new_signing_secret()
                sealed = load_key_ring(settings).encrypt(
                    secret.encode(), context=_secret_context(tenant_id)
                )
            row = await repository.upsert_alert(conn, tenant_id, data.threshold_nano, url, sealed)
        assert row is not None
        return _alert_out(row, secret)

    async def get(self, conn: Connection, tenant_id: UUID) -> LowBalanceAlertOut:
        """The tenant's alert (without its secret)."""
        row = await repository.get_alert(conn, tenant_id)
        if row is None:
            raise AlertNotConfigured("no low-balance alert is configured")
        return _alert_out(row)

    async def remove(self, conn: Connection, tenant_id: UUID) -> None:
        """Stop alerting."""
        if not await repository.delete_alert(conn, tenant_id):
            raise AlertNotConfigured("no low-balance alert is configured")

    async def notifications(
        self, conn: Connection, tenant_id: UUID, *, cursor: str | None, limit: int
    ) -> NotificationPage:
        """The tenant's notifications, newest first, cursor-paginated."""
        before = _decode_cursor(cursor) if cursor else None
        rows = await repository.list_notifications(conn, tenant_id, before=before, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        data = [
            NotificationOut(
                id=r["id"],
                tenant_id=r["tenant_id"],
                kind=r["kind"],
                status=r["status"],
                attempts=r["attempts"],
                last_status=r["last_status"],
                last_error=r["last_error"],
                created_at=r["created_at"],
                delivered_at=r["delivered_at"],
                payload=msgspec.json.decode(r["payload"]),
            )
            for r in rows
        ]
        next_cursor = _encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
        return NotificationPage(data=data, next_cursor=next_cursor)


alert_service = AlertService()


def _encode_cursor(created_at: datetime, notification_id: UUID) -> str:
    raw = f"{created_at.isoformat()}|{notification_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, _, notification_id = raw.partition("|")
        return datetime.fromisoformat(moment), UUID(notification_id)
    except (ValueError, UnicodeDecodeError):
        raise InvalidBillingRequest("cursor is not valid", param="cursor") from None


def webhook_body(
    notification_id: UUID,
    event_type: str,
    tenant_id: UUID,
    data: dict[str, Any],
    *,
    now: datetime | None = None,
) -> str:
    """The JSON body of every webhook Tally sends a tenant (docs/billing.md)."""
    body = {
        "id": str(notification_id),
        "type": event_type,
        "created_at": (now or datetime.now(UTC)).isoformat(),
        "data": {"tenant_id": str(tenant_id), **data},
    }
    return msgspec.json.encode(body).decode()


# --- crossing detection: runs inside the fold's transaction ------------------------------------


class FoldedBalance(Protocol):
    """A tenant's balance after a fold batch, and the position of its last event."""

    @property
    def balance_nano(self) -> int: ...

    @property
    def last_position(self) -> int: ...


async def detect_crossings(
    conn: Connection, states: Mapping[UUID, FoldedBalance], events: Sequence[StoredEvent]
) -> list[UUID]:
    """Create a notification for each tenant whose balance fell below its threshold.

    Runs in the fold's transaction, so a notification exists exactly when the fold that caused
    it committed; its unique (tenant, kind, position) makes a re-run create nothing new.
    """
    if not states:
        return []
    alerts = await repository.alerts_for(conn, list(states))
    if not alerts:
        return []
    fire: list[tuple[UUID, UUID, int, str, str]] = []
    fired: list[UUID] = []
    rearm: list[UUID] = []
    now = datetime.now(UTC)
    for alert in alerts:
        tenant_id = alert["tenant_id"]
        state = states[tenant_id]
        below = state.balance_nano < alert["threshold_nano"]
        if below and alert["armed"]:
            notification_id = uuid.uuid4()
            payload = webhook_body(
                notification_id,
                "balance.low",
                tenant_id,
                {
                    "balance_nano": state.balance_nano,
                    "threshold_nano": alert["threshold_nano"],
                    "balance_credits": format_credits(state.balance_nano),
                    "threshold_credits": format_credits(alert["threshold_nano"]),
                },
                now=now,
            )
            fire.append((notification_id, tenant_id, state.last_position, alert["url"], payload))
            fired.append(tenant_id)
        elif not below and not alert["armed"]:
            rearm.append(tenant_id)
    created = await repository.insert_notifications(conn, fire)
    await repository.set_armed(conn, fired, False)
    await repository.set_armed(conn, rearm, True)
    for tenant_id in fired:
        log.info("low balance alert", tenant_id=str(tenant_id))
    return created


async def queue_webhook(
    conn: Connection,
    tenant_id: UUID,
    *,
    notification_id: UUID,
    kind: Literal["payment_failed", "auto_topup_failed"],
    data: dict[str, Any],
) -> bool:
    """Queue a signed webhook to the tenant's alert URL, in the caller's transaction.

    False when the tenant has no webhook. Delivered like `balance.low` (signed, retried); the
    sweeper picks it up within a minute of the commit. The caller makes it once per occasion.
    """
    payload = webhook_body(notification_id, kind.replace("_failed", ".failed"), tenant_id, data)
    return await repository.insert_tenant_notification(
        conn, notification_id, tenant_id, kind, payload
    )


# --- delivery: run by the worker ---------------------------------------------------------------

_CLAIM = """
UPDATE notifications SET next_attempt_at = now() + make_interval(secs => $2)
WHERE id = $1 AND status = 'pending' AND next_attempt_at <= now() + interval '2 seconds'
RETURNING tenant_id, url, payload::text AS payload, attempts
"""


class DeliveryOutcome(msgspec.Struct, frozen=True):
    status: str  # delivered, retry, failed, skipped
    retry_in: float | None = None


async def deliver(
    pool: asyncpg.Pool,
    notification_id: UUID,
    settings: Settings,
    *,
    session: aiohttp.ClientSession,
) -> DeliveryOutcome:
    """One delivery attempt of a notification: POST it signed, record the result.

    No transaction is held open during the HTTP call (that would hold back the log readers);
    instead the attempt leases the notification by moving its next attempt past the timeout.
    Receivers may see a delivery twice (a crash after their 2xx): they dedupe on the event id.
    """
    lease = settings.alert_webhook_timeout_seconds + _LEASE_MARGIN_SECONDS
    async with pool.acquire() as conn:
        claimed = await conn.fetchrow(_CLAIM, notification_id, lease)
        if claimed is None:
            return DeliveryOutcome("skipped")
        tenant_id = claimed["tenant_id"]
        sealed = await repository.secret_of(conn, tenant_id)
    attempts = claimed["attempts"] + 1
    if sealed is None:
        await _record(pool, notification_id, "failed", None, "the alert was removed", 0)
        return DeliveryOutcome("failed")
    secret = (
        load_key_ring(settings)
        .decrypt(
            sealed["secret_key_id"],
            sealed["secret_ciphertext"],
            context=_secret_context(tenant_id),
        )
        .decode()
    )
    body = claimed["payload"].encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Tally-Webhooks/1",
        SIGNATURE_HEADER: sign(secret, int(time.time()), body),
        EVENT_ID_HEADER: str(notification_id),
    }
    http_status: int | None = None
    error: str | None = None
    try:
        async with session.post(
            claimed["url"],
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=settings.alert_webhook_timeout_seconds),
            allow_redirects=False,
        ) as response:
            http_status = response.status
            if 200 <= response.status < 300:
                await _record(pool, notification_id, "delivered", http_status, None, 0)
                log.info("webhook delivered", notification_id=str(notification_id))
                return DeliveryOutcome("delivered")
            error = f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    if attempts >= settings.alert_webhook_max_attempts:
        await _record(pool, notification_id, "failed", http_status, error, 0)
        log.warning("webhook failed for good", notification_id=str(notification_id), error=error)
        return DeliveryOutcome("failed")
    delay = min(settings.alert_webhook_retry_seconds * 2 ** (attempts - 1), RETRY_CAP_SECONDS)
    await _record(pool, notification_id, "pending", http_status, error, delay)
    log.info("webhook will be retried", notification_id=str(notification_id), in_seconds=delay)
    return DeliveryOutcome("retry", retry_in=delay)


async def _record(
    pool: asyncpg.Pool,
    notification_id: UUID,
    status: str,
    http_status: int | None,
    error: str | None,
    retry_in: float,
) -> None:
    async with pool.acquire() as conn:
        await repository.record_attempt(
            conn,
            notification_id,
            status=status,
            http_status=http_status,
            error=error,
            next_attempt_at=datetime.now(UTC) + timedelta(seconds=retry_in),
        )


async def due_notifications(pool: asyncpg.Pool, limit: int = 500) -> list[UUID]:
    """Pending notifications whose next attempt is due (the sweeper re-queues them)."""
    async with pool.acquire() as conn:
        return await repository.due_notifications(conn, datetime.now(UTC), limit)
