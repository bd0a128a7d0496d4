"""Optional indexes for homer-app's searches: `hep-ingest homer-indexes enable|disable`.

homer-app searches the SIP capture tables through the HOMER JSON columns, with SQL of
the form ``create_date BETWEEN $1 AND $2 AND data_header->>'callid' = $3`` (or
``IN (...)`` for several values). Our own indexes are on the typed columns, so without
these indexes such a search reads every row of the time range. They cost every write
(docs/benchmarks.md measures how much), so they are off by default and an operator
turns on the fields homer-app users search.

Choices:

* A hash index for the Call-ID: homer-app compares it with `=` and `IN`, which a hash
  index serves, and a hash index keeps a 4-byte hash of the value however long it is,
  so a sender's 3 kB Call-ID cannot make its row unstorable (a btree entry holds at
  most ~2.7 kB, see migrations/0003). Call-IDs are nearly unique, which hash indexes
  need: a hash bucket holds every duplicate of a value in one chain of pages that each
  insert walks, so a value repeated a million times would make its inserts ever slower.
* Btree indexes for the users and the addresses, whose values repeat (a trunk's user,
  a proxy's address): btree deduplication stores a repeated value once per page. The
  addresses are ours (at most 45 characters). A user longer than a btree entry holds
  (~2.7 kB after compression, only a hostile sender's) makes PostgreSQL refuse its row
  while that index is on: the sink isolates and rejects just that row
  (hep_ingest_rows_rejected{reason="54000"}), as it does any row PostgreSQL refuses.
* Partial: rows whose value is empty (responses have no R-URI user) are not indexed,
  which spares their write cost. homer-app compares with constants, from which the
  planner proves `<> ''`; LIKE searches (values with `%`) are not served.
* Expressions written as homer-app writes them (``data_header->>'callid'``), so the
  planner matches them, and valid whether the columns are jsonb or json.
* The state is the indexes themselves: `enable` and `disable` are idempotent, and an
  interrupted `enable` is finished by running it again.
* Enabling on a live database never blocks writers for long: the parent's index is
  created ON ONLY the partitioned table (invalid, no data read), each partition's index
  is built CONCURRENTLY and attached; once every partition's is attached PostgreSQL
  marks the parent's valid. Partitions created later (`ensure_partitions` attaches
  them) get the index from the parent automatically. Every lock is taken under
  `lock_timeout` and retried.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Final

import asyncpg

from pipeline.observability import get_logger

log = get_logger(__name__)

#: pg_advisory_lock key of homer index changes ("hephomer" in ASCII).
HOMER_INDEX_LOCK_KEY: Final = 0x686570686F6D6572
#: The tables homer-app's SIP searches read.
SIP_TABLES: Final = ("hep_proto_1_call", "hep_proto_1_registration", "hep_proto_1_default")
DEFAULT_LOCK_TIMEOUT: Final = timedelta(seconds=5)
DEFAULT_LOCK_ATTEMPTS: Final = 10
_MAX_IDENTIFIER: Final = 63


class HomerField(StrEnum):
    """A homer-app search field, named as in homer-app's mapping (data_header.callid)."""

    callid = "callid"
    from_user = "from_user"
    to_user = "to_user"
    ruri_user = "ruri_user"
    src_ip = "srcIp"
    dst_ip = "dstIp"

    @property
    def method(self) -> str:
        """hash for the nearly unique Call-ID, btree for values that repeat."""
        return "hash" if self is HomerField.callid else "btree"

    @property
    def expression(self) -> str:
        column = "protocol_header" if self in (HomerField.src_ip, HomerField.dst_ip) \
            else "data_header"
        return f"({column} ->> '{self.value}')"

    @property
    def justification(self) -> str:
        """The homer-app statement the index serves: its COMMENT, as every index on the
        capture tables has one (migrations/0005)."""
        where = f"data_header->>'{self.value}'" if self.expression.startswith("(data") \
            else f"protocol_header->>'{self.value}'"
        served = (
            f"homer-app search grid (data/service/search.go buildQuery): create_date "
            f"between ? and ? AND {where} = ? (IN (...) for several values)"
        )
        if self is HomerField.callid:
            served += f"; homer-app call flow correlation: {where} = ANY(ARRAY[...])"
        return f"{served}; optional, hep-ingest homer-indexes enable --field {self.value}"

    def index_definition(self, table: str) -> str:
        """What follows `CREATE INDEX name ON [ONLY]`."""
        return f"{_quote(table)} USING {self.method} ({self.expression}) " \
            f"WHERE {self.expression} <> ''"


