"""`hep-ingest up`: a receiver and a consumer process, on embedded servers by default."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.commands.options import (
    ALegHeaderOption,
    CustomHeaderOption,
    LogFormat,
    LogFormatOption,
    LogLevel,
    LogLevelOption,
    MetricsOption,
    TopicOption,
    header_rules,
)

HELP = (
    "Run the whole pipeline from one command: HEP in, rows in PostgreSQL.\n\n"
    "Without --bootstrap-servers it starts an embedded Kafka-compatible broker (tansu, "
    "in memory); without --dsn an embedded PostgreSQL under --data-dir, which keeps the "
    "rows across runs (`hep-ingest calls`, `call` and `stats` find it with no flags). "
    "It applies the migrations, then runs `hep-ingest receive` and `hep-ingest consume` "
    "as child processes. Capture comes first: the consumer and the embedded PostgreSQL "
    "run at --storage-nice, so the receiver gets the CPU before them, and a storage "
    "that cannot keep up grows the consumer lag in Kafka rather than slowing capture.\n\n"
    "Ctrl-C or SIGTERM stops everything; a second Ctrl-C skips waiting for the consumer "
    "to store what was published."
)


def up(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="HEP_INGEST_DATA_DIR",
            help="Where the embedded PostgreSQL and stack.json live "
            "(default: the user data directory, e.g. ~/.local/share/hep-ingest).",
            show_default=False,
        ),
    ] = None,
    udp: Annotated[
        list[str] | None,
        typer.Option(
            "--udp",
            envvar="HEP_INGEST_UDP",
            help="UDP listen address HOST:PORT (repeatable). Use 0.0.0.0:9060 to accept "
            "HEP from other hosts.",
            show_default="127.0.0.1:9060",
        ),
    ] = None,
    tcp: Annotated[
        list[str] | None,
        typer.Option(
            "--tcp",
            envvar="HEP_INGEST_TCP",
            help="TCP listen address HOST:PORT (repeatable).",
            show_default="127.0.0.1:9060",
        ),
    ] = None,
    bootstrap_servers: Annotated[
        str | None,
        typer.Option(
            envvar="HEP_INGEST_BOOTSTRAP_SERVERS",
            help="An external Kafka to use instead of the embedded broker.",
        ),
    ] = None,
    dsn: Annotated[
        str | None,
        typer.Option(
            envvar="HEP_INGEST_DSN",
            help="An external PostgreSQL to use instead of the embedded one.",
        ),
    ] = None,
    topic: TopicOption = "hep",
    auth_key: Annotated[
        str | None,
        typer.Option(
            envvar="HEP_INGEST_AUTH_KEY",
            help="Accept only HEP carrying this capture password (chunk 0x000e).",
        ),
    ] = None,
    kafka_port: Annotated[
        int | None,
        typer.Option(
            envvar="HEP_INGEST_KAFKA_PORT",
            min=0,
            max=65535,
            help="Port of the embedded broker on 127.0.0.1 (0: any free port) "
            "(default: the previous run's, else a free one).",
            show_default=False,
        ),
    ] = None,
    pg_port: Annotated[
        int | None,
        typer.Option(
            envvar="HEP_INGEST_PG_PORT",
            min=0,
            max=65535,
            help="Port of the embedded PostgreSQL on 127.0.0.1 (0: any free port) "
            "(default: the previous run's, else a free one).",
            show_default=False,
        ),
    ] = None,
    status_interval: Annotated[
        float | None,
        typer.Option(
            envvar="HEP_INGEST_STATUS_INTERVAL",
            min=0.1,
            max=3600,
            help="Seconds between status updates (default: 1 on a terminal, else 10).",
            show_default=False,
        ),
    ] = None,
    drain_timeout: Annotated[
        float,
        typer.Option(
            envvar="HEP_INGEST_DRAIN_TIMEOUT",
            min=0,
            max=86_400,
            help="On stop, seconds to wait for the consumer to store what was published.",
        ),
    ] = 15.0,
    storage_nice: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_STORAGE_NICE",
            min=0,
            max=19,
            help="Scheduling niceness of the consumer and the embedded PostgreSQL: the "
            "receiver gets the CPU before them (0: no difference).",
        ),
    ] = 10,
    receiver_priority: Annotated[
        int,
        typer.Option(
            envvar="HEP_INGEST_RECEIVER_PRIORITY",
            min=0,
            max=20,
            help="Run the receiver at niceness -N (`receive --priority`; 0: as inherited). "
            "Needs root or CAP_SYS_NICE; without it the receiver logs a warning and runs on.",
        ),
    ] = 0,
    custom_header: CustomHeaderOption = None,
    a_leg_header: ALegHeaderOption = None,
    metrics: MetricsOption = None,
    log_level: LogLevelOption = LogLevel.warning,
    log_format: LogFormatOption = LogFormat.text,
) -> None:
    from prometheus_client import CollectorRegistry

    from pipeline.embedded.state import resolve_data_dir
    from pipeline.observability import configure_logging, get_logger, serve_metrics
    from pipeline.observability.metrics import parse_host_port
    from pipeline.stack import (
        ChildExited,
        Endpoints,
        StackError,
        StatusLine,
        UpSettings,
        format_banner,
        install_signal_handlers,
        run_event_loop,
        run_stack,
        with_defaults_for_tty,
    )

    try:
        udp_addresses = tuple(parse_host_port(a, "127.0.0.1") for a in (udp or ["127.0.0.1:9060"]))
        tcp_addresses = tuple(parse_host_port(a, "127.0.0.1") for a in (tcp or ["127.0.0.1:9060"]))
        if metrics:
            parse_host_port(metrics)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc

    header_rules(custom_header, a_leg_header)  # a bad rule is a usage error, before starting
    configure_logging(log_level, log_format)
    settings = UpSettings(
        data_dir=resolve_data_dir(data_dir),
        udp=udp_addresses,
        tcp=tcp_addresses,
        bootstrap_servers=bootstrap_servers or None,
        dsn=dsn or None,
        topic=topic,
        auth_key=auth_key.encode() if auth_key else None,
        kafka_port=kafka_port,
        pg_port=pg_port,
        drain_timeout=drain_timeout,
        storage_nice=storage_nice,
        receiver_priority=receiver_priority,
        log_level=log_level.value,
        log_format=log_format.value,
        custom_headers=tuple(custom_header or ()),
        a_leg_headers=tuple(a_leg_header or ()),
    )
    registry = CollectorRegistry()
    status = StatusLine(sys.stdout)
    interval = with_defaults_for_tty(status_interval, status.tty)

    def announce(endpoints: Endpoints) -> None:
        for line in format_banner(endpoints):
            print(line, flush=True)
        if metrics:
            serve_metrics(registry, metrics)
            print(f"Metrics     http://{metrics}/metrics", flush=True)

    async def main() -> None:
        stop, hurry = asyncio.Event(), asyncio.Event()
        install_signal_handlers(asyncio.get_running_loop(), stop, hurry)
        print(f"Starting in {settings.data_dir} ...", file=sys.stderr, flush=True)
        await run_stack(
            settings,
            registry,
            stop,
            hurry=hurry,
            announce=announce,
            status=status,
            status_interval=interval,
        )

    try:
        run_event_loop(main())
    except ChildExited as exc:
        # The child said why on stderr (shared with `up`); a usage error stays one.
        print(f"hep-ingest up: {exc}", file=sys.stderr)
        raise typer.Exit(2 if exc.exit_code == 2 else 1) from exc
    except (StackError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        # A missing extra, a port in use, a server that would not start.
        print(f"hep-ingest up: {exc}", file=sys.stderr)
        detail = getattr(exc, "stderr", None)
        if detail:
            text = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
            print(text.rstrip()[-2000:], file=sys.stderr)
        raise typer.Exit(1) from exc
    except Exception as exc:
        from pipeline.postgres.errors import describe_database_error

        failure = describe_database_error(exc, settings.dsn)
        if failure is not None:  # --dsn names a database that is not there, ...
            print(f"hep-ingest up: {failure.message}", file=sys.stderr)
            raise typer.Exit(failure.exit_code) from exc
        # A bug: keep the traceback, exit like any failure.
        get_logger("pipeline.commands.up").exception("up_failed", error=repr(exc))
        print(f"hep-ingest up: {exc!r}", file=sys.stderr)
        raise typer.Exit(1) from exc
    from pipeline.receiver.metrics import shutdown_drops

    dropped = shutdown_drops(registry)
    if dropped:
        print(f"hep-ingest up: stopped, {dropped} received records dropped at shutdown "
              "(not published before the shutdown timeout)", file=sys.stderr, flush=True)
        raise typer.Exit(1)
    print("Stopped.", file=sys.stderr, flush=True)


def register(app: typer.Typer) -> None:
    app.command("up", help=HELP)(up)
