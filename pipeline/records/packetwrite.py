"""HepPacket -> Avro single-object bytes in one step, for the receiver.

`codec.encode(packet_to_record(...))` builds a 26-key dict and then walks it with the
generic writer. `PacketEncoder.encode` writes the same bytes straight from the
HepPacket, field by field in the writer schema's order. This is the readable
reference; the receiver runs the compiled version in pipeline/_speedups.pyx when it is
built (see pipeline/accel.py). The unit tests check byte equality with the generic path
and with the compiled encoder over the vectors and hypothesis-generated packets.

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


def _optional_long(value: int | None) -> bytes:
    """A ["null", "int"] or ["null", "long"] field."""
    return _NULL if value is None else b"\x02" + varint(value)


def _optional_string(value: str | None) -> bytes:
    return _NULL if value is None else b"\x02" + _string(value)


class PacketEncoder:
    """Writes a HepPacket as the codec's writer schema would, without the dict."""

    __slots__ = ("_header",)

    def __init__(self, header: bytes) -> None:
        self._header = header

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
        from_receiver = packet.ts_sec == 0
        if from_receiver:
            capture_time = receive_time_us
        else:
            capture_time = packet.ts_sec * 1_000_000 + packet.ts_usec
        if packet.auth_key is None:
            auth = b"\x00\x00"  # auth_key_present false, auth_key null
        elif context.forward_auth_key:
            auth = _TRUE + _optional_string(packet.auth_key.decode("utf-8", "replace"))
        else:
            auth = _TRUE + _NULL
        out = bytearray(self._header)
        out += record_id
        out += varint(packet.version)
        out += _optional_long(packet.ip_family)
        out += _optional_long(packet.ip_proto)
        out += _optional_string(packet.src_ip)
        out += _optional_string(packet.dst_ip)
        out += _optional_long(packet.src_port)
        out += _optional_long(packet.dst_port)
        out += varint(capture_time)
        out += _TRUE if from_receiver else _FALSE
        out += _optional_long(packet.proto_type)
        out += _optional_long(packet.capture_id)
        out += _optional_long(packet.keep_alive)
        out += auth
        out += _optional_string(packet.correlation_id)
        out += _optional_long(packet.vlan)
        out += _optional_string(packet.node_name)
        out += varint(len(packet.payload)) + packet.payload
        out += _TRUE if packet.payload_was_compressed else _FALSE
        # An Avro array: one block holding every item, then the empty block that ends it.
        if packet.extra_chunks:
            out += varint(len(packet.extra_chunks))
            for chunk in packet.extra_chunks:
                out += varint(chunk.vendor) + varint(chunk.type)
                out += varint(len(chunk.value)) + chunk.value
        out += _NULL
        out += varint(receive_time_us)
        out += _string(context.transport)
        out += _string(context.sender_ip)
        out += varint(context.sender_port)
        out += _string(context.receiver_id)
        return bytes(out)


def packet_encoder(
    codec: RecordCodec,
) -> Callable[[HepPacket, bytes, int, ReceiveContext], bytes] | None:
    """The direct encoder for `codec`'s writer schema, or None if its layout differs."""
    if not _matches_layout(codec.writer.parsed):
        return None
    return PacketEncoder(codec.header).encode
