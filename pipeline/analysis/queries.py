"""Parametrised SQL behind `hep-ingest calls`, `call` and `stats`.

Every query reads the SQL objects of migrations/0002_analysis.sql, so the commands and
the cookbook (docs/sql.md) give the same answers. Time ranges go to
`sip_calls_between`, which prunes partitions and uses the create_date indexes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import asyncpg

#: Columns `hep-ingest calls` shows, in order.
CALL_COLUMNS: Final = (
    "invite_time",
    "call_id",
    "caller",
    "callee",
    "state",
    "final_status",
    "final_reason",
    "pdd",
    "setup_time",
    "duration",
    "ended_by",
    "src",
    "dst",
)

#: Every column of sip_calls, for JSON and CSV.
CALL_COLUMNS_FULL: Final = (
    "call_id", "caller", "callee", "ruri_user", "state", "final_status", "final_reason",
    "invite_time", "first_provisional_time", "first_ringing_time", "answer_time",
    "final_time", "end_time", "end_method", "ended_by", "ended_by_ip", "ended_by_port",
    "pdd", "setup_time", "duration", "src_ip", "src_port", "dst_ip", "dst_port",
    "caller_user_agent", "callee_user_agent", "from_tag", "to_tag", "initial_cseq",
    "invite_attempts", "messages", "correlation_id",
)

CALLS_SQL: Final = """
SELECT c.*,
       host(c.src_ip) || ':' || c.src_port AS src,
       host(c.dst_ip) || ':' || c.dst_port AS dst
  FROM sip_calls_between($1, $2) c
 WHERE ($3::text IS NULL OR $3 IN (c.caller, c.callee, c.ruri_user))
   AND ($4::integer IS NULL OR c.final_status = $4)
   AND ($5::text IS NULL OR c.state = $5)
 ORDER BY c.invite_time DESC, c.call_id
 LIMIT $6
"""

CALL_FLOW_SQL: Final = """
SELECT f.*,
       host(f.src_ip) || ':' || f.src_port AS src,
       host(f.dst_ip) || ':' || f.dst_port AS dst
  FROM sip_call_flow($1, coalesce($2::timestamptz, '-infinity'),
                     coalesce($3::timestamptz, 'infinity')) f
 ORDER BY f.create_date, f.id
"""

CALL_FLOW_COLUMNS: Final = (
    "create_date", "leg", "src", "dst", "method", "status", "reason", "cseq_num",
    "cseq_method", "from_tag", "to_tag", "via_branch", "user_agent", "correlation_id",
)

STATS_COLUMNS: Final = (
    "interval_start", "attempted", "answered", "asr_percent", "acd_seconds",
    "pdd_p50_ms", "pdd_p95_ms", "top_failures",
)

# ASR = answered / attempted calls; ACD = mean duration of answered calls whose BYE
# was captured; PDD percentiles over calls that got an 18x. Buckets are aligned on
# 2000-01-01 00:00 UTC (hours and days start on the UTC hour and day).
STATS_SQL: Final = """
WITH calls AS (
    SELECT date_bin($3::interval, c.invite_time, TIMESTAMPTZ '2000-01-01 00:00:00+00')
               AS bucket,
           c.state, c.final_status, c.duration, c.pdd
      FROM sip_calls_between($1, $2) c
),
failures AS (
    SELECT bucket, final_status, count(*) AS n,
           row_number() OVER (PARTITION BY bucket ORDER BY count(*) DESC, final_status)
               AS rank
      FROM calls
     WHERE state <> 'answered' AND final_status IS NOT NULL
     GROUP BY bucket, final_status
)
SELECT c.bucket AS interval_start,
       count(*) AS attempted,
       count(*) FILTER (WHERE c.state = 'answered') AS answered,
       round(100.0 * count(*) FILTER (WHERE c.state = 'answered') / count(*), 1)
           AS asr_percent,
       round(avg(extract(epoch FROM c.duration)), 3) AS acd_seconds,
       round((percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM c.pdd) * 1000))::numeric, 3) AS pdd_p50_ms,
       round((percentile_cont(0.95) WITHIN GROUP (
           ORDER BY extract(epoch FROM c.pdd) * 1000))::numeric, 3) AS pdd_p95_ms,
       (SELECT string_agg(f.final_status || ' x' || f.n, ', ' ORDER BY f.rank)
          FROM failures f
         WHERE f.bucket = c.bucket AND f.rank <= $4) AS top_failures
  FROM calls c
 GROUP BY c.bucket
 ORDER BY c.bucket
