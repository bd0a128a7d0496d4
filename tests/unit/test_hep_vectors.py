"""Every real capture decodes to what three independent decoders agreed on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.hep import encode_hep3
from tests.implementations import Implementation

VECTORS_DIR = Path(__file__).resolve().parent.parent / "data" / "hep-vectors"
VECTOR_SETS = ("kamailio_hep3_udp", "kamailio_hep2_udp", "kamailio_hep3_tcp", "hepjs_hep3_udp")
EXPECTED_COUNTS = {
    "kamailio_hep3_udp": 170,
    "kamailio_hep2_udp": 51,
    "kamailio_hep3_tcp": 34,
    "hepjs_hep3_udp": 12,
}


def _cases() -> list[Any]:
    cases = []
    for name in VECTOR_SETS:
        expected = json.loads((VECTORS_DIR / name / "expected.json").read_text())
        for entry in expected["packets"]:
            cases.append(pytest.param(name, entry, id=f"{name}-{entry['index']:04d}"))
    return cases


CASES = _cases()


def test_every_vector_is_covered() -> None:
    counts: dict[str, int] = {}
    for case in CASES:
        counts[case.values[0]] = counts.get(case.values[0], 0) + 1
    assert counts == EXPECTED_COUNTS


@pytest.mark.parametrize(("folder", "exp"), CASES)
def test_vector_decodes_to_expected(impl: Implementation, folder: str, exp: dict[str, Any]) -> None:
    data = (VECTORS_DIR / folder / exp["file"]).read_bytes()
    pkt = impl.decode_packet(data)

    assert pkt.version == exp["hep_version"]
    assert pkt.ip_family == exp["ip_family"]
    assert pkt.ip_proto == exp["ip_proto"]
    assert pkt.src_ip == exp["src_ip"]
    assert pkt.src_port == exp["src_port"]
    assert pkt.dst_ip == exp["dst_ip"]
    assert pkt.dst_port == exp["dst_port"]
    assert pkt.ts_sec == exp["ts_sec"]
    assert pkt.ts_usec == exp["ts_usec"]
    assert pkt.proto_type == exp["proto_type"]
    assert pkt.capture_id == exp["capture_id"]
    expected_key = exp.get("auth_key")
    assert pkt.auth_key == (expected_key.encode() if expected_key is not None else None)
    assert pkt.correlation_id == exp.get("correlation_id")
    assert pkt.node_name == exp.get("node_name")
    assert len(pkt.payload) == exp["payload_len"]
    assert hashlib.sha256(pkt.payload).hexdigest() == exp["payload_sha256"]
    assert not pkt.payload_was_compressed
    assert pkt.extra_chunks == []
    order = [f"0x{v:04x}:0x{t:04x}:{n}" for v, t, n in pkt.chunk_order]
    assert order == exp.get("chunk_order", [])
    # Receivers hand the codec a memoryview of their read buffer.
    assert impl.decode_packet(memoryview(data)) == pkt


SPEC_EXAMPLE = bytes.fromhex(
    "48455033 0071"
    "0000 0001 0007 02            0000 0002 0007 11"
    "0000 0003 000a d4ca0001      0000 0004 000a 527400d3"
    "0000 0007 0008 2eea          0000 0008 0008 13c4"
    "0000 0009 000a 4e4982cb      0000 000a 000a 0001d4c0"
    "0000 000b 0007 01            0000 000c 000a 000000e4"
    "0000 000f 0014 494e5649544520736970 3a626f62".replace(" ", "")
)


def test_specification_example(impl: Implementation) -> None:
    assert len(SPEC_EXAMPLE) == 113
    pkt = impl.decode_packet(SPEC_EXAMPLE)
    assert pkt.version == 3
    assert (pkt.ip_family, pkt.ip_proto) == (2, 17)
    assert (pkt.src_ip, pkt.src_port) == ("212.202.0.1", 12010)
    assert (pkt.dst_ip, pkt.dst_port) == ("82.116.0.211", 5060)
    assert (pkt.ts_sec, pkt.ts_usec) == (1313440459, 120000)
    assert pkt.proto_type == 1
    assert pkt.capture_id == 228
    assert pkt.payload == b"INVITE sip:bob"
    assert pkt.auth_key is None
    assert pkt.correlation_id is None
    assert pkt.node_name is None
    assert pkt.keep_alive is None
    assert len(pkt.chunk_order) == 11


def test_encoder_reproduces_specification_example(impl: Implementation) -> None:
    assert encode_hep3(impl.decode_packet(SPEC_EXAMPLE)) == SPEC_EXAMPLE


@pytest.mark.parametrize("folder", ["kamailio_hep3_udp", "kamailio_hep3_tcp"])
def test_encoder_reproduces_kamailio_bytes(impl: Implementation, folder: str) -> None:
    # Kamailio's chunk order is the encoder's order, so its packets re-encode exactly.
    for path in sorted((VECTORS_DIR / folder / "packets").glob("*.bin")):
        data = path.read_bytes()
        assert encode_hep3(impl.decode_packet(data)) == data, path.name
