"""PostgresSink: durable, exactly-once batch writes of capture rows.

One `write_batch(rows, offsets)` is one transaction: first the compare-and-set of the
batch's Kafka offsets in ``hep_ingest_consumer_offsets`` (a claim whose expected offset
is not the stored one fences the whole batch: it rolls back, nothing is written, the
caller learns the stored offsets), then one binary COPY of the rows straight into each
capture table, then COMMIT. When it returns, every accepted row and the offsets are
committed together: a batch is stored once however often it is read.

The ``record_id`` primary key still guards against duplicates the offsets cannot see (a
producer retry stores a record twice, at two offsets): a COPY that hits a unique
violation (or any data error) fails the transaction, which runs again through a
temporary staging twin of each capture table and ``INSERT ... SELECT ... ON CONFLICT
(record_id, create_date) DO NOTHING``. The common case pays nothing for it.

Every COPY goes through `_copy`: rows arrive in wire form (`CaptureRow.wire`, the
binary COPY tuple the consumer encoded as it built the row, `pipeline.storage.wire`)
and are written as they are; a row without one is encoded there. Whether the header
columns are json or jsonb is read from the catalog at start (`wire_format`).

Errors, told apart by SQLSTATE class::

    data errors (class 22 data exception, 23 integrity constraint, 54 program limit
    exceeded such as an index row too large; values the client cannot encode)
        -> the batch is bisected inside one transaction (savepoints) until the bad rows
           are isolated; the others are stored, the bad ones returned as RejectedRow
    transient errors (class 08, 53, 57P0x, 40001, 40P01, 55P03, timeouts, lost
    connections, refused connections)
        -> retried with bounded exponential backoff and jitter until success, the
           policy's max_elapsed, or `stop()`: the consumer pauses, nothing is dropped
    configuration errors at connect (a DSN asyncpg cannot parse; class 28 and 3D:
    no such role or database, wrong password)
        -> SinkConfigError at once, never retried
    anything else (permissions, bugs) -> SinkError

    SinkError
     +-- SinkStoppedError   stop() was requested while a write was still retrying
     +-- SinkConfigError    the DSN is wrong: retrying cannot help

Every table a row can be routed to (`pipeline.storage.rows.CAPTURE_TABLES`) is created
by the migrations; `start` checks that they exist. The sink never creates a table: a
sender must not be able to make the database create objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeVar

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Histogram
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    stop_never,
    wait_exponential,
    wait_random,
)

from pipeline.accel import copy_tuple
from pipeline.observability import get_logger
from pipeline.postgres.errors import describe_database_error, is_configuration_error, redact_dsn
from pipeline.postgres.migrate import apply_migrations
from pipeline.postgres.partitions import (
    DEFAULT_AHEAD,
    DEFAULT_RETENTION_DAYS,
    PartitionInterval,
    drop_expired_partitions,
    ensure_partitions,
)
from pipeline.storage.offsets import NO_STORED_OFFSET, BatchOffsets, BatchOutcome
from pipeline.storage.rows import CAPTURE_TABLES, COLUMNS, CaptureRow
from pipeline.storage.wire import (
    COPY_HEADER,
    COPY_TRAILER,
    JSONB_HEADERS,
    WireFormat,
    encode_inet,
)

log = get_logger(__name__)

T = TypeVar("T")

_HEADER_COLUMNS = ("protocol_header", "data_header")
_COLUMN_LIST = ", ".join(COLUMNS)

_ADVANCE_OFFSETS = """
UPDATE hep_ingest_consumer_offsets AS o
   SET next_offset = c.next_offset, updated_at = now()
  FROM unnest($3::integer[], $4::bigint[], $5::bigint[]) AS c(partition, expected, next_offset)
 WHERE o.consumer_group = $1 AND o.topic = $2 AND o.partition = c.partition
   AND o.next_offset = c.expected