"""


@dataclass(frozen=True, slots=True)
class CallFilter:
    since: datetime
    until: datetime
    user: str | None = None
    status: int | None = None
    state: str | None = None
    limit: int = 50


async def fetch_calls(conn: asyncpg.Connection, query: CallFilter) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        CALLS_SQL, query.since, query.until, query.user, query.status, query.state, query.limit
    )
    return [dict(r) for r in rows]


async def fetch_call_flow(
    conn: asyncpg.Connection,
    call_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """Every captured message of `call_id` and of the legs correlated with it."""
    rows = await conn.fetch(CALL_FLOW_SQL, call_id, since, until)
    return [dict(r) for r in rows]


async def fetch_stats(
    conn: asyncpg.Connection,
    since: datetime,
    until: datetime,
    interval: timedelta,
    top_failures: int = 3,
) -> list[dict[str, Any]]:
    rows = await conn.fetch(STATS_SQL, since, until, interval, top_failures)
    return [dict(r) for r in rows]


#: The SIP capture tables (sip_messages reads the same three).
SIP_TABLES: Final = ("hep_proto_1_call", "hep_proto_1_registration", "hep_proto_1_default")

#: What a message needs to be written as a packet: where, when, how, and its bytes.
_PACKET_COLUMNS: Final = (
    "t.create_date, t.id, t.src_ip, t.src_port, t.dst_ip, t.dst_port, t.ip_proto, "
    "hep_payload(t.raw, t.raw_bytes) AS payload"
)

# sip_call_flow finds the messages (the same as `hep-ingest call`); each is read back
# from its capture table through the (sid, create_date) index for its payload.
CALL_PACKETS_SQL: Final = """
SELECT p.*
  FROM sip_call_flow($1, coalesce($2::timestamptz, '-infinity'),
                     coalesce($3::timestamptz, 'infinity')) f
 CROSS JOIN LATERAL (
""" + "\n     UNION ALL\n".join(
    f"""    SELECT {_PACKET_COLUMNS} FROM {table} t
     WHERE f.capture_table = '{table}' AND t.sid = f.leg
       AND t.create_date = f.create_date AND t.id = f.id"""
    for table in SIP_TABLES
) + """
 ) p
 ORDER BY f.create_date, f.id
"""


@dataclass(frozen=True, slots=True)
class MessageFilter:
    """Which stored SIP messages `hep-ingest export` writes: a time range, and any of
    Call-IDs (or correlation ids), users (From, To or R-URI) and addresses (src or dst)."""

    since: datetime
    until: datetime
    call_ids: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()


def export_query(query: MessageFilter) -> tuple[str, list[Any]]:
    """SQL and arguments for the messages `query` selects, in capture order.

    Only the filters given appear in the SQL, so each is planned on its index
    (hep_index_key for text, as the indexes of migrations/0003 want).
    """
    args: list[Any] = [query.since, query.until]
    where = ["t.create_date >= $1", "t.create_date < $2"]

    def param(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    def keys(values: tuple[str, ...]) -> str:
        return f"ARRAY(SELECT hep_index_key(v) FROM unnest({param(list(values))}::text[]) v)"

    if query.call_ids:
        ids = keys(query.call_ids)
        where.append(f"(t.sid = ANY({ids}) OR hep_index_key(t.correlation_id) = ANY({ids}))")
    if query.users:
        users = keys(query.users)
        where.append(f"(hep_index_key(t.from_user) = ANY({users}) "
                     f"OR hep_index_key(t.to_user) = ANY({users}) "
                     f"OR hep_index_key(t.ruri_user) = ANY({users}))")
    if query.ips:
        ips = param(list(query.ips))
        where.append(f"(t.src_ip = ANY({ips}::inet[]) OR t.dst_ip = ANY({ips}::inet[]))")
    condition = "\n   AND ".join(where)
    branches = "\n UNION ALL\n".join(
        f"SELECT {_PACKET_COLUMNS} FROM {table} t\n WHERE {condition}" for table in SIP_TABLES
    )
    return f"SELECT m.* FROM (\n{branches}\n) m\n ORDER BY m.create_date, m.id", args


async def fetch_call_packets(
    conn: asyncpg.Connection,
    call_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[asyncpg.Record]:
    """The messages of `call_id` and its correlated legs, with payloads, in capture order."""
    rows: list[asyncpg.Record] = await conn.fetch(CALL_PACKETS_SQL, call_id, since, until)
    return rows


async def stream_messages(
    conn: asyncpg.Connection, query: MessageFilter, *, prefetch: int = 500
) -> AsyncIterator[asyncpg.Record]:
    """The messages `query` selects, through a server-side cursor: memory stays bounded
    by `prefetch` rows however many match. Runs in a read-only transaction."""
    sql, args = export_query(query)
    async with conn.transaction(readonly=True):
        async for row in conn.cursor(sql, *args, prefetch=prefetch):
            yield row