class IndexState(StrEnum):
    on = "on"
    partial = "partial"  # created, not every partition attached yet (interrupted enable)
    off = "off"


@dataclass(frozen=True, slots=True)
class HomerIndexStatus:
    table: str
    field: HomerField
    index: str
    state: IndexState
    partitions_indexed: int
    partitions: int
    size_bytes: int


def _identifier(name: str) -> str:
    """`name`, or when longer than PostgreSQL keeps, a prefix and a hash of it."""
    if len(name) <= _MAX_IDENTIFIER:
        return name
    return f"{name[:_MAX_IDENTIFIER - 9]}_{zlib.crc32(name.encode()):08x}"


def index_name(table: str, field: HomerField) -> str:
    return _identifier(f"{table}_homer_{field.value.lower()}_idx")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_PARTITIONS_SQL: Final = """
SELECT c.relname
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = to_regclass($1)
 ORDER BY c.relname
"""

# The partitions whose index is attached to the parent index $2 of table $1.
_ATTACHED_SQL: Final = """
SELECT t.relname
  FROM pg_inherits i
  JOIN pg_index x ON x.indexrelid = i.inhrelid
  JOIN pg_class t ON t.oid = x.indrelid
 WHERE i.inhparent = to_regclass($1)
"""

_INDEX_SQL: Final = """
SELECT x.indisvalid,
       (SELECT coalesce(sum(pg_relation_size(i.inhrelid)), 0)::bigint
          FROM pg_inherits i WHERE i.inhparent = x.indexrelid) AS size_bytes
  FROM pg_index x WHERE x.indexrelid = to_regclass($1)
"""


async def _partitions(conn: asyncpg.Connection, table: str) -> list[str]:
    return [r["relname"] for r in await conn.fetch(_PARTITIONS_SQL, _quote(table))]


async def _attached(conn: asyncpg.Connection, parent_index: str) -> set[str]:
    return {r["relname"] for r in await conn.fetch(_ATTACHED_SQL, _quote(parent_index))}


async def homer_index_status(
    conn: asyncpg.Connection,
    fields: Iterable[HomerField] = tuple(HomerField),
    tables: Iterable[str] = SIP_TABLES,
) -> list[HomerIndexStatus]:
    """Each (table, field): is its index there and valid, on how many partitions."""
    result = []
    for table in tables:
        partitions = await _partitions(conn, table)
        for field in fields:
            name = index_name(table, field)
            row = await conn.fetchrow(_INDEX_SQL, _quote(name))
            if row is None:
                state, indexed, size = IndexState.off, 0, 0
            else:
                indexed = len(await _attached(conn, name))
                state = IndexState.on if row["indisvalid"] else IndexState.partial
                size = row["size_bytes"]
            result.append(HomerIndexStatus(table, field, name, state, indexed,
                                           len(partitions), size))
    return result


