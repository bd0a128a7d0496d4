"""`hep-ingest homer-indexes show|enable|disable`: the optional indexes that serve
homer-app's searches (pipeline/postgres/homer_indexes.py says which and why)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import timedelta
from enum import StrEnum
from typing import Annotated

import typer

from pipeline.commands.dsn import database
from pipeline.postgres.homer_indexes import (
    DEFAULT_LOCK_ATTEMPTS,
    DEFAULT_LOCK_TIMEOUT,
    HomerField,
)

_DSN_HELP = "PostgreSQL DSN (default: the embedded database `hep-ingest up` recorded)."


class HomerIndexAction(StrEnum):
    show = "show"
    enable = "enable"
    disable = "disable"


@dataclass(frozen=True, slots=True)
class HomerIndexSettings:
    dsn: str | None
    action: HomerIndexAction
    fields: tuple[HomerField, ...]
    lock_timeout: timedelta
    lock_attempts: int


async def _run(settings: HomerIndexSettings) -> None:
    import asyncpg

    from pipeline.postgres.homer_indexes import (
        disable_homer_indexes,
        enable_homer_indexes,
        homer_index_status,
    )

    conn = await asyncpg.connect(settings.dsn)
    try:
        if settings.action is HomerIndexAction.enable:
            built = await enable_homer_indexes(
                conn, settings.fields, lock_timeout=settings.lock_timeout,
                lock_attempts=settings.lock_attempts,
                progress=lambda line: typer.echo(line, err=True))
            typer.echo(f"{len(built)} partition indexes built")
        elif settings.action is HomerIndexAction.disable:
            dropped = await disable_homer_indexes(
                conn, settings.fields, lock_timeout=settings.lock_timeout,
                lock_attempts=settings.lock_attempts)
            for name in dropped:
                typer.echo(f"dropped {name}")
            typer.echo(f"{len(dropped)} indexes dropped")
        for status in await homer_index_status(conn, settings.fields):
            typer.echo(f"{status.table:26} {status.field.value:10} {status.state.value:8} "
                       f"{status.partitions_indexed:>4}/{status.partitions:<4} partitions "
                       f"{status.size_bytes:>12} bytes  {status.index}")
    finally:
        await conn.close()


def homer_indexes(
    action: Annotated[
        HomerIndexAction,
        typer.Argument(help="show the indexes' state, enable (create) or disable (drop) them."),
    ] = HomerIndexAction.show,
    dsn: Annotated[
        str | None, typer.Option(envvar="HEP_INGEST_DSN", help=_DSN_HELP, show_default=False)
    ] = None,
    field: Annotated[
        list[HomerField] | None,
        typer.Option("--field", envvar="HEP_INGEST_HOMER_INDEX_FIELDS",
                     help="homer-app search fields to index (repeatable; default: all of "
                     "callid, from_user, to_user, ruri_user, srcIp, dstIp)."),
    ] = None,
    lock_timeout: Annotated[
        float,
        typer.Option(envvar="HEP_INGEST_HOMER_INDEX_LOCK_TIMEOUT", min=0.1, max=600,
                     help="Seconds writers may wait behind one of this command's table "
                     "locks before it backs off and retries."),
    ] = DEFAULT_LOCK_TIMEOUT.total_seconds(),
    lock_attempts: Annotated[
        int,
        typer.Option(envvar="HEP_INGEST_HOMER_INDEX_LOCK_ATTEMPTS", min=1, max=1000,
                     help="Tries per table lock before giving up (exit 1; run it again)."),
    ] = DEFAULT_LOCK_ATTEMPTS,
) -> None:
    """Indexes for homer-app's searches (Call-ID, users, addresses) on the SIP tables, on
    every partition present and future. Off by default: each costs every write."""
    settings = HomerIndexSettings(
        dsn=dsn, action=action, fields=tuple(dict.fromkeys(field or HomerField)),
        lock_timeout=timedelta(seconds=lock_timeout), lock_attempts=lock_attempts,
    )
    with database(settings.dsn) as resolved:
        asyncio.run(_run(replace(settings, dsn=resolved)))


def register(app: typer.Typer) -> None:
    app.command("homer-indexes")(homer_indexes)
