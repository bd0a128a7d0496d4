"""The receive hot path: bytes + sender + now -> (Kafka key, Avro value), or a counted refusal.

No I/O, no clock, no logging: the adapters pass the receive time in. Every outcome is
counted on `ReceiverMetrics` (received, decoded, invalid{reason}, rejected{reason});
the adapters only count what happens after (queue full).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pipeline.accel import datagram_encoder, decode_packet, packet_encoder, record_key
from pipeline.hep.errors import HepDecodeError
from pipeline.receiver.metrics import ReceiverMetrics
from pipeline.records import ReceiveContext, RecordCodec, RecordIdGenerator
from pipeline.records.datagrams import AUTH_REJECTIONS, auth_rejection
from pipeline.records.mapping import packet_to_record

# The HEP version label from a packet's first byte: "HEP3"/"EEP1" are v3, 1 and 2 are
# v1/v2; anything else is counted as "other" (and will fail to decode).
_VERSION_LABEL = tuple(
    "3" if b in (0x48, 0x45) else "1" if b == 1 else "2" if b == 2 else "other"
    for b in range(256)
)
_CONTEXT_CACHE_LIMIT = 4096

Encoded = tuple[bytes | None, bytes]
# A sender as the socket reports it: (ip, port) for IPv4, (ip, port, flow, scope) for IPv6.
Address = tuple[Any, ...]


class Intake:
    """Decode, check the auth key, map and encode one packet."""

    __slots__ = (
        "_auth_key",
        "_contexts",
        "_datagrams",
        "_encode",
        "_encode_packet",
        "_forward_auth_key",
        "_ids",
        "_labels",
        "_metrics",
        "_receiver_id",
        "_senders",
    )

    def __init__(
        self,
        *,
        codec: RecordCodec,
        metrics: ReceiverMetrics,
        receiver_id: str,
        auth_key: bytes | None = None,
        forward_auth_key: bool = False,
        ids: RecordIdGenerator | None = None,
        encode: Callable[[dict[str, Any]], bytes] | None = None,
    ) -> None:
        self._encode = encode or codec.encode
        # HepPacket -> Avro bytes without the intermediate dict (same bytes); a custom
        # `encode` or an unknown schema layout takes the generic path.
        self._encode_packet = packet_encoder(codec) if encode is None else None
        # The same for a whole batch of datagrams in one call (decode, key, encode).
        self._datagrams = datagram_encoder(codec) if encode is None else None
        self._metrics = metrics
        self._receiver_id = receiver_id
        self._auth_key = auth_key
        self._forward_auth_key = forward_auth_key
        self._ids = ids or RecordIdGenerator()
        self._contexts: dict[tuple[str, str, int], ReceiveContext] = {}
        # Per transport: the socket's address object -> its context (accept_batch).
        self._senders: dict[str, dict[Address, ReceiveContext]] = {}
        # Per transport: the received{transport, version} key of each first byte.
        self._labels: dict[str, tuple[tuple[str, str], ...]] = {}

    def context(self, transport: str, sender_ip: str, sender_port: int) -> ReceiveContext:
        """The (cached) context of one sender; a UDP receiver sees few distinct senders."""
        cache_key = (transport, sender_ip, sender_port)
        context = self._contexts.get(cache_key)
        if context is None:
            if len(self._contexts) >= _CONTEXT_CACHE_LIMIT:
                self._contexts.clear()
            context = ReceiveContext(
                transport=transport,
                sender_ip=sender_ip,
                sender_port=sender_port,
                receiver_id=self._receiver_id,
                forward_auth_key=self._forward_auth_key,
            )
            self._contexts[cache_key] = context
        return context

    def accept(self, data: bytes, context: ReceiveContext, now_us: int) -> Encoded | None:
        """The record for `data`, or None when it was invalid or rejected (and counted)."""
        metrics = self._metrics
        metrics.received[(context.transport, _VERSION_LABEL[data[0]] if data else "other")] += 1
        try:
            packet = decode_packet(data)
        except HepDecodeError as exc:
            metrics.invalid[exc.reason] += 1
            return None
        expected = self._auth_key
        if expected is not None:
            rejection = auth_rejection(packet.auth_key, expected)
            if rejection is not None:
                metrics.rejected[rejection] += 1
                return None
        # Counted once accepted, so that received == decoded + invalid + rejected.
        metrics.decoded += 1
        encode_packet = self._encode_packet
        if encode_packet is not None:
            return record_key(packet), encode_packet(packet, self._ids.next(), now_us, context)
        record = packet_to_record(
            packet, record_id=self._ids.next(), receive_time_us=now_us, context=context
        )
        return record_key(packet), self._encode(record)

    def accept_batch(
        self, packets: Sequence[bytes], senders: Sequence[Address], transport: str, now_us: int
    ) -> list[Encoded]:
        """The records of `packets` (sent by `senders`, one address each), in order.

        The same records and counts as `accept` called on each packet with its sender's
        context; invalid and rejected packets are counted and left out. One call per
        batch that a socket read or a TCP read yields: the per-batch work (lookups,
        clock, the call itself) is paid once, and a compiled implementation can
        replace this body whole.
        """
        contexts = self._senders.get(transport)
        if contexts is None:
            contexts = self._senders[transport] = {}
        if len(contexts) >= _CONTEXT_CACHE_LIMIT:
            contexts.clear()
        datagrams = self._datagrams
        if datagrams is None:
            return self._accept_each(packets, senders, contexts, transport, now_us)
        metrics = self._metrics
        labels = self._labels.get(transport)
        if labels is None:
            labels = self._labels[transport] = tuple((transport, v) for v in _VERSION_LABEL)
        batch_contexts = []
        for data, sender in zip(packets, senders, strict=True):
            metrics.received[labels[data[0]] if data else (transport, "other")] += 1
            context = contexts.get(sender)
            if context is None:
                context = contexts[sender] = self.context(transport, sender[0], sender[1])
            batch_contexts.append(context)
        records: list[Encoded] = []
        outcomes = datagrams.encode_datagrams(
            packets, batch_contexts, now_us, self._ids.next, self._auth_key
        )
        for outcome in outcomes:
            if isinstance(outcome, str):  # the reason it was refused
                if outcome in AUTH_REJECTIONS:
                    metrics.rejected[outcome] += 1
                else:
                    metrics.invalid[outcome] += 1
            else:
                records.append(outcome)
        metrics.decoded += len(records)
        return records

    def _accept_each(
        self,
        packets: Sequence[bytes],
        senders: Sequence[Address],
        contexts: dict[Address, ReceiveContext],
        transport: str,
        now_us: int,
    ) -> list[Encoded]:
        """`accept_batch` through `accept`: with a custom encoder."""
        records = []
        for data, sender in zip(packets, senders, strict=True):
            context = contexts.get(sender)
            if context is None:
                context = contexts[sender] = self.context(transport, sender[0], sender[1])
            record = self.accept(data, context, now_us)
            if record is not None:
                records.append(record)
        return records

    def count_unframed(self, transport: str, head: int | None, reason: str) -> None:
        """Count bytes of a stream that never made a frame as one received, invalid packet.

        `head` is their first byte (the version label, as for a frame).
        """
        metrics = self._metrics
        metrics.received[(transport, "other" if head is None else _VERSION_LABEL[head])] += 1
        metrics.invalid[reason] += 1
