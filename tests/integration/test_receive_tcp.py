"""`hep-ingest receive` over TCP and TLS: every byte accounted for, bounded resources.

Through the real process and sockets: frames before a framing error are delivered and
the error counted once (received == decoded + invalid + rejected on each transport);
HEPv2 frames back to back on a stream; --tcp-max-connections, --tcp-idle-timeout and
--tcp-frame-timeout close and count connections; memory held by partial frames is
given back when their connections close.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import test_receive_tls
from conftest import load_vectors
from receiver_process import ReceiverProcess, consume, run, run_receiver_process
from test_receive_tls import Pki, _client_context, _tls_args, wait_for_metric

from pipeline.embedded import EmbeddedKafka
from pipeline.embedded.net import free_tcp_port

pytestmark = pytest.mark.integration

pki = test_receive_tls.pki  # the fixture: a test CA and the receiver's certificate

CLOSED = "hep_ingest_tcp_connections_closed_total"
REFUSED = "hep_ingest_tcp_connections_refused_total"
OPEN = "hep_ingest_tcp_connections_open"
GARBAGE = b"\x00not HEP at all\r\n" * 4


def counts(receiver: ReceiverProcess) -> dict[str, float]:
    return {
        name: receiver.metric(f"hep_ingest_packets_{name}_total")
        for name in ("received", "decoded", "invalid", "rejected")
    }


def assert_every_packet_accounted(receiver: ReceiverProcess) -> dict[str, float]:
    seen = counts(receiver)
    assert seen["received"] == seen["decoded"] + seen["invalid"] + seen["rejected"], seen
    return seen


@contextlib.contextmanager
def stream_to(
    port: int, tls: ssl.SSLContext | None = None, timeout: float = 30
) -> Iterator[socket.socket]:
    """A client connection to the receiver, plain or TLS."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        if tls is None:
            yield raw
        else:
            with tls.wrap_socket(raw, server_hostname="localhost") as sock:
                yield sock
    finally:
        raw.close()


def closed_by_receiver(sock: socket.socket) -> bool:
    """Wait (the socket's timeout) for the receiver's end of the stream."""
    try:
        return sock.recv(1) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_frames_before_garbage_are_delivered_and_the_break_counted_once(
    transport: str, kafka: EmbeddedKafka, topic_name: str, tmp_path: Path, pki: Pki
) -> None:
    hep3, _ = load_vectors("kamailio_hep3_tcp")
    hep2, _ = load_vectors("kamailio_hep2_udp")
    frames = hep3 + hep2
    tls_port = free_tcp_port()
    tls = _client_context(pki) if transport == "tls" else None
    with run_receiver_process(
        tmp_path, kafka.bootstrap_servers, topic_name, *_tls_args(pki, tls_port)
    ) as receiver:
        port = tls_port if transport == "tls" else receiver.tcp_port
        # HEPv3 and HEPv2 frames, then bytes that start no frame, all in one write.
        with stream_to(port, tls) as sock:
            sock.sendall(b"".join(frames) + GARBAGE)
            assert closed_by_receiver(sock)
        wait_for_metric(receiver, CLOSED, {"reason": "broken_stream"}, 1, timeout=30)
        # A frame cut off by the sender's close: one truncated packet.
        with stream_to(port, tls) as sock:
            sock.sendall(hep3[0] + hep3[1][:40])
        wait_for_metric(receiver, "hep_ingest_packets_invalid_total", {}, 2, timeout=30)

        records = run(consume(kafka.bootstrap_servers, topic_name, len(frames)))
        assert len(records) == len(frames) + 1
        assert Counter(r["hep_version"] for _, r in records) == {3: len(hep3) + 1, 2: len(hep2)}
        assert {r["transport"] for _, r in records} == {transport}
        seen = assert_every_packet_accounted(receiver)
        assert seen == {
            "received": len(frames) + 1 + 2,
            "decoded": len(frames) + 1,
            "invalid": 2,
            "rejected": 0,
        }
        invalid = "hep_ingest_packets_invalid_total"
        assert receiver.metric(invalid, {"reason": "bad_stream_magic"}) == 1
        assert receiver.metric(invalid, {"reason": "truncated"}) == 1
        received = "hep_ingest_packets_received_total"
        assert receiver.metric(received, {"transport": transport, "version": "2"}) == len(hep2)
        assert receiver.metric(received, {"transport": transport, "version": "other"}) == 1
        assert receiver.wait_for_event("tcp_stream_broken")["reason"] == "bad_stream_magic"
        assert receiver.terminate() == 0


