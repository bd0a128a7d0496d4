"""Helpers for tests that run the real `hep-ingest receive` process."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.embedded.net import free_tcp_port, free_udp_port
from pipeline.records import load_codec
from tests.implementations import clean_env


def hep_ingest_command() -> list[str]:
    script = Path(sys.executable).with_name("hep-ingest")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from pipeline.cli import main; main()"]


@dataclass
class ReceiverProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    udp_port: int
    tcp_port: int
    metrics_port: int
    _offset: int = field(default=0, init=False)

    def events(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def wait_for_event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("event") == name:
                    return event
            if self.process.poll() is not None:
                raise AssertionError(f"receiver exited {self.process.returncode}: {self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"no {name!r} event in {timeout}s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            sample, _, value = line.rpartition(" ")
            metric_name, _, label_text = sample.partition("{")
            if metric_name != name:
                continue
            found = dict(
                pair.split("=", 1) for pair in label_text.rstrip("}").split(",") if "=" in pair
            )
            found = {k: v.strip('"') for k, v in found.items()}
            if all(found.get(k) == v for k, v in (labels or {}).items()):
                total += float(value)
        return total

    def terminate(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def free_tcp_ports_in_a_row(count: int) -> int:
    """The first of `count` consecutive free loopback TCP ports."""
    return _free_ports_in_a_row(count, socket.SOCK_STREAM, free_tcp_port)


def free_udp_ports_in_a_row(count: int) -> int:
    """The first of `count` consecutive free loopback UDP ports."""
    return _free_ports_in_a_row(count, socket.SOCK_DGRAM, free_udp_port)


def _free_ports_in_a_row(count: int, kind: int, free_port: Callable[[], int]) -> int:
    while True:
        first = free_port()
        if first + count > 65536:
            continue
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    sock = held.enter_context(socket.socket(socket.AF_INET, kind))
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return first


# Ports taken between our probe and the receiver's bind (another process's ephemeral
# port, on a shared machine): the start is tried again on new ports, this many times.
_PORT_TRIES = 3


@contextlib.contextmanager
def run_receiver_process(
    tmp_path: Path,
    bootstrap_servers: str,
    topic: str,
    *extra: str,
    env_extra: dict[str, str] | None = None,
) -> Iterator[ReceiverProcess]:
    for attempt in range(1, _PORT_TRIES + 1):
        receiver = _start_receiver_process(tmp_path, bootstrap_servers, topic, extra, env_extra)
        try:
            receiver.wait_for_event("receiver_started")
            break
        except AssertionError:
            receiver.kill()
            # free_*_port only probes: the port is free when asked, not when the child
            # binds it. Only a port lost in that gap is retried; any other failure is
            # the test's.
            if attempt == _PORT_TRIES or not _lost_a_port(receiver):
                raise
    try:
        yield receiver
    finally:
        receiver.kill()


def _lost_a_port(receiver: ReceiverProcess) -> bool:
    return any(
        e.get("event") == "receiver_failed" and e.get("errno") == errno.EADDRINUSE
        for e in receiver.events()
    )


def _start_receiver_process(
    tmp_path: Path,
    bootstrap_servers: str,
    topic: str,
    extra: tuple[str, ...],
    env_extra: dict[str, str] | None,
) -> ReceiverProcess:
    udp_port, tcp_port = free_udp_port(), free_tcp_port()
    # Worker k serves its metrics on metrics_port + k: all of them must be free.
    workers = int(extra[extra.index("--workers") + 1]) if "--workers" in extra else 1
    metrics_port = free_tcp_ports_in_a_row(workers)
    log_path = tmp_path / f"receiver-{udp_port}.log"
    command = [
        *hep_ingest_command(),
        "receive",
        "--udp",
        f"127.0.0.1:{udp_port}",
        "--tcp",
        f"127.0.0.1:{tcp_port}",
        "--bootstrap-servers",
        bootstrap_servers,
        "--topic",
        topic,
        "--metrics",
        f"127.0.0.1:{metrics_port}",
        "--partitions",
        "4",
        "--progress-interval",
        "1",
        "--retry-initial-s",
        "0.05",
        "--retry-max-s",
        "0.5",
        *extra,
    ]
    env = clean_env()
    env.update(env_extra or {})
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return ReceiverProcess(process, log_path, udp_port, tcp_port, metrics_port)


def send_udp(port: int, packets: list[bytes], pause: float = 0.0005) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for packet in packets:
            sock.sendto(packet, ("127.0.0.1", port))
            time.sleep(pause)


def send_tcp(port: int, packets: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"".join(packets))


async def consume(
    bootstrap_servers: str, topic: str, expected: int, wait_s: float = 60.0, settle: float = 1.0
) -> list[tuple[bytes | None, dict[str, Any]]]:
    """Every record of `topic` (key, decoded value) once `expected` are there, or at timeout."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    codec = load_codec()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[tuple[bytes | None, dict[str, Any]]] = []
    try:
        deadline = time.monotonic() + wait_s
        partitions: set[int] | None = None
        while not partitions:
            partitions = await consumer._client._wait_on_metadata(topic)
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {topic} never appeared")
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        reached = None
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for messages in batches.values():
                for message in messages:
                    out.append((message.key, codec.decode(message.value)))
            if len(out) >= expected:
                reached = reached or time.monotonic()
                if time.monotonic() - reached >= settle:  # catch any surplus
                    break
    finally:
        await consumer.stop()
    return out


def kernel_drops(port: int) -> int:
    """The drops column of 127.0.0.1:`port` in /proc/net/udp (not the receiver's figure)."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == local:
                return int(fields[12])
    raise AssertionError(f"127.0.0.1:{port} not in /proc/net/udp")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def micros(value: Any) -> int:
    """Avro timestamp-micros as read back (a datetime, or an int) -> microseconds."""
    import datetime as dt

    if isinstance(value, dt.datetime):
        return (value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    return int(value)
