"""PostgresSink against a real PostgreSQL: idempotence, bad rows, outages."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from pipeline.accel import build_rows
from pipeline.embedded import EmbeddedPostgres
from pipeline.hep import decode_packet
from pipeline.postgres.sink import PostgresSink, RetryPolicy, SinkSettings
from pipeline.records import ReceiveContext, RecordIdGenerator, load_codec, packet_to_record
from pipeline.storage import COLUMNS, CaptureRow, build_row
from pipeline.storage.offsets import NO_STORED_OFFSET, BatchOffsets, BatchOutcome, OffsetClaim
from pipeline.storage.rows import CAPTURE_TABLES
from pipeline.storage.wire import WireFormat
from tests.conftest import load_vectors

pytestmark = pytest.mark.integration

CONTEXT = ReceiveContext(transport="udp", sender_ip="127.0.0.1", sender_port=9, receiver_id="r1")


def vector_records(name: str, ids: RecordIdGenerator) -> list[dict[str, Any]]:
    packets, _ = load_vectors(name)
    return [
        packet_to_record(decode_packet(p), record_id=ids.next(),
                         receive_time_us=1_795_664_046_000_000, context=CONTEXT)
        for p in packets
    ]


def rows_of(records: list[dict[str, Any]]) -> list[CaptureRow]:
    return [build_row(r, kafka_partition=0, kafka_offset=i) for i, r in enumerate(records)]


def make_sink(dsn: str, registry: CollectorRegistry | None = None) -> PostgresSink:
    policy = RetryPolicy(initial=0.05, maximum=0.5, jitter=0.05, max_elapsed=90)
    return PostgresSink(SinkSettings(dsn, retry=policy), registry=registry)


@pytest.fixture
async def sink(database_dsn: str) -> AsyncIterator[PostgresSink]:
    sink = make_sink(database_dsn, CollectorRegistry())
    await sink.start(now=datetime(2026, 11, 26, 12, tzinfo=UTC))
    yield sink
    await sink.close(timeout=5)


async def counts(dsn: str, *tables: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in tables}
    finally:
        await conn.close()


SIP_TABLES = ("hep_proto_1_call", "hep_proto_1_registration", "hep_proto_1_default")


async def test_vectors_land_in_their_tables_once(sink: PostgresSink, database_dsn: str) -> None:
    rows = rows_of(vector_records("kamailio_hep3_udp", RecordIdGenerator()))
    assert await sink.write(rows) == []
    expected = {"hep_proto_1_call": 130, "hep_proto_1_registration": 20,
                "hep_proto_1_default": 20}
    assert await counts(database_dsn, *SIP_TABLES) == expected
    assert await sink.write(rows) == []  # a replay
    assert await sink.write(rows[:7] + rows[:7]) == []  # duplicates within one batch
    assert await counts(database_dsn, *SIP_TABLES) == expected
    registry_value = sink.metrics.rows_written.labels("hep_proto_1_call")._value.get()
    assert registry_value == 130
    conn = await asyncpg.connect(database_dsn)
    try:
        # The capture dates of the vectors have their own daily partition.
        where = await conn.fetch("SELECT DISTINCT tableoid::regclass::text AS p "
                                 "FROM hep_proto_1_call")
        assert [r["p"] for r in where] == ["hep_proto_1_call_p20261126"]
        row = await conn.fetchrow(
            "SELECT method, status, cseq_method, data_header->>'method' AS homer_method "
            "FROM hep_proto_1_call WHERE status = 180 LIMIT 1")
        assert dict(row) == {"method": None, "status": 180, "cseq_method": "INVITE",
                             "homer_method": "180"}
    finally:
        await conn.close()


async def test_hepjs_vectors_and_a_known_hep_type(sink: PostgresSink, database_dsn: str) -> None:
    ids = RecordIdGenerator()
    records = vector_records("hepjs_hep3_udp", ids)
    records.append({**records[0], "record_id": ids.next(), "proto_type": 54,
                    "payload": b'{"cic": 1}'})
    assert await sink.write(rows_of(records)) == []
    got = await counts(database_dsn, "hep_proto_100_default", "hep_proto_54_default")
    assert got == {"hep_proto_100_default": 1, "hep_proto_54_default": 1}
    conn = await asyncpg.connect(database_dsn)
    try:
        registered = await conn.fetchval(
            "SELECT count(*) FROM hep_ingest_capture_tables WHERE table_name = "
            "'hep_proto_54_default'")
        assert registered == 1
        parts = await conn.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'hep_proto_54_default'::regclass")
        assert parts >= 2  # DEFAULT + at least today's
    finally:
        await conn.close()


async def test_bad_rows_are_returned_and_the_rest_stored(
    sink: PostgresSink, database_dsn: str
) -> None:
    ids = RecordIdGenerator()
    records = vector_records("kamailio_hep3_udp", ids)
    records[17] = {**records[17], "src_ip": "not-an-address"}
    rows = rows_of(records)
    # A server-side data error too: a text value PostgreSQL refuses (NUL).
    nul_values = list(rows[99].values)
    nul_values[0] = "call\x00id"
    rows[99] = CaptureRow(rows[99].table, tuple(nul_values))
    rejected = await sink.write(rows)
    assert sorted(r.row.value("kafka_offset") for r in rejected) == [17, 99]
    reasons = {r.row.value("kafka_offset"): r.reason for r in rejected}
    assert reasons[17].startswith("encode:")
    assert reasons[99].startswith("22021")
    total = sum((await counts(database_dsn, *SIP_TABLES)).values())
    assert total == 168
    assert sink.metrics.rows_rejected.labels("22021")._value.get() == 1
    # The same batch again: nothing new, the same two rejected.
    assert len(await sink.write(rows)) == 2
    assert sum((await counts(database_dsn, *SIP_TABLES)).values()) == 168


async def test_nul_payload_round_trips_byte_for_byte(
    sink: PostgresSink, database_dsn: str
) -> None:
    ids = RecordIdGenerator()
    base = vector_records("kamailio_hep3_udp", ids)[0]
    payloads = [base["payload"] + b"\x00tail\xff\xfe", b"\x00", bytes(range(256))]
    records = [{**base, "record_id": ids.next(), "payload": p} for p in payloads]
    assert await sink.write(rows_of(records)) == []
    conn = await asyncpg.connect(database_dsn)
    try:
        for record, payload in zip(records, payloads, strict=True):
            record_id = build_row(record, kafka_partition=None, kafka_offset=None).value(
                "record_id")
            stored = await conn.fetchval(
                "SELECT hep_payload(raw, raw_bytes) FROM (SELECT * FROM hep_proto_1_call "
                "UNION ALL SELECT * FROM hep_proto_1_default) t WHERE record_id = $1",
                record_id)
            assert stored == payload
    finally:
        await conn.close()


def batches(count: int, size: int) -> list[list[CaptureRow]]:
    ids = RecordIdGenerator()
    template = vector_records("kamailio_hep3_udp", RecordIdGenerator())
    out = []
    for b in range(count):
        records = [{**template[i % len(template)], "record_id": ids.next()} for i in range(size)]
        out.append([build_row(r, kafka_partition=0, kafka_offset=b * size + i)
                    for i, r in enumerate(records)])
    return out


async def test_terminated_connections_lose_and_duplicate_nothing(database_dsn: str) -> None:
    sink = make_sink(database_dsn)
    await sink.start(now=datetime(2026, 11, 26, tzinfo=UTC))
    work = batches(20, 500)
    stop = asyncio.Event()
    killer = await asyncpg.connect(database_dsn)

    async def kill() -> int:
        killed = 0
        while not stop.is_set():
            killed += await killer.fetchval(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'hep-ingest-sink') t")
            await asyncio.sleep(0.25)
        return killed

    killing = asyncio.create_task(kill())
    try:
        for batch in work:
            assert await sink.write(batch) == []
    finally:
        stop.set()
        killed = await killing
        await killer.close()
        await sink.close(timeout=5)
    assert killed > 0
    assert sum((await counts(database_dsn, *SIP_TABLES)).values()) == 20 * 500


async def test_server_restart_mid_writes(fresh_postgres: EmbeddedPostgres) -> None:
    registry = CollectorRegistry()
    sink = make_sink(fresh_postgres.dsn, registry)
    await sink.start(now=datetime(2026, 11, 26, tzinfo=UTC))
    work = batches(40, 500)

    def restart_with_a_gap() -> None:
        # Down for a full second while the loop keeps writing, so that at least one
        # write meets the dead server whatever the machine's load (a bare restart can
        # fall between two writes and be healed silently by the pool).
        fresh_postgres.stop("fast")
        time.sleep(1.0)
        fresh_postgres.start()

    restarter = threading.Thread(target=restart_with_a_gap)
    try:
        for i, batch in enumerate(work):
            if i == 3:
                restarter.start()
            assert await sink.write(batch) == []
            await asyncio.sleep(0.02)
    finally:
        await asyncio.to_thread(restarter.join)
        await sink.close(timeout=5)
    assert sum((await counts(fresh_postgres.dsn, *SIP_TABLES)).values()) == 40 * 500
    retried = sum(s.value for m in registry.collect() if m.name == "hep_ingest_write_retries"
                  for s in m.samples if s.name.endswith("_total"))
    assert retried > 0


async def test_stop_ends_retries(fresh_postgres: EmbeddedPostgres) -> None:
    from pipeline.postgres.sink import SinkStoppedError

    sink = PostgresSink(SinkSettings(fresh_postgres.dsn, retry=RetryPolicy.instant(None)))
    await sink.start(now=datetime(2026, 11, 26, tzinfo=UTC))
    await asyncio.to_thread(fresh_postgres.stop, "immediate")
    writing = asyncio.create_task(sink.write(batches(1, 10)[0]))
    await asyncio.sleep(0.5)
    assert not writing.done()  # paused, retrying: not dropped, not failed
    sink.stop()
    with pytest.raises(SinkStoppedError):
        await writing
    await sink.close(timeout=1)


# -- offsets stored with the rows (exactly once) -------------------------------------


async def stored_offsets(dsn: str, group: str) -> dict[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT partition, next_offset FROM hep_ingest_consumer_offsets "
            "WHERE consumer_group = $1", group,
        )
        return {r["partition"]: r["next_offset"] for r in rows}
    finally:
        await conn.close()


def wire_rows(records: list[dict[str, Any]], wire_format: WireFormat) -> list[CaptureRow]:
    """Rows as the consumer builds them: each with its binary COPY tuple."""
    codec = load_codec()
    values = [codec.encode(r) for r in records]
    rows, failures = build_rows(values, 0, list(range(len(values))), codec=codec,
                                wire_format=wire_format)
    assert failures == []
    return rows


async def stored_columns(dsn: str, table: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f"SELECT {', '.join(COLUMNS)} FROM {table} ORDER BY kafka_offset")
        return [dict(r) for r in rows]
    finally:
        await conn.close()


def claim(partition: int, expected: int | None, next_offset: int) -> BatchOffsets:
    return BatchOffsets("g", "hep", (OffsetClaim(partition, expected, next_offset),))


async def test_a_fenced_late_commit_changes_nothing(sink: PostgresSink, database_dsn: str) -> None:
    ids = RecordIdGenerator()
    first, theirs, late = (rows_of(vector_records("kamailio_hep3_udp", ids)) for _ in range(3))
    assert await sink.stored_offsets("g", "hep", [0]) == {}
    assert await sink.write_batch(first, claim(0, None, 10)) == BatchOutcome()
    assert await sink.stored_offsets("g", "hep", [0, 1]) == {0: 10}
    # Another worker took the partition over and stored its next batch ...
    other = make_sink(database_dsn, CollectorRegistry())
    await other.start(now=datetime(2026, 11, 26, 12, tzinfo=UTC))
    try:
        assert await other.write_batch(theirs, claim(0, 10, 20)) == BatchOutcome()
    finally:
        await other.close(timeout=5)
    before = await counts(database_dsn, *SIP_TABLES)
    # ... so this worker's batch, read from 10 too, is fenced: nothing of it is stored.
    called: list[object] = []

    async def before_commit(rejected: list[Any]) -> None:
        called.append(rejected)

    outcome = await sink.write_batch(late, claim(0, 10, 20), before_commit)
    assert outcome == BatchOutcome(fenced={0: 20}) and not called
    # A claim made without a stored offset (a worker that could not read it) is
    # fenced as well once a row exists.
    assert (await sink.write_batch(late, claim(0, None, 30))).fenced == {0: 20}
    assert await counts(database_dsn, *SIP_TABLES) == before
    assert await stored_offsets(database_dsn, "g") == {0: 20}
    assert sum(before.values()) == len(first) + len(theirs)


async def test_a_claim_that_expects_a_lost_row_is_fenced_not_created(
    sink: PostgresSink, database_dsn: str
) -> None:
    """A crash with synchronous_commit=off can lose the commit that created a
    partition's row and the rows before it; the worker's next claim still expects the
    row. Creating it there would skip those rows for good, so the claim is fenced with
    NO_STORED_OFFSET and the worker reads the partition again from where it began."""
    ids = RecordIdGenerator()
    lost, later = (rows_of(vector_records("kamailio_hep3_udp", ids)) for _ in range(2))
    assert await sink.write_batch(lost, claim(2, None, 10)) == BatchOutcome()
    conn = await asyncpg.connect(database_dsn)
    try:  # what the crash leaves: neither the rows nor their offset
        await conn.execute("DELETE FROM hep_ingest_consumer_offsets WHERE partition = 2")
    finally:
        await conn.close()
    before = await counts(database_dsn, *SIP_TABLES)
    outcome = await sink.write_batch(later, claim(2, 10, 20))
    assert outcome == BatchOutcome(fenced={2: NO_STORED_OFFSET})
    assert await counts(database_dsn, *SIP_TABLES) == before
    assert await stored_offsets(database_dsn, "g") == {}


async def test_claims_race_one_winner(sink: PostgresSink, database_dsn: str) -> None:
    ids = RecordIdGenerator()
    batches = [rows_of(vector_records("kamailio_hep3_udp", ids)) for _ in range(6)]
    sinks = [make_sink(database_dsn, CollectorRegistry()) for _ in range(3)]
    for s in sinks:
        await s.start(now=datetime(2026, 11, 26, 12, tzinfo=UTC))
    try:
        # Three writers create the partition's row at once, then three advance it at once.
        for expected, batch_rows in ((None, batches[:3]), (5, batches[3:])):
            outcomes = await asyncio.gather(*(
                s.write_batch(b, claim(3, expected, 5 if expected is None else 9))
                for s, b in zip(sinks, batch_rows, strict=True)
            ))
            assert sorted(bool(o.fenced) for o in outcomes) == [False, True, True]
    finally:
        for s in sinks:
            await s.close(timeout=5)
    assert await stored_offsets(database_dsn, "g") == {3: 9}
    stored = sum((await counts(database_dsn, *SIP_TABLES)).values())
    assert stored == 2 * len(batches[0])


async def test_a_copy_hitting_stored_rows_goes_through_staging(
    sink: PostgresSink, database_dsn: str
) -> None:
    rows = rows_of(vector_records("kamailio_hep3_udp", RecordIdGenerator()))
    assert await sink.write_batch(rows[:5], claim(0, None, 5)) == BatchOutcome()
    # The same records at new offsets (a producer retry) and new ones: no duplicate.
    assert await sink.write_batch(rows, claim(0, 5, 5 + len(rows))) == BatchOutcome()
    assert sum((await counts(database_dsn, *SIP_TABLES)).values()) == len(rows)
    assert await stored_offsets(database_dsn, "g") == {0: 5 + len(rows)}
    samples = {
        (s.name, s.labels.get("reason")): s.value
        for metric in sink.metrics.staging_fallbacks.collect() for s in metric.samples
    }
    assert samples[("hep_ingest_write_staging_fallbacks_total", "23505")] == 1


async def test_a_batch_of_dead_letters_only_advances_the_offsets(
    sink: PostgresSink, database_dsn: str
) -> None:
    published: list[object] = []

    async def before_commit(rejected: list[Any]) -> None:
        published.append(rejected)

    assert await sink.write_batch([], claim(2, None, 7), before_commit) == BatchOutcome()
    assert published == [[]]
    assert await stored_offsets(database_dsn, "g") == {2: 7}
def as_stored(row: CaptureRow) -> dict[str, Any]:
    """A row's values as asyncpg reads them back (jsonb as text, inet as an address)."""
    out = dict(zip(COLUMNS, row.values, strict=True))
    for column in ("src_ip", "dst_ip"):
        if out[column] is not None:
            out[column] = ipaddress.ip_address(out[column])
    return out


