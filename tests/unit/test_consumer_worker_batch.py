"""ConsumerWorker batching without a broker: dead letters keep their Kafka source."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry

from pipeline.consumer.dead_letter import DeadLetter
from pipeline.consumer.metrics import ConsumerMetrics
from pipeline.consumer.settings import ConsumerSettings
from pipeline.consumer.worker import ConsumerWorker
from pipeline.records import load_codec
from pipeline.storage.offsets import BatchOffsets, BatchOutcome
from pipeline.storage.rows import CaptureRow
from tests.integration.consume_support import encode_packets, sip_packet


class _Rejected(NamedTuple):
    row: CaptureRow
    reason: str


class _RejectingSink:
    """Rejects every row whose Kafka offset is in `bad`."""

    wire_format = None

    def __init__(self, bad: set[tuple[int, int]]) -> None:
        self.bad = bad
        self.written: list[CaptureRow] = []

    async def write_batch(
        self,
        rows: Sequence[CaptureRow],
        offsets: BatchOffsets | None = None,
        before_commit: Callable[[list[Any]], Awaitable[None]] | None = None,
    ) -> BatchOutcome:
        self.written.extend(rows)
        rejected: list[Any] = [
            _Rejected(row, f"22000: bad {row.value('kafka_offset')}")
            for row in rows
            if (row.value("kafka_partition"), row.value("kafka_offset")) in self.bad
        ]
        if before_commit is not None:
            await before_commit(rejected)
        return BatchOutcome(rejected=rejected)


class _Letters:
    topic = "t.dlq"

    def __init__(self) -> None:
        self.sent: list[DeadLetter] = []

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        self.sent.extend(letters)


def _message(partition: int, offset: int, key: bytes | None, value: bytes | None) -> Any:
    return ConsumerRecord("t", partition, offset, 0, 0, key, value, None, -1, -1, ())


def test_rejected_rows_and_undecodable_values_become_dead_letters_with_their_source() -> None:
    items = encode_packets(sip_packet(f"c{i}@test", i) for i in range(6))
    tp0, tp1 = TopicPartition("t", 0), TopicPartition("t", 1)
    data = {
        tp0: [_message(0, 10 + i, key, value) for i, (key, value) in enumerate(items[:3])],
        tp1: [_message(1, 20 + i, key, value) for i, (key, value) in enumerate(items[3:])]
        + [_message(1, 23, b"k", b"not avro"), _message(1, 24, b"k2", None)],
    }
    sink = _RejectingSink({(0, 11), (1, 22)})
    letters = _Letters()
    worker = ConsumerWorker(
        consumer=None,  # type: ignore[arg-type]
        sink=sink,  # type: ignore[arg-type]
        dead_letters=letters,  # type: ignore[arg-type]
        codec=load_codec(),
        settings=ConsumerSettings(sink="stdout"),
        metrics=ConsumerMetrics(CollectorRegistry()),
    )
    worker._assigned = {tp0, tp1}
    worker._add(data)
    batch = worker._building
    assert batch.records == 8
    result = asyncio.run(worker._write(batch))

    assert result.offsets == {tp0: 13, tp1: 25}
    assert result.written == 4 and result.dead_letters == 4
    assert [(r.value("kafka_partition"), r.value("kafka_offset")) for r in sink.written] == [
        (0, 10),
        (0, 11),
        (0, 12),
        (1, 20),
        (1, 21),
        (1, 22),
    ]
    by_offset = {(d.partition, d.offset): d for d in letters.sent}
    assert set(by_offset) == {(0, 11), (1, 22), (1, 23), (1, 24)}
    for partition, offset, (key, value) in ((0, 11, items[1]), (1, 22, items[5])):
        letter = by_offset[(partition, offset)]
        assert letter.reason == "rejected" and letter.detail == f"22000: bad {offset}"
        assert (letter.topic, letter.key, letter.value) == ("t", key, value)
    assert by_offset[(1, 23)].value == b"not avro" and by_offset[(1, 23)].key == b"k"
    assert by_offset[(1, 24)].reason == "no_value"


def _worker(sink: Any, settings: ConsumerSettings, registry: CollectorRegistry) -> ConsumerWorker:
    return ConsumerWorker(
        consumer=None,  # type: ignore[arg-type]
        sink=sink,
        dead_letters=_Letters(),  # type: ignore[arg-type]
        codec=load_codec(),
        settings=settings,
        metrics=ConsumerMetrics(registry),
    )


def test_filtered_records_advance_offsets_and_kpis_count_only_stored_rows() -> None:
    from pipeline.consumer.filters import CaptureFilter
    from pipeline.sip.kpi import KpiLimits
    from tests import flows

    captures = flows.busy(1_700_000_000_000_000)
    options = sip_packet("keepalive@x", 1, src_ip="10.9.9.9")
    options.payload = options.payload.replace(b"INVITE", b"OPTIONS")
    items = encode_packets([options] + [c.to_packet() for c in captures])
    tp = TopicPartition("t", 0)
    data = {tp: [_message(0, 100 + i, key, value) for i, (key, value) in enumerate(items)]}
    # PostgreSQL refuses the 486: its outcome must not be counted.
    sink = _RejectingSink({(0, 104)})
    registry = CollectorRegistry()
    settings = ConsumerSettings(
        sink="stdout",
        capture_filter=CaptureFilter(discard_methods=frozenset({"OPTIONS"})),
        sip_kpi=KpiLimits(),
    )
    worker = _worker(sink, settings, registry)
    worker._assigned = {tp}
    worker._add(data)
    result = asyncio.run(worker._write(worker._building))

    assert result.offsets == {tp: 100 + len(items)}  # the dropped OPTIONS included
    assert [r.value("cseq_method") for r in sink.written] == ["INVITE"] * 4 + ["ACK"]
    assert registry.get_sample_value(
        "hep_ingest_records_discarded_total", {"reason": "method"}) == 1
    assert registry.get_sample_value(
        "hep_ingest_sip_messages_total",
        {"node": "2042", "method": "INVITE", "type": "response", "code": "180"}) == 1
    assert registry.get_sample_value(
        "hep_ingest_sip_messages_total",
        {"node": "2042", "method": "INVITE", "type": "response", "code": "486"}) is None
    assert registry.get_sample_value(
        "hep_ingest_sip_session_request_delay_seconds_count", {"node": "2042"}) == 1
    assert registry.get_sample_value("hep_ingest_sip_kpi_pending") == 1
