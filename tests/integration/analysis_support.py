"""Store HEP captures through the real pipeline for the analysis tests.

Bytes -> `decode_packet` -> `packet_to_record` -> `build_row` -> `PostgresSink.write_batch`:
the same path the receiver and the consumer take, minus the broker.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from pipeline.hep import decode_packet, encode_hep3
from pipeline.postgres.sink import PostgresSink, RetryPolicy, SinkSettings
from pipeline.records import ReceiveContext, RecordIdGenerator, packet_to_record
from pipeline.storage import build_row
from pipeline.storage.headers import HeaderExtraction
from pipeline.storage.offsets import BatchOffsets, BatchOutcome, OffsetClaim
from tests.flows import Capture, all_flows

GROUP = "hep-ingest"  # the consumer's default group
CONTEXT = ReceiveContext(
    transport="udp", sender_ip="127.0.0.1", sender_port=9060, receiver_id="analysis-test"
)


def flows_start(now: datetime | None = None) -> datetime:
    """Where the generated flows start: ten minutes into the hour before last, so that
    every flow lies in one hour bucket, inside `now() - interval '1 day'`."""
    current = now or datetime.now(UTC)
    return current.replace(minute=10, second=0, microsecond=0) - timedelta(hours=2)


def encode_captures(captures: Sequence[Capture]) -> list[bytes]:
    return [encode_hep3(capture.to_packet()) for capture in captures]


def generated_packets(start: datetime) -> list[bytes]:
    return encode_captures(all_flows(int(start.timestamp() * 1_000_000)))


async def store_packets(
    dsn: str, packets: Sequence[bytes], headers: HeaderExtraction | None = None
) -> int:
    """Decode and store `packets` (HEP bytes, in capture order) as the consumer stores
    a batch of partition 0 of topic "hep": with its offsets, and the consumer's
    --custom-header/--a-leg-header rules `headers`. Return rows written."""
    sink = PostgresSink(SinkSettings(dsn=dsn, retry=RetryPolicy.instant()))
    await sink.start()
    try:
        first = (await sink.stored_offsets(GROUP, "hep", [0])).get(0)
        ids = RecordIdGenerator()
        rows = []
        for offset, data in enumerate(packets, start=first or 0):
            record = packet_to_record(
                decode_packet(data),
                record_id=ids.next(),
                receive_time_us=time.time_ns() // 1000,
                context=CONTEXT,
            )
            rows.append(
                build_row(record, kafka_partition=0, kafka_offset=offset, headers=headers)
            )
        claim = OffsetClaim(0, first, (first or 0) + len(rows))
        outcome = await sink.write_batch(rows, BatchOffsets(GROUP, "hep", (claim,)))
    finally:
        await sink.close()
    assert outcome == BatchOutcome(), outcome
    return len(rows)
