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


def assert_refused(
    process: subprocess.Popen[bytes], log_path: Path, what: str, verb: str = "cannot bind"
) -> None:
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
    assert f"{verb} {what}: Address already in use" in failures[0], failures[0]
    assert "receiver_started" not in logs


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_second_receiver_on_the_same_port_is_refused(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path, transport: str
) -> None:
    packets, _ = load_vectors(f"kamailio_hep3_{transport}")
    with run_receiver_process(tmp_path, kafka.bootstrap_servers, topic_name) as first:
        port = first.udp_port if transport == "udp" else first.tcp_port
        address = f"127.0.0.1:{port}"
        only_this = ["--no-tcp", "--udp", address] if transport == "udp" else [
            "--no-udp", "--tcp", address
        ]
        for extra in ([], ["--workers", "2"]):
            # With --workers the supervisor's check refuses the port before any worker.
            second, log_path = start_second_receiver(
                kafka, topic_name, tmp_path, *only_this, *extra
            )
            assert_refused(second, log_path, f"{transport.upper()} {address}")
        (send_udp if transport == "udp" else send_tcp)(port, packets)
        records = run(consume(kafka.bootstrap_servers, topic_name, len(packets)))
        assert len(records) == len(packets)
        assert {r["transport"] for _, r in records} == {transport}
        received = first.metric("hep_ingest_packets_received_total", {"transport": transport})
        assert received == len(packets)
        assert first.terminate() == 0


def test_a_metrics_address_another_process_holds_is_refused_before_capture_starts(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    with run_receiver_process(tmp_path, kafka.bootstrap_servers, topic_name) as first:
        # /metrics answers as soon as `receiver_started` is logged (CI once raced the two).
        names = [event.get("event") for event in first.events()]
        assert names.index("metrics_serving") < names.index("receiver_started"), names
        assert first.metric("hep_ingest_build_info") == 1
        held = f"127.0.0.1:{first.metrics_port}"
        second, log_path = start_second_receiver(
            kafka, topic_name, tmp_path, "--udp", "127.0.0.1:0", "--no-tcp", "--metrics", held
        )
        assert_refused(second, log_path, f"--metrics on {held}", verb="cannot serve")
        assert first.terminate() == 0
