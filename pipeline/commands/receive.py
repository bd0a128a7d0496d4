"""`hep-ingest receive`: the typer command over `run_receiver`.

It owns what a library must not do: parse options and environment variables into
ReceiverSettings, configure logging, choose uvloop, install SIGTERM/SIGINT handlers,
serve /metrics, and map failures to exit codes:

    0  stopped by a signal after publishing what was accepted
    1  runtime failure (for example a listen address that cannot be bound), or a
       shutdown that dropped records it had accepted (the log says how many)
    2  bad option or environment variable

With ``--workers N`` (N > 1) the process is a supervisor: it re-executes its own
command line N times with ``--workers 1 --worker-index K``, and each worker binds
the same UDP and TCP ports with SO_REUSEPORT (Linux spreads datagrams by 4-tuple
and connections across them). The supervisor first checks that no other process holds
those addresses (pipeline.receiver.listen): only its own workers share a port. Worker
K publishes as ``<receiver-id>-wK`` and serves /metrics on the --metrics port + K.
The supervisor forwards SIGTERM/SIGINT,
waits for every worker to flush and exit, and exits 1 if any worker failed (a worker
that exits on its own stops the others); it restarts nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import typer
from prometheus_client import CollectorRegistry

from pipeline import supervisor
from pipeline.commands.options import (
    LogFormat,
    LogFormatOption,
    LogLevel,
    LogLevelOption,
    MetricsFileOption,
    MetricsOption,
    TopicOption,
    WorkerIndexOption,
    check_worker_ports,
    check_workers,
)
from pipeline.observability import configure_logging, get_logger
from pipeline.observability.metrics import parse_host_port
from pipeline.priority import set_nice
from pipeline.receiver.metrics import shutdown_drops
from pipeline.receiver.settings import (
    COMPRESSIONS,
    DEFAULT_LISTEN,
    ReceiverSettings,
    default_receiver_id,
    parse_listen,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

log = get_logger("pipeline.commands.receive")

_DEFAULTS = ReceiverSettings()  # defaults shown in --help come from one place


def receive(
    udp: Annotated[
        list[str] | None,
        typer.Option(
            "--udp",
            envvar="HEP_INGEST_UDP",
            help="UDP listen address HOST:PORT; repeatable (env: space-separated).",
            show_default=DEFAULT_LISTEN,
        ),
    ] = None,
    tcp: Annotated[
        list[str] | None,
        typer.Option(
            "--tcp",
            envvar="HEP_INGEST_TCP",
            help="TCP listen address HOST:PORT; repeatable (env: space-separated).",
            show_default=DEFAULT_LISTEN,
        ),
    ] = None,
    tls: Annotated[
        list[str] | None,
        typer.Option(
            "--tls",
            envvar="HEP_INGEST_TLS",
            help="HEP over TLS listen address HOST:PORT; repeatable (env: space-separated). "
            "Needs --tls-cert and --tls-key. Default: none.",
        ),
    ] = None,
    tls_cert: Annotated[
        str | None,
        typer.Option(
            envvar="HEP_INGEST_TLS_CERT",
            help="PEM certificate (chain) of the --tls listeners.",
        ),
    ] = None,
    tls_key: Annotated[
        str | None,
        typer.Option(
            envvar="HEP_INGEST_TLS_KEY",
            help="PEM private key (unencrypted) of --tls-cert.",
        ),
    ] = None,
    tls_client_ca: Annotated[
        str | None,
        typer.Option(
            envvar="HEP_INGEST_TLS_CLIENT_CA",
            help="PEM CA certificate(s): TLS clients must present a certificate signed by "
            "one (mutual TLS). Default: no client certificate asked.",
        ),
    ] = None,
    no_udp: Annotated[
        bool,
        typer.Option("--no-udp", envvar="HEP_INGEST_NO_UDP", help="Do not listen on UDP."),
    ] = False,
    no_tcp: Annotated[
        bool,
        typer.Option("--no-tcp", envvar="HEP_INGEST_NO_TCP", help="Do not listen on TCP."),
    ] = False,
    bootstrap_servers: Annotated[
        str,
        typer.Option(
            envvar="HEP_INGEST_BOOTSTRAP_SERVERS",
            help="Kafka bootstrap servers, comma-separated HOST:PORT.",
            show_default=True,
        ),
    ] = _DEFAULTS.bootstrap_servers,
    topic: TopicOption = _DEFAULTS.topic,
    auth_key: Annotated[
        str | None,
        typer.Option(
            envvar="HEP_INGEST_AUTH_KEY",
            help="Accept only packets whose HEP auth key chunk (0x000e) equals this; "
            "others are counted as rejected. Default: no check.",
        ),
    ] = None,
    forward_auth_key: Annotated[
        bool,
        typer.Option(
            "--forward-auth-key/--no-forward-auth-key",
            envvar="HEP_INGEST_FORWARD_AUTH_KEY",
            help="Copy the packet's auth key into the published record.",
            show_default=True,
        ),
    ] = False,
    receiver_id: Annotated[
        str | None,
        typer.Option(
            envvar="HEP_INGEST_RECEIVER_ID",
            help="Name written into every record.",
            show_default="hostname:pid",
        ),
    ] = None,
    metrics: MetricsOption = None,
    compression: Annotated[
        str,
        typer.Option(
            envvar="HEP_INGEST_COMPRESSION",
            help=f"Kafka batch compression: {', '.join(COMPRESSIONS)}. aiokafka's lz4 "
            "runs at level 9 and is about 3x slower than zstd.",
            show_default=True,
        ),
    ] = _DEFAULTS.compression,
    zstd_level: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_ZSTD_LEVEL", min=1, max=22,
            help="zstd level of the Kafka batches (--compression zstd): 1 costs about "
            "0.6x the CPU of aiokafka's 3 for the same ratio on SIP.",
            show_default=True,
        ),
    ] = _DEFAULTS.zstd_level,
    batch_bytes: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_BATCH_BYTES", min=1,
            help="Target size of one Kafka record batch (per partition), in bytes.",
            show_default=True,
        ),
    ] = _DEFAULTS.batch_bytes,
    linger_ms: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_LINGER_MS", min=0, max=600_000,
            help="Wait this long for more records when less than one batch is queued: "
            "a publish cycle costs about the same for 10 records as for 1,000.",
            show_default=True,
        ),
    ] = _DEFAULTS.linger_ms,
    queue_size: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_QUEUE_SIZE", min=1,
            help="Most packets held (queued or in flight) before UDP packets are dropped "
            "(counted) and TCP reading pauses.",
            show_default=True,
        ),
    ] = _DEFAULTS.queue_size,
    max_backlog_bytes: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_MAX_BACKLOG_BYTES", min=1,
            help="Most record bytes held while the broker is slow or away (same effect "
            "as --queue-size).",
            show_default=True,
        ),
    ] = _DEFAULTS.max_backlog_bytes,
    enable_idempotence: Annotated[
        bool,
        typer.Option(
            "--enable-idempotence/--no-enable-idempotence",
            envvar="HEP_INGEST_ENABLE_IDEMPOTENCE",
            help="Idempotent Kafka producer. Recommended on for Apache Kafka; off by "
            "default because tansu rejects InitProducerId.",
            show_default=True,
        ),
    ] = False,
    request_timeout_ms: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_REQUEST_TIMEOUT_MS", min=1, max=3_600_000,
            help="A batch not acknowledged within this time is sent again.",
            show_default=True,
        ),
    ] = _DEFAULTS.request_timeout_ms,
    create_topic: Annotated[
        bool,
        typer.Option(
            "--create-topic/--no-create-topic",
            envvar="HEP_INGEST_CREATE_TOPIC",
            help="Create the topic at start if it does not exist.",
            show_default=True,
        ),
    ] = True,
    partitions: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_PARTITIONS", min=1, max=100_000,
            help="Partitions of a topic created by --create-topic.",
            show_default=True,
        ),
    ] = _DEFAULTS.partitions,
    replication_factor: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_REPLICATION_FACTOR", min=1, max=32_767,
            help="Replication factor of a topic created by --create-topic.",
            show_default=True,
        ),
    ] = _DEFAULTS.replication_factor,
    retry_initial_s: Annotated[
        float,
        typer.Option(
            envvar="HEP_INGEST_RETRY_INITIAL_S", min=0.001, max=3600,
            help="First backoff after a broker error; doubles (with jitter) per retry.",
            show_default=True,
        ),
    ] = _DEFAULTS.retry_initial_s,
    retry_max_s: Annotated[
        float,
        typer.Option(
            envvar="HEP_INGEST_RETRY_MAX_S", min=0.001, max=3600,
            help="Longest backoff between retries.",
            show_default=True,
        ),
    ] = _DEFAULTS.retry_max_s,
    shutdown_timeout: Annotated[
        float,
        typer.Option(
            envvar="HEP_INGEST_SHUTDOWN_TIMEOUT", min=0, max=86_400,
            help="Seconds to publish the backlog after SIGTERM/SIGINT; what is left "
            "after that is counted as dropped.",
            show_default=True,
        ),
    ] = _DEFAULTS.shutdown_timeout_s,
    progress_interval: Annotated[
        float,
        typer.Option(
            envvar="HEP_INGEST_PROGRESS_INTERVAL", min=0.01, max=86_400,
            help="Seconds between progress log lines.",
            show_default=True,
        ),
    ] = _DEFAULTS.progress_interval_s,
    udp_rcvbuf: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_UDP_RCVBUF", min=1, max=2**31 - 1,
            help="UDP socket receive buffer in bytes: set with SO_RCVBUFFORCE where the "
            "process has CAP_NET_ADMIN, else with SO_RCVBUF (capped by "
            "net.core.rmem_max); the size granted is logged (udp_receive_buffer). It must "
            "hold one --udp-drain-interval-ms at the peak rate (about 2.3 KB a datagram) "
            "plus any stall: see the README.",
            show_default=True,
        ),
    ] = _DEFAULTS.udp_rcvbuf_bytes,
    udp_drain_interval_ms: Annotated[
        float,
        typer.Option(
            envvar="HEP_INGEST_UDP_DRAIN_INTERVAL_MS", min=0.1, max=1000,
            help="Longest wait between two batch reads of the UDP socket, in milliseconds "
            "(instead of a wakeup per datagram; the kernel holds what arrives meanwhile). "
            "The wait follows the rate: about the time half a batch takes to arrive, "
            "never longer than this nor than half the granted --udp-rcvbuf holds at "
            "--udp-peak-rate (logged as drain_interval_ms). Longer costs less CPU per "
            "packet at low rates.",
            show_default=True,
        ),
    ] = _DEFAULTS.udp_drain_interval_ms,
    udp_peak_rate: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_UDP_PEAK_RATE", min=1, max=100_000_000,
            help="Datagrams per second (per UDP listener) that the receive buffer must "
            "absorb for one drain interval: the longest interval is cut to what half "
            "the granted buffer holds at this rate.",
            show_default=True,
        ),
    ] = _DEFAULTS.udp_peak_rate,
    tcp_read_interval_ms: Annotated[
        float,
        typer.Option(
            envvar="HEP_INGEST_TCP_READ_INTERVAL_MS", min=0, max=1000,
            help="Read each TCP/TLS connection in batches this far apart, in milliseconds "
            "(0: as data arrives); meanwhile the kernel buffers and TCP flow control "
            "holds a sender that outruns it.",
            show_default=True,
        ),
    ] = _DEFAULTS.tcp_read_interval_ms,
    tcp_max_connections: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_TCP_MAX_CONNECTIONS",
            min=1,
            max=1_000_000,
            help="Most TCP and TLS connections open at once (per worker); more are "
            "closed when accepted and counted in "
            "hep_ingest_tcp_connections_refused_total{reason=\"max_connections\"}.",
            show_default=True,
        ),
    ] = _DEFAULTS.tcp_max_connections,
    tcp_idle_timeout: Annotated[
        float,
        typer.Option(
            envvar="HEP_INGEST_TCP_IDLE_TIMEOUT",
            min=0,
            max=86_400,
            help="Close a TCP or TLS connection after this many seconds without a byte "
            "(0: never); counted as closed with reason idle_timeout.",
            show_default=True,
        ),
    ] = _DEFAULTS.tcp_idle_timeout_s,
    tcp_frame_timeout: Annotated[
        float,
        typer.Option(
            envvar="HEP_INGEST_TCP_FRAME_TIMEOUT",
            min=0.001,
            max=86_400,
            help="Close a TCP or TLS connection whose HEP frame is not complete this many "
            "seconds after its first byte; counted as closed with reason frame_timeout "
            "and the partial frame as invalid (truncated).",
            show_default=True,
        ),
    ] = _DEFAULTS.tcp_frame_timeout_s,
    log_level: LogLevelOption = LogLevel.info,
    log_format: LogFormatOption = LogFormat.json,
    workers: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_WORKERS", min=1, max=1024,
            help="Receiver processes sharing the listen ports (SO_REUSEPORT, Linux). "
            "With N > 1, worker K uses receiver id <id>-wK and serves /metrics on the "
            "--metrics port + K.",
            show_default=True,
        ),
    ] = 1,
    worker_index: WorkerIndexOption = None,
    priority: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_PRIORITY", min=0, max=20,
            help="Run the receiver at niceness -N, ahead of storage on a shared machine "
            "(0: as inherited). Needs root or CAP_SYS_NICE (systemd "
            "AmbientCapabilities=CAP_SYS_NICE, compose cap_add: [SYS_NICE]); without it, "
            "one warning and the receiver runs on as it is.",
            show_default=True,
        ),
    ] = 0,
    metrics_file: MetricsFileOption = None,
) -> None:
    """Receive HEP (v1/v2/v3) over UDP, TCP and TLS and publish it to Kafka as Avro records."""
    check_workers(workers, worker_index)
    try:
        settings = ReceiverSettings(
            bootstrap_servers=bootstrap_servers,
            topic=topic,
            udp=() if no_udp else parse_listen(udp or [DEFAULT_LISTEN]),
            tcp=() if no_tcp else parse_listen(tcp or [DEFAULT_LISTEN]),
            tls=parse_listen(tls or []),
            tls_context=_tls_context(tls, tls_cert, tls_key, tls_client_ca),
            auth_key=auth_key.encode("utf-8") if auth_key is not None else None,
            forward_auth_key=forward_auth_key,
            receiver_id=receiver_id or default_receiver_id(),
            compression=compression,
            zstd_level=zstd_level,
            batch_bytes=batch_bytes,
            linger_ms=linger_ms,
            enable_idempotence=enable_idempotence,
            request_timeout_ms=request_timeout_ms,
            create_topic=create_topic,
            partitions=partitions,
            replication_factor=replication_factor,
            queue_size=queue_size,
            max_backlog_bytes=max_backlog_bytes,
            udp_rcvbuf_bytes=udp_rcvbuf,
            udp_drain_interval_ms=udp_drain_interval_ms,
            udp_peak_rate=udp_peak_rate,
            tcp_max_connections=tcp_max_connections,
            tcp_idle_timeout_s=tcp_idle_timeout,
            tcp_frame_timeout_s=tcp_frame_timeout,
            tcp_read_interval_ms=tcp_read_interval_ms,
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
            shutdown_timeout_s=shutdown_timeout,
            progress_interval_s=progress_interval,
            reuse_port=worker_index is not None,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    try:
        # Checked before anything is bound: a bad address is a usage error, not a
        # failure once the listeners are up.
        metrics_address = parse_host_port(metrics) if metrics else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--metrics") from exc
    listen_ports = [port for _, port in (*settings.udp, *settings.tcp, *settings.tls)]
    check_worker_ports(workers, listen_ports, metrics_address)
    if metrics_file is not None and workers > 1:
        raise typer.BadParameter("only for one worker", param_hint="--metrics-file")
    configure_logging(log_level, log_format)
    # Before the workers start: they inherit it.
    set_nice(-priority, log)
    if workers > 1:
        if not _addresses_free(settings):
            raise typer.Exit(EXIT_FAILURE)
        raise typer.Exit(supervise(workers, settings.receiver_id, metrics_address))
    raise typer.Exit(run(settings, metrics, metrics_file))


def _addresses_free(settings: ReceiverSettings) -> bool:
    """The workers share their ports with each other only: refuse one another process holds."""
    from pipeline.receiver.listen import check_addresses_free

    try:
        check_addresses_free(settings.udp, (*settings.tcp, *settings.tls))
    except OSError as exc:
        log.error("receiver_failed", error=str(exc), errno=exc.errno)
        return False
    return True


def _tls_context(
    tls: list[str] | None, cert: str | None, key: str | None, client_ca: str | None
) -> ssl.SSLContext | None:
    """The --tls listeners' server context, loaded once here: a bad file is a usage error."""
    from pipeline.receiver.tls import TlsConfigError, load_server_context

    if not tls:
        given = [name for name, value in (
            ("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)
        ) if value]
        if given:
            raise typer.BadParameter(f"{', '.join(given)} without --tls", param_hint="--tls")
        return None
    if not cert or not key:
        raise typer.BadParameter(
            "--tls needs --tls-cert and --tls-key (env HEP_INGEST_TLS_CERT, HEP_INGEST_TLS_KEY)",
            param_hint="--tls",
        )
    try:
        return load_server_context(cert, key, client_ca)
    except TlsConfigError as exc:
        hint = "--tls-cert/--tls-key/--tls-client-ca"
        raise typer.BadParameter(str(exc), param_hint=hint) from exc


def worker_argv(
    receiver_id: str, metrics_address: tuple[str, int] | None
) -> Callable[[Sequence[str], int], list[str]]:
    """Makes this command line into worker `index` (later options win)."""

    def make(command: Sequence[str], index: int) -> list[str]:
        argv = [*command, "--workers", "1", "--worker-index", str(index)]
        argv += ["--receiver-id", f"{receiver_id}-w{index}"]
        if metrics_address is not None:
            argv += ["--metrics", supervisor.worker_address(metrics_address, index)]
        return argv

    return make


def supervise(
    workers: int, receiver_id: str, metrics_address: tuple[str, int] | None, poll_s: float = 0.1
) -> int:
    """Run `workers` receiver processes until they all exit (pipeline.supervisor)."""
    command = supervisor.own_command("receive")
    if command is None:
        log.error("workers_unsupported", reason="--workers needs the `receive` command line")
        return EXIT_FAILURE
    return supervisor.supervise(
        command,
        workers,
        worker_argv(receiver_id, metrics_address),
        log=log,
        log_fields={
            "receiver_ids": [f"{receiver_id}-w{k}" for k in range(workers)],
            "metrics": [
                f"{metrics_address[0]}:{metrics_address[1] + k}" for k in range(workers)
            ] if metrics_address else None,
        },
        poll_s=poll_s,
    )


def run(
    settings: ReceiverSettings, metrics_address: str | None, metrics_file: Path | None = None
) -> int:
    """Run the receiver on uvloop until SIGTERM/SIGINT; returns the exit code."""
    from pipeline.observability import serve_metrics
    from pipeline.observability.metrics_file import MetricsFileWriter
    from pipeline.receiver.service import run_receiver

    registry = CollectorRegistry()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if metrics_address:
            # Before the sockets: once `receiver_started` is logged, /metrics answers.
            try:
                serve_metrics(registry, metrics_address)
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise OSError(
                    exc.errno, f"cannot serve --metrics on {metrics_address}: {reason}"
                ) from exc
            log.info("metrics_serving", address=metrics_address)
        ready = asyncio.Event()
        receiver = asyncio.create_task(run_receiver(settings, registry, stop, ready))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({receiver, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        writing = ready.is_set() and metrics_file is not None
        writer = MetricsFileWriter(registry, metrics_file) if writing and metrics_file else None
        try:
            await receiver
        finally:
            if writer is not None:
                writer.close()

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(main())
    except OSError as exc:
        log.error("receiver_failed", error=str(exc), errno=exc.errno)
        return EXIT_FAILURE
    except Exception as exc:
        log.exception("receiver_failed", error=repr(exc))
        return EXIT_FAILURE
    return EXIT_FAILURE if shutdown_drops(registry) else EXIT_OK


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # Windows
        return None
    return uvloop.new_event_loop


def register(app: typer.Typer) -> None:
    app.command("receive")(receive)
