"""The consumer under faults: killed, database connections cut, database restarted,
two workers in a group, poison records, clock skew. Real broker, real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.embedded import EmbeddedKafka, EmbeddedPostgres
from tests.conftest import create_topic
from tests.integration.consume_support import (
    encode_packets,
    generated_sip,
    log_events,
    publish,
    row_counts,
    sip_packet,
    start_consumer,
    stop_process,
    tail,
    wait_for_rows,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

N = 20_000
FAST = ("--batch-size", "1000", "--flush-interval", "0.2")


async def wait_until_rows_at_least(dsn: str, n: int, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        total, _ = await row_counts(dsn)
        if total >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {n} rows after {within}s")


async def test_sigkill_and_restart_stores_each_packet_once(
    kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    await create_topic(kafka.bootstrap_servers, topic_name, partitions=4)
    await publish(kafka.bootstrap_servers, topic_name, generated_sip(N))
    log = tmp_path / "consumer.log"
    first = start_consumer(kafka.bootstrap_servers, topic_name, database_dsn, log, *FAST)
    await wait_until_rows_at_least(database_dsn, 3000)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at, _ = await row_counts(database_dsn)
    assert killed_at < N, "the kill came too late to test anything"
    second = start_consumer(kafka.bootstrap_servers, topic_name, database_dsn, log, *FAST)
    try:
        assert await wait_for_rows(database_dsn, N, 90, second) == (N, N), tail(log)
    finally:
        assert stop_process(second) == 0, tail(log)


async def test_connections_terminated_mid_stream(
    kafka: EmbeddedKafka,
    database_dsn: str,
    postgres: EmbeddedPostgres,
    topic_name: str,
    tmp_path: Path,
) -> None:
    await create_topic(kafka.bootstrap_servers, topic_name, partitions=4)
    await publish(kafka.bootstrap_servers, topic_name, generated_sip(N))
    log = tmp_path / "consumer.log"
    process = start_consumer(kafka.bootstrap_servers, topic_name, database_dsn, log, *FAST)
    try:
        database = database_dsn.rsplit("/", 1)[1]
        admin = await asyncpg.connect(postgres.dsn)
        try:
            for threshold in (3000, 9000):
                await wait_until_rows_at_least(database_dsn, threshold)
                terminated = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    database,
                )
                assert terminated >= 1
        finally:
            await admin.close()
        assert await wait_for_rows(database_dsn, N, 60, process) == (N, N), tail(log)
        assert process.poll() is None
    finally:
        assert stop_process(process) == 0, tail(log)


async def test_postgres_restart_mid_stream(
    kafka: EmbeddedKafka, fresh_postgres: EmbeddedPostgres, topic_name: str, tmp_path: Path
) -> None:
    await create_topic(kafka.bootstrap_servers, topic_name, partitions=4)
    await publish(kafka.bootstrap_servers, topic_name, generated_sip(N))
    dsn = fresh_postgres.dsn
    log = tmp_path / "consumer.log"
    process = start_consumer(kafka.bootstrap_servers, topic_name, dsn, log, *FAST)
    try:
        await wait_until_rows_at_least(dsn, 3000)
        await asyncio.to_thread(fresh_postgres.restart)
        assert await wait_for_rows(dsn, N, 60, process) == (N, N), tail(log)
        assert process.poll() is None
    finally:
        assert stop_process(process) == 0, tail(log)


async def test_postgres_crash_with_asynchronous_commit_stores_each_packet_once(
    kafka: EmbeddedKafka, fresh_postgres: EmbeddedPostgres, topic_name: str, tmp_path: Path
) -> None:
    """`--dsn ...?synchronous_commit=off` (docs/benchmarks.md, "PostgreSQL CPU per row"):
    a crash may lose the last commits, rows and offsets together; the consumer's next
    claim, or its periodic check of a partition that gets no new record, then finds the
    stored offsets behind what it wrote, seeks back to them and stores those records
    again: each once either way. (Before the check, a partition whose records had all
    been read stayed short by its lost rows until a restart: CI saw 17,000 of 20,000.)

    Whether a commit is lost is up to the server: a process crash keeps what reached the
    kernel, and a backend that evicts a dirty page of COPY's ring flushes all WAL
    inserted so far. The walwriter's 10 s delay makes a loss likely, not certain, so
    the loss is reported, not required; the fenced-and-sought-back path itself is
    tests/unit/test_consumer_offsets.py's."""
    dsn = fresh_postgres.dsn
    admin = await asyncpg.connect(dsn)
    try:
        # Commits wait in the WAL buffers for 10 s, not 0.2: the crash surely loses some.
        await admin.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
    finally:
        await admin.close()
    await asyncio.to_thread(fresh_postgres.restart)
    await create_topic(kafka.bootstrap_servers, topic_name, partitions=4)
    await publish(kafka.bootstrap_servers, topic_name, generated_sip(N))
    log = tmp_path / "consumer.log"
    process = start_consumer(kafka.bootstrap_servers, topic_name,
                             f"{dsn}?synchronous_commit=off", log, *FAST)
    try:
        await wait_until_rows_at_least(dsn, 3000)
        await asyncio.to_thread(fresh_postgres.stop, "immediate")  # a crash: no WAL flush
        await asyncio.to_thread(fresh_postgres.start)
        assert await wait_for_rows(dsn, N, 90, process) == (N, N), tail(log)
        assert process.poll() is None
        rewound = [e for e in log_events(log) if e.get("event") == "stored_offsets_behind"
                   or (e.get("event") == "offsets_fenced" and e["stored"] < e["claimed_from"])]
        print(f"commits lost in the crash, then stored again: {len(rewound)} claim(s)")
    finally:
        assert stop_process(process) == 0, tail(log)


