"""The decoded form of one HEP packet, whatever version it arrived in."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class HepChunk:
    """A chunk kept as it was on the wire: vendor chunks and generic ones without a field."""

    vendor: int
    type: int
    value: bytes


@dataclass(slots=True)
class HepPacket:
    """Every fact a HEP packet carries.

    Fields the sender did not include are None. `ts_sec == 0` means the sender had no
    clock value; the caller replaces it with the receive time (the codec never reads a
    clock). `payload` is always the uncompressed payload (chunk 0x0010 is inflated).
    """

    version: int
    ip_family: int | None = None
    ip_proto: int | None = None
    src_ip: str | None = None
    dst_ip: str | None = None
    src_port: int | None = None
    dst_port: int | None = None
    ts_sec: int = 0
    ts_usec: int = 0
    proto_type: int | None = None
    capture_id: int | None = None
    keep_alive: int | None = None
    auth_key: bytes | None = None
    payload: bytes = b""
    payload_was_compressed: bool = False
    correlation_id: str | None = None
    vlan: int | None = None
    node_name: str | None = None
    # Generic chunks without a dedicated field (MAC, TCP flags, MOS, ...) and every
    # vendor chunk, in wire order, keyed by (vendor, type) so vendors never collide.
    extra_chunks: list[HepChunk] = field(default_factory=list)
    # (vendor, type, total length) of each chunk in wire order; HEPv1/v2 leave it empty.
    chunk_order: list[tuple[int, int, int]] = field(default_factory=list)
