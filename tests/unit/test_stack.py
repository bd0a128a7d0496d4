"""`up`'s composition and its state file, with stand-in services (no servers started)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from pipeline.embedded import state
from pipeline.embedded.net import free_tcp_port
from pipeline.stack import (
    Endpoints,
    Services,
    StatusLine,
    Totals,
    UpSettings,
    format_banner,
    read_totals,
    run_stack,
)


def test_state_round_trip_and_default_dsn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(state.DATA_DIR_ENV, str(tmp_path))
    assert state.default_dsn() is None
    record = state.StackState(dsn="postgresql://postgres@127.0.0.1:5999/hep", pg_port=5999, pid=1)
    path = state.write_state(record)
    assert path == tmp_path / "stack.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert state.read_state() == record
    assert state.default_dsn() == "postgresql://postgres@127.0.0.1:5999/hep"
    # Unknown keys (a newer version wrote the file) are ignored, garbage reads as None.
    path.write_text(json.dumps({**record.to_json(), "future": 1}))
    assert state.read_state() == record
    path.write_text("not json")
    assert state.read_state() is None


def test_data_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(state.DATA_DIR_ENV, raising=False)
    assert state.resolve_data_dir().name == "hep-ingest"
    monkeypatch.setenv(state.DATA_DIR_ENV, str(tmp_path / "env"))
    assert state.resolve_data_dir() == tmp_path / "env"
    assert state.resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"


def test_ensure_embedded_database_needs_an_initialised_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(state.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(state.EmbeddedStateError, match="hep-ingest up"):
        state.ensure_embedded_database()
    # An `up` that ran on an external database: that DSN is the one to use.
    state.write_state(state.StackState(dsn="postgresql://db.example/hep"))
    assert state.ensure_embedded_database() == "postgresql://db.example/hep"


def test_choose_port_prefers_explicit_then_remembered() -> None:
    assert state.choose_port(6123, 7000) == 6123
    # 0: the embedded server takes a free port when it starts (and another if it lost it).
    assert state.choose_port(0, 7000) == 0
    assert state.choose_port(None, None) == 0
    free = free_tcp_port()
    assert state.choose_port(None, free) == free


def test_running_postgres_port_reads_postmaster_pid(tmp_path: Path) -> None:
    assert state.running_postgres_port(tmp_path) is None
    (tmp_path / "postmaster.pid").write_text(f"{os.getpid()}\n/data\n1700000000\n5544\n")
    assert state.running_postgres_port(tmp_path) == 5544
    (tmp_path / "postmaster.pid").write_text("999999999\n/data\n1700000000\n5544\n")
    assert state.running_postgres_port(tmp_path) is None


def test_read_totals_sums_labels_and_tolerates_missing_metrics() -> None:
    registry = CollectorRegistry()
    assert read_totals(registry) == Totals()
    received = Counter(
        "hep_ingest_packets_received", "", ["transport", "version"], registry=registry
    )
    received.labels("udp", "3").inc(5)
    received.labels("tcp", "3").inc(2)
    rows = Counter("hep_ingest_rows_written", "", ["table"], registry=registry)
    rows.labels("hep_proto_1_call").inc(4)
    rows.labels("hep_proto_1_registration").inc(3)
    Gauge("hep_ingest_consumer_lag_total", "", registry=registry).set(9)
    totals = read_totals(registry)
    assert (totals.received, totals.stored, totals.lag) == (7, 7, 9)


def test_status_line_rewrites_on_a_terminal_and_logs_otherwise() -> None:
    tty = io.StringIO()
    line = StatusLine(tty, tty=True)
    line.show(Totals(received=10))
    line.show(Totals(received=2))
    line.end()
    first, second = tty.getvalue().split("\r")[1:]
    assert first.startswith("received 10") and second.startswith("received 2")
    assert len(second.rstrip("\n")) == len(first)  # the longer old text is blanked
    plain = io.StringIO()
    StatusLine(plain, tty=False).show(Totals(stored=3, dead_lettered=1, lag=2))
    assert plain.getvalue() == (
        "status: received 0  published 0  stored 3  dead-lettered 1  lag 2\n"
    )


def test_banner_prints_addresses_and_the_full_dsn(tmp_path: Path) -> None:
    endpoints = Endpoints(
        udp=(("127.0.0.1", 9060),),
        tcp=(("::1", 9061),),
        bootstrap_servers="127.0.0.1:9092",
        dsn="postgresql://postgres@127.0.0.1:5433/hep",
        topic="hep",
        embedded_kafka=True,
        embedded_postgres=True,
        data_dir=tmp_path,
    )
    text = "\n".join(format_banner(endpoints))
    assert "HEP UDP     127.0.0.1:9060" in text
    assert "HEP TCP     [::1]:9061" in text
    assert "127.0.0.1:9092" in text
    assert "postgresql://postgres@127.0.0.1:5433/hep" in text


class FakeServices:
    """A receiver that publishes and a consumer that stores, both via metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter("hep_ingest_packets_published", "", registry=registry)
        self.stored = Counter("hep_ingest_rows_written", "", ["table"], registry=registry)
        self.events: list[str] = []
        self.migrated: list[str] = []

    async def migrate(self, dsn: str) -> list[str]:
        self.migrated.append(dsn)
        return []

    async def receiver(
        self, settings: object, registry: object, stop: asyncio.Event, ready: asyncio.Event
    ) -> None:
        ready.set()
        self.published.inc(3)
        await stop.wait()
        self.published.inc(2)  # flushed on stop
        self.events.append("receiver stopped")

    async def consumer(
        self, settings: object, registry: object, stop: asyncio.Event, ready: asyncio.Event
    ) -> None:
        ready.set()
        while not stop.is_set():
            missing = self.published._value.get() - self.stored.labels("t")._value.get()
            if missing:
                self.stored.labels("t").inc(missing)
            await asyncio.sleep(0.01)
        self.events.append("consumer stopped")


