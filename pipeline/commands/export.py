"""`hep-ingest export`: the stored SIP messages a search selects, as a pcap file.

Rows stream from a server-side cursor into the pure writer (pipeline.analysis.pcap)
and out, so memory stays bounded however long the range; a long export reports its
progress on stderr.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, BinaryIO

import typer

from pipeline.commands.analysis import DsnOption, parse_time, report_pcap
from pipeline.commands.binary_output import binary_output
from pipeline.commands.dsn import database

_TIME_HELP = "ISO 8601 time (UTC unless given), 'now', or a duration ago: 30m, 2h, 1d."


class ExportFormat(StrEnum):
    pcap = "pcap"


@dataclass(frozen=True, slots=True)
class ExportSettings:
    dsn: str | None
    since: datetime
    until: datetime
    call_ids: tuple[str, ...]
    users: tuple[str, ...]
    ips: tuple[str, ...]
    output: Path | None
    progress_interval: float


@dataclass(slots=True)
class ExportProgress:
    found: int = 0
    unaddressed: int = 0
    truncated: int = 0
    frames: int = 0


def _check_ips(values: list[str]) -> tuple[str, ...]:
    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise typer.BadParameter(f"not an IP address: {value!r}", param_hint="--ip") from None
    return tuple(values)


async def _export(settings: ExportSettings, dsn: str, out: BinaryIO) -> ExportProgress:
    import asyncpg

    from pipeline.analysis.pcap import PcapEncoder, file_header, message_from_row
    from pipeline.analysis.queries import MessageFilter, stream_messages

    query = MessageFilter(since=settings.since, until=settings.until,
                          call_ids=settings.call_ids, users=settings.users, ips=settings.ips)
    encoder = PcapEncoder()
    progress = ExportProgress()
    out.write(file_header())
    next_report = time.monotonic() + settings.progress_interval
    conn = await asyncpg.connect(dsn)
    try:
        async for row in stream_messages(conn, query):
            progress.found += 1
            message = message_from_row(row)
            if message is None:
                progress.unaddressed += 1
                continue
            out.write(encoder.encode(message))
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + settings.progress_interval
                typer.echo(f"exported {progress.found} messages, up to "
                           f"{row['create_date'].isoformat()}", err=True)
    finally:
        await conn.close()
    progress.truncated, progress.frames = encoder.truncated, encoder.frames
    return progress


def export(
    dsn: DsnOption = None,
    since: Annotated[
        str, typer.Option(envvar="HEP_INGEST_EXPORT_SINCE", help=f"Messages from. {_TIME_HELP}")
    ] = "1h",
    until: Annotated[
        str, typer.Option(envvar="HEP_INGEST_EXPORT_UNTIL", help=f"Messages until. {_TIME_HELP}")
    ] = "now",
    call_id: Annotated[
        list[str] | None,
        typer.Option("--call-id", envvar="HEP_INGEST_EXPORT_CALL_ID",
                     help="Only messages with this Call-ID or correlation id (repeatable)."),
    ] = None,
    user: Annotated[
        list[str] | None,
        typer.Option("--user", envvar="HEP_INGEST_EXPORT_USER",
                     help="Only messages from or to this user: From, To or R-URI user "
                     "(repeatable)."),
    ] = None,
    ip: Annotated[
        list[str] | None,
        typer.Option("--ip", envvar="HEP_INGEST_EXPORT_IP",
                     help="Only messages from or to this IP address (repeatable)."),
    ] = None,
    fmt: Annotated[
        ExportFormat,
        typer.Option("--format", envvar="HEP_INGEST_EXPORT_FORMAT",
                     help="pcap: one packet per message (UDP, TCP segments; IPv4, IPv6)."),
    ] = ExportFormat.pcap,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", envvar="HEP_INGEST_EXPORT_OUTPUT", dir_okay=False,
                     help="Write to this file (default: stdout, when not a terminal)."),
    ] = None,
    progress_interval: Annotated[
        float,
        typer.Option(envvar="HEP_INGEST_EXPORT_PROGRESS_INTERVAL", min=0, max=86_400,
                     help="Seconds between progress lines on stderr during a long export "
                     "(0: after every message)."),
    ] = 5.0,
) -> None:
    """Write the stored SIP messages of a time range (filtered by Call-ID, user or IP
    address; filters of one kind OR, kinds AND) as a pcap file, in capture order."""
    now = datetime.now(UTC)
    settings = ExportSettings(
        dsn=dsn, since=parse_time(since, now), until=parse_time(until, now),
        call_ids=tuple(call_id or ()), users=tuple(user or ()), ips=_check_ips(ip or []),
        output=output, progress_interval=progress_interval,
    )
    with binary_output(settings.output) as out, database(settings.dsn) as resolved:
        progress = asyncio.run(_export(settings, resolved, out))
    report_pcap(progress.found, progress.unaddressed, progress.truncated)
    typer.echo(f"exported {progress.found - progress.unaddressed} messages "
               f"({progress.frames} packets)", err=True)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
