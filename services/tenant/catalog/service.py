"""Catalog logic: public models, their metadata, and their routes to provider credentials.

The gateway reads `models` and `model_routes` (cached) to pick where a request goes; every
change here publishes a `model` invalidation naming the model after it commits.
"""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from tally.db import Connection
from tally.errors import Conflict, InvalidRequest, NotFound
from tally.events.tenant import (
    ModelCreated,
    ModelRouteAdded,
    ModelRouteRemoved,
    ModelRouteUpdated,
    ModelUpdated,
)
from tenant.catalog import repository
from tenant.catalog.schemas import (
    Model,
    ModelCreate,
    ModelList,
    ModelUpdate,
    Route,
    RouteCreate,
    RouteUpdate,
)
from tenant.providers.service import provider_service
from tenant.unit_of_work import UnitOfWork

_MODEL_FIELDS = ("enabled", "context_window", "max_output_tokens", "modalities")
_ROUTE_FIELDS = ("upstream_model", "priority", "weight", "enabled")


def route_from_row(row: asyncpg.Record) -> Route:
    return Route(
        id=row["id"],
        model=row["model"],
        credential_id=row["credential_id"],
        credential_name=row["credential_name"],
        provider_kind=row["provider_kind"],
        credential_enabled=row["credential_enabled"],
        upstream_model=row["upstream_model"],
        priority=row["priority"],
        weight=row["weight"],
        enabled=row["enabled"],
        created_at=row["created_at"],
    )


