"""Hostile input through the real processes: a hundred thousand mutated HEP packets (bit
flips, truncations, chunk floods, bad lengths, random types, repeated chunks, over-long
values, random bytes, mutated HEPv2) mixed with valid ones, over UDP and TCP,
into `hep-ingest receive` -> tansu -> `hep-ingest consume` -> PostgreSQL.

What must hold: both processes stay up; on every transport the receiver accounts for
every packet (received == decoded + invalid + rejected); everything it published is
stored or dead-lettered; every valid packet is stored exactly once.

UDP has no flow control, and the point here is hostile content, not overload: the
sender waits for the receiver to have counted each block before sending the next, so
the kernel never drops a datagram whatever the speed of the machine. The packet count
is HEP_INGEST_HOSTILE_PACKETS (default 100,000 over UDP, plus a quarter of that over TCP):
enough for every mutation to occur thousands of times (the corpus is seeded, so a run sends
the same packets each time); the per-packet decoding of the same mutations, compiled
against pure, is tests/unit/test_accel.py's. Set it higher for a longer soak.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from pipeline.embedded import EmbeddedKafka, free_tcp_port
from tests.conftest import create_topic, load_vectors
from tests.hostile import IN_FRAME_KINDS, HostileCorpus, HostilePacket, keep_frame
from tests.integration.consume_support import start_consumer, stop_process, tail
from tests.integration.receiver_process import ReceiverProcess, run_receiver_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

UDP_PACKETS = int(os.environ.get("HEP_INGEST_HOSTILE_PACKETS", "100000"))
TCP_PACKETS = UDP_PACKETS // 4
VALID_SHARE = 0.2
BLOCK_BYTES = 256 * 1024
BLOCK_PACKETS = 1000


def wait_for_metric(
    receiver: ReceiverProcess, name: str, labels: dict[str, str], at_least: float, within: float
) -> float:
    deadline = time.monotonic() + within
    value = receiver.metric(name, labels)
    while value < at_least and time.monotonic() < deadline:
        if receiver.process.poll() is not None:
            raise AssertionError(f"receiver exited {receiver.process.returncode}: {receiver.log()}")
        time.sleep(0.02)
        value = receiver.metric(name, labels)
    return value


def accounting(receiver: ReceiverProcess) -> dict[str, float]:
    """Packets read, and the sum of their outcomes (decoded, invalid, rejected)."""
    return {
        "received": receiver.metric("hep_ingest_packets_received_total"),
        "outcomes": receiver.metric("hep_ingest_packets_decoded_total")
        + receiver.metric("hep_ingest_packets_invalid_total")
        + receiver.metric("hep_ingest_packets_rejected_total"),
    }


def send_udp_paced(receiver: ReceiverProcess, packets: list[HostilePacket]) -> None:
    """Send in blocks; each block only once the receiver has read the one before."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        block_bytes = 0
        for index, packet in enumerate(packets):
            sock.sendto(packet.data, ("127.0.0.1", receiver.udp_port))
            sent += 1
            block_bytes += len(packet.data) + 512  # kernel accounting per datagram
            if block_bytes >= BLOCK_BYTES or sent % BLOCK_PACKETS == 0 or index == len(packets) - 1:
                block_bytes = 0
                read = wait_for_metric(
                    receiver, "hep_ingest_packets_received_total", {"transport": "udp"}, sent, 60
                )
                assert read == sent, (
                    f"receiver read {read} of {sent} datagrams: "
                    f"kernel drops? {receiver.log()[-2000:]}"
                )


def tcp_connections(corpus: HostileCorpus, total: int) -> list[tuple[list[HostilePacket], bytes]]:
    """Connections of in-frame packets, some ending in garbage that breaks the framing.

    Every frame before the garbage is whole, so every valid one must be delivered.
    """
    keep_frame(corpus)
    connections = []
    remaining = total
    while remaining > 0:
        count = min(remaining, corpus.rng.randint(200, 2000))
        remaining -= count
        frames = list(corpus.stream(count, VALID_SHARE, IN_FRAME_KINDS))
        tail_bytes = b""
        if corpus.rng.random() < 0.3:
            tail_bytes = corpus.rng.choice(
                [
                    corpus.rng.randbytes(corpus.rng.randint(1, 200)),
                    b"HEP3\xff\xff" + corpus.rng.randbytes(50),  # announces more than sent
                    b"HEP3\x00\x02",  # a length below the header's own size
                ]
            )
        connections.append((frames, tail_bytes))
    return connections


def send_tcp(port: int, connections: list[tuple[list[HostilePacket], bytes]]) -> None:
    for frames, garbage in connections:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"".join(p.data for p in frames) + garbage)
            sock.shutdown(socket.SHUT_WR)
            # The receiver closes after garbage, or when we are done: wait for either.
            sock.settimeout(30)
            try:
                while sock.recv(4096):
                    pass
            except (ConnectionResetError, TimeoutError):
                pass


