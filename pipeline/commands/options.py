"""Options several commands share, declared once so their names, variables and help agree."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(StrEnum):
    json = "json"
    text = "text"


LogLevelOption = Annotated[
    LogLevel,
    typer.Option(envvar="HEP_INGEST_LOG_LEVEL", help="Log level.", show_default=True),
]
LogFormatOption = Annotated[
    LogFormat,
    typer.Option(
        envvar="HEP_INGEST_LOG_FORMAT",
        help="Logs on stderr, one event per line: json, or text for people.",
        show_default=True,
    ),
]
MetricsOption = Annotated[
    str | None,
    typer.Option(
        envvar="HEP_INGEST_METRICS",
        help="Serve Prometheus /metrics on HOST:PORT (not served when unset).",
    ),
]
TopicOption = Annotated[
    str,
    typer.Option(envvar="HEP_INGEST_TOPIC", help="Kafka topic of HEP records.", show_default=True),
]
WorkerIndexOption = Annotated[
    int | None,
    typer.Option(hidden=True, help="Set by the --workers supervisor in each worker."),
]


def check_workers(workers: int, worker_index: int | None) -> None:
    """Usage errors of --workers / the supervisor's hidden --worker-index."""
    if workers < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--workers")
    if worker_index is not None and (workers != 1 or worker_index < 0):
        raise typer.BadParameter("only for a worker (--workers 1)", param_hint="--worker-index")


def check_worker_ports(
    workers: int, listen_ports: list[int], metrics_address: tuple[str, int] | None
) -> None:
    """With N > 1 workers every port must be fixed, and worker K's metrics port is PORT+K."""
    if workers <= 1:
        return
    ports = [*listen_ports, *([metrics_address[1]] if metrics_address else [])]
    if 0 in ports:
        raise typer.BadParameter("port 0 (any free port) cannot be shared by workers",
                                 param_hint="--workers")
    if metrics_address and metrics_address[1] + workers - 1 > 65535:
        raise typer.BadParameter("metrics port + workers - 1 > 65535", param_hint="--workers")
