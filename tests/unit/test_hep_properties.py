"""Property tests: round trip, no stray exceptions on hostile input, framing invariance."""

from __future__ import annotations

import json
import socket
import struct
from itertools import pairwise
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.hep import (
    MAX_CHUNKS,
    HepChunk,
    HepDecodeError,
    HepPacket,
    HepStreamFramer,
    encode_hep3,
)
from pipeline.hep.chunks import DEDICATED_TYPES, FIXED_BODY_SIZES
from tests.implementations import Implementation

VECTORS_DIR = Path(__file__).resolve().parent.parent / "data" / "hep-vectors"


def _packets(folder: str) -> list[bytes]:
    expected = json.loads((VECTORS_DIR / folder / "expected.json").read_text())
    return [(VECTORS_DIR / folder / p["file"]).read_bytes() for p in expected["packets"]]


ALL_VECTORS = [
    data
    for folder in ("kamailio_hep3_udp", "kamailio_hep2_udp", "kamailio_hep3_tcp", "hepjs_hep3_udp")
    for data in _packets(folder)
]
TCP_FRAMES = _packets("kamailio_hep3_tcp")
TCP_STREAM = b"".join(TCP_FRAMES)
# Kamailio's HEPv2 captures (UDP), back to back as siptrace sends them over TCP, and
# interleaved with HEPv3 frames as a stream of mixed agents' frames would never be but
# the framer must allow, since it tells the version per frame.
HEP2_FRAMES = _packets("kamailio_hep2_udp")
MIXED_FRAMES = [frame for pair in zip(TCP_FRAMES, HEP2_FRAMES, strict=False) for frame in pair]
STREAMS = {"hep3": TCP_FRAMES, "hep2": HEP2_FRAMES, "mixed": MIXED_FRAMES}

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)

ipv4 = u32.map(lambda i: socket.inet_ntop(socket.AF_INET, struct.pack(">I", i)))
# Zero-heavy groups exercise "::" compression and IPv4-mapped forms, which random
# 16-byte strings almost never hit.
ipv6 = st.one_of(
    st.binary(min_size=16, max_size=16),
    st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0x2001, 0xDB8]), min_size=8, max_size=8).map(
        lambda groups: struct.pack(">8H", *groups)
    ),
).map(lambda b: socket.inet_ntop(socket.AF_INET6, b))
ip = st.one_of(st.none(), ipv4, ipv6)
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)

_variable_extra_types = st.integers(0x0014, 0xFFFF).filter(
    lambda t: t not in DEDICATED_TYPES and t not in FIXED_BODY_SIZES
)
_fixed_extra_types = sorted(t for t in FIXED_BODY_SIZES if t not in DEDICATED_TYPES)

extra_chunk = st.one_of(
    # Vendor chunks: any type number, any body, including the generic fixed-size ones.
    st.builds(HepChunk, st.integers(1, 0xFFFF), u16, st.binary(max_size=40)),
    st.builds(HepChunk, st.just(0), _variable_extra_types, st.binary(max_size=40)),
    st.sampled_from(_fixed_extra_types).flatmap(
        lambda t: st.builds(
            HepChunk,
            st.just(0),
            st.just(t),
            st.binary(min_size=FIXED_BODY_SIZES[t], max_size=FIXED_BODY_SIZES[t]),
        )
    ),
)


def _generic_type_once(c: HepChunk) -> object:
    """A generic type appears at most once (a second copy is duplicate_chunk); vendor
    chunks may repeat, so each gets a key of its own."""
    return c.type if c.vendor == 0 else c

packets = st.builds(
    HepPacket,
    version=st.just(3),
    ip_family=st.one_of(st.none(), st.sampled_from([2, 10]), u8),
    ip_proto=st.one_of(st.none(), u8),
    src_ip=ip,
    dst_ip=ip,
    src_port=st.one_of(st.none(), u16),
    dst_port=st.one_of(st.none(), u16),
    ts_sec=u32,
    ts_usec=u32,
    proto_type=st.one_of(st.none(), u8),
    capture_id=st.one_of(st.none(), u32),
    keep_alive=st.one_of(st.none(), u16),
    auth_key=st.one_of(st.none(), st.binary(max_size=40)),
    payload=st.binary(max_size=2000),
    payload_was_compressed=st.booleans(),
    correlation_id=st.one_of(st.none(), text),
    vlan=st.one_of(st.none(), u16),
    node_name=st.one_of(st.none(), text),
    extra_chunks=st.lists(extra_chunk, max_size=6, unique_by=_generic_type_once),
)


