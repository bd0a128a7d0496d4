"""The compiled consumer functions give exactly what the pure reference gives.

`_speedups.build_rows` against `pipeline.storage.batch.build_rows` (same rows: table,
values and binary COPY tuple; same failures) and `_speedups.copy_tuple` against
`pipeline.storage.wire.copy_tuple` (same bytes, or both refuse), over the HEP vectors,
the hostile corpus, generated records and SIP messages, and mutated Avro values.
Skipped (with the reason) when the extension is not built.
"""

from __future__ import annotations

import ipaddress
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.hep import decode_packet
from pipeline.hep.errors import HepDecodeError
from pipeline.records import ReceiveContext, load_codec, packet_to_record
from pipeline.storage import batch, wire
from pipeline.storage.rows import COLUMNS, build_row
from tests.conftest import VECTOR_SETS, load_vectors
from tests.hostile import HostileCorpus
from tests.implementations import NOT_BUILT
from tests.unit.test_rows import record

try:
    from pipeline import _speedups
except ImportError:  # pragma: no cover - the extension is optional
    _speedups = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(_speedups is None, reason=NOT_BUILT)

CODEC = load_codec()
CONTEXT = ReceiveContext("udp", "127.0.0.1", 9060, "r-1")
FORMATS = [None, wire.WireFormat(), wire.WireFormat(False, False), wire.WireFormat(True, False)]


def assert_same_rows(values: list[bytes | None], *, store_auth_key: bool = False) -> int:
    """Compiled and pure rows are the same: table, COPY tuple, facts, values (a row in
    wire form builds its values with the pure builder when asked, so its COPY tuple
    and facts are what the compiled code made). Returns how many compiled rows were in
    wire form."""
    offsets = [1000 + i for i in range(len(values))]
    in_wire_form = 0
    for wire_format in FORMATS:
        pure = batch.build_rows(values, 7, offsets, codec=CODEC, store_auth_key=store_auth_key,
                                wire_format=wire_format)
        compiled = _speedups.build_rows(values, 7, offsets, codec=CODEC,
                                        store_auth_key=store_auth_key,
                                        wire_format=wire_format)
        assert compiled[1] == pure[1]
        assert len(compiled[0]) == len(pure[0])
        for mine, theirs in zip(compiled[0], pure[0], strict=True):
            assert mine.table == theirs.table
            assert mine.wire == theirs.wire
            if mine._values is None:
                in_wire_form += 1
                assert wire_format is not None
                facts = mine.facts
                assert mine._values is None  # the facts were made with the row
            else:
                facts = mine.facts
            assert facts == theirs.facts
            assert [type(v) for v in facts] == [type(v) for v in theirs.facts]
            assert mine.values == theirs.values
            assert [type(v) for v in mine.values] == [type(v) for v in theirs.values]
    return in_wire_form


def vector_values() -> list[bytes]:
    values = []
    for name in VECTOR_SETS:
        packets, _ = load_vectors(name)
        for i, data in enumerate(packets):
            try:
                packet = decode_packet(data)
            except HepDecodeError:
                continue
            rec = packet_to_record(packet, record_id=i.to_bytes(16, "big"),
                                   receive_time_us=1_700_000_000_000_000 + i, context=CONTEXT)
            values.append(CODEC.encode(rec))
    return values


VECTOR_VALUES = vector_values()


def test_vectors_give_identical_rows() -> None:
    assert len(VECTOR_VALUES) > 20
    assert_same_rows(VECTOR_VALUES)
    assert_same_rows(VECTOR_VALUES, store_auth_key=True)


def test_distinct_call_load_gives_identical_rows() -> None:
    """bench/load/hep_corpus.bin: the packets of the distinct-Call-ID load (each a u16
    little-endian length, then the HEP bytes)."""
    corpus = (Path(__file__).resolve().parents[2] / "bench" / "load" / "hep_corpus.bin")
    data, packets, offset = corpus.read_bytes(), [], 0
    while offset + 2 <= len(data):
        size = int.from_bytes(data[offset:offset + 2], "little")
        packets.append(data[offset + 2:offset + 2 + size])
        offset += 2 + size
    values = []
    for i, data in enumerate(packets):
        rec = packet_to_record(decode_packet(data), record_id=i.to_bytes(16, "big"),
                               receive_time_us=1_800_000_000_000_000, context=CONTEXT)
        values.append(CODEC.encode(rec))
    assert len(values) >= 1000
    # Every row of the load takes the compiled path, in wire form, for each format.
    assert assert_same_rows(values) == 3 * len(values)


