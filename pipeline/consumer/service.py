"""Composition of one consumer worker: sink, dead-letter publisher, Kafka consumer.

`run_consumer` installs no signal handler and no event-loop policy: the `consume`
command and `hep-ingest up` own those and set `stop`.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from pipeline.accel import IMPLEMENTATION
from pipeline.consumer.dead_letter import DeadLetterPublisher
from pipeline.consumer.metrics import ConsumerMetrics, register_header_metrics
from pipeline.consumer.retry import StopRequested, backoff, is_transient, unless_stopped
from pipeline.consumer.settings import ConsumerSettings
from pipeline.consumer.sink import Sink
from pipeline.consumer.worker import ConsumerWorker
from pipeline.observability import get_logger
from pipeline.observability.tasks import pending_task_frames
from pipeline.records import load_codec

log = get_logger("pipeline.consumer")


# Cyclic-GC generation-0 threshold while consuming (CPython's default is 700).
GC_THRESHOLD_0 = 50_000

#: How long closing a Kafka client may take at stop. Rows and offsets are committed in
#: PostgreSQL by then, so what is cut short is only aiokafka's LeaveGroup (the broker
#: then waits out the session timeout) or a producer with nothing queued; aiokafka's
#: own bound on such a request is its 40 s request timeout, longer than an
#: orchestrator's grace period.
KAFKA_CLOSE_TIMEOUT = 5.0


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for the consume loop (process-wide).

    A batch keeps ~10k rows (and their values tuples and UUIDs) alive for about a
    second, so with the default thresholds every generation-0 collection re-scans
    them, they are promoted and re-scanned by generation 1, and full collections walk
    every module, class and function object loaded at start. Measured on
    bench/consumer_bench.py: ~8.5 us/row of GC out of ~45 us/row. Freezing the start-up
    heap (after collecting its garbage) removes it from every later collection, and a
    larger generation-0 threshold makes the young collections ~70x rarer. Reference
    counting still frees everything acyclic immediately; only cyclic garbage lives a
    little longer (at most 50k allocations).
    """
    gc.collect()
    gc.freeze()
    _, threshold1, threshold2 = gc.get_threshold()
    gc.set_threshold(max(GC_THRESHOLD_0, gc.get_threshold()[0]), threshold1, threshold2)


async def build_sink(settings: ConsumerSettings, registry: CollectorRegistry) -> Sink:
    if settings.sink == "stdout":
        from pipeline.consumer.stdout_sink import StdoutSink

        return StdoutSink()
    from pipeline.postgres.partitions import PartitionInterval
    from pipeline.postgres.sink import PostgresSink, SinkSettings

    assert settings.dsn is not None  # checked by ConsumerSettings
    interval = PartitionInterval(settings.partition_interval)
    return PostgresSink(
        SinkSettings(
            dsn=settings.dsn,
            apply_migrations=settings.migrate,
            partition_interval=interval,
            partition_ahead=interval.step * settings.partitions_ahead,
            retention_days=settings.retention_days,
        ),
        registry=registry,
    )


