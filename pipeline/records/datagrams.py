"""A datagram's Kafka key and Avro value in one call: decode, key, encode.

The readable reference of the compiled `PacketEncoder.encode_datagram(s)` in
pipeline/_speedups.pyx, which does the same without building the HepPacket; the unit
tests check both give the same outcomes. Pure: no clock (the receive time is given),
no I/O. A batch can also check the capture password (the receiver's --auth-key): a
datagram without it, or with another, is refused with the reason the intake counts.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence

from pipeline.hep.decode import decode_packet
from pipeline.hep.errors import HepDecodeError
from pipeline.hep.packet import HepPacket
from pipeline.records.codec import RecordCodec
from pipeline.records.mapping import ReceiveContext, record_key
from pipeline.records.packetwrite import packet_encoder

Record = tuple[bytes | None, bytes]

#: Why a datagram that decoded is refused by the auth key check (a `rejected` reason).
AUTH_MISSING = "auth_missing"
AUTH_MISMATCH = "auth_mismatch"
AUTH_REJECTIONS = frozenset({AUTH_MISSING, AUTH_MISMATCH})


def auth_rejection(found: bytes | None, expected: bytes) -> str | None:
    """Why a packet carrying auth key `found` is refused when `expected` is required."""
    if found is None:
        return AUTH_MISSING
    # Constant time: the key is a password, its bytes must not leak through timing.
    if not hmac.compare_digest(found, expected):
        return AUTH_MISMATCH
    return None


class DatagramEncoder:
    """Turns datagrams into (key, value) records with one packet encoder."""

    __slots__ = ("_encode",)

    def __init__(self, encode: Callable[[HepPacket, bytes, int, ReceiveContext], bytes]) -> None:
        self._encode = encode

    def encode_datagram(
        self, data: bytes, record_id: bytes, receive_time_us: int, context: ReceiveContext
    ) -> Record:
        """(record_key(p), the Avro value of p) for p = decode_packet(data).

        Raises HepDecodeError for a datagram that does not decode.
        """
        packet = decode_packet(data)
        return record_key(packet), self._encode(packet, record_id, receive_time_us, context)

    def encode_datagrams(
        self,
        datagrams: Sequence[bytes],
        contexts: Sequence[ReceiveContext],
        receive_time_us: int,
        next_id: Callable[[], bytes],
        auth_key: bytes | None = None,
    ) -> list[Record | str]:
        """One outcome per datagram, in order: its record, or the reason it was refused.

        A reason is the HepDecodeError reason of a datagram that did not decode, or,
        with `auth_key`, one of AUTH_REJECTIONS for a packet that does not carry that
        key. `contexts[i]` belongs to `datagrams[i]`; a record id is drawn only for a
        datagram that was accepted.
        """
        outcomes: list[Record | str] = []
        for data, context in zip(datagrams, contexts, strict=True):
            try:
                packet = decode_packet(data)
            except HepDecodeError as exc:
                outcomes.append(exc.reason)
                continue
            if auth_key is not None:
                rejection = auth_rejection(packet.auth_key, auth_key)
                if rejection is not None:
                    outcomes.append(rejection)
                    continue
            value = self._encode(packet, next_id(), receive_time_us, context)
            outcomes.append((record_key(packet), value))
        return outcomes


def datagram_encoder(codec: RecordCodec) -> DatagramEncoder | None:
    """The encoder for `codec`'s writer schema, or None if its layout is not the one
    packetwrite writes (callers then take the generic path)."""
    encode = packet_encoder(codec)
    return None if encode is None else DatagramEncoder(encode)
