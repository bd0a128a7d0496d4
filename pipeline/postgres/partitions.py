"""Range partitions on create_date (UTC) for every capture table.

Partitions are named ``<table>_pYYYYMMDD`` (daily) or ``<table>_pYYYYMMDDHH``
(hourly), created ahead of time and dropped by retention (per table from
``hep_ingest_capture_tables.retention_days``, else the caller's default). Each table
also has a DEFAULT partition catching rows no range covers (an agent clock days off).

Creating a partition never fails because the DEFAULT partition already holds rows of
its range: in one transaction the new table is created LIKE the parent, those rows are
moved into it, and it is attached. Every function takes the current time as `now`
(no hidden clock reads) and runs under a session advisory lock, so concurrent
workers do not race; a partition whose locks cannot be had within `lock_timeout` is
skipped (the next run retries) rather than stalling writers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import asyncpg

from pipeline.observability import get_logger

log = get_logger(__name__)

#: pg_advisory_lock key of partition maintenance ("hepparts" in ASCII).
PARTITION_LOCK_KEY = 0x6865707061727473
DEFAULT_AHEAD = timedelta(days=2)
DEFAULT_RETENTION_DAYS = 14
DEFAULT_LOCK_TIMEOUT = timedelta(seconds=5)

_BOUND = re.compile(r"FOR VALUES FROM \('([^']+)'\) TO \('([^']+)'\)")


class PartitionInterval(StrEnum):
    HOURLY = "hourly"
    DAILY = "daily"

    @property
    def step(self) -> timedelta:
        return timedelta(hours=1) if self is PartitionInterval.HOURLY else timedelta(days=1)

    def floor(self, moment: datetime) -> datetime:
        moment = moment.astimezone(UTC)
        if self is PartitionInterval.HOURLY:
            return moment.replace(minute=0, second=0, microsecond=0)
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)

    def partition_name(self, table: str, start: datetime) -> str:
        fmt = "%Y%m%d%H" if self is PartitionInterval.HOURLY else "%Y%m%d"
        return f"{table}_p{start.astimezone(UTC).strftime(fmt)}"


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    table: str
    partition: str
    lower: datetime | None  # None for the DEFAULT partition
    upper: datetime | None
    rows_estimate: int | None  # None until the partition has been analysed
    size_bytes: int

    @property
    def is_default(self) -> bool:
        return self.lower is None

    @property
    def range(self) -> str:
        if self.lower is None or self.upper is None:
            return "DEFAULT"
        return f"[{self.lower.isoformat()}, {self.upper.isoformat()})"


def _require_aware(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def parse_bound(expression: str) -> tuple[datetime, datetime] | None:
    """pg_get_expr(relpartbound) -> (lower, upper) in UTC; None for DEFAULT and others."""
    match = _BOUND.search(expression)
    if match is None:
        return None
    try:
        lower = datetime.fromisoformat(match.group(1))
        upper = datetime.fromisoformat(match.group(2))
    except ValueError:
        return None
    return lower.astimezone(UTC), upper.astimezone(UTC)


async def capture_tables(conn: asyncpg.Connection) -> list[tuple[str, int | None]]:
    """(table, retention_days) of every registered capture table that exists."""
    rows = await conn.fetch(
        "SELECT table_name, retention_days FROM hep_ingest_capture_tables "
        "WHERE to_regclass(format('%I', table_name)) IS NOT NULL ORDER BY table_name"
    )
    return [(r["table_name"], r["retention_days"]) for r in rows]


_PARTITIONS_SQL = """
SELECT parent.relname AS table_name,
       child.relname AS partition,
       pg_get_expr(child.relpartbound, child.oid) AS bound,
       child.reltuples::bigint AS reltuples,
       pg_total_relation_size(child.oid) AS size_bytes
