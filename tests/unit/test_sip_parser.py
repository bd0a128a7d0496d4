"""parse_sip: the RFC 3261 rules the pipeline relies on, property tests, real captures."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.sip import (
    COMPACT_HEADERS,
    REASONS,
    SipMessage,
    SipParseError,
    SipSummary,
    parse_sip,
    scan_call_id,
    summarise_sip,
)

VECTORS = Path(__file__).parent.parent / "data" / "hep-vectors"
VECTOR_SETS = ("kamailio_hep3_udp", "kamailio_hep2_udp", "kamailio_hep3_tcp", "hepjs_hep3_udp")


def sip(*lines: str, eol: str = "\r\n", body: str = "") -> bytes:
    """A message from its start line and header lines, headers ended by an empty line."""
    return (eol.join(lines) + eol + eol + body).encode()


INVITE_LINES = (
    "INVITE sip:bob@biloxi.example.com SIP/2.0",
    "Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds",
    "Max-Forwards: 70",
    'To: "Bob" <sip:bob@biloxi.example.com>',
    "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
    "CSeq: 314159 INVITE",
    "Contact: <sip:alice@pc33.atlanta.example.com:5070;transport=udp>",
    "User-Agent: softphone/1.0",
    "Content-Type: application/sdp",
    "Content-Length: 4",
)
INVITE = sip(*INVITE_LINES, body="v=0\r")

RESPONSE_LINES = (
    "SIP/2.0 180 Ringing",
    "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
    "To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf",
    "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
    "Call-ID: a84b4c76e66710",
    "CSeq: 314159 INVITE",
    "Server: pbx 2.1",
    "Content-Length: 0",
)


def minimal(*headers: str, start: str = "OPTIONS sip:x@y SIP/2.0") -> bytes:
    return sip(start, "Call-ID: c1", "CSeq: 1 OPTIONS", *headers)


# (id, payload, expected field values)
CASES: list[tuple[str, bytes, dict[str, Any]]] = [
    (
        "invite",
        INVITE,
        {
            "is_request": True,
            "method": "INVITE",
            "status_code": None,
            "reason": None,
            "request_uri": "sip:bob@biloxi.example.com",
            "ruri_user": "bob",
            "ruri_domain": "biloxi.example.com",
            "call_id": "a84b4c76e66710@pc33.atlanta.example.com",
            "cseq_number": 314159,
            "cseq_method": "INVITE",
            "effective_method": "INVITE",
            "cseq": "314159 INVITE",
            "from_display": "Alice",
            "from_user": "alice",
            "from_domain": "atlanta.example.com",
            "from_tag": "1928301774",
            "to_display": "Bob",
            "to_user": "bob",
            "to_domain": "biloxi.example.com",
            "to_tag": None,
            "via_transport": "UDP",
            "via_host": "pc33.atlanta.example.com",
            "via_port": 5060,
            "via_branch": "z9hG4bK776asdhds",
            "contact_user": "alice",
            "contact_host": "pc33.atlanta.example.com",
            "contact_port": 5070,
            "expires": None,
            "user_agent": "softphone/1.0",
            "content_type": "application/sdp",
            "content_length": 4,
            "reason_header": None,
            "p_asserted_identity_user": None,
        },
    ),
    (
        "response takes its method from CSeq",
        sip(*RESPONSE_LINES),
        {
            "is_request": False,
            "method": None,
            "status_code": 180,
            "reason": "Ringing",
            "request_uri": None,
            "ruri_user": None,
            "cseq_method": "INVITE",
            "effective_method": "INVITE",
            "call_id": "a84b4c76e66710",
            "to_tag": "a6c85cf",
            "to_display": "Bob",
            "via_port": None,
            "user_agent": "pbx 2.1",
            "content_length": 0,
        },
    ),
    (
        "response reason phrase with spaces",
        minimal(start="SIP/2.0 100 trying -- your call is important to us"),
        {"status_code": 100, "reason": "trying -- your call is important to us"},
    ),
    ("response with empty reason", minimal(start="SIP/2.0 200 "), {"reason": None}),
    ("response without reason", minimal(start="SIP/2.0 486"), {"status_code": 486}),
    ("version is case-insensitive", minimal(start="sip/2.0 200 OK"), {"status_code": 200}),
    (
        "compact header forms",
        sip(
            "INVITE sip:bob@b.example SIP/2.0",
            "v: SIP/2.0/TCP 10.0.0.1:5062;branch=z9hG4bKc",
            "f: <sip:alice@a.example>;tag=ft",
            "t: sip:bob@b.example",
            "i: compact-id",
            "CSeq: 7 INVITE",
            "m: <sip:alice@10.0.0.1:5062>",
            "l: 0",
            "c: application/sdp",
            "k: timer",
            "o: presence",
            "x: 1800",
        ),
        {
            "call_id": "compact-id",
            "from_user": "alice",
            "from_tag": "ft",
            "to_user": "bob",
            "via_transport": "TCP",
            "via_port": 5062,
            "contact_port": 5062,
            "content_length": 0,
            "content_type": "application/sdp",
            "headers": (
                ("via", "SIP/2.0/TCP 10.0.0.1:5062;branch=z9hG4bKc"),
                ("from", "<sip:alice@a.example>;tag=ft"),
                ("to", "sip:bob@b.example"),
                ("call-id", "compact-id"),
                ("cseq", "7 INVITE"),
                ("contact", "<sip:alice@10.0.0.1:5062>"),
                ("content-length", "0"),
                ("content-type", "application/sdp"),
                ("supported", "timer"),
                ("event", "presence"),
                ("session-expires", "1800"),
            ),
        },
    ),
    (
        "header names are case-insensitive; compact forms in upper case",
        sip("BYE sip:b@c SIP/2.0", "CALL-ID: upper", "cseq: 2 BYE", "I: later", "F: <sip:u@d>"),
        {"call_id": "upper", "from_user": "u", "method": "BYE"},
    ),
    (
        "whitespace around the colon",
        sip("BYE sip:b@c SIP/2.0", "Call-ID  \t:   spaced  ", "CSeq\t:\t2   BYE", "To :<sip:t@d>"),
        {"call_id": "spaced", "cseq_number": 2, "cseq_method": "BYE", "to_user": "t"},
    ),
    (
        "folded headers are unfolded",
        sip(
            "INVITE sip:b@c SIP/2.0",
            "Subject: I know you're there,",
            "   pick up the phone",
            "\tand talk to me!",
            "Call-ID: fold-1",
            "CSeq: 1",
            " INVITE",
        ),
        {
            "cseq_method": "INVITE",
            "headers": (
                ("subject", "I know you're there, pick up the phone and talk to me!"),
                ("call-id", "fold-1"),
                ("cseq", "1 INVITE"),
            ),
        },
    ),
    (
        "bare LF line endings",
        sip("ACK sip:b@c SIP/2.0", "Call-ID: lf", "CSeq: 1 ACK", eol="\n"),
        {"method": "ACK", "call_id": "lf"},
    ),
    (
        "mixed line endings",
        b"ACK sip:b@c SIP/2.0\nCall-ID: mixed\r\nCSeq: 1 ACK\n\r\nbody",
        {"call_id": "mixed", "headers": (("call-id", "mixed"), ("cseq", "1 ACK"))},
    ),
    (
        "leading CRLFs are skipped",
        b"\r\n\r\n\n" + sip("ACK sip:b@c SIP/2.0", "Call-ID: lead", "CSeq: 1 ACK"),
        {"call_id": "lead"},
    ),
    (
        "no empty line after the headers",
        b"ACK sip:b@c SIP/2.0\r\nCall-ID: noend\r\nCSeq: 1 ACK",
        {"call_id": "noend", "cseq_method": "ACK"},
    ),
    (
        "the body is never read as headers",
        sip("ACK sip:b@c SIP/2.0", "Call-ID: body", "CSeq: 1 ACK", body="Call-ID: no\r\nTo: x"),
        {"call_id": "body", "to_user": None, "headers": (("call-id", "body"), ("cseq", "1 ACK"))},
    ),
    (
        "Call-ID is case-sensitive and needs no @",
        minimal(),
        {"call_id": "c1"},
    ),
    (
        "first Call-ID wins",
        sip("ACK sip:b@c SIP/2.0", "Call-ID: one", "i: two", "CSeq: 1 ACK"),
        {"call_id": "one"},
    ),
    (
        "method tokens are case-sensitive and may be extensions",
        minimal(start="pUbLiSh sip:x@y SIP/2.0"),
        {"method": "pUbLiSh", "cseq_method": "OPTIONS", "effective_method": "pUbLiSh"},
    ),
    (
        "several vias in one header: the first is topmost",
        minimal(
            "Via: SIP/2.0/UDP first.example:5080;branch=z9hG4bK1, SIP/2.0/TCP second.example",
            "Via: SIP/2.0/TLS third.example;branch=z9hG4bK3",
        ),
        {"via_host": "first.example", "via_port": 5080, "via_branch": "z9hG4bK1"},
    ),
    (
        "several Via headers: the first is topmost",
        minimal(
            "Via: SIP/2.0/WSS top.example;rport;branch=z9hG4bKtop",
            "v: SIP/2.0/UDP below.example;branch=z9hG4bKbelow",
        ),
        {"via_transport": "WSS", "via_host": "top.example", "via_branch": "z9hG4bKtop"},
    ),
    (
        "via with LWS around the slashes and case-insensitive params",
        minimal("Via: SIP / 2.0 / udp host.example:5060 ; BRANCH = z9hG4bKx ; rport"),
        {
            "via_transport": "UDP",
            "via_host": "host.example",
            "via_port": 5060,
            "via_branch": "z9hG4bKx",
        },
    ),
    (
        "via with IPv6 sent-by",
        minimal("Via: SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bK6"),
        {"via_host": "2001:db8::9", "via_port": 5070},
    ),
    (
        "via without params",
        minimal("Via: SIP/2.0/SCTP host.example"),
        {"via_transport": "SCTP", "via_host": "host.example", "via_branch": None},
    ),
    ("malformed via", minimal("Via: garbage"), {"via_host": None, "via_transport": None}),
    (
        "addr-spec: the tag belongs to the header",
        minimal("From: sip:alice@atlanta.example.com;tag=88sja8x", "To: sip:bob@b.example"),
        {
            "from_display": None,
            "from_user": "alice",
            "from_domain": "atlanta.example.com",
            "from_tag": "88sja8x",
            "to_tag": None,
        },
    ),
    (
        "name-addr: uri params stay in the uri, tag after >",
        minimal("From: <sip:alice@a.example:5061;transport=tcp;tag=uri>;tag=hdr"),
        {"from_user": "alice", "from_domain": "a.example", "from_tag": "hdr"},
    ),
    (
        "quoted display name with escaped quotes and a comma",
        minimal(r'From: "Alice \"Al\" Smith, Jr" <sips:alice@a.example>;tag=q'),
        {"from_display": 'Alice "Al" Smith, Jr', "from_user": "alice", "from_tag": "q"},
    ),
    (
        "quoted display name with < inside",
        minimal('To: "a <b>" <sip:real@d.example>'),
        {"to_display": "a <b>", "to_user": "real", "to_domain": "d.example"},
    ),
    (
        "unquoted multi-token display name",
        minimal("To: Bob Smith <sip:bob@d.example>"),
        {"to_display": "Bob Smith", "to_user": "bob"},
    ),
    (
        "tag param name is case-insensitive",
        minimal("To: <sip:bob@d.example>;TAG=up"),
        {"to_tag": "up"},
    ),
    (
        "tel URI: the number is the user",
        minimal(
            "From: <tel:+15551234567;phone-context=example.com>;tag=t1",
            "To: tel:+4930123",
            start="INVITE tel:+15551234567 SIP/2.0",
        ),
        {
            "ruri_user": "+15551234567",
            "ruri_domain": None,
            "from_user": "+15551234567",
            "from_domain": None,
            "from_tag": "t1",
            "to_user": "+4930123",
        },
    ),
    (
        "URI without a user part",
        minimal("To: <sip:example.com>", start="REGISTER sip:registrar.example SIP/2.0"),
        {"ruri_user": None, "ruri_domain": "registrar.example", "to_user": None},
    ),
    (
        "percent-escaped user is left as is; password dropped",
        minimal(
            "From: <sip:al%20ice:secret@a.example>",
            start="INVITE sips:%2Bbob@b.example:5061;transport=tls?subject=x SIP/2.0",
        ),
        {
            "from_user": "al%20ice",
            "ruri_user": "%2Bbob",
            "ruri_domain": "b.example",
            "request_uri": "sips:%2Bbob@b.example:5061;transport=tls?subject=x",
        },
    ),
    (
        "IPv6 hosts lose their brackets",
        minimal(
            "Contact: <sip:u@[2001:db8::1]:5062>",
            "From: <sip:[::1]>",
            start="OPTIONS sip:alice@[::1]:5060 SIP/2.0",
        ),
        {
            "ruri_domain": "::1",
            "contact_host": "2001:db8::1",
            "contact_port": 5062,
            "from_user": None,
            "from_domain": "::1",
        },
    ),
    (
        "uri scheme is case-insensitive; unknown schemes give no user",
        minimal("From: <SIP:u@d.example>", "To: <urn:service:sos>"),
        {"from_user": "u", "from_domain": "d.example", "to_user": None, "to_domain": None},
    ),
    (
        "out-of-range port is dropped",
        minimal("Contact: <sip:u@h.example:99999>"),
        {"contact_host": "h.example", "contact_port": None},
    ),
    (
        "contact list: the first contact; expires param",
        minimal('Contact: "A, B" <sip:a@h1:5070>;expires=60, <sip:b@h2>;expires=30'),
        {"contact_user": "a", "contact_host": "h1", "contact_port": 5070, "expires": 60},
    ),
    (
        "contact addr-spec list",
        minimal("m: sip:a@h1, <sip:b@h2>"),
        {"contact_user": "a", "contact_host": "h1"},
    ),
    (
        "Expires header wins over the contact param",
        minimal("Contact: <sip:a@h>;expires=60", "Expires: 3600"),
        {"expires": 3600},
    ),
    ("contact star", minimal("Contact: *", "Expires: 0"), {"contact_user": None, "expires": 0}),
    (
        "User-Agent preferred over Server; Reason header kept",
        minimal("Server: srv", "User-Agent: ua", 'Reason: Q.850;cause=16;text="Normal"'),
        {"user_agent": "ua", "reason_header": 'Q.850;cause=16;text="Normal"'},
    ),
    (
        "P-Asserted-Identity user",
        minimal('P-Asserted-Identity: "Alice" <sip:+15550001@a.example>, <tel:+15550001>'),
        {"p_asserted_identity_user": "+15550001"},
    ),
    (
        "non-numeric numbers give None",
        minimal("Content-Length: ten", "Expires: 1e3"),
        {"content_length": None, "expires": None},
    ),
    (
        "unicode digits are not numbers",
        minimal("Content-Length: ²", "Expires: ١٢"),
        {"content_length": None, "expires": None},
    ),
    (
        "huge numbers give None instead of an error",
        minimal("Content-Length: " + "9" * 5000),
        {"content_length": None},
    ),
    (
        "lines that are not headers are skipped with their continuations",
        sip("ACK sip:b@c SIP/2.0", "garbage line", " cont", "Call-ID: g", "CSeq: 1 ACK"),
        {"headers": (("call-id", "g"), ("cseq", "1 ACK"))},
    ),
    (
        "a continuation before any header is ignored",
        sip("ACK sip:b@c SIP/2.0", " stray", "Call-ID: s", "CSeq: 1 ACK"),
        {"call_id": "s"},
    ),
    (
        "invalid UTF-8 is replaced, not fatal",
        b"OPTIONS sip:x@y SIP/2.0\r\nFrom: \xe9l\xe8ve <sip:e@d>\r\nCall-ID: c\xff\r\n"
        b"CSeq: 1 OPTIONS\r\n\r\n",
        {"from_display": "\ufffdl\ufffdve", "call_id": "c\ufffd"},
    ),
    (
        "UTF-8 display names are decoded",
        'OPTIONS sip:x@y SIP/2.0\r\nFrom: "Jürgen" <sip:j@d>\r\nCall-ID: c\r\n'
        "CSeq: 1 OPTIONS\r\n\r\n".encode(),
        {"from_display": "Jürgen"},
    ),
    (
        "CSeq with extra whitespace",
        sip("ACK sip:b@c SIP/2.0", "Call-ID: w", "CSeq:    42\t ACK  "),
        {"cseq_number": 42, "cseq_method": "ACK", "cseq": "42 ACK"},
    ),
]


@pytest.mark.parametrize(("payload", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse(payload: bytes, expected: dict[str, Any]) -> None:
    msg = parse_sip(payload)
    actual = {key: getattr(msg, key) for key in expected}
    assert actual == expected


def test_all_compact_forms_are_canonicalised() -> None:
    lines = [f"{short}: v-{short}" for short in COMPACT_HEADERS if short != "i"]
    msg = parse_sip(sip("OPTIONS sip:x@y SIP/2.0", "i: c", "CSeq: 1 OPTIONS", *lines))
    assert dict(msg.headers) == {
        "call-id": "c",
        "cseq": "1 OPTIONS",
        **{full: f"v-{short}" for short, full in COMPACT_HEADERS.items() if short != "i"},
    }


ERRORS: list[tuple[str, bytes, str]] = [
    ("nothing", b"", "empty"),
    ("only CRLFs (a keep-alive)", b"\r\n\r\n", "empty"),
    ("whitespace", b"  \t ", "empty"),
    (
        "two-token request line",
        b"INVITE sip:a@b\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n",
        "bad_start_line",
    ),
    ("wrong version", minimal(start="INVITE sip:a@b SIP/3.0"), "bad_start_line"),
    ("not SIP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad_start_line"),
    ("request-uri without a scheme", minimal(start="INVITE bob SIP/2.0"), "bad_start_line"),
    ("method is not a token", minimal(start="INV@TE sip:a@b SIP/2.0"), "bad_start_line"),
    ("status line with another version", minimal(start="SIP/1.0 200 OK"), "bad_start_line"),
    ("status line alone", b"SIP/2.0", "bad_start_line"),
    ("header where the start line should be", b"Call-ID: c\r\nCSeq: 1 A\r\n\r\n", "bad_start_line"),
    ("status code not three digits", minimal(start="SIP/2.0 20 OK"), "bad_status_code"),
    ("status code letters", minimal(start="SIP/2.0 2OO OK"), "bad_status_code"),
    ("status code out of range", minimal(start="SIP/2.0 700 Nope"), "bad_status_code"),
    ("status code 0xx", minimal(start="SIP/2.0 099 Nope"), "bad_status_code"),
    ("unicode digits in status", minimal(start="SIP/2.0 ٢٠٠ OK"), "bad_status_code"),
    ("no Call-ID", sip("ACK sip:b@c SIP/2.0", "CSeq: 1 ACK"), "missing_call_id"),
    ("empty Call-ID", sip("ACK sip:b@c SIP/2.0", "Call-ID:  ", "CSeq: 1 ACK"), "missing_call_id"),
    (
        "Call-ID only in the body",
        sip("ACK sip:b@c SIP/2.0", "CSeq: 1 ACK", body="Call-ID: x"),
        "missing_call_id",
    ),
    ("no CSeq", sip("ACK sip:b@c SIP/2.0", "Call-ID: c"), "missing_cseq"),
    ("CSeq without method", sip("ACK sip:b@c SIP/2.0", "Call-ID: c", "CSeq: 1"), "bad_cseq"),
    ("CSeq method first", sip("ACK sip:b@c SIP/2.0", "Call-ID: c", "CSeq: ACK 1"), "bad_cseq"),
    ("CSeq negative", sip("ACK sip:b@c SIP/2.0", "Call-ID: c", "CSeq: -1 ACK"), "bad_cseq"),
    (
        "CSeq too long",
        sip("ACK sip:b@c SIP/2.0", "Call-ID: c", "CSeq: 1" + "0" * 40 + " A"),
        "bad_cseq",
    ),
    ("CSeq empty", sip("ACK sip:b@c SIP/2.0", "Call-ID: c", "CSeq:"), "bad_cseq"),
]


@pytest.mark.parametrize(("payload", "reason"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_parse_errors(payload: bytes, reason: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_sip(payload)
    assert info.value.reason == reason
    assert reason in REASONS
    assert isinstance(info.value, ValueError)


def test_error_survives_pickling() -> None:
    err = SipParseError("bad_cseq", "CSeq: x")
    back = pickle.loads(pickle.dumps(err))
    assert (back.reason, back.detail, str(back)) == ("bad_cseq", "CSeq: x", str(err))


def test_result_is_a_plain_frozen_sip_message() -> None:
    msg = parse_sip(INVITE)
    assert type(msg) is SipMessage
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.method = "BYE"  # type: ignore[misc]
    rebuilt = SipMessage(**{f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)})
    assert rebuilt == msg
    assert hash(rebuilt) == hash(msg)
    assert pickle.loads(pickle.dumps(msg)) == msg
    assert dataclasses.replace(msg, method="BYE").method == "BYE"
    assert msg.header("max-forwards") == "70"
    assert msg.header("x-absent") is None


def test_headers_keep_order_and_duplicates() -> None:
    msg = parse_sip(minimal("Route: <sip:p1>", "Route: <sip:p2>", "X-Custom : a:b "))
    assert msg.headers[2:] == (
        ("route", "<sip:p1>"),
        ("route", "<sip:p2>"),
        ("x-custom", "a:b"),
    )


# --- properties ------------------------------------------------------------


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_sip_parse_error(payload: bytes) -> None:
    try:
        msg = parse_sip(payload)
    except SipParseError as err:
        assert err.reason in REASONS
    else:
        assert isinstance(msg, SipMessage)
        assert msg.call_id


_SIP_ALPHABET = st.sampled_from(
    list(b'\r\n \t:;,<>"\\@[]=/?%.-+0123456789') + list(b"SIPsipINVITEtagCall-IDVia")
)


@settings(max_examples=500)
@given(st.data())
def test_mutated_messages_only_raise_sip_parse_error(data: st.DataObject) -> None:
    """Valid messages with bytes inserted or overwritten reach deeper code than noise."""
    payload = bytearray(data.draw(st.sampled_from([INVITE, sip(*RESPONSE_LINES)])))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(payload)))
        byte = data.draw(_SIP_ALPHABET | st.integers(0, 255))
        if data.draw(st.booleans()):
            payload.insert(pos, byte)
        elif pos < len(payload):
            payload[pos] = byte
    try:
        parse_sip(bytes(payload))
    except SipParseError as err:
        assert err.reason in REASONS


_CALL_ID_CHARS = st.text(
    alphabet=st.sampled_from(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~()<>:\\\"/[]?{}@"
    ),
    min_size=1,
    max_size=40,
)
_TOKEN = st.text(alphabet=st.sampled_from("ABCDEFGHIKLMNOPQRSTUVWXYZabcdefz-.!%*_+`'~"), min_size=1)
_EXTRA = st.sampled_from(
    [
        "Via: SIP/2.0/UDP h.example;branch=z9hG4bKx",
        "From: <sip:a@b>;tag=1",
        "To: sip:c@d",
        "Contact: <sip:a@h:5060>",
        "Subject: folded\r\n over two lines",
        "X-Call-ID: decoy",
        "Call-Info: <http://x/>;purpose=icon",
        "In-Reply-To: 70710@saturn.bell-tel.com",
        "i-not-a-call-id: x",
        "Content-Length: 0",
    ]
)


@st.composite
def valid_messages(draw: st.DrawFn) -> tuple[bytes, str, str, int]:
    call_id = draw(_CALL_ID_CHARS)
    method = draw(_TOKEN)
    number = draw(st.integers(0, 2**31 - 1))
    name = draw(st.sampled_from(["Call-ID", "call-id", "CALL-ID", "i", "I", "Call-Id"]))
    before = draw(st.sampled_from(["", " ", "\t", "  "]))
    after = draw(st.sampled_from(["", " ", "\t ", "   "]))
    trailing = draw(st.sampled_from(["", " ", "\t"]))
    headers = draw(st.lists(_EXTRA, max_size=4))
    headers.insert(draw(st.integers(0, len(headers))), f"{name}{before}:{after}{call_id}{trailing}")
    headers.insert(draw(st.integers(0, len(headers))), f"CSeq: {number} {method}")
    if draw(st.booleans()):
        start = f"{method} sip:u@h.example SIP/2.0"
    else:
        start = f"SIP/2.0 {draw(st.integers(100, 699))} Whatever"
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    lead = draw(st.sampled_from(["", "\r\n", "\n\r\n"]))
    body = draw(st.sampled_from(["", "Call-ID: body-decoy\r\n", "v=0\r\n"]))
    text = lead + eol.join([start, *headers]).replace("\r\n", eol) + eol + eol + body
    return text.encode(), call_id, method, number


@settings(max_examples=500)
@given(valid_messages())
def test_generated_messages_parse_and_scan_agrees(case: tuple[bytes, str, str, int]) -> None:
    payload, call_id, method, number = case
    msg = parse_sip(payload)
    assert msg.call_id == call_id
    assert (msg.cseq_number, msg.cseq_method) == (number, method)
    assert msg.effective_method == (msg.method if msg.is_request else method)
    scanned = scan_call_id(payload)
    assert scanned is not None
    assert scanned.decode("utf-8", "replace") == msg.call_id


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_scan_agrees_with_parse_on_arbitrary_bytes(payload: bytes) -> None:
    """Whenever parse_sip accepts something, the receiver's scan finds the same Call-ID."""
    try:
        msg = parse_sip(payload)
    except SipParseError:
        return
    scanned = scan_call_id(payload)
    assert scanned is not None
    assert scanned.decode("utf-8", "replace") == msg.call_id


