"""`hep-ingest up`: the whole pipeline from one command, on embedded or given servers.

Composition only: the receiver, the consumer and the embedded servers know nothing of
each other; this module starts them in order and stops them in reverse.

Start: the embedded broker (tansu) unless bootstrap servers are given, the embedded
PostgreSQL under the data directory unless a DSN is given, the migrations, then the
receiver and one consumer, each a child process of its own (`hep-ingest receive` and
`hep-ingest consume`). Separate processes let the kernel schedule capture apart from
storage: the consumer and PostgreSQL run at a higher niceness (--storage-nice), so
the receiver gets the CPU first and a storage that falls behind grows the consumer
lag in Kafka instead of overflowing the UDP socket buffer (pipeline.priority).

The children are in process groups of their own (a Ctrl-C on the terminal reaches
`up` only, which stops them in order), die with `up` when it is killed (a
parent-death signal, pipeline.lifetime), and hand their metrics to `up` through files
(pipeline.observability.metrics_file), which `up`'s registry reads: the status line,
--metrics, the drain and the exit code see the children's counters.

Stop (the `stop` event, set by SIGINT/SIGTERM): the receiver is sent SIGTERM, stops
reading and flushes its backlog to Kafka; the consumer gets a bounded grace period to
store what was published (the embedded broker keeps its log in memory only), then is
sent SIGTERM, commits and stops; then the broker and PostgreSQL stop. A second signal
skips the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import site
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from prometheus_client import CollectorRegistry

from pipeline.embedded.state import (
    StackState,
    choose_port,
    kafka_dir,
    open_embedded_postgres,
    pid_alive,
    postgres_dir,
    read_state,
    write_state,
)
from pipeline.observability import get_logger

log = get_logger("pipeline.stack")

Address = tuple[str, int]


class StackError(RuntimeError):
    """`up` cannot start: a server failed to start or another `up` owns the data dir."""


@dataclass(frozen=True)
class UpSettings:
    data_dir: Path
    udp: tuple[Address, ...] = (("127.0.0.1", 9060),)
    tcp: tuple[Address, ...] = (("127.0.0.1", 9060),)
    bootstrap_servers: str | None = None
    dsn: str | None = None
    topic: str = "hep"
    auth_key: bytes | None = None
    # None: the port remembered from the previous `up`, else a free one. 0: a free one.
    kafka_port: int | None = None
    pg_port: int | None = None
    # How long the consumer may take to store what was published, once stopping.
    drain_timeout: float = 15.0
    group: str = "hep-ingest"
    # Niceness of the consumer and the embedded PostgreSQL: capture comes first.
    storage_nice: int = 10
    # The receiver runs at niceness -receiver_priority (needs CAP_SYS_NICE; 0: as inherited).
    receiver_priority: int = 0
    # The children log like `up`.
    log_level: str = "warning"
    log_format: str = "text"
    # The consumer's --custom-header / --a-leg-header rules, passed on as given.
    custom_headers: tuple[str, ...] = ()
    a_leg_headers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Endpoints:
    """Where the running stack listens; what `up` prints first."""

    udp: tuple[Address, ...]
    tcp: tuple[Address, ...]
    bootstrap_servers: str
    dsn: str
    topic: str
    embedded_kafka: bool
    embedded_postgres: bool
    data_dir: Path


@dataclass
class Totals:
    received: int = 0
    published: int = 0
    stored: int = 0
    dead_lettered: int = 0
    dropped: int = 0
    lag: int = 0
    udp_socket_drops: int = 0

    def line(self) -> str:
        text = (
            f"received {self.received}  published {self.published}  stored {self.stored}  "
            f"dead-lettered {self.dead_lettered}  lag {self.lag}"
        )
        if self.dropped:
            text += f"  dropped {self.dropped}"
        if self.udp_socket_drops:
            # Lost in the kernel before the receiver saw them: not part of `received`.
            text += f"  udp socket drops {self.udp_socket_drops}"
        return text


_METRICS = {
    "received": "hep_ingest_packets_received_total",
    "published": "hep_ingest_packets_published_total",
    "stored": "hep_ingest_rows_written_total",
    "dead_lettered": "hep_ingest_dead_letter_total",
    "dropped": "hep_ingest_packets_dropped_total",
    "lag": "hep_ingest_consumer_lag_total",
    "udp_socket_drops": "hep_ingest_udp_socket_drops_total",
}


def read_totals(registry: CollectorRegistry) -> Totals:
    """Each status metric summed over its labels (0 for one not registered yet)."""
    sums = dict.fromkeys(_METRICS.values(), 0.0)
    for family in registry.collect():
        for sample in family.samples:
            if sample.name in sums:
                sums[sample.name] += sample.value
    return Totals(**{key: int(sums[name]) for key, name in _METRICS.items()})


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_banner(endpoints: Endpoints) -> list[str]:
    """The first lines `up` prints: where to send HEP, Kafka, and the DSN to query."""
    kafka_note = "embedded tansu, in memory" if endpoints.embedded_kafka else "external"
    pg_note = (
        f"embedded, data in {endpoints.data_dir}" if endpoints.embedded_postgres else "external"
    )
    lines = [
        *(f"HEP UDP     {format_address(a)}" for a in endpoints.udp),
        *(f"HEP TCP     {format_address(a)}" for a in endpoints.tcp),
        f"Kafka       {endpoints.bootstrap_servers}  topic {endpoints.topic}  ({kafka_note})",
        f"PostgreSQL  {endpoints.dsn}  ({pg_note})",
        f"Query:      psql '{endpoints.dsn}'   or   hep-ingest calls",
        "Ctrl-C stops.",
    ]
    return lines


class StatusLine:
    """The live status: one rewritten line on a terminal, a plain line otherwise."""

    def __init__(self, out: TextIO, tty: bool | None = None) -> None:
        self._out = out
        self._tty = out.isatty() if tty is None else tty
        self._width = 0

    @property
    def tty(self) -> bool:
        return self._tty

    def show(self, totals: Totals) -> None:
        text = totals.line()
        if self._tty:
            pad = max(0, self._width - len(text))
            self._out.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self._out.write(f"status: {text}\n")
        self._out.flush()

    def end(self) -> None:
        if self._tty and self._width:
            self._out.write("\n")
            self._out.flush()
            self._width = 0


async def report_status(
    registry: CollectorRegistry, status: StatusLine, interval: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        status.show(read_totals(registry))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _is_broker_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(Path(os.fsdecode(arg)).name == "tansu" for arg in cmdline[:1]) or (
        b"broker" in cmdline and any(b"tansu" in arg for arg in cmdline)
    )


def _reap_stale_broker(previous: StackState | None) -> None:
    """A broker left behind by an `up` that was killed (SIGKILL cannot be caught)."""
    if previous is None or not previous.kafka_pid or not pid_alive(previous.kafka_pid):
        return
    if _is_broker_process(previous.kafka_pid):
        log.warning("stale_broker_stopped", pid=previous.kafka_pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(previous.kafka_pid, signal.SIGTERM)


class Stack:
    """The servers of one `up`: started in order, stopped in reverse by `close()`."""

    def __init__(self, settings: UpSettings) -> None:
        self.settings = settings
        self._closers: list[tuple[str, Callable[[], None]]] = []
        self._state: StackState | None = None

    def start_servers(self) -> Endpoints:
        """Blocking: run it in a thread. Starts what was not given as an address."""
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        previous = read_state(s.data_dir)
        if (
            previous is not None
            and previous.pid
            and previous.pid != os.getpid()
            and pid_alive(previous.pid)
        ):
            raise StackError(
                f"`hep-ingest up` already runs on {s.data_dir} (pid {previous.pid}); "
                "stop it first or use another --data-dir"
            )
        _reap_stale_broker(previous)

        bootstrap = s.bootstrap_servers
        kafka_pid: int | None = None
        kafka_port: int | None = previous.kafka_port if previous else None
        if bootstrap is None:
            from pipeline.embedded.kafka import EmbeddedKafka

            kafka_dir(s.data_dir).mkdir(parents=True, exist_ok=True)
            broker = EmbeddedKafka(
                port=choose_port(s.kafka_port, kafka_port),
                log_path=kafka_dir(s.data_dir) / "tansu.log",
            )
            try:
                broker.start()
            except BaseException:
                broker.stop()
                raise
            self._closers.append(("kafka", broker.stop))
            bootstrap, kafka_pid, kafka_port = broker.bootstrap_servers, broker.pid, broker.port

        dsn = s.dsn
        pg_port: int | None = previous.pg_port if previous else None
        if dsn is None:
            from pipeline.embedded.watchdog import PostgresWatchdog

            # Started first and closed last: if `up` is killed from here on, the
            # watchdog stops the server pg_ctl daemonized.
            watchdog = PostgresWatchdog(postgres_dir(s.data_dir))
            self._closers.append(("postgres watchdog", watchdog.close))
            server, _ = open_embedded_postgres(s.data_dir, s.pg_port, nice=s.storage_nice)
            # Adopted or started here: the data directory's server stops with `up`.
            self._closers.append(("postgres", lambda: server.stop("fast")))
            dsn, pg_port = server.dsn, server.port

        self._state = StackState(
            dsn=dsn,
            bootstrap_servers=bootstrap,
            topic=s.topic,
            udp=[format_address(a) for a in s.udp],
            tcp=[format_address(a) for a in s.tcp],
            embedded_postgres=s.dsn is None,
            embedded_kafka=s.bootstrap_servers is None,
            pg_port=pg_port,
            kafka_port=kafka_port,
            pid=os.getpid(),
            kafka_pid=kafka_pid,
            started_at=_now(),
        )
        write_state(self._state, s.data_dir)
        return Endpoints(
            udp=s.udp,
            tcp=s.tcp,
            bootstrap_servers=bootstrap,
            dsn=dsn,
            topic=s.topic,
            embedded_kafka=s.bootstrap_servers is None,
            embedded_postgres=s.dsn is None,
            data_dir=s.data_dir,
        )

    def close(self) -> None:
        """Blocking: stop every server started, newest first; record the stop."""
        errors: list[BaseException] = []
        while self._closers:
            name, closer = self._closers.pop()
            try:
                closer()
            except Exception as exc:  # keep stopping the others
                log.error("server_stop_failed", server=name, error=str(exc))
                errors.append(exc)
        if self._state is not None:
            with contextlib.suppress(OSError):
                write_state(self._state.stopped(_now()), self.settings.data_dir)
            self._state = None
        if errors:
            raise StackError(f"{len(errors)} server(s) did not stop cleanly") from errors[0]


ServiceRunner = Callable[..., Coroutine[Any, Any, None]]

#: How often `up` looks at its children (exit, readiness, a stop to pass on).
CHILD_POLL_S = 0.05
#: After SIGTERM on a cancelled `up`: how long a child may take before SIGKILL.
CHILD_KILL_AFTER_S = 10.0


class ChildExited(StackError):
    """The receiver or the consumer process ended on its own, or failed."""

    def __init__(self, name: str, exit_code: int) -> None:
        how = f"exited with code {exit_code}"
        if exit_code < 0:
            with contextlib.suppress(ValueError):
                how = f"was killed by {signal.Signals(-exit_code).name}"
        super().__init__(f"the {name} {how}")
        self.name = name
        self.exit_code = exit_code


@dataclass(frozen=True)
class ChildCommand:
    """One child process of `up`: what to run, and where it writes its metrics."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    metrics_file: Path
    # The receiver exits 1 after a stop that dropped accepted records: `up` reports
    # the drops itself (and exits 1) once the consumer has drained.
    exit_1_reports_drops: bool = False