FROM pg_inherits i
JOIN pg_class parent ON parent.oid = i.inhparent
JOIN pg_class child ON child.oid = i.inhrelid
WHERE i.inhparent = ANY($1::regclass[])
ORDER BY parent.relname, child.relname
"""


async def _partitions(conn: asyncpg.Connection, tables: Iterable[str]) -> list[PartitionInfo]:
    names = [f'"{t}"' for t in tables]
    if not names:
        return []
    result = []
    for row in await conn.fetch(_PARTITIONS_SQL, names):
        bound = parse_bound(row["bound"] or "")
        result.append(
            PartitionInfo(
                table=row["table_name"],
                partition=row["partition"],
                lower=bound[0] if bound else None,
                upper=bound[1] if bound else None,
                rows_estimate=row["reltuples"] if row["reltuples"] >= 0 else None,
                size_bytes=row["size_bytes"],
            )
        )
    return result


async def list_partitions(conn: asyncpg.Connection) -> list[PartitionInfo]:
    """Every partition (DEFAULT included) of every registered capture table."""
    return await _partitions(conn, [t for t, _ in await capture_tables(conn)])


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _columns(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum",
        _quote(table),
    )
    return [r["attname"] for r in rows]


async def create_partition(
    conn: asyncpg.Connection,
    table: str,
    name: str,
    lower: datetime,
    upper: datetime,
    *,
    lock_timeout: timedelta = DEFAULT_LOCK_TIMEOUT,
) -> int:
    """Create and attach one partition, moving its rows out of the DEFAULT partition.

    Returns how many rows moved. One transaction: on any error nothing changes.
    """
    default = _quote(f"{table}_default_part")
    columns = ", ".join(_quote(c) for c in await _columns(conn, table))
    async with conn.transaction():
        await conn.execute(
            "SELECT set_config('lock_timeout', $1, true)",
            f"{int(lock_timeout.total_seconds() * 1000)}ms",
        )
        # Rows must not reach the DEFAULT partition's copy of this range between the
        # move and the attach (ATTACH needs this lock anyway).
        await conn.execute(f"LOCK TABLE {default} IN ACCESS EXCLUSIVE MODE")
        await conn.execute(
            f"CREATE TABLE {_quote(name)} (LIKE {_quote(table)} "
            "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMMENTS)"
        )
        status = await conn.execute(
            f"WITH moved AS (DELETE FROM {default} WHERE create_date >= $1 AND create_date < $2 "
            f"RETURNING {columns}) INSERT INTO {_quote(name)} ({columns}) "
            f"SELECT {columns} FROM moved",
            lower,
            upper,
        )
        moved = int(status.rsplit(" ", 1)[-1])
        await conn.execute(
            f"ALTER TABLE {_quote(table)} ATTACH PARTITION {_quote(name)} "
            f"FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"
        )
    return moved


class _Locked:
    """Session advisory lock around one maintenance run."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def __aenter__(self) -> None:
        await self._conn.execute("SELECT pg_advisory_lock($1)", PARTITION_LOCK_KEY)

    async def __aexit__(self, *exc_info: object) -> None:
        if not self._conn.is_closed():
            await self._conn.execute("SELECT pg_advisory_unlock($1)", PARTITION_LOCK_KEY)


async def ensure_partitions(
    conn: asyncpg.Connection,
    *,
    now: datetime,
    interval: PartitionInterval = PartitionInterval.DAILY,
    ahead: timedelta | int = DEFAULT_AHEAD,
    tables: Iterable[str] | None = None,
    lock_timeout: timedelta = DEFAULT_LOCK_TIMEOUT,
) -> list[str]:
    """Create the partitions covering [floor(now), now + ahead] for every capture
    table (or `tables`); return the names created.

    A range that overlaps an existing partition (say, daily ones before a switch to
    hourly) is left to that partition. An integer `ahead` counts intervals.
    """
    now = _require_aware(now)
    if isinstance(ahead, int):
        ahead = interval.step * ahead
    first = interval.floor(now)
    last = interval.floor(now + ahead)
    created: list[str] = []
    async with _Locked(conn):
        names = list(tables) if tables is not None else [t for t, _ in await capture_tables(conn)]
        existing = await _partitions(conn, names)
        for table in names:
            ranges = [
                (p.lower, p.upper)
                for p in existing
                if p.table == table and p.lower is not None and p.upper is not None
            ]
            start = first
            while start <= last:
                end = start + interval.step
                if not any(lo < end and start < hi for lo, hi in ranges):
                    name = interval.partition_name(table, start)
                    try:
                        moved = await create_partition(
                            conn, table, name, start, end, lock_timeout=lock_timeout
                        )
                    except asyncpg.LockNotAvailableError:
                        log.warning("partition_lock_timeout", table=table, partition=name)
                    else:
                        created.append(name)
                        ranges.append((start, end))
                        log.info("partition_created", table=table, partition=name,
                                 rows_moved_from_default=moved)
                start = end
    return created


async def drop_expired_partitions(
    conn: asyncpg.Connection,
    *,
    now: datetime,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    dry_run: bool = False,
    lock_timeout: timedelta = DEFAULT_LOCK_TIMEOUT,
) -> list[str]:
    """Drop partitions wholly older than the retention (per table, else
    `retention_days`); return their names. With `dry_run`, only name them.

    DEFAULT partitions are never dropped.
    """
    now = _require_aware(now)
    dropped: list[str] = []
    async with _Locked(conn):
        tables = await capture_tables(conn)
        partitions = await _partitions(conn, [t for t, _ in tables])
        for table, table_retention in tables:
            keep_days = table_retention if table_retention is not None else retention_days
            cutoff = now - timedelta(days=keep_days)
            for p in partitions:
                if p.table != table or p.upper is None or p.upper > cutoff:
                    continue
                if not dry_run:
                    try:
                        async with conn.transaction():
                            await conn.execute(
                                "SELECT set_config('lock_timeout', $1, true)",
                                f"{int(lock_timeout.total_seconds() * 1000)}ms",
                            )
                            await conn.execute(f"DROP TABLE {_quote(p.partition)}")
                    except asyncpg.LockNotAvailableError:
                        log.warning("partition_lock_timeout", table=table, partition=p.partition)
                        continue
                    log.info("partition_dropped", table=table, partition=p.partition,
                             retention_days=keep_days)
                dropped.append(p.partition)
    return dropped
