"""Options several commands share, declared once so their names, variables and help agree.

Also the rules every command's options follow, applied to the whole CLI in one place
(`CommandLine`, the group `pipeline.cli` builds):

- every numeric option declares its range (typer's ``min``/``max``), so a negative or
  zero value where it makes no sense is refused;
- every float option must be finite: ``nan`` and ``inf`` are refused, from a flag or
  from its ``HEP_INGEST_*`` variable alike (typer's range check lets ``inf`` through,
  and ``nan`` when no ``min`` is declared);
- a usage error is one line on stderr (``hep-ingest receive: Invalid value for ...``)
  and exit code 2, never a usage banner or a framed box.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer.core import TyperCommand, TyperGroup, TyperOption

if TYPE_CHECKING:
    from pipeline.storage.headers import HeaderExtraction


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
MetricsFileOption = Annotated[
    Path | None,
    typer.Option(
        hidden=True,
        help="Set by `hep-ingest up`: write the metrics to this file once ready, every "
        "fraction of a second, and at exit (pipeline.observability.metrics_file).",
    ),
]
WorkerIndexOption = Annotated[
    int | None,
    typer.Option(hidden=True, min=0, help="Set by the --workers supervisor in each worker."),
]


CustomHeaderOption = Annotated[
    list[str] | None,
    typer.Option(
        "--custom-header",
        envvar="HEP_INGEST_CUSTOM_HEADERS",
        help="SIP header whose value is stored in data_header under this name (as "
        "heplify-server's CustomHeader, for homer-app) and in the custom_headers "
        "column: NAME or NAME,REGEX (the regex's first group, else its match, is "
        "stored). Case-insensitive, compact forms known; repeatable (env: "
        "space-separated). Default: none.",
    ),
]
ALegHeaderOption = Annotated[
    list[str] | None,
    typer.Option(
        "--a-leg-header",
        envvar="HEP_INGEST_A_LEG_HEADERS",
        help="SIP header naming the A-leg Call-ID (X-CID and the like), NAME or "
        "NAME,REGEX as heplify-server's AlegIDs: without a HEP correlation id, the "
        "first one found gives protocol_header.correlation_id, which homer-app "
        "correlates legs by (else the Call-ID does). Repeatable (env: "
        "space-separated). Default: none.",
    ),
]


def header_rules(custom: list[str] | None, a_leg: list[str] | None) -> HeaderExtraction:
    """The consumer's header rules from --custom-header / --a-leg-header (usage error
    when one is bad)."""
    from pipeline.storage.headers import header_extraction

    try:
        return header_extraction(tuple(custom or ()), tuple(a_leg or ()))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--custom-header/--a-leg-header") from exc


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


def finite(_ctx: Any, _param: Any, value: Any) -> Any:
    """Parameter callback: refuse NaN and infinities (None, the unset default, passes)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def require_finite_floats(command: TyperCommand) -> None:
    """Every float option of `command` refuses nan and inf, after its own callback."""
    for param in command.params:
        if not isinstance(param, TyperOption) or param.type_descriptor.annotation is not float:
            continue
        own = param.callback

        def check(ctx: Any, param: Any, value: Any, own: Any = own) -> Any:
            return finite(ctx, param, own(ctx, param, value) if own is not None else value)

        param.callback = check


class CommandLine(TyperGroup):
    """The `hep-ingest` group: the option rules above, and usage errors on one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            if isinstance(command, TyperCommand):
                require_finite_floats(command)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        def run() -> Any:
            # Not standalone: errors come back here instead of being printed by typer.
            return super(CommandLine, self).main(
                args, prog_name, complete_var, False, windows_expand_args, **extra
            )

        if not standalone_mode:
            return run()
        try:
            code = run()
        except NoArgsIsHelpError as exc:  # the help, as a usage error (exit 2)
            exc.show()
            sys.exit(exc.exit_code)
        except ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "hep-ingest"
            typer.echo(f"{where}: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)
