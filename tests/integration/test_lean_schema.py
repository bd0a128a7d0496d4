"""Migration 0005 (lean capture tables): a database holding rows upgrades with a normal
`hep-ingest migrate`, every query answers as before, and each capture table keeps
exactly the indexes a query needs."""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pipeline.analysis.queries import CallFilter, fetch_call_flow, fetch_calls, fetch_stats
from pipeline.hep import decode_packet, encode_hep3
from pipeline.hep.packet import HepPacket
from pipeline.postgres.migrate import apply_migrations
from pipeline.postgres.partitions import ensure_partitions
from pipeline.records import RecordIdGenerator, packet_to_record
from pipeline.resources import migrations_dir
from pipeline.storage import COLUMNS, build_row
from pipeline.storage.rows import CAPTURE_TABLES
from tests.integration.analysis_support import (
    CONTEXT,
    flows_start,
    generated_packets,
    store_packets,
)
from tests.integration.test_cookbook import A_LEG, cookbook_queries, unknown_type_packets
from tests.integration.test_database_cli import run_cli

pytestmark = pytest.mark.integration

SIP_TABLES = {"hep_proto_1_call", "hep_proto_1_registration", "hep_proto_1_default"}
# Answers that depend on storage, not on the data, and queries of columns that later
# migrations add (0006: custom_headers).
NOT_COMPARED = {"Partition sizes and retention", "Custom SIP headers"}


def migrations_before_0005(folder: Path) -> Path:
    folder.mkdir()
    for path in migrations_dir().glob("*.sql"):
        if int(path.name[:4]) < 5:
            shutil.copy(path, folder)
    return folder


async def store_into_older_schema(dsn: str, packets: list[bytes], now: datetime) -> None:
    """The rows of `packets` as an older consumer stored them: the columns the tables
    have (the current sink writes columns that later migrations add)."""
    ids = RecordIdGenerator()
    rows = [build_row(packet_to_record(decode_packet(p), record_id=ids.next(),
                                       receive_time_us=time.time_ns() // 1000,
                                       context=CONTEXT), kafka_partition=0, kafka_offset=i)
            for i, p in enumerate(packets)]
    conn = await asyncpg.connect(dsn)
    try:
        await ensure_partitions(conn, now=now)
        present = {r[0] for r in await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'hep_proto_1_call'::regclass")}
        kept = [i for i, column in enumerate(COLUMNS) if column in present]
        for table in {r.table for r in rows}:
            await conn.copy_records_to_table(
                table, columns=[COLUMNS[i] for i in kept],
                records=[tuple(r.values[i] for i in kept) for r in rows if r.table == table])
    finally:
        await conn.close()


async def answers(conn: asyncpg.Connection, start: Any) -> dict[str, Any]:
    """Every cookbook query and what `calls`, `call` and `stats` print."""
    result: dict[str, Any] = {
        heading: [dict(r) for r in await conn.fetch(sql)]
        for heading, sql in cookbook_queries().items() if heading not in NOT_COMPARED
    }
    since, until = start - timedelta(hours=1), start + timedelta(hours=3)
    result["calls"] = await fetch_calls(conn, CallFilter(since, until, limit=1000))
    result["call"] = await fetch_call_flow(conn, A_LEG)
    result["stats"] = await fetch_stats(conn, since, until, timedelta(hours=1))
    return result


async def capture_indexes(conn: asyncpg.Connection) -> dict[str, set[str]]:
    rows = await conn.fetch(
        "SELECT c.relname AS t, i.relname AS i FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid "
        "WHERE c.relname = ANY($1::text[])", sorted(CAPTURE_TABLES))
    found: dict[str, set[str]] = {t: set() for t in CAPTURE_TABLES}
    for r in rows:
        found[r["t"]].add(r["i"].removeprefix(r["t"] + "_"))
    return found


def expected_indexes(table: str) -> set[str]:
    indexes = {"pkey", "sid_idx", "create_date_brin_idx"}
    if table in SIP_TABLES:
        indexes.add("correlation_id_key_idx")
    if table == "hep_proto_1_call":
        indexes.add("initial_invite_idx")
    return indexes


async def test_upgrade_of_a_database_with_rows(database_dsn: str, tmp_path: Path) -> None:
    await apply_migrations(database_dsn, migrations_before_0005(tmp_path / "before"))
    start = flows_start()
    packets = generated_packets(start) + unknown_type_packets(start)
    await store_into_older_schema(database_dsn, packets, start)
    conn = await asyncpg.connect(database_dsn)
    try:
        before = await answers(conn, start)
        headers_before = await conn.fetch(
            "SELECT record_id, protocol_header->>'srcIp' AS src, data_header->>'callid' AS cid "
            "FROM hep_proto_1_call ORDER BY record_id")

        migrated = run_cli("migrate", "--dsn", database_dsn)
        assert migrated.returncode == 0, migrated.stderr
        assert "0005_lean_capture_tables" in migrated.stdout

        assert await answers(conn, start) == before
        assert await conn.fetch(
            "SELECT record_id, protocol_header->>'srcIp' AS src, data_header->>'callid' AS cid "
            "FROM hep_proto_1_call ORDER BY record_id") == headers_before
        assert await capture_indexes(conn) == {t: expected_indexes(t) for t in CAPTURE_TABLES}
        shapes = await conn.fetch(
            "SELECT DISTINCT a.attname, format_type(a.atttypid, NULL) AS type "
            "  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            " WHERE c.relname LIKE 'hep_proto_%' AND c.relkind IN ('r', 'p') "
            "   AND a.attname IN ('protocol_header', 'data_header')")
        assert {tuple(r) for r in shapes} == {("protocol_header", "json"),
                                              ("data_header", "json")}

        # The upgraded tables take new rows, the same calls once more (new record ids).
        assert await store_packets(database_dsn, packets) == len(packets)
        assert await conn.fetchval("SELECT count(*) FROM hep_proto_1_call") == 2 * len(
            headers_before)
    finally:
        await conn.close()


async def test_homer_app_statements_run_on_json_headers(database_dsn: str) -> None:
    """The statement shapes of homer-app 1.5.20 (data/service/search.go) on json."""
    start = flows_start()
    await store_packets(database_dsn, generated_packets(start))
    conn = await asyncpg.connect(database_dsn)
    since, until = start - timedelta(hours=1), start + timedelta(hours=3)
    try:
        search = await conn.fetch(
            'SELECT * FROM "hep_proto_1_call" WHERE create_date between $1 AND $2 '
            "AND (data_header->>'callid' = $3 AND (protocol_header->>'captureId')::int >= 0 "
            "AND data_header->>'from_user' LIKE $4 AND protocol_header->>'srcIp' != '') "
            "LIMIT 200", since, until, A_LEG, "%")
        assert search and {r["sid"] for r in search} == {A_LEG}
        flow = await conn.fetch(
            'SELECT * FROM "hep_proto_1_call" WHERE create_date between $1 AND $2 '
            "AND sid = ANY(ARRAY[$3]) AND (protocol_header->>'srcIp' != $4 "
            "AND protocol_header->>'dstIp' != $4)", since, until, A_LEG, "203.0.113.1")
        assert len(flow) == len(search)
        by_id = await conn.fetch(
            'SELECT * FROM "hep_proto_1_call" WHERE create_date between $1 and $2 '
            f"AND id IN ({', '.join(str(r['id']) for r in flow)})", since, until)
        assert len(by_id) == len(flow)
        # json's ->> is immutable: hep-ingest homer-indexes can index it.
        await conn.execute("CREATE INDEX homer_callid_probe ON hep_proto_1_call "
                           "((data_header->>'callid'))")
    finally:
        await conn.close()


async def test_a_time_range_is_read_through_the_brin_index(database_dsn: str) -> None:
    start = flows_start()
    await store_packets(database_dsn, generated_packets(start))
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute("ANALYZE hep_proto_1_call")
        await conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN SELECT * FROM hep_proto_1_call WHERE create_date between $1 AND $2 "
            "AND data_header->>'from_user' = 'alice'",
            start, start + timedelta(minutes=15)))
    finally:
        await conn.close()
    assert "create_date_idx" in plan and "Bitmap Index Scan" in plan, plan


