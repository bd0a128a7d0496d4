"""Capture filters (pipeline.consumer.filters): parse, decide, censor."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.accel import copy_tuple
from pipeline.consumer.filters import (
    CaptureFilter,
    Screen,
    censor_payload,
    censor_payload_bytes,
    censor_values,
    parse_hep_types,
    parse_methods,
    parse_networks,
)
from pipeline.storage import COLUMNS, CaptureRow
from tests import flows
from tests.kpi_support import START_US, rows_of

RAW = COLUMNS.index("raw")
RAW_BYTES = COLUMNS.index("raw_bytes")


def message(method: str, body: str, src: str = "192.0.2.10", start: int = START_US,
            proto_type: int = 1) -> flows.Capture:
    text = (
        f"{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bK1\r\n"
        "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
        f"Call-ID: m-{method}@x\r\nCSeq: 1 {method}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body.encode())}\r\n\r\n{body}"
    )
    return flows.Capture(start, flows.Endpoint(src), flows.PROXY, text.encode(), proto_type)


def test_parsers() -> None:
    assert parse_methods(" options, NOTIFY ,,") == {"OPTIONS", "NOTIFY"}
    assert parse_methods("") == frozenset()
    assert parse_networks("10.0.0.0/8, 192.0.2.7, 2001:db8::/32") == (
        ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert parse_networks("10.1.2.3/8")[0] == ipaddress.ip_network("10.0.0.0/8")
    assert parse_hep_types("5, 100") == {5, 100}
    for parse, bad in ((parse_methods, "OPT IONS"), (parse_networks, "10.0.0.0/33"),
                       (parse_networks, "nowhere"), (parse_hep_types, "256"),
                       (parse_hep_types, "x")):
        with pytest.raises(ValueError):
            parse(bad)


def test_an_empty_filter_is_inactive_and_keeps_everything() -> None:
    assert not CaptureFilter().active
    rows = rows_of(flows.all_flows(START_US))
    before = [row.values for row in rows]
    result = Screen(CaptureFilter()).screen(rows)
    assert result.kept == list(range(len(rows)))
    assert not result.discarded and not result.censored
    assert [row.values for row in rows] == before


def test_discard_by_cseq_method_takes_the_responses_too() -> None:
    rows = rows_of(flows.cancelled(START_US))
    result = Screen(CaptureFilter(discard_methods=frozenset({"CANCEL"}))).screen(rows)
    # The CANCEL and its 200 OK.
    assert result.discarded == {"method": 2}
    assert all(rows[i].value("cseq_method") != "CANCEL" for i in result.kept)
    assert len(result.kept) == len(rows) - 2


def test_discard_by_address_and_hep_type() -> None:
    rows = rows_of(flows.answered_b2bua(START_US))
    screen = Screen(CaptureFilter(
        discard_hep_types=frozenset({5, 100}),
        discard_sources=parse_networks("198.51.100.0/24"),
        discard_destinations=parse_networks("192.0.2.10"),
    ))
    result = screen.screen(rows)
    expected: dict[str, int] = {}
    for row in rows:
        if row.value("hep_type") in (5, 100):
            reason = "hep_type"
        elif row.value("src_ip").startswith("198.51.100."):
            reason = "source"
        elif row.value("dst_ip") == "192.0.2.10":
            reason = "destination"
        else:
            continue
        expected[reason] = expected.get(reason, 0) + 1
    assert result.discarded == expected
    assert set(expected) == {"hep_type", "source", "destination"}
    assert sum(expected.values()) + len(result.kept) == len(rows)


def test_censor_blanks_the_body_of_the_method_and_keeps_its_length() -> None:
    body = "meet me at 5 — ünïcode\r\nsecond line"
    rows = rows_of([message("MESSAGE", body), message("INFO", "keep me")])
    original = rows[0].value("raw")
    result = Screen(CaptureFilter(censor_methods=frozenset({"MESSAGE"}))).screen(rows)
    assert result.kept == [0, 1] and result.censored == {"MESSAGE": 1}
    censored = rows[0].value("raw")
    head = original[: original.index("\r\n\r\n") + 4]
    assert censored == head + "x" * len(body.encode())
    assert rows[1].value("raw").endswith("keep me")
    assert rows[0].value("data_header") and "meet" not in censored


def test_censored_rows_lose_their_copy_tuple() -> None:
    """A row in wire form carries its values encoded: once censored, the sink must
    encode the censored values, not write the tuple of the original ones."""
    rows = rows_of([message("MESSAGE", "secret body"), message("INFO", "keep me")])
    for row in rows:
        row.wire = copy_tuple(row.values)
    kept_wire = rows[1].wire
    Screen(CaptureFilter(censor_methods=frozenset({"MESSAGE"}))).screen(rows)
    assert rows[0].wire is None and b"secret" not in copy_tuple(rows[0].values)
    assert rows[1].wire == kept_wire


def test_censor_of_exact_bytes_renders_raw_again() -> None:
    payload = b"MESSAGE sip:b@x SIP/2.0\r\nCSeq: 1 MESSAGE\r\n\r\n\x00secret\xff"
    values = [None] * len(COLUMNS)
    values[RAW] = payload.decode("utf-8", "replace").replace("\x00", "")
    values[RAW_BYTES] = payload
    out = censor_values(tuple(values))
    assert out[RAW_BYTES] == payload[: payload.index(b"\r\n\r\n") + 4] + b"x" * 8
    assert out[RAW] == out[RAW_BYTES].decode()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.text(alphabet="ab\r\n\x00é", max_size=40) | st.text(max_size=40),
       st.sampled_from(["\r\n\r\n", "\n\n", ""]))
def test_censoring_keeps_headers_and_byte_length(head: str, body: str, gap: str) -> None:
    head = head.replace("\n", " ").replace("\r", " ")
    if not gap:
        body = body.replace("\n", " ")
    text = head + gap + body
    censored = censor_payload(text)
    as_bytes = censor_payload_bytes(text.encode())
    if gap and body:
        assert censored == head + gap + "x" * len(body.encode())
        assert as_bytes == censored.encode()
    elif not gap:
        assert censored == text and as_bytes == text.encode()
    assert len(censored.encode()) == len(text.encode()) == len(as_bytes)
    # Idempotent: censoring twice changes nothing more.
    assert censor_payload(censored) == censored


@settings(max_examples=50, deadline=None)
@given(st.sets(st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "REGISTER"])),
       st.sets(st.sampled_from([1, 5, 100])))
def test_kept_and_discarded_add_up(methods: set[str], types: set[int]) -> None:
    rows: list[CaptureRow] = rows_of(flows.all_flows(START_US))
    result = Screen(CaptureFilter(discard_methods=frozenset(methods),
                                  discard_hep_types=frozenset(types))).screen(rows)
    assert len(result.kept) + sum(result.discarded.values()) == len(rows)
    for i in result.kept:
        assert rows[i].value("hep_type") not in types
        assert rows[i].value("cseq_method") not in methods


@pytest.mark.parametrize(
    ("option", "value"),
    [("--discard-methods", "OPT IONS"), ("--discard-sources", "10.0.0.0/33"),
     ("--discard-destinations", "host.example"), ("--discard-hep-types", "256"),
     ("--censor-methods", "MES;SAGE")],
)
def test_a_bad_filter_setting_is_a_usage_error(option: str, value: str) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(app, ["consume", "--sink", "stdout", option, value], env={})
    assert result.exit_code == 2, result.output
    assert option in result.output and value in result.output


_addresses = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str),
    st.sampled_from(["", "not-an-ip", "10.0.0.1", "10.255.255.255", "::1"]),
)
_networks = st.lists(
    st.one_of(st.ip_addresses(v=4).map(lambda a: f"{a}/{int(a) % 33}"),
              st.ip_addresses(v=6).map(lambda a: f"{a}/{int(a) % 129}"),
              st.just("10.0.0.0/8")),
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_addresses, max_size=30), _networks)
def test_address_decisions_match_ipaddress_and_survive_the_cache(
    addresses: list[str], networks: list[str]
) -> None:
    from pipeline.consumer import filters

    parsed = parse_networks(",".join(networks))
    matcher = filters._AddressMatcher(parsed)

    def reference(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in parsed)

    for address in addresses + addresses:  # the second pass answers from the cache
        assert matcher(address) == reference(address)
    assert matcher(None) is False


def test_the_address_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.consumer import filters

    monkeypatch.setattr(filters, "_ADDRESS_CACHE_MAX", 4)
    matcher = filters._AddressMatcher(parse_networks("10.0.0.0/8"))
    for n in range(20):
        assert matcher(f"10.0.0.{n}") and not matcher(f"11.0.0.{n}")
        assert len(matcher._known) <= 4
