"""KafkaPublisher's bookkeeping and batch building, without a broker."""

from __future__ import annotations

import asyncio

from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from prometheus_client import CollectorRegistry

from pipeline.receiver.metrics import ReceiverMetrics
from pipeline.receiver.publisher import KafkaPublisher, _build_batches, _fill
from pipeline.receiver.settings import ReceiverSettings


def _publisher(**overrides: object) -> KafkaPublisher:
    settings = ReceiverSettings(udp=(("127.0.0.1", 0),), tcp=(), **overrides)  # type: ignore[arg-type]
    return KafkaPublisher(settings, ReceiverMetrics(CollectorRegistry()))


def _records(count: int, size: int = 100) -> list[tuple[bytes | None, bytes]]:
    return [
        (None if i % 7 == 0 else f"call-{i % 13}".encode(), bytes([i % 251]) * size)
        for i in range(count)
    ]


class _Producer:
    def __init__(self, batch_size: int, compression: int = 0) -> None:
        self.batch_size = batch_size
        self.compression = compression

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_size, self.compression)


class _GenericBuilder(BatchBuilder):
    """A subclass, so that _build_batches takes the public append path."""


class _GenericProducer(_Producer):
    def create_batch(self) -> BatchBuilder:
        return _GenericBuilder(self.batch_size, self.compression)


def test_fast_fill_builds_the_same_batches_as_batchbuilder_append() -> None:
    records = _records(300, 300)
    for batch_size in (5_000, 1_000_000):
        for compression in (0, DefaultRecordBatch.CODEC_ZSTD):
            fast = _build_batches(_Producer(batch_size, compression), records, 1_700_000_000_000)
            slow = _build_batches(
                _GenericProducer(batch_size, compression), records, 1_700_000_000_000
            )
            assert [chunk for chunk, _ in fast] == [chunk for chunk, _ in slow]
            assert sum(len(chunk) for chunk, _ in fast) == len(records)
            for (_, a), (_, b) in zip(fast, slow, strict=True):
                assert a.record_count() == b.record_count()
                assert bytes(a._build()) == bytes(b._build())


def test_generic_fill_stops_at_a_full_batch() -> None:
    builder = BatchBuilder(2_000, 0)
    records = _records(50, 300)
    end = _fill(builder, records, 0, 1)
    assert 0 < end < len(records)
    assert builder.record_count() == end


def test_take_swaps_or_slices_and_the_counts_balance() -> None:
    async def run() -> None:
        publisher = _publisher(batch_bytes=1_000, queue_size=10_000)
        records = _records(100)  # 10 kB: more than one cycle's budget of 4 kB
        for record in records:
            assert publisher.offer_record(record)
        assert publisher.depth == 100 and publisher.backlog_bytes == 10_000

        taken, size = publisher._take()  # the budget cut: 40 records
        assert taken == records[:40] and size == 4_000
        assert publisher._queue == records[40:]
        publisher._requeue(taken[20:])  # a partial failure puts its records back first
        publisher._release(20, 2_000)
        assert publisher._queue == records[20:]
        assert publisher.depth == 80 and publisher.backlog_bytes == 8_000

        while publisher._queue:
            taken, size = publisher._take()
            assert size == sum(len(value) for _key, value in taken)
            publisher._release(len(taken), size)
        assert publisher.depth == 0 and publisher.backlog_bytes == 0
        assert publisher._inflight_bytes == 0

        # Below the budget the whole list is taken (swapped for an empty one).
        small = _records(3)
        for record in small:
            publisher.offer_record(record)
        queue = publisher._queue
        taken, size = publisher._take()
        assert taken is queue and size == 300 and publisher._queue == []

    asyncio.run(run())


def test_offer_refuses_past_the_bound_unless_forced() -> None:
    async def run() -> None:
        publisher = _publisher(queue_size=2, max_backlog_bytes=1_000_000)
        assert publisher.offer(b"k", b"v")
        assert publisher.offer_record((b"k", b"v"))
        assert not publisher.offer_record((b"k", b"v"))
        assert publisher.offer(b"k", b"v", force=True)
        assert publisher.depth == 3

    asyncio.run(run())


def test_group_uses_murmur2_and_one_sticky_partition_for_keyless_records() -> None:
    async def run() -> None:
        publisher = _publisher()
        partitions = [0, 1, 2, 5]
        records = _records(200)
        for _ in range(2):  # the second round reads the key -> partition cache
            groups = publisher._group(records, partitions)
            assert sum(len(group) for group in groups.values()) == len(records)
            keyless = {p for p, group in groups.items() for key, _ in group if key is None}
            assert len(keyless) == 1
            for partition, group in groups.items():
                assert group, "no empty groups"
                for key, _value in group:
                    if key is not None:
                        expected = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
                        assert partition == expected
                assert group == [r for r in records if r in group]  # order kept

    asyncio.run(run())


def test_drop_watch_reports_start_progress_and_stop_never_per_packet() -> None:
    from pipeline.receiver.service import DropWatch

    watch = DropWatch(repeat_s=10)
    assert watch.observe(0, 0.0) is None
    assert watch.observe(0, 1.0) is None
    assert watch.observe(7, 2.0) == ("queue_full_drops_started", {"dropped": 7})
    assert watch.observe(500, 3.0) is None  # rate-limited while it goes on
    continuing = watch.observe(900, 12.5)
    assert continuing == (
        "queue_full_drops_continuing", {"dropped": 900, "duration_s": 10.5, "since_last": 893}
    )
    assert watch.observe(901, 13.0) is None
    assert watch.observe(901, 14.0) == (
        "queue_full_drops_stopped", {"dropped": 901, "duration_s": 12.0}
    )
    assert watch.observe(901, 15.0) is None
    assert watch.observe(905, 16.0) == ("queue_full_drops_started", {"dropped": 4})


def test_the_linger_ends_when_a_full_batch_is_queued_or_at_close() -> None:
    async def run() -> tuple[float, float, float]:
        publisher = _publisher(linger_ms=60_000, batch_bytes=1_000)
        loop = asyncio.get_running_loop()
        started = loop.time()
        lingering = loop.create_task(publisher._linger())
        await asyncio.sleep(0.05)
        assert not lingering.done()
        publisher.offer_batch(_records(5))  # 500 bytes: not yet a batch
        await asyncio.sleep(0.05)
        assert not lingering.done()
        publisher.offer_batch(_records(5))  # 1,000 bytes
        await asyncio.wait_for(lingering, 5)
        full = loop.time() - started
        # Already a full batch queued: no wait at all.
        started = loop.time()
        await asyncio.wait_for(publisher._linger(), 5)
        at_once = loop.time() - started
        # close() ends a linger too (the queue below a batch again).
        other = _publisher(linger_ms=60_000, batch_bytes=1_000)
        started = loop.time()
        lingering = loop.create_task(other._linger())
        await asyncio.sleep(0.05)
        await other.close(0.1)
        await asyncio.wait_for(lingering, 5)
        return full, at_once, loop.time() - started

    full, at_once, closed = asyncio.run(run())
    assert full < 30 and at_once < 1 and closed < 30
    assert _publisher()._settings.linger_ms == 200
