"""`hep-ingest up` as a user runs it: one command from HEP on a socket to rows.

The command runs as a subprocess on free ports with a fresh data directory (embedded
tansu and PostgreSQL). Real Kamailio HEP3 goes in over UDP; all 170 packets must come
out as rows through the DSN the command printed; SIGINT must stop it with exit code 0
and leave no broker or database process behind. A second `up` on the same directory
finds the rows again, and `hep-ingest calls` finds the database with no flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import consume_support
import pytest
from conftest import load_vectors
from consume_support import send_paced, sip_packet
from lifecycle_support import closed_port_address
from prometheus_client.parser import text_string_to_metric_families
from receiver_process import kernel_drops

from pipeline.embedded import free_tcp_port, free_udp_port
from pipeline.embedded.state import embedded_database
from pipeline.hep.encode import encode_hep3
from tests.implementations import clean_env
from tests.integration.consume_support import TEST_SESSION_TIMEOUT

pytestmark = pytest.mark.integration

HEP_INGEST = str(Path(sys.executable).with_name("hep-ingest"))
DSN_PATTERN = re.compile(r"^PostgreSQL\s+(postgresql://\S+)")
KAFKA_PATTERN = re.compile(r"^Kafka\s+(\S+):(\d+)\s")


class Up:
    """A running `hep-ingest up` whose stdout is collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [HEP_INGEST, "up", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._pump, args=(self.process.stdout, self.lines)),
            threading.Thread(target=self._pump, args=(self.process.stderr, self.errors)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    def _pump(self, stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                into.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    match = pattern.search(line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(
                        f"no line matching {pattern.pattern!r} (exit {self.process.poll()})\n"
                        f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
                    )
                self._changed.wait(min(left, 0.2))

    def interrupt(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        for reader in self._readers:
            reader.join(5)
        return code

    @property
    def stdout(self) -> str:
        return "\n".join(self.lines)

    @property
    def stderr(self) -> str:
        return "\n".join(self.errors)


def processes_mentioning(*needles: str) -> list[str]:
    """Command lines of live processes that mention any needle (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        if cmdline and any(needle in cmdline for needle in needles):
            found.append(f"{entry.name}: {cmdline}")
    return found


def children(pid: int) -> dict[int, str]:
    """The live child processes of `pid`: pid -> command line (Linux /proc)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            pids = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, pids):
            with contextlib.suppress(OSError):
                raw = Path(f"/proc/{child}/cmdline").read_bytes()
                found[child] = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def child_running(up: Up, subcommand: str) -> int:
    """The pid of `up`'s `hep-ingest <subcommand>` child."""
    matches = [pid for pid, cmdline in children(up.process.pid).items()
               if f" -m pipeline {subcommand} " in cmdline]  # fmt: skip
    assert len(matches) == 1, children(up.process.pid)
    return matches[0]


def nice_of(pid: int) -> int:
    """Field 19 of /proc/PID/stat (after the parenthesised command name)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[16])


async def _count_rows(dsn: str) -> int:
    """Rows across every HEP capture table (a parent counts its partitions)."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT relname FROM pg_class WHERE relkind IN ('p', 'r') AND NOT relispartition"
            " AND relname LIKE 'hep\\_proto\\_%'"
        )
        total = 0
        for table in tables:
            total += await conn.fetchval(f'SELECT count(*) FROM "{table["relname"]}"')
        return total
    finally:
        await conn.close()


def count_rows(dsn: str) -> int:
    return asyncio.run(_count_rows(dsn))


def wait_for_rows(dsn: str, expected: int, up: Up, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    rows = -1
    while time.monotonic() < deadline:
        assert up.process.poll() is None, f"up exited early\n{up.stdout}\n{up.stderr}"
        rows = count_rows(dsn)
        if rows >= expected:
            return rows
        time.sleep(0.5)
    raise AssertionError(f"{rows} rows after {timeout}s, expected {expected}\n{up.stderr}")


def send_udp(packets: list[bytes], port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for packet in packets:
            sock.sendto(packet, ("127.0.0.1", port))
            time.sleep(0.001)


def capture_day(expected: dict[str, Any]) -> str:
    """ISO time one day before the first packet of a vector set."""
    first = min(p["ts_sec"] for p in expected["packets"])
    return datetime.fromtimestamp(first - 86400, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def up_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = clean_env()
    env["HEP_INGEST_DATA_DIR"] = str(tmp_path / "unused-default")  # --data-dir must win
    env["PYTHONUNBUFFERED"] = "1"
    # Read by up's `consume` children: tansu holds a joining member for half of it.
    env["HEP_INGEST_SESSION_TIMEOUT"] = str(TEST_SESSION_TIMEOUT)
    yield env


def run_calls(
    env: dict[str, str], data_dir: Path, expected: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HEP_INGEST, "calls"],
        # No flags: the data directory alone leads to the database. The window is
        # widened because the capture's timestamps are fixed and `calls` looks at the
        # last day by default.
        env={**env, "HEP_INGEST_DATA_DIR": str(data_dir),
             "HEP_INGEST_CALLS_SINCE": capture_day(expected)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_up_stores_kamailio_hep_and_stops_clean(tmp_path: Path, up_env: dict[str, str]) -> None:
    packets, expected = load_vectors("kamailio_hep3_udp")
    assert len(packets) == 170
    data_dir = tmp_path / "data"
    udp_port, tcp_port = free_udp_port(), free_tcp_port()
    args = [
        "--data-dir", str(data_dir),
        "--udp", f"127.0.0.1:{udp_port}",
        "--tcp", f"127.0.0.1:{tcp_port}",
        "--kafka-port", "0",
        "--pg-port", "0",
        "--status-interval", "0.5",
    ]  # fmt: skip

    first = Up(args, up_env)
    try:
        dsn = first.wait_for_line(DSN_PATTERN, 180).group(1)
        kafka_port = first.wait_for_line(KAFKA_PATTERN, 1).group(2)
        assert f"HEP UDP     127.0.0.1:{udp_port}" in first.stdout
        assert f"HEP TCP     127.0.0.1:{tcp_port}" in first.stdout
        send_udp(packets, udp_port)
        assert wait_for_rows(dsn, 170, first) == 170
        # The live status line (a plain line when stdout is not a terminal).
        first.wait_for_line(re.compile(r"^status: received 170  published 170  stored 170"), 20)
    finally:
        code = first.interrupt()
    assert code == 0, f"exit {code}\n{first.stderr}"
    leftovers = processes_mentioning(str(data_dir), f"127.0.0.1:{kafka_port}")
    assert leftovers == [], leftovers

    # With `up` stopped, `hep-ingest calls` (no flags) starts the data directory's
    # database for the one command, finds the calls, and stops it again.
    invite_call_ids = {
        p["sip"]["call_id"]
        for p in expected["packets"]
        if (p.get("sip") or {}).get("method") == "INVITE"
    }
    calls = run_calls(up_env, data_dir, expected)
    assert calls.returncode == 0, calls.stderr
    assert invite_call_ids and any(cid in calls.stdout for cid in invite_call_ids), calls.stdout
    assert processes_mentioning(str(data_dir)) == []
    with embedded_database(data_dir) as stopped_dsn:
        assert stopped_dsn == dsn
        assert count_rows(stopped_dsn) == 170
    assert processes_mentioning(str(data_dir)) == []

    # The data directory keeps the rows; the second run reuses the remembered port,
    # so the DSN a user pasted into psql still works.
    second = Up(["--data-dir", str(data_dir), "--udp", f"127.0.0.1:{udp_port}", "--tcp",
                 f"127.0.0.1:{tcp_port}"], up_env)  # fmt: skip
    try:
        assert second.wait_for_line(DSN_PATTERN, 180).group(1) == dsn
        second_kafka_port = second.wait_for_line(KAFKA_PATTERN, 1).group(2)
        assert count_rows(dsn) == 170
        calls = run_calls(up_env, data_dir, expected)
        assert calls.returncode == 0, calls.stderr
        assert invite_call_ids and any(cid in calls.stdout for cid in invite_call_ids), calls.stdout
    finally:
        code = second.interrupt()
    assert code == 0, f"exit {code}\n{second.stderr}"
    assert "status: received 0" in second.stdout  # the final status line
    leftovers = processes_mentioning(str(data_dir), f"127.0.0.1:{second_kafka_port}")
    assert leftovers == [], leftovers


def test_up_uses_external_kafka_and_postgres_when_given(
    tmp_path: Path, up_env: dict[str, str], kafka: Any, database_dsn: str, topic_name: str
) -> None:
    packets, _ = load_vectors("kamailio_hep3_udp")
    data_dir = tmp_path / "data"
    udp_port, tcp_port = free_udp_port(), free_tcp_port()
    up = Up(["--data-dir", str(data_dir), "--udp", f"127.0.0.1:{udp_port}",
             "--tcp", f"127.0.0.1:{tcp_port}", "--bootstrap-servers", kafka.bootstrap_servers,
             "--dsn", database_dsn, "--topic", topic_name], up_env)  # fmt: skip
    try:
        assert up.wait_for_line(DSN_PATTERN, 120).group(1) == database_dsn
        kafka_line = up.wait_for_line(KAFKA_PATTERN, 1)
        assert f"{kafka_line.group(1)}:{kafka_line.group(2)}" == kafka.bootstrap_servers
        send_udp(packets, udp_port)
        assert wait_for_rows(database_dsn, 170, up) == 170
    finally:
        code = up.interrupt()
    assert code == 0, f"exit {code}\n{up.stderr}"
    # Nothing embedded was started: no server of ours, no cluster in the data directory.
    assert processes_mentioning(str(data_dir)) == []
    assert not (data_dir / "postgres" / "pgdata" / "PG_VERSION").exists()
    assert not list(data_dir.rglob("PG_VERSION"))


def test_up_status_line_shows_udp_socket_drops(tmp_path: Path, up_env: dict[str, str]) -> None:
    packets, _ = load_vectors("kamailio_hep3_udp")
    udp_port = free_udp_port()
    up = Up(
        ["--data-dir", str(tmp_path / "data"), "--udp", f"127.0.0.1:{udp_port}",
         "--tcp", f"127.0.0.1:{free_tcp_port()}", "--kafka-port", "0", "--pg-port", "0",
         "--status-interval", "0.5"],
        up_env,
    )  # fmt: skip
    try:
        up.wait_for_line(DSN_PATTERN, 180)
        # A stopped receiver reads nothing: its 16 MiB socket buffer fills and the kernel
        # drops the rest of a burst far larger than it.
        receiver = child_running(up, "receive")
        os.kill(receiver, signal.SIGSTOP)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for i in range(40_000):
                    sock.sendto(packets[i % len(packets)], ("127.0.0.1", udp_port))
            dropped = kernel_drops(udp_port)
        finally:
            os.kill(receiver, signal.SIGCONT)
        assert dropped > 0
        up.wait_for_line(re.compile(rf"^status: received {40_000 - dropped} .*"
                                    rf"  udp socket drops {dropped}$"), 120)
    finally:
        code = up.interrupt()
    assert code == 0, f"exit {code}\n{up.stderr}"


def wait_until_gone(needles: list[str], timeout: float = 60) -> list[str]:
    """What still runs once `needles` are gone, or after `timeout` (a niced PostgreSQL on
    a busy machine may take a while to exit)."""
    deadline = time.monotonic() + timeout
    while True:
        left = processes_mentioning(*needles)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.mark.parametrize("consume_workers", [1, 2])
def test_sigkill_of_up_leaves_no_server_behind(
    tmp_path: Path, up_env: dict[str, str], consume_workers: int
) -> None:
    data_dir = tmp_path / "data"
    args = [
        "--data-dir", str(data_dir),
        "--udp", f"127.0.0.1:{free_udp_port()}",
        "--tcp", f"127.0.0.1:{free_tcp_port()}",
        "--kafka-port", "0",
        "--pg-port", "0",
        "--consume-workers", str(consume_workers),
    ]  # fmt: skip
    first = Up(args, up_env)
    try:
        dsn = first.wait_for_line(DSN_PATTERN, 180).group(1)
        kafka_port = first.wait_for_line(KAFKA_PATTERN, 1).group(2)
        running = processes_mentioning(str(data_dir), f"127.0.0.1:{kafka_port}")
        # The receiver and the consumer processes are among them (their metrics files
        # are in the data directory).
        assert [p for p in running if " -m pipeline receive " in p], running
        consumers = [p for p in running if " -m pipeline consume " in p]
        # With workers: the supervisor and its workers (the kernel signals the
        # supervisor, which passes the stop on).
        assert len(consumers) == (1 if consume_workers == 1 else 1 + consume_workers), running
    finally:
        first.process.kill()  # SIGKILL: `up` runs no clean-up of its own
        first.process.wait(30)
    # The kernel signals tansu, the receiver and the consumer (parent-death signal);
    # the watchdog stops PostgreSQL.
    leftovers = wait_until_gone([str(data_dir), f"127.0.0.1:{kafka_port}"])
    assert leftovers == [], leftovers

    second = Up(args, up_env)
    try:
        assert second.wait_for_line(DSN_PATTERN, 180).group(1).startswith("postgresql://")
        count_rows(second.wait_for_line(DSN_PATTERN, 1).group(1))
    finally:
        code = second.interrupt()
    assert code == 0, f"exit {code}\n{second.stderr}"
    assert "stale_broker_stopped" not in second.stderr
    assert dsn.startswith("postgresql://")
    assert wait_until_gone([str(data_dir)]) == []


CAP_SYS_NICE = 23


def can_lower_nice() -> bool:
    """Whether this process (and so `up`'s receiver) may lower its niceness."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_NICE & 1)
    return os.geteuid() == 0


def postgres_processes(data_dir: Path) -> list[int]:
    """The embedded PostgreSQL's postmaster and the processes it forked."""
    pid_file = data_dir / "postgres" / "pgdata" / "postmaster.pid"
    postmaster = int(pid_file.read_text().split()[0])
    return [postmaster, *children(postmaster)]


def test_up_runs_capture_and_storage_as_processes_with_storage_at_lower_priority(
    tmp_path: Path, up_env: dict[str, str]
) -> None:
    data_dir = tmp_path / "data"
    metrics = f"127.0.0.1:{free_tcp_port()}"
    up = Up(
        ["--data-dir", str(data_dir), "--udp", f"127.0.0.1:{free_udp_port()}",
         "--tcp", f"127.0.0.1:{free_tcp_port()}", "--kafka-port", "0", "--pg-port", "0",
         "--receiver-priority", "3"],
        # For `up`, not its children: they would try to serve the same port.
        {**up_env, "HEP_INGEST_METRICS": metrics},
    )  # fmt: skip
    base = nice_of(os.getpid())
    storage = max(base, 10)  # --storage-nice's default; a niceness is only ever raised
    try:
        up.wait_for_line(DSN_PATTERN, 180)
        receiver, consumer = child_running(up, "receive"), child_running(up, "consume")
        assert len({up.process.pid, receiver, consumer}) == 3
        assert nice_of(up.process.pid) == base
        assert nice_of(consumer) == storage
        if can_lower_nice():
            assert nice_of(receiver) == -3
        else:  # one warning, and the receiver runs on
            assert nice_of(receiver) == base
            assert "nice_not_permitted" in up.stderr
        postgres = postgres_processes(data_dir)
        assert len(postgres) > 1  # the postmaster and its background processes
        assert {pid: nice_of(pid) for pid in postgres} == dict.fromkeys(postgres, storage)
        # `up`'s /metrics carries both children's metrics, each family once. It is
        # served once the banner is out: its last line says where.
        up.wait_for_line(re.compile(r"^Metrics\s+http://"), 30)
        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as response:
            text = response.read().decode()
        families = {f.name for f in text_string_to_metric_families(text)}
        assert {"hep_ingest_packets_received", "hep_ingest_consumer_lag_total"} <= families
        types = [line for line in text.splitlines() if line.startswith("# TYPE ")]
        assert len(types) == len(set(types)), text  # Prometheus refuses a second TYPE line
    finally:
        code = up.interrupt()
    assert code == 0, f"exit {code}\n{up.stderr}"
    leftovers = wait_until_gone([str(data_dir)])
    log = data_dir / "postgres" / "pgdata" / "server.log"
    assert leftovers == [], f"{leftovers}\n{up.stderr}\n{log.read_text()[-3000:]}"


STATUS = re.compile(r"^status: (.*)$")


def last_status(up: Up) -> dict[str, int]:
    """The figures of the last status line: {'received': N, 'udp socket drops': N, ...}."""
    lines = [m.group(1) for line in up.lines if (m := STATUS.match(line))]
    if not lines:
        return {}
    return {name: int(value) for name, value in
            (item.rsplit(" ", 1) for item in lines[-1].split("  "))}  # fmt: skip


def wait_for_status(
    up: Up, ok: Any, timeout: float, what: str = "status"
) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert up.process.poll() is None, f"up exited\n{up.stdout}\n{up.stderr}"
        status = last_status(up)
        if status and ok(status):
            return status
        time.sleep(0.2)
    raise AssertionError(f"{what}: last status {last_status(up)}\n{up.stderr[-3000:]}")


def test_up_loses_no_packet_while_postgres_is_stalled(
    tmp_path: Path, up_env: dict[str, str]
) -> None:
    """Storage stops (PostgreSQL paused) while HEP keeps coming: Kafka holds it, none lost."""
    data_dir = tmp_path / "data"
    udp_port = free_udp_port()
    total, warm_up, during_stall, rate = 20_000, 500, 14_000, 2_000
    packets = [encode_hep3(sip_packet(f"stall-{i}@up.test", i)) for i in range(total)]
    up = Up(
        ["--data-dir", str(data_dir), "--udp", f"127.0.0.1:{udp_port}",
         "--tcp", f"127.0.0.1:{free_tcp_port()}", "--kafka-port", "0", "--pg-port", "0",
         "--status-interval", "0.5"],
        up_env,
    )  # fmt: skip
    try:
        dsn = up.wait_for_line(DSN_PATTERN, 180).group(1)
        # Stored once first: the consumer then knows its offsets, so the lag it reports
        # during the stall is a figure, not an unknown.
        send_paced(packets[:warm_up], udp_port, rate)
        wait_for_status(up, lambda s: s["stored"] == warm_up and s["lag"] == 0, 120, "warm-up")
        postgres = postgres_processes(data_dir)
        for pid in postgres:
            os.kill(pid, signal.SIGSTOP)
        try:
            send_paced(packets[warm_up:during_stall], udp_port, rate)  # ~7 s
            stalled = wait_for_status(
                up, lambda s: s["published"] == during_stall and s["lag"] > 0, 60, "stalled"
            )
            # Nothing more could be stored: it waits in Kafka, as consumer lag.
            assert stalled["received"] == during_stall, stalled
            assert stalled["stored"] == warm_up, stalled
            assert stalled["lag"] <= during_stall - warm_up, stalled
        finally:
            for pid in postgres:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        # More while storage catches up on the backlog.
        send_paced(packets[during_stall:], udp_port, rate)  # ~3 s
        final = wait_for_status(
            up, lambda s: s["stored"] >= total and s["lag"] == 0, 180, "caught up"
        )
        assert final["received"] == final["published"] == final["stored"] == total, final
        assert "udp socket drops" not in final and final.get("dropped", 0) == 0, final
        assert kernel_drops(udp_port) == 0
        # Each packet stored exactly once: as many rows as distinct Call-IDs as sent.
        assert stored_call_ids(dsn) == (total, total)
    finally:
        code = up.interrupt()
    assert code == 0, f"exit {code}\n{up.stderr}"
    assert wait_until_gone([str(data_dir)]) == []


def test_up_exits_1_when_its_receiver_drops_accepted_records_at_shutdown(
    tmp_path: Path, up_env: dict[str, str], database_dsn: str
) -> None:
    """The receiver process's exit 1 (records it could not publish) is `up`'s exit 1."""
    packets, _ = load_vectors("kamailio_hep3_udp")
    udp_port = free_udp_port()
    up = Up(
        ["--data-dir", str(tmp_path / "data"), "--udp", f"127.0.0.1:{udp_port}",
         "--tcp", f"127.0.0.1:{free_tcp_port()}", "--bootstrap-servers", closed_port_address(),
         "--dsn", database_dsn, "--log-format", "json", "--log-level", "info"],
        # The receiver (up's child reads its command's variables) gives up publishing
        # after 3 s instead of the default 30: with no broker nothing can be published
        # in either, and the drop at shutdown is the same.
        {**up_env, "HEP_INGEST_SHUTDOWN_TIMEOUT": "3"},
    )  # fmt: skip
    try:
        # No broker: the receiver accepts and holds, the consumer never starts.
        deadline = time.monotonic() + 120
        while '"receiver_started"' not in up.stderr:
            assert time.monotonic() < deadline and up.process.poll() is None, up.stderr
            time.sleep(0.2)
        send_udp(packets[:20], udp_port)
        time.sleep(1)
    finally:
        code = up.interrupt(timeout=120)  # the receiver's --shutdown-timeout is 3 s here
    assert code == 1, f"exit {code}\n{up.stderr}"
    assert "hep-ingest up: stopped, 20 received records dropped at shutdown" in up.stderr


def descendants(pid: int) -> dict[int, str]:
    """Every live process below `pid` (children, their children, ...): pid -> command line."""
    found: dict[int, str] = {}
    parents = [pid]
    while parents:
        below = children(parents.pop())
        found.update(below)
        parents.extend(below)
    return found


def process_identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time) of a live process: a pid the kernel reuses is another process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if fields[0] == "Z":  # exited, not reaped yet: no longer running
        return None
    return pid, fields[19]


def survivors(identities: list[tuple[int, str]], timeout: float = 60) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [i for i in identities if process_identity(i[0]) == i]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def stored_call_ids(dsn: str) -> tuple[int, int]:
    return asyncio.run(consume_support.stored_call_ids(dsn))


def test_up_with_two_consume_workers_stores_once_and_leaves_no_process_behind(
    tmp_path: Path, up_env: dict[str, str]
) -> None:
    data_dir = tmp_path / "data"
    udp_port = free_udp_port()
    total = 3_000
    packets = [encode_hep3(sip_packet(f"workers-{i}@up.test", i)) for i in range(total)]
    up = Up(
        ["--data-dir", str(data_dir), "--udp", f"127.0.0.1:{udp_port}",
         "--tcp", f"127.0.0.1:{free_tcp_port()}", "--kafka-port", "0", "--pg-port", "0",
         "--status-interval", "0.5"],
        {**up_env, "HEP_INGEST_CONSUME_WORKERS": "2"},
    )  # fmt: skip
    stack: dict[int, str] = {}
    identities: list[tuple[int, str]] = []
    try:
        dsn = up.wait_for_line(DSN_PATTERN, 180).group(1)
        # up -> the receiver and the consume supervisor -> its two workers, in the
        # supervisor's process group.
        supervisor = child_running(up, "consume")
        workers = children(supervisor)
        assert len(workers) == 2 and all(" --worker-index " in c for c in workers.values()), workers
        assert {os.getpgid(pid) for pid in [supervisor, *workers]} == {supervisor}
        assert {nice_of(pid) for pid in workers} == {max(nice_of(os.getpid()), 10)}
        send_paced(packets, udp_port, 1_000)
        final = wait_for_status(
            up, lambda s: s["stored"] >= total and s["lag"] == 0, 180, "stored"
        )
        assert final["received"] == final["published"] == final["stored"] == total, final
        assert stored_call_ids(dsn) == (total, total)  # every packet once, none twice
        # Both workers stored a share (the topic has 12 partitions, split between them).
        for k in range(2):
            written = (data_dir / "run" / f"consumer-w{k}.prom").read_text()
            rows = sum(float(line.rpartition(" ")[2]) for line in written.splitlines()
                       if line.startswith("hep_ingest_rows_written_total"))  # fmt: skip
            assert 0 < rows < total, (k, rows)
        # Everything the stack runs: its children and theirs, PostgreSQL's processes
        # (forked by a daemonized postmaster) and the broker.
        kafka_pid = json.loads((data_dir / "stack.json").read_text())["kafka_pid"]
        stack = descendants(up.process.pid)
        stack.update(dict.fromkeys(postgres_processes(data_dir), "postgres"))
        stack[kafka_pid] = "tansu"
        # (A backend that served a query may have exited since.)
        identities = [i for pid in stack if (i := process_identity(pid)) is not None]
        assert len(identities) >= 2 + 2 + 2 + 1, stack
    finally:
        code = up.interrupt()
    assert code == 0, f"exit {code}\n{up.stderr}"
    left = survivors(identities)
    assert left == [], [stack[pid] for pid, _ in left]
