"""End to end: HEP on the wire -> `hep-ingest receive` -> Kafka -> `hep-ingest consume`
-> PostgreSQL. Every packet of the four real captures lands in its table, once."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pipeline.embedded import EmbeddedKafka, free_tcp_port, free_udp_port, wait_for_tcp
from pipeline.storage.rows import table_for
from tests.conftest import VECTOR_SETS, load_vectors
from tests.implementations import clean_env
from tests.integration.consume_support import (
    cli,
    start_consumer,
    stop_process,
    tail,
    wait_for_rows,
)

pytestmark = pytest.mark.integration

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def start_receiver(
    bootstrap_servers: str, topic: str, udp_port: int, tcp_port: int, log_path: Path
) -> subprocess.Popen[bytes]:
    env = clean_env()
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [
                *cli(),
                "receive",
                "--bootstrap-servers",
                bootstrap_servers,
                "--topic",
                topic,
                "--udp",
                f"127.0.0.1:{udp_port}",
                "--tcp",
                f"127.0.0.1:{tcp_port}",
                "--partitions",
                "4",
                "--linger-ms",
                "2",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
        )


def expected_rows() -> list[tuple[Any, ...]]:
    rows = []
    for name in VECTOR_SETS:
        _, expected = load_vectors(name)
        for p in expected["packets"]:
            sip = p.get("sip") or {}
            cseq_method = sip["cseq"].split()[-1] if sip.get("cseq") else None
            proto = p["proto_type"]
            table = table_for(proto, cseq_method if sip else None)
            sid = sip.get("call_id") or p.get("correlation_id") or ""
            created = EPOCH + timedelta(seconds=p["ts_sec"], microseconds=p["ts_usec"])
            rows.append(
                (
                    table,
                    sid,
                    sip.get("call_id"),
                    sip.get("method"),
                    sip.get("status"),
                    p["src_ip"],
                    p["src_port"],
                    p["dst_ip"],
                    p["dst_port"],
                    created,
                )
            )
    return rows


async def stored_rows(dsn: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = [
            r[0] for r in await conn.fetch("SELECT table_name FROM hep_ingest_capture_tables")
        ]
        rows = []
        for table in tables:
            for r in await conn.fetch(
                f"SELECT sid, call_id, method, status, host(src_ip) AS src_ip, src_port, "
                f"host(dst_ip) AS dst_ip, dst_port, create_date FROM {table}"
            ):
                rows.append(
                    (
                        table,
                        r["sid"],
                        r["call_id"],
                        r["method"],
                        r["status"],
                        r["src_ip"],
                        r["src_port"],
                        r["dst_ip"],
                        r["dst_port"],
                        r["create_date"],
                    )
                )
        return rows
    finally:
        await conn.close()


def send_vectors(udp_port: int, tcp_port: int) -> int:
    sent = 0
    for name in VECTOR_SETS:
        packets, expected = load_vectors(name)
        if expected["packets"][0]["transport"] == "tcp":
            with socket.create_connection(("127.0.0.1", tcp_port)) as stream:
                stream.sendall(b"".join(packets))
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                for packet in packets:
                    udp.sendto(packet, ("127.0.0.1", udp_port))
        sent += len(packets)
    return sent


async def test_vectors_land_in_their_tables(
    kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    udp_port, tcp_port = free_udp_port(), free_tcp_port()
    receiver = start_receiver(
        kafka.bootstrap_servers, topic_name, udp_port, tcp_port, tmp_path / "receiver.log"
    )
    consumer = None
    try:
        await asyncio.to_thread(wait_for_tcp, "127.0.0.1", tcp_port, 30)
        consumer = start_consumer(
            kafka.bootstrap_servers,
            topic_name,
            database_dsn,
            tmp_path / "consumer.log",
            "--flush-interval",
            "0.2",
        )
        sent = await asyncio.to_thread(send_vectors, udp_port, tcp_port)
        expected = expected_rows()
        assert sent == len(expected) == 170 + 51 + 34 + 12
        total, distinct = await wait_for_rows(database_dsn, len(expected), 45, consumer)
        assert (total, distinct) == (len(expected), len(expected)), tail(tmp_path / "consumer.log")

        stored = await stored_rows(database_dsn)
        assert Counter(stored) == Counter(expected)

        conn = await asyncpg.connect(database_dsn)
        try:
            log_row = await conn.fetchrow(
                "SELECT sid, correlation_id, hep_type, raw FROM hep_proto_100_default"
            )
        finally:
            await conn.close()
        assert log_row is not None
        assert log_row["sid"] == log_row["correlation_id"] == "hepjs-invite-0001@127.0.0.1"
        assert log_row["hep_type"] == 100
        assert "ended normally" in log_row["raw"]
    finally:
        if consumer is not None:
            assert stop_process(consumer) == 0, tail(tmp_path / "consumer.log")
        stop_process(receiver)