async def test_run_stack_drains_then_stops_in_order(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    fake = FakeServices(registry)
    settings = UpSettings(
        data_dir=tmp_path, bootstrap_servers="127.0.0.1:1", dsn="postgresql://x@127.0.0.1:2/hep"
    )
    stop = asyncio.Event()
    announced: list[Endpoints] = []
    out = io.StringIO()

    def announce(endpoints: Endpoints) -> None:
        announced.append(endpoints)
        stop.set()

    await asyncio.wait_for(
        run_stack(
            settings,
            registry,
            stop,
            announce=announce,
            status=StatusLine(out, tty=False),
            services=Services(fake.receiver, fake.consumer, fake.migrate),
        ),
        10,
    )
    assert fake.migrated == ["postgresql://x@127.0.0.1:2/hep"]
    assert announced and not announced[0].embedded_kafka and not announced[0].embedded_postgres
    assert fake.events == ["receiver stopped", "consumer stopped"]
    assert read_totals(registry).stored == 5  # what the receiver flushed on stop is stored
    assert out.getvalue().rstrip().endswith("stored 5  dead-lettered 0  lag 0")
    recorded = state.read_state(tmp_path)
    assert recorded is not None and recorded.dsn == settings.dsn and recorded.pid is None


async def test_run_stack_raises_a_failing_service_after_stopping_the_other(
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    fake = FakeServices(registry)

    async def broken_consumer(
        settings: object, registry: object, stop: asyncio.Event, ready: asyncio.Event
    ) -> None:
        raise RuntimeError("no database")

    settings = UpSettings(data_dir=tmp_path, bootstrap_servers="127.0.0.1:1", dsn="postgresql://x")
    with pytest.raises(RuntimeError, match="no database"):
        await asyncio.wait_for(
            run_stack(
                settings,
                registry,
                asyncio.Event(),
                services=Services(fake.receiver, broken_consumer, fake.migrate),
            ),
            10,
        )
    assert fake.events == ["receiver stopped"]


def test_a_second_up_on_a_running_data_dir_is_refused(tmp_path: Path) -> None:
    from pipeline.stack import Stack, StackError

    # The recorded `up` is alive (our parent process stands in for it).
    state.write_state(state.StackState(pid=os.getppid()), tmp_path)
    stack = Stack(UpSettings(data_dir=tmp_path, bootstrap_servers="x:1", dsn="postgresql://x"))
    with pytest.raises(StackError, match="already runs"):
        stack.start_servers()
    # A dead one is not in the way.
    state.write_state(state.StackState(pid=2**22 + 12345), tmp_path)
    endpoints = stack.start_servers()
    assert endpoints.dsn == "postgresql://x"
    stack.close()
    recorded = state.read_state(tmp_path)
    assert recorded is not None and recorded.pid is None and recorded.stopped_at


async def test_run_child_is_ready_when_its_metrics_file_appears_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    from pipeline.stack import ChildCommand, run_child

    metrics = tmp_path / "run" / "child.prom"
    metrics.parent.mkdir()
    metrics.write_text("stale\n")  # a previous run's: must not count as ready
    script = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "time.sleep(0.5)\n"
        f"pathlib.Path({str(metrics)!r}).write_text("
        "'# TYPE hep_ingest_packets_published counter\\nhep_ingest_packets_published_total 4\\n')\n"
        "time.sleep(60)\n"
    )
    command = ChildCommand("receiver", (sys.executable, "-c", script), dict(os.environ), metrics)
    registry, stop, ready = CollectorRegistry(), asyncio.Event(), asyncio.Event()
    child = asyncio.create_task(run_child(command, registry, stop, ready))
    await asyncio.wait_for(ready.wait(), 30)
    assert read_totals(registry).published == 4
    stop.set()
    await asyncio.wait_for(child, 30)  # exit 0 after SIGTERM: no error
    assert read_totals(registry).published == 4  # still readable after the exit


async def test_run_child_raises_when_the_child_exits_on_its_own(tmp_path: Path) -> None:
    from pipeline.stack import ChildCommand, ChildExited, run_child

    command = ChildCommand(
        "consumer", (sys.executable, "-c", "raise SystemExit(2)"), dict(os.environ),
        tmp_path / "consumer.prom",
    )  # fmt: skip
    ready = asyncio.Event()
    with pytest.raises(ChildExited, match="the consumer exited with code 2") as raised:
        await asyncio.wait_for(run_child(command, CollectorRegistry(), asyncio.Event(), ready), 30)
    assert raised.value.exit_code == 2 and not ready.is_set()


async def test_a_child_with_workers_is_ready_once_every_worker_wrote_its_metrics(
    tmp_path: Path,
) -> None:
    from pipeline.observability.metrics_file import worker_metrics_file
    from pipeline.stack import ChildCommand, run_child

    metrics = tmp_path / "run" / "consumer.prom"
    first, second = (worker_metrics_file(metrics, k) for k in range(2))
    family = '# TYPE hep_ingest_rows_written counter\nhep_ingest_rows_written_total{table="t"} '
    script = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        f"pathlib.Path({str(first)!r}).write_text({family + '2'!r})\n"
        "time.sleep(1)\n"
        f"pathlib.Path({str(second)!r}).write_text({family + '5'!r})\n"
        "time.sleep(60)\n"
    )
    command = ChildCommand(
        "consumer", (sys.executable, "-c", script), dict(os.environ), metrics, workers=2
    )
    assert command.metrics_files == (first, second)
    registry, stop, ready = CollectorRegistry(), asyncio.Event(), asyncio.Event()
    child = asyncio.create_task(run_child(command, registry, stop, ready))
    await asyncio.wait_for(ready.wait(), 30)
    assert read_totals(registry).stored == 7  # both workers, summed
    stop.set()
    await asyncio.wait_for(child, 30)


