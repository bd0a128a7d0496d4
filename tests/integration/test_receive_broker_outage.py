"""The receiver against a broker that stops answering, is not there yet, or at SIGTERM."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from conftest import load_vectors
from receiver_process import consume, micros, run_receiver_process, send_tcp, send_udp, sha256

from pipeline.embedded import EmbeddedKafka
from pipeline.embedded.net import free_tcp_port

pytestmark = pytest.mark.integration

def _identities(records: list) -> set[tuple[str, int]]:
    return {
        (sha256(r["payload"]), micros(r["capture_time"]))
        for _, r in records
    }


def _expected_identities(expected: dict) -> set[tuple[str, int]]:
    return {
        (p["payload_sha256"], p["ts_sec"] * 1_000_000 + p["ts_usec"]) for p in expected["packets"]
    }


def _wait_metric(receiver, name: str, value: float, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while receiver.metric(name) < value:
        assert time.monotonic() < deadline, f"{name} stayed below {value}: {receiver.log()}"
        time.sleep(0.05)


def test_broker_paused_then_resumed_loses_nothing(
    fresh_kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    packets, expected = load_vectors("kamailio_hep3_udp")
    tcp_packets, tcp_expected = load_vectors("kamailio_hep3_tcp")
    with run_receiver_process(
        tmp_path, fresh_kafka.bootstrap_servers, topic_name, "--request-timeout-ms", "2000"
    ) as receiver:
        receiver.wait_for_event("broker_connected")
        send_udp(receiver.udp_port, packets[:60])
        _wait_metric(receiver, "hep_ingest_packets_published_total", 60)
        fresh_kafka.pause()
        try:
            paused_at = time.monotonic()
            for index in range(60, 120):  # spread over the 10 s outage
                send_udp(receiver.udp_port, [packets[index]])
                time.sleep(0.12)
            send_tcp(receiver.tcp_port, tcp_packets)
            # Until the receiver has read the TCP stream too (on a slow machine the sends
            # above may take the whole outage), then the rest of the 10 s.
            _wait_metric(receiver, "hep_ingest_queue_depth", 60 + 34)
            time.sleep(max(0.0, 10 - (time.monotonic() - paused_at)))
            assert receiver.process.poll() is None
        finally:
            fresh_kafka.resume()
        send_udp(receiver.udp_port, packets[120:])
        records = asyncio.run(consume(fresh_kafka.bootstrap_servers, topic_name, 170 + 34))
        # Retries may publish a batch twice; the record id tells the copies apart.
        assert _identities(records) == _expected_identities(expected) | _expected_identities(
            tcp_expected
        )
        assert len({r["record_id"] for _, r in records}) == 170 + 34
        assert receiver.process.poll() is None
        assert receiver.metric("hep_ingest_packets_dropped_total") == 0
        assert receiver.metric("hep_ingest_publish_retries_total") >= 1
        events = [e["event"] for e in receiver.events()]
        assert "broker_unreachable" in events and "broker_recovered" in events
        assert receiver.terminate() == 0


def test_receiver_started_before_the_broker_publishes_once_it_appears(
    tmp_path: Path, topic_name: str
) -> None:
    packets, expected = load_vectors("kamailio_hep3_udp")
    port = free_tcp_port()
    broker = EmbeddedKafka(port=port, log_path=tmp_path / "tansu.log")
    with run_receiver_process(tmp_path, f"127.0.0.1:{port}", topic_name) as receiver:
        receiver.wait_for_event("broker_unreachable")
        send_udp(receiver.udp_port, packets)
        _wait_metric(receiver, "hep_ingest_packets_received_total", 170)
        assert receiver.process.poll() is None
        broker.start()
        try:
            receiver.wait_for_event("broker_recovered")
            records = asyncio.run(consume(broker.bootstrap_servers, topic_name, 170))
            assert _identities(records) == _expected_identities(expected)
            assert len(records) == 170
            assert receiver.metric("hep_ingest_packets_dropped_total") == 0
            assert receiver.terminate() == 0
        finally:
            broker.stop()


def test_sigterm_publishes_everything_accepted_and_exits_zero(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    packets, expected = load_vectors("kamailio_hep3_udp")
    # A long linger keeps the accepted records queued until SIGTERM arrives.
    with run_receiver_process(
        tmp_path, kafka.bootstrap_servers, topic_name, "--linger-ms", "30000"
    ) as receiver:
        receiver.wait_for_event("broker_connected")
        send_udp(receiver.udp_port, packets)
        _wait_metric(receiver, "hep_ingest_packets_received_total", 170)
        assert receiver.metric("hep_ingest_packets_published_total") == 0
        assert receiver.terminate(timeout=30) == 0
        stopped = receiver.wait_for_event("receiver_stopped")
        assert stopped["published"] == 170 and stopped["dropped"] == 0
    records = asyncio.run(consume(kafka.bootstrap_servers, topic_name, 170))
    assert len(records) == 170
    assert _identities(records) == _expected_identities(expected)