def test_hostile_corpus_gives_identical_rows() -> None:
    corpus = HostileCorpus(seed=11, tag="rows", ts_sec=1_700_000_000, hep2_packets=[])
    corpus.mutations.pop("hep2_mutated")
    values = []
    for i, item in enumerate(corpus.stream(600, valid_share=0.3)):
        try:
            packet = decode_packet(item.data)
        except HepDecodeError:
            continue
        rec = packet_to_record(packet, record_id=i.to_bytes(16, "big"), receive_time_us=5,
                               context=ReceiveContext("tcp", "::1", 1, "r", True))
        values.append(CODEC.encode(rec))
    assert len(values) > 100
    assert_same_rows(values)
    assert_same_rows(values, store_auth_key=True)


# -- generated records ------------------------------------------------------------

_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["", "a\x00b", 'q"uote', "back\\slash", "é", "\x7f", "\t", "日本"]
)
_WORD = st.text(alphabet="abcXYZ019.-_+é\"\\\x00 ", min_size=0, max_size=8)


@st.composite
def sip_payloads(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        method = draw(st.sampled_from(["INVITE", "ACK", "BYE", "REGISTER", "OPTIONS", "X-Y"]))
        start = f"{method} sip:{draw(_WORD)}@{draw(_WORD)}h SIP/2.0"
    else:
        code = draw(st.integers(100, 699))
        method = draw(st.sampled_from(["INVITE", "REGISTER", "BYE", "NOTIFY"]))
        start = f"SIP/2.0 {code} {draw(_WORD)}"
    headers = [
        f"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{draw(_WORD)}",
        f'From: "{draw(_WORD)}" <sip:{draw(_WORD)}@a.example>;tag={draw(_WORD)}',
        f"t: <sip:{draw(_WORD)}@b.example>" + (f";tag={draw(_WORD)}" if draw(st.booleans())
                                              else ""),
        f"i: {draw(_WORD)}c{draw(st.integers(0, 10**6))}@x",
        f"CSeq: {draw(st.integers(0, 2**70))} {method}",
    ]
    optional = [
        f"Contact: <sip:{draw(_WORD)}@{draw(_WORD)}h:5062>;expires={draw(st.integers(0, 10**12))}",
        f"Expires: {draw(st.integers(0, 10**11))}",
        f"User-Agent: {draw(_TEXT)}",
        f"P-Asserted-Identity: <sip:{draw(_WORD)}@p>",
        "Content-Type: application/sdp",
        f"Reason: {draw(_TEXT)}",
    ]
    headers += draw(st.lists(st.sampled_from(optional), max_size=6))
    text = start + "\r\n" + "\r\n".join(draw(st.permutations(headers))) + "\r\n\r\n"
    text += draw(st.sampled_from(["", "v=0\r\n", "bödy"]))
    data = text.encode("utf-8", "surrogatepass")
    tail = draw(st.sampled_from([b"", b"\x00", b"\xff\xfe", b"\r\n"]))
    return data + tail


_ADDRESS = st.one_of(
    st.none(),
    st.ip_addresses().map(str),
    st.sampled_from(["not-an-ip", "10.0.0.1/24", "", "::ffff:1.2.3.4"]),
)
_INT = st.one_of(st.none(), st.integers(-(2**40), 2**40), st.integers(-5, 70_000))


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    payload = draw(st.one_of(sip_payloads(), st.binary(max_size=60),
                             st.sampled_from([b"", b'{"rtcp":1}', b"INVITE"])))
    return record(
        payload,
        record_id=draw(st.binary(min_size=16, max_size=16)),
        hep_version=draw(st.sampled_from([1, 2, 3, 40_000, -1, 2**62])),
        ip_family=draw(_INT), ip_proto=draw(_INT),
        src_ip=draw(_ADDRESS), dst_ip=draw(_ADDRESS),
        src_port=draw(_INT), dst_port=draw(_INT), vlan=draw(_INT),
        capture_time=draw(st.one_of(
            st.integers(-(2**63), 2**63 - 1),
            st.integers(-62135596800000000, 253402300799999999),
            st.just(1_700_000_000_123_456),
        )),
        receive_time=draw(st.one_of(st.just(1_700_000_001_000_000),
                                    st.integers(-(2**62), 2**62))),
        proto_type=draw(st.one_of(st.none(), st.sampled_from([1, 1, 5, 100, 34, 250]),
                                  st.integers(-(2**40), 2**40))),
        capture_id=draw(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))),
        auth_key=draw(st.one_of(st.none(), _TEXT)),
        correlation_id=draw(st.one_of(st.none(), _TEXT)),
        node_name=draw(st.one_of(st.none(), _TEXT)),
        transport=draw(st.sampled_from(["udp", "tcp", "", "t\x00ls", "é"])),
        receiver_id=draw(_TEXT),
        extra_chunks=draw(st.lists(
            st.fixed_dictionaries({"vendor": st.integers(0, 9), "type": st.integers(0, 99),
                                   "value": st.binary(max_size=5)}), max_size=3)),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records(), min_size=1, max_size=6), st.booleans())
