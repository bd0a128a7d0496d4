"""The pcap writer, read back through an independent reader (tests/pcap_reader.py)."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.analysis.pcap import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    MAX_UDP_PAYLOAD_IPV4,
    MAX_UDP_PAYLOAD_IPV6,
    PcapEncoder,
    PcapMessage,
    file_header,
    internet_checksum,
    message_from_row,
)
from tests.pcap_reader import read_pcap, tcp_streams

T0 = 1_764_820_800_000_000  # 2025-12-04 04:00 UTC, in µs


def ipv4s() -> st.SearchStrategy[str]:
    return st.integers(1, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))


def ipv6s() -> st.SearchStrategy[str]:
    return st.integers(1, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


@st.composite
def conversations(draw: st.DrawFn) -> list[PcapMessage]:
    """Messages between a few endpoints of one family, UDP and TCP mixed, in time order."""
    family = draw(st.sampled_from([ipv4s, ipv6s]))
    hosts = draw(st.lists(family(), min_size=1, max_size=3, unique=True))
    ports = st.integers(0, 65535)
    endpoints = draw(st.lists(st.tuples(st.sampled_from(hosts), ports), min_size=2,
                              max_size=4, unique=True))
    messages = []
    time_us = T0
    for _ in range(draw(st.integers(0, 12))):
        src, dst = draw(st.lists(st.sampled_from(endpoints), min_size=2, max_size=2,
                                 unique=True))
        time_us += draw(st.integers(0, 5_000_000))
        messages.append(PcapMessage(
            time_us=time_us, src_ip=src[0], src_port=src[1], dst_ip=dst[0], dst_port=dst[1],
            ip_proto=draw(st.sampled_from([IPPROTO_UDP, IPPROTO_TCP])),
            payload=draw(st.binary(max_size=4000)),
        ))
    return messages


@settings(max_examples=150, deadline=None)
@given(conversations(), st.integers(1, 3000))
def test_every_message_reads_back_in_order_with_valid_checksums(
    messages: list[PcapMessage], segment: int
) -> None:
    encoder = PcapEncoder(tcp_segment_size=segment)
    frames = read_pcap(encoder.encode_all(messages))
    assert encoder.frames == len(frames) and encoder.truncated == 0
    # Frame by frame: each message's frames, in order, with its addresses and time.
    position = 0
    for message in messages:
        pieces = (1 if message.ip_proto == IPPROTO_UDP
                  else max(1, -(-len(message.payload) // segment)))
        mine = frames[position:position + pieces]
        position += pieces
        assert {(f.src_ip, f.src_port, f.dst_ip, f.dst_port, f.ip_proto, f.time_us)
                for f in mine} == {(str(ipaddress.ip_address(message.src_ip)), message.src_port,
                                    str(ipaddress.ip_address(message.dst_ip)),
                                    message.dst_port, message.ip_proto, message.time_us)}
        assert b"".join(f.payload for f in mine) == message.payload
        assert all(len(f.payload) <= segment for f in mine if f.ip_proto == IPPROTO_TCP)
    assert position == len(frames)
    # TCP: each direction is one gap-free byte stream holding its messages in order.
    sent: dict[tuple[str, int, str, int], bytes] = defaultdict(bytes)
    for m in messages:
        if m.ip_proto == IPPROTO_TCP:
            key = (str(ipaddress.ip_address(m.src_ip)), m.src_port,
                   str(ipaddress.ip_address(m.dst_ip)), m.dst_port)
            sent[key] += m.payload
    assert tcp_streams(frames) == dict(sent)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000))
def test_checksum_of_data_with_its_checksum_is_zero(data: bytes) -> None:
    padded = data + b"\x00" * (len(data) % 2)
    assert internet_checksum(padded + internet_checksum(padded).to_bytes(2, "big")) == 0


def test_tcp_acknowledges_the_other_direction() -> None:
    a, b = ("192.0.2.1", 5060), ("192.0.2.2", 5060)
    encoder = PcapEncoder()
    messages = [
        PcapMessage(T0, *a, *b, IPPROTO_TCP, b"INVITE"),
        PcapMessage(T0 + 1, *b, *a, IPPROTO_TCP, b"100 Trying"),
        PcapMessage(T0 + 2, *a, *b, IPPROTO_TCP, b"ACK"),
    ]
    first, reply, third = read_pcap(encoder.encode_all(messages))
    assert reply.ack == first.seq + 6  # type: ignore[operator]
    assert third.seq == first.seq + 6 and third.ack == reply.seq + 10  # type: ignore[operator]
    assert first.flags == reply.flags == 0x18


def test_mixed_families_become_ipv4_mapped_ipv6() -> None:
    [frame] = read_pcap(PcapEncoder().encode_all(
        [PcapMessage(T0, "192.0.2.1", 5060, "2001:db8::1", 5060, IPPROTO_UDP, b"x")]))
    assert (frame.src_ip, frame.dst_ip) == ("::ffff:c000:201", "2001:db8::1")


@pytest.mark.parametrize(("src", "dst", "limit"), [
    ("192.0.2.1", "192.0.2.2", MAX_UDP_PAYLOAD_IPV4),
    ("2001:db8::1", "2001:db8::2", MAX_UDP_PAYLOAD_IPV6),
])
def test_udp_payload_beyond_one_ip_packet_is_cut_and_counted(
    src: str, dst: str, limit: int
) -> None:
    encoder = PcapEncoder()
    fits = PcapMessage(T0, src, 5060, dst, 5060, IPPROTO_UDP, b"a" * limit)
    too_long = PcapMessage(T0, src, 5060, dst, 5060, IPPROTO_UDP, b"b" * (limit + 1))
    frames = read_pcap(encoder.encode_all([fits, too_long]))
    assert [len(f.payload) for f in frames] == [limit, limit]
    assert encoder.truncated == 1
    # A long TCP message is segmented instead, never cut.
    big = PcapMessage(T0, src, 5060, dst, 5060, IPPROTO_TCP, b"c" * (limit + 1))
    frames = read_pcap(PcapEncoder().encode_all([big]))
    assert b"".join(f.payload for f in frames) == big.payload


def test_same_messages_give_the_same_file() -> None:
    messages = [PcapMessage(T0, "192.0.2.1", 5060, "192.0.2.2", 5060, IPPROTO_TCP, b"x" * 99)]
    assert PcapEncoder().encode_all(messages) == PcapEncoder().encode_all(messages)
    assert PcapEncoder().encode_all([]) == file_header()


def test_segment_size_is_checked() -> None:
    with pytest.raises(ValueError, match="tcp_segment_size"):
        PcapEncoder(tcp_segment_size=0)


SIP_INVITE = (
    "INVITE sip:bob@example.com SIP/2.0\r\n"
    "Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK-1\r\n"
    "From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n"
    "Call-ID: pcap-unit-1@192.0.2.1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
    "Content-Type: application/sdp\r\nContent-Length: {length}\r\n\r\n{body}"
)


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_tshark_reassembles_a_sip_message_split_over_tcp_segments(tmp_path: Path) -> None:
    body = "v=0\r\n" + "a=x-filler:" + "z" * 3000 + "\r\n"
    invite = SIP_INVITE.format(length=len(body), body=body).encode()
    ok = ("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK-2\r\n"
          "From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b1\r\n"
          "Call-ID: pcap-unit-2@2001:db8::1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    path = tmp_path / "call.pcap"
    path.write_bytes(PcapEncoder().encode_all([
        PcapMessage(T0, "192.0.2.1", 5060, "192.0.2.2", 5060, IPPROTO_TCP, invite),
        PcapMessage(T0 + 1000, "2001:db8::2", 5060, "2001:db8::1", 5060, IPPROTO_UDP,
                    ok.encode()),
    ]))
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "sip", "-T", "fields", "-e", "frame.number",
         "-e", "sip.Call-ID", "-e", "sip.Method", "-e", "sip.Status-Code",
         "-e", "ipv6.src"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout.splitlines()
    # The INVITE spans three segments and is shown once, on the segment that completes it.
    assert [line.split("\t")[1:] for line in out] == [
        ["pcap-unit-1@192.0.2.1", "INVITE", "", ""],
        ["pcap-unit-2@2001:db8::1", "", "200", "2001:db8::2"],
    ]
    assert out[0].split("\t")[0] == "3"


def test_rows_become_messages() -> None:
    from datetime import UTC, datetime

    row = {"create_date": datetime(2026, 12, 4, 4, 0, 0, 123456, tzinfo=UTC),
           "src_ip": ipaddress.ip_address("192.0.2.1"), "src_port": 5060,
           "dst_ip": ipaddress.ip_address("2001:db8::2"), "dst_port": None,
           "ip_proto": None, "payload": memoryview(b"OPTIONS")}
    message = message_from_row(row)
    assert message == PcapMessage(1_796_356_800_123_456, "192.0.2.1", 5060, "2001:db8::2", 0,
                                  IPPROTO_UDP, b"OPTIONS")
    assert message_from_row({**row, "src_ip": None}) is None
    assert message_from_row({**row, "src_port": 70000, "ip_proto": 6}) == PcapMessage(
        1_796_356_800_123_456, "192.0.2.1", 0, "2001:db8::2", 0, IPPROTO_TCP, b"OPTIONS")


def test_what_could_not_be_written_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.commands.analysis import report_pcap

    report_pcap(10, 0, 0)
    assert capsys.readouterr().err == ""
    report_pcap(10, 1, 2)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: 1 of 10 messages have no IP address and are not in the file",
        "warning: 2 UDP payloads longer than one IP packet holds were cut to fit",
    ]
