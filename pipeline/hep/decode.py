"""Pure HEP decoder: bytes in, HepPacket out, HepDecodeError for anything malformed.

Decisions that are not forced by the specification:

* Dispatch is on the first byte: ``H`` (``HEP3``) or ``E`` (``EEP1``, the alias that
  Kamailio's sipcapture also accepts) is HEPv3, 1 and 2 are HEPv1/HEPv2.
* HEPv3 trailing bytes: only the ``total length`` bytes declared in the header are
  decoded; anything after them in a datagram is ignored. The declared length is the
  framing rule on TCP too, and bytes past it cannot be chunks of this packet. A declared
  length larger than the data is ``truncated`` (typically a receive buffer too small).
* Duplicate generic chunks are ``duplicate_chunk``: the same generic type twice (or
  both payload chunks, 0x000f and 0x0010) leaves two values for one field, and agents
  never send it (none of the real captures does), so the packet is refused rather
  than one value picked silently. Vendor chunks may repeat: their meaning is the
  vendor's, and they are all kept in ``extra_chunks``.
* Bounded work per packet: at most ``MAX_CHUNKS`` chunks (``too_many_chunks``), each
  generic type at most once, a compressed payload inflated to at most
  ``MAX_INFLATED_PAYLOAD`` bytes (``payload_too_large``), and at most
  ``MAX_PACKET_SIZE`` bytes of input (``too_large``). A 60 KB packet of 10,000 empty
  chunks is refused after at most ``MAX_CHUNKS`` of them instead of costing ~40 ms.
* When both IPv4 and IPv6 address chunks are present, the family chunk picks (10 ->
  IPv6); otherwise IPv4 is preferred. The family value itself is reported as sent: some
  agents send a wrong one, and consumers may want to see that.
* HEPv1/v2: the header-length byte is ignored; Kamailio fills it inconsistently (16 for
  a 28-byte v2 IPv4 header), so the address size is derived from the family byte.
* Nothing but HepDecodeError escapes, whatever the input bytes.
"""

from __future__ import annotations

import struct
import zlib
from socket import AF_INET, AF_INET6, inet_ntop

from pipeline.hep.chunks import DEDICATED_TYPES, FIXED_BODY_SIZES
from pipeline.hep.errors import HepDecodeError
from pipeline.hep.packet import HepChunk, HepPacket

__all__ = ["MAX_CHUNKS", "MAX_INFLATED_PAYLOAD", "MAX_PACKET_SIZE", "decode_packet"]

# A compressed payload larger than this after inflation is rejected: a few hundred bytes
# of deflate can expand to gigabytes. An uncompressed payload chunk holds at most
# 65,529 bytes; 256 KiB leaves room for a SIP message compressed 4:1 into one datagram
# and keeps every record well under the smallest producer request size the
# receiver configures (1 MiB).
MAX_INFLATED_PAYLOAD = 1 << 18

# Chunks per HEPv3 packet. Real agents send 11 to 15 (Kamailio 11; 14 at most in the
# captures here, with correlation id and auth key); REV 37 defines 34 generic types,
# each allowed once, and vendors add a handful. 64 holds every generic type plus 30
# vendor chunks, over four times what any capture carries, and caps a packet's
# decoding work at 64 chunks (~50 us of Python; each kept chunk costs ~0.8 us).
MAX_CHUNKS = 64

# Input a HEPv1/v2 packet may have. HEPv3 declares its length in a u16 and nothing past
# it is read; a HEPv1/v2 datagram is at most 65,507 bytes, and over TCP it is a header
# of at most 52 bytes and one SIP message, which agents cap at 64 KiB. Twice that
# leaves room and still bounds the one copy decoding makes.
MAX_PACKET_SIZE = 1 << 17

_chunk_header = struct.Struct(">HHH").unpack_from
_u32 = struct.Struct(">I").unpack_from
_v2_time = struct.Struct("<IIH").unpack_from

_MAGIC_HEP3 = 0x48455033  # b"HEP3"
_MAGIC_EEP1 = 0x45455031  # b"EEP1"


def _build_spec() -> dict[int, int]:
    # One dict lookup per generic chunk decides both its fate and its size check:
    #   n > 0   dedicated field, chunk length must be n
    #   0       dedicated field, any length
    #   n < 0   extra_chunks, chunk length must be -n
    #   absent  extra_chunks, any length
    spec: dict[int, int] = {}
    for ctype in DEDICATED_TYPES:
        size = FIXED_BODY_SIZES.get(ctype)
        spec[ctype] = 0 if size is None else size + 6
    for ctype, size in FIXED_BODY_SIZES.items():
        if ctype not in DEDICATED_TYPES:
            spec[ctype] = -(size + 6)
    return spec


_SPEC = _build_spec()
# `seen` is indexed by chunk type; every dedicated type is below 0x14.
_DEDICATED_SLOTS = max(DEDICATED_TYPES) + 1


