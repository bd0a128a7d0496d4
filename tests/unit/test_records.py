"""Avro single-object encoding and the packet-to-record mapping."""

from __future__ import annotations

import json

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.hep.packet import HepChunk, HepPacket
from pipeline.records import (
    ReceiveContext,
    RecordDecodeError,
    RecordIdGenerator,
    load_codec,
    packet_to_record,
    record_id_text,
    record_key,
)
from pipeline.resources import schemas_dir

CONTEXT = ReceiveContext(transport="udp", sender_ip="127.0.0.1", sender_port=5060, receiver_id="r1")
INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1\r\n"
    b"Call-ID: abc-123@host\r\nCSeq: 1 INVITE\r\n\r\n"
)


def sample_packet(**overrides: object) -> HepPacket:
    fields: dict[str, object] = {
        "version": 3, "ip_family": 2, "ip_proto": 17, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2",
        "src_port": 5060, "dst_port": 5070, "ts_sec": 1_700_000_000, "ts_usec": 123_456,
        "proto_type": 1, "capture_id": 2001, "payload": INVITE,
        "extra_chunks": [HepChunk(vendor=2, type=1, value=b"\x01")],
    }
    fields.update(overrides)
    return HepPacket(**fields)  # type: ignore[arg-type]


def test_single_object_header_is_magic_then_little_endian_fingerprint() -> None:
    codec = load_codec()
    data = codec.encode(packet_to_record(sample_packet(), record_id=b"\x00" * 16,
                                         receive_time_us=1, context=CONTEXT))
    assert data[:2] == b"\xc3\x01"
    schema = json.loads(next(schemas_dir().glob("hep_packet.v*.avsc")).read_text())
    canonical = fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(schema))
    assert data[2:10].hex() == fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")


def test_record_round_trips_every_field() -> None:
    codec = load_codec()
    record = packet_to_record(sample_packet(), record_id=RecordIdGenerator().next(),
                              receive_time_us=1_700_000_001_000_000, context=CONTEXT)
    assert codec.decode(codec.encode(record)) == record
    assert record["capture_time"] == 1_700_000_000_123_456
    assert record["capture_time_from_receiver"] is False
    assert record["extra_chunks"] == [{"vendor": 2, "type": 1, "value": b"\x01"}]


def test_zero_timestamp_takes_the_receive_time() -> None:
    record = packet_to_record(sample_packet(ts_sec=0, ts_usec=0), record_id=b"\x01" * 16,
                              receive_time_us=42_000_000, context=CONTEXT)
    assert record["capture_time"] == 42_000_000
    assert record["capture_time_from_receiver"] is True


def test_auth_key_is_forwarded_only_when_configured() -> None:
    packet = sample_packet(auth_key=b"secret")
    hidden = packet_to_record(packet, record_id=b"\x01" * 16, receive_time_us=1, context=CONTEXT)
    assert hidden["auth_key_present"] is True
    assert hidden["auth_key"] is None
    forwarding = ReceiveContext("tcp", "127.0.0.1", 1, "r", forward_auth_key=True)
    shown = packet_to_record(packet, record_id=b"\x01" * 16, receive_time_us=1, context=forwarding)
    assert shown["auth_key"] == "secret"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\xc3\x01\x00", "truncated"),
        (b"\x00\x01" + b"\x00" * 20, "bad_magic"),
        (b"\xc3\x01" + b"\xff" * 8 + b"\x00", "unknown_schema"),
    ],
)
def test_undecodable_values_raise_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(RecordDecodeError) as info:
        load_codec().decode(data)
    assert info.value.reason == reason


@given(st.binary(max_size=200))
def test_arbitrary_bodies_only_raise_record_decode_error(body: bytes) -> None:
    codec = load_codec()
    try:
        codec.decode(b"\xc3\x01" + codec.fingerprint + body)
    except RecordDecodeError:
        pass


def test_record_key_prefers_correlation_id_then_call_id() -> None:
    assert record_key(sample_packet(correlation_id="corr-1")) == b"corr-1"
    assert record_key(sample_packet()) == b"abc-123@host"
    assert record_key(sample_packet(proto_type=5, payload=b'{"a":1}')) is None


def test_record_ids_are_unique_and_render_as_uuid() -> None:
    ids = RecordIdGenerator()
    first, second = ids.next(), ids.next()
    assert first != second and len(first) == 16
    assert len(record_id_text(first)) == 36