async def run_child(
    command: ChildCommand,
    registry: CollectorRegistry,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
) -> None:
    """Run one child until it exits; SIGTERM once `stop` is set. Ready: its metrics file.

    Raises ChildExited when it ends on its own or fails.
    """
    from pipeline.lifetime import die_with_parent
    from pipeline.observability.metrics_file import MetricsFiles
    from pipeline.receiver.metrics import shutdown_drops

    command.metrics_file.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):  # a previous run's: not a sign of readiness
        command.metrics_file.unlink()
    registry.register(MetricsFiles([command.metrics_file]))
    # Started from the event loop's thread, which lives as long as `up` (the
    # parent-death signal follows the thread). A process group of its own: a Ctrl-C
    # on the terminal is for `up`, which stops the children in order. Popen only
    # forks and execs here; the waiting is polled below.
    process = subprocess.Popen(  # noqa: ASYNC220
        command.argv,
        env=command.env,
        stdin=subprocess.DEVNULL,
        process_group=0,
        preexec_fn=die_with_parent(signal.SIGTERM),
    )
    log.info("child_started", child=command.name, pid=process.pid)
    signalled = False
    try:
        while (code := process.poll()) is None:
            if ready is not None and not ready.is_set() and command.metrics_file.exists():
                ready.set()
            if stop.is_set() and not signalled:
                process.send_signal(signal.SIGTERM)
                signalled = True
            await asyncio.sleep(CHILD_POLL_S)
    finally:
        if process.poll() is None:  # cancelled: `up` is going down without the stop sequence
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(CHILD_KILL_AFTER_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    log.info("child_exited", child=command.name, pid=process.pid, exit_code=code)
    if code == 0:
        return
    if signalled and code == -signal.SIGTERM:
        return  # stopped before it had set up its handlers: nothing was accepted yet
    if signalled and code == 1 and command.exit_1_reports_drops and shutdown_drops(registry):
        return
    raise ChildExited(command.name, code)


@dataclass
class Services:
    """The two services `up` runs; replaceable so the composition is testable alone."""

    receiver: ServiceRunner | None = None
    consumer: ServiceRunner | None = None
    migrate: Callable[[str], Awaitable[object]] | None = None

    def load(self) -> None:
        self.receiver = self.receiver or run_child
        self.consumer = self.consumer or run_child
        if self.migrate is None:
            from pipeline.postgres.migrate import apply_migrations

            self.migrate = apply_migrations


#: Variables of `up` that its children must not read: `up` serves the metrics, and a
#: child with --workers would become a supervisor.
_NOT_FOR_CHILDREN = ("HEP_INGEST_METRICS", "HEP_INGEST_WORKERS")


def _child_env(**variables: str | None) -> dict[str, str]:
    """`up`'s environment for a child, with the variables given.

    The child reads the other ``HEP_INGEST_*`` variables of its command (a tuning such
    as HEP_INGEST_UDP_RCVBUF, where the schemas are); the options `up` passes on its
    command line win over them. Secrets travel here rather than on a command line
    anyone can read in /proc.
    """
    env = {k: v for k, v in os.environ.items() if k not in _NOT_FOR_CHILDREN}
    env.update({k: v for k, v in variables.items() if v is not None})
    # The children run this `pipeline`, also when it was not installed but put on
    # sys.path (a benchmark of another checkout); installed, it is found anyway.
    root = str(Path(__file__).resolve().parent.parent)
    if root not in site.getsitepackages():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def _hep_ingest(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "pipeline", *args)


def metrics_file(settings: UpSettings, name: str) -> Path:
    return settings.data_dir.resolve() / "run" / f"{name}.prom"


def _common_args(settings: UpSettings, endpoints: Endpoints, metrics: Path) -> list[str]:
    return [
        "--bootstrap-servers", endpoints.bootstrap_servers,
        "--topic", settings.topic,
        "--metrics-file", str(metrics),
        "--log-level", settings.log_level,
        "--log-format", settings.log_format,
    ]  # fmt: skip


def receiver_command(settings: UpSettings, endpoints: Endpoints) -> ChildCommand:
    listen = [
        *(arg for a in settings.udp for arg in ("--udp", format_address(a))),
        *(arg for a in settings.tcp for arg in ("--tcp", format_address(a))),
    ]
    path = metrics_file(settings, "receiver")
    return ChildCommand(
        name="receiver",
        argv=_hep_ingest(
            "receive", *_common_args(settings, endpoints, path), *listen,
            "--priority", str(settings.receiver_priority),
        ),
        env=_child_env(
            HEP_INGEST_AUTH_KEY=settings.auth_key.decode() if settings.auth_key else None
        ),
        metrics_file=path,
        exit_1_reports_drops=True,
    )


def consumer_command(settings: UpSettings, endpoints: Endpoints) -> ChildCommand:
    path = metrics_file(settings, "consumer")
    return ChildCommand(
        name="consumer",
        argv=_hep_ingest(
            "consume", *_common_args(settings, endpoints, path),
            "--group", settings.group,
            "--no-migrate",  # `up` has applied the migrations already
            "--nice", str(settings.storage_nice),
            *(arg for h in settings.custom_headers for arg in ("--custom-header", h)),
            *(arg for h in settings.a_leg_headers for arg in ("--a-leg-header", h)),
        ),
        env=_child_env(HEP_INGEST_DSN=endpoints.dsn),
        metrics_file=path,
    )


async def _wait_ready(ready: asyncio.Event, task: asyncio.Task[None], what: str) -> None:
    waiter = asyncio.ensure_future(ready.wait())
    try:
        await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        task.result()  # raises the service's own error
        raise StackError(f"the {what} stopped before it was ready")


async def _drain(
    registry: CollectorRegistry, grace: float, hurry: asyncio.Event, consumer: asyncio.Task[None]
) -> bool:
    """Wait until every published record is stored or dead-lettered, or time runs out."""
    deadline = asyncio.get_running_loop().time() + grace
    while True:
        totals = read_totals(registry)
        if totals.stored + totals.dead_lettered >= totals.published:
            return True
        if hurry.is_set() or consumer.done() or asyncio.get_running_loop().time() > deadline:
            log.warning(
                "stopped_before_drained",
                published=totals.published,
                stored=totals.stored,
                dead_lettered=totals.dead_lettered,
            )
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), 0.1)