async def test_every_capture_index_names_the_query_that_needs_it(database_dsn: str) -> None:
    await apply_migrations(database_dsn)
    conn = await asyncpg.connect(database_dsn)
    try:
        rows = await conn.fetch(
            "SELECT i.relname, obj_description(i.oid, 'pg_class') AS why FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid "
            "WHERE c.relname = ANY($1::text[])", sorted(CAPTURE_TABLES))
    finally:
        await conn.close()
    assert rows
    assert [r["relname"] for r in rows if not r["why"]] == []


async def test_nul_bytes_from_a_sender_never_break_homer_app_reads(database_dsn: str) -> None:
    """json keeps an escaped NUL that jsonb refused, and `->>` fails on any row holding
    one: no sender-controlled value may put one in a header."""
    start = flows_start()
    payload = (b"INVITE sip:b\x00ob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9\x00\r\n"
               b"From: <sip:al\x00ice@a>;tag=1\r\nTo: <sip:bob@b>\r\nCall-ID: nul\x00id@h\r\n"
               b"CSeq: 1 INVITE\r\nUser-Agent: ua\x00x\r\nContent-Length: 0\r\n\r\n")
    packets = [
        encode_hep3(HepPacket(version=3, ip_family=2, ip_proto=17, src_ip="192.0.2.1",
                              dst_ip="192.0.2.2", src_port=5060, dst_port=5060,
                              ts_sec=int(start.timestamp()), proto_type=proto_type,
                              payload=body, correlation_id="corr\x00id", node_name="n\x00n"))
        for proto_type, body in ((1, payload), (100, b"log \x00 line"), (1, b"\x00" * 20))
    ]
    await store_packets(database_dsn, packets)
    conn = await asyncpg.connect(database_dsn)
    try:
        read = await conn.fetch(
            "SELECT data_header->>'callid' AS callid, data_header->>'from_user' AS from_user, "
            "protocol_header->>'nodeName' AS node, protocol_header->>'correlation_id' AS corr "
            "FROM hep_proto_1_call UNION ALL "
            "SELECT data_header->>'callid', data_header->>'node', "
            "protocol_header->>'nodeName', protocol_header->>'correlation_id' "
            "FROM hep_proto_100_default UNION ALL "
            "SELECT data_header->>'callid', data_header->>'parse_error', "
            "protocol_header->>'nodeName', protocol_header->>'correlation_id' "
            "FROM hep_proto_1_default")
    finally:
        await conn.close()
    assert len(read) == 3
    assert read[0]["callid"] == "nulid@h" and read[0]["from_user"] == "alice"
    assert {r["node"] for r in read} == {"nn"}
