"""Issue 8, items 1 and 3 at the sink: no value a sender controls makes a row unstorable,
a row PostgreSQL still refuses is isolated, lookups keep their indexes, and no record
creates a table."""

from __future__ import annotations

import random
import string
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from pipeline.hep.packet import HepPacket
from pipeline.postgres.migrate import apply_migrations
from pipeline.postgres.sink import PostgresSink
from pipeline.records import ReceiveContext, RecordIdGenerator, packet_to_record
from pipeline.storage import COLUMNS, CaptureRow, build_row
from pipeline.storage.rows import CAPTURE_TABLES, index_key
from tests.integration.test_sink import make_sink, rows_of, vector_records

pytestmark = pytest.mark.integration

CONTEXT = ReceiveContext(transport="udp", sender_ip="127.0.0.1", sender_port=9, receiver_id="r1")
CAPTURED = datetime(2026, 11, 26, 12, 30, tzinfo=UTC)
# Random letters do not compress: PostgreSQL cannot shrink them below its index limit.
ALPHABET = string.ascii_letters + string.digits
SIP_FIELDS = (
    "ruri_user", "ruri_domain", "from_user", "from_domain", "from_tag", "to_user",
    "to_domain", "call_id", "user_agent", "via_branch", "contact_user", "contact_host",
)


@pytest.fixture
async def sink(database_dsn: str) -> AsyncIterator[PostgresSink]:
    sink = make_sink(database_dsn, CollectorRegistry())
    await sink.start(now=CAPTURED)
    yield sink
    await sink.close(timeout=5)


@pytest.fixture
async def db(database_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_dsn)
    yield conn
    await conn.close()


async def total_rows(conn: asyncpg.Connection, tables: Iterable[str]) -> int:
    return sum([await conn.fetchval(f"SELECT count(*) FROM {t}") for t in tables])


def long_text(size: int, rng: random.Random) -> str:
    return "".join(rng.choices(ALPHABET, k=size))


def hostile_sip(method: str, values: dict[str, str]) -> bytes:
    v = values
    return (
        f"{method} sip:{v['ruri_user']}@{v['ruri_domain']} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.1:5060;branch={v['via_branch']}\r\n"
        f"From: <sip:{v['from_user']}@{v['from_domain']}>;tag={v['from_tag']}\r\n"
        f"To: <sip:{v['to_user']}@{v['to_domain']}>\r\n"
        f"Call-ID: {v['call_id']}\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Contact: <sip:{v['contact_user']}@{v['contact_host']}>\r\n"
        f"User-Agent: {v['user_agent']}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def hostile_row(
    ids: RecordIdGenerator, rng: random.Random, size: int, proto_type: int,
    method: str = "INVITE",
) -> tuple[CaptureRow, dict[str, str]]:
    """A row with a `size`-character value in every text column the sender controls."""
    values = {name: long_text(size, rng) for name in SIP_FIELDS}
    # Multi-byte characters: the key is counted in characters, not bytes.
    values["correlation_id"] = "é€" + long_text(size, rng)
    values["node_name"] = "ñ" + long_text(size, rng)
    payload = hostile_sip(method, values) if proto_type == 1 else long_text(size, rng).encode()
    packet = HepPacket(
        version=3, ip_family=2, ip_proto=17, src_ip="10.0.0.1", dst_ip="10.0.0.2",
        src_port=5060, dst_port=5062, ts_sec=int(CAPTURED.timestamp()), ts_usec=0,
        proto_type=proto_type, capture_id=7, payload=payload,
        correlation_id=values["correlation_id"], node_name=values["node_name"],
    )
    record = packet_to_record(packet, record_id=ids.next(),
                              receive_time_us=1_795_664_046_000_000, context=CONTEXT)
    row = build_row(record, kafka_partition=0, kafka_offset=0)
    if proto_type == 1:
        for name in SIP_FIELDS:  # the parser really put the long values in the columns
            assert row.value(name) == values[name], name
    return row, values


async def stored(conn: asyncpg.Connection, row: CaptureRow) -> dict[str, Any]:
    record = await conn.fetchrow(
        f"SELECT {', '.join(COLUMNS)} FROM {row.table} WHERE record_id = $1",
        row.value("record_id"),
    )
    assert record is not None, f"row not stored in {row.table}"
    return dict(record)


