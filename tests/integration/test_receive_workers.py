"""`hep-ingest receive --workers 2`: two processes share the ports through SO_REUSEPORT."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import load_vectors
from processes import alive, child_pids
from receiver_process import (
    ReceiverProcess,
    consume,
    hep_ingest_command,
    run,
    run_receiver_process,
    send_tcp,
)

from pipeline.embedded import EmbeddedKafka
from pipeline.embedded.net import free_tcp_port

pytestmark = pytest.mark.integration


def wait_for_events(receiver: ReceiverProcess, name: str, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for e in receiver.events() if e.get("event") == name) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} {name!r} events: {receiver.log()}")


def metric_sum(receiver: ReceiverProcess, name: str, workers: int, **labels: str) -> list[float]:
    """`name` per worker: worker K serves /metrics on the --metrics port + K."""
    base = receiver.metrics_port
    values = []
    for k in range(workers):
        receiver.metrics_port = base + k
        try:
            values.append(receiver.metric(name, labels or None))
        finally:
            receiver.metrics_port = base
    return values


def send_udp_from_many_ports(port: int, packets: list[bytes], sources: int = 16) -> None:
    """Round-robin over `sources` sockets: the kernel hashes each 4-tuple to one worker."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sources)]
    try:
        for i, packet in enumerate(packets):
            socks[i % sources].sendto(packet, ("127.0.0.1", port))
            time.sleep(0.0005)
    finally:
        for sock in socks:
            sock.close()


def test_two_workers_share_the_ports_and_stop_cleanly(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    udp_packets, _ = load_vectors("kamailio_hep3_udp")
    tcp_packets, _ = load_vectors("kamailio_hep3_tcp")
    workers: list[int] = []
    with run_receiver_process(
        tmp_path, kafka.bootstrap_servers, topic_name, "--workers", "2", "--receiver-id", "rx"
    ) as receiver:
        try:
            wait_for_events(receiver, "receiver_started", 2)
            wait_for_events(receiver, "broker_connected", 2)
            workers = child_pids(receiver.process.pid)
            assert len(workers) == 2
            send_udp_from_many_ports(receiver.udp_port, udp_packets)
            send_tcp(receiver.tcp_port, tcp_packets)
            records = run(consume(kafka.bootstrap_servers, topic_name, 204))
            assert len(records) == 204
            assert len({record["record_id"] for _, record in records}) == 204
            assert Counter(r["transport"] for _, r in records) == {"udp": 170, "tcp": 34}
            by_worker = Counter(r["receiver_id"] for _, r in records)
            assert set(by_worker) <= {"rx-w0", "rx-w1"}
            udp = metric_sum(receiver, "hep_ingest_packets_received_total", 2, transport="udp")
            assert sum(udp) == 170
            # 16 source ports: all landing on one worker has odds of 2**-15.
            assert all(count > 0 for count in udp), udp
            assert sum(metric_sum(receiver, "hep_ingest_packets_published_total", 2)) == 204
            assert sum(metric_sum(receiver, "hep_ingest_packets_dropped_total", 2)) == 0
            assert receiver.terminate() == 0
            assert not [pid for pid in workers if alive(pid)]
            assert sum(1 for e in receiver.events() if e.get("event") == "receiver_stopped") == 2
        finally:
            for pid in workers:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def test_a_failing_worker_stops_the_others_and_fails(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    # Something else holds worker 1's /metrics port: that worker fails after binding
    # the shared listen ports, and the supervisor stops worker 0.
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        metrics_port = blocker.getsockname()[1] - 1
        result = subprocess.run(
            [*hep_ingest_command(), "receive", "--workers", "2", "--no-udp",
             "--tcp", f"127.0.0.1:{free_tcp_port()}", "--metrics", f"127.0.0.1:{metrics_port}",
             "--bootstrap-servers", kafka.bootstrap_servers, "--topic", topic_name],
            capture_output=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("HEP_INGEST_")},
        )
    logs = result.stdout + result.stderr
    assert result.returncode == 1, logs[-3000:]
    assert logs.count(b'"worker_exited"') == 2


def test_workers_refuse_a_port_another_process_holds(
    kafka: EmbeddedKafka, topic_name: str
) -> None:
    # Held without SO_REUSEPORT or with it: the supervisor checks before any worker starts.
    for reuse_port in (False, True):
        with socket.socket() as blocker:
            blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuse_port))
            blocker.bind(("127.0.0.1", 0))
            blocker.listen()
            port = blocker.getsockname()[1]
            result = subprocess.run(
                [*hep_ingest_command(), "receive", "--workers", "2", "--no-udp",
                 "--tcp", f"127.0.0.1:{port}", "--bootstrap-servers", kafka.bootstrap_servers,
                 "--topic", topic_name],
                capture_output=True,
                timeout=60,
                env={k: v for k, v in os.environ.items() if not k.startswith("HEP_INGEST_")},
            )
        logs = (result.stdout + result.stderr).decode()
        assert result.returncode == 1, logs[-3000:]
        failures = [line for line in logs.splitlines() if "receiver_failed" in line]
        assert len(failures) == 1, logs[-3000:]
        assert f"cannot bind TCP 127.0.0.1:{port}: Address already in use" in failures[0]
        assert "workers_started" not in logs


def test_workers_need_fixed_ports() -> None:
    result = subprocess.run(
        [*hep_ingest_command(), "receive", "--workers", "2", "--udp", "127.0.0.1:0", "--no-tcp"],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2


def test_sigkill_of_the_supervisor_takes_its_workers_along(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    workers: list[int] = []
    with run_receiver_process(
        tmp_path, kafka.bootstrap_servers, topic_name, "--workers", "2"
    ) as receiver:
        try:
            wait_for_events(receiver, "receiver_started", 2)
            workers = child_pids(receiver.process.pid)
            assert len(workers) == 2
            receiver.process.kill()
            receiver.process.wait(30)
            deadline = time.monotonic() + 10
            while [pid for pid in workers if alive(pid)] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not [pid for pid in workers if alive(pid)], receiver.log()
        finally:
            for pid in workers:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
