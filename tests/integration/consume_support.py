"""Helpers for the consumer's integration tests: records, processes, row counts.

Everything here talks to real servers: records are published to the tansu broker,
`hep-ingest consume` runs as a process, rows are read back from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from pipeline.hep.packet import HepPacket
from pipeline.records import ReceiveContext, RecordIdGenerator, load_codec, packet_to_record
from tests.implementations import clean_env

CONTEXT = ReceiveContext(transport="udp", sender_ip="127.0.0.1", sender_port=9999, receiver_id="t")
CAPTURE_TABLES = (
    "hep_proto_1_call",
    "hep_proto_1_registration",
    "hep_proto_1_default",
    "hep_proto_5_default",
    "hep_proto_100_default",
)


def cli() -> list[str]:
    script = Path(sys.executable).parent / "hep-ingest"
    return [str(script)] if script.exists() else [shutil.which("hep-ingest") or "hep-ingest"]


def sip_invite(call_id: str, seq: int, payload_extra: bytes = b"") -> bytes:
    return (
        f"INVITE sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{seq}\r\n"
        f"From: <sip:alice@example.com>;tag=a{seq}\r\n"
        f"To: <sip:bob@example.com>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {seq} INVITE\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode() + payload_extra


def sip_packet(call_id: str, seq: int, ts: float | None = None, **overrides: Any) -> HepPacket:
    when = time.time() if ts is None else ts
    fields: dict[str, Any] = {
        "version": 3,
        "ip_family": 2,
        "ip_proto": 17,
        "src_ip": "10.0.0.1",
        "dst_ip": "10.0.0.2",
        "src_port": 5060,
        "dst_port": 5062,
        "ts_sec": int(when),
        "ts_usec": int((when % 1) * 1_000_000),
        "proto_type": 1,
        "capture_id": 2001,
        "payload": sip_invite(call_id, seq),
    }
    fields.update(overrides)
    return HepPacket(**fields)


def encode_packets(packets: Iterable[HepPacket]) -> list[tuple[bytes | None, bytes]]:
    """(key, value) pairs exactly as the receiver publishes them."""
    from pipeline.records import record_key

    codec = load_codec()
    ids = RecordIdGenerator()
    now_us = int(time.time() * 1_000_000)
    out = []
    for packet in packets:
        record = packet_to_record(
            packet, record_id=ids.next(), receive_time_us=now_us, context=CONTEXT
        )
        out.append((record_key(packet), codec.encode(record)))
    return out


def generated_sip(
    n: int, calls: int = 500, prefix: str = "gen"
) -> list[tuple[bytes | None, bytes]]:
    return encode_packets(sip_packet(f"{prefix}-{i % calls}@test", i) for i in range(n))


async def publish(
    bootstrap_servers: str, topic: str, items: Sequence[tuple[bytes | None, bytes]]
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


#: The consumers' group session timeout in tests, in seconds (the product's default: 10).
#: tansu holds a joining member for a time that grows with it, and the next member of a
#: group for longer while the session of one that left lasts (measured with aiokafka
#: clients: 2 s -> 1.1 s and 4.2 s; 3 s -> 2.1 s and 7.2 s; 10 s -> 5.1 s and 18 s).
#: Heartbeats go every 0.67 s: only an event loop stalled for 2 s loses its membership.
TEST_SESSION_TIMEOUT = 2.0


def start_consumer(
    bootstrap_servers: str,
    topic: str,
    dsn: str | None,
    log_path: Path,
    *extra: str,
    group: str | None = None,
    sink: str = "postgres",
    stdout: int | None = None,
) -> subprocess.Popen[bytes]:
    args = [
        *cli(),
        "consume",
        "--bootstrap-servers",
        bootstrap_servers,
        "--topic",
        topic,
        "--group",
        group or f"g-{topic}",
        "--sink",
        sink,
        "--log-level",
        "info",
        "--log-format",
        "json",
        # tansu holds a joining member for about 1 s instead of 5 s per start (see
        # TEST_SESSION_TIMEOUT). Tests that freeze the consumer or the broker pass their own.
        "--session-timeout",
        str(TEST_SESSION_TIMEOUT),
        *extra,
    ]
    if dsn is not None:
        args += ["--dsn", dsn]
    env = clean_env()
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args,
            stdout=stdout if stdout is not None else log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
        )


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


async def row_counts(dsn: str) -> tuple[int, int]:
    """(total rows, distinct record_ids) over every capture table; (0, 0) if none yet."""
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return -1, -1
    try:
        tables = [
            r["table_name"]
            for r in await conn.fetch("SELECT table_name FROM hep_ingest_capture_tables")
        ]
        if not tables:
            return 0, 0
        union = " UNION ALL ".join(f"SELECT record_id FROM {t}" for t in tables)
        row = await conn.fetchrow(
            f"SELECT count(*) AS n, count(DISTINCT record_id) AS d FROM ({union}) AS r"
        )
        assert row is not None
        return int(row["n"]), int(row["d"])
    except asyncpg.UndefinedTableError:
        return 0, 0
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return -1, -1
    finally:
        await conn.close()


async def wait_for_rows(
    dsn: str, expected: int, within: float, process: subprocess.Popen[bytes] | None = None
) -> tuple[int, int]:
    deadline = time.monotonic() + within
    counts = (0, 0)
    while time.monotonic() < deadline:
        counts = await row_counts(dsn)
        if counts[0] >= expected:
            # A little longer: a duplicate would show up now.
            await asyncio.sleep(0.5)
            return await row_counts(dsn)
        if process is not None and process.poll() is not None:
            raise AssertionError(f"consumer exited with {process.returncode}")
        await asyncio.sleep(0.2)
    return counts


def log_events(log_path: Path) -> list[dict[str, Any]]:
    import json

    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def send_paced(packets: list[bytes], port: int, rate: int) -> None:
    """`packets` to 127.0.0.1:`port` at about `rate` per second, in 10 ms steps."""
    step = max(1, rate // 100)
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for index, packet in enumerate(packets, 1):
            sock.sendto(packet, ("127.0.0.1", port))
            if index % step == 0:
                ahead = started + index / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)


async def stored_call_ids(dsn: str) -> tuple[int, int]:
    """(rows, distinct Call-IDs) in the SIP capture table."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT count(*), count(DISTINCT sid) FROM hep_proto_1_call")
        assert row is not None
        return int(row[0]), int(row[1])
    finally:
        await conn.close()


def metric(port: int, name: str) -> float | None:
    """Sum of `name`'s samples on 127.0.0.1:port/metrics; None while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line.split(" ", 1)[0].split("{", 1)[0] == name:
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for_metric(port: int, name: str, want: float, within: float = 30) -> float | None:
    """`metric(port, name)` once it equals `want`, or the last value read at `within`.

    A row is visible in PostgreSQL as soon as its transaction commits; the consumer
    counts it when the commit's answer reaches it, a moment later (on a loaded machine,
    more than a moment): read right after the rows appear, a counter may lag them."""
    deadline = time.monotonic() + within
    while True:
        value = metric(port, name)
        if value == want or time.monotonic() > deadline:
            return value
        time.sleep(0.1)