def test_generated_records_give_identical_rows(items: list[dict[str, Any]],
                                               store_auth_key: bool) -> None:
    assert_same_rows([CODEC.encode(item) for item in items], store_auth_key=store_auth_key)


@settings(max_examples=300, deadline=None)
@given(records(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                           max_size=4),
       st.integers(0, 10_000))
def test_mutated_values_give_identical_rows_and_failures(
    item: dict[str, Any], flips: list[tuple[int, int]], cut: int
) -> None:
    value = bytearray(CODEC.encode(item))
    for position, byte in flips:
        value[position % len(value)] = byte
    mutated = bytes(value)
    assert_same_rows([mutated, mutated[:cut], mutated + b"\x00", None, b"", b"\xc3\x01"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records(), min_size=1, max_size=4))
def test_configured_headers_give_identical_rows_and_counts(
    items: list[dict[str, Any]],
) -> None:
    """With custom or A-leg headers configured, build_rows gives build_row's rows
    (custom_headers, data_header keys, HOMER correlation id) and counts alike."""
    from pipeline.storage.headers import header_extraction

    values = [CODEC.encode(item) for item in items]
    offsets = list(range(len(values)))
    results = []
    for build in (batch.build_rows, _speedups.build_rows):
        headers = header_extraction(("User-Agent", "X-Other"), ("i,(.*)@", "From"))
        rows, failures = build(values, 1, offsets, codec=CODEC, headers=headers,
                               wire_format=wire.WireFormat())
        results.append(([(r.table, r.values, r.wire) for r in rows], failures,
                        dict(headers.counts)))
    assert results[0] == results[1]


# -- the tuple encoder alone --------------------------------------------------------

_VALUE = st.one_of(
    st.none(), st.text(max_size=5), st.integers(-(2**70), 2**70), st.binary(max_size=4),
    st.just(uuid.UUID(int=7)), st.just(ipaddress.ip_address("10.1.2.3")), st.floats(),
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-3))])),
    st.datetimes(), st.just(bytearray(b"ab")), st.just(memoryview(b"cd")),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_VALUE, min_size=len(COLUMNS), max_size=len(COLUMNS)),
       st.sampled_from(FORMATS))
def test_copy_tuple_gives_identical_bytes_or_both_refuse(
    values: list[Any], wire_format: wire.WireFormat | None
) -> None:
    try:
        expected: bytes | type[Exception] = wire.copy_tuple(values, wire_format)
    except (ValueError, TypeError, OverflowError) as exc:
        expected = type(exc)
    try:
        got: bytes | type[Exception] = _speedups.copy_tuple(values, wire_format)
    except (ValueError, TypeError, OverflowError) as exc:
        got = type(exc)
    if isinstance(expected, bytes) or isinstance(got, bytes):
        assert got == expected
    # Else both refused (the sink's path rejects the row either way).


def test_copy_tuple_of_a_real_row_is_postgres_binary() -> None:
    """Field by field, the tuple holds what PostgreSQL's binary receive functions read."""
    rec = record(b"INVITE sip:b@h SIP/2.0\r\nCall-ID: c@h\r\nCSeq: 1 INVITE\r\n\r\n",
                 capture_time=946_684_800_000_001)
    row = build_row(rec, kafka_partition=1, kafka_offset=2)
    data = _speedups.copy_tuple(row.values)
    assert data == wire.copy_tuple(row.values)
    assert int.from_bytes(data[:2], "big") == len(COLUMNS)
    fields, position = [], 2
    for _ in COLUMNS:
        size = int.from_bytes(data[position:position + 4], "big", signed=True)
        position += 4
        fields.append(None if size < 0 else data[position:position + size])
        position += max(size, 0)
    assert position == len(data)
    by_name = dict(zip(COLUMNS, fields, strict=True))
    assert by_name["create_date"] == (1).to_bytes(8, "big")  # 1 us after 2000-01-01
    assert by_name["src_ip"] == bytes((2, 32, 0, 4, 10, 0, 0, 1))
    assert by_name["record_id"] == b"\x01" * 16
    assert by_name["hep_version"] == (3).to_bytes(2, "big")
    assert by_name["kafka_offset"] == (2).to_bytes(8, "big")
    assert by_name["protocol_header"][:2] == b'\x01{'
    assert by_name["raw_bytes"] is None and by_name["parse_error"] is None
    assert by_name["call_id"] == b"c@h"
    json_form = wire.copy_tuple(row.values, wire.WireFormat(False, False))
    assert len(json_form) == len(data) - 2


