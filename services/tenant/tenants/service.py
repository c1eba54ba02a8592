"""Tenant logic: create (with starter credits), update, suspend, reactivate, list."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from tally.config import Settings
from tally.db import Connection
from tally.errors import Conflict, Forbidden, InvalidRequest, NotFound
from tally.eventlog import NewEvent
from tally.events.billing import CreditsGranted
from tally.events.tenant import (
    TenantCreated,
    TenantMarginOverridden,
    TenantReactivated,
    TenantSuspended,
    TenantUpdated,
)
from tally.money import MoneyError, parse_credits
from tenant.pagination import created_cursor, decode_created_cursor
from tenant.tenants import repository
from tenant.tenants.schemas import (
    Address,
    Tenant,
    TenantCreate,
    TenantPage,
    TenantQuery,
    TenantUpdate,
)
from tenant.unit_of_work import UnitOfWork

# Fields a tenant's own owners and admins may change; the rest are the operator's.
BILLING_PROFILE_FIELDS = frozenset({"billing_email", "tax_id", "address", "country"})
UPDATABLE_FIELDS = (
    "name",
    "billing_email",
    "tax_id",
    "address",
    "country",
    "mode",
    "margin_override_pct",
    "budget_cap_nano",
    "rpm_limit",
    "tpm_limit",
)
# Margins outside this range are almost certainly typos (a -100 % margin sells for nothing).
MIN_MARGIN_PCT = Decimal(-99)
MAX_MARGIN_PCT = Decimal(10_000)


def tenant_from_row(row: asyncpg.Record) -> Tenant:
    address = row["address"]
    return Tenant(
        id=row["id"],
        name=row["name"],
        mode=row["mode"],
        status=row["status"],
        billing_email=row["billing_email"],
        tax_id=row["tax_id"],
        address=msgspec.convert(address, Address) if address is not None else None,
        country=row["country"],
        margin_override_pct=row["margin_override_pct"],
        budget_cap_nano=row["budget_cap_nano"],
        rpm_limit=row["rpm_limit"],
        tpm_limit=row["tpm_limit"],
        suspended_reason=row["suspended_reason"],
        suspended_at=row["suspended_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _clean_name(name: str) -> str:
    return " ".join(name.split())


def _check_margin(margin: Decimal | None) -> Decimal | None:
    if margin is None:
        return None
    if not margin.is_finite() or not MIN_MARGIN_PCT <= margin <= MAX_MARGIN_PCT:
        raise InvalidRequest(
            f"margin_override_pct must be between {MIN_MARGIN_PCT} and {MAX_MARGIN_PCT}",
            param="margin_override_pct",
        )
    if margin.as_tuple().exponent < -6:  # type: ignore[operator]
        raise InvalidRequest(
            "margin_override_pct has more than 6 decimals", param="margin_override_pct"
        )
    return margin.normalize() + 0  # +0 turns -0 into 0


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _builtin(value: Any) -> Any:
    """A JSON-ready copy of a field value for an event's before/after."""
    return msgspec.to_builtins(value)


