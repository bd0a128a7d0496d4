"""CPU amplification and socket-buffer loss on UDP, through the real `hep-ingest receive`.

Before: a 60 KB HEP3 packet of 10,000 empty chunks was accepted (~38 ms to decode), and
datagrams the kernel dropped for a full receive buffer showed in no metric.
"""

from __future__ import annotations

import os
import signal
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import load_vectors
from receiver_process import (
    ReceiverProcess,
    consume,
    kernel_drops,
    run,
    run_receiver_process,
    send_tcp,
    send_udp,
)

from pipeline.embedded import EmbeddedKafka

pytestmark = pytest.mark.integration


def flood(valid: bytes, chunk_header: bytes, count: int = 10_000) -> bytes:
    """`valid` with `count` empty chunks appended: ~60 KB for the default count."""
    body = valid[6:] + chunk_header * count
    return b"HEP3" + struct.pack(">H", 6 + len(body)) + body


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not {what} in {timeout}s")


def send_udp_in_blocks(receiver: ReceiverProcess, datagrams: list[bytes], block: int = 30) -> None:
    """`datagrams` in blocks of `block` (~2 MB of 60 KB floods, a quarter of the socket
    buffer), each once the receiver has read the one before: a receiver that a slow or
    loaded machine holds back for a moment loses none of them to a full buffer."""
    udp = {"transport": "udp"}
    for start in range(0, len(datagrams), block):
        send_udp(receiver.udp_port, datagrams[start : start + block], pause=0.002)
        sent = min(start + block, len(datagrams))
        deadline = time.monotonic() + 60
        while receiver.metric("hep_ingest_packets_received_total", udp) < sent:
            assert time.monotonic() < deadline, f"{sent} sent: {receiver.log()}"
            time.sleep(0.01)


def assert_accounted(receiver: ReceiverProcess) -> None:
    received = receiver.metric("hep_ingest_packets_received_total")
    decoded = receiver.metric("hep_ingest_packets_decoded_total")
    invalid = receiver.metric("hep_ingest_packets_invalid_total")
    rejected = receiver.metric("hep_ingest_packets_rejected_total")
    assert received == decoded + invalid + rejected, (received, decoded, invalid, rejected)


@pytest.mark.skipif(not os.path.exists("/proc/net/udp"), reason="needs /proc/net/udp (Linux)")
def test_kernel_drops_of_a_full_udp_socket_are_in_metrics_and_progress(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    packets, _ = load_vectors("kamailio_hep3_udp")
    burst = (packets * 12)[:2000]
    with run_receiver_process(
        tmp_path, kafka.bootstrap_servers, topic_name, "--udp-rcvbuf", "16384"
    ) as receiver:
        listen = {"listen": f"127.0.0.1:{receiver.udp_port}"}
        assert receiver.metric("hep_ingest_udp_socket_drops_total", listen) == 0
        # A stopped receiver reads nothing: the buffer fills and the kernel drops the rest.
        os.kill(receiver.process.pid, signal.SIGSTOP)
        try:
            send_udp(receiver.udp_port, burst, pause=0)
            dropped = kernel_drops(receiver.udp_port)
        finally:
            os.kill(receiver.process.pid, signal.SIGCONT)
        assert 0 < dropped < len(burst)

        def all_accounted() -> bool:
            received = receiver.metric("hep_ingest_packets_received_total", {"transport": "udp"})
            drops = receiver.metric("hep_ingest_udp_socket_drops_total", listen)
            return received + drops == len(burst)

        # Every datagram sent was either read by the receiver or dropped by the kernel.
        wait_until(all_accounted, "received + socket drops == sent")
        assert receiver.metric("hep_ingest_udp_socket_drops_total", listen) == dropped
        assert kernel_drops(receiver.udp_port) == dropped

        def progress_shows_drops() -> bool:
            events = [e for e in receiver.events() if e.get("event") == "progress"]
            return bool(events) and events[-1].get("udp_socket_drops") == dropped

        wait_until(progress_shows_drops, "udp_socket_drops in the progress line")
        assert receiver.terminate() == 0
        stopped = receiver.wait_for_event("receiver_stopped")
        assert stopped["udp_socket_drops"] == dropped


def test_chunk_floods_are_invalid_beside_valid_traffic(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    udp_valid, _ = load_vectors("kamailio_hep3_udp")
    tcp_valid, _ = load_vectors("kamailio_hep3_tcp")
    vendor_flood = flood(udp_valid[0], struct.pack(">HHH", 2, 0x99, 6))  # Kamailio vendor id
    generic_flood = flood(udp_valid[0], struct.pack(">HHH", 0, 0x99, 6))
    assert len(vendor_flood) > 60_000 and len(generic_flood) > 60_000
    with run_receiver_process(tmp_path, kafka.bootstrap_servers, topic_name) as receiver:
        mixed = []
        for packet in udp_valid:
            mixed += [vendor_flood, packet, generic_flood]
        send_udp_in_blocks(receiver, mixed)
        tcp_mixed = []
        for packet in tcp_valid:
            tcp_mixed += [packet, vendor_flood, generic_flood]
        send_tcp(receiver.tcp_port, tcp_mixed)

        valid = len(udp_valid) + len(tcp_valid)
        records = run(consume(kafka.bootstrap_servers, topic_name, valid))
        assert len(records) == valid
        assert len({record["record_id"] for _, record in records}) == valid

        floods = len(udp_valid) + len(tcp_valid)
        for reason in ("too_many_chunks", "duplicate_chunk"):
            counted = receiver.metric("hep_ingest_packets_invalid_total", {"reason": reason})
            assert counted == floods, (reason, counted)
        assert receiver.metric("hep_ingest_packets_decoded_total") == valid
        assert receiver.metric(
            "hep_ingest_packets_received_total", {"transport": "udp"}
        ) == 3 * len(udp_valid)
        assert receiver.metric(
            "hep_ingest_packets_received_total", {"transport": "tcp"}
        ) == 3 * len(tcp_valid)
        assert_accounted(receiver)
        assert receiver.metric("hep_ingest_udp_socket_drops_total") == 0
        assert receiver.terminate() == 0
