"""The batch receive path through the real `hep-ingest receive` process.

- UDP is read in batches on the drain timer, not once per datagram: steady traffic
  in bursts reaches Kafka whole while hep_ingest_udp_batches_total stays a small
  fraction of the datagrams; TCP frames of one read go through the same batch path.
- --udp-rcvbuf is granted past net.core.rmem_max where SO_RCVBUFFORCE is permitted,
  and the log says what was granted.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from conftest import load_vectors
from receiver_process import consume, run, run_receiver_process, send_tcp

from pipeline.embedded import EmbeddedKafka

pytestmark = pytest.mark.integration


def _wait_metric(receiver, name: str, value: float, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while receiver.metric(name) < value:
        assert time.monotonic() < deadline, f"{name} stayed below {value}: {receiver.log()}"
        time.sleep(0.1)


def test_udp_is_read_in_batches_and_every_packet_is_published(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    packets, _ = load_vectors("kamailio_hep3_udp")
    bursts = 60
    with run_receiver_process(tmp_path, kafka.bootstrap_servers, topic_name) as receiver:
        receiver.wait_for_event("broker_connected")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(bursts):  # 170 datagrams every 20 ms: 8,500/s, bounded
                for packet in packets:
                    sender.sendto(packet, ("127.0.0.1", receiver.udp_port))
                time.sleep(0.02)
        sent = bursts * len(packets)
        _wait_metric(receiver, "hep_ingest_packets_published_total", sent)
        batches = receiver.metric("hep_ingest_udp_batches_total")
        assert receiver.metric("hep_ingest_packets_received_total", {"transport": "udp"}) == sent
        assert receiver.metric("hep_ingest_udp_socket_drops_total") == 0
        # One batch per drain that found datagrams: at most a few per burst, never one
        # per datagram.
        assert 0 < batches <= sent / 10, batches
        send_tcp(receiver.tcp_port, packets)  # one connection, many frames per read
        _wait_metric(receiver, "hep_ingest_packets_published_total", sent + len(packets))
        assert receiver.metric("hep_ingest_packets_received_total", {"transport": "tcp"}) == len(
            packets
        )
        assert receiver.terminate() == 0
    records = run(consume(kafka.bootstrap_servers, topic_name, sent + len(packets)))
    assert len(records) == sent + len(packets)
    assert len({record["record_id"] for _, record in records}) == len(records)


def _rmem_max() -> int:
    with open("/proc/sys/net/core/rmem_max") as value:
        return int(value.read())


def test_udp_rcvbuf_is_forced_past_rmem_max_and_logged(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    if not os.path.exists("/proc/sys/net/core/rmem_max"):
        pytest.skip("not Linux")
    if os.geteuid() != 0:
        pytest.skip("SO_RCVBUFFORCE needs CAP_NET_ADMIN")
    wanted = _rmem_max() * 2
    with run_receiver_process(
        tmp_path, kafka.bootstrap_servers, topic_name, "--udp-rcvbuf", str(wanted)
    ) as receiver:
        event = receiver.wait_for_event("udp_receive_buffer")
        assert event["level"] == "info", event
        assert event["requested"] == wanted and event["granted"] == wanted, event
        assert event["kernel_limit"] == 2 * wanted, event
        assert event["listen"] == f"127.0.0.1:{receiver.udp_port}"
        assert receiver.terminate() == 0
