"""A small, strict libpcap reader for tests: Ethernet + IPv4/IPv6 + UDP/TCP.

Independent of pipeline.analysis.pcap on purpose (its own checksum code): it checks
every length and checksum and raises AssertionError on anything malformed.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Frame:
    time_us: int
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    ip_proto: int
    payload: bytes
    seq: int | None = None
    ack: int | None = None
    flags: int | None = None


def _checksum_ok(data: bytes) -> bool:
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def read_pcap(data: bytes) -> list[Frame]:
    magic, major, minor, _, _, snaplen, linktype = struct.unpack_from("<IHHiIII", data)
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, 1)
    frames = []
    offset = 24
    while offset < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, offset)
        assert incl == orig and incl <= snaplen and usec < 1_000_000
        offset += 16
        frame = data[offset:offset + incl]
        assert len(frame) == incl
        offset += incl
        frames.append(_parse_frame(sec * 1_000_000 + usec, frame))
    return frames


def _parse_frame(time_us: int, frame: bytes) -> Frame:
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    packet = frame[14:]
    if ethertype == 0x0800:
        assert packet[0] == 0x45
        total, proto = struct.unpack_from("!H", packet, 2)[0], packet[9]
        assert total == len(packet) and _checksum_ok(packet[:20])
        src, dst = ipaddress.IPv4Address(packet[12:16]), ipaddress.IPv4Address(packet[16:20])
        pseudo = packet[12:20] + struct.pack("!BBH", 0, proto, total - 20)
        body = packet[20:]
    else:
        assert ethertype == 0x86DD and packet[0] >> 4 == 6
        length, proto = struct.unpack_from("!HB", packet, 4)
        assert length == len(packet) - 40
        src, dst = ipaddress.IPv6Address(packet[8:24]), ipaddress.IPv6Address(packet[24:40])
        pseudo = packet[8:40] + struct.pack("!IxxxB", length, proto)
        body = packet[40:]
    assert _checksum_ok(pseudo + body), "transport checksum"
    if proto == 17:
        sport, dport, length, checksum = struct.unpack_from("!HHHH", body)
        assert length == len(body) and checksum != 0
        return Frame(time_us, str(src), sport, str(dst), dport, 17, body[8:])
    assert proto == 6
    sport, dport, seq, ack, offset_flags = struct.unpack_from("!HHIIH", body)
    assert offset_flags >> 12 == 5
    return Frame(time_us, str(src), sport, str(dst), dport, 6, body[20:], seq, ack,
                 offset_flags & 0x3F)


def tcp_streams(frames: list[Frame]) -> dict[tuple[str, int, str, int], bytes]:
    """Each TCP direction's bytes in sequence order; asserts there is no gap or overlap."""
    segments: dict[tuple[str, int, str, int], list[Frame]] = defaultdict(list)
    for f in frames:
        if f.ip_proto == 6:
            segments[(f.src_ip, f.src_port, f.dst_ip, f.dst_port)].append(f)
    streams = {}
    for key, parts in segments.items():
        expected = parts[0].seq
        data = b""
        for part in parts:
            assert part.seq == expected, (key, part.seq, expected)
            data += part.payload
            expected = (expected + len(part.payload)) & 0xFFFFFFFF  # type: ignore[operator]
        streams[key] = data
    return streams
