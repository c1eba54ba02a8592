"""HTTP routes of the model catalog. Everyone signed in may read it; operators change it."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

from litestar import delete, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody

from tally.auth import require_platform_role
from tenant.catalog.schemas import (
    Model,
    ModelCreate,
    ModelList,
    ModelUpdate,
    Route,
    RouteCreate,
    RouteUpdate,
)
from tenant.catalog.service import catalog_service
from tenant.params import Caller, Services

_operator = [require_platform_role("operator")]


def _model_name(path: Path) -> str:
    # Model names may hold slashes ("meta-llama/llama-3"), so they are matched as a path.
    return str(path).lstrip("/")


@get("/v1/catalog/models", tags=["catalog"])
async def list_models(
    principal: Caller, runtime: Services, include_disabled: FromQuery[bool] = False
) -> ModelList:
    """The public models; operators also see each model's routes."""
    async with runtime.pool.acquire() as conn:
        return await catalog_service.list_models(
            conn,
            with_routes=principal.has_platform_role("operator"),
            include_disabled=include_disabled,
        )


@post("/v1/catalog/models", guards=_operator, status_code=201, tags=["catalog"])
async def add_model(data: JSONBody[ModelCreate], principal: Caller, runtime: Services) -> Model:
    """Add a public model name with its metadata; give it routes with POST /v1/catalog/routes."""
    async with runtime.unit(principal) as uow:
        return await catalog_service.add_model(uow, data)


@get("/v1/catalog/models/{name:path}", tags=["catalog"])
async def get_model(name: FromPath[Path], principal: Caller, runtime: Services) -> Model:
    async with runtime.pool.acquire() as conn:
        return await catalog_service.get_model(
            conn, _model_name(name), with_routes=principal.has_platform_role("operator")
        )


@patch("/v1/catalog/models/{name:path}", guards=_operator, tags=["catalog"])
async def update_model(
    name: FromPath[Path], data: JSONBody[ModelUpdate], principal: Caller, runtime: Services
) -> Model:
    """Enable or disable a model, or change its context window, max output or modalities."""
    async with runtime.unit(principal) as uow:
        return await catalog_service.update_model(uow, _model_name(name), data)


@post("/v1/catalog/routes", guards=_operator, status_code=201, tags=["catalog"])
async def add_route(data: JSONBody[RouteCreate], principal: Caller, runtime: Services) -> Route:
    """Route a model through a provider credential (by `credential_id` or `provider` name)."""
    async with runtime.unit(principal) as uow:
        return await catalog_service.add_route(uow, data)


@patch("/v1/catalog/routes/{route_id:uuid}", guards=_operator, tags=["catalog"])
async def update_route(
    route_id: FromPath[UUID], data: JSONBody[RouteUpdate], principal: Caller, runtime: Services
) -> Route:
    async with runtime.unit(principal) as uow:
        return await catalog_service.update_route(uow, route_id, data)


@delete("/v1/catalog/routes/{route_id:uuid}", guards=_operator, tags=["catalog"])
async def remove_route(route_id: FromPath[UUID], principal: Caller, runtime: Services) -> None:
    async with runtime.unit(principal) as uow:
        await catalog_service.remove_route(uow, route_id)


ROUTES = [list_models, add_model, get_model, update_model, add_route, update_route, remove_route]
