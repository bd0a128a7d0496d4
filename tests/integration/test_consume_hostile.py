"""Issue 8, items 1 and 3 through the real processes: HEP over UDP -> `hep-ingest
receive` -> Kafka -> `hep-ingest consume` -> PostgreSQL.

* One 3.3 KB datagram with a long Call-ID amid normal traffic is stored whole, with
  everything around it, and the consumer stays up.
* A row PostgreSQL still refuses goes to the dead-letter topic; the rest is stored.
* Records of arbitrary HEP types land in one table and create no database objects.
"""

from __future__ import annotations

import asyncio
import random
import socket
import string
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import asyncpg
import pytest

from pipeline.embedded import EmbeddedKafka, free_tcp_port, free_udp_port, wait_for_tcp
from pipeline.hep.encode import encode_hep3
from pipeline.hep.packet import HepPacket
from pipeline.postgres.migrate import apply_migrations
from pipeline.storage.rows import index_key
from tests.integration.consume_support import (
    sip_packet,
    start_consumer,
    stop_process,
    tail,
    wait_for_rows,
)
from tests.integration.test_consume_e2e import start_receiver

pytestmark = pytest.mark.integration

ALPHABET = string.ascii_letters + string.digits


class Stack:
    def __init__(self, udp_port: int, metrics_port: int, consumer: subprocess.Popen[bytes],
                 log: Path) -> None:
        self.udp_port = udp_port
        self.metrics_port = metrics_port
        self.consumer = consumer
        self.log = log

    def send(self, packets: list[HepPacket]) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for packet in packets:
                udp.sendto(encode_hep3(packet), ("127.0.0.1", self.udp_port))
                time.sleep(0.001)  # no burst for the socket buffer of a loaded machine

    def metric(self, name: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def assert_consumer_up(self) -> None:
        assert self.consumer.poll() is None, tail(self.log)


@contextmanager
def receiver(kafka: EmbeddedKafka, topic: str, tmp_path: Path) -> Iterator[int]:
    udp_port, tcp_port = free_udp_port(), free_tcp_port()
    process = start_receiver(kafka.bootstrap_servers, topic, udp_port, tcp_port,
                             tmp_path / "receiver.log")
    try:
        wait_for_tcp("127.0.0.1", tcp_port, 60)
        yield udp_port
    finally:
        stop_process(process)


@asynccontextmanager
async def stack(kafka: EmbeddedKafka, topic: str, dsn: str, tmp_path: Path) -> AsyncIterator[Stack]:
    metrics_port = free_tcp_port()
    log = tmp_path / "consumer.log"
    with receiver(kafka, topic, tmp_path) as udp_port:
        consumer = start_consumer(kafka.bootstrap_servers, topic, dsn, log,
                                  "--flush-interval", "0.2",
                                  "--metrics", f"127.0.0.1:{metrics_port}")
        try:
            await asyncio.to_thread(wait_for_tcp, "127.0.0.1", metrics_port, 60)
            yield Stack(udp_port, metrics_port, consumer, log)
        finally:
            assert stop_process(consumer) == 0, tail(log)


def normal_calls(prefix: str, n: int) -> list[HepPacket]:
    return [sip_packet(f"{prefix}-{i}@test", i) for i in range(n)]


async def fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def test_one_long_call_id_datagram_stops_nothing(
    kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    rng = random.Random(8)
    call_id = "".join(rng.choices(ALPHABET, k=3_000)) + "@attacker"
    hostile = sip_packet(call_id, 1)
    assert len(encode_hep3(hostile)) > 3_300
    async with stack(kafka, topic_name, database_dsn, tmp_path) as s:
        await asyncio.to_thread(
            s.send, [*normal_calls("before", 40), hostile, *normal_calls("after", 40)])
        total, distinct = await wait_for_rows(database_dsn, 81, 90, s.consumer)
        assert (total, distinct) == (81, 81), tail(s.log)
        await asyncio.to_thread(s.send, normal_calls("later", 20))
        total, _ = await wait_for_rows(database_dsn, 101, 90, s.consumer)
        assert total == 101, tail(s.log)
        s.assert_consumer_up()
        assert s.metric("hep_ingest_dead_letter_total") == 0
    rows = await fetch(database_dsn,
                       "SELECT sid, call_id FROM hep_proto_1_call WHERE call_id = $1", call_id)
    assert [(r["sid"], r["call_id"]) for r in rows] == [(index_key(call_id), call_id)]
    flow = await fetch(database_dsn, "SELECT method FROM sip_call_flow($1)", call_id)
    assert [r["method"] for r in flow] == ["INVITE"]


async def test_a_row_postgresql_refuses_is_dead_lettered_and_the_rest_stored(
    kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    # An operator's own index on a full value makes PostgreSQL refuse a long one
    # (SQLSTATE 54000); the consumer used to exit on it and crash-loop at restart.
    await apply_migrations(database_dsn)
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute("CREATE INDEX operator_ua_idx ON hep_proto_1_call (user_agent)")
    finally:
        await conn.close()
    rng = random.Random(54)
    agent = "".join(rng.choices(ALPHABET, k=3_000))
    refused = sip_packet("refused@test", 1, payload=(
        b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n"
        b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: refused@test\r\n"
        b"CSeq: 1 INVITE\r\nUser-Agent: " + agent.encode() + b"\r\nContent-Length: 0\r\n\r\n"))
    async with stack(kafka, topic_name, database_dsn, tmp_path) as s:
        await asyncio.to_thread(
            s.send, [*normal_calls("before", 30), refused, *normal_calls("after", 30)])
        total, _ = await wait_for_rows(database_dsn, 60, 90, s.consumer)
        for _ in range(150):  # the dead letter is published just after the rows commit
            if s.metric("hep_ingest_dead_letter_total") >= 1:
                break
            await asyncio.sleep(0.2)
        assert s.metric("hep_ingest_dead_letter_total") == 1, tail(s.log)
        assert s.metric("hep_ingest_rows_rejected_total") == 1
        await asyncio.to_thread(s.send, normal_calls("later", 10))
        total, _ = await wait_for_rows(database_dsn, 70, 90, s.consumer)
        assert total == 70, tail(s.log)
        s.assert_consumer_up()
    assert await fetch(database_dsn,
                       "SELECT 1 FROM hep_proto_1_call WHERE call_id = 'refused@test'") == []


UNKNOWN_TYPES = (0, 65, 129, 193, 200, 255)
KNOWN_TYPES = (2, 5, 34, 35, 53, 54, 100, 101)


async def test_any_hep_type_creates_no_table(
    kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    def typed(proto_type: int) -> HepPacket:
        return sip_packet("ignored", 1, proto_type=proto_type, payload=b'{"type": true}',
                          correlation_id=f"corr-{proto_type}")

    async with stack(kafka, topic_name, database_dsn, tmp_path) as s:
        await asyncio.to_thread(s.send, normal_calls("warm", 10))
        total, _ = await wait_for_rows(database_dsn, 10, 90, s.consumer)
        assert total == 10, tail(s.log)
        count_objects = "SELECT count(*) FROM pg_class"
        before = (await fetch(database_dsn, count_objects))[0][0]

        await asyncio.to_thread(s.send, [typed(t) for t in UNKNOWN_TYPES + KNOWN_TYPES])
        expected = 10 + len(UNKNOWN_TYPES) + len(KNOWN_TYPES)
        total, _ = await wait_for_rows(database_dsn, expected, 90, s.consumer)
        assert total == expected, tail(s.log)
        s.assert_consumer_up()
        assert s.metric("hep_ingest_rows_unknown_type_total") == len(UNKNOWN_TYPES)

        assert (await fetch(database_dsn, count_objects))[0][0] == before
    unknown = await fetch(database_dsn, "SELECT hep_type, sid FROM hep_proto_unknown_default "
                                        "ORDER BY hep_type")
    assert [(r["hep_type"], r["sid"]) for r in unknown] == [
        (t, f"corr-{t}") for t in UNKNOWN_TYPES]
    for proto_type in KNOWN_TYPES:
        rows = await fetch(database_dsn,
                           f"SELECT hep_type, sid FROM hep_proto_{proto_type}_default")
        assert [(r["hep_type"], r["sid"]) for r in rows] == [
            (proto_type, f"corr-{proto_type}")]
    created = await fetch(database_dsn,
                          "SELECT relname FROM pg_class WHERE relname ~ '^hep_proto_[0-9]+_' "
                          "AND relname ~ '^hep_proto_(0|65|129|193|200|255)_'")
    assert created == []
