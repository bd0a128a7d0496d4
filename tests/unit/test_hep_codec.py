"""Decoder edge cases, the encoder, the stream framer and the name tables."""

from __future__ import annotations

import gzip
import struct
import zlib

import pytest

from pipeline.hep import (
    MAX_CHUNKS,
    MAX_INFLATED_PAYLOAD,
    MAX_PACKET_SIZE,
    HepChunk,
    HepDecodeError,
    HepError,
    HepPacket,
    HepStreamFramer,
    encode_hep3,
    proto_type_name,
)
from pipeline.hep.chunks import FIXED_BODY_SIZES
from tests.implementations import Implementation


def chunk(ctype: int, body: bytes, vendor: int = 0, length: int | None = None) -> bytes:
    return struct.pack(">HHH", vendor, ctype, 6 + len(body) if length is None else length) + body


def hep3(*chunks: bytes, total: int | None = None, magic: bytes = b"HEP3") -> bytes:
    body = b"".join(chunks)
    return magic + struct.pack(">H", 6 + len(body) if total is None else total) + body


BASIC = (
    chunk(0x0001, b"\x02"),
    chunk(0x0002, b"\x11"),
    chunk(0x0003, bytes([10, 0, 0, 1])),
    chunk(0x0004, bytes([10, 0, 0, 2])),
    chunk(0x0007, struct.pack(">H", 5060)),
    chunk(0x0008, struct.pack(">H", 5080)),
    chunk(0x0009, struct.pack(">I", 1_700_000_000)),
    chunk(0x000A, struct.pack(">I", 123)),
    chunk(0x000B, b"\x01"),
    chunk(0x000C, struct.pack(">I", 7)),
)


def hep2(
    family: int = 2,
    addr_len: int = 4,
    payload: bytes = b"OPTIONS sip:a SIP/2.0\r\n\r\n",
    version: int = 2,
) -> bytes:
    head = bytes([version, 8 + 2 * addr_len, family, 17]) + struct.pack(">HH", 5060, 5070)
    addrs = bytes(range(1, addr_len + 1)) + bytes(range(101, 101 + addr_len))
    time = struct.pack("<IIHH", 1_700_000_001, 654_321, 2002, 0) if version == 2 else b""
    return head + addrs + time + payload


def _fixed_size_cases() -> list[object]:
    cases = []
    for ctype, size in sorted(FIXED_BODY_SIZES.items()):
        for wrong in (size - 1, size + 1):
            if wrong >= 0:
                data = hep3(chunk(ctype, b"\x00" * wrong))
                cases.append(
                    pytest.param(data, "bad_fixed_size", id=f"fixed-0x{ctype:04x}-{wrong}")
                )
    return cases