# --- real captures ------------------------------------------------------------


def sip_payload(packet: bytes) -> bytes:
    """The captured payload of a HEP packet, found without the project's HEP codec."""
    if packet[:4] == b"HEP3":
        (total,) = struct.unpack_from("!H", packet, 4)
        offset = 6
        while offset + 6 <= total:
            vendor, chunk_type, length = struct.unpack_from("!HHH", packet, offset)
            assert length >= 6, "malformed chunk in a test vector"
            if vendor == 0 and chunk_type == 0x000F:
                return packet[offset + 6 : offset + length]
            offset += length
        raise AssertionError("no payload chunk")
    assert packet[0] == 2, "only HEPv2 and HEPv3 vectors are expected"
    return packet[28:]


def vector_cases() -> list[Any]:
    cases = []
    for name in VECTOR_SETS:
        expected = json.loads((VECTORS / name / "expected.json").read_text())
        for packet in expected["packets"]:
            if packet.get("sip"):
                cases.append(pytest.param(name, packet, id=f"{name}/{packet['file']}"))
    return cases


def test_every_vector_set_has_sip_packets() -> None:
    sets = {case.values[0] for case in vector_cases()}
    assert sets == set(VECTOR_SETS)


@pytest.mark.parametrize(("vector_set", "packet"), vector_cases())
def test_real_captures(vector_set: str, packet: dict[str, Any]) -> None:
    payload = sip_payload((VECTORS / vector_set / packet["file"]).read_bytes())
    assert hashlib.sha256(payload).hexdigest() == packet["payload_sha256"]
    expected = packet["sip"]
    msg = parse_sip(payload)
    assert msg.call_id == expected["call_id"]
    assert msg.cseq == expected["cseq"]
    if expected["method"] is not None:
        assert msg.is_request
        assert msg.method == expected["method"]
    else:
        assert not msg.is_request
        assert msg.status_code == expected["status"]
    assert scan_call_id(payload) == expected["call_id"].encode()


