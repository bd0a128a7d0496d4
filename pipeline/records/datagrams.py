"""A datagram's Kafka key and Avro value in one call: decode, key, encode.

The readable reference of the compiled `PacketEncoder.encode_datagram(s)` in
pipeline/_speedups.pyx, which does the same without building the HepPacket; the unit
tests check both give the same outcomes. Pure: no clock (the receive time is given),
no I/O; the auth key check stays with the caller (the intake).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pipeline.hep.decode import decode_packet
from pipeline.hep.errors import HepDecodeError
from pipeline.hep.packet import HepPacket
from pipeline.records.codec import RecordCodec
from pipeline.records.mapping import ReceiveContext, record_key
from pipeline.records.packetwrite import packet_encoder

Record = tuple[bytes | None, bytes]


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
    ) -> list[Record | str]:
        """One outcome per datagram, in order: its record, or the reason it did not decode.

        `contexts[i]` belongs to `datagrams[i]`; a record id is drawn only for a datagram
        that decoded.
        """
        outcomes: list[Record | str] = []
        for data, context in zip(datagrams, contexts, strict=True):
            try:
                packet = decode_packet(data)
            except HepDecodeError as exc:
                outcomes.append(exc.reason)
                continue
            value = self._encode(packet, next_id(), receive_time_us, context)
            outcomes.append((record_key(packet), value))
        return outcomes


def datagram_encoder(codec: RecordCodec) -> DatagramEncoder | None:
    """The encoder for `codec`'s writer schema, or None if its layout is not the one
    packetwrite writes (callers then take the generic path)."""
    encode = packet_encoder(codec)
    return None if encode is None else DatagramEncoder(encode)
