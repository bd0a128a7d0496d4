"""`hep-ingest`: the command line. Each command lives in pipeline/commands/."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.commands.options import CommandLine

app = typer.Typer(
    cls=CommandLine,
    name="hep-ingest",
    help="HEP capture ingestion: receive HEP into Kafka, store it in PostgreSQL, analyse calls.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from pipeline.version import version_line

        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and whether the per-packet code is compiled or pure, "
            "then exit.",
        ),
    ] = False,
) -> None:
    """HEP capture ingestion: receive HEP into Kafka, store it in PostgreSQL, analyse calls."""


def _register() -> None:
    # Imported here so that `hep-ingest --help` stays fast and each command module
    # stays independent of the others.
    from pipeline.commands import register_all

    register_all(app)


_register()


def main() -> None:
    app()
