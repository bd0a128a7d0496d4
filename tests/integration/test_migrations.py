"""Migrations against a real PostgreSQL: once, in order, safe under concurrency."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
import pytest

from pipeline.postgres.migrate import MigrationError, apply_migrations, load_migrations
from pipeline.resources import migrations_dir

pytestmark = pytest.mark.integration


async def test_apply_twice_applies_once(database_dsn: str) -> None:
    first = await apply_migrations(database_dsn)
    names = [m.name for m in load_migrations()]
    assert first == names
    assert first[0] == "0001_hep_tables"
    assert await apply_migrations(database_dsn) == []
    conn = await asyncpg.connect(database_dsn)
    try:
        rows = await conn.fetch(
            "SELECT version, name, checksum FROM hep_ingest_schema_migrations ORDER BY version"
        )
        assert [r["name"] for r in rows] == names
        assert len(rows[0]["checksum"]) == 64
        tables = await conn.fetch("SELECT table_name FROM hep_ingest_capture_tables")
        assert {r["table_name"] for r in tables} >= {
            "hep_proto_1_call", "hep_proto_1_registration", "hep_proto_1_default",
            "hep_proto_5_default", "hep_proto_100_default",
        }
    finally:
        await conn.close()


async def test_concurrent_workers_apply_once(database_dsn: str) -> None:
    results = await asyncio.gather(*(apply_migrations(database_dsn) for _ in range(4)))
    count = len(load_migrations())
    assert sorted(len(r) for r in results) == [0, 0, 0, count]
    conn = await asyncpg.connect(database_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM hep_ingest_schema_migrations") == count
    finally:
        await conn.close()


async def test_changed_checksum_is_an_error(database_dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    shutil.copy(migrations_dir() / "0001_hep_tables.sql", folder)
    await apply_migrations(database_dsn, folder)
    (folder / "0102_extra.sql").write_text("CREATE TABLE extra_t (x int);")
    edited = folder / "0001_hep_tables.sql"
    edited.write_text(edited.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match=r"0001_hep_tables\.sql.*must never change"):
        await apply_migrations(database_dsn, folder)
    conn = await asyncpg.connect(database_dsn)
    try:
        # Nothing after the mismatch was applied either.
        assert await conn.fetchval("SELECT to_regclass('extra_t')") is None
    finally:
        await conn.close()


async def test_new_migration_is_applied_in_order(database_dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    shutil.copy(migrations_dir() / "0001_hep_tables.sql", folder)
    (folder / "0102_extra.sql").write_text("CREATE TABLE extra_t (x int);")
    assert await apply_migrations(database_dsn, folder) == ["0001_hep_tables", "0102_extra"]


async def test_failing_migration_leaves_nothing(database_dsn: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    shutil.copy(migrations_dir() / "0001_hep_tables.sql", folder)
    (folder / "0102_bad.sql").write_text("CREATE TABLE half_t (x int); SELECT 1/0;")
    with pytest.raises(asyncpg.DivisionByZeroError):
        await apply_migrations(database_dsn, folder)
    conn = await asyncpg.connect(database_dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('half_t')") is None
        assert await conn.fetchval("SELECT max(version) FROM hep_ingest_schema_migrations") == 1
    finally:
        await conn.close()
