"""`hep-ingest calls`, `call` and `stats`: answers from the stored messages.

The SQL lives in migrations/0002_analysis.sql and pipeline/analysis/queries.py; this
module parses options, connects, and prints.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import asyncpg
import typer

from pipeline.analysis.formats import OutputFormat, render_rows, to_jsonable
from pipeline.analysis.ladder import LadderMessage, message_label, render_ladder
from pipeline.analysis.queries import (
    CALL_COLUMNS,
    CALL_COLUMNS_FULL,
    CALL_FLOW_COLUMNS,
    STATS_COLUMNS,
    CallFilter,
    fetch_call_flow,
    fetch_call_packets,
    fetch_calls,
    fetch_stats,
)
from pipeline.commands.binary_output import binary_output
from pipeline.commands.dsn import database

T = TypeVar("T")

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_NAMED_INTERVALS = {"minute": "1m", "hour": "1h", "day": "1d", "week": "1w"}


class CallState(StrEnum):
    answered = "answered"
    busy = "busy"
    cancelled = "cancelled"
    failed = "failed"
    no_final_response = "no_final_response"


class FlowFormat(StrEnum):
    table = "table"
    json = "json"
    pcap = "pcap"


def parse_duration(text: str) -> timedelta:
    """'90s', '15m', '1h', '2d', '1w', or hour/day/minute/week."""
    match = _DURATION.fullmatch(_NAMED_INTERVALS.get(text.strip().lower(), text))
    if match is None:
        raise typer.BadParameter(f"expected a duration like 15m, 1h or 2d, got {text!r}")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def parse_time(text: str, now: datetime) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise), 'now', or a duration ago ('2h')."""
    if text.strip().lower() == "now":
        return now
    if _DURATION.fullmatch(text):
        return now - parse_duration(text)
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"expected an ISO time (2026-11-26T08:00), 'now' or a duration ago (2h), got {text!r}"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _run(dsn: str | None, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    async def main(resolved: str) -> T:
        conn = await asyncpg.connect(resolved)
        try:
            return await work(conn)
        finally:
            await conn.close()

    with database(dsn) as resolved:
        return asyncio.run(main(resolved))


FormatOption = Annotated[
    OutputFormat,
    typer.Option("--format", envvar="HEP_INGEST_FORMAT", help="Output format.",
                 show_default=True),
]
DsnOption = Annotated[
    str | None,
    typer.Option(
        envvar="HEP_INGEST_DSN",
        help="PostgreSQL DSN (default: the embedded database `hep-ingest up` recorded).",
        show_default=False,
    ),
]
_TIME_HELP = "ISO 8601 time (UTC unless given), 'now', or a duration ago: 30m, 2h, 1d."


def calls(
    dsn: DsnOption = None,
    since: Annotated[
        str, typer.Option(envvar="HEP_INGEST_CALLS_SINCE", help=f"Calls from. {_TIME_HELP}")
    ] = "1d",
    until: Annotated[
        str, typer.Option(envvar="HEP_INGEST_CALLS_UNTIL", help=f"Calls until. {_TIME_HELP}")
    ] = "now",
    user: Annotated[
        str | None,
        typer.Option(envvar="HEP_INGEST_CALLS_USER",
                     help="Only calls from or to this user (From, To or R-URI user)."),
    ] = None,
    status: Annotated[
        int | None,
        typer.Option(envvar="HEP_INGEST_CALLS_STATUS", min=100, max=699,
                     help="Only calls with this final status."),
    ] = None,
    state: Annotated[
        CallState | None,
        typer.Option(envvar="HEP_INGEST_CALLS_STATE", help="Only calls in this state."),
    ] = None,
    limit: Annotated[
        int, typer.Option(envvar="HEP_INGEST_CALLS_LIMIT", min=1, max=1_000_000,
                          help="Most recent N calls.")
    ] = 50,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Recent calls, newest first: one row per INVITE dialog (sip_calls)."""
    now = datetime.now(UTC)
    query = CallFilter(
        since=parse_time(since, now),
        until=parse_time(until, now),
        user=user,
        status=status,
        state=state.value if state is not None else None,
        limit=limit,
    )
    rows = _run(dsn, lambda conn: fetch_calls(conn, query))
    columns = CALL_COLUMNS if fmt is OutputFormat.table else CALL_COLUMNS_FULL
    typer.echo(render_rows(rows, columns, fmt), nl=False)


def ladder_messages(rows: list[dict[str, Any]]) -> list[LadderMessage]:
    return [
        LadderMessage(
            time=row["create_date"],
            src=row["src"] or "?",
            dst=row["dst"] or "?",
            label=message_label(row["method"], row["status"], row["reason"], row["cseq_method"]),
            leg=row["leg"],
        )
        for row in rows
    ]


def call(
    call_id: Annotated[str, typer.Argument(help="The Call-ID.")],
    dsn: DsnOption = None,
    since: Annotated[
        str | None,
        typer.Option(envvar="HEP_INGEST_CALL_SINCE",
                     help=f"Only messages from (faster on big databases). {_TIME_HELP}"),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(envvar="HEP_INGEST_CALL_UNTIL", help=f"Only messages until. {_TIME_HELP}"),
    ] = None,
    fmt: Annotated[
        FlowFormat,
        typer.Option("--format", envvar="HEP_INGEST_CALL_FORMAT",
                     help="table: a ladder diagram; json: the messages; pcap: a capture "
                     "file of the messages for Wireshark, tshark or sngrep."),
    ] = FlowFormat.table,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", envvar="HEP_INGEST_CALL_OUTPUT", dir_okay=False,
                     help="pcap: write to this file (default: stdout, when not a terminal)."),
    ] = None,
) -> None:
    """One call's message flow as a ladder diagram, with legs tied by correlation id."""
    now = datetime.now(UTC)
    start = parse_time(since, now) if since else None
    end = parse_time(until, now) if until else None
    if fmt is FlowFormat.pcap:
        _call_pcap(dsn, call_id, start, end, output)
        return
    if output is not None:
        raise typer.BadParameter("only with --format pcap", param_hint="--output")
    rows = _run(dsn, lambda conn: fetch_call_flow(conn, call_id, start, end))
    if not rows:
        typer.echo(f"no messages with Call-ID {call_id!r}", err=True)
        raise typer.Exit(1)
    if fmt is FlowFormat.json:
        data = [{c: to_jsonable(row.get(c)) for c in CALL_FLOW_COLUMNS} for row in rows]
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(f"Call-ID {call_id}: {len(rows)} messages")
    typer.echo(render_ladder(ladder_messages(rows)), nl=False)


def _call_pcap(dsn: str | None, call_id: str, start: datetime | None,
               end: datetime | None, output: Path | None) -> None:
    from pipeline.analysis.pcap import PcapEncoder, file_header, message_from_row

    with binary_output(output) as out:
        rows = _run(dsn, lambda conn: fetch_call_packets(conn, call_id, start, end))
        if not rows:
            typer.echo(f"no messages with Call-ID {call_id!r}", err=True)
            raise typer.Exit(1)
        encoder = PcapEncoder()
        messages = [message_from_row(row) for row in rows]
        out.write(file_header() + b"".join(encoder.encode(m) for m in messages if m))
    report_pcap(len(rows), messages.count(None), encoder.truncated)


def report_pcap(found: int, unaddressed: int, truncated: int) -> None:
    """Tell on stderr what a pcap export could not write as it was stored."""
    if unaddressed:
        typer.echo(f"warning: {unaddressed} of {found} messages have no IP address and "
                   "are not in the file", err=True)
    if truncated:
        typer.echo(f"warning: {truncated} UDP payloads longer than one IP packet holds "
                   "were cut to fit", err=True)


def stats(
    dsn: DsnOption = None,
    since: Annotated[
        str, typer.Option(envvar="HEP_INGEST_STATS_SINCE", help=f"Calls from. {_TIME_HELP}")
    ] = "1d",
    until: Annotated[
        str, typer.Option(envvar="HEP_INGEST_STATS_UNTIL", help=f"Calls until. {_TIME_HELP}")
    ] = "now",
    interval: Annotated[
        str,
        typer.Option(envvar="HEP_INGEST_STATS_INTERVAL",
                     help="Bucket size: 15m, 1h, 1d, or minute/hour/day/week."),
    ] = "hour",
    top: Annotated[
        int, typer.Option(envvar="HEP_INGEST_STATS_TOP", min=1, max=100,
                          help="Failure codes listed.")
    ] = 3,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Per interval: calls attempted and answered, ASR, ACD, PDD p50/p95, top failures."""
    now = datetime.now(UTC)
    start, end, bucket = parse_time(since, now), parse_time(until, now), parse_duration(interval)
    if bucket <= timedelta(0):
        raise typer.BadParameter(f"must be longer than zero, got {interval!r}",
                                 param_hint="--interval")
    rows = _run(dsn, lambda conn: fetch_stats(conn, start, end, bucket, top))
    typer.echo(render_rows(rows, STATS_COLUMNS, fmt), nl=False)


def register(app: typer.Typer) -> None:
    app.command("calls")(calls)
    app.command("call")(call)
    app.command("stats")(stats)
