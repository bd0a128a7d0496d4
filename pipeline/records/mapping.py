"""From a decoded HEP packet to the Avro record the receiver publishes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.hep.packet import HepPacket
from pipeline.sip.callid import scan_call_id


@dataclass(frozen=True, slots=True)
class ReceiveContext:
    """What the receiver knows about a packet beyond its bytes."""

    transport: str
    sender_ip: str
    sender_port: int
    receiver_id: str
    forward_auth_key: bool = False


def packet_to_record(
    packet: HepPacket,
    *,
    record_id: bytes,
    receive_time_us: int,
    context: ReceiveContext,
) -> dict[str, Any]:
    from_receiver = packet.ts_sec == 0
    capture_time = receive_time_us if from_receiver else packet.ts_sec * 1_000_000 + packet.ts_usec
    auth_key = None
    if context.forward_auth_key and packet.auth_key is not None:
        auth_key = packet.auth_key.decode("utf-8", "replace")
    return {
        "record_id": record_id,
        "hep_version": packet.version,
        "ip_family": packet.ip_family,
        "ip_proto": packet.ip_proto,
        "src_ip": packet.src_ip,
        "dst_ip": packet.dst_ip,
        "src_port": packet.src_port,
        "dst_port": packet.dst_port,
        "capture_time": capture_time,
        "capture_time_from_receiver": from_receiver,
        "proto_type": packet.proto_type,
        "capture_id": packet.capture_id,
        "keep_alive": packet.keep_alive,
        "auth_key_present": packet.auth_key is not None,
        "auth_key": auth_key,
        "correlation_id": packet.correlation_id,
        "vlan": packet.vlan,
        "node_name": packet.node_name,
        "payload": packet.payload,
        "payload_was_compressed": packet.payload_was_compressed,
        "extra_chunks": [
            {"vendor": c.vendor, "type": c.type, "value": c.value} for c in packet.extra_chunks
        ],
        "receive_time": receive_time_us,
        "transport": context.transport,
        "sender_ip": context.sender_ip,
        "sender_port": context.sender_port,
        "receiver_id": context.receiver_id,
    }


def record_key(packet: HepPacket) -> bytes | None:
    """Kafka key that keeps one call in one partition, in order.

    The correlation id wins because it is what ties RTCP and log records to their
    call; SIP without one is keyed by its Call-ID; anything else is spread freely.
    """
    if packet.correlation_id:
        return packet.correlation_id.encode("utf-8")
    if packet.proto_type in (1, None) and packet.payload:
        return scan_call_id(packet.payload)
    return None
