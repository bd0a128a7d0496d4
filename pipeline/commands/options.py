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