async def run_stack(
    settings: UpSettings,
    registry: CollectorRegistry,
    stop: asyncio.Event,
    *,
    hurry: asyncio.Event | None = None,
    announce: Callable[[Endpoints], None] | None = None,
    status: StatusLine | None = None,
    status_interval: float = 1.0,
    services: Services | None = None,
) -> None:
    """Run until `stop` is set (or a service fails: its error is raised after cleanup)."""
    hurry = hurry or asyncio.Event()
    services = services or Services()
    services.load()
    assert services.receiver and services.consumer and services.migrate
    stack = Stack(settings)
    try:
        endpoints = await asyncio.to_thread(stack.start_servers)
        if stop.is_set():
            return
        await services.migrate(endpoints.dsn)
        await _run_services(
            settings, endpoints, registry, stop, hurry, announce, status, status_interval, services
        )
    finally:
        await asyncio.to_thread(stack.close)


async def _run_services(
    settings: UpSettings,
    endpoints: Endpoints,
    registry: CollectorRegistry,
    stop: asyncio.Event,
    hurry: asyncio.Event,
    announce: Callable[[Endpoints], None] | None,
    status: StatusLine | None,
    status_interval: float,
    services: Services,
) -> None:
    assert services.receiver and services.consumer
    receiver_stop, consumer_stop, status_stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    receiver_ready, consumer_ready = asyncio.Event(), asyncio.Event()
    consumer = asyncio.create_task(
        services.consumer(
            consumer_command(settings, endpoints), registry, consumer_stop, consumer_ready
        ),
        name="consumer",
    )
    receiver = asyncio.create_task(
        services.receiver(
            receiver_command(settings, endpoints), registry, receiver_stop, receiver_ready
        ),
        name="receiver",
    )
    reporter: asyncio.Task[None] | None = None
    stopper = asyncio.create_task(stop.wait(), name="stop")
    ready = asyncio.gather(
        _wait_ready(consumer_ready, consumer, "consumer"),
        _wait_ready(receiver_ready, receiver, "receiver"),
    )
    try:
        first: set[asyncio.Future[Any]] = {ready, stopper}
        done, _ = await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        if ready in done:
            ready.result()
            if announce is not None:
                announce(endpoints)
            if status is not None:
                reporter = asyncio.create_task(
                    report_status(registry, status, status_interval, status_stop), name="status"
                )
            await asyncio.wait({receiver, consumer, stopper}, return_when=asyncio.FIRST_COMPLETED)
        else:
            ready.cancel()
            with contextlib.suppress(BaseException):
                await ready
    finally:
        stopper.cancel()
        if not ready.done():
            ready.cancel()
        # Receiver first: it stops reading and flushes its backlog to Kafka.
        receiver_stop.set()
        receiver_error = await _settle(receiver)
        if receiver_error is None and not consumer.done():
            await _drain(registry, settings.drain_timeout, hurry, consumer)
        consumer_stop.set()
        consumer_error = await _settle(consumer)
        status_stop.set()
        if reporter is not None and status is not None:
            await _settle(reporter)
            status.show(read_totals(registry))
            status.end()
    for error in (receiver_error, consumer_error):
        if error is not None:
            raise error


