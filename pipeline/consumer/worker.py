"""The consumer loop: fetch, decode, write, commit what is durable.

One batch is written while the next one is fetched and decoded (at most one write in
flight, so decoding, which is CPU-bound, overlaps the database's own work).

Exactly once: each batch claims, per partition, the move of the offset stored in
PostgreSQL from the one this worker expects (read at assignment, or claimed by its
previous batch) to the batch's last offset + 1; the sink applies the claims with a
compare-and-set in the transaction of the rows. A fenced claim (another worker stored
the partition meanwhile, or this one was sent back in the log) writes nothing: the
worker drops what it holds of the partition and seeks to the stored offset. On
assignment the worker seeks to the stored offsets; a partition without one starts at
Kafka's committed offset. The sink's dead letters are acknowledged by the broker
before the transaction commits.

Kafka commits follow the PostgreSQL commit, for lag tooling (and for the stdout sink,
which stores no offsets: there they are what a restart resumes from).

While a write is slow (the database is down and the sink retries), the next batch
fills up and the worker pauses its partitions instead of fetching further; it keeps
calling ``getmany`` so that the group does not consider it dead, and resumes when the
write completes.

Lag (records not yet stored) is measured by a task of its own, so it keeps moving while
the worker waits paused: the end offsets are asked of the broker, because the high
watermarks of fetch responses stop when the partitions are paused.

On a rebalance, ``on_partitions_revoked`` waits for the write in flight, commits what
is durable, and drops the records of revoked partitions that were fetched but not
written: their new owner reads them again from the stored offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import ConsumerStoppedError, IllegalStateError, KafkaError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)

from pipeline.accel import build_rows
from pipeline.consumer.dead_letter import DeadLetter, DeadLetterPublisher
from pipeline.consumer.dedup import DuplicateFilter
from pipeline.consumer.filters import Screen
from pipeline.consumer.kpi_rows import observe_rows
from pipeline.consumer.metrics import ConsumerMetrics
from pipeline.consumer.retry import backoff, is_transient, sleep_unless_stopped
from pipeline.consumer.settings import ConsumerSettings
from pipeline.consumer.sink import Sink
from pipeline.observability import get_logger
from pipeline.records import RecordCodec
from pipeline.sip.kpi import SipKpi
from pipeline.storage.offsets import NO_STORED_OFFSET, BatchOffsets, BatchOutcome, OffsetClaim
from pipeline.storage.rows import DUPLICATES_TABLE, UNKNOWN_TYPE_TABLE, CaptureRow

log = get_logger("pipeline.consumer")

# While paused for backpressure, call getmany this often so the group keeps us.
_KEEPALIVE_SECONDS = 1.0
# Once stopping, one offset-commit attempt waits at most this long: a broker that does
# not answer by then costs a replay of the last batch (deduplicated), never data.
_STOPPING_COMMIT_TIMEOUT = 2.0
_LAG_INTERVAL = 1.0
# One end-offsets request waits at most this long (the broker may be away too); the
# gauges keep their last values meanwhile.
_LAG_QUERY_TIMEOUT = 5.0
# Records fetched and decoded between two yields to the event loop (~15 ms of CPU).
# The write in flight only advances when the loop gets back to it: each of its round
# trips (BEGIN, COPY's steps and flow control, INSERT, COMMIT) waits for the decode
# slice running at that moment, while PostgreSQL sits idle. With 2000 (~60 ms per
# slice) a 10k-row write took ~540 ms instead of ~300 ms and decoding and writing
# barely overlapped (bench/consumer_bench.py: 17k rows/s); with 500, ~23.5k rows/s
# (the consumer's CPU becomes the limit). Much smaller slices cost more getmany calls.
_DECODE_SLICE = 500
# Reading the stored offsets at assignment waits at most this long. Past it the worker
# starts at Kafka's committed offsets: a claim made from there on a partition that has
# a stored offset is fenced, and the worker then seeks to the stored offset.
_STORED_OFFSETS_TIMEOUT = 15.0
# How often an idle worker compares the offsets it believes stored with PostgreSQL's.
# A claim checks its partitions itself, but a partition that gets no new record makes
# no claim: after a crash that lost acknowledged commits (synchronous_commit=off, a
# restore from backup) its lost rows would wait for the next record or a restart.
_OFFSETS_CHECK_INTERVAL = 5.0
_OFFSETS_CHECK_TIMEOUT = 2.0


@dataclass(slots=True)
class _PartitionChunk:
    """One partition's share of a batch.

    The source of ``rows[i]`` (for a dead letter if PostgreSQL rejects the row) is
    ``offsets[i]``, ``keys[i]``, ``values[i]``: flat lists of ints and bytes rather than
    the ConsumerRecord objects, which the cyclic GC would otherwise re-scan while the
    batch is alive.
    """

    rows: list[CaptureRow] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    # Records read but deliberately not stored (duplicate captures): their offsets
    # advance with the rest.
    discarded: int = 0
    next_offset: int = -1

    def keep_only(self, kept: Sequence[int]) -> None:
        """Keep the rows at positions `kept` (ascending) with their sources. The others
        were read but are not stored (filtered out, duplicates): a decision, not a loss,
        so their offsets advance with the chunk's next_offset."""
        self.discarded += len(self.rows) - len(kept)
        self.rows = [self.rows[i] for i in kept]
        self.offsets = [self.offsets[i] for i in kept]
        self.keys = [self.keys[i] for i in kept]
        self.values = [self.values[i] for i in kept]


