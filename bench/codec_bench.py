"""Per-packet CPU cost of the receiver's pure stages, pure-Python vs compiled.

    .venv/bin/python bench/codec_bench.py [--packets 20000] [--repeat 5]

Packets come from bench/load/hep_corpus.bin (the distinct-Call-ID load: records of a
u16 little-endian length then the HEP bytes). For each implementation (pipeline.accel
picks one at run time; here both are timed side by side) it prints the best of
`--repeat` runs, in microseconds per packet, of: decode (decode_packet), key
(record_key of the decoded packet), the Call-ID scan alone (scan_call_id of the
payload), Avro (the packet encoder), the sum of decode, key and Avro, and the fused
decode + key + Avro of `encode_datagrams` over the whole list (what a batch receive
path calls).
"""

from __future__ import annotations

import argparse
import gc
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.records import ReceiveContext, RecordIdGenerator, load_codec  # noqa: E402
from tests.implementations import COMPILED, PURE, Implementation  # noqa: E402

CORPUS = ROOT / "bench" / "load" / "hep_corpus.bin"


def load_corpus(path: Path, limit: int) -> list[bytes]:
    data = path.read_bytes()
    packets: list[bytes] = []
    offset = 0
    while offset + 2 <= len(data) and len(packets) < limit:
        (size,) = struct.unpack_from("<H", data, offset)
        packets.append(data[offset + 2 : offset + 2 + size])
        offset += 2 + size
    return packets


def best_us(run: Callable[[], Any], count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best / count * 1e6


def measure(impl: Implementation, datagrams: list[bytes], repeat: int) -> dict[str, float]:
    codec = load_codec()
    context = ReceiveContext("udp", "127.0.0.1", 40000, "bench")
    ids = RecordIdGenerator()
    decode, key_of, scan = impl.decode_packet, impl.record_key, impl.scan_call_id
    encode = impl.packet_encoder(codec)
    fused = impl.datagram_encoder(codec)
    packets = [decode(d) for d in datagrams]
    record_id = ids.next()
    now_us = time.time_ns() // 1000
    contexts = [context] * len(datagrams)
    n = len(datagrams)
    results = {
        "decode": best_us(lambda: [decode(d) for d in datagrams], n, repeat),
        "key": best_us(lambda: [key_of(p) for p in packets], n, repeat),
        # The corpus carries correlation ids (the key then skips the scan): the Call-ID
        # scan of the same payloads, alone.
        "callid scan": best_us(lambda: [scan(p.payload) for p in packets], n, repeat),
        "avro": best_us(
            lambda: [encode(p, record_id, now_us, context) for p in packets], n, repeat
        ),
    }
    results["sum"] = results["decode"] + results["key"] + results["avro"]
    results["fused batch"] = best_us(
        lambda: fused.encode_datagrams(datagrams, contexts, now_us, ids.next), n, repeat
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    datagrams = load_corpus(CORPUS, args.packets)
    print(f"{len(datagrams)} packets from {CORPUS.relative_to(ROOT)}, best of {args.repeat}")
    impls = [PURE] if COMPILED is None else [PURE, COMPILED]
    if COMPILED is None:
        print("pipeline._speedups is not built: pure only")
    table = {impl.name: measure(impl, datagrams, args.repeat) for impl in impls}
    stages = list(next(iter(table.values())))
    print(f"{'us/packet':<12}" + "".join(f"{name:>12}" for name in table) + "       ratio")
    for stage in stages:
        row = [table[name][stage] for name in table]
        ratio = f"{row[0] / row[1]:>11.1f}x" if len(row) == 2 else ""
        print(f"{stage:<12}" + "".join(f"{v:>12.2f}" for v in row) + ratio)


if __name__ == "__main__":
    main()
