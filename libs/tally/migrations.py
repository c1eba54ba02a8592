"""Migration runner: numbered `.sql` files applied in order and recorded in a table.

Safe when several processes start at once: a session-level advisory lock serialises runners,
and each file is applied in its own transaction together with its row in `schema_migrations`,
so a crash leaves either the whole file applied and recorded, or neither.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tally.log import get_logger

log = get_logger(__name__)

# Any constant works; it only has to be the same in every process of one database.
_MIGRATION_LOCK_ID = 0x7A11_0001
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
_SELECT_APPLIED = "SELECT version, checksum FROM schema_migrations"
_RECORD = "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"


class MigrationError(Exception):
    """A migration file is malformed, or an applied file was changed afterwards."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """The folder of `.sql` files: `TALLY_MIGRATIONS_DIR`, the installed copy, or the checkout's."""
    if override := os.environ.get("TALLY_MIGRATIONS_DIR"):
        return Path(override)
    installed = Path(__file__).parent / "migrations_sql"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "migrations"


def load_migrations(folder: Path | None = None) -> list[Migration]:
    folder = folder or migrations_dir()
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_case.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers in {folder}")
    return found


async def apply_migrations(dsn: str, folder: Path | None = None) -> list[int]:
    """Apply every pending migration; return the versions applied by this call."""
    migrations = load_migrations(folder)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_ID)
        try:
            await conn.execute(_CREATE_TABLE)
            applied = {r["version"]: r["checksum"] for r in await conn.fetch(_SELECT_APPLIED)}
            done: list[int] = []
            for migration in migrations:
                if migration.version in applied:
                    if applied[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"{migration.version:04d}_{migration.name}.sql changed after it was"
                            " applied; write a new migration instead"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        _RECORD, migration.version, migration.name, migration.checksum
                    )
                log.info("migration applied", version=migration.version, name=migration.name)
                done.append(migration.version)
            return done
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_ID)
    finally:
        await conn.close()