@settings(max_examples=400)
@given(packets)
def test_encode_decode_round_trip(impl: Implementation, pkt: HepPacket) -> None:
    data = encode_hep3(pkt)
    out = impl.decode_packet(data)
    assert sum(length for _, _, length in out.chunk_order) == len(data) - 6
    out.chunk_order = []
    assert out == pkt
    # A second trip is byte-identical (canonical encoding).
    assert encode_hep3(out) == data


def _decode_or_reason(impl: Implementation, data: bytes | memoryview) -> None:
    try:
        pkt = impl.decode_packet(data)
    except HepDecodeError as exc:
        assert exc.reason
        return
    assert isinstance(pkt, HepPacket)


@settings(max_examples=1000)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_hep_decode_error(impl: Implementation, data: bytes) -> None:
    _decode_or_reason(impl, data)


@settings(max_examples=1000)
@given(
    # Plausible lengths (around the body size) reach the chunk parser; others don't.
    total=st.one_of(st.integers(0, 0xFFFF), st.integers(0, 320)),
    body=st.binary(max_size=300),
    exact=st.booleans(),
)
def test_hep3_prefixed_bytes_only_raise_hep_decode_error(
    impl: Implementation,
    total: int, body: bytes, exact: bool
) -> None:
    if exact:
        total = 6 + len(body)
    _decode_or_reason(impl, b"HEP3" + struct.pack(">H", total) + body)


raw_chunk = st.tuples(
    st.one_of(st.just(0), u16),
    st.one_of(st.integers(0, 0x2A), u16),
    st.binary(max_size=30),
    st.one_of(st.none(), u16),
).map(lambda c: struct.pack(">HHH", c[0], c[1], 6 + len(c[2]) if c[3] is None else c[3]) + c[2])


@settings(max_examples=1000)
@given(st.lists(raw_chunk, max_size=12))
def test_random_chunk_sequences_only_raise_hep_decode_error(
    impl: Implementation,
    chunks: list[bytes],
) -> None:
    body = b"".join(chunks)
    _decode_or_reason(impl, b"HEP3" + struct.pack(">H", (6 + len(body)) & 0xFFFF) + body)


empty_chunk = st.tuples(st.sampled_from([0, 2]), st.integers(0x0000, 0x0003)).map(
    lambda c: struct.pack(">HHH", c[0], c[1], 6)
)


@settings(max_examples=300)
@given(st.lists(empty_chunk, max_size=MAX_CHUNKS * 3))
def test_accepted_packets_are_bounded(impl: Implementation, chunks: list[bytes]) -> None:
    """Whatever a sender repeats, an accepted packet has at most MAX_CHUNKS chunks and
    each generic type once; anything else is refused with a reason."""
    body = b"".join(chunks)
    try:
        pkt = impl.decode_packet(b"HEP3" + struct.pack(">H", 6 + len(body)) + body)
    except HepDecodeError as exc:
        assert exc.reason in {"duplicate_chunk", "too_many_chunks", "bad_fixed_size"}
        return
    assert len(pkt.chunk_order) <= MAX_CHUNKS
    generic = [ctype for vendor, ctype, _ in pkt.chunk_order if vendor == 0]
    assert len(generic) == len(set(generic))


@st.composite
def mutated_vector(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(ALL_VECTORS)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0x01, 0x05, 0x06, 0x0A, 0xFF]))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_vector())
def test_mutated_vectors_only_raise_hep_decode_error(impl: Implementation, data: bytes) -> None:
    _decode_or_reason(impl, data)
    _decode_or_reason(impl, memoryview(data))


@settings(max_examples=500)
@given(
    kind=st.sampled_from(sorted(STREAMS)),
    cuts=st.lists(st.floats(0, 1), max_size=60),
    as_view=st.booleans(),
)
def test_framer_any_split_yields_the_same_frames(
    kind: str, cuts: list[float], as_view: bool
) -> None:
    expected = STREAMS[kind]
    stream = b"".join(expected)
    bounds = [0, *sorted(int(cut * len(stream)) for cut in cuts), len(stream)]
    framer = HepStreamFramer()
    frames: list[bytes] = []
    for start, stop in pairwise(bounds):
        piece = stream[start:stop]
        frames.extend(framer.feed(memoryview(piece) if as_view else piece))
        assert framer.buffered <= 0xFFFF
    assert frames == expected
    assert framer.buffered == 0
    assert framer.error is None


