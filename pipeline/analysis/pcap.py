"""Captured messages as a libpcap file Wireshark, tshark and sngrep read. Pure: messages
in, bytes out (no I/O, no clock).

HEP keeps what a capture agent saw of a message (its payload, addresses, ports,
transport and capture time), not the packets that carried it. Each message becomes one
Ethernet frame again (LINKTYPE_ETHERNET, the link type every reader supports, with
fixed locally administered MAC addresses), carrying an IPv4 or IPv6 packet:

* UDP (and any transport that is not TCP, SCTP included): one datagram per message,
  however long; IP fragmentation is not rebuilt (readers take a large datagram as it
  is). A payload beyond what one IP packet can hold (65,507 bytes over IPv4, 65,527
  over IPv6) is cut to that size and counted in `PcapEncoder.truncated`.
* TCP: the message as segments of at most `tcp_segment_size` bytes, with one sequence
  number space per direction of each connection (addresses and ports), so the
  segments of a message and the messages of a connection follow each other as a
  reader's TCP reassembly expects. Every segment acknowledges what the other direction
  has sent so far. No handshake is invented: readers reassemble mid-stream captures.

IP, UDP and TCP checksums are computed, so no reader flags a frame as corrupt.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

#: IP protocol numbers (HEP chunk 0x0002).
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17

LINKTYPE_ETHERNET: Final = 1
#: libpcap's classic file format, microsecond timestamps, written little-endian.
PCAP_MAGIC: Final = 0xA1B2C3D4
SNAPLEN: Final = 262_144

DEFAULT_TCP_SEGMENT_SIZE: Final = 1460

_ETH_IPV4: Final = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
_ETH_IPV6: Final = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x86\xdd"
_IPV4_HEADER: Final = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HEADER: Final = struct.Struct("!IHBB16s16s")
_UDP_HEADER: Final = struct.Struct("!HHHH")
_TCP_HEADER: Final = struct.Struct("!HHIIHHHH")
_RECORD_HEADER: Final = struct.Struct("<IIII")
_IP_MAX: Final = 65_535
_TCP_PSH_ACK: Final = 0x18
_TCP_ACK: Final = 0x10
_TCP_WINDOW: Final = 65_535
_TTL: Final = 64

#: Largest UDP payload one packet carries (IP total length / IPv6 payload length).
MAX_UDP_PAYLOAD_IPV4: Final = _IP_MAX - 20 - 8
MAX_UDP_PAYLOAD_IPV6: Final = _IP_MAX - 8


@dataclass(frozen=True, slots=True)
class PcapMessage:
    """One captured message: when (µs since the epoch), from where, to where, how."""

    time_us: int
    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int
    ip_proto: int
    payload: bytes


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def message_from_row(row: Mapping[str, Any]) -> PcapMessage | None:
    """A stored message (create_date, src_ip, src_port, dst_ip, dst_port, ip_proto,
    payload) as a `PcapMessage`; None when it has no address to put in a packet."""
    if row["src_ip"] is None or row["dst_ip"] is None:
        return None
    return PcapMessage(
        time_us=(row["create_date"] - _EPOCH) // _MICROSECOND,
        src_ip=str(row["src_ip"]),
        src_port=_port(row["src_port"]),
        dst_ip=str(row["dst_ip"]),
        dst_port=_port(row["dst_port"]),
        ip_proto=row["ip_proto"] or IPPROTO_UDP,
        payload=bytes(row["payload"]),
    )


def _port(value: int | None) -> int:
    return value if value is not None and 0 <= value <= 0xFFFF else 0


def file_header(snaplen: int = SNAPLEN) -> bytes:
    """The pcap global header: version 2.4, UTC, Ethernet frames."""
    return struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)


def internet_checksum(data: bytes) -> int:
    """RFC 1071: the one's complement of the one's complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _addresses(src: str, dst: str) -> tuple[_Address, _Address]:
    """Both addresses in one family: IPv4 beside IPv6 becomes IPv4-mapped IPv6."""
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version != b.version:
        a, b = (ipaddress.IPv6Address(f"::ffff:{x}") if x.version == 4 else x for x in (a, b))
    return a, b


@dataclass(slots=True)
class _Direction:
    next_seq: int