async def _settle(task: asyncio.Task[None]) -> BaseException | None:
    """Wait for a service to end; its error, if any (cancellation is not an error)."""
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
        return None
    except Exception as exc:
        return exc
    return None


def install_signal_handlers(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, hurry: asyncio.Event
) -> None:
    """First SIGINT/SIGTERM: stop cleanly. Second: skip the grace period."""

    def handle(signum: int) -> None:
        if stop.is_set():
            hurry.set()
            log.warning("stopping_now", signal=signal.Signals(signum).name)
        else:
            stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, handle, signum)


def run_event_loop(main: Awaitable[None]) -> None:
    """Run `main` on uvloop where available (the default loop elsewhere)."""
    if sys.platform != "win32":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main)  # type: ignore[arg-type]
            return
    asyncio.run(main)  # type: ignore[arg-type]


def with_defaults_for_tty(interval: float | None, tty: bool) -> float:
    if interval is not None:
        return interval
    return 1.0 if tty else 10.0


__all__ = [
    "ChildCommand",
    "ChildExited",
    "Endpoints",
    "Services",
    "Stack",
    "StackError",
    "StatusLine",
    "Totals",
    "UpSettings",
    "format_banner",
    "install_signal_handlers",
    "read_totals",
    "run_child",
    "run_event_loop",
    "run_stack",
    "with_defaults_for_tty",
]