# --- summarise_sip: the row builder's subset must equal parse_sip ----------------------

_SUMMARY_FIELDS = SipSummary._fields


def assert_summary_agrees(payload: bytes) -> None:
    try:
        msg = parse_sip(payload)
    except SipParseError as err:
        with pytest.raises(SipParseError) as caught:
            summarise_sip(payload)
        assert caught.value.reason == err.reason
        return
    summary = summarise_sip(payload)
    assert summary == tuple(getattr(msg, name) for name in _SUMMARY_FIELDS)
    assert summary.effective_method == msg.effective_method
    assert summary.cseq == msg.cseq
    # A second parse (served from the value caches) gives the same answer.
    assert parse_sip(payload) == msg
    assert summarise_sip(payload) == summary


_HEADER_LINES = st.sampled_from(
    [
        "Via: SIP/2.0/UDP h.example;branch=z9hG4bKx",
        "v: SIP/2.0/TCP [2001:db8::1]:5061;rport;branch=z9hG4bKy",
        "Via  : SIP / 2.0 / UDP h2.example:5070 ;branch=b2, SIP/2.0/UDP h3",
        "From: <sip:a@b>;tag=1",
        'f: "A \\"q\\"" <sips:a:pw@b:5061;user=phone>;TAG=2',
        "From: sip:x@y;tag=3",
        "To: sip:c@d",
        "t: <tel:+1555;phone-context=x>;tag=t9",
        'TO: "Bob" <sip:bob@example.com> ; tag = z',
        "Contact: <sip:a@h:5060>;expires=60",
        "m: sip:u@host;expires=30, <sip:v@other>",
        "Contact: *",
        "Expires: 3600",
        "Expires: nope",
        "User-Agent: phone/1.0",
        "Server: pbx",
        "user-agent:",
        "c: application/sdp",
        "Content-Type: text/plain",
        "Reason: Q.850;cause=16",
        "P-Asserted-Identity: <sip:pai@x>, <tel:+1>",
        "P-Asserted-Identity: \"N\" sip:p2@y",
        "Subject: folded\r\n over two lines",
        "From: <sip:fold@x>\r\n\t;tag=folded",
        " leading-space: continuation of the previous header",
        "no colon here",
        "X-Call-ID: decoy",
        "i-not-a-call-id: x",
        "Content-Length: 0",
        "l: 12",
        "Via: caf\u00e9/2.0/UDP h;branch=\u00e9",
        "From: \u00c9mile <sip:\u00e9@x>;tag=\u00fc",
    ]
)