MALFORMED = [
    pytest.param(b"", "truncated", id="empty"),
    pytest.param(b"X", "bad_magic", id="one-byte"),
    pytest.param(b"\x00" * 40, "bad_magic", id="zero-byte"),
    pytest.param(b"\x03" + b"\x00" * 40, "bad_magic", id="version-3-binary"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", "bad_magic", id="http"),
    pytest.param(b"HEP4\x00\x06", "bad_magic", id="hep4"),
    pytest.param(b"Hxyz\x00\x06", "bad_magic", id="h-not-hep"),
    pytest.param(b"EEP2\x00\x06", "bad_magic", id="eep2"),
    pytest.param(b"HEP", "truncated", id="header-3-bytes"),
    pytest.param(b"HEP3\x00", "truncated", id="header-5-bytes"),
    pytest.param(hep3(total=0), "bad_length", id="total-0"),
    pytest.param(hep3(total=5), "bad_length", id="total-5"),
    pytest.param(hep3(*BASIC, total=200), "truncated", id="total-gt-data"),
    pytest.param(hep3(chunk(0x0001, b"\x02", length=0)), "bad_chunk_length", id="chunk-len-0"),
    pytest.param(hep3(chunk(0x0001, b"\x02", length=5)), "bad_chunk_length", id="chunk-len-5"),
    pytest.param(hep3(chunk(0x000F, b"abc", length=60)), "bad_chunk_length", id="chunk-past-end"),
    pytest.param(
        hep3(chunk(0x0020, b"", vendor=7, length=7)), "bad_chunk_length", id="vendor-past-end"
    ),
    pytest.param(hep3(*BASIC, b"\x00\x00\x00"), "bad_chunk_length", id="stray-tail"),
    pytest.param(
        # The declared total length cuts the last chunk short.
        hep3(chunk(0x000F, b"abcdef"), total=10),
        "bad_chunk_length",
        id="chunk-past-total",
    ),
    *_fixed_size_cases(),
    pytest.param(hep2(family=3), "bad_address_family", id="v2-family-3"),
    pytest.param(hep2(family=0, version=1), "bad_address_family", id="v1-family-0"),
    pytest.param(
        hep2(family=10, addr_len=4, payload=b""), "truncated", id="v2-ipv6-family-ipv4-sized"
    ),
    pytest.param(hep2(payload=b"")[:27], "truncated", id="v2-header-27"),
    pytest.param(hep2(version=1, payload=b"")[:15], "truncated", id="v1-header-15"),
    pytest.param(b"\x02\x10\x02", "truncated", id="v2-3-bytes"),
    pytest.param(
        hep3(chunk(0x0010, b"not deflate at all")), "bad_compressed_payload", id="gz-junk"
    ),
    pytest.param(
        hep3(chunk(0x0010, zlib.compress(b"x" * 1000)[:-6])),
        "bad_compressed_payload",
        id="zlib-cut",
    ),
    pytest.param(
        hep3(chunk(0x0010, gzip.compress(b"y" * 1000)[:12])),
        "bad_compressed_payload",
        id="gzip-cut",
    ),
    pytest.param(hep3(chunk(0x0010, b"")), "bad_compressed_payload", id="compressed-empty"),
    pytest.param(
        hep3(chunk(0x0010, zlib.compress(b"\x00" * (MAX_INFLATED_PAYLOAD + 1), 9))),
        "payload_too_large",
        id="bomb",
    ),
    pytest.param(
        hep3(*BASIC, chunk(0x000C, struct.pack(">I", 8))), "duplicate_chunk", id="dup-dedicated"
    ),
    pytest.param(
        hep3(chunk(0x0014, bytes(8)), chunk(0x0014, bytes(8))), "duplicate_chunk", id="dup-extra"
    ),
    pytest.param(
        hep3(chunk(0x0025, b"k"), chunk(0x0025, b"k")), "duplicate_chunk", id="dup-variable"
    ),
    pytest.param(hep3(chunk(0x0000, b""), chunk(0x0000, b"")), "duplicate_chunk", id="dup-type-0"),
    pytest.param(
        hep3(chunk(0x0010, zlib.compress(b"first")), chunk(0x000F, b"second")),
        "duplicate_chunk",
        id="dup-payloads",
    ),
    pytest.param(
        hep3(*[chunk(7, b"", vendor=5)] * (MAX_CHUNKS + 1)), "too_many_chunks", id="vendor-flood"
    ),
    pytest.param(hep2(payload=bytes(MAX_PACKET_SIZE)), "too_large", id="hep2-too-large"),
]


@pytest.mark.parametrize(("data", "reason"), MALFORMED)
def test_malformed_input_has_exact_reason(impl: Implementation, data: bytes, reason: str) -> None:
    with pytest.raises(HepDecodeError) as info:
        impl.decode_packet(data)
    assert info.value.reason == reason
    assert isinstance(info.value, HepError)
    assert isinstance(info.value, ValueError)


def test_basic_fields(impl: Implementation) -> None:
    pkt = impl.decode_packet(hep3(*BASIC, chunk(0x000F, b"OPTIONS")))
    assert (pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port) == (
        "10.0.0.1",
        5060,
        "10.0.0.2",
        5080,
    )
    assert (pkt.ts_sec, pkt.ts_usec, pkt.proto_type, pkt.capture_id) == (1_700_000_000, 123, 1, 7)
    assert pkt.payload == b"OPTIONS"


def test_vendor_chunk_never_overrides_generic_field(impl: Implementation) -> None:
    data = hep3(
        *BASIC,
        chunk(0x0007, b"\x00\x01", vendor=2),  # Kamailio's own type 7
        chunk(0x000C, b"whatever-size", vendor=3),  # wrong size for generic 0x000c: fine
        chunk(0x000F, b"abc", vendor=1),
        chunk(0x000F, b"real payload"),
    )
    pkt = impl.decode_packet(data)
    assert pkt.src_port == 5060
    assert pkt.capture_id == 7
    assert pkt.payload == b"real payload"
    assert pkt.extra_chunks == [
        HepChunk(2, 0x0007, b"\x00\x01"),
        HepChunk(3, 0x000C, b"whatever-size"),
        HepChunk(1, 0x000F, b"abc"),
    ]


def test_generic_chunks_without_field_kept_in_wire_order(impl: Implementation) -> None:
    extras = [
        (0x0014, b"\x00\x00\x02\x42\xac\x11\x00\x02"),
        (0x0017, b"\x12"),
        (0x0020, struct.pack(">H", 430)),
        (0x0024, b"call"),
        (0x0019, b"unknown generic type"),
        (0x0029, b"group-1"),
    ]
    pkt = impl.decode_packet(hep3(*BASIC, *(chunk(t, b) for t, b in extras)))
    assert pkt.extra_chunks == [HepChunk(0, t, b) for t, b in extras]


@pytest.mark.parametrize(
    "compress",
    [
        pytest.param(zlib.compress, id="zlib"),
        pytest.param(gzip.compress, id="gzip"),
        pytest.param(lambda b: zlib.compress(b, wbits=-15), id="raw-deflate"),
    ],
)
def test_compressed_payload_inflated(impl: Implementation, compress: object) -> None:
    payload = b"INVITE sip:bob@example.com SIP/2.0\r\n" * 20
    pkt = impl.decode_packet(hep3(*BASIC, chunk(0x0010, compress(payload))))  # type: ignore[operator]
    assert pkt.payload == payload
    assert pkt.payload_was_compressed
    assert pkt.chunk_order[-1][1] == 0x0010


def test_inflated_payload_at_the_cap_is_accepted(impl: Implementation) -> None:
    payload = b"\x00" * MAX_INFLATED_PAYLOAD
    pkt = impl.decode_packet(hep3(chunk(0x0010, zlib.compress(payload, 9))))
    assert pkt.payload == payload


def test_two_payload_chunks_are_refused_before_inflating(impl: Implementation) -> None:
    bomb = zlib.compress(b"\x00" * (MAX_INFLATED_PAYLOAD + 1), 9)
    with pytest.raises(HepDecodeError) as info:
        impl.decode_packet(hep3(chunk(0x000F, b"first"), chunk(0x0010, bomb)))
    assert info.value.reason == "duplicate_chunk"


def test_zero_timestamp_preserved_and_absent_timestamp_is_zero(impl: Implementation) -> None:
    zero = impl.decode_packet(
        hep3(chunk(0x0009, b"\x00" * 4), chunk(0x000A, b"\x00" * 4), chunk(0x000F, b"x"))
    )
    assert (zero.ts_sec, zero.ts_usec) == (0, 0)
    absent = impl.decode_packet(hep3(chunk(0x000F, b"x")))
    assert (absent.ts_sec, absent.ts_usec) == (0, 0)


def test_ipv6_hep3(impl: Implementation) -> None:
    src = bytes.fromhex("20010db8000000000000000000000001")
    dst = bytes.fromhex("fe800000000000000202b3fffe1e8329")
    pkt = impl.decode_packet(
        hep3(chunk(0x0001, b"\x0a"), chunk(0x0005, src), chunk(0x0006, dst), chunk(0x000F, b"x"))
    )
    assert pkt.ip_family == 10
    assert pkt.src_ip == "2001:db8::1"
    assert pkt.dst_ip == "fe80::202:b3ff:fe1e:8329"


def test_family_picks_between_ipv4_and_ipv6_chunks(impl: Implementation) -> None:
    v4 = chunk(0x0003, bytes([192, 0, 2, 1]))
    v6 = chunk(0x0005, bytes(15) + b"\x01")
    assert impl.decode_packet(hep3(chunk(0x0001, b"\x0a"), v4, v6)).src_ip == "::1"
    assert impl.decode_packet(hep3(chunk(0x0001, b"\x02"), v6, v4)).src_ip == "192.0.2.1"
    assert impl.decode_packet(hep3(v6)).src_ip == "::1"
    # The family is reported as sent even when the addresses disagree with it.
    assert impl.decode_packet(hep3(chunk(0x0001, b"\x02"), v6)).ip_family == 2


def test_ipv6_hep2(impl: Implementation) -> None:
    pkt = impl.decode_packet(hep2(family=10, addr_len=16, payload=b"SIP/2.0 200 OK\r\n\r\n"))
    assert pkt.version == 2
    assert pkt.ip_family == 10
    assert pkt.src_ip == "102:304:506:708:90a:b0c:d0e:f10"
    assert pkt.dst_ip == "6566:6768:696a:6b6c:6d6e:6f70:7172:7374"
    assert (pkt.ts_sec, pkt.ts_usec, pkt.capture_id) == (1_700_000_001, 654_321, 2002)
    assert pkt.payload == b"SIP/2.0 200 OK\r\n\r\n"
    assert pkt.proto_type is None
    assert pkt.chunk_order == []


def test_hep2_ignores_header_length_byte(impl: Implementation) -> None:
    data = bytearray(hep2())
    data[1] = 0xFF
    assert impl.decode_packet(bytes(data)).payload == b"OPTIONS sip:a SIP/2.0\r\n\r\n"


def test_hep1(impl: Implementation) -> None:
    pkt = impl.decode_packet(hep2(version=1, payload=b"BYE"))
    assert pkt.version == 1
    assert (pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port) == (
        "1.2.3.4",
        5060,
        "101.102.103.104",
        5070,
    )
    assert (pkt.ts_sec, pkt.ts_usec, pkt.capture_id) == (0, 0, None)
    assert pkt.payload == b"BYE"


def test_keep_alive_only_packet(impl: Implementation) -> None:
    pkt = impl.decode_packet(hep3(chunk(0x000D, struct.pack(">H", 30))))
    assert pkt.keep_alive == 30
    assert pkt.payload == b""
    assert pkt.src_ip is None
    assert pkt.capture_id is None


def test_header_only_packet(impl: Implementation) -> None:
    pkt = impl.decode_packet(b"HEP3\x00\x06")
    assert pkt.version == 3
    assert pkt.chunk_order == []


def test_eep1_magic_is_hep3(impl: Implementation) -> None:
    assert impl.decode_packet(hep3(*BASIC, magic=b"EEP1")).capture_id == 7


def test_flood_of_empty_chunks_is_refused_after_max_chunks(impl: Implementation) -> None:
    """The issue's 60 KB packet of 10,000 empty chunks: refused, not decoded in full."""
    for ctype, vendor in ((0x0099, 0), (0x0099, 2)):
        data = hep3(*BASIC, *[chunk(ctype, b"", vendor=vendor)] * 10_000)
        assert len(data) > 60_000
        with pytest.raises(HepDecodeError) as info:
            impl.decode_packet(data)
        # A generic type is refused at its second copy, a vendor flood at MAX_CHUNKS:
        # the offset in the detail shows where decoding stopped.
        stopped_at = int(info.value.detail.rsplit(" ", 1)[1])
        if vendor == 0:
            assert info.value.reason == "duplicate_chunk"
            assert stopped_at == len(hep3(*BASIC)) + 6
        else:
            assert info.value.reason == "too_many_chunks"
            assert stopped_at == len(hep3(*BASIC)) + 6 * (MAX_CHUNKS - len(BASIC))


def test_max_chunks_is_accepted(impl: Implementation) -> None:
    vendor_chunks = [chunk(i, b"v", vendor=2) for i in range(MAX_CHUNKS - len(BASIC) - 1)]
    pkt = impl.decode_packet(hep3(*BASIC, chunk(0x000F, b"x"), *vendor_chunks))
    assert len(pkt.chunk_order) == MAX_CHUNKS
    assert len(pkt.extra_chunks) == len(vendor_chunks)


def test_vendor_chunks_may_repeat(impl: Implementation) -> None:
    pkt = impl.decode_packet(hep3(chunk(0x000C, b"a", vendor=2), chunk(0x000C, b"b", vendor=2)))
    assert [c.value for c in pkt.extra_chunks] == [b"a", b"b"]
    assert pkt.capture_id is None


def test_hep2_at_max_packet_size_is_accepted(impl: Implementation) -> None:
    data = hep2(payload=b"")
    data += bytes(MAX_PACKET_SIZE - len(data))
    assert len(impl.decode_packet(data).payload) == MAX_PACKET_SIZE - 28


def test_trailing_bytes_after_total_length_ignored(impl: Implementation) -> None:
    data = hep3(*BASIC, chunk(0x000F, b"payload"))
    assert impl.decode_packet(data + b"\xff\x00garbage") == impl.decode_packet(data)


def test_text_chunks_never_fail_on_bad_utf8(impl: Implementation) -> None:
    pkt = impl.decode_packet(
        hep3(chunk(0x0011, b"call\xff\xfeid"), chunk(0x0013, b"node\xc3"), chunk(0x000E, b"\xff"))
    )
    assert pkt.correlation_id == "call\ufffd\ufffdid"
    assert pkt.node_name == "node\ufffd"
    assert pkt.auth_key == b"\xff"


def test_payload_bytes_kept_verbatim(impl: Implementation) -> None:
    payload = b"SIP\x00\xff\xfe binary"
    assert impl.decode_packet(hep3(chunk(0x000F, payload))).payload == payload


def test_vlan_and_empty_variable_chunks(impl: Implementation) -> None:
    pkt = impl.decode_packet(
        hep3(chunk(0x0012, struct.pack(">H", 42)), chunk(0x000E, b""), chunk(0x0011, b""))
    )
    assert (pkt.vlan, pkt.auth_key, pkt.correlation_id) == (42, b"", "")


def test_memoryview_and_bytearray_inputs(impl: Implementation) -> None:
    data = hep3(*BASIC, chunk(0x000F, b"x"))
    expected = impl.decode_packet(data)
    assert impl.decode_packet(memoryview(data)) == expected
    assert impl.decode_packet(memoryview(b"pad" + data)[3:]) == expected
    assert impl.decode_packet(bytearray(data)) == expected  # type: ignore[arg-type]


# --- encoder ---------------------------------------------------------------------


def test_encoder_writes_every_field(impl: Implementation) -> None:
    pkt = HepPacket(
        version=3,
        ip_family=10,
        ip_proto=6,
        src_ip="2001:db8::1",
        dst_ip="192.0.2.7",
        src_port=1,
        dst_port=65535,
        ts_sec=4_000_000_000,
        ts_usec=999_999,
        proto_type=100,
        capture_id=2**32 - 1,
        keep_alive=15,
        auth_key=b"secret",
        payload=b"log line",
        payload_was_compressed=True,
        correlation_id="call-1@host",
        vlan=100,
        node_name="node-é",
        extra_chunks=[HepChunk(0, 0x0017, b"\x02"), HepChunk(5, 0x0001, b"vendor")],
    )
    out = impl.decode_packet(encode_hep3(pkt))
    assert out.chunk_order[-1][1] == 0x0010
    out.chunk_order = []
    assert out == pkt


@pytest.mark.parametrize(
    "changes",
    [
        {"src_port": 65536},
        {"capture_id": -1},
        {"ip_family": 256},
        {"src_ip": "not-an-ip"},
        {"payload": b"x" * 65530},
        {"extra_chunks": [HepChunk(0, 0x0029, b"x" * 65530)]},
    ],
)
def test_encoder_rejects_unrepresentable_packets(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        encode_hep3(HepPacket(version=3, **changes))  # type: ignore[arg-type]


# --- stream framer ---------------------------------------------------------------

FRAME_A = hep3(*BASIC, chunk(0x000F, b"first"))
FRAME_B = hep3(*BASIC, chunk(0x000F, b"second frame"))


def test_framer_splits_and_buffers() -> None:
    framer = HepStreamFramer()
    stream = FRAME_A + FRAME_B
    assert framer.feed(stream[:3]) == []
    assert framer.buffered == 3
    assert framer.feed(stream[3 : len(FRAME_A) + 2]) == [FRAME_A]
    assert framer.buffered == 2
    assert framer.feed(stream[len(FRAME_A) + 2 :]) == [FRAME_B]
    assert framer.buffered == 0
    assert framer.feed(b"") == []
    assert framer.feed(memoryview(FRAME_A + FRAME_B + FRAME_A)) == [FRAME_A, FRAME_B, FRAME_A]


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        pytest.param(b"\x16\x03\x01", "bad_stream_magic", id="tls-client-hello-prefix"),
        pytest.param(b"HEP4\x00\x06", "bad_stream_magic", id="bad-magic"),
        pytest.param(b"HEP3\x00\x05\x00", "bad_length", id="length-5"),
        pytest.param(b"HEP3\x00\x00", "bad_length", id="length-0"),
        pytest.param(hep2(family=7), "bad_address_family", id="hepv2-family"),
        pytest.param(
            hep2(payload=b"OPTIONS sip:a SIP/2.0\r\nl: x1\r\n\r\n"),
            "bad_content_length",
            id="hepv2-content-length-not-a-number",
        ),
        pytest.param(
            hep2(payload=b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\n"),
            "bad_content_length",
            id="hepv2-content-length-conflict",
        ),
    ],
)
@pytest.mark.parametrize("before", [b"", FRAME_A, FRAME_A + hep2()], ids=["alone", "v3", "v3v2"])
def test_framer_delivers_frames_before_lost_framing(
    stream: bytes, reason: str, before: bytes
) -> None:
    framer = HepStreamFramer()
    frames = framer.feed(before + stream + FRAME_B)
    # What came before the break is delivered; the break is reported once.
    assert b"".join(frames) == before
    assert framer.error is not None
    assert framer.error.reason == reason
    assert framer.error_head == stream[0]
    assert framer.buffered == 0
    # The stream cannot be trusted any more, even for good bytes.
    assert framer.feed(FRAME_A) == []


def test_framer_valid_frame_then_garbage_in_one_read() -> None:
    framer = HepStreamFramer()
    assert framer.feed(FRAME_A + b"\x00garbage") == [FRAME_A]
    assert framer.error is not None
    assert (framer.error.reason, framer.error_head) == ("bad_stream_magic", 0)


def test_framer_max_frame() -> None:
    framer = HepStreamFramer(max_frame=len(FRAME_A))
    assert framer.feed(FRAME_A) == [FRAME_A]
    assert framer.feed(FRAME_B[:6]) == []
    assert framer.error is not None
    assert framer.error.reason == "frame_too_large"
    with pytest.raises(ValueError):
        HepStreamFramer(max_frame=5)


def _sip(
    body: bytes = b"", length_header: bytes | None = b"Content-Length", lf: bytes = b"\r\n"
) -> bytes:
    lines = [b"MESSAGE sip:bob@example.com SIP/2.0", b"Call-ID: framer-1@example.com"]
    if length_header is not None:
        lines.append(length_header + b": " + str(len(body)).encode())
    return lf.join(lines) + lf + lf + body


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(hep2(payload=_sip(b"v=0\r\n")), id="v2-content-length"),
        pytest.param(hep2(payload=_sip(b"hello", b"l")), id="v2-compact"),
        pytest.param(hep2(payload=_sip(b"x" * 300, b"CONTENT-length ")), id="v2-upper-space"),
        pytest.param(hep2(payload=_sip(length_header=None)), id="v2-no-content-length"),
        pytest.param(hep2(payload=_sip(b"\r\n\r\nbody", lf=b"\n")), id="v2-bare-lf"),
        pytest.param(hep2(payload=_sip(b"abc"), version=1), id="v1"),
        pytest.param(hep2(family=10, addr_len=16, payload=_sip(b"abc")), id="v2-ipv6"),
    ],
)
def test_framer_hep2_frames_by_sip_headers_and_content_length(
    impl: Implementation,
    frame: bytes,
) -> None:
    stream = frame + FRAME_A + frame + frame
    framer = HepStreamFramer()
    assert framer.feed(stream) == [frame, FRAME_A, frame, frame]
    assert framer.error is None
    # Byte by byte: the same frames, and the partial frame is never rescanned whole.
    framer = HepStreamFramer()
    frames = [f for i in range(len(stream)) for f in framer.feed(stream[i : i + 1])]
    assert frames == [frame, FRAME_A, frame, frame]
    assert framer.buffered == 0
    # The decoder reads the frame as one packet with its whole SIP message.
    header = 16 if frame[0] == 1 else 28 if frame[2] == 2 else 52
    assert impl.decode_packet(frame).payload == frame[header:]


def test_framer_hep2_frame_too_large() -> None:
    framer = HepStreamFramer(max_frame=1000)
    assert framer.feed(hep2(payload=_sip(b"x" * 2000))) == []
    assert framer.error is not None
    assert framer.error.reason == "frame_too_large"
    # Headers that never end are refused once the frame limit is reached.
    framer = HepStreamFramer(max_frame=1000)
    assert framer.feed(hep2(payload=b"MESSAGE sip:a SIP/2.0\r\n")) == []
    assert framer.feed(b"X-Pad: y\r\n" * 120) == []
    assert framer.error is not None
    assert framer.error.reason == "frame_too_large"


def test_framer_releases_its_buffer() -> None:
    framer = HepStreamFramer()
    assert framer.feed(FRAME_A[:10]) == []
    assert (framer.buffered, framer.head) == (10, FRAME_A[0])
    assert framer.feed(FRAME_A[10:]) == [FRAME_A]
    assert (framer.buffered, framer.head) == (0, None)


# --- names -----------------------------------------------------------------------


def test_proto_type_names() -> None:
    assert proto_type_name(1) == "SIP"
    assert proto_type_name(5) == "RTCP"
    assert proto_type_name(100) == "LOG"
    assert proto_type_name(200) == "unknown-200"
