"""`hep-ingest`: the command line. Each command lives in pipeline/commands/."""

from __future__ import annotations

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


def _register() -> None:
    # Imported here so that `hep-ingest --help` stays fast and each command module
    # stays independent of the others.
    from pipeline.commands import register_all

    register_all(app)


_register()


def main() -> None:
    app()
