"""Which database a query command talks to when no --dsn is given."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer


@contextlib.contextmanager
def database(dsn: str | None) -> Iterator[str]:
    """The given DSN, else the embedded database of `hep-ingest up`'s data directory.

    After `up` has stopped, its PostgreSQL is started for the duration of the command
    and stopped again, so `hep-ingest calls` needs no flags and leaves nothing behind.
    """
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
