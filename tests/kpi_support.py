"""Rows of the generated SIP flows (tests/flows.py) for the KPI and filter tests, built
the consumer's way: HEP bytes -> record -> `build_row`."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pipeline.hep import decode_packet, encode_hep3
from pipeline.records import ReceiveContext, RecordIdGenerator, packet_to_record
from pipeline.storage import CaptureRow, build_row
from tests.flows import Capture

CONTEXT = ReceiveContext(transport="udp", sender_ip="127.0.0.1", sender_port=9, receiver_id="k")
START_US = 1_700_000_000_000_000


def rows_of(captures: Sequence[Capture], partition: int = 0,
            capture_id: int = 2042) -> list[CaptureRow]:
    ids = RecordIdGenerator()
    return [
        build_row(
            packet_to_record(
                decode_packet(encode_hep3(capture.to_packet(capture_id))),
                record_id=ids.next(), receive_time_us=time.time_ns() // 1000, context=CONTEXT,
            ),
            kafka_partition=partition, kafka_offset=offset,
        )
        for offset, capture in enumerate(captures)
    ]