async def stored_call_ids(dsn: str) -> Counter[str]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = [
            r[0] for r in await conn.fetch("SELECT table_name FROM hep_ingest_capture_tables")
        ]
        found: Counter[str] = Counter()
        for table in tables:
            for row in await conn.fetch(
                f"SELECT call_id FROM {table} WHERE call_id LIKE 'valid-%@hostile'"
            ):
                found[row["call_id"]] += 1
        return found
    finally:
        await conn.close()


async def total_rows(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = [
            r[0] for r in await conn.fetch("SELECT table_name FROM hep_ingest_capture_tables")
        ]
        union = " UNION ALL ".join(f"SELECT record_id FROM {t}" for t in tables)
        row = await conn.fetchrow(f"SELECT count(*), count(DISTINCT record_id) FROM ({union}) r")
        assert row is not None
        return int(row[0]), int(row[1])
    finally:
        await conn.close()


def consumer_metric(port: int, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith(name) and (line[len(name)] in " {")
    )


async def test_hostile_input_over_udp_and_tcp(
    kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    await create_topic(kafka.bootstrap_servers, topic_name, partitions=4)
    hep2_packets, _ = load_vectors("kamailio_hep2_udp")
    ts_sec = int(time.time()) - 60
    udp_corpus = HostileCorpus(seed=8, tag="udp", ts_sec=ts_sec, hep2_packets=hep2_packets)
    tcp_corpus = HostileCorpus(seed=9, tag="tcp", ts_sec=ts_sec, hep2_packets=hep2_packets)
    udp_packets = list(udp_corpus.stream(UDP_PACKETS, VALID_SHARE))
    connections = tcp_connections(tcp_corpus, TCP_PACKETS)
    tcp_frames = [p for frames, _ in connections for p in frames]
    valid = [p.valid_call_id for p in udp_packets + tcp_frames if p.valid_call_id]
    kinds = Counter(p.kind for p in udp_packets + tcp_frames)
    assert len(kinds) >= 12, kinds  # every mutation is exercised

    metrics_port = free_tcp_port()
    consumer_log = tmp_path / "consumer.log"
    consumer = start_consumer(
        kafka.bootstrap_servers,
        topic_name,
        database_dsn,
        consumer_log,
        "--flush-interval",
        "0.2",
        "--metrics",
        f"127.0.0.1:{metrics_port}",
    )
    try:
        with run_receiver_process(tmp_path, kafka.bootstrap_servers, topic_name) as receiver:
            await asyncio.to_thread(send_udp_paced, receiver, udp_packets)
            # Only UDP so far: the decode counters, which carry no transport label, are
            # UDP's own here; TCP's are the growth from this point.
            after_udp = accounting(receiver)
            assert after_udp["received"] == len(udp_packets)
            assert after_udp["received"] == after_udp["outcomes"], after_udp

            await asyncio.to_thread(send_tcp, receiver.tcp_port, connections)
            # Every byte on TCP is a frame or a counted framing error: wait until the
            # receiver has counted all the frames sent.
            tcp_received = await asyncio.to_thread(
                wait_for_metric,
                receiver,
                "hep_ingest_packets_received_total",
                {"transport": "tcp"},
                len(tcp_frames),
                120,
            )
            garbage_tails = sum(1 for _, garbage in connections if garbage)
            assert len(tcp_frames) <= tcp_received <= len(tcp_frames) + garbage_tails
            after_tcp = accounting(receiver)
            assert after_tcp["received"] - after_udp["received"] == tcp_received
            assert after_tcp["received"] == after_tcp["outcomes"], after_tcp

            decoded = receiver.metric("hep_ingest_packets_decoded_total")
            rejected = receiver.metric("hep_ingest_packets_rejected_total")
            assert rejected == 0  # no auth key is set: nothing is refused
            accepted = decoded
            published = await asyncio.to_thread(
                wait_for_metric, receiver, "hep_ingest_packets_published_total", {}, accepted, 120
            )
            assert published == accepted
            assert receiver.metric("hep_ingest_packets_dropped_total") == 0
            assert receiver.process.poll() is None, receiver.log()

        # Storage: everything published is stored or dead-lettered, once.
        deadline = time.monotonic() + 300
        rows = dead = 0.0
        while time.monotonic() < deadline:
            assert consumer.poll() is None, tail(consumer_log)
            rows = (await total_rows(database_dsn))[0]
            dead = consumer_metric(metrics_port, "hep_ingest_dead_letter_total")
            if rows + dead >= published:
                break
            await asyncio.sleep(1)
        total, distinct = await total_rows(database_dsn)
        assert total == distinct, "a record was stored twice"
        assert total + dead == published, (total, dead, published, tail(consumer_log))

        found = await stored_call_ids(database_dsn)
        assert sum(found.values()) == len(valid)
        assert set(found) == set(valid)
        assert max(found.values()) == 1
        assert consumer.poll() is None, tail(consumer_log)
    finally:
        assert stop_process(consumer, timeout=60) == 0, tail(consumer_log)
