"""`hep-ingest consume --workers 2`: two consumer processes in one group, one supervisor.

Real broker, real PostgreSQL: the workers split a 4-partition topic, store every
record exactly once, serve /metrics on the --metrics port + K, and SIGTERM to the
supervisor stops both (exit 0) without leaving a process behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from processes import alive, child_pids

from pipeline.embedded import EmbeddedKafka, free_tcp_port
from tests.conftest import create_topic
from tests.integration.consume_support import (
    TEST_SESSION_TIMEOUT,
    generated_sip,
    log_events,
    metric,
    publish,
    start_consumer,
    stop_process,
    tail,
    wait_for_rows,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

N = 5000
FAST = ("--batch-size", "500", "--flush-interval", "0.2")


def two_free_ports() -> int:
    """A port P such that P and P + 1 are both free now."""
    for _ in range(50):
        base = free_tcp_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise AssertionError("no two consecutive free ports")


async def test_two_workers_split_the_partitions_and_stop_cleanly(
    kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    await create_topic(kafka.bootstrap_servers, topic_name, partitions=4)
    log = tmp_path / "consume.log"
    port = two_free_ports()
    process = start_consumer(
        kafka.bootstrap_servers, topic_name, database_dsn, log,
        "--workers", "2", "--metrics", f"127.0.0.1:{port}", *FAST,
    )
    workers: list[int] = []
    try:
        # Both workers own partitions (worker K's /metrics is on port + K) ...
        deadline = time.monotonic() + 60
        assigned: list[float | None] = [None, None]
        while time.monotonic() < deadline:
            assigned = [
                metric(port + k, "hep_ingest_consumer_assigned_partitions") for k in (0, 1)
            ]
            if all(a for a in assigned) and sum(a or 0 for a in assigned) == 4:
                break
            assert process.poll() is None, tail(log)
            await asyncio.sleep(0.2)
        assert all(a for a in assigned) and sum(a or 0 for a in assigned) == 4, (
            f"{assigned}\n{tail(log)}"
        )
        workers = child_pids(process.pid)
        assert len(workers) == 2, workers

        # ... so both store part of what is published, and every record lands once.
        await publish(kafka.bootstrap_servers, topic_name, generated_sip(N))
        assert await wait_for_rows(database_dsn, N, 60, process) == (N, N), tail(log)
        consumed = [metric(port + k, "hep_ingest_records_consumed_total") for k in (0, 1)]
        assert all(c for c in consumed) and sum(c or 0 for c in consumed) == N, consumed

        events = log_events(log)
        started = [e for e in events if e.get("event") == "workers_started"]
        assert len(started) == 1 and started[0]["workers"] == 2, tail(log)
        client_ids = {e["client_id"] for e in events if e.get("event") == "consumer_started"}
        assert len(client_ids) == 2, client_ids
        # --session-timeout (start_consumer's) reaches every worker the supervisor starts.
        timeouts = {e["session_timeout"] for e in events if e.get("event") == "consumer_started"}
        assert timeouts == {TEST_SESSION_TIMEOUT}, timeouts

        assert stop_process(process, timeout=40) == 0, tail(log)
        assert not [pid for pid in workers if alive(pid)]
        assert not child_pids(process.pid)
        exited = [e for e in log_events(log) if e.get("event") == "worker_exited"]
        assert sorted(e["worker"] for e in exited) == [0, 1], tail(log)
        assert all(e["exit_code"] == 0 and not e["unexpected"] for e in exited), exited
    finally:
        stop_process(process)
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_workers_metrics_port_must_be_fixed(tmp_path: Path) -> None:
    process = start_consumer(
        "127.0.0.1:1", "t", "postgresql://x@127.0.0.1:1/x", tmp_path / "c.log",
        "--workers", "2", "--metrics", "127.0.0.1:0",
    )
    assert process.wait(60) == 2, tail(tmp_path / "c.log")
