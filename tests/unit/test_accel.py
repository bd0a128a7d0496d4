"""The compiled per-packet functions give exactly what the pure reference gives.

Same HepPacket or the same HepDecodeError (reason and detail), the same Kafka key and
byte-identical Avro records, over the real vectors, generated packets, mutated and
arbitrary bytes and the hostile corpus. Skipped (with the reason) when the extension is
not built; the pure path alone is then tested by the rest of the suite.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.hep import encode_hep3
from pipeline.hep.errors import HepDecodeError
from pipeline.hep.packet import HepChunk, HepPacket
from pipeline.records import ReceiveContext, RecordIdGenerator, load_codec
from tests.conftest import load_vectors
from tests.hostile import HostileCorpus
from tests.implementations import COMPILED, NOT_BUILT, PURE, Implementation
from tests.unit.test_hep_properties import ALL_VECTORS, mutated_vector, packets, raw_chunk

pytestmark = pytest.mark.skipif(COMPILED is None, reason=NOT_BUILT)

CODEC = load_codec()
ROOT = Path(__file__).resolve().parent.parent.parent
RECORD_ID = bytes(range(16))
NOW_US = 1_800_000_000_123_456
CONTEXTS = [
    ReceiveContext("udp", "127.0.0.1", 5060, "receiver-1"),
    ReceiveContext("tcp", "::1", 40000, "r", forward_auth_key=True),
    ReceiveContext("tls", "10.0.0.9", 0, "é-receiver", forward_auth_key=False),
]


class _Encoders:
    """Each implementation's encoders, built once (the pure one precomputes tables)."""

    def __init__(self) -> None:
        self._built: dict[str, tuple[Any, Any]] = {}

    def __call__(self, impl: Implementation) -> tuple[Any, Any]:
        if impl.name not in self._built:
            self._built[impl.name] = (impl.packet_encoder(CODEC), impl.datagram_encoder(CODEC))
        return self._built[impl.name]


encoders = _Encoders()


def _compiled() -> Implementation:
    assert COMPILED is not None
    return COMPILED


def _outcome(impl: Implementation, data: bytes | memoryview) -> Any:
    try:
        return impl.decode_packet(data)
    except HepDecodeError as exc:
        return ("HepDecodeError", exc.reason, exc.detail)


def _record(
    impl: Implementation, data: bytes, context: ReceiveContext, now_us: int = NOW_US
) -> Any:
    """What the receiver publishes for `data`: (key, value), by the packet path and by the
    fused datagram path (which must agree), or the decode error."""
    encode, datagrams = encoders(impl)
    try:
        packet = impl.decode_packet(data)
    except HepDecodeError as exc:
        with pytest.raises(HepDecodeError) as fused_error:
            datagrams.encode_datagram(data, RECORD_ID, now_us, context)
        assert fused_error.value.reason == exc.reason
        return ("HepDecodeError", exc.reason, exc.detail)
    record = (impl.record_key(packet), encode(packet, RECORD_ID, now_us, context))
    fused = datagrams.encode_datagram(data, RECORD_ID, now_us, context)
    assert fused == record
    return record


def assert_same(data: bytes, context: ReceiveContext = CONTEXTS[0], now_us: int = NOW_US) -> None:
    compiled = _compiled()
    assert _outcome(compiled, data) == _outcome(PURE, data)
    assert _outcome(compiled, memoryview(data)) == _outcome(PURE, data)
    assert _record(compiled, data, context, now_us) == _record(PURE, data, context, now_us)


@pytest.mark.parametrize("context", CONTEXTS, ids=lambda c: c.transport)
def test_every_vector_gives_the_same_packet_key_and_record(context: ReceiveContext) -> None:
    assert len(ALL_VECTORS) == 267
    for data in ALL_VECTORS:
        assert_same(data, context)


def test_the_vectors_keys_are_their_call_ids() -> None:
    packets_, _ = load_vectors("kamailio_hep3_udp")
    keys = {_compiled().record_key(_compiled().decode_packet(p)) for p in packets_}
    assert len(keys) == 30 and None not in keys


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets, st.binary(max_size=4), st.sampled_from(CONTEXTS), st.integers(0, 2**62))
def test_generated_packets(
    pkt: HepPacket, trailer: bytes, context: ReceiveContext, now: int
) -> None:
    assert_same(encode_hep3(pkt) + trailer, context, now)


