"""Which database a query command talks to when no --dsn is given, and how its failures read."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer


@contextlib.contextmanager
def database(dsn: str | None) -> Iterator[str]:
    """The given DSN, else the embedded database of `hep-ingest up`'s data directory.

    After `up` has stopped, its PostgreSQL is started for the duration of the command
    and stopped again, so `hep-ingest calls` needs no flags and leaves nothing behind.
    A database error inside the block (pipeline.postgres.errors) ends the command with
    one line on stderr: exit 2 when the DSN is wrong, 1 when the server failed.
    """
    with _resolved(dsn) as resolved, database_errors(resolved):
        yield resolved


@contextlib.contextmanager
def database_errors(dsn: str | None = None) -> Iterator[None]:
    """Turn a database error into one line on stderr and its exit code (never a traceback)."""
    from pipeline.postgres.errors import describe_database_error

    try:
        yield
    except Exception as exc:
        failure = describe_database_error(exc, dsn)
        if failure is None:
            raise
        typer.echo(f"error: {failure.message}", err=True)
        raise typer.Exit(failure.exit_code) from exc


@contextlib.contextmanager
def _resolved(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    from pipeline.embedded.state import EmbeddedStateError, embedded_database

    try:
        context = embedded_database()
        resolved = context.__enter__()
    except EmbeddedStateError as exc:
        typer.echo(f"error: no --dsn given and {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        yield resolved
    except BaseException as exc:
        if not context.__exit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        context.__exit__(None, None, None)