class TenantService:
    """Tenants are created by operators; every change appends its event in the same unit."""

    async def create(self, uow: UnitOfWork, data: TenantCreate, settings: Settings) -> Tenant:
        """Create a tenant; grant starter credits (settings) and `data.credits` if asked.

        The grants are `CreditsGranted` events in the same transaction, keyed on the tenant
        id, so the billing fold credits them exactly once.
        """
        tenant_id = uuid.uuid4()
        name = _clean_name(data.name)
        try:
            manual_nano = parse_credits(data.credits) if data.credits is not None else 0
            starter_nano = parse_credits(settings.starter_credits)
        except MoneyError as exc:
            raise InvalidRequest(str(exc), param="credits") from None
        row = await repository.insert_tenant(
            uow.conn,
            tenant_id=tenant_id,
            name=name,
            mode=data.mode,
            billing_email=data.billing_email,
            tax_id=data.tax_id,
            address=msgspec.to_builtins(data.address) if data.address else None,
            country=data.country,
            budget_cap_nano=data.budget_cap_nano,
            rpm_limit=data.rpm_limit,
            tpm_limit=data.tpm_limit,
        )
        if row is None:
            raise Conflict(f"a tenant named {name!r} exists", param="name", code="name_taken")
        events: list[NewEvent] = [
            NewEvent(
                TenantCreated(
                    tenant_id=tenant_id,
                    name=name,
                    mode=data.mode,
                    actor=uow.actor,
                    billing_email=data.billing_email,
                ),
                f"tenant:{tenant_id}:created",
            )
        ]
        if starter_nano > 0:
            expires_at = None
            if settings.starter_credits_expire_days is not None:
                expires_at = datetime.now(UTC) + timedelta(
                    days=settings.starter_credits_expire_days
                )
            events.append(
                NewEvent(
                    CreditsGranted(
                        tenant_id=tenant_id,
                        grant_id=uuid.uuid5(tenant_id, "starter-credits"),
                        amount_nano=starter_nano,
                        kind="starter",
                        reason="starter credits for a new tenant",
                        actor=uow.actor,
                        expires_at=expires_at,
                    ),
                    f"tenant:{tenant_id}:starter-credits",
                )
            )
        if manual_nano > 0:
            events.append(
                NewEvent(
                    CreditsGranted(
                        tenant_id=tenant_id,
                        grant_id=uuid.uuid5(tenant_id, "initial-credits"),
                        amount_nano=manual_nano,
                        kind="manual",
                        reason="credits granted when the tenant was created",
                        actor=uow.actor,
                    ),
                    f"tenant:{tenant_id}:initial-credits",
                )
            )
        await uow.record(*events)
        return tenant_from_row(row)

    async def get(self, conn: Connection, tenant_id: UUID) -> Tenant:
        """The tenant, or 404."""
        row = await repository.fetch_tenant(conn, tenant_id)
        if row is None:
            raise NotFound("tenant not found", param="tenant_id")
        return tenant_from_row(row)

    async def resolve(self, conn: Connection, id_or_name: str) -> Tenant:
        """A tenant by id or (case-insensitive) name, for the CLI."""
        try:
            tenant_id = UUID(id_or_name)
        except ValueError:
            row = await repository.fetch_tenant_by_name(conn, id_or_name.strip())
            if row is None:
                raise NotFound(f"no tenant named {id_or_name!r}", param="tenant") from None
            return tenant_from_row(row)
        return await self.get(conn, tenant_id)

    async def list_tenants(self, conn: Connection, query: TenantQuery) -> TenantPage:
        """A page of tenants, newest first, filtered by a search text, status and mode."""
        search = query.search.strip() if query.search else None
        rows = await repository.list_tenants(
            conn,
            like=f"%{_escape_like(search)}%" if search else None,
            exact_id=search.lower() if search else None,
            status=query.status,
            mode=query.mode,
            after=decode_created_cursor(query.cursor),
            limit=query.limit + 1,
        )
        tenants = [tenant_from_row(r) for r in rows[: query.limit]]
        more = len(rows) > query.limit
        last = tenants[-1] if tenants else None
        return TenantPage(
            data=tenants,
            next_cursor=created_cursor(last.created_at, last.id) if more and last else None,
        )

    async def update(
        self, uow: UnitOfWork, tenant_id: UUID, data: TenantUpdate, *, as_operator: bool
    ) -> Tenant:
        """Change the fields present in `data`.

        A new margin override takes the next price-book version (`tenant_margins`), so usage
        priced before it keeps its old margin when re-priced.
        """
        requested = {
            f: getattr(data, f) for f in UPDATABLE_FIELDS if getattr(data, f) is not msgspec.UNSET
        }
        if not as_operator and set(requested) - BILLING_PROFILE_FIELDS:
            forbidden = sorted(set(requested) - BILLING_PROFILE_FIELDS)
            raise Forbidden(f"only operators may change {', '.join(forbidden)}", param=forbidden[0])
        if "name" in requested:
            requested["name"] = _clean_name(requested["name"])
        if "address" in requested and requested["address"] is not None:
            requested["address"] = msgspec.to_builtins(requested["address"])
        if "margin_override_pct" in requested:
            requested["margin_override_pct"] = _check_margin(requested["margin_override_pct"])
        row = await repository.fetch_tenant(uow.conn, tenant_id, for_update=True)
        if row is None:
            raise NotFound("tenant not found", param="tenant_id")
        current = {f: row[f] for f in UPDATABLE_FIELDS}
        changed = {f: v for f, v in requested.items() if current[f] != v}
        if not changed:
            return tenant_from_row(row)
        updated = await repository.update_tenant(uow.conn, tenant_id, {**current, **changed})
        if updated is None:
            raise Conflict(
                f"a tenant named {changed['name']!r} exists", param="name", code="name_taken"
            )
        await uow.record(
            TenantUpdated(
                tenant_id=tenant_id,
                before={f: _builtin(current[f]) for f in changed},
                after={f: _builtin(v) for f, v in changed.items()},
                actor=uow.actor,
            )
        )
        if "margin_override_pct" in changed:
            margin = changed["margin_override_pct"]
            version = await repository.record_margin_override(uow.conn, tenant_id, margin)
            await uow.record(
                TenantMarginOverridden(
                    tenant_id=tenant_id, price_version=version, margin_pct=margin, actor=uow.actor
                )
            )
            uow.invalidate("prices", "*")
        uow.invalidate("tenant", str(tenant_id))
        return tenant_from_row(updated)

    async def suspend(self, uow: UnitOfWork, tenant_id: UUID, reason: str) -> Tenant:
        """Suspend an active tenant: the gateway refuses its keys from the next request on."""
        row = await repository.fetch_tenant(uow.conn, tenant_id, for_update=True)
        if row is None:
            raise NotFound("tenant not found", param="tenant_id")
        if row["status"] == "suspended":
            raise Conflict("the tenant is already suspended", code="already_suspended")
        updated = await repository.set_status(uow.conn, tenant_id, "suspended", reason)
        await uow.record(TenantSuspended(tenant_id=tenant_id, reason=reason, actor=uow.actor))
        uow.invalidate("tenant", str(tenant_id))
        return tenant_from_row(updated)

    async def reactivate(self, uow: UnitOfWork, tenant_id: UUID) -> Tenant:
        """Reactivate a suspended tenant."""
        row = await repository.fetch_tenant(uow.conn, tenant_id, for_update=True)
        if row is None:
            raise NotFound("tenant not found", param="tenant_id")
        if row["status"] == "active":
            raise Conflict("the tenant is not suspended", code="not_suspended")
        updated = await repository.set_status(uow.conn, tenant_id, "active", None)
        await uow.record(TenantReactivated(tenant_id=tenant_id, actor=uow.actor))
        uow.invalidate("tenant", str(tenant_id))
        return tenant_from_row(updated)


tenant_service = TenantService()
