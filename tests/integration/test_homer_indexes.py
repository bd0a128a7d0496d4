"""`hep-ingest homer-indexes`: homer-app's search fields indexed on every partition,
present and future, used by homer-app's Call-ID search, and dropped again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import typer
from typer.testing import CliRunner

from pipeline.commands import homer_indexes as homer_command
from pipeline.hep import encode_hep3
from pipeline.postgres.homer_indexes import (
    SIP_TABLES,
    HomerField,
    IndexState,
    disable_homer_indexes,
    enable_homer_indexes,
    homer_index_status,
    index_name,
)
from pipeline.postgres.migrate import apply_migrations
from pipeline.postgres.partitions import PartitionInterval, ensure_partitions
from tests.flows import Capture, Dialog, Endpoint, Party
from tests.integration.analysis_support import encode_captures, store_packets

pytestmark = pytest.mark.integration

# homer-app's searches as gorm v1 sends them (tests/integration/test_homer_compat.py):
# the search grid's Call-ID field (data/service/search.go buildQuery: "data_header->>'callid'=
# ?", "IN (?,?)" for "a;b"), and the call flow's correlation lookup (= ANY(ARRAY[...])).
HOMER_CALLID_SEARCH = (
    'SELECT * FROM "hep_proto_1_call"  WHERE (create_date between $1 AND $2 '
    "AND ( data_header->>'callid'= $3 )) LIMIT 200"
)
HOMER_CALLID_IN_SEARCH = (
    'SELECT * FROM "hep_proto_1_call"  WHERE (create_date between $1 AND $2 '
    "AND ( data_header->>'callid' IN ($3,$4) )) LIMIT 200"
)
HOMER_CALLID_ANY_SEARCH = (
    'SELECT * FROM "hep_proto_1_call"  WHERE (create_date between $1 AND $2 '
    "AND data_header->>'callid' = ANY(ARRAY[$3,$4]))"
)


@pytest.fixture
async def conn(database_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    await apply_migrations(database_dsn)
    connection = await asyncpg.connect(database_dsn)
    yield connection
    await connection.close()


async def partition_indexes(conn: asyncpg.Connection, field: HomerField) -> dict[str, str]:
    """partition -> definition of its index of `field` (attached to the parent's)."""
    rows = await conn.fetch(
        """SELECT t.relname AS partition, pg_get_indexdef(i.inhrelid) AS definition
             FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid
             JOIN pg_class t ON t.oid = x.indrelid
            WHERE i.inhparent = to_regclass($1)""", index_name("hep_proto_1_call", field))
    return {r["partition"]: r["definition"] for r in rows}


async def call_partitions(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT inhrelid::regclass::text AS name FROM pg_inherits "
                            "WHERE inhparent = 'hep_proto_1_call'::regclass")
    return {r["name"] for r in rows}


async def test_enable_indexes_present_and_future_partitions(conn: asyncpg.Connection) -> None:
    now = datetime.now(UTC)
    await ensure_partitions(conn, now=now)
    assert {s.state for s in await homer_index_status(conn)} == {IndexState.off}

    built = await enable_homer_indexes(conn)
    statuses = await homer_index_status(conn)
    assert len(statuses) == len(SIP_TABLES) * len(HomerField)
    assert all(s.state is IndexState.on and s.partitions_indexed == s.partitions > 1
               for s in statuses)
    assert len(built) == sum(s.partitions for s in statuses)
    definitions = await partition_indexes(conn, HomerField.callid)
    assert set(definitions) == await call_partitions(conn)
    assert all("USING hash (((data_header ->> 'callid'::text))) WHERE "
               "((data_header ->> 'callid'::text) <> ''::text)" in d
               for d in definitions.values())
    assert all("USING btree (((protocol_header ->> 'srcIp'::text)))" in d
               for d in (await partition_indexes(conn, HomerField.src_ip)).values())

    # Partitions created later (hourly ones, as the consumer creates them) have them too.
    created = await ensure_partitions(conn, now=now + timedelta(days=5),
                                      interval=PartitionInterval.HOURLY, ahead=2)
    assert created
    definitions = await partition_indexes(conn, HomerField.ruri_user)
    assert {c for c in created if c.startswith("hep_proto_1_call_")} <= set(definitions)
    assert set(definitions) == await call_partitions(conn)
    assert await enable_homer_indexes(conn) == []  # nothing left to do

    # Disable: every index gone, from every partition.
    dropped = await disable_homer_indexes(conn)
    assert len(dropped) == len(SIP_TABLES) * len(HomerField)
    assert {s.state for s in await homer_index_status(conn)} == {IndexState.off}
    left = await conn.fetchval("SELECT count(*) FROM pg_indexes WHERE indexname LIKE '%homer%'")
    assert left == 0


async def test_every_homer_index_names_the_homer_app_statement_it_serves(
    conn: asyncpg.Connection,
) -> None:
    """As every default index on the capture tables (migrations/0005), each optional one
    says in its COMMENT which homer-app query justifies it, on the parent and on the
    partitions' indexes `enable` builds; an index created without one gets it when
    `enable` runs again."""
    await ensure_partitions(conn, now=datetime.now(UTC))
    parent = index_name("hep_proto_1_call", HomerField.from_user)
    await conn.execute(f"CREATE INDEX {parent} ON ONLY "
                       + HomerField.from_user.index_definition("hep_proto_1_call"))
    await enable_homer_indexes(conn)
    rows = await conn.fetch(
        """SELECT c.relname, obj_description(c.oid, 'pg_class') AS comment
             FROM pg_class c WHERE c.relkind IN ('i', 'I') AND c.relname LIKE '%homer%'""")
    built = {index_name(p, f) for f in HomerField for p in await call_partitions(conn)}
    assert built <= {r["relname"] for r in rows}
    assert len(rows) > len(SIP_TABLES) * len(HomerField)
    for row in rows:
        field = next(f for f in HomerField if f"_homer_{f.value.lower()}_" in row["relname"])
        assert row["comment"] == field.justification, row["relname"]
    callid = HomerField.callid.justification
    assert "data/service/search.go" in callid and "data_header->>'callid' = ?" in callid
    assert "protocol_header->>'srcIp' = ?" in HomerField.src_ip.justification


async def test_interrupted_enable_is_finished_by_running_it_again(
    conn: asyncpg.Connection,
) -> None:
    await ensure_partitions(conn, now=datetime.now(UTC))
    parent = index_name("hep_proto_1_call", HomerField.callid)
    # What an enable stopped after its first step leaves: the parent's index only, and
    # an invalid index on one partition (a CREATE INDEX CONCURRENTLY that failed).
    await conn.execute(f"CREATE INDEX {parent} ON ONLY "
                       + HomerField.callid.index_definition("hep_proto_1_call"))
    partition = sorted(await call_partitions(conn))[0]
    child = index_name(partition, HomerField.callid)
    await conn.execute(f"CREATE INDEX {child} ON "
                       + HomerField.callid.index_definition(partition))
    await conn.execute("UPDATE pg_index SET indisvalid = false "
                       "WHERE indexrelid = $1::regclass", child)
    [status] = await homer_index_status(conn, [HomerField.callid], ["hep_proto_1_call"])
    assert status.state is IndexState.partial and status.partitions_indexed == 0

    await enable_homer_indexes(conn, [HomerField.callid], ["hep_proto_1_call"])
    [status] = await homer_index_status(conn, [HomerField.callid], ["hep_proto_1_call"])
    assert status.state is IndexState.on and status.partitions_indexed == status.partitions
    assert await conn.fetchval("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                               "$1::regclass", child)


def _dialogs(start: datetime, count: int) -> list[Capture]:
    caller = Party("alice", Endpoint("192.0.2.10"), "t1", "bench")
    captures: list[Capture] = []
    for n in range(count):
        d = Dialog(f"homer-{n}@192.0.2.10", caller, "bob",
                   int(start.timestamp() * 1e6) + n * 1000)
        inv = d.request(0, "INVITE", caller.endpoint, Endpoint("192.0.2.1"), cseq=1)
        d.response(5, inv, 100, "Trying", Endpoint("192.0.2.1"), caller.endpoint)
        captures += d.captures
    return captures


async def _plan(conn: asyncpg.Connection, sql: str, *args: Any) -> str:
    return "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))


async def test_homer_app_callid_search_uses_the_index(database_dsn: str) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    await store_packets(database_dsn, encode_captures(_dialogs(start, 3000)))
    conn = await asyncpg.connect(database_dsn)
    try:
        since, until = start - timedelta(minutes=1), start + timedelta(hours=1)
        await conn.execute("ANALYZE")
        before = await _plan(conn, HOMER_CALLID_SEARCH, since, until, "homer-1234@192.0.2.10")
        assert "homer_callid" not in before and "Seq Scan" in before

        await enable_homer_indexes(conn, [HomerField.callid])
        await conn.execute("ANALYZE")
        after = await _plan(conn, HOMER_CALLID_SEARCH, since, until, "homer-1234@192.0.2.10")
        several = await _plan(conn, HOMER_CALLID_IN_SEARCH, since, until,
                              "homer-1@192.0.2.10", "homer-2@192.0.2.10")
        legs = await _plan(conn, HOMER_CALLID_ANY_SEARCH, since, until,
                           "homer-1@192.0.2.10", "homer-2@192.0.2.10")
        rows = await conn.fetch(HOMER_CALLID_SEARCH, since, until, "homer-1234@192.0.2.10")
    finally:
        await conn.close()
    assert "homer_callid_idx" in after, after
    assert "homer_callid_idx" in several, several
    assert "homer_callid_idx" in legs, legs
    assert [(r["sid"], r["data_header"].count("homer-1234")) for r in rows] == [
        ("homer-1234@192.0.2.10", 1)] * 2


async def test_a_long_call_id_is_still_stored_with_the_indexes_on(database_dsn: str) -> None:
    """The Call-ID's hash index keeps no value: a Call-ID no btree entry could hold is
    stored."""
    await apply_migrations(database_dsn)
    conn = await asyncpg.connect(database_dsn)
    try:
        await enable_homer_indexes(conn)
    finally:
        await conn.close()
    long_id = "x" * 6000 + "@192.0.2.10"
    [capture] = _dialogs(datetime.now(UTC), 1)[:1]
    payload = capture.payload.replace(b"homer-0@192.0.2.10", long_id.encode())
    await store_packets(database_dsn, [encode_hep3(replace(capture.to_packet(),
                                                           payload=payload))])
    conn = await asyncpg.connect(database_dsn)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM hep_proto_1_call WHERE data_header->>'callid' = $1", long_id)
    finally:
        await conn.close()
    assert stored == 1


def test_command_enables_shows_and_disables(postgres: Any) -> None:
    import uuid

    from tests.conftest import create_database

    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = postgres.dsn.rsplit("/", 1)[0] + "/" + name
    asyncio.run(create_database(postgres.dsn, name))
    asyncio.run(apply_migrations(dsn))
    app = typer.Typer()
    homer_command.register(app)
    runner = CliRunner()

    shown = runner.invoke(app, ["show", "--dsn", dsn])
    assert shown.exit_code == 0, shown.output
    assert len(shown.output.splitlines()) == len(SIP_TABLES) * len(HomerField)
    assert all(" off " in line for line in shown.output.splitlines())

    enabled = runner.invoke(app, ["enable", "--dsn", dsn, "--field", "callid",
                                  "--field", "srcIp"])
    assert enabled.exit_code == 0, enabled.output
    lines = [line for line in enabled.output.splitlines() if "hep_proto_1_call " in line]
    assert [line.split()[1:3] for line in lines] == [["callid", "on"], ["srcIp", "on"]]

    disabled = runner.invoke(app, ["disable", "--dsn", dsn])
    assert disabled.exit_code == 0, disabled.output
    assert "6 indexes dropped" in disabled.output
    bad = runner.invoke(app, ["enable", "--dsn", dsn, "--field", "raw"])
    assert bad.exit_code == 2


async def test_an_oversized_user_rejects_only_its_row(database_dsn: str) -> None:
    """The documented cost of btree user indexes: a user too long for a btree entry makes
    PostgreSQL refuse that row (54000); the sink stores the rest of the batch."""
    import os
    import time

    from pipeline.hep import decode_packet
    from pipeline.postgres.sink import PostgresSink, RetryPolicy, SinkSettings
    from pipeline.records import RecordIdGenerator, packet_to_record
    from pipeline.storage import build_row
    from tests.integration.analysis_support import CONTEXT

    await apply_migrations(database_dsn)
    conn = await asyncpg.connect(database_dsn)
    try:
        await enable_homer_indexes(conn, [HomerField.from_user])
    finally:
        await conn.close()
    normal, hostile = _dialogs(datetime.now(UTC), 1)
    huge_user = os.urandom(4000).hex()  # incompressible, 8000 bytes
    payload = hostile.payload.replace(b"<sip:alice@", f"<sip:{huge_user}@".encode())
    packets = [normal.to_packet(), replace(hostile.to_packet(), payload=payload)]
    ids = RecordIdGenerator()
    rows = [build_row(packet_to_record(decode_packet(encode_hep3(p)), record_id=ids.next(),
                                       receive_time_us=time.time_ns() // 1000,
                                       context=CONTEXT), kafka_partition=0, kafka_offset=n)
            for n, p in enumerate(packets)]
    assert rows[1].value("from_user") == huge_user
    sink = PostgresSink(SinkSettings(dsn=database_dsn, retry=RetryPolicy.instant()))
    await sink.start()
    try:
        rejected = await sink.write(rows)
    finally:
        await sink.close()
    assert [r.row for r in rejected] == [rows[1]]
    assert rejected[0].reason.startswith("54000")


async def test_a_busy_table_makes_enable_back_off_then_give_up(
    conn: asyncpg.Connection, database_dsn: str
) -> None:
    """A writer's open transaction holds the table: enable waits at most lock_timeout per
    try (so writers queue behind it no longer), retries, gives up with the lock error,
    and succeeds once the writer is done."""
    await ensure_partitions(conn, now=datetime.now(UTC))
    writer = await asyncpg.connect(database_dsn)
    try:
        transaction = writer.transaction()
        await transaction.start()
        await writer.execute("LOCK TABLE hep_proto_1_call IN ROW EXCLUSIVE MODE")
        started = asyncio.get_running_loop().time()
        with pytest.raises(asyncpg.LockNotAvailableError):
            await enable_homer_indexes(conn, [HomerField.callid], ["hep_proto_1_call"],
                                       lock_timeout=timedelta(seconds=0.2), lock_attempts=3)
        assert asyncio.get_running_loop().time() - started < 10
        [status] = await homer_index_status(conn, [HomerField.callid], ["hep_proto_1_call"])
        assert status.state is IndexState.off
        await transaction.commit()
    finally:
        await writer.close()
    await enable_homer_indexes(conn, [HomerField.callid], ["hep_proto_1_call"],
                               lock_timeout=timedelta(seconds=0.2), lock_attempts=3)
    [status] = await homer_index_status(conn, [HomerField.callid], ["hep_proto_1_call"])
    assert status.state is IndexState.on
    assert await conn.fetchval("SHOW lock_timeout") == "0"  # the session's is restored