@dataclass(slots=True)
class _Batch:
    parts: dict[TopicPartition, _PartitionChunk] = field(default_factory=dict)
    records: int = 0
    started: float = 0.0
    # Set when the write is launched: what it moves the stored offsets from and to.
    claims: dict[TopicPartition, OffsetClaim] = field(default_factory=dict)

    def drop(self, partitions: Iterable[TopicPartition]) -> int:
        dropped = 0
        for tp in partitions:
            chunk = self.parts.pop(tp, None)
            if chunk is not None:
                dropped += len(chunk.rows) + len(chunk.dead) + chunk.discarded
        self.records -= dropped
        return dropped

    def offsets(self) -> dict[TopicPartition, int]:
        return {tp: chunk.next_offset for tp, chunk in self.parts.items()}


@dataclass(frozen=True, slots=True)
class _Fenced:
    claim: OffsetClaim
    stored: int  # the next_offset stored in PostgreSQL when the claim failed

    @property
    def already_stored(self) -> bool:
        """The stored offset is the claim's target: the batch is stored already (this
        worker's own commit whose acknowledgement was lost, then retried)."""
        return self.stored == self.claim.next_offset


@dataclass(frozen=True, slots=True)
class _WriteResult:
    offsets: dict[TopicPartition, int]
    written: int
    dead_letters: int
    fenced: dict[TopicPartition, _Fenced] = field(default_factory=dict)


@dataclass(slots=True)
class _Progress:
    consumed: int = 0
    written: int = 0
    dead_letters: int = 0
    last_log: float = 0.0
    consumed_at_last_log: int = 0
    written_at_last_log: int = 0


