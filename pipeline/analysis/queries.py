"""Parametrised SQL behind `hep-ingest calls`, `call` and `stats`.

Every query reads the SQL objects of migrations/0002_analysis.sql, so the commands and
the cookbook (docs/sql.md) give the same answers. Time ranges go to
`sip_calls_between`, which prunes partitions and uses the create_date indexes.
"""

from __future__ import annotations

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
