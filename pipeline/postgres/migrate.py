"""Schema migrations: `migrations/NNNN_name.sql`, applied once each, in order.

Each file runs in its own transaction together with its row in
``hep_ingest_schema_migrations``, so a failed migration leaves nothing behind. The
whole run holds a session advisory lock: several workers starting at once apply each
migration exactly once (the others wait, then find nothing to do). A migration whose
file changed after it was applied is an error, never silently applied again: add a
new migration instead.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from pipeline.observability import get_logger
from pipeline.resources import migrations_dir

log = get_logger(__name__)

#: pg_advisory_lock key of migration runs (any fixed bigint; "hepmigr" in ASCII).
MIGRATION_LOCK_KEY = 0x6865706D696772
_FILE_NAME = re.compile(r"^(\d{4})_([A-Za-z0-9_\-]+)\.sql$")

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS hep_ingest_schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,   -- sha256 of the file, hex
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migrations directory and the database disagree; nothing more was applied."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str
    checksum: str


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migration files of `directory`, ordered by version."""
    folder = directory or migrations_dir()
    found: dict[int, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_name.sql")
        data = path.read_bytes()
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                f"two migrations with version {version:04d}: "
                f"{found[version].path.name}, {path.name}"
            )
        found[version] = Migration(
            version=version,
            name=path.stem,
            path=path,
            sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).hexdigest(),
        )
    return [found[v] for v in sorted(found)]


async def apply_migrations_on(
    conn: asyncpg.Connection, directory: Path | None = None
) -> list[str]:
    """`apply_migrations` on a connection the caller owns."""
    migrations = load_migrations(directory)
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_CREATE_LEDGER)
        applied = {
            row["version"]: row
            for row in await conn.fetch(
                "SELECT version, name, checksum FROM hep_ingest_schema_migrations"
            )
        }
        for migration in migrations:
            row = applied.get(migration.version)
            if row is not None and row["checksum"] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.path.name} was applied as {row['name']!r} with "
                    f"sha256 {row['checksum']}, but the file now has sha256 "
                    f"{migration.checksum}; applied migrations must never change: revert the "
                    "file and put the change in a new migration"
                )
        for version in sorted(set(applied) - {m.version for m in migrations}):
            log.warning("migration_file_missing", version=version, name=applied[version]["name"])
        done: list[str] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO hep_ingest_schema_migrations (version, name, checksum) "
                    "VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("migration_applied", version=migration.version, name=migration.name)
            done.append(migration.name)
        return done
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def apply_migrations(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply every migration not applied yet; return their names (``0001_hep_tables``)."""
    conn = await asyncpg.connect(dsn)
    try:
        return await apply_migrations_on(conn, directory)
    finally:
        await conn.close()