async def run_consumer(
    settings: ConsumerSettings,
    registry: CollectorRegistry,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
) -> None:
    """Consume `settings.topic` into the sink until `stop` is set."""
    metrics = ConsumerMetrics(registry)
    register_header_metrics(registry, settings.headers)
    client_id = f"{settings.client_id}-{socket.gethostname()}"
    async with AsyncExitStack() as stack:
        sink = await build_sink(settings, registry)
        stack.push_async_callback(sink.close)  # also after a start cut short

        dead_letters = DeadLetterPublisher(
            settings.bootstrap_servers,
            settings.dead_letter_topic_name,
            retry=settings.retry,
            on_retry=metrics.kafka_retries.inc,
            client_id=f"{client_id}-dlq",
            stop=stop,
        )
        stack.push_async_callback(_bounded_close, "dead_letter_producer", dead_letters.stop)

        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=settings.group,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.batch_size,
            session_timeout_ms=round(settings.session_timeout * 1000),
            heartbeat_interval_ms=round(settings.session_timeout * 1000 / 3),
            # Enough prefetch for a full batch of ~500-byte records per partition.
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        worker = ConsumerWorker(
            consumer=consumer,
            sink=sink,
            dead_letters=dead_letters,
            codec=load_codec(),
            settings=settings,
            metrics=metrics,
        )
        consumer.subscribe([settings.topic], listener=worker.rebalance_listener)
        stack.push_async_callback(  # also after a failed start
            _bounded_close, "kafka_consumer", lambda: _stop_consumer(consumer)
        )

        async def start() -> None:
            await sink.start()
            await dead_letters.start()
            await _start_consumer(consumer, settings, metrics)

        # Each step retries while its server is unreachable, as long as it takes: a
        # stop request cancels whichever is running.
        try:
            await unless_stopped(start(), stop)
        except StopRequested:
            log.info("consumer_stopped_before_start")
            return

        log.info(
            "consumer_started",
            topic=settings.topic,
            group=settings.group,
            client_id=client_id,
            sink=settings.sink,
            dead_letter_topic=settings.dead_letter_topic_name,
            batch_size=settings.batch_size,
            flush_interval=settings.flush_interval,
            session_timeout=settings.session_timeout,
            implementation=IMPLEMENTATION,
            **_row_features(settings),
        )
        if settings.tune_gc:
            tune_gc()
        if ready is not None:
            ready.set()
        await worker.run(stop)
        log.info("consumer_stopping")
    log.info("consumer_stopped")


async def _bounded_close(what: str, close: Callable[[], Awaitable[None]]) -> None:
    """close(), given up after KAFKA_CLOSE_TIMEOUT with a warning naming what it was
    still waiting for, so that a broker that does not answer cannot hold the stop."""
    task = asyncio.ensure_future(close())
    done, _ = await asyncio.wait({task}, timeout=KAFKA_CLOSE_TIMEOUT)
    if done:
        task.result()
        return
    log.warning(
        "kafka_close_timeout",
        client=what,
        timeout_s=KAFKA_CLOSE_TIMEOUT,
        waiting_in=pending_task_frames(),
    )
    task.cancel()
    # Bounded too: a close that swallows its cancellation (see ConsumerWorker.run) must
    # not hold the stop either; the process exits with it unfinished.
    cancelled, _ = await asyncio.wait({task}, timeout=KAFKA_CLOSE_TIMEOUT)
    for finished in cancelled:
        if not finished.cancelled():
            finished.exception()  # retrieved: the warning above already says it failed


async def _stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """consumer.stop(), minus a cancellation that is not ours.

    aiokafka's fetcher cancels its fetch tasks on close and awaits them; one that was
    backing off after a failed fetch (the broker gone) re-raises that CancelledError
    out of stop(), which would end the process with a traceback.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("kafka_consumer_stop_incomplete", reason="a fetch was still retrying")


async def _start_consumer(
    consumer: AIOKafkaConsumer, settings: ConsumerSettings, metrics: ConsumerMetrics
) -> None:
    def before_sleep(state: RetryCallState) -> None:
        metrics.kafka_retries.inc()
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning("kafka_start_retry", error=repr(error))

    async for attempt in AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=backoff(settings.retry),
        before_sleep=before_sleep,
        reraise=True,
    ):
        with attempt:
            await consumer.start()


def _row_features(settings: ConsumerSettings) -> dict[str, object]:
    """The capture filters and KPI bounds in force, for the start-up event."""
    f = settings.capture_filter
    features: dict[str, object] = {}
    if f.active:
        features["capture_filter"] = {
            "discard_methods": sorted(f.discard_methods),
            "discard_hep_types": sorted(f.discard_hep_types),
            "discard_sources": [str(n) for n in f.discard_sources],
            "discard_destinations": [str(n) for n in f.discard_destinations],
            "censor_methods": sorted(f.censor_methods),
        }
    if settings.sip_kpi is not None:
        features["sip_kpi"] = {
            "timeout": settings.sip_kpi.timeout,
            "max_pending": settings.sip_kpi.max_pending,
            "max_nodes": settings.sip_kpi.max_nodes,
        }
    return features