@pytest.mark.parametrize("size", [3_300, 100_000])
async def test_over_long_values_in_every_indexed_column_are_stored_whole(
    sink: PostgresSink, db: asyncpg.Connection, size: int
) -> None:
    ids = RecordIdGenerator()
    rng = random.Random(size)
    normal = rows_of(vector_records("kamailio_hep3_udp", ids))
    hostile = [
        hostile_row(ids, rng, size, 1, "INVITE"),  # hep_proto_1_call
        hostile_row(ids, rng, size, 1, "REGISTER"),  # hep_proto_1_registration (user_agent)
        hostile_row(ids, rng, size, 1, "OPTIONS"),  # hep_proto_1_default
        hostile_row(ids, rng, size, 5),
        hostile_row(ids, rng, size, 100),
        hostile_row(ids, rng, size, 200),  # hep_proto_unknown_default
    ]
    assert {row.table for row, _ in hostile} == {
        "hep_proto_1_call", "hep_proto_1_registration", "hep_proto_1_default",
        "hep_proto_5_default", "hep_proto_100_default", "hep_proto_unknown_default"}
    rows = normal[:80] + [row for row, _ in hostile] + normal[80:]
    assert await sink.write(rows) == []

    for row, values in hostile:
        got = await stored(db, row)
        # Every text value whole, exactly as built (sid is the key of the Call-ID).
        built = dict(zip(COLUMNS, row.values, strict=True))
        text = {k for k, v in built.items() if type(v) is str} - {
            "protocol_header", "data_header", "src_ip", "dst_ip"}
        assert {k: got[k] for k in text} == {k: built[k] for k in text}
        if row.value("hep_type") == 1:
            assert text >= {*SIP_FIELDS, "correlation_id", "node_name", "sid", "raw"}
        assert got["correlation_id"] == values["correlation_id"]
        assert got["node_name"] == values["node_name"]
        expected_sid = values["call_id"] if row.value("hep_type") == 1 else (
            values["correlation_id"])
        assert got["sid"] == index_key(expected_sid)
        # The Python key and PostgreSQL's agree.
        sql_key = await db.fetchval("SELECT hep_index_key($1)", expected_sid)
        assert sql_key == got["sid"]
        assert len(sql_key.encode()) < 1024
    _, values = hostile[0]
    flow = await db.fetch("SELECT id FROM sip_call_flow($1)", values["call_id"])
    assert len(flow) == 1
    by_user = await db.fetchval(
        "SELECT count(*) FROM hep_proto_1_call "
        "WHERE hep_index_key(from_user) = hep_index_key($1) AND from_user = $1",
        values["from_user"])
    assert by_user == 1
    assert await total_rows(db, CAPTURE_TABLES) == len(rows)


async def test_a_row_postgresql_still_refuses_is_isolated(
    sink: PostgresSink, db: asyncpg.Connection
) -> None:
    # An operator's own index on a full text value brings back SQLSTATE 54000
    # ("index row size exceeds btree maximum") for a long value in that column.
    await db.execute("CREATE INDEX operator_via_idx ON hep_proto_1_call (via_branch)")
    ids = RecordIdGenerator()
    rows = rows_of(vector_records("kamailio_hep3_udp", ids))
    bad, _ = hostile_row(ids, random.Random(1), 4_000, 1, "INVITE")
    rows.insert(50, bad)
    rejected = await sink.write(rows)
    assert [r.row for r in rejected] == [bad]
    assert rejected[0].reason.startswith("54000: index row size")
    assert sink.metrics.rows_rejected.labels("54000")._value.get() == 1
    assert await total_rows(db, CAPTURE_TABLES) == len(rows) - 1


async def test_no_capture_index_holds_a_full_text_value(
    sink: PostgresSink, db: asyncpg.Connection
) -> None:
    """Only sid (stored as a key) may be indexed as it is; other text goes through
    hep_index_key. Checked on every capture table and partition."""
    indexed = await db.fetch(
        """
        SELECT DISTINCT a.attname
          FROM pg_index i
          JOIN pg_class c ON c.oid = i.indrelid
          JOIN LATERAL unnest(i.indkey::smallint[]) AS k(attnum) ON true
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE c.relname LIKE 'hep_proto_%' AND a.atttypid = 'text'::regtype
        """
    )
    assert {r["attname"] for r in indexed} == {"sid"}
    keyed = await db.fetchval(
        "SELECT count(*) FROM pg_indexes WHERE tablename = 'hep_proto_1_call' "
        "AND indexdef LIKE '%hep_index_key(%'"
    )
    assert keyed == 1  # correlation_id (migrations/0005 dropped the user indexes)


