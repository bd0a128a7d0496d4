"""Row building: routing, HOMER headers, payload preservation. Pure, no database."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.hep import decode_packet
from pipeline.hep.chunks import PROTO_TYPE_NAMES
from pipeline.records import ReceiveContext, RecordIdGenerator, packet_to_record
from pipeline.storage import COLUMNS, CaptureRow, build_row
from pipeline.storage.rows import (
    CAPTURE_TABLES,
    DUPLICATES_TABLE,
    TYPE_TABLES,
    index_key,
    table_for,
)
from tests.conftest import VECTOR_SETS, load_vectors

CONTEXT = ReceiveContext(transport="udp", sender_ip="127.0.0.1", sender_port=9, receiver_id="r1")


def record(payload: bytes, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "record_id": b"\x01" * 16, "hep_version": 3, "ip_family": 2, "ip_proto": 17,
        "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "src_port": 5060, "dst_port": 5070,
        "capture_time": 1_700_000_000_123_456, "capture_time_from_receiver": False,
        "proto_type": 1, "capture_id": 2001, "keep_alive": None, "auth_key_present": False,
        "auth_key": None, "correlation_id": None, "vlan": None, "node_name": None,
        "payload": payload, "payload_was_compressed": False, "extra_chunks": [],
        "receive_time": 1_700_000_001_000_000, "transport": "udp", "sender_ip": "127.0.0.1",
        "sender_port": 9, "receiver_id": "r1",
    }
    fields.update(overrides)
    return fields


def sip(start: str, method: str, *, call_id: str = "abc@h", extra: str = "") -> bytes:
    return (
        f"{start}\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n"
        f"From: \"A\" <sip:alice@a.example>;tag=f1\r\nTo: <sip:bob@b.example>;tag=t1\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 7 {method}\r\n{extra}\r\n"
    ).encode()


def request(method: str) -> bytes:
    return sip(f"{method} sip:bob@b.example SIP/2.0", method)


def row_of(payload: bytes, **overrides: Any) -> CaptureRow:
    return build_row(record(payload, **overrides), kafka_partition=3, kafka_offset=42)


def col(row: CaptureRow) -> dict[str, Any]:
    return dict(zip(COLUMNS, row.values, strict=True))


CALL = ("INVITE", "ACK", "BYE", "CANCEL", "UPDATE", "PRACK", "REFER", "INFO", "NOTIFY")
OTHER = ("OPTIONS", "MESSAGE", "SUBSCRIBE", "PUBLISH")


def test_columns_are_the_tables_columns_but_id() -> None:
    assert "id" not in COLUMNS
    assert len(COLUMNS) == len(set(COLUMNS)) == 43
    assert len(row_of(request("INVITE")).values) == len(COLUMNS)


@pytest.mark.parametrize(
    ("method", "table"),
    [(m, "hep_proto_1_call") for m in CALL]
    + [("REGISTER", "hep_proto_1_registration")]
    + [(m, "hep_proto_1_default") for m in OTHER],
)
def test_requests_route_by_method(method: str, table: str) -> None:
    row = row_of(request(method))
    assert row.table == table
    assert col(row)["method"] == method
    assert col(row)["status"] is None


@pytest.mark.parametrize(
    ("method", "table"),
    [("INVITE", "hep_proto_1_call"), ("BYE", "hep_proto_1_call"),
     ("REGISTER", "hep_proto_1_registration"), ("OPTIONS", "hep_proto_1_default")],
)
def test_responses_route_by_cseq_method(method: str, table: str) -> None:
    row = row_of(sip("SIP/2.0 200 OK", method))
    values = col(row)
    assert row.table == table
    assert values["method"] is None
    assert values["status"] == 200
    assert values["reason"] == "OK"
    assert values["cseq_method"] == method
    assert values["cseq_num"] == 7
    header = json.loads(values["data_header"])
    assert header["method"] == "200"  # HOMER: the status code for responses
    assert header["cseq"] == f"7 {method}"


def test_hep_v2_without_proto_type_is_sip() -> None:
    assert row_of(request("INVITE"), proto_type=None, hep_version=2).table == "hep_proto_1_call"


def test_unparseable_sip_is_kept_with_its_reason() -> None:
    row = row_of(b"this is not SIP\r\nCall-ID: x@y\r\n\r\n")
    values = col(row)
    assert row.table == "hep_proto_1_default"
    assert values["parse_error"] == "bad_start_line"
    assert values["sid"] == "x@y"
    assert values["raw"].startswith("this is not SIP")
    assert json.loads(values["data_header"])["parse_error"] == "bad_start_line"


def test_empty_sip_payload_still_makes_a_row() -> None:
    values = col(row_of(b""))
    assert values["parse_error"] == "empty"
    assert values["sid"] == ""


@pytest.mark.parametrize(
    ("proto", "table"),
    [(5, "hep_proto_5_default"), (100, "hep_proto_100_default"), (34, "hep_proto_34_default"),
     (35, "hep_proto_35_default"), (53, "hep_proto_53_default"), (54, "hep_proto_54_default"),
     (0, "hep_proto_unknown_default"), (129, "hep_proto_unknown_default"),
     (255, "hep_proto_unknown_default"), (4000, "hep_proto_unknown_default")],
)
def test_other_types_route_by_proto_type(proto: int, table: str) -> None:
    row = row_of(b'{"x": 1}', proto_type=proto)
    assert row.table == table
    assert col(row)["parse_error"] is None
    assert col(row)["call_id"] is None


def test_non_sip_without_correlation_id_is_still_a_row() -> None:
    values = col(row_of(b"log line", proto_type=100))
    assert values["sid"] == ""
    assert json.loads(values["data_header"]) == {"node": "2001", "proto": "log"}


def test_correlation_id_is_the_sid_of_non_sip() -> None:
    values = col(row_of(b"log", proto_type=100, correlation_id="call-1@h", node_name="edge"))
    assert values["sid"] == "call-1@h"
    assert values["correlation_id"] == "call-1@h"
    assert json.loads(values["data_header"])["node"] == "edge"


def test_sip_sid_is_the_call_id() -> None:
    values = col(row_of(request("INVITE"), correlation_id="other"))
    assert values["sid"] == values["call_id"] == "abc@h"


def test_protocol_header_has_homer_keys() -> None:
    header = json.loads(col(row_of(request("INVITE")))["protocol_header"])
    assert header == {
        "protocolFamily": 2, "protocol": 17, "srcIp": "10.0.0.1", "dstIp": "10.0.0.2",
        "srcPort": 5060, "dstPort": 5070, "timeSeconds": 1_700_000_000,
        "timeUseconds": 123_456, "payloadType": 1, "captureId": "2001", "correlation_id": "abc@h",
        "transport": "udp", "receiverId": "r1",
    }


def test_capture_pass_only_when_stored_and_forwarded() -> None:
    rec = record(request("INVITE"), auth_key="secret")
    hidden = json.loads(col(build_row(rec, kafka_partition=None, kafka_offset=None))
                        ["protocol_header"])
    assert "capturePass" not in hidden
    shown = build_row(rec, kafka_partition=None, kafka_offset=None, store_auth_key=True)
    assert json.loads(col(shown)["protocol_header"])["capturePass"] == "secret"
    unforwarded = build_row(record(request("INVITE")), kafka_partition=None,
                            kafka_offset=None, store_auth_key=True)
    assert "capturePass" not in json.loads(col(unforwarded)["protocol_header"])


def test_sip_data_header_keys() -> None:
    header = json.loads(col(row_of(request("INVITE")))["data_header"])
    assert header["callid"] == "abc@h"
    assert header["method"] == "INVITE"
    assert header["from_user"] == "alice"
    assert header["from_tag"] == "f1"
    assert header["to_user"] == "bob"
    assert header["to_tag"] == "t1"
    assert header["ruri_user"] == "bob"
    assert header["ruri_domain"] == "b.example"
    assert header["user_agent"] == ""


def test_typed_values() -> None:
    values = col(row_of(request("INVITE")))
    assert values["record_id"] == uuid.UUID(bytes=b"\x01" * 16)
    assert values["create_date"] == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
    assert values["receive_time"] == datetime(2023, 11, 14, 22, 13, 21, tzinfo=UTC)
    assert values["kafka_partition"] == 3
    assert values["kafka_offset"] == 42
    assert values["via_branch"] == "z9hG4bK1"
    assert values["raw_bytes"] is None


def test_nul_payload_keeps_its_bytes() -> None:
    payload = request("INVITE") + b"body\x00with nul"
    values = col(row_of(payload))
    assert values["raw_bytes"] == payload
    assert "\x00" not in values["raw"]


def test_nul_inside_headers_never_reaches_text_or_jsonb() -> None:
    payload = sip("INVITE sip:b\x00ob@b.example SIP/2.0", "INVITE", call_id="a\x00b@h")
    row = row_of(payload)
    for value in row.values:
        if isinstance(value, str):
            assert "\x00" not in value
            assert "\\u0000" not in value
    assert col(row)["raw_bytes"] == payload


def test_invalid_utf8_payload_keeps_its_bytes() -> None:
    payload = request("MESSAGE") + b"\xff\xfe\xc3("
    values = col(row_of(payload))
    assert values["raw_bytes"] == payload
    assert "\ufffd" in values["raw"]


def test_values_that_do_not_fit_their_column_become_null() -> None:
    values = col(row_of(b"x", proto_type=5, capture_id=2**70, ip_family=70000))
    assert values["capture_id"] is None
    assert values["ip_family"] is None


@pytest.mark.parametrize("name", VECTOR_SETS)
def test_vector_sets_build_the_expected_rows(name: str) -> None:
    packets, expected = load_vectors(name)
    ids = RecordIdGenerator(b"\x00" * 8)
    for data, want in zip(packets, expected["packets"], strict=True):
        rec = packet_to_record(decode_packet(data), record_id=ids.next(),
                               receive_time_us=1_800_000_000_000_000, context=CONTEXT)
        values = col(build_row(rec, kafka_partition=0, kafka_offset=0))
        assert values["src_ip"] == want["src_ip"]
        assert values["capture_id"] == want["capture_id"]
        wanted_sip = want.get("sip")
        if wanted_sip:
            assert values["call_id"] == wanted_sip["call_id"]
            assert values["sid"] == wanted_sip["call_id"]
            assert values["method"] == wanted_sip["method"]
            assert values["status"] == wanted_sip["status"]
            cseq = f"{values['cseq_num']} {values['cseq_method']}"
            assert cseq == wanted_sip["cseq"]
            assert values["parse_error"] is None
        else:
            assert values["call_id"] is None
            assert values["sid"] == (want.get("correlation_id") or "")


def test_kamailio_vectors_route_to_the_expected_tables() -> None:
    packets, _ = load_vectors("kamailio_hep3_udp")
    ids = RecordIdGenerator(b"\x00" * 8)
    tables: dict[str, int] = {}
    for data in packets:
        rec = packet_to_record(decode_packet(data), record_id=ids.next(),
                               receive_time_us=1, context=CONTEXT)
        table = build_row(rec, kafka_partition=0, kafka_offset=0).table
        tables[table] = tables.get(table, 0) + 1
    assert tables == {"hep_proto_1_call": 130, "hep_proto_1_registration": 20,
                      "hep_proto_1_default": 20}


@settings(max_examples=300, deadline=None)
@given(
    payload=st.one_of(
        st.binary(max_size=400),
        st.builds(lambda a, b: request("INVITE")[:a] + b, st.integers(0, 200),
                  st.binary(max_size=50)),
    ),
    proto=st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),
    correlation=st.one_of(st.none(), st.text(max_size=20)),
)
def test_build_row_never_raises(payload: bytes, proto: int | None,
                                correlation: str | None) -> None:
    row = row_of(payload, proto_type=proto, correlation_id=correlation)
    values = col(row)
    assert row.table.startswith("hep_proto_")
    json.loads(values["protocol_header"])
    json.loads(values["data_header"])
    for value in row.values:
        if isinstance(value, str):
            assert "\x00" not in value
    restored = values["raw_bytes"] if values["raw_bytes"] is not None else values["raw"].encode()
    assert restored == payload


@pytest.mark.parametrize(
    "raw_id", [b"\x02" * 16, bytearray(b"\x02" * 16), memoryview(b"\x02" * 16)]
)
def test_record_id_is_a_uuid_whatever_bytes_type(raw_id: Any) -> None:
    row = build_row(record(sip("OPTIONS sip:x@y SIP/2.0", "OPTIONS"), record_id=raw_id),
                    kafka_partition=0, kafka_offset=0)
    value = row.value("record_id")
    assert isinstance(value, uuid.UUID)
    assert value == uuid.UUID(bytes=b"\x02" * 16)
    assert str(value) == str(uuid.UUID(bytes=b"\x02" * 16))


@pytest.mark.parametrize("micros", [0, 1, 999_999, 1_700_000_000_999_999, -1, 2**53 + 1])
def test_timestamps_are_exact(micros: int) -> None:
    row = build_row(record(b"x", proto_type=5, capture_time=micros, receive_time=micros),
                    kafka_partition=0, kafka_offset=0)
    want = datetime(1970, 1, 1, tzinfo=UTC) + (micros * (datetime.min - datetime.min).resolution)
    assert row.value("create_date") == want
    assert row.value("receive_time") == want


def test_hepv2_sip_rows_say_hep_type_1_like_their_protocol_header() -> None:
    packets, _ = load_vectors("kamailio_hep2_udp")
    packet = decode_packet(packets[0])
    assert packet.proto_type is None  # HEPv2 has no payload type field
    record = packet_to_record(packet, record_id=b"\x05" * 16, receive_time_us=1,
                              context=ReceiveContext("udp", "127.0.0.1", 9, "r"))
    row = build_row(record, kafka_partition=0, kafka_offset=0)
    assert row.value("hep_type") == 1
    assert json.loads(row.value("protocol_header"))["payloadType"] == 1


def test_routing_names_a_bounded_set_of_tables() -> None:
    # Whatever type a sender puts in chunk 0x000b, the row goes to one of a fixed set.
    tables = {table_for(t) for t in range(-1, 70_000)}
    assert tables <= CAPTURE_TABLES - {DUPLICATES_TABLE}
    assert len(CAPTURE_TABLES) == 31  # 30 routed to, and the duplicates kept aside
    assert {table_for(t) for t in PROTO_TYPE_NAMES if t != 1} == set(TYPE_TABLES.values())


def test_index_key_bounds_long_values_and_keeps_short_ones() -> None:
    assert index_key("abc@h") == "abc@h"
    exact = "é" * 256
    assert index_key(exact) == exact
    long = "é" * 257
    key = index_key(long)
    assert key == "é" * 256
    assert len(key.encode()) <= 1024  # far below a btree entry's 2704 bytes
    assert index_key(key) == key  # the key of a key is itself
    assert index_key("\U0001f600" * 100_000) == "\U0001f600" * 256


def test_long_call_id_keeps_its_full_value_and_a_bounded_sid() -> None:
    call_id = "c" * 3_000 + "@h"
    values = col(row_of(sip("INVITE sip:bob@b SIP/2.0", "INVITE", call_id=call_id)))
    assert values["call_id"] == call_id
    assert values["sid"] == index_key(call_id)
    assert json.loads(values["data_header"])["callid"] == call_id


def test_long_correlation_id_of_non_sip_gets_a_bounded_sid() -> None:
    correlation = "r" * 5_000
    values = col(row_of(b"{}", proto_type=5, correlation_id=correlation))
    assert values["correlation_id"] == correlation
    assert values["sid"] == index_key(correlation)