def model_from_row(row: asyncpg.Record, routes: list[Route] | None = None) -> Model:
    return Model(
        name=row["name"],
        enabled=row["enabled"],
        context_window=row["context_window"],
        max_output_tokens=row["max_output_tokens"],
        modalities=list(row["modalities"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        routes=routes,
    )


def _changes(current: dict[str, Any], requested: dict[str, Any]) -> dict[str, Any]:
    return {f: v for f, v in requested.items() if current[f] != v}


class CatalogService:
    async def add_model(self, uow: UnitOfWork, data: ModelCreate) -> Model:
        """Add a public model name (409 when it exists). It serves nothing until it has a
        route."""
        modalities: list[str] = list(dict.fromkeys(data.modalities))
        row = await repository.insert_model(
            uow.conn,
            name=data.name,
            enabled=data.enabled,
            context_window=data.context_window,
            max_output_tokens=data.max_output_tokens,
            modalities=modalities,
        )
        if row is None:
            raise Conflict(f"model {data.name!r} exists", param="name", code="model_exists")
        await uow.record(
            ModelCreated(
                model=data.name,
                actor=uow.actor,
                enabled=data.enabled,
                context_window=data.context_window,
                max_output_tokens=data.max_output_tokens,
                modalities=modalities,
            )
        )
        uow.invalidate("model", data.name)
        return model_from_row(row, [])

    async def get_model(self, conn: Connection, name: str, *, with_routes: bool) -> Model:
        """One model (with its routes, for operators), or 404."""
        row = await repository.fetch_model(conn, name)
        if row is None:
            raise NotFound(f"model {name!r} not found", param="model")
        routes = None
        if with_routes:
            routes = [route_from_row(r) for r in await repository.routes_of(conn, [name])]
        return model_from_row(row, routes)

    async def list_models(
        self, conn: Connection, *, with_routes: bool, include_disabled: bool
    ) -> ModelList:
        """Every model by name (disabled ones only when asked)."""
        rows = await repository.list_models(conn, include_disabled=include_disabled)
        if not with_routes:
            return ModelList(data=[model_from_row(r) for r in rows])
        by_model: dict[str, list[Route]] = {r["name"]: [] for r in rows}
        for route in await repository.routes_of(conn, list(by_model)):
            by_model[route["model"]].append(route_from_row(route))
        return ModelList(data=[model_from_row(r, by_model[r["name"]]) for r in rows])

    async def update_model(self, uow: UnitOfWork, name: str, data: ModelUpdate) -> Model:
        """Enable, disable or describe a model (context window, max output, modalities)."""
        row = await repository.fetch_model(uow.conn, name, for_update=True)
        if row is None:
            raise NotFound(f"model {name!r} not found", param="model")
        requested = {
            f: getattr(data, f) for f in _MODEL_FIELDS if getattr(data, f) is not msgspec.UNSET
        }
        if "modalities" in requested:
            requested["modalities"] = list(dict.fromkeys(requested["modalities"]))
        current: dict[str, Any] = {f: row[f] for f in _MODEL_FIELDS}
        current["modalities"] = list(current["modalities"])
        changed = _changes(current, requested)
        if not changed:
            return await self.get_model(uow.conn, name, with_routes=True)
        await repository.update_model(uow.conn, name, {**current, **changed})
        await uow.record(
            ModelUpdated(
                model=name,
                before={f: current[f] for f in changed},
                after=changed,
                actor=uow.actor,
            )
        )
        uow.invalidate("model", name)
        return await self.get_model(uow.conn, name, with_routes=True)

    async def add_route(self, uow: UnitOfWork, data: RouteCreate) -> Route:
        """Route a model through a credential; several routes give failover and balancing."""
        if (data.credential_id is None) == (data.provider is None):
            raise InvalidRequest("give exactly one of credential_id and provider", param="provider")
        if await repository.fetch_model(uow.conn, data.model) is None:
            raise NotFound(f"model {data.model!r} not found", param="model")
        credential = await provider_service.resolve(
            uow.conn, str(data.credential_id) if data.credential_id else str(data.provider)
        )
        route_id = uuid.uuid4()
        upstream_model = data.upstream_model or data.model
        inserted = await repository.insert_route(
            uow.conn,
            route_id=route_id,
            model=data.model,
            credential_id=credential.id,
            upstream_model=upstream_model,
            priority=data.priority,
            weight=data.weight,
            enabled=data.enabled,
        )
        if not inserted:
            raise Conflict(
                f"{data.model!r} already routes to {upstream_model!r} through {credential.name!r}",
                code="route_exists",
            )
        await uow.record(
            ModelRouteAdded(
                model=data.model,
                route_id=route_id,
                credential_id=credential.id,
                upstream_model=upstream_model,
                actor=uow.actor,
                priority=data.priority,
                weight=data.weight,
            )
        )
        if not data.enabled:
            await uow.record(
                ModelRouteUpdated(
                    model=data.model,
                    route_id=route_id,
                    before={"enabled": True},
                    after={"enabled": False},
                    actor=uow.actor,
                )
            )
        uow.invalidate("model", data.model)
        return route_from_row(await repository.fetch_route(uow.conn, route_id))

    async def update_route(self, uow: UnitOfWork, route_id: UUID, data: RouteUpdate) -> Route:
        """Change a route's upstream model, priority, weight or enabled flag."""
        row = await repository.fetch_route(uow.conn, route_id, for_update=True)
        if row is None:
            raise NotFound("route not found", param="route_id")
        requested = {
            f: getattr(data, f) for f in _ROUTE_FIELDS if getattr(data, f) is not msgspec.UNSET
        }
        current = {f: row[f] for f in _ROUTE_FIELDS}
        changed = _changes(current, requested)
        if not changed:
            return route_from_row(row)
        try:
            async with uow.conn.transaction():
                await repository.update_route(uow.conn, route_id, {**current, **changed})
        except asyncpg.UniqueViolationError:
            raise Conflict(
                "the model already has a route to that upstream model through this credential",
                code="route_exists",
            ) from None
        await uow.record(
            ModelRouteUpdated(
                model=row["model"],
                route_id=route_id,
                before={f: current[f] for f in changed},
                after=changed,
                actor=uow.actor,
            )
        )
        uow.invalidate("model", row["model"])
        return route_from_row(await repository.fetch_route(uow.conn, route_id))

    async def remove_route(self, uow: UnitOfWork, route_id: UUID) -> None:
        """Remove a route; the model keeps its others."""
        row = await repository.fetch_route(uow.conn, route_id, for_update=True)
        if row is None:
            raise NotFound("route not found", param="route_id")
        await repository.delete_route(uow.conn, route_id)
        await uow.record(ModelRouteRemoved(model=row["model"], route_id=route_id, actor=uow.actor))
        uow.invalidate("model", row["model"])


catalog_service = CatalogService()
