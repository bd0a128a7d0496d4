"""What homer-app reads from a row: captureId, correlation ids, custom headers, JSON types.

homer-app 1.5.20 merges protocol_header, data_header and a row's columns into one object
and type-asserts (data/service/search.go); heplify-server derives correlation_id from the
HEP chunk, else its AlegIDs headers, else the Call-ID (decoder/sip.go). Pure, no database.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.sip import summarise_sip, summarise_sip_headers
from pipeline.storage import COLUMNS, CaptureRow, build_row
from pipeline.storage.headers import (
    RESERVED_KEYS,
    HeaderExtraction,
    header_extraction,
    parse_header_rule,
)
from tests.unit.test_rows import record, request, sip


def row(payload: bytes, headers: HeaderExtraction | None = None, **overrides: Any) -> CaptureRow:
    return build_row(record(payload, **overrides), kafka_partition=0, kafka_offset=1,
                     headers=headers)


def col(built: CaptureRow) -> dict[str, Any]:
    return dict(zip(COLUMNS, built.values, strict=True))


def protocol_header(built: CaptureRow) -> dict[str, Any]:
    return json.loads(built.value("protocol_header"))  # type: ignore[no-any-return]


def data_header(built: CaptureRow) -> dict[str, Any]:
    return json.loads(built.value("data_header"))  # type: ignore[no-any-return]


def invite(extra: str, call_id: str = "b-leg@h") -> bytes:
    return sip("INVITE sip:bob@b.example SIP/2.0", "INVITE", call_id=call_id, extra=extra)


# -- captureId --------------------------------------------------------------------------


@pytest.mark.parametrize("proto", [1, 5, 100, None, 250])
def test_capture_id_is_zero_without_one(proto: int | None) -> None:
    payload = request("INVITE") if proto in (1, None) else b"x"
    built = row(payload, proto_type=proto, capture_id=None)
    assert protocol_header(built)["captureId"] == "0"
    assert built.value("capture_id") is None  # the typed column stays as it was


def test_capture_id_is_a_decimal_string() -> None:
    assert protocol_header(row(b"x", proto_type=100, capture_id=4_294_967_295))[
        "captureId"] == "4294967295"


def test_node_of_non_sip_rows_is_the_node_name_else_the_capture_id() -> None:
    assert data_header(row(b"x", proto_type=5, node_name="edge"))["node"] == "edge"
    assert data_header(row(b"x", proto_type=5, capture_id=7))["node"] == "7"
    assert data_header(row(b"x", proto_type=5, capture_id=None))["node"] == "0"


# -- correlation ids --------------------------------------------------------------------


def test_sip_correlation_is_the_call_id_without_chunk_or_a_leg_header() -> None:
    built = row(invite("X-CID: a-leg@h\r\n"))
    assert protocol_header(built)["correlation_id"] == "b-leg@h"
    assert built.value("correlation_id") is None


def test_the_hep_chunk_wins() -> None:
    headers = header_extraction(a_leg=("X-CID",))
    built = row(invite("X-CID: a-leg@h\r\n"), headers, correlation_id="chunk")
    assert protocol_header(built)["correlation_id"] == "chunk"
    assert built.value("correlation_id") == "chunk"


def test_a_leg_header_gives_the_correlation_case_insensitively() -> None:
    headers = header_extraction(a_leg=("x-cid",))
    built = row(invite("X-Cid: a-leg@h\r\n"), headers)
    assert protocol_header(built)["correlation_id"] == "a-leg@h"
    assert built.value("correlation_id") is None  # the column keeps the chunk alone
    assert built.value("sid") == "b-leg@h"
    assert headers.counts == {("a_leg", "x-cid", "extracted"): 1}


def test_a_leg_regex_takes_its_first_group_and_a_miss_falls_through() -> None:
    headers = header_extraction(a_leg=(
        'P-Charging-Vector,icid-value="?([^;"]+)', "X-CID,^(\\d+)$", "X-Other",
    ))
    extra = 'P-Charging-Vector: icid-value="icid-1";orig-ioi=x\r\n'
    assert protocol_header(row(invite(extra), headers))["correlation_id"] == "icid-1"
    # X-CID does not match its regex: the next configured header is used.
    extra = "X-CID: abc\r\nX-Other: other@h\r\n"
    assert protocol_header(row(invite(extra), headers))["correlation_id"] == "other@h"
    # Nothing usable: the Call-ID.
    assert protocol_header(row(invite("X-CID: abc\r\n"), headers))[
        "correlation_id"] == "b-leg@h"
    assert headers.counts[("a_leg", "X-CID", "regex_miss")] == 2
    assert headers.counts[("a_leg", "P-Charging-Vector", "extracted")] == 1


def test_compact_form_names_the_full_header() -> None:
    rule = parse_header_rule("i")
    assert rule.name == "call-id" and rule.key == "i"
    headers = header_extraction(custom=("Subject",))
    built = row(invite("s: hello\r\n"), headers)
    assert data_header(built)["Subject"] == "hello"


def test_non_sip_correlation_is_the_chunk_or_empty() -> None:
    headers = header_extraction(a_leg=("X-CID",))
    assert protocol_header(row(b"log", headers, proto_type=100, correlation_id="c@h"))[
        "correlation_id"] == "c@h"
    assert protocol_header(row(b"log", headers, proto_type=100))["correlation_id"] == ""


# -- custom headers ---------------------------------------------------------------------


def test_custom_headers_go_to_data_header_and_the_typed_column() -> None:
    headers = header_extraction(custom=("X-CID", "X-Tenant,^t-(\\w+)", "X-Absent"))
    built = row(invite("x-cid: a-leg@h\r\nX-Tenant: t-blue\r\n"), headers)
    header = data_header(built)
    assert header["X-CID"] == "a-leg@h" and header["X-Tenant"] == "blue"
    assert "X-Absent" not in header
    assert header["callid"] == "b-leg@h"  # the template keys are still there
    assert json.loads(built.value("custom_headers")) == {"X-CID": "a-leg@h", "X-Tenant": "blue"}
    assert headers.counts == {
        ("custom", "X-CID", "extracted"): 1, ("custom", "X-Tenant", "extracted"): 1,
    }


def test_no_custom_header_found_leaves_the_column_null() -> None:
    headers = header_extraction(custom=("X-CID",))
    built = row(invite(""), headers)
    assert built.value("custom_headers") is None
    assert "X-CID" not in data_header(built)
    assert row(b"x", headers, proto_type=5).value("custom_headers") is None


def test_custom_header_regex_miss_is_counted_not_stored() -> None:
    headers = header_extraction(custom=("X-CID,^(\\d+)$",))
    built = row(invite("X-CID: abc\r\n"), headers)
    assert "X-CID" not in data_header(built)
    assert headers.counts == {("custom", "X-CID", "regex_miss"): 1}


def test_nul_in_a_custom_header_never_reaches_jsonb() -> None:
    headers = header_extraction(custom=("X-CID",), a_leg=("X-CID",))
    built = row(invite("X-CID: a\x00b\r\n"), headers)
    assert built.value("raw_bytes") is not None
    assert json.loads(built.value("custom_headers")) == {"X-CID": "ab"}
    assert protocol_header(built)["correlation_id"] == "ab"
    assert "\\u0000" not in built.value("data_header")


@pytest.mark.parametrize("spec", ["", "X CID", "X-CID:x", ",abc", "X-CID,(", "X-CID,a)"])
def test_bad_rules_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match=r"X-CID|token|regex"):
        header_extraction(custom=(spec,))


@pytest.mark.parametrize("key", sorted(RESERVED_KEYS & {"callid", "srcIp", "node", "sid"}))
def test_custom_headers_cannot_take_a_homer_key(key: str) -> None:
    with pytest.raises(ValueError, match="homer-app"):
        header_extraction(custom=(key,))


def test_a_custom_header_is_configured_once() -> None:
    with pytest.raises(ValueError, match="twice"):
        header_extraction(custom=("X-CID", "x-cid"))


def test_summarise_sip_headers_agrees_with_summarise_sip() -> None:
    payload = invite("X-CID: a\r\nx-cid: second\r\ni: ignored\r\n")
    summary, found = summarise_sip_headers(payload, frozenset({"x-cid", "call-id", "nope"}))
    assert summary == summarise_sip(payload)
    assert found == {"x-cid": "a", "call-id": "b-leg@h"}


# -- JSON types homer-app asserts, for any record ---------------------------------------

HEADER_NAMES = st.sampled_from(["X-CID", "X-Tenant", "P-Charging-Vector", "Subject"])


@settings(max_examples=300, deadline=None)
@given(
    payload=st.one_of(
        st.binary(max_size=200),
        st.builds(invite, st.text(max_size=40).map(lambda t: f"X-CID: {t}\r\n")),
    ),
    proto=st.sampled_from([None, 1, 5, 35, 100, 999]),
    capture_id=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    correlation=st.one_of(st.none(), st.text(max_size=10)),
    src_ip=st.one_of(st.none(), st.just("10.0.0.1"), st.just("2001:db8::1")),
    custom=st.lists(HEADER_NAMES, unique=True, max_size=3),
)
def test_homer_json_types(payload: bytes, proto: int | None, capture_id: int | None,
                          correlation: str | None, src_ip: str | None,
                          custom: list[str]) -> None:
    headers = header_extraction(custom=tuple(custom), a_leg=("X-CID",))
    built = row(payload, headers, proto_type=proto, capture_id=capture_id,
                correlation_id=correlation, src_ip=src_ip, src_port=None)
    proto_h, data_h = protocol_header(built), data_header(built)
    for key in ("srcIp", "dstIp", "correlation_id", "captureId"):
        assert type(proto_h[key]) is str
    for key in ("srcPort", "dstPort", "timeSeconds", "timeUseconds", "payloadType"):
        assert type(proto_h[key]) is int
    assert proto_h["captureId"].isdecimal()
    assert not set(proto_h) & set(data_h), "homer-app would turn these keys into arrays"
    assert type(data_h.get("method", "")) is str
    if proto in (None, 1) and built.value("parse_error") is None:
        # The chunk, an A-leg header or the Call-ID: never empty for SIP.
        assert proto_h["correlation_id"]


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(
        st.tuples(st.sampled_from(["X-CID", "x-cid", "X-Tenant", "i", "s", "Subject"]),
                  st.text(alphabet="abc@.;= -", max_size=12)),
        max_size=6,
    ),
    wanted=st.sets(st.sampled_from(["x-cid", "x-tenant", "call-id", "subject", "nope"])),
)
def test_found_headers_are_parse_sips_first_values(lines: list[tuple[str, str]],
                                                   wanted: set[str]) -> None:
    from pipeline.sip import SipParseError, parse_sip

    payload = invite("".join(f"{name}: {value}\r\n" for name, value in lines))
    try:
        message = parse_sip(payload)
    except SipParseError:
        return
    _, found = summarise_sip_headers(payload, frozenset(wanted))
    expected = {name: message.header(name) for name in wanted}
    assert found == {name: value for name, value in expected.items() if value is not None}
