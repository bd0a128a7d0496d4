"""HEPv3 encoder: the inverse of decode_packet for tests, benchmarks and a send tool.

Chunks are written in the order Kamailio uses (family, proto, addresses, ports,
timestamps, proto type, capture id, ...), then ``extra_chunks`` in list order, then the
payload last. For every packet whose fields fit their wire types,
``decode_packet(encode_hep3(p))`` equals ``p`` apart from ``chunk_order``; the
exceptions are ``extra_chunks`` that are generic chunks with a dedicated field (the
decoder turns them back into that field) and IP strings not in canonical form.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib

from pipeline.hep.packet import HepPacket

__all__ = ["encode_hep3"]

_chunk_header = struct.Struct(">HHH").pack
_u8 = struct.Struct(">B").pack
_u16 = struct.Struct(">H").pack
_u32 = struct.Struct(">I").pack


def encode_hep3(packet: HepPacket) -> bytes:
    """Serialise every non-None field of `packet` as a HEPv3 packet.

    ``ts_sec``/``ts_usec`` are written unless both are 0 (the decoder reads an absent
    timestamp as 0). A ``payload_was_compressed`` packet gets its payload zlib-compressed
    into chunk 0x0010. Raises ValueError when a field does not fit its chunk or the
    packet exceeds 65535 bytes.
    """
    parts: list[bytes] = []
    add = parts.append
    try:
        if packet.ip_family is not None:
            add(_chunk(0, 0x0001, _u8(packet.ip_family)))
        if packet.ip_proto is not None:
            add(_chunk(0, 0x0002, _u8(packet.ip_proto)))
        if packet.src_ip is not None:
            add(_address(packet.src_ip, 0x0003, 0x0005))
        if packet.dst_ip is not None:
            add(_address(packet.dst_ip, 0x0004, 0x0006))
        if packet.src_port is not None:
            add(_chunk(0, 0x0007, _u16(packet.src_port)))
        if packet.dst_port is not None:
            add(_chunk(0, 0x0008, _u16(packet.dst_port)))
        if packet.ts_sec or packet.ts_usec:
            add(_chunk(0, 0x0009, _u32(packet.ts_sec)))
            add(_chunk(0, 0x000A, _u32(packet.ts_usec)))
        if packet.proto_type is not None:
            add(_chunk(0, 0x000B, _u8(packet.proto_type)))
        if packet.capture_id is not None:
            add(_chunk(0, 0x000C, _u32(packet.capture_id)))
        if packet.keep_alive is not None:
            add(_chunk(0, 0x000D, _u16(packet.keep_alive)))
        if packet.auth_key is not None:
            add(_chunk(0, 0x000E, packet.auth_key))
        if packet.correlation_id is not None:
            add(_chunk(0, 0x0011, packet.correlation_id.encode()))
        if packet.vlan is not None:
            add(_chunk(0, 0x0012, _u16(packet.vlan)))
        if packet.node_name is not None:
            add(_chunk(0, 0x0013, packet.node_name.encode()))
        for extra in packet.extra_chunks:
            add(_chunk(extra.vendor, extra.type, extra.value))
        if packet.payload_was_compressed:
            add(_chunk(0, 0x0010, zlib.compress(packet.payload)))
        elif packet.payload:
            add(_chunk(0, 0x000F, packet.payload))
    except struct.error as exc:
        raise ValueError(f"field out of range for its HEP chunk: {exc}") from None
    total = 6 + sum(len(p) for p in parts)
    if total > 0xFFFF:
        raise ValueError(f"HEP3 packet would be {total} bytes, the limit is 65535")
    return b"HEP3" + _u16(total) + b"".join(parts)


def _chunk(vendor: int, ctype: int, body: bytes) -> bytes:
    # struct.error on a body over 65529 bytes, turned into ValueError by the caller.
    return _chunk_header(vendor, ctype, 6 + len(body)) + body


def _address(text: str, v4_type: int, v6_type: int) -> bytes:
    addr = ipaddress.ip_address(text)
    return _chunk(0, v4_type if addr.version == 4 else v6_type, addr.packed)