class ConsumerWorker:
    """Drives one AIOKafkaConsumer; owns neither it, the sink nor the publisher."""

    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        sink: Sink,
        dead_letters: DeadLetterPublisher,
        codec: RecordCodec,
        settings: ConsumerSettings,
        metrics: ConsumerMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._sink = sink
        self._dead_letters = dead_letters
        self._codec = codec
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._building = _Batch()
        self._in_flight: asyncio.Task[_WriteResult] | None = None
        self._lock = asyncio.Lock()
        self._assigned: set[TopicPartition] = set()
        self._durable: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        # Per partition, the stored offset the next batch claims to move from: read at
        # assignment (None: no row stored), then the target of the last batch launched.
        self._expected: dict[TopicPartition, int | None] = {}
        self._progress = _Progress()
        self._stop = asyncio.Event()
        self._next_maintain = 0.0
        self._next_offsets_check = 0.0
        # Per partition, the offset of the first record fetched since its assignment:
        # what is stored when no write of it has completed yet.
        self._fetch_start: dict[TopicPartition, int] = {}
        self._lag_total = 0
        # Optional row features, applied to built rows (so any row builder gets them).
        capture_filter = settings.capture_filter
        self._screen = Screen(capture_filter) if capture_filter.active else None
        self._kpi = SipKpi(settings.sip_kpi) if settings.sip_kpi is not None else None
        self._dedup = DuplicateFilter(settings.dedup) if settings.dedup.enabled else None

    # -- rebalance -----------------------------------------------------------------

    @property
    def rebalance_listener(self) -> ConsumerRebalanceListener:
        return _RebalanceListener(self)

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:
            try:
                await self._settle_in_flight()
            except Exception as exc:  # the main loop reports it; commit what we can
                log.warning("write_failed_during_rebalance", error=repr(exc))
            await self._commit()
            dropped = self._building.drop(revoked)
            for tp in revoked:
                self._durable.pop(tp, None)
                self._expected.pop(tp, None)
                self._committed.pop(tp, None)
                self._fetch_start.pop(tp, None)
                self._assigned.discard(tp)
                if self._kpi is not None:
                    self._kpi.forget(tp.partition)
                self._forget_lag(tp)
                if self._dedup is not None:
                    self._dedup.forget(tp.partition)
            self._metrics.assigned_partitions.set(len(self._assigned))
            if revoked:
                log.info(
                    "partitions_revoked",
                    partitions=sorted(tp.partition for tp in revoked),
                    dropped_unwritten=dropped,
                )

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Seek each partition to its offset stored in PostgreSQL, if it has one."""
        self._assigned = set(assigned)
        self._metrics.assigned_partitions.set(len(self._assigned))
        stored = await self._read_stored_offsets(assigned)
        for tp in assigned:
            offset = stored.get(tp)
            self._expected[tp] = offset
            if offset is not None:
                self._consumer.seek(tp, offset)
        log.info(
            "partitions_assigned",
            partitions=sorted(tp.partition for tp in assigned),
            stored_offsets={str(tp.partition): offset for tp, offset in sorted(stored.items())},
        )

    async def _read_stored_offsets(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        try:
            return await self._stored_offsets_of(partitions, _STORED_OFFSETS_TIMEOUT)
        except Exception as exc:  # the first claims are fenced and correct the position
            log.warning("stored_offsets_unreadable", error=repr(exc)[:300])
            return {}

    async def _stored_offsets_of(
        self, partitions: Iterable[TopicPartition], wait_s: float
    ) -> dict[TopicPartition, int]:
        """The offsets stored in PostgreSQL for `partitions` that have a row; raises
        what the sink raises, TimeoutError past `wait_s` per topic."""
        by_topic: dict[str, list[int]] = {}
        for tp in partitions:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        found: dict[TopicPartition, int] = {}
        for topic, numbers in by_topic.items():
            offsets = await asyncio.wait_for(
                self._sink.stored_offsets(self._settings.group, topic, sorted(numbers)),
                wait_s,
            )
            found.update({TopicPartition(topic, p): o for p, o in offsets.items()})
        return found

    # -- main loop -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then finish the write in flight and commit."""
        self._stop = stop
        settings = self._settings
        now = self._clock()
        self._progress.last_log = now
        await self._maintain()
        self._next_maintain = now + settings.maintain_interval
        lag_reporting = asyncio.Event()
        lag_reporting.set()
        lag_reporter = asyncio.create_task(self._report_lag(lag_reporting), name="hep-ingest-lag")
        try:
            while not stop.is_set():
                batch = self._building
                if batch.records < settings.batch_size:
                    if batch.records:
                        wait = batch.started + settings.flush_interval - self._clock()
                    else:
                        wait = settings.flush_interval
                    chunk = min(settings.batch_size - batch.records, _DECODE_SLICE)
                    data = await self._fetch(max(0.0, wait), chunk)
                    self._add(data)
                    if self._in_flight is not None:
                        # Decoding is CPU-bound: let the write's I/O (COPY) move on.
                        await asyncio.sleep(0)
                if self._in_flight is not None and self._in_flight.done():
                    await self._complete_in_flight(backpressure=False)
                batch = self._building
                now = self._clock()
                if batch.records and (
                    batch.records >= settings.batch_size
                    or now - batch.started >= settings.flush_interval
                ):
                    await self._complete_in_flight(backpressure=True)
                    if self._in_flight is None:  # else stopping with the write still out
                        self._launch(self._building)
                await self._periodic()
        finally:
            # The flag, not only the cancel: Python 3.11's asyncio.wait_for returns the
            # inner result and drops a cancellation that arrives as the inner await
            # finishes (fixed in 3.12), so a cancelled lag query could go on reporting
            # forever and hold the stop (seen in CI: progress lines after SIGTERM).
            lag_reporting.clear()
            lag_reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag_reporter
            await self._drain()

    def _launch(self, batch: _Batch) -> None:
        for tp, chunk in batch.parts.items():
            batch.claims[tp] = OffsetClaim(tp.partition, self._expected.get(tp), chunk.next_offset)
            self._expected[tp] = chunk.next_offset
        self._building = _Batch()
        self._in_flight = asyncio.create_task(self._write(batch), name="hep-ingest-write")

    async def _drain(self) -> None:
        if self._in_flight is None:
            return
        stopping = self._stop.is_set()
        if stopping:
            # A write still retrying (the database unreachable) gives up now instead of
            # holding the stop for shutdown_timeout; a write in progress may finish.
            self._sink.stop()
        try:
            await asyncio.wait_for(
                self._complete_in_flight(backpressure=False), self._settings.shutdown_timeout
            )
        except TimeoutError:
            log.warning("shutdown_write_abandoned", timeout=self._settings.shutdown_timeout)
        except Exception as exc:
            if not stopping:
                raise
            # Its offsets stay uncommitted: the records are read again at the next start.
            log.warning("shutdown_write_abandoned", error=repr(exc)[:300])
        finally:
            task, self._in_flight = self._in_flight, None
            if task is not None and not task.done():
                task.cancel()
            self._log_progress(force=True)

    # -- fetch and decode ----------------------------------------------------------

    async def _fetch(
        self, wait: float, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """getmany, retrying transient Kafka errors until they pass or we stop."""
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(_retry_fetch),
                wait=backoff(self._settings.retry),
                stop=lambda _state: self._stop.is_set(),
                sleep=sleep_unless_stopped(self._stop),
                before_sleep=self._before_retry("fetch"),
                reraise=True,
            ):
                with attempt:
                    return await self._consumer.getmany(  # type: ignore[no-any-return]
                        timeout_ms=int(wait * 1000), max_records=max_records
                    )
        except (KafkaError, OSError):
            if self._stop.is_set():
                return {}
            raise
        return {}

    def _add(self, data: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        if not data:
            return
        batch = self._building
        codec = self._codec
        store_auth_key = self._settings.store_auth_key
        headers = self._settings.headers
        # The sink's binary COPY form, read once it started (None: it wants none).
        wire_format = self._sink.wire_format
        added = 0
        unknown_type = 0
        for tp, messages in data.items():
            if not messages:
                continue
            if tp not in self._assigned:
                # Revoked while the fetch was on its way; the new owner reads these.
                continue
            expected = self._expected.get(tp)
            if expected is not None and messages[0].offset < expected:
                # Fetched before a seek to the stored offset: stored already.
                messages = [m for m in messages if m.offset >= expected]
                if not messages:
                    continue
            chunk = batch.parts.get(tp)
            if chunk is None:
                chunk = batch.parts[tp] = _PartitionChunk()
                self._fetch_start.setdefault(tp, messages[0].offset)
            first_new = len(chunk.rows)
            values = [message.value for message in messages]
            offsets = [message.offset for message in messages]
            rows, failures = build_rows(
                values, tp.partition, offsets, codec=codec, store_auth_key=store_auth_key,
                headers=headers, wire_format=wire_format,
            )
            keys = [message.key for message in messages]
            if failures:
                failed = set()
                for failure in failures:
                    failed.add(failure.position)
                    chunk.dead.append(
                        _dead_letter(messages[failure.position], failure.reason, failure.detail)
                    )
                kept = [i for i in range(len(messages)) if i not in failed]
                values = [values[i] for i in kept]
                offsets = [offsets[i] for i in kept]
                keys = [keys[i] for i in kept]
            for row in rows:
                if row.table == UNKNOWN_TYPE_TABLE:
                    unknown_type += 1
            chunk.rows.extend(rows)
            chunk.offsets.extend(offsets)
            chunk.keys.extend(keys)
            # Every None value is a failure ("no_value"), dropped above.
            chunk.values.extend(cast(list[bytes], values))
            if self._dedup is not None:
                self._handle_duplicates(tp.partition, chunk, first_new)
            chunk.next_offset = messages[-1].offset + 1
            added += len(messages)
        if added:
            if batch.records == 0:
                batch.started = self._clock()
            batch.records += added
            self._progress.consumed += added
            self._metrics.records_consumed.inc(added)
        if unknown_type:
            self._metrics.rows_unknown_type.inc(unknown_type)

    def _handle_duplicates(self, partition: int, chunk: _PartitionChunk, start: int) -> None:
        """Drop the duplicate captures among the chunk's rows from `start` on, or route
        them to the duplicates table (--dedup-keep)."""
        assert self._dedup is not None
        evicted_before = self._dedup.evicted_early
        found = self._dedup.duplicates(partition, chunk.rows[start:], chunk.offsets[start:])
        if self._dedup.evicted_early > evicted_before:
            self._metrics.dedup_evicted.inc(self._dedup.evicted_early - evicted_before)
        if not found:
            return
        if self._dedup.settings.keep:
            for position in found:
                chunk.rows[start + position].table = DUPLICATES_TABLE
            self._metrics.duplicates.labels(action="kept").inc(len(found))
        else:
            duplicate = {start + position for position in found}
            chunk.keep_only([i for i in range(len(chunk.rows)) if i not in duplicate])
            self._metrics.duplicates.labels(action="dropped").inc(len(found))

    # -- write and commit ----------------------------------------------------------

    async def _write(self, batch: _Batch) -> _WriteResult:
        """Store the batch; partitions whose claim is fenced are dropped from it and the
        rest is written again (a fenced write stores nothing)."""
        if self._screen is not None:
            self._apply_filters(batch)
        fenced: dict[TopicPartition, _Fenced] = {}
        outcome = BatchOutcome()
        dead: list[DeadLetter] = []
        while batch.parts:
            outcome, dead = await self._store(batch)
            if not outcome.fenced:
                break
            lost = {tp for tp in batch.parts if tp.partition in outcome.fenced}
            for tp in lost:
                fenced[tp] = _Fenced(batch.claims[tp], outcome.fenced[tp.partition])
            if not lost:  # cannot happen: claims name the batch's partitions
                raise RuntimeError(f"fenced partitions not in the batch: {outcome.fenced}")
            batch.drop(lost)
            outcome, dead = BatchOutcome(), []
        rows = [row for chunk in batch.parts.values() for row in chunk.rows]
        if self._kpi is not None:
            self._observe_kpi(rows, outcome.rejected)
        for letter in dead:
            self._metrics.dead_letters.labels(reason=letter.reason).inc()
        if dead:
            log.warning(
                "dead_letters_published",
                count=len(dead),
                topic=self._dead_letters.topic,
                sample_reason=dead[0].reason,
                sample_detail=dead[0].detail[:200],
                sample_source=f"{dead[0].topic}/{dead[0].partition}/{dead[0].offset}",
            )
        return _WriteResult(batch.offsets(), len(rows) - len(outcome.rejected), len(dead), fenced)

    async def _store(self, batch: _Batch) -> tuple[BatchOutcome, list[DeadLetter]]:
        """One sink write of the batch, its dead letters published before it commits."""
        rows: list[CaptureRow] = []
        spans: list[tuple[int, TopicPartition, _PartitionChunk]] = []  # (first row, ...)
        dead: list[DeadLetter] = []
        for tp, chunk in batch.parts.items():
            spans.append((len(rows), tp, chunk))
            rows.extend(chunk.rows)
            dead.extend(chunk.dead)
        # Published while the rows are written; awaited before the offsets move.
        publish = asyncio.create_task(self._dead_letters.publish(dead)) if dead else None
        letters = dead

        async def before_commit(rejected: list[Any]) -> None:
            nonlocal letters
            more = []
            if rejected:
                index = {id(row): i for i, row in enumerate(rows)}
                for item in rejected:
                    position = index.get(id(item.row))
                    if position is None:
                        position = rows.index(item.row)
                    more.append(_rejected_letter(spans, position, str(item.reason)))
                await self._dead_letters.publish(more)
            if publish is not None:
                await publish
            letters = dead + more

        offsets = BatchOffsets(
            self._settings.group,
            self._settings.topic,
            tuple(batch.claims[tp] for tp in batch.parts if tp in batch.claims),
        )
        try:
            outcome = await self._sink.write_batch(rows, offsets, before_commit)
        except BaseException:
            if publish is not None and not publish.done():
                publish.cancel()
            raise
        if outcome.fenced and publish is not None and not publish.done():
            # Written again without the fenced partitions (their owner publishes
            # theirs): the dead-letter topic is at-least-once.
            publish.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publish
        return outcome, letters

    def _apply_filters(self, batch: _Batch) -> None:
        """Capture filters: drop and censor built rows before they are written. A
        dropped record's offset still advances with its chunk's next_offset."""
        assert self._screen is not None
        screen = self._screen.screen
        for chunk in batch.parts.values():
            result = screen(chunk.rows)
            if len(result.kept) != len(chunk.rows):
                chunk.keep_only(result.kept)
            self._metrics.record_screen(result)

    def _observe_kpi(self, rows: list[CaptureRow], rejected: Sequence[Any]) -> None:
        """SIP KPIs of the rows just committed (not of those PostgreSQL refused)."""
        assert self._kpi is not None
        stored: Iterable[CaptureRow] = rows
        if rejected:
            refused = {id(item.row) for item in rejected}
            stored = [row for row in rows if id(row) not in refused]
        self._metrics.record_kpi(observe_rows(self._kpi, stored), self._kpi.pending())

    async def _settle_in_flight(self) -> None:
        """Wait for the write in flight (if any) and mark its offsets durable."""
        task = self._in_flight
        if task is None:
            return
        try:
            result = await asyncio.shield(task)
        finally:
            if task.done() and self._in_flight is task:
                self._in_flight = None
        for tp, offset in result.offsets.items():
            if tp in self._assigned and offset > self._durable.get(tp, -1):
                self._durable[tp] = offset
        for tp, fenced in result.fenced.items():
            self._on_fenced(tp, fenced)
        self._progress.written += result.written
        self._progress.dead_letters += result.dead_letters

    def _on_fenced(self, tp: TopicPartition, fenced: _Fenced) -> None:
        """Continue from the stored offset: what this worker holds of the partition
        beyond it is stored, or another worker's to store."""
        assigned = tp in self._assigned
        if fenced.already_stored:
            log.info("batch_already_stored", partition=tp.partition, offset=fenced.stored)
            if assigned and fenced.stored > self._durable.get(tp, -1):
                self._durable[tp] = fenced.stored
            return
        self._metrics.offsets_fenced.inc()
        log.warning(
            "offsets_fenced",
            topic=tp.topic,
            partition=tp.partition,
            claimed_from=fenced.claim.expected,
            claimed_to=fenced.claim.next_offset,
            stored=fenced.stored,
            still_assigned=assigned,
        )
        if not assigned:
            return
        if fenced.stored == NO_STORED_OFFSET:
            # The row's creating commit was lost: start again where this worker began.
            self._rewind(tp, self._fetch_start.get(tp), expected=None)
        else:
            self._rewind(tp, fenced.stored, expected=fenced.stored)

    def _rewind(self, tp: TopicPartition, offset: int | None, *, expected: int | None) -> None:
        """Continue partition `tp` from `offset` (None: from Kafka's position); the next
        claim moves the stored offset from `expected` (None: no row is stored)."""
        dropped = self._building.drop([tp])
        # The partition's stream continues elsewhere than this worker read it: what it
        # remembers of the calls and captures seen there no longer follows on.
        if self._kpi is not None:
            self._kpi.forget(tp.partition)
        if self._dedup is not None:
            self._dedup.forget(tp.partition)
        self._expected[tp] = expected
        if offset is None:
            self._durable.pop(tp, None)
        else:
            self._durable[tp] = offset
            if tp in self._consumer.assignment():
                self._consumer.seek(tp, offset)
        log.info("seek_to_stored_offset", partition=tp.partition, offset=offset,
                 dropped_unwritten=dropped)

    async def _complete_in_flight(self, *, backpressure: bool) -> None:
        async with self._lock:
            task = self._in_flight
            if task is None:
                return
            if backpressure and not task.done():
                await self._wait_paused(task)
                if not task.done():  # stopping: _drain waits for it, bounded
                    return
            await self._settle_in_flight()
            await self._commit()

    async def _wait_paused(self, task: asyncio.Task[_WriteResult]) -> None:
        """Backpressure: fetch nothing more until the write completes."""
        paused = set(self._consumer.assignment())
        self._consumer.pause(*paused)
        started = self._clock()
        warned = False
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=_KEEPALIVE_SECONDS)
                if task.done() or self._stop.is_set():
                    break
                if not warned and self._clock() - started > 5:
                    warned = True
                    log.warning(
                        "write_slow_paused_fetching", waited_s=round(self._clock() - started)
                    )
                # Keeps the member alive (max.poll.interval). Paused partitions return
                # nothing; partitions assigned meanwhile might, and must be kept.
                self._add(await self._fetch(0.0, 1 + self._settings.batch_size))
        finally:
            current = self._consumer.assignment()
            still = [tp for tp in self._consumer.paused() if tp in current]
            if still:
                self._consumer.resume(*still)
            if warned:
                log.info("write_resumed", waited_s=round(self._clock() - started, 1))

    async def _commit(self) -> None:
        """Commit the durable offsets of assigned partitions that moved since last time."""

        def pending() -> dict[TopicPartition, int]:
            assigned = self._consumer.assignment()
            return {
                tp: offset
                for tp, offset in self._durable.items()
                if tp in assigned and offset > self._committed.get(tp, -1)
            }

        offsets = pending()
        if not offsets:
            return
        attempts = stop_after_attempt(self._settings.retry.commit_attempts)
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(is_transient),
                wait=backoff(self._settings.retry),
                stop=lambda state: attempts(state) or self._stop.is_set(),
                sleep=sleep_unless_stopped(self._stop),
                before_sleep=self._before_retry("commit"),
                reraise=True,
            ):
                with attempt:
                    offsets = pending()
                    if offsets:
                        # aiokafka retries a commit for as long as the coordinator is
                        # unknown; bound each attempt so a stop is never stuck here.
                        timeout = self._settings.commit_timeout
                        if self._stop.is_set():
                            timeout = min(timeout, _STOPPING_COMMIT_TIMEOUT)
                        await asyncio.wait_for(self._consumer.commit(offsets), timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            # Durable but not committed: the next commit carries these offsets again;
            # if the partition moves to another worker it re-reads them (deduplicated).
            log.warning("commit_failed", error=repr(exc), partitions=len(offsets))
            return
        self._committed.update(offsets)
        self._metrics.commits.inc()

    def _before_retry(self, what: str) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            self._metrics.kafka_retries.inc()
            error = state.outcome.exception() if state.outcome is not None else None
            log.warning(
                "kafka_retry",
                operation=what,
                attempt=state.attempt_number,
                error=repr(error),
                sleep_s=round(state.upcoming_sleep, 2),
            )

        return before_sleep

    # -- periodic work -------------------------------------------------------------

    async def _periodic(self) -> None:
        now = self._clock()
        if now >= self._next_maintain:
            self._next_maintain = now + self._settings.maintain_interval
            # Not alongside a write: both would compete for the same connections.
            await self._complete_in_flight(backpressure=True)
            await self._maintain()
        if now >= self._next_offsets_check and self._sink.stores_offsets:
            self._next_offsets_check = now + _OFFSETS_CHECK_INTERVAL
            await self._check_stored_offsets()
        self._log_progress()

    async def _check_stored_offsets(self) -> None:
        """Go back to PostgreSQL's stored offset of each partition without a write in
        flight whose stored offset is behind what this worker stored there: commits
        acknowledged and then lost. A stored offset ahead is another worker's (its
        next claim is fenced); an unreadable one waits for the next check."""
        async with self._lock:
            idle = {
                tp: offset
                for tp in self._assigned
                if (offset := self._durable.get(tp)) is not None
                and self._expected.get(tp) == offset  # no claim out for it
            }
            if not idle:
                return
            try:
                stored = await self._stored_offsets_of(idle, _OFFSETS_CHECK_TIMEOUT)
            except Exception as exc:  # the database is down: the next check, or a claim
                log.debug("stored_offsets_check_failed", error=repr(exc)[:300])
                return
            for tp, believed in idle.items():
                if tp not in self._assigned:
                    continue  # revoked meanwhile
                found = stored.get(tp)
                # No row: even the claim that created it was lost; go back to where
                # this worker began reading the partition.
                rewind_to = found if found is not None else self._fetch_start.get(tp)
                if rewind_to is None or rewind_to >= believed:
                    continue
                self._metrics.offsets_fenced.inc()
                log.warning(
                    "stored_offsets_behind",
                    topic=tp.topic,
                    partition=tp.partition,
                    believed_stored=believed,
                    stored=found,
                )
                self._rewind(tp, rewind_to, expected=found)

    async def _maintain(self) -> None:
        try:
            await self._sink.maintain(datetime.now(UTC))
        except Exception as exc:  # rows still land in the DEFAULT partition
            log.warning("maintenance_failed", error=repr(exc))

    async def _report_lag(self, reporting: asyncio.Event) -> None:
        """Every _LAG_INTERVAL while `reporting` is set: the lag gauges, and the progress
        line when it is due."""
        while reporting.is_set():
            try:
                await self._update_lag()
            except Exception as exc:  # a gauge must never stop the consumer
                log.warning("lag_update_failed", error=repr(exc))
            self._log_progress()
            await asyncio.sleep(_LAG_INTERVAL)

    async def _update_lag(self) -> None:
        """Per assigned partition: its end offset minus the offset after the last record
        stored or dead-lettered, i.e. what a restart would read again plus what is new."""
        partitions = list(self._assigned)
        try:
            ends = await asyncio.wait_for(
                self._consumer.end_offsets(partitions), _LAG_QUERY_TIMEOUT
            ) if partitions else {}
        except (TimeoutError, KafkaError, OSError) as exc:
            log.debug("lag_unknown", error=repr(exc))
            return
        total = 0
        for tp, listed in ends.items():
            # The broker's answer, or the high watermark of the last fetch if higher:
            # tansu (the embedded broker) answers the base offset of the partition's
            # last record batch + 1, short of the end by that batch's other records.
            end = max(listed, self._consumer.highwater(tp) or 0)
            done = await self._stored_offset(tp)
            if done is None or tp not in self._assigned:  # revoked meanwhile
                continue
            lag = max(0, end - done)
            total += lag
            self._metrics.lag.labels(partition=str(tp.partition)).set(lag)
        self._lag_total = total
        self._metrics.lag_total.set(total)

    async def _stored_offset(self, tp: TopicPartition) -> int | None:
        """The offset after the partition's last stored record, as far as we know."""
        offset = self._durable.get(tp, self._fetch_start.get(tp))
        if offset is not None:
            return offset
        try:  # nothing fetched since the assignment: fetching starts here
            position: int = await asyncio.wait_for(self._consumer.position(tp), 0.05)
        except (TimeoutError, IllegalStateError, KafkaError):
            return None
        return position

    def _forget_lag(self, tp: TopicPartition) -> None:
        with contextlib.suppress(KeyError):
            self._metrics.lag.remove(str(tp.partition))

    def _log_progress(self, *, force: bool = False) -> None:
        progress = self._progress
        now = self._clock()
        elapsed = now - progress.last_log
        if not force and elapsed < self._settings.progress_interval:
            return
        consumed = progress.consumed - progress.consumed_at_last_log
        written = progress.written - progress.written_at_last_log
        log.info(
            "progress",
            consumed=progress.consumed,
            written=progress.written,
            dead_letters=progress.dead_letters,
            rate_per_s=round(written / elapsed) if elapsed > 0 else 0,
            consumed_per_s=round(consumed / elapsed) if elapsed > 0 else 0,
            lag=self._lag_total,
            partitions=sorted(tp.partition for tp in self._assigned),
        )
        progress.last_log = now
        progress.consumed_at_last_log = progress.consumed
        progress.written_at_last_log = progress.written


class _RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: ConsumerWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker.on_partitions_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker.on_partitions_assigned(set(assigned))


def _retry_fetch(exc: BaseException) -> bool:
    if isinstance(exc, ConsumerStoppedError | IllegalStateError):
        return False
    return isinstance(exc, KafkaError | OSError)


def _dead_letter(message: ConsumerRecord[bytes, bytes], reason: str, detail: str) -> DeadLetter:
    return DeadLetter(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        reason=reason,
        detail=detail,
    )


def _rejected_letter(
    spans: Sequence[tuple[int, TopicPartition, _PartitionChunk]], position: int, detail: str
) -> DeadLetter:
    """The dead letter of the batch's row at `position`, from its chunk's sources."""
    k = bisect_right(spans, position, key=lambda span: span[0]) - 1
    first, tp, chunk = spans[k]
    i = position - first
    return DeadLetter(
        topic=tp.topic,
        partition=tp.partition,
        offset=chunk.offsets[i],
        key=chunk.keys[i],
        value=chunk.values[i],
        reason="rejected",
        detail=detail,
    )
