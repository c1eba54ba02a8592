"""asyncpg pool creation: one pool per process, JSON codecs installed on every connection."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from tally.config import Settings

Pool = asyncpg.Pool
# What repositories take: a plain connection or one borrowed from the pool.
Connection = asyncpg.Connection | PoolConnectionProxy


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb travels as text; msgspec encodes and decodes it faster than the stdlib.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: msgspec.json.encode(v).decode(),
        decoder=msgspec.json.decode,
        schema="pg_catalog",
    )


async def create_pool(settings: Settings, **overrides: Any) -> asyncpg.Pool:
    """Open the process's pool on `TALLY_DATABASE_URL`."""
    options: dict[str, Any] = {
        "min_size": settings.db_pool_min,
        "max_size": settings.db_pool_max,
        "init": _init_connection,
        # Statements are prepared once per connection and reused; the cache is per connection.
        "statement_cache_size": 256,
        "command_timeout": 30,
    }
    options.update(overrides)
    pool = await asyncpg.create_pool(settings.database_url, **options)
    assert pool is not None
    return pool