def test_up_runs_consume_workers_as_one_consume_child(tmp_path: Path) -> None:
    from pipeline.stack import consumer_command

    endpoints = Endpoints(
        udp=(), tcp=(), bootstrap_servers="127.0.0.1:1", dsn="postgresql://x", topic="hep",
        embedded_kafka=False, embedded_postgres=False, data_dir=tmp_path,
    )  # fmt: skip
    one = consumer_command(UpSettings(data_dir=tmp_path), endpoints)
    assert one.workers == 1 and one.metrics_files == (one.metrics_file,)
    three = consumer_command(UpSettings(data_dir=tmp_path, consume_workers=3), endpoints)
    assert three.argv[three.argv.index("--workers") + 1] == "3"
    assert [p.name for p in three.metrics_files] == [
        "consumer-w0.prom", "consumer-w1.prom", "consumer-w2.prom"
    ]


def test_up_passes_the_capture_filters_and_kpi_settings_to_its_consumer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.stack import consumer_command

    settings = UpSettings(data_dir=tmp_path, bootstrap_servers="127.0.0.1:1",
                          dsn="postgresql://x")
    endpoints = Endpoints(
        udp=(("127.0.0.1", 9060),), tcp=(), bootstrap_servers="127.0.0.1:1",
        dsn="postgresql://x", topic="hep", embedded_kafka=False, embedded_postgres=False,
        data_dir=tmp_path,
    )
    chosen = {
        "HEP_INGEST_SIP_KPI": "true",
        "HEP_INGEST_DISCARD_METHODS": "OPTIONS,NOTIFY",
        "HEP_INGEST_CENSOR_METHODS": "MESSAGE",
    }
    for name, value in chosen.items():
        monkeypatch.setenv(name, value)
    env = consumer_command(settings, endpoints).env
    assert {name: env.get(name) for name in chosen} == chosen
