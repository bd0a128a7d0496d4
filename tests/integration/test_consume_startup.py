"""`hep-ingest consume` and its retries: a stop request ends them at start and mid-run,
a wrong setting is one line and exit 2. Real processes, the real broker and the real
PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from pipeline.embedded import EmbeddedKafka, EmbeddedPostgres
from pipeline.postgres.sink import RetryPolicy as SinkRetryPolicy
from tests.conftest import create_topic
from tests.integration.consume_support import (
    generated_sip,
    log_events,
    publish,
    start_consumer,
    stop_process,
    tail,
    wait_for_rows,
)
from tests.integration.lifecycle_support import (
    closed_port_address,
    signal_and_time,
    start_up,
    wait_for_events,
)
from tests.integration.receiver_process import run_receiver_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# How long after SIGTERM a consumer that is still retrying its start may take to exit.
STOP_WITHIN_S = 3.0
# The same for `up`, which stops its receiver and then its consumer, each a process.
UP_STOP_WITHIN_S = 15.0
# The retry a stop request is sent after. The backoff (0.2 s, doubling, plus jitter)
# has grown to about 1.6 s by then: the state a fixed 3 s wait after the first retry
# used to reach, without waiting for it.
SEVERAL_RETRIES = 4
# A configuration error must not be retried: it ends well before this (the old code
# retried it forever).
CONFIG_ERROR_WITHIN_S = 20.0
FAST = ("--batch-size", "1000", "--flush-interval", "0.2")


def assert_no_traceback(log: Path) -> None:
    """No uncaught exception printed (a library's log event may carry one in a field)."""
    crashes = [line for line in log.read_text().splitlines() if line.startswith("Traceback")]
    assert not crashes, tail(log)


def assert_stops_promptly(
    process: subprocess.Popen[bytes], log: Path, signum: signal.Signals = signal.SIGTERM
) -> None:
    code, took = signal_and_time(process, signum)
    assert took < STOP_WITHIN_S, f"took {took:.1f}s to stop:\n{tail(log)}"
    assert code == 0, tail(log)
    assert_no_traceback(log)


def event_time(log: Path, name: str, **fields: object) -> float:
    """The timestamp (epoch seconds) of the first event `name` with `fields` in `log`."""
    for event in log_events(log):
        if event.get("event") == name and all(event.get(k) == v for k, v in fields.items()):
            return datetime.fromisoformat(event["ts"]).timestamp()
    raise AssertionError(f"no {name} {fields} event:\n{tail(log)}")


def assert_backoff_grows(retries: list[dict[str, object]]) -> None:
    """Consecutive attempts of one operation, each sleeping the sink policy's
    exponential part at least and that plus its jitter at most. (Comparing two sleeps
    with each other is a coin toss: the jitter, up to 1 s, exceeds the first steps.)"""
    attempts = [r["attempt"] for r in retries[:SEVERAL_RETRIES]]
    assert attempts == list(range(1, SEVERAL_RETRIES + 1)), retries
    sleeps = [float(str(r["sleep"])) for r in retries[:SEVERAL_RETRIES]]
    policy = SinkRetryPolicy()
    for attempt, sleep in enumerate(sleeps, start=1):
        exponential = min(policy.initial * 2 ** (attempt - 1), policy.maximum)
        assert exponential - 0.01 <= sleep <= exponential + policy.jitter + 0.01, sleeps


def assert_stopped_before_start(log: Path) -> None:
    stopped = [e for e in log_events(log) if e.get("event") == "consumer_stopped_before_start"]
    assert len(stopped) == 1, tail(log)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_ends_postgres_retries_at_start(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path, signum: signal.Signals
) -> None:
    log = tmp_path / "consumer.log"
    dsn = f"postgresql://postgres@{closed_port_address()}/hep"
    process = start_consumer(kafka.bootstrap_servers, topic_name, dsn, log)
    try:
        retries = wait_for_events(log, "write_retry", SEVERAL_RETRIES, process, 30)
        assert_backoff_grows(retries)
        assert process.poll() is None, tail(log)
        assert_stops_promptly(process, log, signum)
        assert_stopped_before_start(log)
    finally:
        stop_process(process, timeout=5)


def test_sigterm_ends_broker_retries_at_start(
    database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    log = tmp_path / "consumer.log"
    process = start_consumer(closed_port_address(), topic_name, database_dsn, log)
    try:
        wait_for_events(log, "dead_letter_retry", SEVERAL_RETRIES, process, 60)
        assert process.poll() is None, tail(log)
        assert_stops_promptly(process, log)
        assert_stopped_before_start(log)
    finally:
        stop_process(process, timeout=5)


def run_to_exit(
    bootstrap_servers: str, topic: str, dsn: str, tmp_path: Path, *extra: str
) -> tuple[int, list[str], float]:
    """Run a consumer that should fail at start: (exit code, stderr lines, seconds)."""
    log = tmp_path / "consumer.log"
    started = time.monotonic()
    process = start_consumer(bootstrap_servers, topic, dsn, log, *extra)
    try:
        code = process.wait(CONFIG_ERROR_WITHIN_S)
    except subprocess.TimeoutExpired as exc:
        stop_process(process, timeout=5)
        raise AssertionError(
            f"still running after {CONFIG_ERROR_WITHIN_S}s:\n{tail(log)}"
        ) from exc
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return code, lines, time.monotonic() - started


def assert_one_line_exit_2(code: int, lines: list[str], *needles: str) -> None:
    text = "\n".join(lines)
    assert code == 2, text
    assert "Traceback" not in text
    assert len(lines) == 1, text
    for needle in needles:
        assert needle in lines[0], text


def test_garbage_dsn_is_one_line_and_exit_2(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    code, lines, _ = run_to_exit(kafka.bootstrap_servers, topic_name, "not-a-dsn", tmp_path)
    assert_one_line_exit_2(code, lines, "not-a-dsn", "DSN")


def test_unknown_database_is_one_line_and_exit_2(
    kafka: EmbeddedKafka, postgres: EmbeddedPostgres, topic_name: str, tmp_path: Path
) -> None:
    dsn = postgres.dsn.rsplit("/", 1)[0] + "/no_such_database"
    code, lines, _ = run_to_exit(kafka.bootstrap_servers, topic_name, dsn, tmp_path)
    assert_one_line_exit_2(code, lines, "no_such_database", "does not exist")


def test_unknown_role_is_one_line_and_exit_2(
    kafka: EmbeddedKafka, postgres: EmbeddedPostgres, topic_name: str, tmp_path: Path
) -> None:
    dsn = f"postgresql://no_such_role:secret@{postgres.host}:{postgres.port}/{postgres.database}"
    code, lines, _ = run_to_exit(kafka.bootstrap_servers, topic_name, dsn, tmp_path)
    assert_one_line_exit_2(code, lines, "no_such_role")
    assert "secret" not in lines[0], "the password must not be printed"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A 127.0.0.1 port another socket listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_metrics_port_in_use_is_one_line_and_exit_2(
    kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path, busy_port: int
) -> None:
    address = f"127.0.0.1:{busy_port}"
    code, lines, _ = run_to_exit(
        kafka.bootstrap_servers, topic_name, database_dsn, tmp_path, "--metrics", address
    )
    assert_one_line_exit_2(code, lines, address)


# -- mid-run: a stop request ends the retries of a server that went away -------------


async def test_sigterm_ends_postgres_retries_mid_run_and_loses_nothing(
    kafka: EmbeddedKafka, fresh_postgres: EmbeddedPostgres, topic_name: str, tmp_path: Path
) -> None:
    await create_topic(kafka.bootstrap_servers, topic_name, partitions=2)
    first, second = generated_sip(2000, prefix="before"), generated_sip(2000, prefix="during")
    await publish(kafka.bootstrap_servers, topic_name, first)
    dsn = fresh_postgres.dsn
    log = tmp_path / "consumer.log"
    process = start_consumer(kafka.bootstrap_servers, topic_name, dsn, log, *FAST)
    try:
        assert await wait_for_rows(dsn, len(first), 60, process) == (2000, 2000), tail(log)
        await asyncio.to_thread(fresh_postgres.stop, "fast")
        await publish(kafka.bootstrap_servers, topic_name, second)
        await asyncio.to_thread(
            wait_for_events, log, "write_retry", SEVERAL_RETRIES, process, 60
        )
        assert process.poll() is None, tail(log)
        await asyncio.to_thread(assert_stops_promptly, process, log)
    finally:
        stop_process(process, timeout=5)
    # Nothing was committed past what is stored: a new consumer stores the rest, once.
    await asyncio.to_thread(fresh_postgres.start)
    process = start_consumer(kafka.bootstrap_servers, topic_name, dsn, log, *FAST)
    try:
        assert await wait_for_rows(dsn, 4000, 60, process) == (4000, 4000), tail(log)
    finally:
        assert stop_process(process) == 0, tail(log)


async def test_sigterm_ends_broker_retries_mid_run(
    fresh_kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    await create_topic(fresh_kafka.bootstrap_servers, topic_name, partitions=2)
    await publish(fresh_kafka.bootstrap_servers, topic_name, generated_sip(2000))
    log = tmp_path / "consumer.log"
    process = start_consumer(fresh_kafka.bootstrap_servers, topic_name, database_dsn, log, *FAST)
    try:
        assert await wait_for_rows(database_dsn, 2000, 60, process) == (2000, 2000), tail(log)
        await asyncio.to_thread(fresh_kafka.stop)
        await asyncio.sleep(4)  # the consumer finds the broker gone and retries
        assert process.poll() is None, tail(log)
        await asyncio.to_thread(assert_stops_promptly, process, log)
    finally:
        stop_process(process, timeout=5)


def test_up_stops_promptly_while_its_consumer_cannot_reach_the_broker(
    database_dsn: str, tmp_path: Path
) -> None:
    """`up`'s consumer retries its start like `consume`; the stop cancels it there too."""
    log = tmp_path / "up.log"
    process = start_up(
        tmp_path / "data", log, "--bootstrap-servers", closed_port_address(),
        "--dsn", database_dsn, "--log-format", "json", "--log-level", "info",
    )
    try:
        wait_for_events(log, "dead_letter_retry", SEVERAL_RETRIES, process, 60)
        assert process.poll() is None, tail(log)
        code, took = signal_and_time(process)
        # `up` stops its receiver, then its consumer: two processes end one after the
        # other, the consumer at --storage-nice. On a loaded machine that takes longer
        # than one stop (4-5 s seen beside two busy loops), so the whole exit only has
        # to come well before a retry loop that ignores the stop would let it; the
        # consumer's own answer to its stop is timed from its log, as for `consume`.
        assert took < UP_STOP_WITHIN_S, f"took {took:.1f}s to stop:\n{tail(log)}"
        assert code == 0, tail(log)
        assert_no_traceback(log)
        asked = event_time(log, "child_exited", child="receiver")  # then the consumer's turn
        stopped = event_time(log, "consumer_stopped_before_start")
        assert stopped - asked < STOP_WITHIN_S, f"{stopped - asked:.1f}s\n{tail(log)}"
    finally:
        stop_process(process, timeout=5)


def test_receive_stops_promptly_while_the_broker_is_unreachable(
    tmp_path: Path, topic_name: str
) -> None:
    """The receiver's publisher retries in the background; the stop is not held by it."""
    with run_receiver_process(tmp_path, closed_port_address(), topic_name) as receiver:
        receiver.wait_for_event("broker_unreachable")
        # Retries until the backoff (0.05 s, doubling) has reached its 0.5 s maximum.
        deadline = time.monotonic() + 30
        while receiver.metric("hep_ingest_publish_retries_total") < 6:
            assert time.monotonic() < deadline, receiver.log()
            time.sleep(0.05)
        code, took = signal_and_time(receiver.process)
        assert took < STOP_WITHIN_S, f"took {took:.1f}s to stop:\n{receiver.log}"
        assert code == 0, receiver.log
