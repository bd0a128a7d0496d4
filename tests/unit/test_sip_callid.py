"""scan_call_id: the receiver's bounded Call-ID scan."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.implementations import Implementation

START = b"INVITE sip:bob@b.example SIP/2.0\r\n"

# (id, payload, expected)
CASES: list[tuple[str, bytes, bytes | None]] = [
    ("full name", START + b"Via: x\r\nCall-ID: abc@host\r\nCSeq: 1 INVITE\r\n\r\n", b"abc@host"),
    ("compact name", START + b"i: compact\r\n\r\n", b"compact"),
    ("upper-case compact", START + b"I: upper\r\n\r\n", b"upper"),
    ("case-insensitive name", START + b"cAlL-iD: MiXeD-Case\r\n\r\n", b"MiXeD-Case"),
    ("whitespace around the colon", START + b"Call-ID \t :  \t sp \t\r\n\r\n", b"sp"),
    ("no whitespace", START + b"Call-ID:tight\r\n\r\n", b"tight"),
    ("bare LF", b"ACK sip:b@c SIP/2.0\nVia: v\ni: lf\n\nbody", b"lf"),
    ("leading CRLFs", b"\r\n\r\n" + START + b"Call-ID: lead\r\n\r\n", b"lead"),
    ("first of two", START + b"Call-ID: one\r\ni: two\r\n\r\n", b"one"),
    ("compact before full", START + b"i: one\r\nCall-ID: two\r\n\r\n", b"one"),
    ("last header without a newline", START + b"Call-ID: end", b"end"),
    ("folded value", START + b"Call-ID: part\r\n  two\r\nCSeq: 1 A\r\n\r\n", b"part two"),
    ("response", b"SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\nCall-ID: resp\r\n\r\n", b"resp"),
    ("non-UTF-8 bytes are returned raw", START + b"Call-ID: \xff\xfe\r\n\r\n", b"\xff\xfe"),
    ("not at the start of a line", START + b"X-Call-ID: no\r\nTo: i: no\r\n\r\n", None),
    ("longer name", START + b"Call-IDs: no\r\nInfo: no\r\nIn-Reply-To: no\r\n\r\n", None),
    ("name then text before colon", START + b"Call-ID x: no\r\ni x: no\r\n\r\n", None),
    ("only in the body", START + b"CSeq: 1 INVITE\r\n\r\nCall-ID: body\r\n", None),
    ("only in the body, bare LF", b"ACK sip:b@c SIP/2.0\nCSeq: 1\n\nCall-ID: b\n", None),
    ("start line is not a header", b"i: x\r\nCSeq: 1\r\n\r\n", None),
    ("empty value", START + b"Call-ID:   \r\n\r\n", None),
    ("no newline at all", b"Call-ID: x", None),
    ("empty", b"", None),
    ("only CRLFs", b"\r\n\r\n\r\n", None),
]


@pytest.mark.parametrize(("payload", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_scan(impl: Implementation, payload: bytes, expected: bytes | None) -> None:
    assert impl.scan_call_id(payload) == expected


def test_scan_is_bounded_by_limit(impl: Implementation) -> None:
    padding = b"X-Pad: " + b"p" * 5000 + b"\r\n"
    assert impl.scan_call_id(START + padding + b"Call-ID: far\r\n\r\n") is None
    assert impl.scan_call_id(START + padding + b"Call-ID: far\r\n\r\n", limit=8192) == b"far"


def test_value_cut_by_limit_gives_none(impl: Implementation) -> None:
    payload = START + b"Call-ID: " + b"v" * 100 + b"\r\n\r\n"
    cut = len(START) + 20
    assert impl.scan_call_id(payload, limit=cut) is None
    # The line end is inside the window but the empty line is not: still complete.
    assert impl.scan_call_id(payload, limit=len(payload) - 2) == b"v" * 100
    # Only the CR made it: the value may go on past the window.
    assert impl.scan_call_id(payload, limit=len(payload) - 3) is None


def test_folded_value_cut_by_limit_gives_none(impl: Implementation) -> None:
    payload = START + b"Call-ID: a\r\n b" + b"c" * 50 + b"\r\n\r\n"
    assert impl.scan_call_id(payload, limit=len(payload) - 10) is None


@pytest.mark.parametrize("limit", [-1, 0, 1, 5])
def test_tiny_limits(impl: Implementation, limit: int) -> None:
    assert impl.scan_call_id(START + b"Call-ID: x\r\n\r\n", limit=limit) is None


@settings(max_examples=1000)
@given(st.binary(max_size=600), st.integers(-2, 700))
def test_never_raises(impl: Implementation, payload: bytes, limit: int) -> None:
    result = impl.scan_call_id(payload, limit)
    assert result is None or (isinstance(result, bytes) and result)


_NOISY = st.lists(
    st.sampled_from([b"\r", b"\n", b" ", b"\t", b":", b"i", b"I", b"call-id", b"Call-ID", b"x"]),
    max_size=40,
).map(b"".join)


@settings(max_examples=1000)
@given(_NOISY, st.integers(0, 64))
def test_never_raises_on_header_like_noise(
    impl: Implementation,
    payload: bytes,
    limit: int,
) -> None:
    result = impl.scan_call_id(payload, limit)
    assert result is None or (isinstance(result, bytes) and result.strip(b" \t\r") == result)