def test_connection_limit_refuses_and_counts_tcp_and_tls(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path, pki: Pki
) -> None:
    frame = load_vectors("kamailio_hep3_tcp")[0][0]
    tls_port = free_tcp_port()
    limit = 5
    with (
        run_receiver_process(
            tmp_path,
            kafka.bootstrap_servers,
            topic_name,
            *_tls_args(pki, tls_port),
            "--tcp-max-connections",
            str(limit),
        ) as receiver,
        contextlib.ExitStack() as stack,
    ):
        accepted = []
        for _ in range(limit - 1):
            sock = stack.enter_context(stream_to(receiver.tcp_port))
            sock.sendall(frame)
            accepted.append(sock)
        tls_sock = stack.enter_context(stream_to(tls_port, _client_context(pki)))
        tls_sock.sendall(frame)
        accepted.append(tls_sock)
        wait_for_metric(receiver, OPEN, {}, limit, timeout=30)

        extra = [stack.enter_context(stream_to(receiver.tcp_port)) for _ in range(2)]
        extra.append(stack.enter_context(stream_to(tls_port, _client_context(pki))))
        for sock in extra:
            assert closed_by_receiver(sock)
        wait_for_metric(receiver, REFUSED, {"reason": "max_connections"}, 3, timeout=30)
        assert receiver.metric(OPEN) == limit
        assert receiver.wait_for_event("tcp_connection_refused")["max_connections"] == limit

        # A place freed is a place given: the next connection is served.
        accepted.pop(0).close()
        wait_for_metric(receiver, OPEN, {}, limit - 1, timeout=30)
        with stream_to(receiver.tcp_port) as sock:
            sock.sendall(frame)
            wait_for_metric(receiver, "hep_ingest_packets_decoded_total", {}, limit + 1, 30)
        assert receiver.metric(REFUSED) == 3
        assert assert_every_packet_accounted(receiver)["invalid"] == 0
        assert receiver.terminate() == 0


def test_idle_and_partial_frame_connections_are_closed_and_counted(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path, pki: Pki
) -> None:
    frame = load_vectors("kamailio_hep3_tcp")[0][0]
    tls_port = free_tcp_port()
    with run_receiver_process(
        tmp_path,
        kafka.bootstrap_servers,
        topic_name,
        *_tls_args(pki, tls_port),
        # A partial frame also leaves its connection idle: the shorter frame timeout
        # decides for those.
        "--tcp-idle-timeout",
        "3",
        "--tcp-frame-timeout",
        "2",
    ) as receiver:
        started = time.monotonic()
        with (
            stream_to(receiver.tcp_port) as idle,
            stream_to(tls_port, _client_context(pki)) as idle_tls,
            stream_to(receiver.tcp_port) as partial,
            stream_to(receiver.tcp_port) as trickle,
        ):
            idle.sendall(frame)
            idle_tls.sendall(frame)
            partial.sendall(frame[:50])
            # Never idle, but its frame never completes either.
            with contextlib.suppress(OSError):  # until the receiver closes it
                for byte in range(20):
                    trickle.sendall(frame[byte : byte + 1])
                    time.sleep(0.5)
            for sock in (idle, idle_tls, partial, trickle):
                assert closed_by_receiver(sock)
        assert time.monotonic() - started >= 2
        wait_for_metric(receiver, CLOSED, {"reason": "idle_timeout"}, 2, timeout=30)
        wait_for_metric(receiver, CLOSED, {"reason": "frame_timeout"}, 2, timeout=30)
        assert receiver.metric("hep_ingest_packets_invalid_total", {"reason": "truncated"}) == 2
        assert assert_every_packet_accounted(receiver)["decoded"] == 2
        timed_out = [e for e in receiver.events() if e.get("event") == "tcp_timed_out"]
        frames_cut = sorted(e["buffered"] for e in timed_out if e["reason"] == "frame_timeout")
        assert len(frames_cut) == 2 and frames_cut[1] == 50 and 0 < frames_cut[0] < 20
        assert receiver.metric(OPEN) == 0
        assert receiver.terminate() == 0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_memory_of_partial_frames_returns_after_their_connections_close(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    connections, partial = 2000, 30_000
    # A HEPv3 header declaring 60,000 bytes, and half of them.
    head = b"HEP3" + struct.pack(">H", 60_000) + os.urandom(partial - 6)
    with run_receiver_process(
        tmp_path,
        kafka.bootstrap_servers,
        topic_name,
        "--tcp-max-connections",
        str(connections + 100),
    ) as receiver:
        pid = receiver.process.pid

        def hold_and_close(n: int) -> None:
            with contextlib.ExitStack() as stack:
                for _ in range(n):
                    stack.enter_context(stream_to(receiver.tcp_port)).sendall(head)
                wait_for_metric(receiver, OPEN, {}, n, timeout=120)
                nonlocal peak
                for _ in range(20):  # until the receiver has read what was sent
                    peak = max(peak, rss_bytes(pid))
                    time.sleep(0.1)
            wait_for_metric(receiver, OPEN, {}, 0, timeout=120)

        peak = 0
        hold_and_close(50)  # warm up: first connections, metrics page, allocator arenas
        time.sleep(1)
        baseline = rss_bytes(pid)
        hold_and_close(connections)
        wait_for_metric(
            receiver, "hep_ingest_packets_invalid_total", {"reason": "truncated"},
            50 + connections, timeout=120,
        )
        time.sleep(2)  # the receiver gives memory back shortly after the closes
        after = rss_bytes(pid)
        held = peak - baseline
        assert held > connections * partial // 2, (baseline, peak)
        assert after - baseline < max(held // 5, 8 << 20), (baseline, peak, after)
        assert assert_every_packet_accounted(receiver)["decoded"] == 0
        assert receiver.terminate() == 0