async def test_lookups_by_call_id_use_indexes(
    sink: PostgresSink, db: asyncpg.Connection
) -> None:
    await db.execute(
        """
        INSERT INTO hep_proto_1_call (sid, create_date, protocol_header, data_header,
            raw, record_id, hep_version, receive_time, call_id, method, cseq_num,
            cseq_method, from_user, to_user, ruri_user, from_tag, to_tag, correlation_id)
        SELECT 'call-' || (g / 10), $1::timestamptz + g * interval '10 ms', '{}', '{}',
               'x', gen_random_uuid(), 3, now(), 'call-' || (g / 10),
               CASE WHEN g % 10 = 0 THEN 'INVITE' END, 1, 'INVITE', 'u' || (g % 1000),
               'v' || (g % 1000), 'v' || (g % 1000), 'ft',
               CASE WHEN g % 10 <> 0 THEN 'tt' END,
               CASE WHEN g % 20 = 0 THEN 'call-' || (g / 10 + 1) END
          FROM generate_series(1, 50000) g
        """,
        CAPTURED,
    )
    await db.execute("ANALYZE hep_proto_1_call")

    async def plan(sql: str) -> str:
        return "\n".join(r[0] for r in await db.fetch("EXPLAIN " + sql))

    # Empty partitions may be scanned, the one holding the rows never.
    scanned = "Seq Scan on hep_proto_1_call_p20261126"

    one_call = await plan("SELECT * FROM sip_calls WHERE call_id = 'call-500'")
    assert "sid_create_date_idx" in one_call and scanned not in one_call, one_call
    flow = await plan("SELECT * FROM sip_call_flow('call-500')")
    assert "sid_create_date_idx" in flow and "hep_index_key_idx" in flow, flow
    assert scanned not in flow, flow
    assert len(await db.fetch("SELECT * FROM sip_call_flow('call-500')")) == 20


async def test_every_routable_table_exists_and_none_is_created(
    sink: PostgresSink, db: asyncpg.Connection
) -> None:
    before = await db.fetchval("SELECT count(*) FROM pg_class")
    registered = {r[0] for r in await db.fetch(
        "SELECT table_name FROM hep_ingest_capture_tables")}
    assert registered == CAPTURE_TABLES
    ids = RecordIdGenerator()
    rng = random.Random(3)
    rows = [hostile_row(ids, rng, 10, t)[0] for t in (0, 65, 129, 193, 200, 255, 35, 54)]
    assert await sink.write(rows) == []
    types = await db.fetch(
        "SELECT hep_type FROM hep_proto_unknown_default ORDER BY hep_type")
    assert [r[0] for r in types] == [0, 65, 129, 193, 200, 255]
    assert await db.fetchval("SELECT count(*) FROM pg_class") == before


async def test_tables_an_older_consumer_created_get_no_new_partitions(
    database_dsn: str, db: asyncpg.Connection
) -> None:
    # What the probe left behind: a table created on demand for a random type.
    await apply_migrations(database_dsn)
    await db.execute("SELECT hep_ingest_create_capture_table('hep_proto_129_default')")
    sink = make_sink(database_dsn, CollectorRegistry())
    await sink.start(now=CAPTURED)
    await sink.close(timeout=5)
    parts = await db.fetch(
        "SELECT parent.relname AS parent, count(*) AS n FROM pg_inherits i "
        "JOIN pg_class parent ON parent.oid = i.inhparent "
        "WHERE parent.relname IN ('hep_proto_129_default', 'hep_proto_35_default') "
        "GROUP BY parent.relname ORDER BY parent.relname")
    # DEFAULT only, versus DEFAULT + today + two days ahead.
    assert [(r["parent"], r["n"]) for r in parts] == [
        ("hep_proto_129_default", 1), ("hep_proto_35_default", 4)]
