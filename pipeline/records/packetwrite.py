"""HepPacket -> Avro single-object bytes in one step, for the receiver's hot path.

`codec.encode(packet_to_record(...))` builds a 26-key dict and then walks it with the
compiled writer (~8 us per packet). `PacketEncoder.encode` writes the same bytes
straight from the HepPacket (~2 us): small integers come from precomputed varint
tables, the two timestamps reuse the encoding of their high bits (which change every
~8 ms), addresses and the per-sender tail (transport, sender ip/port, receiver id) are
encoded once and cached. The unit tests check byte equality with the generic path
over the vectors and hypothesis-generated packets.

It is tied to the field order of the writer schema: `packet_encoder(codec)` returns
None when the codec's writer schema is not the layout this module was written for,
and callers then use the generic path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.hep.packet import HepPacket
from pipeline.records.codec import RecordCodec
from pipeline.records.mapping import ReceiveContext

# (name, Avro type) of every field of the writer schema, in order.
_LAYOUT: tuple[tuple[str, Any], ...] = (
    ("record_id", {"type": "fixed", "size": 16}),
    ("hep_version", "int"),
    ("ip_family", ["null", "int"]),
    ("ip_proto", ["null", "int"]),
    ("src_ip", ["null", "string"]),
    ("dst_ip", ["null", "string"]),
    ("src_port", ["null", "int"]),
    ("dst_port", ["null", "int"]),
    ("capture_time", "long"),
    ("capture_time_from_receiver", "boolean"),
    ("proto_type", ["null", "int"]),
    ("capture_id", ["null", "long"]),
    ("keep_alive", ["null", "int"]),
    ("auth_key_present", "boolean"),
    ("auth_key", ["null", "string"]),
    ("correlation_id", ["null", "string"]),
    ("vlan", ["null", "int"]),
    ("node_name", ["null", "string"]),
    ("payload", "bytes"),
    ("payload_was_compressed", "boolean"),
    ("extra_chunks", {"type": "array", "items": ("int", "int", "bytes")}),
    ("receive_time", "long"),
    ("transport", "string"),
    ("sender_ip", "string"),
    ("sender_port", "int"),
    ("receiver_id", "string"),
)

_TABLE_SIZE = 1 << 16  # ports, vlan, chunk types and lengths of ordinary payloads
_CONTEXT_CACHE_LIMIT = 4096
_HIGH_CACHE_LIMIT = 1024
_TEXT_CACHE_LIMIT = 4096
_NULL = b"\x00"
_TRUE = b"\x01"
_FALSE = b"\x00"


def varint(value: int) -> bytes:
    """Avro long: zigzag, then little-endian base-128."""
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string(value: str) -> bytes:
    encoded = value.encode("utf-8")
    return varint(len(encoded)) + encoded


def _shape(avro_type: Any) -> Any:
    """A parsed Avro type reduced to what _LAYOUT spells (logical types dropped)."""
    if isinstance(avro_type, list):
        return [_shape(t) for t in avro_type]
    if isinstance(avro_type, dict):
        kind = avro_type["type"]
        if kind == "fixed":
            return {"type": "fixed", "size": avro_type["size"]}
        if kind == "array":
            items = avro_type["items"]
            if isinstance(items, dict) and items.get("type") == "record":
                return {
                    "type": "array",
                    "items": tuple(_shape(f["type"]) for f in items["fields"]),
                }
            return {"type": "array", "items": _shape(items)}
        if kind == "record":
            return kind
        return kind  # a primitive with a logical type
    return avro_type


def _matches_layout(parsed: Any) -> bool:
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        return False
    fields = [(f["name"], _shape(f["type"])) for f in parsed.get("fields", [])]
    return fields == list(_LAYOUT)


class PacketEncoder:
    """Writes a HepPacket as the codec's writer schema would, without the dict."""

    __slots__ = ("_header", "_high", "_low14", "_nullable", "_tails", "_texts", "_varints")

    def __init__(self, header: bytes) -> None:
        self._header = header
        self._varints = tuple(varint(v) for v in range(_TABLE_SIZE))
        self._nullable = tuple(b"\x02" + v for v in self._varints)
        self._tails: dict[int, tuple[ReceiveContext, bytes]] = {}
        self._high: dict[int, bytes] = {}
        self._low14 = tuple(
            bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80)) for n in range(1 << 14)
        )
        self._texts: dict[str, bytes] = {}

    def _text(self, value: str) -> bytes:
        """The ["null", "string"] encoding of a non-null address, cached."""
        if len(self._texts) >= _TEXT_CACHE_LIMIT:
            self._texts.clear()
        encoded = self._texts[value] = b"\x02" + _string(value)
        return encoded

    def _tail(self, context: ReceiveContext) -> bytes:
        entry = self._tails.get(id(context))
        if entry is not None and entry[0] is context:
            return entry[1]
        if len(self._tails) >= _CONTEXT_CACHE_LIMIT:
            self._tails.clear()
        tail = (
            _string(context.transport)
            + _string(context.sender_ip)
            + varint(context.sender_port)
            + _string(context.receiver_id)
        )
        # The context is kept in the entry so that its id cannot be reused while cached.
        self._tails[id(context)] = (context, tail)
        return tail

    def _timestamp(self, value: int) -> bytes:
        """varint(value) for microsecond timestamps, reusing the encoding of the high bits.

        For n = zigzag(value) >= 2**14 the varint is the two low 7-bit groups (both with
        the continuation bit: a table of 2**14) followed by the base-128 of n >> 14,
        which changes every ~8 ms of a timestamp and is cached.
        """
        if value < 0:
            return varint(value)
        n = value << 1
        high = n >> 14
        if not high:
            return varint(value)
        encoded_high = self._high.get(high)
        if encoded_high is None:
            if len(self._high) >= _HIGH_CACHE_LIMIT:
                self._high.clear()
            encoded_high = self._high[high] = _raw(high)
        return self._low14[n & 0x3FFF] + encoded_high

    def encode(
        self,
        packet: HepPacket,
        record_id: bytes,
        receive_time_us: int,
        context: ReceiveContext,
    ) -> bytes:
        """The same bytes as codec.encode(packet_to_record(packet, ...))."""
        if len(record_id) != 16:
            raise ValueError(f"fixed field needs 16 bytes, got {len(record_id)}")
        ints = self._varints
        nints = self._nullable
        size = _TABLE_SIZE
        texts = self._texts
        out = bytearray(self._header)
        out += record_id
        # One local for the int fields, nullable or not (a bare annotation costs nothing).
        v: int | None
        v = packet.version
        out += ints[v] if 0 <= v < size else varint(v)
        # ["null", int] fields, unrolled: a loop over a tuple costs more than the writes.
        v = packet.ip_family
        out += _NULL if v is None else nints[v] if 0 <= v < size else b"\x02" + varint(v)
        v = packet.ip_proto
        out += _NULL if v is None else nints[v] if 0 <= v < size else b"\x02" + varint(v)
        # Addresses repeat from packet to packet: their encoding is cached.
        s = packet.src_ip
        if s is None:
            out += _NULL
        else:
            e = texts.get(s)
            if e is None:
                e = self._text(s)
            out += e
        s = packet.dst_ip
        if s is None:
            out += _NULL
        else:
            e = texts.get(s)
            if e is None:
                e = self._text(s)
            out += e
        v = packet.src_port
        out += _NULL if v is None else nints[v] if 0 <= v < size else b"\x02" + varint(v)
        v = packet.dst_port
        out += _NULL if v is None else nints[v] if 0 <= v < size else b"\x02" + varint(v)
        # _timestamp inlined for a cached high part (a miss, a negative or small value
        # takes the method: a negative n >> 14 or 0 is never a key of the cache).
        timestamp = self._timestamp
        high = self._high
        low14 = self._low14
        v = receive_time_us if packet.ts_sec == 0 else packet.ts_sec * 1_000_000 + packet.ts_usec
        n = v << 1
        e = high.get(n >> 14)
        out += low14[n & 0x3FFF] + e if e is not None else timestamp(v)
        out += _TRUE if packet.ts_sec == 0 else _FALSE
        v = packet.proto_type
        out += _NULL if v is None else nints[v] if 0 <= v < size else b"\x02" + varint(v)
        v = packet.capture_id
        out += _NULL if v is None else nints[v] if 0 <= v < size else b"\x02" + varint(v)
        v = packet.keep_alive
        out += _NULL if v is None else nints[v] if 0 <= v < size else b"\x02" + varint(v)
        auth_key = packet.auth_key
        if auth_key is None:
            out += b"\x00\x00"  # auth_key_present false, auth_key null
        elif context.forward_auth_key:
            out += _TRUE
            out += b"\x02" + _string(auth_key.decode("utf-8", "replace"))
        else:
            out += b"\x01\x00"
        s = packet.correlation_id
        out += _NULL if s is None else b"\x02" + _string(s)
        v = packet.vlan
        out += _NULL if v is None else nints[v] if 0 <= v < size else b"\x02" + varint(v)
        s = packet.node_name
        out += _NULL if s is None else b"\x02" + _string(s)
        payload = packet.payload
        n = len(payload)
        out += ints[n] if n < size else varint(n)
        out += payload
        out += _TRUE if packet.payload_was_compressed else _FALSE
        chunks = packet.extra_chunks
        if chunks:
            out += varint(len(chunks))
            for chunk in chunks:
                v = chunk.vendor
                out += ints[v] if 0 <= v < size else varint(v)
                v = chunk.type
                out += ints[v] if 0 <= v < size else varint(v)
                value = chunk.value
                n = len(value)
                out += ints[n] if n < size else varint(n)
                out += value
        out += _NULL  # end of the array
        n = receive_time_us << 1
        e = high.get(n >> 14)
        out += low14[n & 0x3FFF] + e if e is not None else timestamp(receive_time_us)
        entry = self._tails.get(id(context))
        out += entry[1] if entry is not None and entry[0] is context else self._tail(context)
        return bytes(out)


def _raw(n: int) -> bytes:
    """Base-128 of an already zigzagged non-negative n."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def packet_encoder(
    codec: RecordCodec,
) -> Callable[[HepPacket, bytes, int, ReceiveContext], bytes] | None:
    """The direct encoder for `codec`'s writer schema, or None if its layout differs."""
    if not _matches_layout(codec.writer.parsed):
        return None
    return PacketEncoder(codec.header).encode
