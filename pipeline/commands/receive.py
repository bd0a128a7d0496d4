"""`hep-ingest receive`: the typer command over `run_receiver`.

It owns what a library must not do: parse options and environment variables into
ReceiverSettings, configure logging, choose uvloop, install SIGTERM/SIGINT handlers,
serve /metrics, and map failures to exit codes:

    0  stopped by a signal after publishing what was accepted
    1  runtime failure (for example a listen address that cannot be bound)
    2  bad option or environment variable
"""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated

import typer
from prometheus_client import CollectorRegistry

from pipeline.observability import configure_logging, get_logger
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
    topic: Annotated[
        str,
        typer.Option(envvar="HEP_INGEST_TOPIC", help="Kafka topic for HEP records.",
                     show_default=True),
    ] = _DEFAULTS.topic,
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
    metrics: Annotated[
        str | None,
        typer.Option(
            envvar="HEP_INGEST_METRICS",
            help="Serve Prometheus /metrics on HOST:PORT. Default: not served.",
        ),
    ] = None,
    compression: Annotated[
        str,
        typer.Option(
            envvar="HEP_INGEST_COMPRESSION",
            help=f"Kafka batch compression: {', '.join(COMPRESSIONS)}. aiokafka's lz4 "
            "runs at level 9 and is about 3x slower than zstd.",
            show_default=True,
        ),
    ] = _DEFAULTS.compression,
    batch_bytes: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_BATCH_BYTES",
            help="Target size of one Kafka record batch (per partition), in bytes.",
            show_default=True,
        ),
    ] = _DEFAULTS.batch_bytes,
    linger_ms: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_LINGER_MS",
            help="Wait this long for more records when less than one batch is queued.",
            show_default=True,
        ),
    ] = _DEFAULTS.linger_ms,
    queue_size: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_QUEUE_SIZE",
            help="Most packets held (queued or in flight) before UDP packets are dropped "
            "(counted) and TCP reading pauses.",
            show_default=True,
        ),
    ] = _DEFAULTS.queue_size,
    max_backlog_bytes: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_MAX_BACKLOG_BYTES",
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
            envvar="HEP_INGEST_REQUEST_TIMEOUT_MS",
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
            envvar="HEP_INGEST_PARTITIONS",
            help="Partitions of a topic created by --create-topic.",
            show_default=True,
        ),
    ] = _DEFAULTS.partitions,
    replication_factor: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_REPLICATION_FACTOR",
            help="Replication factor of a topic created by --create-topic.",
            show_default=True,
        ),
    ] = _DEFAULTS.replication_factor,
    retry_initial_s: Annotated[
        float,
        typer.Option(
            envvar="HEP_INGEST_RETRY_INITIAL_S",
            help="First backoff after a broker error; doubles (with jitter) per retry.",
            show_default=True,
        ),
    ] = _DEFAULTS.retry_initial_s,
    retry_max_s: Annotated[
        float,
        typer.Option(
            envvar="HEP_INGEST_RETRY_MAX_S", help="Longest backoff between retries.",
            show_default=True,
        ),
    ] = _DEFAULTS.retry_max_s,
    shutdown_timeout: Annotated[
        float,
        typer.Option(
            envvar="HEP_INGEST_SHUTDOWN_TIMEOUT",
            help="Seconds to publish the backlog after SIGTERM/SIGINT; what is left "
            "after that is counted as dropped.",
            show_default=True,
        ),
    ] = _DEFAULTS.shutdown_timeout_s,
    progress_interval: Annotated[
        float,
        typer.Option(
            envvar="HEP_INGEST_PROGRESS_INTERVAL",
            help="Seconds between progress log lines.",
            show_default=True,
        ),
    ] = _DEFAULTS.progress_interval_s,
    udp_rcvbuf: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_UDP_RCVBUF",
            help="UDP socket receive buffer in bytes (capped by net.core.rmem_max "
            "unless running with CAP_NET_ADMIN).",
            show_default=True,
        ),
    ] = _DEFAULTS.udp_rcvbuf_bytes,
    log_level: Annotated[
        str,
        typer.Option(envvar="HEP_INGEST_LOG_LEVEL", help="debug, info, warning or error.",
                     show_default=True),
    ] = "info",
    log_format: Annotated[
        str,
        typer.Option(envvar="HEP_INGEST_LOG_FORMAT", help="json or text.", show_default=True),
    ] = "json",
) -> None:
    """Receive HEP (v1/v2/v3) over UDP and TCP and publish it to Kafka as Avro records."""
    if log_format not in ("json", "text"):
        raise typer.BadParameter("must be json or text", param_hint="--log-format")
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter("must be debug, info, warning or error", param_hint="--log-level")
    try:
        settings = ReceiverSettings(
            bootstrap_servers=bootstrap_servers,
            topic=topic,
            udp=() if no_udp else parse_listen(udp or [DEFAULT_LISTEN]),
            tcp=() if no_tcp else parse_listen(tcp or [DEFAULT_LISTEN]),
            auth_key=auth_key.encode("utf-8") if auth_key is not None else None,
            forward_auth_key=forward_auth_key,
            receiver_id=receiver_id or default_receiver_id(),
            compression=compression,
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
            retry_initial_s=retry_initial_s,
            retry_max_s=retry_max_s,
            shutdown_timeout_s=shutdown_timeout,
            progress_interval_s=progress_interval,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    configure_logging(log_level, log_format)
    raise typer.Exit(run(settings, metrics))


def run(settings: ReceiverSettings, metrics_address: str | None) -> int:
    """Run the receiver on uvloop until SIGTERM/SIGINT; returns the exit code."""
    from pipeline.observability import serve_metrics
    from pipeline.receiver.service import run_receiver

    registry = CollectorRegistry()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        ready = asyncio.Event()
        receiver = asyncio.create_task(run_receiver(settings, registry, stop, ready))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({receiver, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if ready.is_set() and metrics_address:
            serve_metrics(registry, metrics_address)
            log.info("metrics_serving", address=metrics_address)
        waiter.cancel()
        await receiver

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(main())
    except OSError as exc:
        log.error("receiver_failed", error=str(exc), errno=exc.errno)
        return EXIT_FAILURE
    except Exception as exc:
        log.exception("receiver_failed", error=repr(exc))
        return EXIT_FAILURE
    return EXIT_OK


def _loop_factory():  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:  # Windows
        return None
    return uvloop.new_event_loop


def register(app: typer.Typer) -> None:
    app.command("receive")(receive)
