"""Pure parts of the consumer: stdout rendering, dead-letter headers, timestamps."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from pipeline.consumer.dead_letter import DeadLetter
from pipeline.consumer.metrics import ConsumerMetrics
from pipeline.consumer.settings import ConsumerSettings
from pipeline.consumer.stdout_sink import StdoutSink, row_to_json
from pipeline.storage.batch import times_to_micros as _times_to_micros
from pipeline.storage.rows import CaptureRow, build_row
from tests.integration.consume_support import encode_packets, sip_packet


def _row(payload: bytes | None = None) -> CaptureRow:
    from pipeline.records import load_codec

    overrides = {"payload": payload, "proto_type": 5} if payload is not None else {}
    ((_, value),) = encode_packets([sip_packet("unit@test", 7, ts=1_700_000_000.25, **overrides)])
    record = load_codec().decode(value)
    _times_to_micros(record)
    return build_row(record, kafka_partition=3, kafka_offset=42)


def test_row_to_json_names_columns_and_encodes_bytes() -> None:
    line = json.loads(row_to_json(_row()))
    assert line["table"] == "hep_proto_1_call"
    assert line["call_id"] == "unit@test" and line["method"] == "INVITE"
    assert line["create_date"] == "2023-11-14T22:13:20.250000+00:00"
    assert line["kafka_partition"] == 3 and line["kafka_offset"] == 42
    binary = json.loads(row_to_json(_row(b"a\x00b\xff")))
    assert base64.b64decode(binary["raw_bytes"]) == b"a\x00b\xff"


async def test_stdout_sink_writes_one_line_per_row() -> None:
    out = io.StringIO()
    sink = StdoutSink(out)
    assert await sink.write([_row(), _row()]) == []
    assert len(out.getvalue().splitlines()) == 2


def test_times_to_micros_accepts_datetimes_and_ints() -> None:
    record = {
        "capture_time": datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=UTC),
        "receive_time": 5,
    }
    _times_to_micros(record)
    assert record == {"capture_time": 1_700_000_000_250_000, "receive_time": 5}


def test_dead_letter_headers() -> None:
    letter = DeadLetter("hep", 2, 99, b"k", b"v", "bad_magic", "x" * 5000)
    headers = dict(letter.headers())
    assert headers["hep_ingest_reason"] == b"bad_magic"
    assert headers["hep_ingest_source"] == b"hep/2/99"
    assert len(headers["hep_ingest_detail"]) == 1000


def test_settings_and_metrics() -> None:
    settings = ConsumerSettings(dsn="postgresql://x/y", topic="t")
    assert settings.dead_letter_topic_name == "t.dlq"
    assert settings.batch_size == 10_000 and settings.flush_interval == 1.0
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry)
    metrics.dead_letters.labels(reason="bad_magic").inc()
    assert registry.get_sample_value("hep_ingest_dead_letter_total", {"reason": "bad_magic"}) == 1.0
    ConsumerMetrics(CollectorRegistry())  # a second registry: nothing global