class PcapEncoder:
    """Messages, in capture order, to pcap records; holds the TCP sequence numbers.

    `file_header()` starts the file; `encode(message)` returns the records of one
    message. `frames` counts the records written and `truncated` the UDP payloads cut.
    """

    def __init__(self, *, tcp_segment_size: int = DEFAULT_TCP_SEGMENT_SIZE) -> None:
        if not 1 <= tcp_segment_size <= _IP_MAX - 40 - 20:
            raise ValueError(f"tcp_segment_size out of range: {tcp_segment_size}")
        self._segment = tcp_segment_size
        self._directions: dict[tuple[bytes, int, bytes, int], _Direction] = {}
        self._ip_id = 0
        self.frames = 0
        self.truncated = 0

    def encode(self, message: PcapMessage) -> bytes:
        src, dst = _addresses(message.src_ip, message.dst_ip)
        if message.ip_proto == IPPROTO_TCP:
            return self._tcp(message, src, dst)
        payload = message.payload
        limit = MAX_UDP_PAYLOAD_IPV4 if src.version == 4 else MAX_UDP_PAYLOAD_IPV6
        if len(payload) > limit:
            payload = payload[:limit]
            self.truncated += 1
        header = _UDP_HEADER.pack(message.src_port, message.dst_port, 8 + len(payload), 0)
        checksum = internet_checksum(_pseudo_header(src, dst, IPPROTO_UDP, 8 + len(payload))
                                     + header + payload) or 0xFFFF
        udp = header[:6] + struct.pack("!H", checksum) + payload
        return self._frame(message.time_us, src, dst, IPPROTO_UDP, udp)

    def encode_all(self, messages: Iterable[PcapMessage]) -> bytes:
        """A whole pcap file of `messages`."""
        return file_header() + b"".join(self.encode(m) for m in messages)

    def _direction(self, src: _Address, sport: int, dst: _Address,
                   dport: int) -> _Direction:
        key = (src.packed, sport, dst.packed, dport)
        state = self._directions.get(key)
        if state is None:
            # A stable initial sequence number per direction: the same rows give the
            # same file, and directions do not share a sequence space.
            isn = zlib.crc32(key[0] + key[2] + struct.pack("!HH", sport, dport))
            state = self._directions[key] = _Direction(isn)
        return state

    def _tcp(self, message: PcapMessage, src: _Address, dst: _Address) -> bytes:
        sport, dport = message.src_port, message.dst_port
        sending = self._direction(src, sport, dst, dport)
        ack = self._direction(dst, dport, src, sport).next_seq
        payload = message.payload
        pieces = [payload[i:i + self._segment]
                  for i in range(0, len(payload), self._segment)] or [b""]
        out = []
        for n, piece in enumerate(pieces):
            flags = _TCP_PSH_ACK if n == len(pieces) - 1 else _TCP_ACK
            header = _TCP_HEADER.pack(sport, dport, sending.next_seq, ack, (5 << 12) | flags,
                                      _TCP_WINDOW, 0, 0)
            checksum = internet_checksum(_pseudo_header(src, dst, IPPROTO_TCP, 20 + len(piece))
                                         + header + piece)
            segment = header[:16] + struct.pack("!H", checksum) + header[18:] + piece
            out.append(self._frame(message.time_us, src, dst, IPPROTO_TCP, segment))
            sending.next_seq = (sending.next_seq + len(piece)) & 0xFFFFFFFF
        return b"".join(out)

    def _frame(self, time_us: int, src: _Address, dst: _Address, proto: int,
               transport: bytes) -> bytes:
        if src.version == 4:
            self._ip_id = (self._ip_id + 1) & 0xFFFF
            header = _IPV4_HEADER.pack(0x45, 0, 20 + len(transport), self._ip_id, 0x4000, _TTL,
                                       proto, 0, src.packed, dst.packed)
            header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
            frame = _ETH_IPV4 + header + transport
        else:
            header = _IPV6_HEADER.pack(6 << 28, len(transport), proto, _TTL, src.packed,
                                       dst.packed)
            frame = _ETH_IPV6 + header + transport
        self.frames += 1
        seconds, micros = divmod(max(time_us, 0), 1_000_000)
        return _RECORD_HEADER.pack(seconds & 0xFFFFFFFF, micros, len(frame), len(frame)) + frame


def _pseudo_header(src: _Address, dst: _Address, proto: int, length: int) -> bytes:
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, proto, length)
    return src.packed + dst.packed + struct.pack("!IxxxB", length, proto)
