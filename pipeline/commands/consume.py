"""`hep-ingest consume`: consumer-group workers from Kafka into PostgreSQL (or stdout)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.commands.options import (
    ALegHeaderOption,
    CustomHeaderOption,
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
    header_rules,
)

HELP = """Consume HEP records from Kafka and store them in PostgreSQL.

Runs one worker of the consumer group --group: start several (on one host or many)
to share the topic's partitions, or give --workers N to run N worker processes under
this one (one worker keeps about one core busy). Offsets are committed only once rows
are committed in PostgreSQL and undecodable records are on the dead-letter topic, so a
crash or a restart never loses a record, and replays never duplicate a row. SIGTERM
or Ctrl-C finishes the batch being written, commits and exits; while PostgreSQL or
the broker is unreachable it exits at once (what is not stored is read again at the
next start). A --dsn naming no database or role, or that cannot be parsed, exits 2.
"""


#: ConsumerSettings.client_id's default; worker K of --workers uses "<this>-wK".
CLIENT_ID = "hep-ingest-consumer"


class SinkChoice(StrEnum):
    postgres = "postgres"
    stdout = "stdout"


class PartitionInterval(StrEnum):
    daily = "daily"
    hourly = "hourly"


def _default_dsn() -> str | None:
    try:
        from pipeline.embedded.state import default_dsn
    except ImportError:
        return None
    return default_dsn()


def consume(
    bootstrap_servers: Annotated[
        str, typer.Option(envvar="HEP_INGEST_BOOTSTRAP_SERVERS", help="Kafka bootstrap servers.")
    ] = "127.0.0.1:9092",
    topic: TopicOption = "hep",
    group: Annotated[
        str, typer.Option(envvar="HEP_INGEST_GROUP", help="Kafka consumer group.")
    ] = "hep-ingest",
    sink: Annotated[
        SinkChoice,
        typer.Option(
            envvar="HEP_INGEST_SINK",
            help="postgres stores rows; stdout prints them as JSON lines (debugging).",
        ),
    ] = SinkChoice.postgres,
    dsn: Annotated[
        str | None,
        typer.Option(
            envvar="HEP_INGEST_DSN",
            help="PostgreSQL DSN.",
            show_default="the embedded database `hep-ingest up` recorded",
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_BATCH_SIZE", min=1, max=1_000_000, help="Rows per database write."
        ),
    ] = 10_000,
    flush_interval: Annotated[
        float,
        typer.Option(
            envvar="HEP_INGEST_FLUSH_INTERVAL",
            min=0.001,
            max=3600,
            help="Seconds before a batch that is not full is written.",
        ),
    ] = 1.0,
    session_timeout: Annotated[
        float,
        typer.Option(
            envvar="HEP_INGEST_SESSION_TIMEOUT",
            min=1,
            max=3600,
            help="Seconds without a heartbeat before the group gives this worker's partitions "
            "to another (heartbeats every third of it). The embedded broker holds a joining "
            "worker for half of it, so shorter starts faster; Apache Kafka refuses values "
            "below its group.min.session.timeout.ms (6 s by default).",
        ),
    ] = 10.0,
    retention_days: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_RETENTION_DAYS", min=1, max=36_500,
            help="Drop partitions older than this.",
        ),
    ] = 14,
    partition_interval: Annotated[
        PartitionInterval,
        typer.Option(envvar="HEP_INGEST_PARTITION_INTERVAL", help="Capture table partition span."),
    ] = PartitionInterval.daily,
    partitions_ahead: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_PARTITIONS_AHEAD", min=0, max=1000,
            help="Partitions created in advance.",
        ),
    ] = 2,
    dead_letter_topic: Annotated[
        str | None,
        typer.Option(
            envvar="HEP_INGEST_DEAD_LETTER_TOPIC",
            help="Topic for records that cannot be stored.",
            show_default="<topic>.dlq",
        ),
    ] = None,
    metrics: MetricsOption = None,
    migrate: Annotated[
        bool,
        typer.Option(
            "--migrate/--no-migrate",
            envvar="HEP_INGEST_MIGRATE",
            help="Apply database migrations at start.",
        ),
    ] = True,
    store_auth_key: Annotated[
        bool,
        typer.Option(
            envvar="HEP_INGEST_STORE_AUTH_KEY",
            help="Store the HEP capture password in protocol_header (it is a credential).",
        ),
    ] = False,
    custom_header: CustomHeaderOption = None,
    a_leg_header: ALegHeaderOption = None,
    dedup_window_ms: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_DEDUP_WINDOW_MS", min=0, max=60_000,
            help="Store a SIP message captured by several agents once: a copy with the same "
            "payload whose capture time is less than this many ms from the first is a "
            "duplicate (retransmissions come a SIP T1 of 500 ms or more later and are "
            "kept). 0: off.",
            show_default=True,
        ),
    ] = 0,
    dedup_match_capture_id: Annotated[
        bool,
        typer.Option(
            envvar="HEP_INGEST_DEDUP_MATCH_CAPTURE_ID",
            help="Only copies from the same capture id (agent) are duplicates.",
        ),
    ] = False,
    dedup_keep: Annotated[
        bool,
        typer.Option(
            envvar="HEP_INGEST_DEDUP_KEEP",
            help="Store duplicates in hep_capture_duplicates instead of dropping them.",
        ),
    ] = False,
    dedup_max_entries: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_DEDUP_MAX_ENTRIES", min=1, max=100_000_000,
            help="Messages the duplicate check remembers per partition (bounds its memory; "
            "what it forgets early is counted in hep_ingest_dedup_evicted_total).",
            show_default=True,
        ),
    ] = 100_000,
    log_level: LogLevelOption = LogLevel.info,
    log_format: LogFormatOption = LogFormat.json,
    workers: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_WORKERS", min=1, max=1024,
            help="Consumer processes in the group --group, one core each. With N > 1 a "
            "supervisor runs N workers; worker K serves /metrics on the --metrics port + K.",
            show_default=True,
        ),
    ] = 1,
    worker_index: WorkerIndexOption = None,
    nice: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_NICE", min=0, max=19,
            help="Scheduling niceness of the consumer (0: as inherited). On a machine it "
            "shares with a receiver, 10 lets capture have the CPU first: Kafka holds what "
            "is not stored yet, a UDP socket does not. `hep-ingest up` runs its consumer "
            "at its --storage-nice.",
            show_default=True,
        ),
    ] = 0,
    metrics_file: MetricsFileOption = None,
    discard_methods: Annotated[
        str,
        typer.Option(
            envvar="HEP_INGEST_DISCARD_METHODS",
            show_default="none",
            help="Comma-separated SIP methods whose messages are not stored, matched on "
            "the CSeq method so their responses go too (heplify-server's DiscardMethod), "
            "e.g. OPTIONS,NOTIFY. Counted in hep_ingest_records_discarded_total.",
        ),
    ] = "",
    discard_sources: Annotated[
        str,
        typer.Option(
            envvar="HEP_INGEST_DISCARD_SOURCES",
            show_default="none",
            help="Comma-separated addresses or networks (CIDR): messages sent from one "
            "of them are not stored.",
        ),
    ] = "",
    discard_destinations: Annotated[
        str,
        typer.Option(
            envvar="HEP_INGEST_DISCARD_DESTINATIONS",
            show_default="none",
            help="Comma-separated addresses or networks (CIDR): messages sent to one of "
            "them are not stored.",
        ),
    ] = "",
    discard_hep_types: Annotated[
        str,
        typer.Option(
            envvar="HEP_INGEST_DISCARD_HEP_TYPES",
            show_default="none",
            help="Comma-separated HEP protocol types (0-255) not stored, e.g. 5 (RTCP).",
        ),
    ] = "",
    censor_methods: Annotated[
        str,
        typer.Option(
            envvar="HEP_INGEST_CENSOR_METHODS",
            show_default="none",
            help="Comma-separated SIP methods (CSeq) whose body is stored as x's of the "
            "same length (heplify-server's CensorMethod), e.g. MESSAGE.",
        ),
    ] = "",
    sip_kpi: Annotated[
        bool,
        typer.Option(
            "--sip-kpi/--no-sip-kpi",
            envvar="HEP_INGEST_SIP_KPI",
            help="Export SIP KPIs of the stored messages on /metrics: counts by node, "
            "method and code, registration and call setup outcomes, session and "
            "registration request delay histograms.",
        ),
    ] = False,
    sip_kpi_timeout: Annotated[
        float,
        typer.Option(
            envvar="HEP_INGEST_SIP_KPI_TIMEOUT", min=1, max=86_400,
            help="Seconds (capture time) a transaction waits for its final response "
            "before it counts as no_final_response.",
        ),
    ] = 300.0,
    sip_kpi_max_pending: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_SIP_KPI_MAX_PENDING", min=1, max=10_000_000,
            help="Transactions awaiting a response kept per partition; beyond, the "
            "oldest is dropped (hep_ingest_sip_kpi_expired_total{reason=\"capacity\"}).",
        ),
    ] = 20_000,
    sip_kpi_max_nodes: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_SIP_KPI_MAX_NODES", min=1, max=100_000,
            help="Nodes (HEP node name, else capture id) with a label of their own; "
            "further nodes share node=\"other\".",
        ),
    ] = 100,
) -> None:
    from prometheus_client import CollectorRegistry

    from pipeline.consumer.dedup import DedupSettings
    from pipeline.consumer.service import run_consumer
    from pipeline.consumer.settings import ConsumerSettings
    from pipeline.observability import configure_logging, get_logger, serve_metrics
    from pipeline.observability.metrics import parse_host_port
    from pipeline.priority import set_nice
    from pipeline.sip.kpi import KpiLimits

    check_workers(workers, worker_index)
    headers = header_rules(custom_header, a_leg_header)
    capture_filter = _capture_filter(
        discard_methods, discard_sources, discard_destinations, discard_hep_types,
        censor_methods,
    )
    metrics_address = None
    if metrics:
        try:
            metrics_address = parse_host_port(metrics)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    check_worker_ports(workers, [], metrics_address)
    if sink is SinkChoice.postgres and not dsn:
        dsn = _default_dsn()
        if not dsn:
            raise typer.BadParameter(
                "no --dsn given and no database recorded by `hep-ingest up`", param_hint="--dsn"
            )
    configure_logging(log_level, log_format)
    log = get_logger("pipeline.consumer")
    # Before the workers start: they inherit it.
    set_nice(nice, log)
    if workers > 1:
        raise typer.Exit(_supervise(workers, metrics_address, metrics_file))
    # Workers on one host get distinct client ids (the service appends the host name).
    worker_client: dict[str, Any] = (
        {} if worker_index is None else {"client_id": f"{CLIENT_ID}-w{worker_index}"}
    )
    settings = ConsumerSettings(
        bootstrap_servers=bootstrap_servers,
        topic=topic,
        group=group,
        sink=sink.value,
        dsn=dsn,
        batch_size=batch_size,
        flush_interval=flush_interval,
        session_timeout=session_timeout,
        retention_days=retention_days,
        partition_interval=partition_interval.value,
        partitions_ahead=partitions_ahead,
        dead_letter_topic=dead_letter_topic or None,
        migrate=migrate,
        store_auth_key=store_auth_key,
        headers=headers,
        capture_filter=capture_filter,
        sip_kpi=KpiLimits(
            timeout=sip_kpi_timeout, max_pending=sip_kpi_max_pending,
            max_nodes=sip_kpi_max_nodes,
        ) if sip_kpi else None,
        dedup=DedupSettings(
            window_ms=dedup_window_ms,
            match_capture_id=dedup_match_capture_id,
            keep=dedup_keep,
            max_entries=dedup_max_entries,
        ),
        **worker_client,
    )
    registry = CollectorRegistry()
    if metrics:
        try:
            serve_metrics(registry, metrics)
        except OSError as exc:
            print(f"hep-ingest consume: cannot serve --metrics on {metrics}: {exc.strerror or exc}",
                  file=sys.stderr)
            raise typer.Exit(2) from exc

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if metrics_file is None:
            await run_consumer(settings, registry, stop)
            return
        await _run_writing_metrics(run_consumer, settings, registry, stop, metrics_file)

    from pipeline.postgres.sink import SinkConfigError

    try:
        _run(main())
    except SinkConfigError as exc:  # a wrong --dsn: retrying cannot help
        print(f"hep-ingest consume: {exc}", file=sys.stderr)
        raise typer.Exit(2) from exc
    except Exception as exc:  # the worker's own failures (not transient ones): exit 1
        log.error("consumer_failed", error=repr(exc), exc_info=True)
        print(f"hep-ingest consume: {exc}", file=sys.stderr)
        raise typer.Exit(1) from exc


def _capture_filter(
    discard_methods: str, discard_sources: str, discard_destinations: str,
    discard_hep_types: str, censor_methods: str,
) -> Any:
    """The CaptureFilter of the options; a bad entry is a usage error (exit 2)."""
    from pipeline.consumer import filters

    parsers: list[tuple[str, str, Any]] = [
        ("--discard-methods", discard_methods, filters.parse_methods),
        ("--discard-sources", discard_sources, filters.parse_networks),
        ("--discard-destinations", discard_destinations, filters.parse_networks),
        ("--discard-hep-types", discard_hep_types, filters.parse_hep_types),
        ("--censor-methods", censor_methods, filters.parse_methods),
    ]
    parsed = []
    for option, text, parse in parsers:
        try:
            parsed.append(parse(text))
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint=option) from exc
    methods, sources, destinations, hep_types, censor = parsed
    return filters.CaptureFilter(
        discard_methods=methods, discard_hep_types=hep_types, discard_sources=sources,
        discard_destinations=destinations, censor_methods=censor,
    )


async def _run_writing_metrics(
    run_consumer: Any, settings: Any, registry: Any, stop: asyncio.Event, path: Path
) -> None:
    """Run the consumer; its metrics go to `path` from when it is ready until it ends."""
    from pipeline.observability.metrics_file import MetricsFileWriter

    ready = asyncio.Event()
    consumer = asyncio.create_task(run_consumer(settings, registry, stop, ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({consumer, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    writer = MetricsFileWriter(registry, path) if ready.is_set() else None
    try:
        await consumer
    finally:
        if writer is not None:
            writer.close()


def _supervise(
    workers: int, metrics_address: tuple[str, int] | None, metrics_file: Path | None
) -> int:
    """Run `workers` consumer processes in this group until they all exit.

    With --metrics-file (`up --consume-workers`), worker K writes its own file
    (pipeline.observability.metrics_file.worker_metrics_file).
    """
    from pipeline import supervisor
    from pipeline.observability import get_logger
    from pipeline.observability.metrics_file import worker_metrics_file

    log = get_logger("pipeline.commands.consume")
    command = supervisor.own_command("consume")
    if command is None:
        log.error("workers_unsupported", reason="--workers needs the `consume` command line")
        return supervisor.EXIT_FAILURE

    def worker_argv(base: Sequence[str], index: int) -> list[str]:
        argv = [*base, "--workers", "1", "--worker-index", str(index)]
        if metrics_address is not None:
            argv += ["--metrics", supervisor.worker_address(metrics_address, index)]
        if metrics_file is not None:
            argv += ["--metrics-file", str(worker_metrics_file(metrics_file, index))]
        return argv

    return supervisor.supervise(
        command,
        workers,
        worker_argv,
        log=log,
        log_fields={
            "client_ids": [f"{CLIENT_ID}-w{k}" for k in range(workers)],
            "metrics": [
                supervisor.worker_address(metrics_address, k) for k in range(workers)
            ] if metrics_address else None,
        },
    )


def _run(main: object) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)  # type: ignore[arg-type]
        return
    uvloop.run(main)  # type: ignore[arg-type]


def register(app: typer.Typer) -> None:
    app.command("consume", help=HELP)(consume)
