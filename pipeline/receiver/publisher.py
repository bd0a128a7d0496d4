"""KafkaPublisher: the bounded backlog between the listeners and Kafka, and its delivery.

    listeners --offer()--> backlog (list, bounded in packets and bytes)
                              |  one cycle: take up to ~batch_bytes x partitions,
                              |  group by partition (murmur2 of the key, like the Java
                              |  client; keyless records stick to one partition per cycle),
                              v  one BatchBuilder per partition and ~batch_bytes
                           aiokafka send_batch() ... acks
                              |
                 acked: released (published)   failed: put back at the front, retried
                                               with bounded exponential backoff + jitter

A record holds its share of the bound until Kafka acknowledges it, so what is in flight
counts too. The publisher never raises on a broker error: it logs the state change once
(unreachable / recovered with the backlog size) and keeps retrying, reconnecting from
scratch when the broker was never reached. Only at shutdown, after the grace period,
is what is left counted as dropped{reason="shutdown"}.

Delivery is at least once: a batch whose acknowledgement was lost is sent again, and
the consumers deduplicate on the record id.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections.abc import Callable
from typing import Any

import cramjam
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from pipeline.accel import IMPLEMENTATION, murmur2, record_batch
from pipeline.observability import get_logger
from pipeline.receiver.metrics import ReceiverMetrics
from pipeline.receiver.settings import ReceiverSettings

log = get_logger("pipeline.receiver.publisher")

Record = tuple[bytes | None, bytes]
# Kafka's per-record overhead is small next to a SIP payload; counting the value alone
# keeps offer() cheap and the bound still tracks memory closely.
_PARTITION_CACHE_LIMIT = 100_000
# Consecutive failed cycles after which the producer is rebuilt from scratch.
_RESET_AFTER_FAILURES = 3
_STOP_TIMEOUT_S = 5.0
# The least a producer gets to stop (or a cancelled cycle to clean up) at shutdown.
_STOP_MARGIN_S = 0.2
_NO_HEADERS: list[tuple[str, bytes]] = []  # the record builder wants a list; never mutated
# aiokafka's record batch builders (the compiled one and the pure-Python fallback) call
# the module-level `zstd_encode` of their module, always at level 3.
_ZSTD_MODULES = ("aiokafka.record._crecords.default_records", "aiokafka.record.default_records")


def set_zstd_level(level: int) -> bool:
    """Make aiokafka compress zstd batches at `level`; False if its layout is not the known one.

    aiokafka has no setting for it. On HEP/SIP batches level 1 took ~0.6x the CPU of
    level 3 with the same ratio or better (docs/benchmarks.md). The level is the
    process's: every producer in it uses the same.
    """
    replaced = False
    for name in _ZSTD_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if callable(getattr(module, "zstd_encode", None)):
            setattr(module, "zstd_encode", _zstd_encoder(level))  # noqa: B010
            replaced = True
    return replaced


def _zstd_encoder(level: int) -> Callable[..., bytes]:
    def zstd_encode(payload: Any, level_given: int | None = None) -> bytes:
        return bytes(cramjam.zstd.compress(payload, level=level_given or level))

    return zstd_encode


class PublishError(Exception):
    """Some batches of a cycle were not acknowledged; they are back in the backlog."""


class KafkaPublisher:
    """Owns the backlog and the Kafka producer; `offer()` never awaits."""

    def __init__(
        self,
        settings: ReceiverSettings,
        metrics: ReceiverMetrics,
        *,
        on_low_water: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._on_low_water = on_low_water
        # A list, not a deque: a cycle usually takes all of it by swapping in a new one.
        self._queue: list[Record] = []
        self._held_packets = 0  # in the queue or in flight
        self._held_bytes = 0
        # Of _held_bytes, those taken by a cycle and not yet released or put back; the
        # queue holds the rest (kept per cycle, so that offer() updates one byte count).
        self._inflight_bytes = 0
        self._max_packets = settings.queue_size
        self._max_bytes = settings.max_backlog_bytes
        self._high_packets = max(1, int(settings.queue_size * settings.tcp_high_water))
        self._high_bytes = max(1, int(settings.max_backlog_bytes * settings.tcp_high_water))
        self._low_packets = int(settings.queue_size * settings.tcp_low_water)
        self._low_bytes = int(settings.max_backlog_bytes * settings.tcp_low_water)
        self._high_seen = False
        self._wakeup = asyncio.Event()
        self._closing = asyncio.Event()
        # While the run loop lingers: resolved when a full batch is queued (or at close).
        self._lingering: asyncio.Future[None] | None = None
        self._batch_bytes = settings.batch_bytes
        # Whole record batches in one compiled call (record_batch) where the bytes are
        # ours to write: no idempotence (aiokafka numbers those batches), no codec but
        # zstd. Else (and on the pure path, where aiokafka's compiled builder is the
        # faster one) record by record through aiokafka's builder.
        self._prebuilt = (
            IMPLEMENTATION == "compiled"
            and settings.compression in ("none", "zstd")
            and not settings.enable_idempotence
        )
        self._compress = (
            _zstd_encoder(settings.zstd_level) if settings.compression == "zstd" else None
        )
        self._deadline = float("inf")
        self._producer: AIOKafkaProducer | None = None
        self._topic_ready = not settings.create_topic
        self._failures = 0
        self._partition_cache: dict[bytes, int] = {}
        self._partition_count = 0
        self._sticky = 0
        self._broker_up: bool | None = None
        self._outage_since = 0.0
        self._task: asyncio.Task[None] | None = None

    # -- the listeners' side -------------------------------------------------------

    def offer(self, key: bytes | None, value: bytes, force: bool = False) -> bool:
        """Queue one record; False (nothing queued) when the bound is reached.

        `force` is for TCP, whose reading is already paused above high water: the few
        records of one read that arrive past the bound are kept, not dropped.
        """
        return self.offer_record((key, value), force)

    def offer_record(self, record: Record, force: bool = False) -> bool:
        """`offer` of a (key, value) tuple as the intake returns it (no repacking)."""
        size = len(record[1])
        held = self._held_bytes + size
        if not force and (self._held_packets >= self._max_packets or held > self._max_bytes):
            return False
        queue = self._queue
        if not queue:
            self._wakeup.set()
        queue.append(record)
        self._held_packets += 1
        self._held_bytes = held
        if held >= self._batch_bytes:
            self._end_linger()
        return True

    def offer_batch(self, records: list[Record], force: bool = False) -> int:
        """Queue `records` in order; returns how many were queued.

        The same outcome as `offer_record` on each record in turn: within the bound
        (the usual case) all of them at once; across it, those that still fit, and
        the caller counts the rest as dropped. `force` as for `offer`.
        """
        count = len(records)
        if not count:
            return 0
        size = sum([len(record[1]) for record in records])
        held = self._held_bytes + size
        if force or (
            self._held_packets + count <= self._max_packets and held <= self._max_bytes
        ):
            queue = self._queue
            if not queue:
                self._wakeup.set()
            queue.extend(records)
            self._held_packets += count
            self._held_bytes = held
            if held >= self._batch_bytes:
                self._end_linger()
            return count
        offer = self.offer_record
        return sum([offer(record) for record in records])

    def above_high_water(self) -> bool:
        if self._held_packets >= self._high_packets or self._held_bytes >= self._high_bytes:
            self._high_seen = True
            return True
        return False

    def set_low_water_callback(self, callback: Callable[[], None]) -> None:
        self._on_low_water = callback

    @property
    def depth(self) -> int:
        """Records accepted and not yet acknowledged (queued or in flight)."""
        return self._held_packets

    @property
    def backlog_bytes(self) -> int:
        return self._held_bytes

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kafka-publisher")

    async def close(self, grace_s: float) -> None:
        """Publish what is held within `grace_s` seconds, then count the rest as dropped."""
        self._deadline = time.monotonic() + grace_s
        self._closing.set()
        self._wakeup.set()
        self._end_linger()
        task = self._task
        if task is not None:
            # The run loop stops retrying at the deadline; a send still waiting for its
            # acknowledgement then is cancelled (its records go back to the queue).
            done, _ = await asyncio.wait({task}, timeout=grace_s)
            if not done:
                task.cancel()
                # Its own clean-up (stopping the producer) is bounded by the deadline too.
                await asyncio.wait({task}, timeout=_STOP_MARGIN_S)
            elif not task.cancelled() and task.exception() is not None:
                log.error("publisher_failed", error=repr(task.exception()))
        left = len(self._queue)
        if left:
            self._metrics.dropped["shutdown"] += left
            log.error(
                "shutdown_dropped", dropped=left, reason="shutdown timeout over", grace_s=grace_s
            )
            self._queue = []
            self._inflight_bytes = 0
            self._held_packets = 0
            self._held_bytes = 0
        await self._close_producer()

    # -- the delivery loop ---------------------------------------------------------

    def _retrying(self) -> AsyncRetrying:
        s = self._settings
        return AsyncRetrying(
            wait=wait_exponential_jitter(
                multiplier=s.retry_initial_s, max=s.retry_max_s, jitter=s.retry_initial_s
            ),
            retry=retry_if_exception_type(Exception),
            stop=self._give_up,
            before_sleep=self._before_sleep,
            sleep=self._sleep,
            reraise=True,
        )

    async def _run(self) -> None:
        retrying = self._retrying()
        try:
            # Connect (and create the topic) at start, not on the first packet, so
            # that the logs tell at once whether the broker is there.
            with contextlib.suppress(Exception):
                await retrying(self._connect)
            while True:
                if not self._queue:
                    if self._closing.is_set():
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._linger()
                try:
                    await retrying(self._publish_cycle)
                except Exception:  # gave up: shutdown deadline reached
                    return
        finally:
            await self._close_producer()

    async def _linger(self) -> None:
        """Wait up to linger_ms for more records, less once a full batch is queued.

        A cycle's cost hardly depends on its size (a batch per partition, a produce
        request, its acknowledgement), so at low rates the cycle waits; once
        batch_bytes are held (a busy receiver) it goes at once. A future and a timer,
        not wait_for: no task per cycle.
        """
        linger = self._settings.linger_ms / 1000
        if not linger or self._closing.is_set() or self._held_bytes >= self._batch_bytes:
            return
        loop = asyncio.get_running_loop()
        waiter = self._lingering = loop.create_future()
        timer = loop.call_later(linger, self._end_linger)
        try:
            await waiter
        finally:
            timer.cancel()
            self._lingering = None

    def _end_linger(self) -> None:
        waiter = self._lingering
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _give_up(self, retry_state: RetryCallState) -> bool:
        if not self._closing.is_set():
            return False
        return not self._queue or time.monotonic() >= self._deadline

    async def _sleep(self, seconds: float) -> None:
        if self._closing.is_set():
            seconds = min(seconds, max(0.0, self._deadline - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)
        if self._closing.is_set() and seconds > 0:
            # Closing started while sleeping: retry at a short, still bounded pace.
            await asyncio.sleep(min(seconds, self._settings.retry_initial_s))

    def _before_sleep(self, retry_state: RetryCallState) -> None:
        self._metrics.publish_retries += 1
        self._failures += 1
        outcome = retry_state.outcome
        error = repr(outcome.exception()) if outcome is not None else "unknown"
        if self._broker_up is not False:
            self._broker_up = False
            self._outage_since = time.monotonic()
            log.warning(
                "broker_unreachable",
                bootstrap_servers=self._settings.bootstrap_servers,
                error=error,
                backlog=self._held_packets,
                backlog_bytes=self._held_bytes,
            )
        else:
            log.debug("publish_retry", error=error, attempt=retry_state.attempt_number)

    def _mark_up(self) -> None:
        self._failures = 0
        if self._broker_up is True:
            return
        if self._broker_up is False:
            log.info(
                "broker_recovered",
                outage_s=round(time.monotonic() - self._outage_since, 3),
                backlog=self._held_packets,
                backlog_bytes=self._held_bytes,
            )
        else:
            log.info("broker_connected", bootstrap_servers=self._settings.bootstrap_servers)
        self._broker_up = True

    def _apply_zstd_level(self) -> None:
        s = self._settings
        if s.compression == "zstd" and not set_zstd_level(s.zstd_level):
            log.warning("zstd_level_not_set", level=s.zstd_level, reason="unknown aiokafka")

    async def _connect(self) -> AIOKafkaProducer:
        if self._producer is not None and self._failures >= _RESET_AFTER_FAILURES:
            log.info("producer_reset", failures=self._failures)
            await self._close_producer()
        if self._producer is not None:
            return self._producer
        s = self._settings
        self._apply_zstd_level()
        producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            client_id=f"hep-ingest-receiver-{s.receiver_id}",
            acks="all",
            compression_type=s.compression_type,
            max_batch_size=s.batch_bytes,
            max_request_size=max(s.batch_bytes * 2, 1 << 20),
            linger_ms=0,  # batches are built full here; lingering is ours (_linger)
            enable_idempotence=s.enable_idempotence,
            request_timeout_ms=s.request_timeout_ms,
            retry_backoff_ms=max(1, int(s.retry_initial_s * 1000)),
        )
        try:
            await producer.start()
            if not self._topic_ready:
                await self._ensure_topic()
            await producer.partitions_for(s.topic)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), _STOP_TIMEOUT_S)
            raise
        self._producer = producer
        self._mark_up()
        return producer

    async def _ensure_topic(self) -> None:
        s = self._settings
        admin = AIOKafkaAdminClient(
            bootstrap_servers=s.bootstrap_servers, request_timeout_ms=s.request_timeout_ms
        )
        await admin.start()
        try:
            if s.topic not in await admin.list_topics():
                response = await admin.create_topics(
                    [NewTopic(s.topic, s.partitions, s.replication_factor)]
                )
                for _topic, code, *rest in response.topic_errors:
                    error = for_code(code)
                    if code and error is not TopicAlreadyExistsError:
                        raise error(rest[0] if rest else s.topic)
                log.info("topic_created", topic=s.topic, partitions=s.partitions)
        finally:
            await admin.close()
        self._topic_ready = True

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            timeout = _STOP_TIMEOUT_S
            if self._closing.is_set():
                # aiokafka's stop() flushes and may wait on a broker that is away; at
                # shutdown it gets what is left of the shutdown timeout, no more.
                timeout = max(_STOP_MARGIN_S, min(timeout, self._deadline - time.monotonic()))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), timeout)

    def _take(self) -> tuple[list[Record], int]:
        """Pop the next cycle's records (about one full batch per partition) and their bytes."""
        budget = self._settings.batch_bytes * max(4, self._partition_count)
        queue = self._queue
        queued_bytes = self._held_bytes - self._inflight_bytes
        if queued_bytes < budget:
            # The usual case: everything queued fits in one cycle; swap the list.
            self._queue = []
            self._inflight_bytes += queued_bytes
            return queue, queued_bytes
        # A backlog (after an outage): the same cut as popping records until the
        # budget is reached, taken as one slice.
        size = 0
        end = 0
        count = len(queue)
        while end < count and size < budget:
            size += len(queue[end][1])
            end += 1
        taken = queue[:end]
        del queue[:end]
        self._inflight_bytes += size
        return taken, size

    def _group(self, records: list[Record], partitions: list[int]) -> dict[int, list[Record]]:
        count = len(partitions)
        cache = self._partition_cache  # key -> index into `partitions`
        if count != self._partition_count:
            cache.clear()
            self._partition_count = count
        elif len(cache) > _PARTITION_CACHE_LIMIT:
            cache.clear()
        sticky = self._sticky % count
        self._sticky += 1
        # One list per partition, reached by index: the per-record work is one cache
        # lookup and one append.
        groups: list[list[Record]] = [[] for _ in range(count)]
        appends = [group.append for group in groups]
        get = cache.get
        index: int | None
        for record in records:
            key = record[0]
            if key is None:
                index = sticky
            else:
                index = get(key)
                if index is None:
                    index = cache[key] = (murmur2(key) & 0x7FFFFFFF) % count
            appends[index](record)
        return {partitions[i]: group for i, group in enumerate(groups) if group}

    async def _publish_cycle(self) -> None:
        producer = await self._connect()
        topic = self._settings.topic
        known = producer.client.cluster.partitions_for_topic(topic)
        if not known:
            known = await producer.partitions_for(topic)
        records, size = self._take()
        if not records:
            return
        try:
            failed, error = await self._deliver(producer, records, size, sorted(known))
        except BaseException:
            # Cancelled at the end of the grace period: keep the records for the count.
            self._requeue(records)
            raise
        if failed:
            self._requeue(failed)
            raise PublishError(f"{len(failed)} records not acknowledged: {error!r}") from error
        self._mark_up()

    async def _deliver(
        self,
        producer: AIOKafkaProducer,
        records: list[Record],
        size: int,
        partitions: list[int],
    ) -> tuple[list[Record], BaseException | None]:
        """Send one cycle; returns the records to retry and the first error seen."""
        topic = self._settings.topic
        timestamp_ms = int(time.time() * 1000)
        batches = [
            (partition, chunk, builder)
            for partition, group in self._group(records, partitions).items()
            for chunk, builder in (
                self._prebuilt_batches(group, timestamp_ms)
                if self._prebuilt
                else _build_batches(producer, group, timestamp_ms)
            )
        ]
        failed: list[Record] = []
        error: BaseException | None = None
        pending: list[tuple[list[Record], asyncio.Future[Any]]] = []
        for index, (partition, chunk, builder) in enumerate(batches):
            try:
                future = await producer.send_batch(builder, topic, partition=partition)
            except Exception as exc:
                error = exc
                for _partition, rest, _builder in batches[index:]:
                    failed.extend(rest)
                break
            future.add_done_callback(self._latency_observer(time.monotonic()))
            pending.append((chunk, future))
        if pending:
            # aiokafka fails a batch after request_timeout_ms; the margin covers its
            # own retries so that a wedged connection cannot hold the cycle forever.
            await asyncio.wait(
                [future for _, future in pending],
                timeout=self._settings.request_timeout_ms / 1000 * 2,
            )
        for chunk, future in pending:
            if not (future.done() and not future.cancelled() and future.exception() is None):
                failed.extend(chunk)
                if error is None:
                    error = (
                        future.exception()
                        if future.done() and not future.cancelled()
                        else TimeoutError("no acknowledgement")
                    )
        # Release the acknowledged records in one step: the cycle's size is known, so
        # only a partial failure has to sum its records' sizes.
        published = len(records) - len(failed)
        if failed:
            size -= sum(len(value) for _key, value in failed)
        if published:
            self._release(published, size)
        self._metrics.published += published
        return failed, error

    def _prebuilt_batches(
        self, group: list[Record], timestamp_ms: int
    ) -> list[tuple[list[Record], Any]]:
        """`_build_batches` through record_batch: the same batches, one call each."""
        batches: list[tuple[list[Record], Any]] = []
        start, count = 0, len(group)
        while start < count:
            end, data = record_batch(group, start, self._batch_bytes, timestamp_ms, self._compress)
            batches.append((group[start:end], BuiltBatch(data, end - start)))
            start = end
        return batches

    def _latency_observer(self, started: float) -> Callable[[asyncio.Future[Any]], None]:
        histogram = self._metrics.publish_latency

        def observe(future: asyncio.Future[Any]) -> None:
            if future.cancelled():
                return
            if future.exception() is None:  # also marks a late failure as retrieved
                histogram.observe(time.monotonic() - started)

        return observe

    def _requeue(self, records: list[Record]) -> None:
        if not self._queue:
            self._wakeup.set()
        self._queue[:0] = records
        self._inflight_bytes -= sum(len(value) for _key, value in records)

    def _release(self, packets: int, size: int) -> None:
        self._held_packets -= packets
        self._held_bytes -= size
        self._inflight_bytes -= size
        if (
            self._high_seen
            and self._held_packets <= self._low_packets
            and self._held_bytes <= self._low_bytes
        ):
            self._high_seen = False
            if self._on_low_water is not None:
                self._on_low_water()


