"""Grants, operator adjustments and grant expiry: each one event in the log.

The fold turns them into lots and ledger lines; nothing here touches a balance directly.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg

from billing.errors import InvalidBillingRequest
from billing.grants import repository
from billing.grants.schemas import AdjustmentIn, AdjustmentOut, GrantIn, GrantOut
from tally.db import Connection
from tally.eventlog import NewEvent, append_events
from tally.events.billing import BalanceAdjusted, CreditsExpired, CreditsGranted
from tally.events.tenant import Actor
from tally.log import get_logger

log = get_logger(__name__)


class GrantService:
    async def grant(
        self, conn: Connection, tenant_id: uuid.UUID, data: GrantIn, actor: Actor
    ) -> GrantOut:
        """Grant free credits (an event; the fold adds them to the balance)."""
        reason = data.reason.strip()
        if data.expires_at is not None:
            if data.expires_at.tzinfo is None:
                raise InvalidBillingRequest(
                    "expires_at needs a timezone (e.g. 2026-12-31T00:00:00Z)", param="expires_at"
                )
            if data.expires_at <= datetime.now(UTC):
                raise InvalidBillingRequest("expires_at must be in the future", param="expires_at")
        grant_id = uuid.uuid4()
        event = CreditsGranted(
            tenant_id=tenant_id,
            grant_id=grant_id,
            amount_nano=data.amount_nano,
            kind=data.kind,
            reason=reason,
            actor=actor,
            expires_at=data.expires_at,
        )
        [stored] = await append_events(conn, [NewEvent(event, f"grant:{grant_id}")])
        log.info("credits granted", tenant_id=str(tenant_id), amount_nano=data.amount_nano)
        return GrantOut(
            grant_id=grant_id,
            tenant_id=tenant_id,
            kind=data.kind,
            amount_nano=data.amount_nano,
            reason=reason,
            expires_at=data.expires_at,
            position=stored.position,
        )

    async def adjust(
        self, conn: Connection, tenant_id: uuid.UUID, data: AdjustmentIn, actor: Actor
    ) -> AdjustmentOut:
        """Correct a balance up or down, with a reason (an event; the fold applies it)."""
        reason = data.reason.strip()
        if not reason:
            raise InvalidBillingRequest("a reason is required", param="reason")
        if data.amount_nano == 0:
            raise InvalidBillingRequest("amount_nano must not be zero", param="amount_nano")
        adjustment_id = uuid.uuid4()
        event = BalanceAdjusted(
            tenant_id=tenant_id,
            adjustment_id=adjustment_id,
            amount_nano=data.amount_nano,
            reason=reason,
            actor=actor,
        )
        [stored] = await append_events(conn, [NewEvent(event, f"adjust:{adjustment_id}")])
        log.info("balance adjusted", tenant_id=str(tenant_id), amount_nano=data.amount_nano)
        return AdjustmentOut(
            adjustment_id=adjustment_id,
            tenant_id=tenant_id,
            amount_nano=data.amount_nano,
            reason=reason,
            position=stored.position,
        )

    async def expire_due(self, pool: asyncpg.Pool, *, now: datetime, limit: int = 1000) -> int:
        """Append CreditsExpired for every folded grant past its expiry (key "expire:<id>").

        Safe to run anywhere, any number of times: the key makes each expiry one event.
        """
        async with pool.acquire() as conn, conn.transaction():
            due = await repository.due_grants(conn, now, limit)
            if not due:
                return 0
            stored = await append_events(
                conn,
                [NewEvent(CreditsExpired(tenant_id=t, grant_id=g), f"expire:{g}") for t, g in due],
            )
        fresh = sum(1 for s in stored if not s.duplicate)
        if fresh:
            log.info("grants expired", count=fresh)
        return fresh


grant_service = GrantService()
