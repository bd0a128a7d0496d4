"""Offsets stored in PostgreSQL with the rows: a fenced worker's late commit, a replay,
and the upgrade from Kafka's committed offsets. Real broker, real PostgreSQL, the
`hep-ingest consume` process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.embedded import EmbeddedKafka, free_tcp_port
from tests.conftest import create_topic
from tests.integration.consume_support import (
    generated_sip,
    log_events,
    metric,
    publish,
    row_counts,
    start_consumer,
    stop_process,
    tail,
    wait_for_metric,
    wait_for_rows,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FAST = ("--batch-size", "50", "--flush-interval", "0.2")


async def stored_offsets(dsn: str, group: str) -> dict[int, int]:
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError):
        return {}
    try:
        rows = await conn.fetch(
            "SELECT partition, next_offset FROM hep_ingest_consumer_offsets "
            "WHERE consumer_group = $1", group,
        )
    except asyncpg.UndefinedTableError:
        return {}
    finally:
        await conn.close()
    return {r["partition"]: r["next_offset"] for r in rows}


async def wait_for_offsets(
    dsn: str, group: str, expected: dict[int, int], within: float, log: Path
) -> None:
    deadline = time.monotonic() + within
    found: dict[int, int] = {}
    while time.monotonic() < deadline:
        found = await stored_offsets(dsn, group)
        if found == expected:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"stored offsets {found}, expected {expected}\n{tail(log)}")


async def stored_kafka_offsets(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT kafka_offset FROM hep_proto_1_call ORDER BY kafka_offset"
        )
    finally:
        await conn.close()
    return [r["kafka_offset"] for r in rows]


async def commit_kafka_offsets(
    bootstrap_servers: str, group: str, topic: str, offsets: dict[int, int]
) -> None:
    """Kafka's committed offsets of `group`, as `kafka-consumer-groups --reset-offsets`
    would leave them: committed by a member of the group (none other runs meanwhile)."""
    # The shortest session timeout: tansu holds a joining member for a time that grows
    # with it (aiokafka's 10 s: 5 s), and the next member of the group, the consumer
    # process, for longer still while this one's session lasts (1 s: no wait; 10 s:
    # about 18 s). This member only joins, commits and leaves.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=group, enable_auto_commit=False,
        session_timeout_ms=1000, heartbeat_interval_ms=300,
    )
    await consumer.start()
    try:
        consumer.subscribe([topic])
        wanted = {TopicPartition(topic, p) for p in offsets}
        deadline = time.monotonic() + 60
        while consumer.assignment() != wanted:
            assert time.monotonic() < deadline, consumer.assignment()
            await consumer.getmany(timeout_ms=200)
        await consumer.commit({TopicPartition(topic, p): o for p, o in offsets.items()})
        for p, o in offsets.items():
            assert await consumer.committed(TopicPartition(topic, p)) == o
    finally:
        await consumer.stop()


async def test_a_fenced_workers_late_commit_changes_nothing(
    kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    """Another worker stores the partition up to 137 while this one holds 100: every
    batch this one read from 100 is fenced, and it continues from 137. (Not 150: with
    batches of 50 this worker's first claim would then be 100 -> 150, the very range
    stored, which counts as stored rather than fenced.)"""
    await create_topic(kafka.bootstrap_servers, topic_name, partitions=1)
    group = f"g-{topic_name}"
    log = tmp_path / "consume.log"
    await publish(kafka.bootstrap_servers, topic_name, generated_sip(100, prefix="a"))
    process = start_consumer(kafka.bootstrap_servers, topic_name, database_dsn, log, *FAST)
    try:
        assert await wait_for_rows(database_dsn, 100, 60, process) == (100, 100), tail(log)
        await wait_for_offsets(database_dsn, group, {0: 100}, 30, log)

        conn = await asyncpg.connect(database_dsn)
        try:
            await conn.execute(
                "UPDATE hep_ingest_consumer_offsets SET next_offset = 137 "
                "WHERE consumer_group = $1 AND partition = 0", group,
            )
        finally:
            await conn.close()
        await publish(kafka.bootstrap_servers, topic_name, generated_sip(200, prefix="b"))
        await wait_for_offsets(database_dsn, group, {0: 300}, 60, log)
        await asyncio.sleep(0.5)  # a stray late write would show up now

        assert await row_counts(database_dsn) == (263, 263)
        offsets = await stored_kafka_offsets(database_dsn)
        assert offsets == [*range(100), *range(137, 300)]
        events = log_events(log)
        fenced = [e for e in events if e.get("event") == "offsets_fenced"]
        assert fenced and all(e["claimed_from"] == 100 and e["stored"] == 137 for e in fenced)
        assert any(e.get("event") == "seek_to_stored_offset" and e["offset"] == 137
                   for e in events), tail(log)
    finally:
        assert stop_process(process) == 0, tail(log)


async def test_a_replay_of_stored_offsets_writes_nothing(
    kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    """Kafka's committed offsets reset to 0 after everything was stored: the consumer
    seeks to the offsets stored in PostgreSQL and reads nothing again."""
    await create_topic(kafka.bootstrap_servers, topic_name, partitions=2)
    group = f"g-{topic_name}"
    log = tmp_path / "consume.log"
    await publish(kafka.bootstrap_servers, topic_name, generated_sip(400, prefix="r"))
    first = start_consumer(kafka.bootstrap_servers, topic_name, database_dsn, log, *FAST)
    try:
        assert await wait_for_rows(database_dsn, 400, 60, first) == (400, 400), tail(log)
    finally:
        assert stop_process(first) == 0, tail(log)
    stored = await stored_offsets(database_dsn, group)
    assert sum(stored.values()) == 400

    await commit_kafka_offsets(kafka.bootstrap_servers, group, topic_name, {0: 0, 1: 0})
    replay_log = tmp_path / "replay.log"
    port = free_tcp_port()
    second = start_consumer(
        kafka.bootstrap_servers, topic_name, database_dsn, replay_log, *FAST,
        "--metrics", f"127.0.0.1:{port}",
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            events = log_events(replay_log)
            if any(e.get("event") == "partitions_assigned" and e["partitions"]
                   for e in events):
                break
            assert second.poll() is None, tail(replay_log)
            await asyncio.sleep(0.2)
        assigned = [e for e in log_events(replay_log) if e.get("event") == "partitions_assigned"]
        assert assigned and assigned[-1]["stored_offsets"] == {
            str(p): o for p, o in stored.items()
        }, tail(replay_log)
        await asyncio.sleep(2)  # time enough to fetch the partitions from 0 again
        assert metric(port, "hep_ingest_records_consumed_total") == 0, tail(replay_log)
        # New records after the replayed ones are stored, once.
        await publish(kafka.bootstrap_servers, topic_name, generated_sip(20, prefix="n"))
        assert await wait_for_rows(database_dsn, 420, 60, second) == (420, 420)
        assert metric(port, "hep_ingest_records_consumed_total") == 20
        written = "hep_ingest_rows_written_total"
        assert await asyncio.to_thread(wait_for_metric, port, written, 20) == 20
        assert metric(port, "hep_ingest_rows_duplicate_total") == 0
    finally:
        assert stop_process(second) == 0, tail(replay_log)
    assert not [e for e in log_events(replay_log) if e.get("event") == "write_via_staging"]
    assert sum((await stored_offsets(database_dsn, group)).values()) == 420


async def test_an_upgrade_starts_at_kafkas_committed_offsets(
    kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    """No offsets stored yet (a deployment from before migration 0004): the consumer
    starts where Kafka's committed offsets say, replaying and skipping nothing."""
    await create_topic(kafka.bootstrap_servers, topic_name, partitions=1)
    group = f"g-{topic_name}"
    log = tmp_path / "consume.log"
    await publish(kafka.bootstrap_servers, topic_name, generated_sip(300, prefix="u"))
    await commit_kafka_offsets(kafka.bootstrap_servers, group, topic_name, {0: 120})
    process = start_consumer(kafka.bootstrap_servers, topic_name, database_dsn, log, *FAST)
    try:
        await wait_for_offsets(database_dsn, group, {0: 300}, 60, log)
        assert await row_counts(database_dsn) == (180, 180)
        assert await stored_kafka_offsets(database_dsn) == list(range(120, 300))
    finally:
        assert stop_process(process) == 0, tail(log)