class _Locked:
    """Session advisory lock: one enable or disable at a time."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def __aenter__(self) -> None:
        await self._conn.execute("SELECT pg_advisory_lock($1)", HOMER_INDEX_LOCK_KEY)

    async def __aexit__(self, *exc_info: object) -> None:
        if not self._conn.is_closed():
            await self._conn.execute("SELECT pg_advisory_unlock($1)", HOMER_INDEX_LOCK_KEY)


async def _with_lock_timeout(conn: asyncpg.Connection, sql: str, lock_timeout: timedelta,
                             attempts: int) -> None:
    """Run one DDL statement whose locks are waited for at most `lock_timeout` at a
    time (so writers queue behind it no longer than that), retried `attempts` times."""
    await conn.execute(f"SET lock_timeout = '{int(lock_timeout.total_seconds() * 1000)}ms'")
    try:
        for attempt in range(1, attempts + 1):
            try:
                await conn.execute(sql)
                return
            except asyncpg.LockNotAvailableError:
                if attempt == attempts:
                    raise
                log.warning("homer_index_lock_timeout", statement=sql.split(" ON ")[0],
                            attempt=attempt)
                await asyncio.sleep(min(0.2 * 2 ** attempt, 5.0))
    finally:
        await conn.execute("RESET lock_timeout")


Progress = Callable[[str], None]


def _silent(_: str) -> None:
    return None


async def enable_homer_indexes(
    conn: asyncpg.Connection,
    fields: Iterable[HomerField] = tuple(HomerField),
    tables: Iterable[str] = SIP_TABLES,
    *,
    lock_timeout: timedelta = DEFAULT_LOCK_TIMEOUT,
    lock_attempts: int = DEFAULT_LOCK_ATTEMPTS,
    progress: Progress = _silent,
) -> list[str]:
    """Create the indexes of `fields` on `tables` and all their partitions, without
    blocking writers while partitions are indexed; return the partition indexes built."""
    built: list[str] = []
    async with _Locked(conn):
        for table in tables:
            if await conn.fetchval("SELECT to_regclass($1)", _quote(table)) is None:
                continue
            for field in fields:
                built += await _enable_one(conn, table, field, lock_timeout, lock_attempts,
                                           progress)
    return built


async def _enable_one(conn: asyncpg.Connection, table: str, field: HomerField,
                      lock_timeout: timedelta, attempts: int, progress: Progress) -> list[str]:
    parent = index_name(table, field)
    # Not IF NOT EXISTS alone: that would still take the table's SHARE lock.
    if await conn.fetchval("SELECT to_regclass($1)", _quote(parent)) is None:
        await _with_lock_timeout(
            conn, f"CREATE INDEX IF NOT EXISTS {_quote(parent)} ON ONLY "
            f"{field.index_definition(table)}", lock_timeout, attempts)
    await _comment(conn, parent, field, lock_timeout, attempts)
    built = []
    # A partition created meanwhile gets the index when it is attached; one more pass
    # finds any the listing missed.
    for _ in range(3):
        attached = await _attached(conn, parent)
        missing = [p for p in await _partitions(conn, table) if p not in attached]
        if not missing:
            break
        for partition in missing:
            child = index_name(partition, field)
            valid = await conn.fetchval(
                "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)",
                _quote(child))
            # CONCURRENTLY takes no lock writers wait for (SHARE UPDATE EXCLUSIVE), so
            # it runs without lock_timeout: it waits for older transactions instead.
            if valid is False:  # left by an interrupted CREATE INDEX CONCURRENTLY
                await conn.execute(f"DROP INDEX CONCURRENTLY {_quote(child)}")
            if not valid:
                progress(f"indexing {partition} ({field.value})")
                await conn.execute(f"CREATE INDEX CONCURRENTLY {_quote(child)} ON "
                                   f"{field.index_definition(partition)}")
                await _comment(conn, child, field, lock_timeout, attempts)
                built.append(child)
            await _with_lock_timeout(
                conn, f"ALTER INDEX {_quote(parent)} ATTACH PARTITION {_quote(child)}",
                lock_timeout, attempts)
    log.info("homer_index_enabled", table=table, field=field.value, index=parent,
             partitions_built=len(built))
    return built


async def _comment(conn: asyncpg.Connection, index: str, field: HomerField,
                   lock_timeout: timedelta, attempts: int) -> None:
    """Say on the index which homer-app statement justifies it (also on an index an
    earlier version created without a comment: `enable` again adds it)."""
    literal = "'" + field.justification.replace("'", "''") + "'"
    await _with_lock_timeout(conn, f"COMMENT ON INDEX {_quote(index)} IS {literal}",
                             lock_timeout, attempts)


async def disable_homer_indexes(
    conn: asyncpg.Connection,
    fields: Iterable[HomerField] = tuple(HomerField),
    tables: Iterable[str] = SIP_TABLES,
    *,
    lock_timeout: timedelta = DEFAULT_LOCK_TIMEOUT,
    lock_attempts: int = DEFAULT_LOCK_ATTEMPTS,
) -> list[str]:
    """Drop the indexes of `fields` on `tables` (and their partitions'); return the
    parent indexes dropped. Dropping takes each table's lock briefly, under
    `lock_timeout`; an index an interrupted `enable` left unattached is dropped
    CONCURRENTLY."""
    dropped: list[str] = []
    async with _Locked(conn):
        for table in tables:
            for field in fields:
                parent = index_name(table, field)
                if await conn.fetchval("SELECT to_regclass($1)", _quote(parent)) is not None:
                    await _with_lock_timeout(conn, f"DROP INDEX IF EXISTS {_quote(parent)}",
                                             lock_timeout, lock_attempts)
                    dropped.append(parent)
                    log.info("homer_index_disabled", table=table, field=field.value,
                             index=parent)
                for partition in await _partitions(conn, table):
                    child = index_name(partition, field)
                    if await conn.fetchval("SELECT to_regclass($1)", _quote(child)):
                        await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {_quote(child)}")
    return dropped
