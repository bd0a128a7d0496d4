"""Avro single-object encoding and the packet-to-record mapping."""

from __future__ import annotations

import contextlib
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
)
from pipeline.resources import schemas_dir
from tests.implementations import Implementation

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
    with contextlib.suppress(RecordDecodeError):
        codec.decode(b"\xc3\x01" + codec.fingerprint + body)


def test_record_key_prefers_correlation_id_then_call_id(impl: Implementation) -> None:
    assert impl.record_key(sample_packet(correlation_id="corr-1")) == b"corr-1"
    assert impl.record_key(sample_packet()) == b"abc-123@host"
    assert impl.record_key(sample_packet(proto_type=5, payload=b'{"a":1}')) is None


def test_record_ids_are_unique_and_render_as_uuid() -> None:
    ids = RecordIdGenerator()
    first, second = ids.next(), ids.next()
    assert first != second and len(first) == 16
    assert len(record_id_text(first)) == 36


_optional_text = st.none() | st.text(max_size=20)
_optional_int = st.none() | st.integers(min_value=-(2**31), max_value=2**31 - 1)


@given(
    payload=st.binary(max_size=300),
    src_ip=_optional_text,
    src_port=_optional_int,
    capture_id=st.none() | st.integers(min_value=0, max_value=2**32 - 1),
    correlation_id=_optional_text,
    ts=st.integers(min_value=0, max_value=2**32 - 1),
    chunks=st.lists(
        st.builds(HepChunk, st.integers(0, 65535), st.integers(0, 65535), st.binary(max_size=8)),
        max_size=3,
    ),
)
def test_compiled_writer_matches_fastavro_byte_for_byte(
    payload: bytes, src_ip: str | None, src_port: int | None, capture_id: int | None,
    correlation_id: str | None, ts: int, chunks: list[HepChunk],
) -> None:
    import io

    codec = load_codec()
    packet = sample_packet(payload=payload, src_ip=src_ip, src_port=src_port,
                           capture_id=capture_id, correlation_id=correlation_id, ts_sec=ts,
                           extra_chunks=chunks)
    record = packet_to_record(packet, record_id=b"\x07" * 16, receive_time_us=5, context=CONTEXT)
    reference = io.BytesIO()
    fastavro.schemaless_writer(reference, codec.writer.parsed, record)
    assert codec.encode(record)[10:] == reference.getvalue()


@given(payload=st.binary(max_size=300), node=_optional_text, vlan=_optional_int)
def test_compiled_reader_reads_what_fastavro_writes(
    payload: bytes, node: str | None, vlan: int | None
) -> None:
    import io

    codec = load_codec()
    record = packet_to_record(sample_packet(payload=payload, node_name=node, vlan=vlan),
                              record_id=b"\x09" * 16, receive_time_us=7, context=CONTEXT)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, codec.writer.parsed, record)
    assert codec.decode(b"\xc3\x01" + codec.fingerprint + body.getvalue()) == record


def test_records_of_an_older_schema_are_read_with_the_new_fields_defaults(tmp_path) -> None:
    old_schema = json.loads((schemas_dir() / "hep_packet.v1.avsc").read_text())
    new_schema = json.loads(json.dumps(old_schema))
    new_schema["fields"].append(
        {"name": "site", "type": ["null", "string"], "default": None, "doc": "test field"}
    )
    (tmp_path / "hep_packet.v1.avsc").write_text(json.dumps(old_schema))
    (tmp_path / "hep_packet.v2.avsc").write_text(json.dumps(new_schema))
    old_codec = load_codec(schemas_dir())
    new_codec = load_codec(tmp_path)
    record = packet_to_record(sample_packet(), record_id=b"\x01" * 16, receive_time_us=1,
                              context=CONTEXT)
    decoded = new_codec.decode(old_codec.encode(record))
    assert decoded == {**record, "site": None}
    assert new_codec.fingerprint != old_codec.fingerprint


