"""Every SQL statement on models and model_routes."""

# Statements splice in only the column lists below (module constants); every value is a bound
# parameter, so the f-strings cannot carry input into SQL.
# ruff: noqa: S608

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from tally.db import Connection

_MODEL_COLUMNS = """name, enabled, context_window, max_output_tokens, modalities, created_at,
updated_at"""
INSERT_MODEL = f"""
INSERT INTO models (name, enabled, context_window, max_output_tokens, modalities)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (name) DO NOTHING
RETURNING {_MODEL_COLUMNS}
"""
SELECT_MODEL = f"SELECT {_MODEL_COLUMNS} FROM models WHERE name = $1"
SELECT_MODEL_FOR_UPDATE = SELECT_MODEL + " FOR UPDATE"
LIST_MODELS = f"SELECT {_MODEL_COLUMNS} FROM models WHERE ($1 OR enabled) ORDER BY name"
UPDATE_MODEL = f"""
UPDATE models SET enabled = $2, context_window = $3, max_output_tokens = $4, modalities = $5,
                  updated_at = now()
WHERE name = $1
RETURNING {_MODEL_COLUMNS}
"""

_ROUTE_COLUMNS = """r.id, r.model, r.credential_id, c.name AS credential_name,
c.kind AS provider_kind, c.enabled AS credential_enabled, r.upstream_model, r.priority, r.weight,
r.enabled, r.created_at"""
INSERT_ROUTE = """
INSERT INTO model_routes (id, model, credential_id, upstream_model, priority, weight, enabled)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (model, credential_id, upstream_model) DO NOTHING
RETURNING id
"""
SELECT_ROUTE = f"""
SELECT {_ROUTE_COLUMNS} FROM model_routes r JOIN provider_credentials c ON c.id = r.credential_id
WHERE r.id = $1
"""
SELECT_ROUTE_FOR_UPDATE = SELECT_ROUTE + " FOR UPDATE OF r"
ROUTES_OF_MODELS = f"""
SELECT {_ROUTE_COLUMNS} FROM model_routes r JOIN provider_credentials c ON c.id = r.credential_id
WHERE r.model = ANY($1::text[])
ORDER BY r.model, r.priority, r.weight DESC, r.created_at
"""
UPDATE_ROUTE = """
UPDATE model_routes SET upstream_model = $2, priority = $3, weight = $4, enabled = $5
WHERE id = $1
"""
DELETE_ROUTE = "DELETE FROM model_routes WHERE id = $1"


async def insert_model(
    conn: Connection,
    *,
    name: str,
    enabled: bool,
    context_window: int | None,
    max_output_tokens: int | None,
    modalities: list[str],
) -> asyncpg.Record | None:
    """The new row, or None when the model exists."""
    return await conn.fetchrow(
        INSERT_MODEL, name, enabled, context_window, max_output_tokens, modalities
    )


async def fetch_model(conn: Connection, name: str, *, for_update: bool = False) -> Any:
    return await conn.fetchrow(SELECT_MODEL_FOR_UPDATE if for_update else SELECT_MODEL, name)


async def list_models(conn: Connection, *, include_disabled: bool) -> list[asyncpg.Record]:
    return await conn.fetch(LIST_MODELS, include_disabled)


async def update_model(conn: Connection, name: str, fields: dict[str, Any]) -> asyncpg.Record:
    row = await conn.fetchrow(
        UPDATE_MODEL,
        name,
        fields["enabled"],
        fields["context_window"],
        fields["max_output_tokens"],
        fields["modalities"],
    )
    assert row is not None
    return row


async def insert_route(
    conn: Connection,
    *,
    route_id: UUID,
    model: str,
    credential_id: UUID,
    upstream_model: str,
    priority: int,
    weight: int,
    enabled: bool,
) -> bool:
    """False when the same model already routes to that credential and upstream model."""
    inserted = await conn.fetchval(
        INSERT_ROUTE, route_id, model, credential_id, upstream_model, priority, weight, enabled
    )
    return inserted is not None


async def fetch_route(conn: Connection, route_id: UUID, *, for_update: bool = False) -> Any:
    return await conn.fetchrow(SELECT_ROUTE_FOR_UPDATE if for_update else SELECT_ROUTE, route_id)


async def routes_of(conn: Connection, models: list[str]) -> list[asyncpg.Record]:
    return await conn.fetch(ROUTES_OF_MODELS, models)


async def update_route(conn: Connection, route_id: UUID, fields: dict[str, Any]) -> None:
    await conn.execute(
        UPDATE_ROUTE,
        route_id,
        fields["upstream_model"],
        fields["priority"],
        fields["weight"],
        fields["enabled"],
    )


async def delete_route(conn: Connection, route_id: UUID) -> None:
    await conn.execute(DELETE_ROUTE, route_id)
