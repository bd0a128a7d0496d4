"""`hep-ingest migrate` and `hep-ingest partitions`: database administration."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated

import typer

from pipeline.commands.dsn import database

_DSN_HELP = "PostgreSQL DSN (default: the embedded database `hep-ingest up` recorded)."


class PartitionAction(StrEnum):
    show = "show"
    create = "create"
    drop = "drop"


class Interval(StrEnum):
    daily = "daily"
    hourly = "hourly"


@dataclass(frozen=True, slots=True)
class MigrateSettings:
    dsn: str | None


@dataclass(frozen=True, slots=True)
class PartitionsSettings:
    dsn: str | None
    action: PartitionAction
    interval: Interval
    ahead: timedelta
    retention_days: int
    dry_run: bool


def parse_duration(text: str) -> timedelta:
    """'2d', '36h', '90m' or a bare number of days."""
    match = re.fullmatch(r"\s*(\d+)\s*([dhm]?)\s*", text)
    if match is None:
        raise typer.BadParameter(f"expected a duration like 2d, 12h or 30m, got {text!r}")
    value, unit = int(match.group(1)), match.group(2) or "d"
    return {"d": timedelta(days=value), "h": timedelta(hours=value),
            "m": timedelta(minutes=value)}[unit]


DsnOption = Annotated[
    str | None,
    typer.Option(envvar="HEP_INGEST_DSN", help=_DSN_HELP, show_default=False),
]


def migrate(dsn: DsnOption = None) -> None:
    """Apply the database migrations not applied yet (safe to run from several hosts)."""
    settings = MigrateSettings(dsn=dsn)
    from pipeline.postgres.migrate import MigrationError, apply_migrations

    try:
        with database(settings.dsn) as resolved:
            applied = asyncio.run(apply_migrations(resolved))
    except MigrationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if applied:
        for name in applied:
            typer.echo(f"applied {name}")
    else:
        typer.echo("database is up to date")


async def _run_partitions(settings: PartitionsSettings) -> None:
    import asyncpg

    from pipeline.postgres.partitions import (
        PartitionInterval,
        drop_expired_partitions,
        ensure_partitions,
        list_partitions,
    )

    now = datetime.now(UTC)
    conn = await asyncpg.connect(settings.dsn)
    try:
        if settings.action is PartitionAction.show:
            for p in await list_partitions(conn):
                rows = "?" if p.rows_estimate is None else str(p.rows_estimate)
                typer.echo(f"{p.table:32} {p.partition:48} {p.range:56} rows~{rows:>10} "
                           f"{p.size_bytes:>12} bytes")
        elif settings.action is PartitionAction.create:
            created = await ensure_partitions(
                conn, now=now, interval=PartitionInterval(settings.interval.value),
                ahead=settings.ahead,
            )
            for name in created:
                typer.echo(f"created {name}")
            typer.echo(f"{len(created)} partitions created")
        else:
            dropped = await drop_expired_partitions(
                conn, now=now, retention_days=settings.retention_days, dry_run=settings.dry_run
            )
            verb = "would drop" if settings.dry_run else "dropped"
            for name in dropped:
                typer.echo(f"{verb} {name}")
            typer.echo(f"{len(dropped)} partitions {verb.split()[-1]}")
    finally:
        await conn.close()


def partitions(
    action: Annotated[
        PartitionAction, typer.Argument(help="show, create (ahead) or drop (expired).")
    ] = PartitionAction.show,
    dsn: DsnOption = None,
    interval: Annotated[
        Interval,
        typer.Option(envvar="HEP_INGEST_PARTITION_INTERVAL", help="Partition span (create)."),
    ] = Interval.daily,
    ahead: Annotated[
        str,
        typer.Option(envvar="HEP_INGEST_PARTITIONS_AHEAD_TIME",
                     help="How far ahead to create partitions: 2d, 36h (create)."),
    ] = "2d",
    retention_days: Annotated[
        int,
        typer.Option(envvar="HEP_INGEST_RETENTION_DAYS", min=1, max=36_500,
                     help="Drop partitions older than this, unless the table sets its own."),
    ] = 14,
    dry_run: Annotated[
        bool,
        typer.Option(envvar="HEP_INGEST_DRY_RUN", help="drop: only list what would go."),
    ] = False,
) -> None:
    """Show, create or drop the capture tables' time partitions."""
    settings = PartitionsSettings(
        dsn=dsn, action=action, interval=interval,
        ahead=parse_duration(ahead), retention_days=retention_days, dry_run=dry_run,
    )
    with database(settings.dsn) as resolved:
        asyncio.run(_run_partitions(replace(settings, dsn=resolved)))


def register(app: typer.Typer) -> None:
    app.command("migrate")(migrate)
    app.command("partitions")(partitions)