@st.composite
def summary_messages(draw: st.DrawFn) -> bytes:
    headers = draw(st.lists(_HEADER_LINES, max_size=10))
    name = draw(st.sampled_from(["Call-ID", "i", "CALL-ID", "call-id "]))
    headers.insert(draw(st.integers(0, len(headers))), f"{name}: {draw(_CALL_ID_CHARS)}")
    if draw(st.booleans()):
        cseq_method = draw(st.sampled_from(["INVITE", "REGISTER", "BYE", "x y"]))
        headers.insert(draw(st.integers(0, len(headers))), f"CSeq: 7 {cseq_method}")
    start = draw(
        st.sampled_from(
            [
                "INVITE sip:bob@example.com SIP/2.0",
                "REGISTER sips:registrar.example.com:5061;transport=tls SIP/2.0",
                "MESSAGE tel:+15551234 SIP/2.0",
                "OPTIONS sip:[2001:db8::9]:5070 SIP/2.0",
                "SIP/2.0 200 OK",
                "SIP/2.0 183",
                "SIP/2.0 099 Bad",
                "HTTP/1.1 200 OK",
            ]
        )
    )
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    lead = draw(st.sampled_from(["", "\r\n"]))
    text = lead + eol.join([start, *headers]).replace("\r\n", eol) + eol + eol + "v=0\r\n"
    return text.encode()