def _ipv4(data: bytes | memoryview, off: int) -> str:
    return inet_ntop(AF_INET, data[off : off + 4])


def decode_packet(data: bytes | memoryview) -> HepPacket:
    """Decode one HEP packet (HEPv3, or HEPv1/HEPv2) from a datagram or a TCP frame.

    A memoryview must be one-dimensional with byte items (the default for bytes and
    bytearray buffers).
    """
    n = len(data)
    if n == 0:
        raise HepDecodeError("truncated", "empty input")
    first = data[0]
    if first == 0x48 or first == 0x45:
        # Bytes past the declared total length (at most 65535) are never read.
        return _decode_v3(data, n)
    if first == 1 or first == 2:
        if n > MAX_PACKET_SIZE:
            raise HepDecodeError("too_large", f"{n} bytes, at most {MAX_PACKET_SIZE}")
        return _decode_v1v2(data, n, first)
    raise HepDecodeError("bad_magic", f"first byte 0x{first:02x}")


def _decode_v3(data: bytes | memoryview, n: int) -> HepPacket:
    if n < 6:
        head = bytes(data[: min(n, 4)])
        if b"HEP3".startswith(head) or b"EEP1".startswith(head):
            raise HepDecodeError("truncated", f"{n} bytes, HEP3 header needs 6")
        raise HepDecodeError("bad_magic", f"magic {head!r}")
    magic = _u32(data, 0)[0]
    if magic != _MAGIC_HEP3 and magic != _MAGIC_EEP1:
        raise HepDecodeError("bad_magic", f"magic 0x{magic:08x}")
    end = data[4] << 8 | data[5]
    if end < 6:
        raise HepDecodeError("bad_length", f"total length {end} < 6")
    if end > n:
        raise HepDecodeError("truncated", f"total length {end} > {n} bytes received")

    # Chunk offsets of dedicated chunks indexed by type (a second one is
    # duplicate_chunk); their values are read after the loop.
    seen: list[int | None] = [None] * _DEDICATED_SLOTS
    order: list[tuple[int, int, int]] = []
    extra: list[HepChunk] = []
    extra_generic: set[int] = set()
    off = 6
    while off < end:
        if end - off < 6:
            raise HepDecodeError("bad_chunk_length", f"{end - off} stray bytes at {off}")
        if len(order) == MAX_CHUNKS:
            raise HepDecodeError(
                "too_many_chunks", f"more than {MAX_CHUNKS} chunks, stopped at offset {off}"
            )
        vendor, ctype, clen = _chunk_header(data, off)
        nxt = off + clen
        if clen < 6 or nxt > end:
            raise HepDecodeError(
                "bad_chunk_length", f"chunk 0x{vendor:04x}:0x{ctype:04x} length {clen} at {off}"
            )
        order.append((vendor, ctype, clen))
        if vendor == 0:
            want = _SPEC.get(ctype)
            if want == clen or want == 0:
                if seen[ctype] is not None:
                    raise HepDecodeError("duplicate_chunk", f"chunk 0x{ctype:04x} again at {off}")
                seen[ctype] = off
            elif want is None or want == -clen:
                if ctype in extra_generic:
                    raise HepDecodeError("duplicate_chunk", f"chunk 0x{ctype:04x} again at {off}")
                extra_generic.add(ctype)
                extra.append(HepChunk(0, ctype, bytes(data[off + 6 : nxt])))
            else:
                raise HepDecodeError(
                    "bad_fixed_size",
                    f"chunk 0x{ctype:04x} body {clen - 6} bytes, expected {abs(want) - 6}",
                )
        else:
            # Vendors reuse generic type numbers with other meanings: never a field.
            extra.append(HepChunk(vendor, ctype, bytes(data[off + 6 : nxt])))
        off = nxt

    o = seen[1]
    family = data[o + 6] if o is not None else None
    o = seen[2]
    ip_proto = data[o + 6] if o is not None else None

    src_ip = dst_ip = None
    o4 = seen[3]
    o6 = seen[5]
    if o4 is not None and (o6 is None or family != 10):
        src_ip = _ipv4(data, o4 + 6)
    elif o6 is not None:
        src_ip = inet_ntop(AF_INET6, data[o6 + 6 : o6 + 22])
    o4 = seen[4]
    o6 = seen[6]
    if o4 is not None and (o6 is None or family != 10):
        dst_ip = _ipv4(data, o4 + 6)
    elif o6 is not None:
        dst_ip = inet_ntop(AF_INET6, data[o6 + 6 : o6 + 22])

    o = seen[7]
    src_port = data[o + 6] << 8 | data[o + 7] if o is not None else None
    o = seen[8]
    dst_port = data[o + 6] << 8 | data[o + 7] if o is not None else None
    o = seen[9]
    ts_sec = _u32(data, o + 6)[0] if o is not None else 0
    o = seen[10]
    ts_usec = _u32(data, o + 6)[0] if o is not None else 0
    o = seen[11]
    proto_type = data[o + 6] if o is not None else None
    o = seen[12]
    capture_id = _u32(data, o + 6)[0] if o is not None else None
    o = seen[13]
    keep_alive = data[o + 6] << 8 | data[o + 7] if o is not None else None
    o = seen[18]
    vlan = data[o + 6] << 8 | data[o + 7] if o is not None else None

    o = seen[14]
    auth_key = bytes(data[o + 6 : o + (data[o + 4] << 8 | data[o + 5])]) if o is not None else None
    o = seen[17]
    correlation_id = (
        str(data[o + 6 : o + (data[o + 4] << 8 | data[o + 5])], "utf-8", "replace")
        if o is not None
        else None
    )
    o = seen[19]
    node_name = (
        str(data[o + 6 : o + (data[o + 4] << 8 | data[o + 5])], "utf-8", "replace")
        if o is not None
        else None
    )

    payload = b""
    compressed = False
    o = seen[15]
    oz = seen[16]
    if oz is not None:
        if o is not None:
            raise HepDecodeError("duplicate_chunk", "both payload chunks, 0x000f and 0x0010")
        payload = _inflate(data[oz + 6 : oz + (data[oz + 4] << 8 | data[oz + 5])])
        compressed = True
    elif o is not None:
        payload = bytes(data[o + 6 : o + (data[o + 4] << 8 | data[o + 5])])

    return HepPacket(
        version=3,
        ip_family=family,
        ip_proto=ip_proto,
        src_ip=src_ip,
        dst_ip=dst_ip,
        src_port=src_port,
        dst_port=dst_port,
        ts_sec=ts_sec,
        ts_usec=ts_usec,
        proto_type=proto_type,
        capture_id=capture_id,
        keep_alive=keep_alive,
        auth_key=auth_key,
        payload=payload,
        payload_was_compressed=compressed,
        correlation_id=correlation_id,
        vlan=vlan,
        node_name=node_name,
        extra_chunks=extra,
        chunk_order=order,
    )


