"""Duplicate captures through the real pipeline: the Kamailio capture fed by two agents
(the second with its own capture id, a millisecond later) to `hep-ingest receive`, stored
by `hep-ingest consume` once with --dedup-window-ms, twice without, and with --dedup-keep
the copies in hep_capture_duplicates."""

from __future__ import annotations

import asyncio
import dataclasses
import urllib.request
from pathlib import Path

import asyncpg
import pytest

from pipeline.embedded import EmbeddedKafka, free_tcp_port
from pipeline.hep.decode import decode_packet
from pipeline.hep.encode import encode_hep3
from tests.conftest import create_topic, load_vectors
from tests.integration.consume_support import start_consumer, stop_process, tail
from tests.integration.receiver_process import run_receiver_process, send_udp

pytestmark = pytest.mark.integration

SECOND_AGENT = 4242


def two_agent_feed() -> tuple[list[bytes], int]:
    """Every packet of the capture as the first agent sent it, then as a second agent on
    the same host saw it: same SIP, its own capture id, 1 ms later."""
    packets, _ = load_vectors("kamailio_hep3_udp")
    feed = []
    for data in packets:
        first = decode_packet(data)
        usec = first.ts_usec + 1000
        second = dataclasses.replace(
            first, capture_id=SECOND_AGENT, ts_sec=first.ts_sec + usec // 1_000_000,
            ts_usec=usec % 1_000_000,
        )
        feed += [data, encode_hep3(second)]
    return feed, len(packets)


async def stored(dsn: str) -> tuple[int, int, int]:
    """(rows in the capture tables, distinct payloads there, rows in the duplicates table)."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = [r["table_name"] for r in await conn.fetch(
            "SELECT table_name FROM hep_ingest_capture_tables "
            "WHERE table_name <> 'hep_capture_duplicates'")]
        union = " UNION ALL ".join(f"SELECT raw FROM {t}" for t in tables)
        row = await conn.fetchrow(
            f"SELECT count(*) AS n, count(DISTINCT raw) AS d FROM ({union}) r")
        kept = await conn.fetchval("SELECT count(*) FROM hep_capture_duplicates")
        assert row is not None
        return int(row["n"]), int(row["d"]), int(kept)
    except asyncpg.UndefinedTableError:
        return 0, 0, 0
    finally:
        await conn.close()


def metric(port: int, name: str, label: str = "") -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rpartition(" ")[2]) for line in text.splitlines()
        if line.startswith(name) and label in line
    )


@pytest.mark.parametrize(
    ("options", "expected_rows", "expected_kept"),
    [
        pytest.param(["--dedup-window-ms", "500"], 1, 0, id="dedup"),
        pytest.param([], 2, 0, id="off"),
        pytest.param(["--dedup-window-ms", "500", "--dedup-keep"], 1, 1, id="keep"),
    ],
)
async def test_a_message_captured_by_two_agents_is_stored_once_with_dedup_on(
    kafka: EmbeddedKafka,
    database_dsn: str,
    topic_name: str,
    tmp_path: Path,
    options: list[str],
    expected_rows: int,
    expected_kept: int,
) -> None:
    await create_topic(kafka.bootstrap_servers, topic_name)
    feed, messages = two_agent_feed()
    metrics_port = free_tcp_port()
    consumer_log = tmp_path / "consumer.log"
    consumer = start_consumer(
        kafka.bootstrap_servers, topic_name, database_dsn, consumer_log,
        "--flush-interval", "0.2", "--metrics", f"127.0.0.1:{metrics_port}", *options,
    )
    try:
        with run_receiver_process(tmp_path, kafka.bootstrap_servers, topic_name) as receiver:
            send_udp(receiver.udp_port, feed)
            counts = (0, 0, 0)
            want = messages * expected_rows
            for _ in range(300):
                counts = await stored(database_dsn)
                if counts[0] >= want and counts[2] >= messages * expected_kept:
                    break
                assert consumer.poll() is None, tail(consumer_log)
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # a row stored twice would show up now
            counts = await stored(database_dsn)
            assert counts == (want, messages, messages * expected_kept), tail(consumer_log)
            duplicates = metric(metrics_port, "hep_ingest_duplicates_total")
            assert duplicates == (messages if options else 0)
            if expected_kept:
                kept = metric(metrics_port, "hep_ingest_duplicates_total", 'action="kept"')
                assert kept == messages
    finally:
        assert stop_process(consumer) == 0, tail(consumer_log)