@settings(max_examples=300, deadline=None)
@given(packets, st.sampled_from(["gzip", "zlib", "raw"]))
def test_generated_packets_with_compressed_payloads(pkt: HepPacket, kind: str) -> None:
    data = encode_hep3(pkt)
    body = _compress(pkt.payload, kind)
    # Swap the payload chunk for a compressed one (0x0010), appended at the end.
    packet = HepPacket(**{**_fields(pkt), "payload": b""})
    plain = encode_hep3(packet)
    chunk = struct.pack(">HHH", 0, 0x10, 6 + len(body)) + body
    assert_same(plain[:4] + struct.pack(">H", len(plain) + len(chunk)) + plain[6:] + chunk)
    assert_same(data)


def _fields(pkt: HepPacket) -> dict[str, Any]:
    return {name: getattr(pkt, name) for name in pkt.__slots__}  # type: ignore[attr-defined]


def _compress(payload: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return zlib.compress(payload, wbits=31)
    if kind == "zlib":
        return zlib.compress(payload)
    return zlib.compress(payload, wbits=-15)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_vector())
def test_mutated_vectors(data: bytes) -> None:
    assert_same(data)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    assert_same(data)


@settings(max_examples=1000, deadline=None)
@given(st.lists(raw_chunk, max_size=12), st.sampled_from([b"HEP3", b"EEP1"]))
def test_random_chunk_sequences(chunks: list[bytes], magic: bytes) -> None:
    body = b"".join(chunks)
    assert_same(magic + struct.pack(">H", (6 + len(body)) & 0xFFFF) + body)


def test_the_hostile_corpus() -> None:
    hep2, _ = load_vectors("kamailio_hep2_udp")
    corpus = HostileCorpus(seed=19, tag="accel", ts_sec=1_800_000_000, hep2_packets=hep2)
    for kind in corpus.mutations:
        for _ in range(60):
            assert_same(corpus.mutant([kind]).data)
    for _ in range(100):
        assert_same(corpus.valid().data)


_ints = st.one_of(st.none(), st.integers(0, 2**16), st.integers(-(2**63), 2**63 - 1))
_texts = st.one_of(st.none(), st.text(alphabet=st.characters(blacklist_categories=("Cs",))))


@settings(max_examples=500, deadline=None)
@given(
    ints=st.lists(_ints, min_size=8, max_size=8),
    texts=st.lists(_texts, min_size=4, max_size=4),
    auth_key=st.one_of(st.none(), st.binary(max_size=20)),
    payload=st.binary(max_size=300),
    ts=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    now_us=st.integers(-(2**62), 2**62),
    chunks=st.lists(
        st.builds(HepChunk, st.integers(0, 2**20), st.integers(0, 2**20), st.binary(max_size=9)),
        max_size=3,
    ),
    context=st.sampled_from(CONTEXTS),
)
def test_any_packet_object_encodes_to_the_same_bytes(
    ints: list[int | None],
    texts: list[str | None],
    auth_key: bytes | None,
    payload: bytes,
    ts: tuple[int, int],
    now_us: int,
    chunks: list[HepChunk],
    context: ReceiveContext,
) -> None:
    packet = HepPacket(
        3, ints[0], ints[1], texts[0], texts[1], ints[2], ints[3], ts[0], ts[1], ints[4],
        ints[5], ints[6], auth_key, payload, bool(ints[7]), texts[2], ints[7], texts[3], chunks,
    )  # fmt: skip
    pure = encoders(PURE)[0](packet, RECORD_ID, now_us, context)
    assert encoders(_compiled())[0](packet, RECORD_ID, now_us, context) == pure
    assert _compiled().record_key(packet) == PURE.record_key(packet)


def test_a_record_id_of_the_wrong_size_is_refused_alike() -> None:
    data = ALL_VECTORS[0]
    packet = PURE.decode_packet(data)
    for impl in (PURE, _compiled()):
        encode, datagrams = encoders(impl)
        with pytest.raises(ValueError, match="16 bytes"):
            encode(packet, b"short", NOW_US, CONTEXTS[0])
        with pytest.raises(ValueError, match="16 bytes"):
            datagrams.encode_datagram(data, b"short", NOW_US, CONTEXTS[0])


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.lists(
            st.sampled_from(
                [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"Call-ID", b"cAlL-iD", b"i", b"I",
                 b"x", b"INVITE sip:a SIP/2.0", b"\xff", b"Call-IDs"]
            ),
            max_size=30,
        ).map(b"".join),
    ),
    st.integers(-2, 80),
)  # fmt: skip
def test_call_id_scan(payload: bytes, limit: int) -> None:
    assert _compiled().scan_call_id(payload, limit) == PURE.scan_call_id(payload, limit)
    assert _compiled().scan_call_id(payload) == PURE.scan_call_id(payload)