RETURNING o.partition
"""
_CREATE_OFFSETS = """
INSERT INTO hep_ingest_consumer_offsets (consumer_group, topic, partition, next_offset)
SELECT $1, $2, c.partition, c.next_offset
  FROM unnest($3::integer[], $4::bigint[]) AS c(partition, next_offset)
ON CONFLICT (consumer_group, topic, partition) DO NOTHING
RETURNING partition
"""
_READ_OFFSETS = (
    "SELECT partition, next_offset FROM hep_ingest_consumer_offsets "
    "WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3::integer[])"
)

#: Called inside a batch's transaction, last, with the rows PostgreSQL refused.
BeforeCommit = Callable[[list["RejectedRow"]], Awaitable[None]]


def staging_table(table: str) -> str:
    """The session's temporary twin of a capture table (the fallback path's COPY target)."""
    return f"hep_ingest_staging_{table}"

TRANSIENT_SQLSTATES = frozenset(
    {"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03", "0A000"}
)
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "53", "58"})
DATA_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})


class SinkError(Exception):
    """The sink cannot store a batch (and retrying will not help)."""


class SinkStoppedError(SinkError):
    """`stop()` or `close()` was requested while the batch was not yet stored."""


class SinkConfigError(SinkError):
    """The DSN is malformed, or the server refused it (no such database or role, bad
    password): retrying cannot help."""


class RejectedRow(NamedTuple):
    row: CaptureRow
    reason: str  # "SQLSTATE: message", or "encode: message" for client-side errors


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff for transient errors: exponential from `initial` to `maximum` seconds,
    plus up to `jitter` seconds; give up after `max_elapsed` seconds (None: never,
    only `stop()` ends the retries)."""

    initial: float = 0.2
    maximum: float = 10.0
    jitter: float = 1.0
    max_elapsed: float | None = None

    @classmethod
    def instant(cls, max_elapsed: float | None = 30.0) -> RetryPolicy:
        return cls(initial=0.01, maximum=0.05, jitter=0.01, max_elapsed=max_elapsed)


@dataclass(frozen=True, slots=True)
class SinkSettings:
    dsn: str
    min_connections: int = 1
    max_connections: int = 4
    apply_migrations: bool = True
    partition_interval: PartitionInterval = PartitionInterval.DAILY
    partition_ahead: timedelta | int = DEFAULT_AHEAD  # an int counts intervals
    retention_days: int = DEFAULT_RETENTION_DAYS
    acquire_timeout: float = 10.0
    command_timeout: float = 120.0
    connect_timeout: float = 10.0
    close_timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # temp_buffers of the sink's sessions: the staging tables of a batch that takes the
    # fallback path (about 16 MB per 10,000 SIP rows) stay in memory instead of spilling
    # at PostgreSQL's 8 MB default, which makes the INSERT ... SELECT about 15% faster.
    # Allocated only as used, per connection; None leaves the server's setting.
    staging_buffers: str | None = "64MB"


@dataclass(slots=True)
class SinkMetrics:
    rows_written: Counter
    rows_duplicate: Counter
    batch_rows: Histogram
    latency: Histogram
    retries: Counter
    rows_rejected: Counter
    staging_fallbacks: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> SinkMetrics:
        return cls(
            rows_written=Counter("hep_ingest_rows_written", "Rows stored, by capture table",
                                 ["table"], registry=registry),
            rows_duplicate=Counter("hep_ingest_rows_duplicate",
                                   "Rows already stored (replays), by capture table",
                                   ["table"], registry=registry),
            batch_rows=Histogram("hep_ingest_write_batch_rows", "Rows per write() call",
                                 buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000,
                                          50000), registry=registry),
            latency=Histogram("hep_ingest_write_latency_seconds",
                              "Duration of write() calls, retries included",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                       10, 30, 60), registry=registry),
            retries=Counter("hep_ingest_write_retries", "Write attempts retried, by reason",
                            ["reason"], registry=registry),
            rows_rejected=Counter("hep_ingest_rows_rejected",
                                  "Rows PostgreSQL refused, by SQLSTATE", ["reason"],
                                  registry=registry),
            staging_fallbacks=Counter(
                "hep_ingest_write_staging_fallbacks",
                "Batches whose direct COPY failed on a data error (23505: a row stored "
                "before) and went through staging + ON CONFLICT, by SQLSTATE",
                ["reason"], registry=registry),
        )