async def test_rows_in_wire_form_store_their_values(sink: PostgresSink, database_dsn: str) -> None:
    records = vector_records("kamailio_hep3_udp", RecordIdGenerator())
    records[5] = {**records[5], "src_ip": "not-an-address"}
    # json since migration 0005 (lean capture tables)
    assert sink.wire_format == WireFormat(protocol_header_jsonb=False, data_header_jsonb=False)
    rows = wire_rows(records, sink.wire_format)
    assert rows[0].wire is not None and rows[5].wire is None  # the sink's path refuses it
    rejected = await sink.write(rows)
    assert [(r.row.value("kafka_offset"), r.reason[:7]) for r in rejected] == [(5, "encode:")]
    for table in SIP_TABLES:
        expected = [as_stored(r) for r in rows if r.table == table and r is not rows[5]]
        stored = await stored_columns(database_dsn, table)
        for got, want in zip(stored, expected, strict=True):
            for column in ("protocol_header", "data_header"):
                assert json.loads(got.pop(column)) == json.loads(want.pop(column))
            assert got == want


async def test_json_header_columns_are_read_from_the_catalog(database_dsn: str) -> None:
    first = make_sink(database_dsn)
    await first.start(now=datetime(2026, 11, 26, 12, tzinfo=UTC))
    await first.close(timeout=5)
    conn = await asyncpg.connect(database_dsn)
    try:
        for table in sorted(CAPTURE_TABLES):
            await conn.execute(f"ALTER TABLE {table} ALTER COLUMN data_header TYPE json, "
                               "ALTER COLUMN protocol_header TYPE json")
    finally:
        await conn.close()
    sink = make_sink(database_dsn)
    await sink.start(now=datetime(2026, 11, 26, 12, tzinfo=UTC))
    try:
        assert sink.wire_format == WireFormat(False, False)
        rows = wire_rows(vector_records("hepjs_hep3_udp", RecordIdGenerator()),
                         sink.wire_format)
        # Rows without tuples (built by build_row) are encoded by the sink the same way.
        rows[1] = CaptureRow(rows[1].table, rows[1].values)
        assert await sink.write(rows) == []
    finally:
        await sink.close(timeout=5)
    stored = []
    for table in sorted({r.table for r in rows}):
        stored += await stored_columns(database_dsn, table)
    assert len(stored) == len(rows)
    by_offset = {s["kafka_offset"]: s for s in stored}
    for row in rows:
        got = by_offset[row.value("kafka_offset")]
        # json keeps the text as written, byte for byte.
        assert got["data_header"] == row.value("data_header")
        assert got["protocol_header"] == row.value("protocol_header")
