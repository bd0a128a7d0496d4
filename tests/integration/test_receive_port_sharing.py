"""A second `hep-ingest receive` on a port the first holds is refused, naming the address.

Before, the UDP socket set SO_REUSEADDR: a second receiver bound the same port and
Linux delivered every datagram to it, the first received nothing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import load_vectors
from receiver_process import (
    ReceiverProcess,
    consume,
    hep_ingest_command,
    run,
    run_receiver_process,
    send_tcp,
    send_udp,
)

from pipeline.embedded import EmbeddedKafka

pytestmark = pytest.mark.integration


def start_second_receiver(
    kafka: EmbeddedKafka, topic: str, tmp_path: Path, *listen: str
) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = tmp_path / f"second-{len(list(tmp_path.iterdir()))}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*hep_ingest_command(), "receive", *listen,
             "--bootstrap-servers", kafka.bootstrap_servers, "--topic", topic],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("HEP_INGEST_")},
        )
    return process, log_path


def assert_refused(process: subprocess.Popen[bytes], log_path: Path, what: str) -> None:
    try:
        code = process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    logs = log_path.read_text(errors="replace")
    assert code == 1, logs[-3000:]
    failures = [line for line in logs.splitlines() if "receiver_failed" in line]
    assert len(failures) == 1, logs[-3000:]
    assert f"cannot bind {what}: Address already in use" in failures[0], failures[0]
    assert "receiver_started" not in logs


def assert_first_gets_everything(
    receiver: ReceiverProcess, kafka: EmbeddedKafka, topic: str, transport: str, sent: int
) -> None:
    records = run(consume(kafka.bootstrap_servers, topic, sent))
    assert len(records) == sent
    assert {r["transport"] for _, r in records} == {transport}
    assert receiver.metric("hep_ingest_packets_received_total", {"transport": transport}) == sent


def test_second_receiver_on_the_same_udp_port_is_refused(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    packets, _ = load_vectors("kamailio_hep3_udp")
    with run_receiver_process(tmp_path, kafka.bootstrap_servers, topic_name) as first:
        address = f"127.0.0.1:{first.udp_port}"
        second, log_path = start_second_receiver(
            kafka, topic_name, tmp_path, "--udp", address, "--no-tcp"
        )
        assert_refused(second, log_path, f"UDP {address}")
        # The same port with --workers: the supervisor's check refuses it too.
        workers, log_path = start_second_receiver(
            kafka, topic_name, tmp_path, "--udp", address, "--no-tcp", "--workers", "2"
        )
        assert_refused(workers, log_path, f"UDP {address}")
        send_udp(first.udp_port, packets)
        assert_first_gets_everything(first, kafka, topic_name, "udp", len(packets))
        assert first.terminate() == 0


def test_second_receiver_on_the_same_tcp_port_is_refused(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    packets, _ = load_vectors("kamailio_hep3_tcp")
    with run_receiver_process(tmp_path, kafka.bootstrap_servers, topic_name) as first:
        address = f"127.0.0.1:{first.tcp_port}"
        second, log_path = start_second_receiver(
            kafka, topic_name, tmp_path, "--no-udp", "--tcp", address
        )
        assert_refused(second, log_path, f"TCP {address}")
        send_tcp(first.tcp_port, packets)
        assert_first_gets_everything(first, kafka, topic_name, "tcp", len(packets))
        assert first.terminate() == 0