class BuiltBatch:
    """A finished record batch, in the shape aiokafka's MessageBatch uses a BatchBuilder.

    MessageBatch asks a builder for its record count, whether it is closed, and its
    bytes (`_build`); an idempotent producer would also stamp the producer state into
    it, which is why such producers keep aiokafka's own builder.
    """

    __slots__ = ("_count", "_data")

    def __init__(self, data: bytes, count: int) -> None:
        self._data = data
        self._count = count

    def record_count(self) -> int:
        return self._count

    def size(self) -> int:
        return len(self._data)

    def closed(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def _build(self) -> bytes:
        return self._data

    def _set_producer_state(self, producer_id: int, epoch: int, base_sequence: int) -> None:
        raise RuntimeError("an idempotent producer builds its batches with aiokafka")


def _build_batches(
    producer: AIOKafkaProducer, group: list[Record], timestamp_ms: int
) -> list[tuple[list[Record], Any]]:
    """Split one partition's records into batches of at most batch_bytes (one at least)."""
    batches = []
    start, count = 0, len(group)
    while start < count:
        builder = producer.create_batch()
        inner = getattr(builder, "_builder", None)
        if (
            type(builder) is BatchBuilder
            and type(inner) is DefaultRecordBatchBuilder
            and builder._key_serializer is None
            and builder._value_serializer is None
            and builder._relative_offset == 0
            and not builder._closed
        ):
            end = _fill_fast(builder, inner, group, start, timestamp_ms)
        else:
            end = _fill(builder, group, start, timestamp_ms)
        if end == start:  # aiokafka's builders always take their first record
            raise RuntimeError("an empty batch refused a record")
        batches.append((group[start:end], builder))
        start = end
    return batches


def _fill(builder: Any, group: list[Record], start: int, timestamp_ms: int) -> int:
    append = builder.append
    end, count = start, len(group)
    while end < count:
        key, value = group[end]
        if append(timestamp=timestamp_ms, key=key, value=value) is None:
            break
        end += 1
    return end


def _fill_fast(
    builder: BatchBuilder, inner: Any, group: list[Record], start: int, timestamp_ms: int
) -> int:
    """`_fill` through the record builder under aiokafka's BatchBuilder.append.

    BatchBuilder.append only serialises (we have no serialisers: keys and values are
    bytes already), numbers the record and closes the batch when full; doing the same
    here saves a Python call per record. Used only when the builder is exactly the
    one checked for in `_build_batches`.
    """
    append = inner.append
    headers = _NO_HEADERS
    end, count = start, len(group)
    while end < count:
        key, value = group[end]
        if append(end - start, timestamp_ms, key, value, headers) is None:
            builder.close()
            break
        end += 1
    builder._relative_offset = end - start
    return end
