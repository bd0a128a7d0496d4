"""`hep_ingest_consumer_lag_total` while PostgreSQL is down: the consumer pauses its
partitions (their fetch high watermarks stop), and the lag must still count every
record published and not stored. Real consumer process, broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.embedded import EmbeddedKafka, EmbeddedPostgres, free_tcp_port, free_udp_port
from pipeline.hep.encode import encode_hep3
from tests.conftest import create_topic
from tests.integration.consume_support import (
    generated_sip,
    publish,
    sip_packet,
    start_consumer,
    stop_process,
    tail,
    wait_for_rows,
)
from tests.integration.lifecycle_support import signal_and_time, start_up
from tests.integration.receiver_process import kernel_drops, send_udp

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

BEFORE = 1000  # stored before the outage
N = 20_000  # published while PostgreSQL is down
CHUNK = 500  # records per publish call


def scrape(port: int) -> dict[str, float]:
    """`metric{partition="k"}` and plain names -> value, from the consumer's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def lag(port: int) -> tuple[float, float]:
    """(hep_ingest_consumer_lag_total, the sum of the per-partition gauges)."""
    values = scrape(port)
    partitions = sum(v for k, v in values.items() if k.startswith("hep_ingest_consumer_lag{"))
    return values["hep_ingest_consumer_lag_total"], partitions


async def wait_for_lag(port: int, want: float, within: float, above: bool) -> float:
    """Poll the lag until it is >= `want` (above) or <= `want`; return the last value."""
    deadline = time.monotonic() + within
    total = -1.0
    while time.monotonic() < deadline:
        total, _ = await asyncio.to_thread(lag, port)
        if (total >= want) if above else (total <= want):
            return total
        await asyncio.sleep(0.5)
    return total


async def test_lag_counts_records_published_while_postgres_is_down(
    kafka: EmbeddedKafka, fresh_postgres: EmbeddedPostgres, topic_name: str, tmp_path: Path
) -> None:
    await create_topic(kafka.bootstrap_servers, topic_name, partitions=4)
    dsn = fresh_postgres.dsn
    port = free_tcp_port()
    log = tmp_path / "consumer.log"
    # The default batch size (10,000): while paused, up to two batches are fetched but
    # not stored, which a lag against the fetch position would not count.
    process = start_consumer(
        kafka.bootstrap_servers, topic_name, dsn, log,
        "--flush-interval", "0.2", "--metrics", f"127.0.0.1:{port}",
    )
    try:
        await publish(kafka.bootstrap_servers, topic_name, generated_sip(BEFORE, prefix="pre"))
        assert await wait_for_rows(dsn, BEFORE, 60, process) == (BEFORE, BEFORE), tail(log)
        assert await wait_for_lag(port, 0, 30, above=False) == 0, tail(log)

        await asyncio.to_thread(fresh_postgres.stop, "fast")
        # As traffic arrives: in many small produce requests. (tansu answers "latest"
        # with the start of a partition's last record batch + 1: one huge batch would
        # hide its records from any lag computed from the broker's end offsets.)
        outage = generated_sip(N, prefix="outage")
        for start in range(0, N, CHUNK):
            await publish(kafka.bootstrap_servers, topic_name, outage[start:start + CHUNK])
        during = await wait_for_lag(port, 0.9 * N, 60, above=True)
        assert during >= 0.9 * N, f"lag {during} while {N} records wait:\n{tail(log)}"
        # It keeps up while paused, and never counts more than is waiting.
        await asyncio.sleep(3)
        total, partitions = await asyncio.to_thread(lag, port)
        assert 0.9 * N <= total <= N, total
        assert partitions == total
        assert process.poll() is None, tail(log)

        await asyncio.to_thread(fresh_postgres.start)
        stored = await wait_for_rows(dsn, BEFORE + N, 120, process)
        assert stored == (BEFORE + N, BEFORE + N), tail(log)
        assert await wait_for_lag(port, 0, 30, above=False) == 0, tail(log)
        assert await asyncio.to_thread(lag, port) == (0, 0)
    finally:
        assert stop_process(process) == 0, tail(log)


N_UP = 10_000  # HEP packets sent to `up` while its PostgreSQL is down
STATUS = re.compile(
    r"status: received (\d+)  published (\d+)  stored (\d+)  dead-lettered (\d+)  lag (\d+)"
)


def last_status(path: Path) -> dict[str, int]:
    """The numbers of `up`'s last status line (all 0 before the first one)."""
    found = STATUS.findall(path.read_text(errors="replace"))
    numbers = [int(n) for n in found[-1]] if found else [0] * 5
    return dict(zip(("received", "published", "stored", "dead_lettered", "lag"), numbers,
                    strict=True))


def wait_for_status(path: Path, ok: Callable[[dict[str, int]], bool], within: float,
                    process: subprocess.Popen[bytes]) -> dict[str, int]:
    deadline = time.monotonic() + within
    status = last_status(path)
    while time.monotonic() < deadline and process.poll() is None:
        status = last_status(path)
        if ok(status):
            return status
        time.sleep(0.25)
    raise AssertionError(f"last status {status}:\n{tail(path)}")


async def test_up_status_line_shows_the_lag_while_postgres_is_down(
    fresh_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    out = tmp_path / "up.out"
    udp = free_udp_port()
    process = start_up(
        tmp_path / "data", out, "--udp", f"127.0.0.1:{udp}", "--dsn", fresh_postgres.dsn,
        "--status-interval", "0.5",
    )
    try:
        await asyncio.to_thread(wait_for_status, out, lambda _: "status:" in out.read_text(),
                                90, process)
        await asyncio.to_thread(fresh_postgres.stop, "fast")
        packets = [encode_hep3(sip_packet(f"up-lag-{i % 500}@test", i)) for i in range(N_UP)]
        await asyncio.to_thread(send_udp, udp, packets, 0.0002)
        # Every datagram read or dropped by the kernel, and all that was read published.
        # The kernel's drops are allowed: a slow or loaded machine reads this burst late,
        # and what is under test is the lag, not the capture rate.
        during = await asyncio.to_thread(
            wait_for_status, out,
            lambda s: s["received"] + kernel_drops(udp) == N_UP
            and s["published"] == s["received"] and s["lag"] >= 0.9 * s["published"],
            60, process,
        )
        assert during["received"] > 0, during
        assert during["stored"] == 0 and during["lag"] <= during["received"], during

        await asyncio.to_thread(fresh_postgres.start)
        after = await asyncio.to_thread(
            wait_for_status, out,
            lambda s: s["stored"] == s["published"] >= during["published"] and s["lag"] == 0,
            120, process,
        )
        assert after["received"] == during["received"], after
    finally:
        code, _ = signal_and_time(process)
    assert code == 0, tail(out)