def is_data_error(exc: BaseException) -> bool:
    """A row's values are at fault: retrying the same row can never succeed."""
    if isinstance(exc, _EncodeError | asyncpg.exceptions._base.DataError):  # client side
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in DATA_SQLSTATE_CLASSES
    return False


def is_transient(exc: BaseException) -> bool:
    """Retrying later may succeed: the server or the network, not the rows."""
    if isinstance(exc, asyncpg.exceptions.ClientConfigurationError):
        return False
    if isinstance(
        exc, (OSError, TimeoutError, asyncpg.exceptions.InternalClientError, _OffsetRowGoneError)
    ):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        return state in TRANSIENT_SQLSTATES or state[:2] in TRANSIENT_SQLSTATE_CLASSES
    # "connection is closed", "another operation is in progress" after a connection broke
    # mid-COPY: the sink terminates such a connection, a new one will do.
    return isinstance(exc, asyncpg.InterfaceError) and not isinstance(
        exc, asyncpg.exceptions._base.DataError
    )


def _retry_reason(exc: BaseException) -> str:
    if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate:
        sqlstate: str = exc.sqlstate
        return sqlstate
    return type(exc).__name__


def _reject_reason(exc: BaseException) -> tuple[str, str]:
    """(metric label, stored reason)."""
    if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate:
        return exc.sqlstate, f"{exc.sqlstate}: {exc}"
    return "encode", f"encode: {exc}"


def _configuration_error(dsn: str, exc: BaseException) -> SinkConfigError:
    failure = describe_database_error(exc, dsn)
    return SinkConfigError(failure.message if failure else f"PostgreSQL {redact_dsn(dsn)}: {exc}")


class _EncodeError(Exception):
    """The client could not encode a row's value for COPY."""


class _OffsetRowGoneError(Exception):
    """A fenced claim's offset row was deleted meanwhile; the next attempt creates it."""


class _FencedError(Exception):
    """A claim's expected offset is not the stored one; rolls the transaction back."""

    def __init__(self, stored: dict[int, int]) -> None:
        super().__init__(f"offsets fenced: {stored}")
        self.stored = stored


# The cached binary inet encoder (also the one the row encoder uses), registered as
# asyncpg's inet codec for the queries the sink sends with addresses as parameters.
_encode_inet = encode_inet


def _decode_inet(data: bytes) -> Any:
    """asyncpg's default: an ip_address, or an ip_interface when a prefix is set."""
    bits, length = data[1], data[3]
    packed = data[4:4 + length]
    if bits == length * 8:
        return ipaddress.ip_address(packed)
    return ipaddress.ip_interface((packed, bits))


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "inet", schema="pg_catalog", encoder=_encode_inet, decoder=_decode_inet,
        format="binary",
    )