def test_truncated_body_is_a_bad_body() -> None:
    codec = load_codec()
    data = codec.encode(packet_to_record(sample_packet(), record_id=b"\x01" * 16,
                                         receive_time_us=1, context=CONTEXT))
    with pytest.raises(RecordDecodeError) as info:
        codec.decode(data[:-5])
    assert info.value.reason == "bad_body"
    with pytest.raises(RecordDecodeError) as info:
        codec.decode(data + b"\x00")
    assert info.value.reason == "trailing_bytes"


# -- the receiver's direct HepPacket -> Avro encoder ------------------------------------


def _generic_encode(codec, packet, record_id, now_us, context) -> bytes:  # type: ignore[no-untyped-def]
    record = packet_to_record(packet, record_id=record_id, receive_time_us=now_us,
                              context=context)
    return codec.encode(record)


def test_packet_encoder_matches_the_generic_path_on_every_vector(impl: Implementation) -> None:
    from conftest import VECTOR_SETS, load_vectors

    from pipeline.hep.decode import decode_packet

    codec = load_codec()
    encode = impl.packet_encoder(codec)
    assert encode is not None
    contexts = [CONTEXT, ReceiveContext("tcp", "::1", 65535, "host:42", forward_auth_key=True)]
    count = 0
    for name in VECTOR_SETS:
        packets, _ = load_vectors(name)
        for data in packets:
            packet = decode_packet(data)
            for context in contexts:
                for now in (1_800_000_000_000_000, 0, 5, 1 << 20):
                    record_id = bytes(range(16))
                    assert encode(packet, record_id, now, context) == _generic_encode(
                        codec, packet, record_id, now, context
                    )
                    count += 1
    assert count > 500


_any_int = st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
_small_or_big = st.integers(min_value=0, max_value=70_000) | st.integers(-(2**40), 2**40)


@given(
    ints=st.lists(_any_int, min_size=8, max_size=8),
    texts=st.lists(st.none() | st.text(max_size=30), min_size=4, max_size=4),
    auth_key=st.none() | st.binary(max_size=20),
    payload=st.binary(max_size=300) | st.just(b"x" * 70_000),
    compressed=st.booleans(),
    version=st.sampled_from([1, 2, 3]),
    ts_sec=st.integers(min_value=0, max_value=2**32 - 1),
    ts_usec=st.integers(min_value=0, max_value=2**32 - 1),
    now_us=st.integers(min_value=-(2**62), max_value=2**62),
    chunks=st.lists(st.builds(HepChunk, _small_or_big, _small_or_big, st.binary(max_size=8)),
                    max_size=3),
    context=st.builds(ReceiveContext, st.sampled_from(["udp", "tcp"]), st.text(max_size=40),
                      st.integers(0, 2**31 - 1), st.text(max_size=20), st.booleans()),
)
def test_packet_encoder_matches_the_generic_path_byte_for_byte(
    impl: Implementation,
    ints: list[int | None], texts: list[str | None], auth_key: bytes | None, payload: bytes,
    compressed: bool, version: int, ts_sec: int, ts_usec: int, now_us: int,
    chunks: list[HepChunk], context: ReceiveContext,
) -> None:
    codec = load_codec()
    encode = impl.packet_encoder(codec)
    assert encode is not None
    packet = HepPacket(
        version, ints[0], ints[1], texts[0], texts[1], ints[2], ints[3], ts_sec, ts_usec,
        ints[4], ints[5], ints[6], auth_key, payload, compressed, texts[2], ints[7], texts[3],
        chunks,
    )
    record_id = b"\x05" * 16
    assert encode(packet, record_id, now_us, context) == _generic_encode(
        codec, packet, record_id, now_us, context
    )


def test_packet_encoder_refuses_an_unknown_schema_layout(impl: Implementation, tmp_path) -> None:
    packet_encoder = impl.packet_encoder
    schema = json.loads((schemas_dir() / "hep_packet.v1.avsc").read_text())
    schema["fields"].append(
        {"name": "site", "type": ["null", "string"], "default": None, "doc": "test field"}
    )
    (tmp_path / "hep_packet.v2.avsc").write_text(json.dumps(schema))
    assert packet_encoder(load_codec(tmp_path)) is None
    assert packet_encoder(load_codec()) is not None
