"""A corpus of hostile HEP input for the receiver and the consumer, from a seed.

Every packet is tagged with what it is: `valid` packets carry a Call-ID of the form
``valid-<tag>-<n>@hostile`` that nothing else uses, so a test can check each of them is
stored exactly once; the mutants are what an attacker or a broken agent sends (bit
flips, truncations, chunk floods, bad lengths, random HEP types, repeated chunks,
over-long SIP values, random bytes, mutated HEPv2). Some mutants still decode (a flipped
bit in a SIP body, a random type, a long Call-ID): those are stored too, under Call-IDs
that never start with ``valid-``.

Pure: no sockets, no clock but the timestamp given in.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pipeline.hep.encode import encode_hep3
from pipeline.hep.packet import HepChunk
from tests.integration.consume_support import sip_packet

HEP3_HEADER = 6  # b"HEP3" + u16 total length


@dataclass(frozen=True)
class HostilePacket:
    kind: str
    data: bytes
    valid_call_id: str | None = None  # set only on the packets that must be stored


def sip_message(call_id: str, seq: int, *, user: str = "alice", agent: str = "hostile") -> bytes:
    return (
        f"INVITE sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{seq}\r\n"
        f"From: <sip:{user}@example.com>;tag=a{seq}\r\n"
        f"To: <sip:{user}@example.net>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {seq} INVITE\r\n"
        f"User-Agent: {agent}\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def hep3(payload: bytes, ts_sec: int, seq: int, **overrides: object) -> bytes:
    """A HEPv3 SIP packet as the consumer tests build them, with `payload`."""
    when = ts_sec + (seq % 1_000_000) / 1_000_000
    return encode_hep3(sip_packet("", seq, ts=when, payload=payload, **overrides))


class HostileCorpus:
    """Packets for one transport: `tag` keeps the valid Call-IDs of transports apart."""

    def __init__(self, seed: int, tag: str, ts_sec: int, hep2_packets: list[bytes]) -> None:
        self.rng = random.Random(seed)
        self.tag = tag
        self.ts_sec = ts_sec
        self.hep2_packets = hep2_packets
        self.seq = 0
        self.mutations: dict[str, Callable[[], bytes]] = {
            "bit_flip": self.bit_flip,
            "truncated": self.truncated,
            "chunk_flood": self.chunk_flood,
            "bad_total_length": self.bad_total_length,
            "bad_chunk_length": self.bad_chunk_length,
            "random_type": self.random_type,
            "repeated_chunks": self.repeated_chunks,
            "over_long_values": self.over_long_values,
            "random_bytes": self.random_bytes,
            "hep2_mutated": self.hep2_mutated,
        }

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def mutant_template(self) -> bytes:
        seq = self._next()
        return hep3(sip_message(f"mutant-{self.tag}-{seq}@hostile", seq), self.ts_sec, seq)

    def valid(self) -> HostilePacket:
        seq = self._next()
        call_id = f"valid-{self.tag}-{seq}@hostile"
        return HostilePacket("valid", hep3(sip_message(call_id, seq), self.ts_sec, seq), call_id)

    def bit_flip(self) -> bytes:
        data = bytearray(self.mutant_template())
        for _ in range(self.rng.randint(1, 8)):
            position = self.rng.randrange(len(data))
            data[position] ^= 1 << self.rng.randrange(8)
        return bytes(data)

    def truncated(self) -> bytes:
        data = self.mutant_template()
        return data[: self.rng.randrange(len(data))]

    def chunk_flood(self) -> bytes:
        # Thousands of empty vendor chunks before a payload: the CPU-amplification attack.
        count = self.rng.randint(500, 10_000)
        chunks = struct.pack(">HHH", 0x0000, 0x00FF, 6) * count
        body = chunks + struct.pack(">HHH", 0, 0x000F, 6 + 4) + b"flood"[:4]
        total = HEP3_HEADER + len(body)
        if total > 0xFFFF:
            body = body[: 0xFFFF - HEP3_HEADER]
            total = 0xFFFF
        return b"HEP3" + struct.pack(">H", total) + body

    def bad_total_length(self) -> bytes:
        data = bytearray(self.mutant_template())
        struct.pack_into(">H", data, 4, self.rng.randrange(0x10000))
        return bytes(data)

    def bad_chunk_length(self) -> bytes:
        data = bytearray(self.mutant_template())
        # The first chunk's length field sits right after the 6-byte header and its type.
        struct.pack_into(">H", data, HEP3_HEADER + 4, self.rng.randrange(0x10000))
        return bytes(data)

    def random_type(self) -> bytes:
        seq = self._next()
        call_id = f"mutant-{self.tag}-{seq}@hostile"
        proto_type = self.rng.choice([0, 2, 3, 4, 6, 7, 8, 9, 34, 35, 53, 65, 129, 193, 255])
        return hep3(sip_message(call_id, seq), self.ts_sec, seq, proto_type=proto_type)

    def repeated_chunks(self) -> bytes:
        seq = self._next()
        extra = [HepChunk(0, 0x00FE, b"x")] * self.rng.randint(2, 40)
        payload = sip_message(f"mutant-{self.tag}-{seq}@hostile", seq)
        return hep3(payload, self.ts_sec, seq, extra_chunks=extra)

    def over_long_values(self) -> bytes:
        seq = self._next()
        length = self.rng.choice([2_800, 3_300, 8_000, 20_000])
        long_value = "x" * length
        field = self.rng.choice(["call_id", "user", "agent", "correlation", "node"])
        call_id = f"mutant-{self.tag}-{seq}@hostile"
        if field == "call_id":
            call_id = f"mutant-{self.tag}-{seq}-{long_value}@hostile"
        payload = sip_message(
            call_id,
            seq,
            user=long_value if field == "user" else "alice",
            agent=long_value if field == "agent" else "hostile",
        )
        overrides: dict[str, object] = {}
        if field == "correlation":
            overrides["correlation_id"] = long_value
        if field == "node":
            overrides["node_name"] = long_value
        return hep3(payload, self.ts_sec, seq, **overrides)

    def random_bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.randint(1, 1500))

    def hep2_mutated(self) -> bytes:
        data = bytearray(self.rng.choice(self.hep2_packets))
        for _ in range(self.rng.randint(1, 4)):
            position = self.rng.randrange(len(data))
            data[position] ^= 1 << self.rng.randrange(8)
        return bytes(data)

    def mutant(self, kinds: list[str] | None = None) -> HostilePacket:
        kind = self.rng.choice(kinds or list(self.mutations))
        return HostilePacket(kind, self.mutations[kind]())

    def stream(
        self, count: int, valid_share: float, kinds: list[str] | None = None
    ) -> Iterator[HostilePacket]:
        for _ in range(count):
            if self.rng.random() < valid_share:
                yield self.valid()
            else:
                yield self.mutant(kinds)


# Mutants that keep a HEP3 frame's magic and total length intact, so a TCP stream stays
# in frame: everything after the 6-byte header may be anything.
IN_FRAME_KINDS = [
    "bit_flip_body",
    "chunk_flood",
    "bad_chunk_length",
    "random_type",
    "repeated_chunks",
    "over_long_values",
]


def keep_frame(corpus: HostileCorpus) -> None:
    """Give `corpus` the in-frame variant of bit flips (header bytes left alone)."""

    def bit_flip_body() -> bytes:
        data = bytearray(corpus.mutant_template())
        for _ in range(corpus.rng.randint(1, 8)):
            position = corpus.rng.randrange(HEP3_HEADER, len(data))
            data[position] ^= 1 << corpus.rng.randrange(8)
        return bytes(data)

    corpus.mutations["bit_flip_body"] = bit_flip_body
