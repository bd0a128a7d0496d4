"""`hep-ingest receive --tls`: HEP over TLS into Kafka, with and without client certificates.

The certificates are made by the `openssl` command line (skipped when it is missing):
a test CA, a server certificate for 127.0.0.1/localhost, a client certificate it signed
and one signed by another CA.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import load_vectors
from processes import alive, child_pids
from receiver_process import ReceiverProcess, consume, run, run_receiver_process, send_tcp
from test_receive_e2e import _match
from test_receive_workers import metric_sum, wait_for_events

from pipeline.embedded import EmbeddedKafka
from pipeline.embedded.net import free_tcp_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]

HANDSHAKE = {"reason": "tls_handshake"}


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # signed by a CA the receiver does not know
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )


def _leaf(folder: Path, name: str, ca: str, extensions: str) -> None:
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
        "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder,
    )
    (folder / f"{name}.ext").write_text(extensions + "\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
        cwd=folder,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    _ca(folder, "ca")
    _ca(folder, "rogue-ca")
    _leaf(folder, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
          "extendedKeyUsage=serverAuth")
    _leaf(folder, "agent", "ca", "extendedKeyUsage=clientAuth")
    _leaf(folder, "rogue", "rogue-ca", "extendedKeyUsage=clientAuth")
    return Pki(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "agent.pem",
        client_key=folder / "agent.key",
        rogue_cert=folder / "rogue.pem",
        rogue_key=folder / "rogue.key",
    )


def _client_context(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def send_tls(port: int, packets: list[bytes], context: ssl.SSLContext) -> None:
    """Like an agent: one TLS stream, every packet, then close_notify and close."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        sock.sendall(b"".join(packets))
        sock.unwrap()


def refused(port: int, packets: list[bytes], context: ssl.SSLContext) -> bool:
    """True when the receiver ends the TLS session without reading a byte of HEP.

    With TLS 1.3 the client's handshake completes before the server has checked the
    client certificate; the refusal then arrives as an alert (or EOF) on the first read.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as sock:
                sock.sendall(b"".join(packets))
                return sock.recv(1) == b""
        except (ssl.SSLError, ConnectionError):
            return True


def wait_for_metric(
    receiver: ReceiverProcess, name: str, labels: dict[str, str], value: float, timeout: float = 10
) -> None:
    deadline = time.monotonic() + timeout
    while receiver.metric(name, labels) != value:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} != {value}: {receiver.metric(name, labels)}")
        time.sleep(0.05)


def _tls_args(pki: Pki, port: int, *extra: str) -> list[str]:
    return [
        "--tls", f"127.0.0.1:{port}",
        "--tls-cert", str(pki.server_cert),
        "--tls-key", str(pki.server_key),
        *extra,
    ]


def test_hep_over_tls_reaches_kafka_and_a_plaintext_sender_is_counted(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path, pki: Pki
) -> None:
    packets, expected = load_vectors("kamailio_hep3_tcp")
    tls_port = free_tcp_port()
    with run_receiver_process(
        tmp_path, kafka.bootstrap_servers, topic_name, *_tls_args(pki, tls_port)
    ) as receiver:
        started = receiver.wait_for_event("receiver_started")
        assert started["tls"] == [f"127.0.0.1:{tls_port}"]
        assert started["tls_client_cert_required"] is False
        receiver.wait_for_event("broker_connected")
        assert receiver.metric("hep_ingest_tcp_connections_closed_total", HANDSHAKE) == 0

        # A plaintext HEP sender on the TLS port: a failed handshake, counted and logged.
        send_tcp(tls_port, packets)
        wait_for_metric(receiver, "hep_ingest_tcp_connections_closed_total", HANDSHAKE, 1)
        failed = receiver.wait_for_event("tls_handshake_failed")
        assert failed["failures_since_last_sample"] == 1
        assert receiver.process.poll() is None

        send_tls(tls_port, packets, _client_context(pki))
        records = run(consume(kafka.bootstrap_servers, topic_name, 34))
        assert len(records) == 34
        _match(records, expected["packets"])
        assert Counter(record["transport"] for _, record in records) == {"tls": 34}
        assert {record["sender_ip"] for _, record in records} == {"127.0.0.1"}
        assert receiver.metric("hep_ingest_packets_received_total", {"transport": "tls"}) == 34
        assert receiver.metric("hep_ingest_packets_received_total", {"transport": "tcp"}) == 0
        assert receiver.metric("hep_ingest_packets_published_total") == 34
        assert receiver.metric("hep_ingest_packets_invalid_total") == 0
        assert receiver.metric("hep_ingest_tcp_connections_closed_total", HANDSHAKE) == 1
        assert receiver.terminate() == 0


def test_client_ca_requires_a_certificate_it_signed(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path, pki: Pki
) -> None:
    packets, expected = load_vectors("kamailio_hep3_tcp")
    tls_port = free_tcp_port()
    args = _tls_args(pki, tls_port, "--tls-client-ca", str(pki.ca), "--log-level", "debug")
    with run_receiver_process(tmp_path, kafka.bootstrap_servers, topic_name, *args) as receiver:
        assert receiver.wait_for_event("receiver_started")["tls_client_cert_required"] is True
        receiver.wait_for_event("broker_connected")

        assert refused(tls_port, packets, _client_context(pki))
        wait_for_metric(receiver, "hep_ingest_tcp_connections_closed_total", HANDSHAKE, 1)
        assert refused(tls_port, packets, _client_context(pki, pki.rogue_cert, pki.rogue_key))
        wait_for_metric(receiver, "hep_ingest_tcp_connections_closed_total", HANDSHAKE, 2)
        assert receiver.metric("hep_ingest_packets_received_total", {"transport": "tls"}) == 0

        send_tls(tls_port, packets, _client_context(pki, pki.client_cert, pki.client_key))
        records = run(consume(kafka.bootstrap_servers, topic_name, 34, settle=2.0))
        assert len(records) == 34  # nothing from the refused clients
        _match(records, expected["packets"])
        assert Counter(record["transport"] for _, record in records) == {"tls": 34}
        connected = receiver.wait_for_event("tls_connected")
        assert connected["client_subject"] == {"commonName": "agent"}
        assert receiver.process.poll() is None
        assert receiver.terminate() == 0


def test_two_workers_share_the_tls_port(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path, pki: Pki
) -> None:
    packets, _ = load_vectors("kamailio_hep3_tcp")
    tls_port = free_tcp_port()
    args = _tls_args(pki, tls_port, "--workers", "2", "--receiver-id", "rx")
    workers: list[int] = []
    with run_receiver_process(tmp_path, kafka.bootstrap_servers, topic_name, *args) as receiver:
        try:
            wait_for_events(receiver, "receiver_started", 2)  # both bound the TLS port
            wait_for_events(receiver, "broker_connected", 2)
            workers = child_pids(receiver.process.pid)
            assert len(workers) == 2
            for _ in range(4):
                send_tls(tls_port, packets, _client_context(pki))
            records = run(consume(kafka.bootstrap_servers, topic_name, 4 * 34))
            assert len(records) == 4 * 34
            assert Counter(record["transport"] for _, record in records) == {"tls": 4 * 34}
            assert {record["receiver_id"] for _, record in records} <= {"rx-w0", "rx-w1"}
            tls = metric_sum(receiver, "hep_ingest_packets_received_total", 2, transport="tls")
            assert sum(tls) == 4 * 34
            assert receiver.terminate() == 0
        finally:
            for pid in workers:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