def test_datetimes_before_the_epochs_and_far_ahead() -> None:
    for when in (datetime(1, 1, 1, tzinfo=UTC), datetime(1969, 12, 31, 23, 59, 59, 1, UTC),
                 datetime(9999, 12, 31, 23, 59, 59, 999999, UTC), datetime(2000, 1, 1)):
        values: list[Any] = [None] * len(COLUMNS)
        values[COLUMNS.index("create_date")] = when
        assert _speedups.copy_tuple(values) == wire.copy_tuple(values)


# -- the SIP summary ----------------------------------------------------------------

_LINE = st.one_of(
    st.sampled_from([
        "Call-ID: a@b", "i:x@y", "CALL-id :  spaced  ", "f: <sip:u@d>;tag=1", "From:",
        "To: \"T\" <sip:t@d>;tag=2", "v: SIP/2.0/TCP h;branch=z9", "Via: SIP / 2.0 / UDP h",
        "m: <sip:c@h:5>;expires=60", "Contact: *", "CSeq: 1 INVITE", "cseq:2 BYE",
        "CSeq: x INVITE", "Expires: 30", "Expires: -1", "User-Agent: ua", "Server: srv",
        "c: application/sdp", "Reason: Q.850;cause=16", "P-Asserted-Identity: <sip:p@q>",
        "no colon here", ": empty name", " folded continuation", "\tmore", "\r", "",
        "X-Other: 1", "k: 100rel", " Call-ID: not-a-header", "Call-ID\r: odd",
        "From: sip:a@b;tag=x", "To: <tel:+123>;tag=9", 'From: "A\\"B" <sip:x@y>;tag=1',
        "f: <sip:u:pw@h:5060;transport=tcp?x=y>;TAG=up", "t: <sip:[::1]:5060>;tag=6",
        "From: <sip:a@b:c:d>", "To: <>;tag=e", 'From: "unterminated <sip:a@b>',
        "v: SIP/2.0/UDP h;BRANCH=x", "Via: SIP/2.0/UDP h , SIP/2.0/TCP g;branch=2",
        "Via: SIP/2.0/UDP h;branch= ;x", "Via: SIP/2.0/UDP", "From: <sip:@h>;tag=",
        "To: <sips:u@h>;x=1;tag= t ;y", "From: A <SIP:u@h>;tag=3", "t: <sip:u@h?a=b:c>",
        "From: <sip:u@h>", "To: x <sip:u@h", "Via: SIP/2.0/UDP\th:1;rport;branch=z;x",
        "From:\t<sip:u@h>\t;\ttag=w", "Via: SIP /2.0/UDP h;branch=q",
        "Contact: <sip:a@b>;expires=30, <sip:c@d>", "m: <sip:u@h>;Expires=5",
        'Contact: "Q" <sip:u@h:1>;expires=x1', "Contact: sip:u@h;expires=3",
        "Contact: <sip:u@h>, x;expires=9", "m: a, <sip:u@h>;expires=1",
        "Contact: <sip:u@h>;expires=12345678901", "Contact: <sip:u@h>;expires=,7",
        "CSeq: 12345678901 INVITE", "CSeq:  7\tACK  ", "CSeq: 1 INV(TE", "CSeq: 1",
        "CSeq: 1 INVITE x", "CSeq: -1 BYE", "CSeq: 0007 BYE", "CSeq:", "Call-ID:",
    ]),
    st.text(alphabet="abcCI-: \t\r;=<>@\"", max_size=20),
)


