"""`hep-ingest receive` end to end: real process, real sockets, real broker (tansu)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import load_vectors
from receiver_process import consume, micros, run_receiver_process, send_tcp, send_udp, sha256

from pipeline.embedded import EmbeddedKafka

pytestmark = pytest.mark.integration


def _identity(fields: dict[str, Any]) -> tuple[str, int]:
    return fields["payload_sha256"], fields["ts_sec"] * 1_000_000 + fields["ts_usec"]


def _check_record(key: bytes | None, record: dict[str, Any], want: dict[str, Any]) -> None:
    assert record["src_ip"] == want["src_ip"]
    assert record["dst_ip"] == want["dst_ip"]
    assert record["src_port"] == want["src_port"]
    assert record["dst_port"] == want["dst_port"]
    assert micros(record["capture_time"]) == want["ts_sec"] * 1_000_000 + want["ts_usec"]
    assert record["capture_time_from_receiver"] is False
    assert record["proto_type"] == want["proto_type"]
    assert record["capture_id"] == want["capture_id"]
    assert record["hep_version"] == want["hep_version"]
    assert record["auth_key_present"] is ("auth_key" in want)
    assert record["auth_key"] is None  # --forward-auth-key is off by default
    assert record["correlation_id"] == want.get("correlation_id")
    assert record["node_name"] == want.get("node_name")
    assert sha256(record["payload"]) == want["payload_sha256"]
    assert len(record["record_id"]) == 16
    if want.get("correlation_id"):
        assert key == want["correlation_id"].encode()
    elif want.get("sip"):
        assert key == want["sip"]["call_id"].encode()


def _match(
    records: list[tuple[bytes | None, dict[str, Any]]], expected: list[dict[str, Any]]
) -> None:
    wanted = Counter(_identity(p) for p in expected)
    by_identity = {_identity(p): p for p in expected}
    seen: Counter[tuple[str, int]] = Counter()
    for key, record in records:
        identity = (sha256(record["payload"]), micros(record["capture_time"]))
        assert identity in by_identity, f"unexpected record {identity}"
        _check_record(key, record, by_identity[identity])
        seen[identity] += 1
    assert seen == wanted


def test_udp_and_tcp_vectors_reach_kafka_intact(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    udp_packets, udp_expected = load_vectors("kamailio_hep3_udp")
    tcp_packets, tcp_expected = load_vectors("kamailio_hep3_tcp")
    with run_receiver_process(tmp_path, kafka.bootstrap_servers, topic_name) as receiver:
        receiver.wait_for_event("broker_connected")
        send_udp(receiver.udp_port, udp_packets)
        send_tcp(receiver.tcp_port, tcp_packets)
        records = consume_sync(kafka.bootstrap_servers, topic_name, len(udp_packets) + 34)
        assert len(records) == 170 + 34
        _match(records, udp_expected["packets"] + tcp_expected["packets"])
        transports = Counter(record["transport"] for _, record in records)
        assert transports == {"udp": 170, "tcp": 34}
        assert len({record["record_id"] for _, record in records}) == 204
        assert receiver.metric("hep_ingest_packets_received_total", {"transport": "udp"}) == 170
        assert receiver.metric("hep_ingest_packets_received_total", {"transport": "tcp"}) == 34
        assert receiver.metric("hep_ingest_packets_published_total") == 204
        assert receiver.metric("hep_ingest_packets_dropped_total") == 0
        assert receiver.metric("hep_ingest_packets_invalid_total") == 0
        assert receiver.terminate() == 0


def test_auth_key_rejects_other_keys_and_counts_them(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    tcp_packets, tcp_expected = load_vectors("kamailio_hep3_tcp")
    hepjs_packets, _ = load_vectors("hepjs_hep3_udp")
    keyless_packets, _ = load_vectors("kamailio_hep3_udp")
    with run_receiver_process(
        tmp_path, kafka.bootstrap_servers, topic_name, "--auth-key", "acceptanceKey"
    ) as receiver:
        receiver.wait_for_event("broker_connected")
        send_udp(receiver.udp_port, hepjs_packets)
        send_udp(receiver.udp_port, keyless_packets[:5])
        send_tcp(receiver.tcp_port, tcp_packets)
        records = consume_sync(kafka.bootstrap_servers, topic_name, 34)
        _match(records, tcp_expected["packets"])
        rejected = "hep_ingest_packets_rejected_total"
        assert receiver.metric(rejected, {"reason": "auth_mismatch"}) == len(hepjs_packets)
        assert receiver.metric(rejected, {"reason": "auth_missing"}) == 5
        assert receiver.metric("hep_ingest_packets_published_total") == 34
        assert receiver.terminate() == 0


def consume_sync(
    bootstrap_servers: str, topic: str, expected: int
) -> list[tuple[bytes | None, dict[str, Any]]]:
    import asyncio

    return asyncio.run(consume(bootstrap_servers, topic, expected))


@pytest.mark.parametrize("compression", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_every_compression_reaches_the_broker_and_reads_back(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path, compression: str
) -> None:
    tcp_packets, tcp_expected = load_vectors("kamailio_hep3_tcp")
    with run_receiver_process(
        tmp_path, kafka.bootstrap_servers, topic_name, "--compression", compression
    ) as receiver:
        receiver.wait_for_event("broker_connected")
        send_tcp(receiver.tcp_port, tcp_packets)
        records = consume_sync(kafka.bootstrap_servers, topic_name, 34)
        _match(records, tcp_expected["packets"])
        assert receiver.metric("hep_ingest_packets_published_total") == 34
        assert receiver.terminate() == 0
