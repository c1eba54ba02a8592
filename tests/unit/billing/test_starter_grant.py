"""Starter credits: what the tenant service appends with TenantCreated."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from billing.grants.service import starter_grant
from tally.config import load_settings
from tally.events.billing import CreditsGranted

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def test_starter_credits_follow_the_settings_and_are_granted_once_per_tenant() -> None:
    settings = load_settings(
        {"TALLY_STARTER_CREDITS": "2.5", "TALLY_STARTER_CREDITS_EXPIRE_DAYS": "14"}
    )
    tenant = uuid.uuid4()
    grant = starter_grant(settings, tenant, now=NOW)
    assert grant is not None
    event = grant.event
    assert isinstance(event, CreditsGranted)
    assert (event.kind, event.amount_nano, event.expires_at) == (
        "starter",
        2_500_000_000,
        NOW + timedelta(days=14),
    )
    assert grant.idempotency_key == f"starter:{tenant}"
    again = starter_grant(settings, tenant, now=NOW + timedelta(seconds=5))
    assert again is not None and again.event.grant_id == event.grant_id  # type: ignore[attr-defined]


def test_no_starter_credits_by_default_and_never_expiring_when_days_is_zero() -> None:
    assert starter_grant(load_settings({}), uuid.uuid4(), now=NOW) is None
    settings = load_settings(
        {"TALLY_STARTER_CREDITS": "1", "TALLY_STARTER_CREDITS_EXPIRE_DAYS": "0"}
    )
    grant = starter_grant(settings, uuid.uuid4(), now=NOW)
    assert grant is not None and grant.event.expires_at is None  # type: ignore[attr-defined]