@st.composite
def sip_heads(draw: st.DrawFn) -> bytes:
    start = draw(st.sampled_from([
        "INVITE sip:b@h SIP/2.0", "SIP/2.0 200 OK", "SIP/2.0 180", "BAD LINE",
        "REGISTER sip:h SIP/2.0\r", "SIP/2.0 099 x", "", "  ", "sip/2.0 200 ok",
        "SIP/2.0 486 Busy Here \t\r", "SIP/2.0  200\tOK", " INVITE sip:b@h SIP/2.0",
        "INVITE sip:b@h sip/2.0", "INVITE  sip:b@h\tSIP/2.0 \r", "INV(TE sip:b@h SIP/2.0",
        "INVITE b@h SIP/2.0", "INVITE sip:b@h SIP/2.0 extra", "SIP/2.0 2000 x",
        "SIP/2.0 20a x", "SIP/2.1 200 OK", "Sip/2.0 200 OK", "INVITE sip:b@h",
        "SIP/2.0 200 O\rK\r", "OPTIONS tel:+1 SIP/2.0",
    ]))
    lines = draw(st.lists(_LINE, max_size=14))
    end = draw(st.sampled_from(["\r\n\r\n", "\n\n", "\r\n", "", "\r\n\r\nbody\r\n\r\n"]))
    lead = draw(st.sampled_from(["", "\r\n", "\n\r\n"]))
    data = (lead + "\r\n".join([start, *lines]) + end).encode()
    return data + draw(st.sampled_from([b"", b"\xc3\xa9", b"\xff"]))


def _summary_or_error(function: Any, payload: bytes) -> Any:
    from pipeline.sip import SipParseError

    try:
        return function(payload)
    except SipParseError as exc:
        return ("error", exc.reason, exc.detail)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(sip_heads(), sip_payloads(), st.binary(max_size=40)))
def test_sip_summary_is_the_parsers(payload: bytes) -> None:
    from pipeline.sip import summarise_sip

    assert _summary_or_error(_speedups.summarise_sip, payload) == _summary_or_error(
        summarise_sip, payload
    )


# -- the fused builder's self-check ----------------------------------------------------


def test_the_fused_row_builder_is_active() -> None:
    """Values of the newest schema are read and built in C. If this fails after a
    change to build_row or the schema, _speedups_rows.pxi needs the same change (the
    reason says which sample and column differ); until then the pure path runs."""
    assert _speedups.fused_row_builder_problem(CODEC) is None


def test_the_fused_row_builder_turns_itself_off_when_build_row_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from pipeline.storage import rows

    monkeypatch.setattr(rows, "_dumps", lambda obj: json.dumps(obj, separators=(",", ":")))
    codec = load_codec()  # a codec the self-check has not seen
    problem = _speedups.fused_row_builder_problem(codec)
    assert problem is not None and problem.startswith("sample 2: column 3")
    offsets = list(range(len(VECTOR_VALUES)))
    pure = batch.build_rows(VECTOR_VALUES, 0, offsets, codec=codec)
    compiled = _speedups.build_rows(VECTOR_VALUES, 0, offsets, codec=codec)
    assert [(r.table, r.values) for r in compiled[0]] == [(r.table, r.values) for r in pure[0]]


def test_dedup_filters_and_kpis_decide_alike_on_rows_in_wire_form() -> None:
    """The consumer's features read rows' facts: rows in wire form (compiled) and the
    pure rows give the same duplicates, filter decisions, censored values and KPIs."""
    from pipeline.consumer.dedup import DedupSettings, DuplicateFilter
    from pipeline.consumer.filters import CaptureFilter, Screen
    from pipeline.consumer.kpi_rows import observe_rows
    from pipeline.sip.kpi import SipKpi

    # Each message twice: the second copies are duplicates within any window.
    values: list[bytes | None] = [v for v in VECTOR_VALUES for _ in range(2)]
    offsets = list(range(len(values)))
    outcomes = []
    for build in (batch.build_rows, _speedups.build_rows):
        rows, failures = build(values, 7, offsets, codec=CODEC, wire_format=wire.WireFormat())
        assert not failures
        dedup = DuplicateFilter(DedupSettings(window_ms=500, match_capture_id=True))
        duplicates = dedup.duplicates(7, rows, offsets)
        kpis = observe_rows(SipKpi(), rows)
        screen = Screen(CaptureFilter(
            discard_methods=frozenset({"OPTIONS"}), censor_methods=frozenset({"INVITE"}),
            discard_sources=(ipaddress.ip_network("192.0.2.0/24"),),
        )).screen(rows)
        outcomes.append((duplicates, kpis, screen, [(r.table, r.wire, r.values) for r in rows]))
    assert outcomes[0][0]  # the copies were found
    assert outcomes[0][2].censored  # and some rows censored (their wire dropped)
    assert outcomes[0] == outcomes[1]