class PostgresSink:
    """Owns an asyncpg pool; see the module docstring for the write contract."""

    stores_offsets = True

    def __init__(
        self,
        settings: SinkSettings,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.metrics = SinkMetrics.create(registry if registry is not None else CollectorRegistry())
        self._clock = clock
        self._pool: asyncpg.Pool | None = None
        self._stopping = asyncio.Event()
        #: How rows are encoded for COPY: the header columns' types, read from the
        #: catalog by `start` (jsonb until then).
        self.wire_format: WireFormat = JSONB_HEADERS

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, *, now: datetime | None = None) -> None:
        """Connect (retrying transient failures), apply migrations if configured, and
        make sure the partitions around `now` exist."""
        s = self.settings
        try:
            if s.apply_migrations:
                await self._retrying(lambda: apply_migrations(s.dsn))
            self._pool = await self._retrying(self._create_pool)
        except Exception as exc:
            if is_configuration_error(exc):
                raise _configuration_error(s.dsn, exc) from exc
            raise
        await self._check_tables()
        await self.maintain(now or self._clock(), raise_errors=True)

    async def _check_tables(self) -> None:
        async def missing() -> list[str]:
            async with self.pool.acquire(timeout=self.settings.acquire_timeout) as conn:
                rows = await conn.fetch(
                    "SELECT t FROM unnest($1::text[]) AS t WHERE to_regclass(t) IS NULL "
                    "ORDER BY t",
                    sorted(CAPTURE_TABLES),
                )
                return [r["t"] for r in rows]

        absent = await self._retrying(missing)
        if absent:
            raise SinkError(
                f"capture tables missing: {', '.join(absent)} (run `hep-ingest migrate`)"
            )
        self.wire_format = await self._retrying(self._header_types)

    async def _header_types(self) -> WireFormat:
        """json or jsonb: the header columns' type in every capture table."""
        async with self.pool.acquire(timeout=self.settings.acquire_timeout) as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT a.attname, format_type(a.atttypid, NULL) AS type "
                "FROM pg_attribute a WHERE a.attrelid = ANY($1::regclass[]) "
                "AND a.attname = ANY($2::text[]) AND NOT a.attisdropped",
                sorted(CAPTURE_TABLES), list(_HEADER_COLUMNS),
            )
        types: dict[str, set[str]] = defaultdict(set)
        for row in rows:
            types[row["attname"]].add(row["type"])
        for column in _HEADER_COLUMNS:
            if len(types[column]) != 1 or not types[column] <= {"json", "jsonb"}:
                raise SinkError(
                    f"capture tables disagree on {column}: {sorted(types[column])} "
                    "(expected json or jsonb in all; run `hep-ingest migrate`)"
                )
        return WireFormat(
            protocol_header_jsonb=types["protocol_header"] == {"jsonb"},
            data_header_jsonb=types["data_header"] == {"jsonb"},
        )

    async def _create_pool(self) -> asyncpg.Pool:
        s = self.settings
        server_settings = {"application_name": "hep-ingest-sink"}
        if s.staging_buffers:
            server_settings["temp_buffers"] = s.staging_buffers
        pool = await asyncpg.create_pool(
            s.dsn,
            min_size=s.min_connections,
            max_size=s.max_connections,
            init=_init_connection,
            timeout=s.connect_timeout,
            command_timeout=s.command_timeout,
            server_settings=server_settings,
        )
        assert pool is not None
        return pool

    def stop(self) -> None:
        """Ask writes still retrying to give up (with SinkStoppedError)."""
        self._stopping.set()

    async def close(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Stop retrying and close the pool, terminating it after `timeout` seconds."""
        self.stop()
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout or self.settings.close_timeout)
        except TimeoutError:
            log.warning("sink_close_timeout", timeout=timeout or self.settings.close_timeout)
            pool.terminate()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise SinkError("the sink is not started")
        return self._pool

    # -- maintenance -------------------------------------------------------------------

    async def maintain(
        self, now: datetime, *, raise_errors: bool = False
    ) -> tuple[list[str], list[str]]:
        """Create partitions ahead for the tables rows go to, drop expired ones of every
        registered table; return (created, dropped).

        A table an older consumer created on demand for an unknown HEP type gets no new
        partitions, so retention empties it instead of adding to it every day.
        Failures are logged and left to the next call unless `raise_errors`."""
        s = self.settings

        async def run() -> tuple[list[str], list[str]]:
            async with self.pool.acquire(timeout=s.acquire_timeout) as conn:
                created = await ensure_partitions(
                    conn, now=now, interval=s.partition_interval, ahead=s.partition_ahead,
                    tables=sorted(CAPTURE_TABLES),
                )
                dropped = await drop_expired_partitions(
                    conn, now=now, retention_days=s.retention_days
                )
                return created, dropped

        try:
            return await self._retrying(run) if raise_errors else await run()
        except Exception as exc:
            if raise_errors:
                raise
            log.warning("partition_maintenance_failed", error=f"{type(exc).__name__}: {exc}")
            return [], []

    # -- writes ------------------------------------------------------------------------

    async def write(self, rows: Sequence[CaptureRow]) -> list[RejectedRow]:
        """Store `rows` (committed when this returns); return the rows PostgreSQL
        refused, with why. Transient errors are retried (see RetryPolicy)."""
        return (await self.write_batch(rows)).rejected

    async def write_batch(
        self,
        rows: Sequence[CaptureRow],
        offsets: BatchOffsets | None = None,
        before_commit: BeforeCommit | None = None,
    ) -> BatchOutcome:
        """Store `rows` and advance `offsets` in one transaction (see the module
        docstring); `before_commit(rejected)` runs inside it, last, so that whatever it
        does (publishing dead letters) happens before the offsets move."""
        claims = offsets.claims if offsets is not None else ()
        if not rows and not claims:
            return BatchOutcome()
        started = time.perf_counter()
        by_table: dict[str, list[CaptureRow]] = defaultdict(list)
        for row in rows:
            by_table[row.table].append(row)

        async def attempt() -> tuple[dict[str, int], BatchOutcome]:
            return await self._write_once(rows, by_table, offsets, before_commit)

        counts, outcome = await self._retrying(attempt)
        if outcome.fenced:
            return outcome
        m = self.metrics
        for table, stored in counts.items():
            m.rows_written.labels(table).inc(stored)
        rejected_per_table: dict[str, int] = defaultdict(int)
        for bad in outcome.rejected:
            rejected_per_table[bad.row.table] += 1
        for table, table_rows in by_table.items():
            duplicates = len(table_rows) - counts.get(table, 0) - rejected_per_table[table]
            if duplicates > 0:
                m.rows_duplicate.labels(table).inc(duplicates)
        m.batch_rows.observe(len(rows))
        m.latency.observe(time.perf_counter() - started)
        return outcome

    async def stored_offsets(
        self, group: str, topic: str, partitions: Sequence[int]
    ) -> dict[int, int]:
        """partition -> stored next_offset, for the `partitions` that have a row."""

        async def read() -> dict[int, int]:
            async with self.pool.acquire(timeout=self.settings.acquire_timeout) as conn:
                found = await conn.fetch(_READ_OFFSETS, group, topic, list(partitions))
                return {r["partition"]: r["next_offset"] for r in found}

        return await self._retrying(read)

    async def _write_once(
        self,
        rows: Sequence[CaptureRow],
        by_table: dict[str, list[CaptureRow]],
        offsets: BatchOffsets | None,
        before_commit: BeforeCommit | None,
    ) -> tuple[dict[str, int], BatchOutcome]:
        if self._stopping.is_set():
            raise SinkStoppedError("the sink is stopping")
        async with self.pool.acquire(timeout=self.settings.acquire_timeout) as conn:
            try:
                try:
                    async with conn.transaction():
                        await self._claim(conn, offsets)
                        for table, table_rows in by_table.items():
                            await self._copy(conn, table, table_rows)
                        if before_commit is not None:
                            await before_commit([])
                    return {t: len(r) for t, r in by_table.items()}, BatchOutcome()
                except Exception as exc:
                    if not is_data_error(exc):
                        raise
                    # A row stored before (a replay the offsets did not prevent: a
                    # producer retry, a record the broker holds twice) or a bad row:
                    # staging + ON CONFLICT, bisecting around the rows refused.
                    label, reason = _reject_reason(exc)
                    self.metrics.staging_fallbacks.labels(label).inc()
                    log.info("write_via_staging", rows=len(rows), error=reason[:200])
                counts: dict[str, int] = defaultdict(int)
                rejected: list[RejectedRow] = []
                async with conn.transaction():
                    await self._claim(conn, offsets)
                    await self._isolate(conn, list(range(len(rows))), rows, counts, rejected)
                    if before_commit is not None:
                        await before_commit(rejected)
                return dict(counts), BatchOutcome(rejected=list(rejected))
            except _FencedError as fenced:
                return {}, BatchOutcome(fenced=fenced.stored)
            except asyncpg.UndefinedTableError as exc:
                _discard(conn)
                raise SinkError(f"{exc} (run `hep-ingest migrate`)") from exc
            except BaseException:
                # A connection that failed mid-COPY can be left in a state asyncpg cannot
                # recover ("another operation is in progress"): never hand it back.
                _discard(conn)
                raise

    async def _claim(self, conn: asyncpg.Connection, offsets: BatchOffsets | None) -> None:
        """Advance the batch's offsets (compare-and-set); raise _FencedError, which rolls
        the transaction back, if a partition's stored offset is not the expected one.

        First in the transaction: the rows it updates stay locked until the commit, so
        a second writer of the same partition waits, then finds the offset moved."""
        if offsets is None or not offsets.claims:
            return
        group, topic, claims = offsets.group, offsets.topic, offsets.claims
        won: set[int] = set()
        known = [c for c in claims if c.expected is not None]
        if known:
            advanced = await conn.fetch(
                _ADVANCE_OFFSETS, group, topic, [c.partition for c in known],
                [c.expected for c in known], [c.next_offset for c in known],
            )
            won.update(r["partition"] for r in advanced)
        # No row yet (a first batch, or rows deleted to fall back to Kafka's offsets):
        # create it; a row another writer created first makes the claim fail. A claim
        # that expected a row never creates one: a missing row there means the commit
        # that created it was lost, and so were the rows before this batch.
        unclaimed = [c for c in claims if c.partition not in won and c.expected is None]
        if unclaimed:
            created = await conn.fetch(
                _CREATE_OFFSETS, group, topic, [c.partition for c in unclaimed],
                [c.next_offset for c in unclaimed],
            )
            won.update(r["partition"] for r in created)
        lost = [c.partition for c in claims if c.partition not in won]
        if lost:
            stored = {
                r["partition"]: r["next_offset"]
                for r in await conn.fetch(_READ_OFFSETS, group, topic, lost)
            }
            creating = {c.partition for c in claims if c.expected is None}
            if any(p not in stored for p in lost if p in creating):
                # Deleted since the INSERT found it: claim again.
                raise _OffsetRowGoneError(f"offset rows deleted meanwhile: {lost}")
            raise _FencedError({p: stored.get(p, NO_STORED_OFFSET) for p in lost})

    async def _isolate(
        self,
        conn: asyncpg.Connection,
        indexes: list[int],
        rows: Sequence[CaptureRow],
        counts: dict[str, int],
        rejected: list[RejectedRow],
    ) -> None:
        """Store the rows at `indexes`, bisecting around the ones PostgreSQL refuses."""
        try:
            async with conn.transaction():  # a savepoint
                stored = await self._stage_and_insert(conn, [rows[i] for i in indexes])
        except Exception as exc:
            if not is_data_error(exc):
                raise
            if len(indexes) == 1:
                label, reason = _reject_reason(exc)
                self.metrics.rows_rejected.labels(label).inc()
                log.warning("row_rejected", table=rows[indexes[0]].table, reason=reason[:300])
                rejected.append(RejectedRow(rows[indexes[0]], reason))
                return
            middle = len(indexes) // 2
            await self._isolate(conn, indexes[:middle], rows, counts, rejected)
            await self._isolate(conn, indexes[middle:], rows, counts, rejected)
            return
        for table, n in stored.items():
            counts[table] += n

    async def _stage_and_insert(
        self, conn: asyncpg.Connection, rows: Sequence[CaptureRow]
    ) -> dict[str, int]:
        """Through each capture table's temporary staging twin, skipping rows stored
        before: ``INSERT ... SELECT ... ON CONFLICT (record_id, create_date) DO NOTHING``."""
        by_table: dict[str, list[CaptureRow]] = defaultdict(list)
        for row in rows:
            by_table[row.table].append(row)
        counts = {}
        for table, table_rows in by_table.items():
            staging = staging_table(table)
            await conn.execute(
                f'CREATE TEMP TABLE IF NOT EXISTS "{staging}" ON COMMIT DELETE ROWS AS '
                f'SELECT {_COLUMN_LIST} FROM "{table}" WITH NO DATA'
            )
            await self._copy(conn, staging, table_rows)
            status = await conn.execute(
                f'INSERT INTO "{table}" ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} '
                f'FROM "{staging}" ON CONFLICT (record_id, create_date) DO NOTHING'
            )
            # Emptied now: a later savepoint of the same transaction stages other rows.
            await conn.execute(f'TRUNCATE "{staging}"')
            counts[table] = int(status.rsplit(" ", 1)[-1])
        return counts

    async def _copy(self, conn: asyncpg.Connection, table: str, rows: Sequence[CaptureRow]) -> None:
        """Binary COPY of `rows` into `table` (a capture table or its staging twin, which
        has the same columns), in COLUMNS order. Every COPY of the sink goes through here.

        Rows carry their COPY tuple when the consumer encoded them as it built them
        (with this sink's `wire_format`); the others are encoded here. A value
        that cannot be encoded raises _EncodeError, a data error: the batch is bisected.
        """
        wire_format = self.wire_format
        tuples: list[bytes] = [COPY_HEADER]
        add = tuples.append
        try:
            for row in rows:
                wire = row.wire
                add(copy_tuple(row.values, wire_format) if wire is None else wire)
        except (ValueError, TypeError, OverflowError) as exc:
            # A value its column cannot hold (an inet that is no address, ...).
            raise _EncodeError(f"{type(exc).__name__}: {exc}") from exc
        add(COPY_TRAILER)
        # A memoryview: asyncpg would take bytes for a file name.
        await conn.copy_to_table(
            table, source=memoryview(b"".join(tuples)), format="binary", columns=COLUMNS
        )

    # -- retries -----------------------------------------------------------------------

    async def _retrying(self, operation: Callable[[], Awaitable[T]]) -> T:
        policy = self.settings.retry

        def should_retry(exc: BaseException) -> bool:
            return not self._stopping.is_set() and is_transient(exc)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            reason = _retry_reason(exc) if exc else "unknown"
            self.metrics.retries.labels(reason).inc()
            log.warning("write_retry", attempt=state.attempt_number, reason=reason,
                        error=str(exc)[:200],
                        sleep=round(state.next_action.sleep, 3) if state.next_action else None)

        async def sleep(seconds: float) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)

        retrying = AsyncRetrying(
            retry=retry_if_exception(should_retry),
            wait=wait_exponential(multiplier=policy.initial, max=policy.maximum)
            + wait_random(0, policy.jitter),
            stop=stop_after_delay(policy.max_elapsed) if policy.max_elapsed else stop_never,
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        async def call() -> T:
            # tenacity awaits only coroutine functions; `operation` may be a lambda.
            return await operation()

        try:
            return await retrying(call)
        except SinkError:
            raise
        except Exception as exc:
            if self._stopping.is_set() and is_transient(exc):
                raise SinkStoppedError(f"stopped while retrying: {exc}") from exc
            raise


def _discard(conn: asyncpg.Connection) -> None:
    """Close a connection that must not go back to the pool, keeping the error at hand.

    After the server went away asyncpg may already have detached the connection from
    its pool proxy, and terminate() then raises InterfaceError ("released back to the
    pool"), which would replace the error that says why the write failed."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()