async def test_two_consumers_share_the_partitions(
    kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    await create_topic(kafka.bootstrap_servers, topic_name, partitions=4)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    group = f"g-{uuid.uuid4().hex[:8]}"
    processes = [
        start_consumer(kafka.bootstrap_servers, topic_name, database_dsn, path, *FAST, group=group)
        for path in logs
    ]
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            owned = [
                any(
                    e.get("event") == "partitions_assigned" and e.get("partitions")
                    for e in log_events(path)
                )
                for path in logs
            ]
            if all(owned):
                break
            await asyncio.sleep(0.2)
        assert all(owned), tail(logs[0]) + "\n----\n" + tail(logs[1])
        await publish(kafka.bootstrap_servers, topic_name, generated_sip(N))
        total = await wait_for_rows(database_dsn, N, 60)
        assert total == (N, N), tail(logs[0]) + "\n----\n" + tail(logs[1])
        assert all(p.poll() is None for p in processes)
    finally:
        codes = [stop_process(p) for p in processes]
    assert codes == [0, 0]


async def test_undecodable_value_goes_to_dead_letter_topic(
    kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    await create_topic(kafka.bootstrap_servers, topic_name, partitions=1)
    good = generated_sip(200, prefix="dlq")
    poison = b"\x00\x01" + os.urandom(64)
    items = [*good[:100], (b"poison-key", poison), *good[100:]]
    await publish(kafka.bootstrap_servers, topic_name, items)
    group = f"g-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "consumer.log"
    process = start_consumer(
        kafka.bootstrap_servers,
        topic_name,
        database_dsn,
        log,
        "--flush-interval",
        "0.2",
        group=group,
    )
    try:
        assert await wait_for_rows(database_dsn, 200, 30, process) == (200, 200), tail(log)
    finally:
        assert stop_process(process) == 0, tail(log)

    reader = AIOKafkaConsumer(
        f"{topic_name}.dlq",
        bootstrap_servers=kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await reader.start()
    try:
        batch = await reader.getmany(timeout_ms=10_000)
    finally:
        await reader.stop()
    letters = [m for messages in batch.values() for m in messages]
    assert len(letters) == 1
    letter = letters[0]
    assert letter.value == poison and letter.key == b"poison-key"
    headers = dict(letter.headers)
    assert headers["hep_ingest_reason"] == b"bad_magic"
    assert headers["hep_ingest_source"] == f"{topic_name}/0/100".encode()
    assert "hep_ingest_detail" in headers

    committed = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await committed.start()
    try:
        assert await committed.committed(TopicPartition(topic_name, 0)) == 201
    finally:
        await committed.stop()


async def test_skewed_clocks_and_nul_payload(
    kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    await create_topic(kafka.bootstrap_servers, topic_name, partitions=1)
    now = time.time()
    past, future = now - 3 * 86_400, now + 86_400
    nul_payload = b"binary\x00payload\xff\xfe with NUL\x00"
    packets = [
        sip_packet("past@test", 1, ts=past),
        sip_packet("future@test", 2, ts=future),
        sip_packet("nul@test", 3, ts=now, proto_type=5, payload=nul_payload),
    ]
    await publish(kafka.bootstrap_servers, topic_name, encode_packets(packets))
    log = tmp_path / "consumer.log"
    process = start_consumer(
        kafka.bootstrap_servers, topic_name, database_dsn, log, "--flush-interval", "0.2"
    )
    try:
        assert await wait_for_rows(database_dsn, 3, 30, process) == (3, 3), tail(log)
    finally:
        assert stop_process(process) == 0, tail(log)
    conn = await asyncpg.connect(database_dsn)
    try:
        dates = dict(await conn.fetch("SELECT call_id, create_date FROM hep_proto_1_call"))
        payload = await conn.fetchval("SELECT hep_payload(raw, raw_bytes) FROM hep_proto_5_default")
    finally:
        await conn.close()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for call_id, ts in (("past@test", past), ("future@test", future)):
        want = epoch + timedelta(seconds=int(ts), microseconds=int((ts % 1) * 1_000_000))
        assert dates[call_id] == want
    assert payload == nul_payload


async def test_broker_paused_mid_stream(
    fresh_kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    await create_topic(fresh_kafka.bootstrap_servers, topic_name, partitions=4)
    await publish(fresh_kafka.bootstrap_servers, topic_name, generated_sip(N))
    log = tmp_path / "consumer.log"
    process = start_consumer(
        fresh_kafka.bootstrap_servers, topic_name, database_dsn, log, *FAST,
        "--session-timeout", "10",  # the product's default, longer than the pause
    )  # fmt: skip
    try:
        await wait_until_rows_at_least(database_dsn, 3000)
        fresh_kafka.pause()
        try:
            await asyncio.sleep(6)
        finally:
            fresh_kafka.resume()
        assert await wait_for_rows(database_dsn, N, 60, process) == (N, N), tail(log)
        assert process.poll() is None
    finally:
        assert stop_process(process) == 0, tail(log)


async def test_an_idle_partitions_lost_commits_are_stored_again(
    kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    """What a crash with synchronous_commit=off (or a restore) can leave, made by hand so
    that it happens every time: the last rows of a partition and their offsets gone
    together, after the consumer read everything. No new record comes, so no claim is
    fenced; the consumer's periodic check finds the stored offset behind and stores
    those records again, once."""
    await create_topic(kafka.bootstrap_servers, topic_name, partitions=4)
    await publish(kafka.bootstrap_servers, topic_name, generated_sip(2000, prefix="idle"))
    log = tmp_path / "consumer.log"
    process = start_consumer(kafka.bootstrap_servers, topic_name, database_dsn, log, *FAST)
    try:
        assert await wait_for_rows(database_dsn, 2000, 60, process) == (2000, 2000), tail(log)
        conn = await asyncpg.connect(database_dsn)
        try:
            partition, next_offset = await conn.fetchrow(
                "SELECT partition, next_offset FROM hep_ingest_consumer_offsets "
                "WHERE topic = $1 ORDER BY next_offset DESC LIMIT 1", topic_name,
            )
            cut = next_offset // 2
            tables = [r["table_name"] for r in
                      await conn.fetch("SELECT table_name FROM hep_ingest_capture_tables")]
            async with conn.transaction():
                lost = 0
                for table in tables:
                    status = await conn.execute(
                        f"DELETE FROM {table} WHERE kafka_partition = $1 AND kafka_offset >= $2",
                        partition, cut,
                    )
                    lost += int(status.split()[-1])
                await conn.execute(
                    "UPDATE hep_ingest_consumer_offsets SET next_offset = $1 "
                    "WHERE topic = $2 AND partition = $3", cut, topic_name, partition,
                )
        finally:
            await conn.close()
        assert lost == next_offset - cut > 0
        assert await wait_for_rows(database_dsn, 2000, 30, process) == (2000, 2000), tail(log)
        behind = [e for e in log_events(log) if e.get("event") == "stored_offsets_behind"]
        assert [(e["partition"], e["believed_stored"], e["stored"]) for e in behind] == [
            (partition, next_offset, cut)
        ], tail(log)
    finally:
        assert stop_process(process) == 0, tail(log)