def _inflate(body: bytes | memoryview) -> bytes:
    """Inflate chunk 0x0010: gzip, zlib or raw deflate, as agents differ."""
    if len(body) >= 2 and body[0] == 0x1F and body[1] == 0x8B:
        wbits = 31
    elif len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0:
        wbits = 15
    else:
        wbits = -15
    try:
        out, eof = _inflate_with(body, wbits)
    except zlib.error as exc:
        if wbits != 15:
            raise HepDecodeError("bad_compressed_payload", str(exc)) from None
        # A raw deflate stream can look like a zlib header by chance (1 in ~500).
        try:
            out, eof = _inflate_with(body, -15)
        except zlib.error as exc2:
            raise HepDecodeError("bad_compressed_payload", str(exc2)) from None
    if len(out) > MAX_INFLATED_PAYLOAD:
        raise HepDecodeError("payload_too_large", f"inflates past {MAX_INFLATED_PAYLOAD} bytes")
    if not eof:
        raise HepDecodeError("bad_compressed_payload", "incomplete compressed stream")
    return out


def _inflate_with(body: bytes | memoryview, wbits: int) -> tuple[bytes, bool]:
    d = zlib.decompressobj(wbits)
    # max_length bounds the memory a decompression bomb can claim.
    out = d.decompress(body, MAX_INFLATED_PAYLOAD + 1)
    return out, d.eof


def _decode_v1v2(data: bytes | memoryview, n: int, version: int) -> HepPacket:
    if n < 8:
        raise HepDecodeError("truncated", f"{n} bytes, HEPv{version} header needs 8+")
    family = data[2]
    if family == 2:
        alen = 4
        af = AF_INET
    elif family == 10:
        alen = 16
        af = AF_INET6
    else:
        raise HepDecodeError("bad_address_family", f"HEPv{version} family {family}")
    addr_end = 8 + 2 * alen
    hlen = addr_end + 12 if version == 2 else addr_end
    if n < hlen:
        raise HepDecodeError("truncated", f"{n} bytes, HEPv{version} header needs {hlen}")
    if version == 2:
        # Kamailio writes the time header in host order (little-endian in practice).
        ts_sec, ts_usec, capture_id = _v2_time(data, addr_end)
    else:
        ts_sec = ts_usec = 0
        capture_id = None
    return HepPacket(
        version=version,
        ip_family=family,
        ip_proto=data[3],
        src_ip=inet_ntop(af, data[8 : 8 + alen]),
        dst_ip=inet_ntop(af, data[8 + alen : addr_end]),
        src_port=data[4] << 8 | data[5],
        dst_port=data[6] << 8 | data[7],
        ts_sec=ts_sec,
        ts_usec=ts_usec,
        capture_id=capture_id,
        payload=bytes(data[hlen:n]),
    )
