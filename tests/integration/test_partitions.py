"""Partition maintenance against a real PostgreSQL, with a clock passed in."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from pipeline.postgres.migrate import apply_migrations
from pipeline.postgres.partitions import (
    PartitionInterval,
    drop_expired_partitions,
    ensure_partitions,
    list_partitions,
)
from pipeline.storage.rows import CAPTURE_TABLES

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 10, 15, 30, tzinfo=UTC)
TABLES = sorted(CAPTURE_TABLES)
SIP_AND_RTCP = ("hep_proto_1_call", "hep_proto_1_registration", "hep_proto_1_default",
                "hep_proto_5_default")


@pytest.fixture
async def conn(database_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    await apply_migrations(database_dsn)
    connection = await asyncpg.connect(database_dsn)
    yield connection
    await connection.close()


async def insert_row(conn: asyncpg.Connection, table: str, when: datetime) -> uuid.UUID:
    record_id = uuid.uuid4()
    await conn.execute(
        f"INSERT INTO {table} (sid, create_date, protocol_header, data_header, raw, record_id, "
        "hep_version, receive_time) VALUES ('s', $1, '{}', '{}', 'x', $2, 3, $1)",
        when, record_id,
    )
    return record_id


async def test_ensure_creates_today_and_two_ahead(conn: asyncpg.Connection) -> None:
    created = await ensure_partitions(conn, now=NOW)
    expected = {f"{t}_p{d}" for t in TABLES for d in ("20260310", "20260311", "20260312")}
    assert set(created) == expected
    assert await ensure_partitions(conn, now=NOW) == []
    infos = {p.partition: p for p in await list_partitions(conn)}
    day = infos["hep_proto_1_call_p20260311"]
    assert day.lower == datetime(2026, 3, 11, tzinfo=UTC)
    assert day.upper == datetime(2026, 3, 12, tzinfo=UTC)
    assert infos["hep_proto_1_call_default_part"].is_default


async def test_hourly_partitions(conn: asyncpg.Connection) -> None:
    created = await ensure_partitions(conn, now=NOW, interval=PartitionInterval.HOURLY,
                                      ahead=timedelta(hours=2), tables=["hep_proto_5_default"])
    assert created == [f"hep_proto_5_default_p20260310{h}" for h in ("15", "16", "17")]


async def test_existing_daily_partition_is_not_overlapped(conn: asyncpg.Connection) -> None:
    await ensure_partitions(conn, now=NOW, tables=["hep_proto_5_default"])
    created = await ensure_partitions(conn, now=NOW, interval=PartitionInterval.HOURLY,
                                      ahead=timedelta(days=3), tables=["hep_proto_5_default"])
    assert created[0] == "hep_proto_5_default_p2026031300"


async def test_drop_respects_retention_and_dry_run(conn: asyncpg.Connection) -> None:
    await ensure_partitions(conn, now=NOW - timedelta(days=20), ahead=timedelta(days=19),
                            tables=SIP_AND_RTCP)
    await conn.execute("UPDATE hep_ingest_capture_tables SET retention_days = 3 "
                       "WHERE table_name = 'hep_proto_5_default'")
    would = await drop_expired_partitions(conn, now=NOW, retention_days=14, dry_run=True)
    assert would
    # 20 days and the DEFAULT partition for those tables, the DEFAULT one for the others.
    assert len(await list_partitions(conn)) == len(SIP_AND_RTCP) * 20 + len(TABLES)
    dropped = await drop_expired_partitions(conn, now=NOW, retention_days=14)
    assert sorted(dropped) == sorted(would)
    # Days 02-18 .. 02-23 end on or before 02-24 15:30 (14 days back): 6 per table.
    call = [d for d in dropped if d.startswith("hep_proto_1_call_")]
    assert sorted(call) == [f"hep_proto_1_call_p202602{d}" for d in range(18, 24)]
    # The 3-day table keeps only what ends after 03-07 15:30.
    rtcp = {p.partition for p in await list_partitions(conn) if p.table == "hep_proto_5_default"}
    assert rtcp == {"hep_proto_5_default_default_part", "hep_proto_5_default_p20260307",
                    "hep_proto_5_default_p20260308", "hep_proto_5_default_p20260309"}
    assert all(not p.is_default for p in await list_partitions(conn) if p.partition in dropped)
    assert await drop_expired_partitions(conn, now=NOW, retention_days=14) == []


async def test_row_in_default_moves_into_its_new_partition(conn: asyncpg.Connection) -> None:
    await ensure_partitions(conn, now=NOW)
    old = NOW - timedelta(days=3)
    record_id = await insert_row(conn, "hep_proto_1_call", old)
    where = "SELECT tableoid::regclass::text FROM hep_proto_1_call WHERE record_id = $1"
    assert await conn.fetchval(where, record_id) == "hep_proto_1_call_default_part"
    created = await ensure_partitions(conn, now=old, ahead=timedelta(0),
                                      tables=["hep_proto_1_call"])
    assert created == ["hep_proto_1_call_p20260307"]
    assert await conn.fetchval(where, record_id) == "hep_proto_1_call_p20260307"
    assert await conn.fetchval("SELECT count(*) FROM hep_proto_1_call") == 1


async def test_row_a_day_ahead_lands_in_its_partition(conn: asyncpg.Connection) -> None:
    await ensure_partitions(conn, now=NOW)
    record_id = await insert_row(conn, "hep_proto_1_call", NOW + timedelta(days=1))
    assert await conn.fetchval(
        "SELECT tableoid::regclass::text FROM hep_proto_1_call WHERE record_id = $1", record_id
    ) == "hep_proto_1_call_p20260311"


async def test_concurrent_workers_do_not_race(database_dsn: str) -> None:
    await apply_migrations(database_dsn)
    conns = [await asyncpg.connect(database_dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(ensure_partitions(c, now=NOW) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, 3 * len(TABLES)]
    finally:
        for c in conns:
            await c.close()


async def test_naive_now_is_refused(conn: asyncpg.Connection) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await ensure_partitions(conn, now=datetime(2026, 1, 1))
