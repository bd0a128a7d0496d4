"""ConsumerWorker's offset claims without a broker or a database.

The compare-and-set itself is PostgreSQL's (tests/integration/test_sink.py and
test_consume_offsets.py); here: what the worker claims, and what it does when a claim
is fenced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry

from pipeline.consumer.dead_letter import DeadLetter
from pipeline.consumer.metrics import ConsumerMetrics
from pipeline.consumer.settings import ConsumerSettings
from pipeline.consumer.worker import ConsumerWorker
from pipeline.records import load_codec
from pipeline.storage.offsets import NO_STORED_OFFSET, BatchOffsets, BatchOutcome, OffsetClaim
from pipeline.storage.rows import CaptureRow
from tests.integration.consume_support import encode_packets, sip_packet

TP0, TP1 = TopicPartition("hep", 0), TopicPartition("hep", 1)


class _OffsetSink:
    """Applies claims to a dict the way the PostgreSQL sink applies them to its table."""

    def __init__(self, stored: dict[int, int]) -> None:
        self.stored = dict(stored)
        self.written: list[CaptureRow] = []
        self.claims: list[tuple[OffsetClaim, ...]] = []
        self.wire_format = None  # rows keep their values only, as for the stdout sink
        self.stores_offsets = True

    async def stored_offsets(
        self, group: str, topic: str, partitions: Sequence[int]
    ) -> dict[int, int]:
        return {p: self.stored[p] for p in partitions if p in self.stored}

    async def write_batch(
        self,
        rows: Sequence[CaptureRow],
        offsets: BatchOffsets | None = None,
        before_commit: Callable[[list[Any]], Awaitable[None]] | None = None,
    ) -> BatchOutcome:
        assert offsets is not None
        self.claims.append(offsets.claims)
        lost = {
            c.partition: self.stored.get(c.partition, NO_STORED_OFFSET)
            for c in offsets.claims
            if self.stored.get(c.partition) != c.expected
        }
        if lost:
            return BatchOutcome(fenced=lost)
        if before_commit is not None:
            await before_commit([])
        self.written.extend(rows)
        self.stored.update({c.partition: c.next_offset for c in offsets.claims})
        return BatchOutcome()


class _Consumer:
    def __init__(self, assignment: set[TopicPartition]) -> None:
        self._assignment = assignment
        self.seeks: list[tuple[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return self._assignment

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


class _Letters:
    topic = "hep.dlq"

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        return None


def _messages(partition: int, first: int, n: int) -> list[Any]:
    items = encode_packets(sip_packet(f"c{partition}-{i}@test", i) for i in range(n))
    return [
        ConsumerRecord("hep", partition, first + i, 0, 0, key, value, None, -1, -1, ())
        for i, (key, value) in enumerate(items)
    ]


def _worker(sink: _OffsetSink, consumer: _Consumer) -> tuple[ConsumerWorker, ConsumerMetrics]:
    metrics = ConsumerMetrics(CollectorRegistry())
    worker = ConsumerWorker(
        consumer=consumer,  # type: ignore[arg-type]
        sink=sink,  # type: ignore[arg-type]
        dead_letters=_Letters(),  # type: ignore[arg-type]
        codec=load_codec(),
        settings=ConsumerSettings(topic="hep", group="g", sink="stdout"),
        metrics=metrics,
    )
    return worker, metrics


async def _write_building(worker: ConsumerWorker) -> None:
    worker._launch(worker._building)
    await worker._settle_in_flight()


def test_assignment_seeks_to_stored_offsets_and_claims_chain_from_them() -> None:
    async def scenario() -> None:
        sink = _OffsetSink({0: 100})
        consumer = _Consumer({TP0, TP1})
        worker, _ = _worker(sink, consumer)
        await worker.on_partitions_assigned({TP0, TP1})
        # Partition 1 has no stored offset: Kafka's committed offset decides.
        assert consumer.seeks == [(TP0, 100)]

        worker._add({TP0: _messages(0, 100, 3), TP1: _messages(1, 7, 2)})
        await _write_building(worker)
        worker._add({TP0: _messages(0, 103, 2)})
        await _write_building(worker)

        assert sink.claims == [
            (OffsetClaim(0, 100, 103), OffsetClaim(1, None, 9)),
            (OffsetClaim(0, 103, 105),),
        ]
        assert sink.stored == {0: 105, 1: 9}
        assert len(sink.written) == 7

    asyncio.run(scenario())


def test_a_fenced_partition_is_dropped_and_sought_while_the_others_are_written() -> None:
    async def scenario() -> None:
        sink = _OffsetSink({0: 100, 1: 7})
        consumer = _Consumer({TP0, TP1})
        worker, metrics = _worker(sink, consumer)
        await worker.on_partitions_assigned({TP0, TP1})
        worker._add({TP0: _messages(0, 100, 3), TP1: _messages(1, 7, 2)})
        worker._launch(worker._building)
        # Another worker stores partition 0 up to 150 while this batch is in flight,
        # and this worker fetches on meanwhile.
        sink.stored[0] = 150
        worker._add({TP0: _messages(0, 103, 4), TP1: _messages(1, 9, 1)})
        await worker._settle_in_flight()

        assert [r.value("kafka_partition") for r in sink.written] == [1, 1]
        assert sink.stored == {0: 150, 1: 9}
        assert metrics.offsets_fenced._value.get() == 1
        assert consumer.seeks[-1] == (TP0, 150)
        # What was fetched of partition 0 beyond the fenced batch is dropped too.
        assert set(worker._building.parts) == {TP1} and worker._building.records == 1
        # Records fetched before the seek took effect are below the stored offset.
        worker._add({TP0: _messages(0, 107, 3) + _messages(0, 150, 2)})
        assert worker._building.parts[TP0].offsets == [150, 151]
        await _write_building(worker)
        assert set(sink.claims[-1]) == {OffsetClaim(0, 150, 152), OffsetClaim(1, 9, 10)}
        assert sink.stored == {0: 152, 1: 10}

    asyncio.run(scenario())


def test_a_replay_below_the_stored_offset_writes_nothing() -> None:
    async def scenario() -> None:
        sink = _OffsetSink({0: 100})
        consumer = _Consumer({TP0})
        worker, metrics = _worker(sink, consumer)
        await worker.on_partitions_assigned({TP0})
        worker._add({TP0: _messages(0, 90, 10)})
        assert worker._building.records == 0
        assert not sink.written and metrics.offsets_fenced._value.get() == 0

    asyncio.run(scenario())


def test_a_claim_whose_target_is_stored_already_counts_as_stored_not_fenced() -> None:
    async def scenario() -> None:
        sink = _OffsetSink({0: 100})
        consumer = _Consumer({TP0})
        worker, metrics = _worker(sink, consumer)
        await worker.on_partitions_assigned({TP0})
        worker._add({TP0: _messages(0, 100, 3)})
        worker._launch(worker._building)
        sink.stored[0] = 103  # the commit landed, its acknowledgement was lost
        await worker._settle_in_flight()
        assert metrics.offsets_fenced._value.get() == 0
        assert consumer.seeks == [(TP0, 100)]
        assert worker._durable[TP0] == 103

    asyncio.run(scenario())


def test_unreadable_stored_offsets_start_at_kafkas_and_the_first_claim_corrects() -> None:
    class _Unreadable(_OffsetSink):
        async def stored_offsets(
            self, group: str, topic: str, partitions: Sequence[int]
        ) -> dict[int, int]:
            raise OSError("database unreachable")

    async def scenario() -> None:
        sink = _Unreadable({0: 100})
        consumer = _Consumer({TP0})
        worker, metrics = _worker(sink, consumer)
        await worker.on_partitions_assigned({TP0})
        assert consumer.seeks == []  # Kafka's committed offset: 60, say
        worker._add({TP0: _messages(0, 60, 5)})
        await _write_building(worker)
        # Claimed as a first batch (no row known): fenced, nothing written, sought.
        assert sink.claims == [(OffsetClaim(0, None, 65),)]
        assert not sink.written and sink.stored == {0: 100}
        assert consumer.seeks == [(TP0, 100)] and metrics.offsets_fenced._value.get() == 1
        worker._add({TP0: _messages(0, 100, 2)})
        await _write_building(worker)
        assert sink.claims[-1] == (OffsetClaim(0, 100, 102),) and sink.stored == {0: 102}

    asyncio.run(scenario())


def test_an_idle_partition_whose_stored_commits_were_lost_is_read_again() -> None:
    """A crash with synchronous_commit=off (or a restore) loses commits the worker saw
    acknowledged. A partition that gets no new record makes no claim to be fenced: the
    periodic check finds its stored offset behind and reads the lost records again."""

    async def scenario() -> None:
        sink = _OffsetSink({0: 100})
        consumer = _Consumer({TP0, TP1})
        worker, metrics = _worker(sink, consumer)
        await worker.on_partitions_assigned({TP0, TP1})
        worker._add({TP0: _messages(0, 100, 3), TP1: _messages(1, 7, 2)})
        await _write_building(worker)
        assert sink.stored == {0: 103, 1: 9}

        await worker._check_stored_offsets()  # nothing lost: nothing moves
        assert consumer.seeks == [(TP0, 100)]  # the assignment's

        sink.stored = {0: 100}  # the crash: both commits lost, partition 1's row with it
        await worker._check_stored_offsets()
        assert sorted(consumer.seeks[1:]) == [(TP0, 100), (TP1, 7)]
        assert metrics.offsets_fenced._value.get() == 2

        worker._add({TP0: _messages(0, 100, 3), TP1: _messages(1, 7, 2)})
        await _write_building(worker)
        assert sink.claims[-1] == (OffsetClaim(0, 100, 103), OffsetClaim(1, None, 9))
        assert sink.stored == {0: 103, 1: 9}
        assert len(sink.written) == 10

    asyncio.run(scenario())


def test_the_check_leaves_a_partition_with_a_claim_out_or_stored_ahead() -> None:
    async def scenario() -> None:
        sink = _OffsetSink({0: 100, 1: 7})
        consumer = _Consumer({TP0, TP1})
        worker, _ = _worker(sink, consumer)
        await worker.on_partitions_assigned({TP0, TP1})
        worker._add({TP0: _messages(0, 100, 3), TP1: _messages(1, 7, 2)})
        await _write_building(worker)
        sink.stored[1] = 20  # another worker stored partition 1 further: its claim decides
        worker._add({TP0: _messages(0, 103, 2)})
        worker._launch(worker._building)  # partition 0's claim is out
        sink.stored[0] = 100
        await worker._check_stored_offsets()
        assert sorted(consumer.seeks) == [(TP0, 100), (TP1, 7)]  # the assignment's only
        await worker._settle_in_flight()  # the claim itself is fenced and seeks back
        assert consumer.seeks[-1] == (TP0, 100)

    asyncio.run(scenario())


def test_a_claim_whose_expected_row_was_lost_reads_the_partition_again() -> None:
    """The sink fences a claim whose expected row is gone (NO_STORED_OFFSET) instead of
    creating it over the lost rows; the worker starts again where it began reading."""

    async def scenario() -> None:
        sink = _OffsetSink({})
        consumer = _Consumer({TP0})
        worker, _ = _worker(sink, consumer)
        await worker.on_partitions_assigned({TP0})
        worker._add({TP0: _messages(0, 40, 3)})
        await _write_building(worker)
        sink.stored.clear()  # the crash lost the commit that created the row
        worker._add({TP0: _messages(0, 43, 2)})
        await _write_building(worker)
        assert sink.claims[-1] == (OffsetClaim(0, 43, 45),)
        assert consumer.seeks == [(TP0, 40)]
        worker._add({TP0: _messages(0, 40, 5)})
        await _write_building(worker)
        assert sink.claims[-1] == (OffsetClaim(0, None, 45),)
        assert sink.stored == {0: 45}
        assert len(sink.written) == 3 + 5

    asyncio.run(scenario())
