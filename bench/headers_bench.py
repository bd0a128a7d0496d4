"""build_row's cost without header rules and with `--a-leg-header X-CID --custom-header X-CID`.

    .venv/bin/python bench/headers_bench.py [--tree PATH] [--rows 20000] [--repeat 7]

Records are the real HEP vectors plus generated INVITEs of which half carry an X-CID
header, as Avro-decoded records. `--tree` imports `pipeline` from another checkout (for
a side-by-side run against the base: a tree without header rules times only the first
line). Pure-Python rows (build_row has no compiled twin yet). Prints microseconds per
row, best of --repeat.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def records(rows: int) -> list[dict[str, Any]]:
    from pipeline.hep import decode_packet
    from pipeline.hep.errors import HepDecodeError
    from pipeline.hep.packet import HepPacket
    from pipeline.records import ReceiveContext, RecordIdGenerator, load_codec, packet_to_record

    vectors = Path(__file__).resolve().parent.parent / "tests" / "data" / "hep-vectors"
    packets = []
    for path in sorted(vectors.glob("*/packets/*.bin")):
        try:
            packets.append(decode_packet(path.read_bytes()))
        except HepDecodeError:
            continue
    for i in range(rows // 2):
        extra = f"X-CID: a-leg-{i % 500}@test\r\n" if i % 2 else ""
        payload = (
            f"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z{i}\r\n"
            f"From: <sip:alice@example.com>;tag=a{i}\r\nTo: <sip:bob@example.com>\r\n"
            f"Call-ID: b-leg-{i % 500}@test\r\nCSeq: 1 INVITE\r\n{extra}\r\n"
        ).encode()
        packets.append(HepPacket(version=3, ip_family=2, ip_proto=17, src_ip="10.0.0.1",
                                 dst_ip="10.0.0.2", src_port=5060, dst_port=5060,
                                 ts_sec=1_700_000_000 + i, proto_type=1, capture_id=1,
                                 payload=payload))
    codec, ids = load_codec(), RecordIdGenerator()
    context = ReceiveContext("udp", "127.0.0.1", 9999, "bench")
    mix = [packets[(i * 7919) % len(packets)] for i in range(rows)]
    return [codec.decode(codec.encode(packet_to_record(
        p, record_id=ids.next(), receive_time_us=1, context=context))) for p in mix]


def best_us(fn: Callable[[], object], count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    from pipeline.storage import build_row

    data = records(args.rows)
    n = len(data)

    def plain() -> None:
        for i, r in enumerate(data):
            build_row(r, kafka_partition=0, kafka_offset=i)

    print(f"{n} records from {args.tree}")
    print(f"no header rules        {best_us(plain, n, args.repeat):6.2f} us/row")
    try:
        from pipeline.storage.headers import header_extraction
    except ImportError:
        return
    headers = header_extraction(custom=("X-CID",), a_leg=("X-CID",))

    def with_rules() -> None:
        for i, r in enumerate(data):
            build_row(r, kafka_partition=0, kafka_offset=i, headers=headers)

    print(f"X-CID custom + a-leg   {best_us(with_rules, n, args.repeat):6.2f} us/row")


if __name__ == "__main__":
    main()
