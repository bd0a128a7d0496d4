"""Drops a user must hear about, through the real `hep-ingest receive` process.

- queue_full: with the broker paused (SIGSTOP) and a small --queue-size, UDP packets
  past the bound are dropped: one warning says so when the drops begin (with the
  count), not one line per packet, and a summary follows when they stop;
- shutdown: SIGTERM with the broker paused and records held: the whole shutdown fits
  in --shutdown-timeout (aiokafka's own stop included), the exit code is 1, and the
  log says how many records were dropped.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import load_vectors
from receiver_process import run_receiver_process, send_udp

from pipeline.embedded import EmbeddedKafka

pytestmark = pytest.mark.integration


def _wait_metric(receiver, name: str, value: float, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while receiver.metric(name) < value:
        assert time.monotonic() < deadline, f"{name} stayed below {value}: {receiver.log()}"
        time.sleep(0.05)


def test_queue_full_drops_are_logged_when_they_begin_and_end(
    fresh_kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    packets, _ = load_vectors("kamailio_hep3_udp")
    with run_receiver_process(
        tmp_path, fresh_kafka.bootstrap_servers, topic_name, "--queue-size", "20",
        "--request-timeout-ms", "2000",
    ) as receiver:  # fmt: skip
        receiver.wait_for_event("broker_connected")
        fresh_kafka.pause()
        try:
            send_udp(receiver.udp_port, packets[:120])
            _wait_metric(receiver, "hep_ingest_packets_received_total", 120)
            started = receiver.wait_for_event("queue_full_drops_started", timeout=30)
        finally:
            fresh_kafka.resume()
        dropped = receiver.metric("hep_ingest_packets_dropped_total", {"reason": "queue_full"})
        assert dropped == 100  # 20 held, the rest dropped
        assert started["level"] == "warning"
        assert 0 < started["dropped"] <= dropped and started["queue_size"] == 20
        stopped = receiver.wait_for_event("queue_full_drops_stopped", timeout=30)
        assert stopped["dropped"] == dropped
        names = [e["event"] for e in receiver.events()]
        assert names.count("queue_full_drops_started") == 1, names
        assert receiver.terminate() == 0


def test_shutdown_that_drops_records_is_bounded_says_so_and_exits_1(
    fresh_kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    packets, _ = load_vectors("kamailio_hep3_udp")
    with run_receiver_process(
        tmp_path, fresh_kafka.bootstrap_servers, topic_name, "--shutdown-timeout", "3",
    ) as receiver:  # fmt: skip
        receiver.wait_for_event("broker_connected")
        fresh_kafka.pause()
        try:
            send_udp(receiver.udp_port, packets[:50])
            _wait_metric(receiver, "hep_ingest_packets_received_total", 50)
            time.sleep(0.5)  # the publisher has taken them and waits for the broker
            began = time.monotonic()
            code = receiver.terminate(timeout=60)
            took = time.monotonic() - began
        finally:
            fresh_kafka.resume()
    assert code == 1, receiver.log()
    # 3 s of shutdown timeout; the rest is margin for a loaded machine (the old code
    # took 3 + 5 + 5 s: a send's extra wait, then aiokafka's stop).
    assert took < 3 + 4, f"shutdown took {took:.1f}s\n{receiver.log()}"
    events = {e["event"]: e for e in receiver.events()}
    assert events["shutdown_dropped"]["dropped"] == 50
    assert events["receiver_stopped"]["dropped_at_shutdown"] == 50
    assert events["receiver_stopped"]["level"] == "error"