@settings(max_examples=200)
@given(kind=st.sampled_from(sorted(STREAMS)), size=st.integers(1, 64))
def test_framer_fixed_size_reads(kind: str, size: int) -> None:
    expected = STREAMS[kind]
    stream = b"".join(expected)
    framer = HepStreamFramer()
    frames: list[bytes] = []
    for start in range(0, len(stream), size):
        frames.extend(framer.feed(stream[start : start + size]))
    assert frames == expected


@settings(max_examples=500)
@given(st.lists(st.binary(max_size=80), max_size=8))
def test_framer_arbitrary_bytes_yield_frames_or_a_framing_error(
    impl: Implementation,
    pieces: list[bytes],
) -> None:
    framer = HepStreamFramer()
    delivered = 0
    for piece in pieces:
        for frame in framer.feed(piece):
            delivered += len(frame)
            _decode_or_reason(impl, frame)
    # Every byte is a delivered frame, the partial frame held, or after a reported break.
    fed = sum(map(len, pieces))
    if framer.error is None:
        assert delivered + framer.buffered == fed
    else:
        assert framer.buffered == 0 and delivered < fed
        assert framer.error.reason in {
            "bad_stream_magic",
            "bad_length",
            "frame_too_large",
            "bad_address_family",
            "bad_content_length",
        }


# The Kamailio/heplify IPv4 layout (all ten fixed chunks, in encode_hep3's order) takes
# the decoder's fast path; the same chunks with the first two swapped take the general
# loop. Both must give the same packet, whatever follows the ten chunks.
kamailio_packets = st.builds(
    HepPacket,
    version=st.just(3),
    ip_family=u8,
    ip_proto=u8,
    src_ip=ipv4,
    dst_ip=ipv4,
    src_port=u16,
    dst_port=u16,
    ts_sec=u32,
    ts_usec=u32,
    proto_type=u8,
    capture_id=u32,
    keep_alive=st.one_of(st.none(), u16),
    auth_key=st.one_of(st.none(), st.binary(max_size=40)),
    payload=st.binary(max_size=600),
    payload_was_compressed=st.booleans(),
    correlation_id=st.one_of(st.none(), text),
    node_name=st.one_of(st.none(), text),
    extra_chunks=st.lists(extra_chunk, max_size=3, unique_by=_generic_type_once),
)


@settings(max_examples=300)
@given(kamailio_packets, st.binary(max_size=8))
def test_kamailio_layout_fast_path_matches_general_path(
    impl: Implementation,
    pkt: HepPacket,
    trailer: bytes,
) -> None:
    data = encode_hep3(pkt)
    assert data[6:12] == b"\x00\x00\x00\x01\x00\x07" and data[13:19] == b"\x00\x00\x00\x02\x00\x07"
    swapped = data[:6] + data[13:20] + data[6:13] + data[20:]
    fast = impl.decode_packet(data + trailer)
    general = impl.decode_packet(swapped)
    assert general.chunk_order[:2] == fast.chunk_order[1::-1]
    assert general.chunk_order[2:] == fast.chunk_order[2:]
    fast.chunk_order = general.chunk_order = []
    assert fast == general
    fast_view = impl.decode_packet(memoryview(data))
    fast_view.chunk_order = []
    assert fast_view == general == pkt


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(STREAMS)),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=4),
    read=st.integers(1, 4096),
)
def test_framer_on_a_damaged_stream_delivers_exactly_the_frames_before_the_damage(
    kind: str, flips: list[tuple[float, int]], read: int
) -> None:
    stream = bytearray(b"".join(STREAMS[kind]))
    for where, bit in flips:
        stream[int(where * (len(stream) - 1))] ^= 1 << bit
    framer = HepStreamFramer()
    frames: list[bytes] = []
    for start in range(0, len(stream), read):
        frames.extend(framer.feed(bytes(stream[start : start + read])))
    delivered = b"".join(frames)
    # Frames are consecutive pieces of the stream from its start: nothing skipped,
    # nothing invented; what is not delivered is held or reported.
    assert stream.startswith(delivered)
    if framer.error is None:
        assert len(delivered) + framer.buffered == len(stream)
    else:
        assert framer.buffered == 0 and len(delivered) < len(stream)
        assert framer.error_head == stream[len(delivered)]
