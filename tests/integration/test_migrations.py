from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from tally.migrations import MigrationError, apply_migrations, load_migrations
from tests.fixtures.services import database_url_for


@pytest.fixture
async def empty_database(pg_admin_url: str):  # type: ignore[no-untyped-def]
    name = f"tally_mig_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url_for(pg_admin_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_concurrent_runners_apply_each_migration_exactly_once(empty_database: str) -> None:
    results = await asyncio.gather(*(apply_migrations(empty_database) for _ in range(5)))
    applied = sorted(v for result in results for v in result)
    assert applied == [m.version for m in load_migrations()]
    assert await apply_migrations(empty_database) == []
    conn = await asyncpg.connect(empty_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(applied)
    finally:
        await conn.close()


async def test_a_changed_applied_migration_is_refused(empty_database: str, tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE first_t (id int);")
    await apply_migrations(empty_database, tmp_path)
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE first_t (id bigint);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await apply_migrations(empty_database, tmp_path)


async def test_a_failing_migration_leaves_neither_its_changes_nor_its_record(
    empty_database: str,
    tmp_path: Path,
) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok_t (id int);")
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE half_t (id int); SELECT no_such_fn();")
    with pytest.raises(asyncpg.PostgresError):
        await apply_migrations(empty_database, tmp_path)
    conn = await asyncpg.connect(empty_database)
    try:
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == 1
        assert await conn.fetchval("SELECT to_regclass('half_t')") is None
    finally:
        await conn.close()


def test_badly_named_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_x.sql").write_text("")
    with pytest.raises(MigrationError, match="NNNN_snake_case"):
        load_migrations(tmp_path)