def test_a_batch_gives_what_each_datagram_gives() -> None:
    hep2, _ = load_vectors("kamailio_hep2_udp")
    corpus = HostileCorpus(seed=23, tag="batch", ts_sec=1_800_000_000, hep2_packets=hep2)
    datagrams = [*ALL_VECTORS[:40], *(corpus.mutant().data for _ in range(200)), b""]
    contexts = [CONTEXTS[i % len(CONTEXTS)] for i in range(len(datagrams))]
    outcomes: dict[str, list[Any]] = {}
    for impl in (PURE, _compiled()):
        ids = RecordIdGenerator(prefix=b"\x07" * 8)
        outcomes[impl.name] = encoders(impl)[1].encode_datagrams(
            datagrams, contexts, NOW_US, ids.next
        )
    assert outcomes["compiled"] == outcomes["pure"]
    assert len(outcomes["pure"]) == len(datagrams)
    refused = [o for o in outcomes["pure"] if isinstance(o, str)]
    accepted = [o for o in outcomes["pure"] if isinstance(o, tuple)]
    assert refused and len(accepted) >= 40
    # Ids are drawn only for the datagrams that decoded: 1..accepted, in order.
    ids_seen = [int.from_bytes(value[18:26], "big") for _, value in accepted]
    assert ids_seen == list(range(1, len(accepted) + 1))


def _implementation_in_a_fresh_interpreter(env: dict[str, str]) -> list[str]:
    code = (
        "import sys; import pipeline.accel as a; import pipeline.receiver.intake; "
        "import pipeline.storage.rows; "
        "print(a.IMPLEMENTATION, 'pipeline._speedups' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    return result.stdout.split()


def test_pure_python_env_imports_no_compiled_module() -> None:
    env = {**os.environ, "HEP_INGEST_PURE_PYTHON": "1"}
    assert _implementation_in_a_fresh_interpreter(env) == ["pure", "False"]


def test_the_compiled_module_is_the_default_when_built() -> None:
    env = {k: v for k, v in os.environ.items() if k != "HEP_INGEST_PURE_PYTHON"}
    assert _implementation_in_a_fresh_interpreter(env) == ["compiled", "True"]



_EXPECTED_KEY = b"acceptanceKey"
_auth_keys = st.one_of(
    st.sampled_from(
        [None, b"", _EXPECTED_KEY, _EXPECTED_KEY[:-1], _EXPECTED_KEY + b"x", b"acceptanceKez"]
    ),
    st.binary(max_size=20),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    carried=st.lists(st.tuples(st.integers(0, len(ALL_VECTORS) - 1), _auth_keys), max_size=12),
    expected=st.one_of(st.none(), st.just(_EXPECTED_KEY), st.binary(max_size=20)),
    garbage=st.lists(st.binary(max_size=40), max_size=3),
)
def test_a_batch_checks_the_auth_key_alike(
    carried: list[tuple[int, bytes | None]], expected: bytes | None, garbage: list[bytes]
) -> None:
    """Packets carrying various keys (or none), HEPv1/v2 (never a key) and garbage: the
    compiled and the pure batch refuse the same ones for the same reasons."""
    from dataclasses import replace

    from pipeline.records.datagrams import AUTH_MISSING, AUTH_REJECTIONS, auth_rejection

    datagrams: list[bytes] = []
    for index, key in carried:
        packet = PURE.decode_packet(ALL_VECTORS[index])
        datagrams.append(
            encode_hep3(replace(packet, version=3, auth_key=key))
            if packet.version == 3 else ALL_VECTORS[index]
        )  # fmt: skip
    datagrams += garbage
    contexts = [CONTEXTS[i % len(CONTEXTS)] for i in range(len(datagrams))]
    outcomes: dict[str, list[Any]] = {}
    for impl in (PURE, _compiled()):
        ids = RecordIdGenerator(prefix=b"\x05" * 8)
        outcomes[impl.name] = encoders(impl)[1].encode_datagrams(
            datagrams, contexts, NOW_US, ids.next, expected
        )
    assert outcomes["compiled"] == outcomes["pure"]
    for data, outcome in zip(datagrams, outcomes["pure"], strict=True):
        try:
            packet = PURE.decode_packet(data)
        except HepDecodeError as exc:
            assert outcome == exc.reason
            continue
        refusal = None if expected is None else auth_rejection(packet.auth_key, expected)
        if refusal is None:
            assert isinstance(outcome, tuple)
        else:
            assert outcome == refusal and refusal in AUTH_REJECTIONS
            assert packet.auth_key is not None or refusal == AUTH_MISSING
    # Ids only for the accepted ones, in order.
    accepted = [o for o in outcomes["pure"] if isinstance(o, tuple)]
    ids_seen = [int.from_bytes(value[18:26], "big") for _, value in accepted]
    assert ids_seen == list(range(1, len(accepted) + 1))
