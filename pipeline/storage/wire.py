"""Capture rows in PostgreSQL's binary COPY form: the readable reference.

A row's values (`pipeline.storage.rows.COLUMNS` order) become one binary COPY tuple:
an int16 field count, then per field an int32 length (-1 for NULL) and the value in
PostgreSQL's binary send format:

    smallint / integer / bigint   big-endian two's complement, 2 / 4 / 8 bytes
    timestamptz                   int64 microseconds since 2000-01-01 00:00 UTC
    inet                          family (2 IPv4, 3 IPv6), prefix bits, is_cidr (0),
                                  address length, address bytes
    uuid                          the 16 bytes
    text                          UTF-8
    bytea                         the bytes
    jsonb                         version byte 1, then the JSON text (custom_headers)
    json                          the JSON text

The consumer encodes each row once, where it builds it (`pipeline.storage.batch`,
compiled in `pipeline._speedups`), and the sink writes the tuples as they are: no
per-value conversion in asyncpg, no `ipaddress` parsing per address.

Whether the two HOMER header columns are json or jsonb is read from the catalog when
the sink starts (`WireFormat`), not assumed.
"""

from __future__ import annotations

import ipaddress
import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from pipeline.storage.rows import COLUMNS

#: The binary COPY stream's signature, flags (0) and header extension length (0).
COPY_HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
#: The field count -1 that ends a binary COPY stream.
COPY_TRAILER: Final = b"\xff\xff"

# The PostgreSQL type of each column that is not text ("header": json or jsonb, as the
# catalog says).
_NOT_TEXT: Final[dict[str, str]] = {
    "create_date": "timestamptz",
    "protocol_header": "header",
    "data_header": "header",
    "raw_bytes": "bytea",
    "record_id": "uuid",
    "hep_version": "int2",
    "hep_type": "int2",
    "capture_id": "int8",
    "ip_family": "int2",
    "ip_proto": "int2",
    "src_ip": "inet",
    "src_port": "int4",
    "dst_ip": "inet",
    "dst_port": "int4",
    "vlan": "int4",
    "receive_time": "timestamptz",
    "status": "int2",
    "cseq_num": "int8",
    "expires": "int4",
    "kafka_partition": "int4",
    "kafka_offset": "int8",
    "custom_headers": "jsonb",
}
#: The kind of each column's binary value, in COLUMNS order.
COLUMN_KINDS: Final[tuple[str, ...]] = tuple(_NOT_TEXT.get(c, "text") for c in COLUMNS)
_PROTOCOL_HEADER_INDEX: Final = COLUMNS.index("protocol_header")

_FIELD_COUNT: Final = struct.pack("!h", len(COLUMNS))
_NULL: Final = b"\xff\xff\xff\xff"
_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_INT_FORMATS: Final = {"int2": struct.Struct("!ih"), "int4": struct.Struct("!ii"),
                       "int8": struct.Struct("!iq")}
_PGSQL_AF_INET: Final = 2
_PGSQL_AF_INET6: Final = 3
# Capture traffic repeats a small set of addresses: their encoded form is cached per
# string (bounded: cleared when full, so hostile traffic cannot grow it).
_INET_CACHE_MAX: Final = 16_384
_inet_cache: dict[str, bytes] = {}


@dataclass(frozen=True, slots=True)
class WireFormat:
    """How the header columns are typed in the capture tables (jsonb unless the
    catalog says json)."""

    protocol_header_jsonb: bool = True
    data_header_jsonb: bool = True


JSONB_HEADERS: Final = WireFormat()


def inet_binary(value: Any) -> bytes:
    """PostgreSQL's binary inet of an address (str or ipaddress object), as asyncpg's
    own encoder writes it; ValueError if it is no address."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        # A host with a prefix length ("10.0.0.1/24"): PostgreSQL's inet takes it too.
        interface = ipaddress.ip_interface(value)
        packed = interface.packed
        family = _PGSQL_AF_INET if interface.version == 4 else _PGSQL_AF_INET6
        return bytes((family, interface.network.prefixlen, 1, len(packed))) + packed
    packed = address.packed
    family = _PGSQL_AF_INET if address.version == 4 else _PGSQL_AF_INET6
    return bytes((family, len(packed) * 8, 0, len(packed))) + packed


def encode_inet(value: Any) -> bytes:
    """`inet_binary`, cached per address string."""
    if type(value) is not str:
        return inet_binary(value)
    encoded = _inet_cache.get(value)
    if encoded is None:
        encoded = inet_binary(value)  # ValueError for a non-address: a data error
        if len(_inet_cache) >= _INET_CACHE_MAX:
            _inet_cache.clear()
        _inet_cache[value] = encoded
    return encoded


def _timestamp_micros(value: datetime) -> int:
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    # A naive datetime is taken as UTC (build_row only makes aware ones).
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _PG_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _field(kind: str, value: Any, jsonb: bool) -> bytes:
    if value is None:
        return _NULL
    if kind == "text" or kind == "header" or kind == "jsonb":
        if not isinstance(value, str):
            raise TypeError(f"expected str, got {type(value).__name__}")
        data = value.encode("utf-8")
        if kind == "jsonb" or (kind == "header" and jsonb):
            data = b"\x01" + data
    elif kind in _INT_FORMATS:
        fmt = _INT_FORMATS[kind]
        try:
            return fmt.pack(fmt.size - 4, value)
        except struct.error:  # out of the column's range, or not an integer
            if not isinstance(value, int):
                raise OverflowError(f"{kind}: required argument is not an integer") from None
            raise OverflowError(f"{kind}: value out of range") from None
    elif kind == "timestamptz":
        return struct.pack("!iq", 8, _timestamp_micros(value))
    elif kind == "inet":
        data = encode_inet(value)
    elif kind == "uuid":
        if not isinstance(value, uuid.UUID):
            raise TypeError(f"expected a UUID, got {type(value).__name__}")
        data = value.bytes
    else:  # bytea: any bytes-like object
        data = memoryview(value).tobytes()
    return struct.pack("!i", len(data)) + data


def copy_tuple(values: Sequence[Any], wire_format: WireFormat | None = None) -> bytes:
    """One binary COPY tuple (field count included) of a row's `values`; the header
    columns as jsonb unless `wire_format` says json.

    Raises ValueError, TypeError or OverflowError for a value its column cannot hold
    (an integer out of range, an inet that is no address, a string with a lone
    surrogate): the row is then written, and refused, by the sink's own path.
    """
    if len(values) != len(COLUMNS):
        raise ValueError(f"{len(values)} values for {len(COLUMNS)} columns")
    if wire_format is None:
        wire_format = JSONB_HEADERS
    parts = [_FIELD_COUNT]
    for i, (kind, value) in enumerate(zip(COLUMN_KINDS, values, strict=True)):
        if i == _PROTOCOL_HEADER_INDEX:
            jsonb = wire_format.protocol_header_jsonb
        else:
            jsonb = wire_format.data_header_jsonb
        parts.append(_field(kind, value, jsonb))
    return b"".join(parts)


def text_field(value: str) -> bytes:
    """One text field (length + UTF-8), e.g. the staging table's leading capture_table."""
    data = value.encode("utf-8")
    return struct.pack("!i", len(data)) + data


def copy_stream(tuples: Iterable[bytes]) -> bytes:
    """A whole binary COPY stream of encoded tuples."""
    return b"".join((COPY_HEADER, *tuples, COPY_TRAILER))
