"""Every SQL statement the gateway runs. Reads happen on cache misses only; the hot path's one
write is the usage event, appended through the process's group-commit appender."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from tally.db import Connection
from tally.eventlog import NewEvent, append_events
from tally.events.tenant import Actor, CredentialDisabled

KEY_BY_HASH = """
SELECT k.id AS key_id, k.tenant_id, k.status AS key_status, k.expires_at, k.allowed_models,
       k.rpm_limit AS key_rpm, k.tpm_limit AS key_tpm, k.spend_cap_nano,
       t.status AS tenant_status, t.mode, t.budget_cap_nano,
       t.rpm_limit AS tenant_rpm, t.tpm_limit AS tenant_tpm
FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
WHERE k.key_hash = $1
"""

MODELS = """
SELECT name, enabled, context_window, max_output_tokens, modalities, created_at FROM models
"""

# Disabled routes and credentials are left out: the catalog only holds what may be called.
ROUTES = """
SELECT r.id AS route_id, r.model, r.upstream_model, r.priority, r.weight,
       c.id AS credential_id, c.kind, c.name, c.base_url, c.options,
       c.weight AS credential_weight, c.secret_ciphertext, c.secret_key_id
FROM model_routes r JOIN provider_credentials c ON c.id = r.credential_id
WHERE r.enabled AND c.enabled
ORDER BY r.model, r.priority, r.id
"""

DISABLE_CREDENTIAL = """
UPDATE provider_credentials SET enabled = false, disabled_reason = $2, updated_at = now()
WHERE id = $1 AND enabled
RETURNING id
"""

# The next moment a price sheet of `model` at or below the version takes effect: a cached price
# is only valid until then.
NEXT_PRICE_CHANGE = """
SELECT min(effective_at) FROM model_prices
WHERE model = $1 AND price_version <= $2 AND effective_at > $3
"""

# Spend counters, rebuilt when Redis lost them: the sum of recorded charges.
TENANT_SPEND_SINCE = """
SELECT coalesce(sum((data->>'charge_nano')::bigint), 0)::bigint FROM events
WHERE tenant_id = $1 AND type = 'UsageRecorded' AND recorded_at >= $2
"""

KEY_SPEND = """
SELECT coalesce(sum((data->>'charge_nano')::bigint), 0)::bigint FROM events
WHERE tenant_id = $1 AND type = 'UsageRecorded' AND data->>'key_id' = $2
"""


async def key_by_hash(conn: Connection, key_hash: bytes) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(KEY_BY_HASH, key_hash)
    return row


async def catalog_rows(conn: Connection) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await conn.fetch(MODELS), await conn.fetch(ROUTES)


async def next_price_change(
    conn: Connection, model: str, version: int, at: datetime
) -> datetime | None:
    moment: datetime | None = await conn.fetchval(NEXT_PRICE_CHANGE, model, version, at)
    return moment


async def tenant_spend_since(conn: Connection, tenant_id: UUID, since: datetime) -> int:
    total: int = await conn.fetchval(TENANT_SPEND_SINCE, tenant_id, since)
    return total


async def key_spend(conn: Connection, tenant_id: UUID, key_id: UUID) -> int:
    total: int = await conn.fetchval(KEY_SPEND, tenant_id, str(key_id))
    return total


async def disable_credential(
    conn: Connection, credential_id: UUID, *, reason: str, upstream_status: int
) -> bool:
    """Disable a credential the provider refused, and record why, in one transaction.

    False when it was already disabled (another request or process got there first).
    """
    async with conn.transaction():
        updated: Any = await conn.fetchval(DISABLE_CREDENTIAL, credential_id, reason)
        if updated is None:
            return False
        event = CredentialDisabled(
            credential_id=credential_id,
            reason=reason,
            actor=Actor("system", "gateway"),
            upstream_status=upstream_status,
        )
        key = f"credential-disabled:{credential_id}:{datetime.now().isoformat()}"
        await append_events(conn, [NewEvent(event, key)])
    return True