@settings(max_examples=500)
@given(summary_messages())
def test_summarise_agrees_with_parse_on_generated_messages(payload: bytes) -> None:
    assert_summary_agrees(payload)


@settings(max_examples=300)
@given(st.data())
def test_summarise_agrees_with_parse_on_mutated_messages(data: st.DataObject) -> None:
    payload = bytearray(data.draw(st.sampled_from([INVITE, sip(*RESPONSE_LINES)])))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(payload)))
        byte = data.draw(_SIP_ALPHABET | st.integers(0, 255))
        if data.draw(st.booleans()):
            payload.insert(pos, byte)
        elif pos < len(payload):
            payload[pos] = byte
    assert_summary_agrees(bytes(payload))


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_summarise_agrees_with_parse_on_arbitrary_bytes(payload: bytes) -> None:
    assert_summary_agrees(payload)


@pytest.mark.parametrize(("case_id", "payload", "expected"), CASES, ids=[c[0] for c in CASES])
def test_summarise_agrees_on_cases(case_id: str, payload: bytes, expected: dict[str, Any]) -> None:
    assert_summary_agrees(payload)


@pytest.mark.parametrize(("vector_set", "packet"), vector_cases())
def test_summarise_agrees_on_real_captures(vector_set: str, packet: dict[str, Any]) -> None:
    assert_summary_agrees(sip_payload((VECTORS / vector_set / packet["file"]).read_bytes()))


def test_value_caches_stay_bounded() -> None:
    from pipeline.sip import parser

    for i in range(parser._CACHE_MAX + 10):
        parse_sip(sip(f"OPTIONS sip:u{i}@h SIP/2.0", f"From: <sip:f{i}@x>;tag={i}",
                      f"To: <sip:t{i}@y>", "Call-ID: c", "CSeq: 1 OPTIONS",
                      f"Via: SIP/2.0/UDP h;branch={i}", f"Contact: <sip:c{i}@h>",
                      f"P-Asserted-Identity: <sip:p{i}@h>"))
    for cache in (parser._PARTY_CACHE, parser._VIA_CACHE, parser._CONTACT_CACHE,
                  parser._URI_CACHE, parser._PAI_CACHE):
        assert 0 < len(cache) <= parser._CACHE_MAX
