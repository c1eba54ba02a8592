"""Grant expiry: every ten seconds, an expiry event for each grant past its time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from arq import cron

from billing.grants.service import grant_service


async def expire_grants(ctx: dict[str, Any]) -> int:
    """Append CreditsExpired for due grants (idempotent: key "expire:<grant_id>")."""
    return await grant_service.expire_due(ctx["pool"], now=datetime.now(UTC))


CRON_JOBS = [
    cron(expire_grants, name="billing.expire_grants", second=set(range(0, 60, 10)), unique=True)
]
