"""Per-row CPU cost of the consumer's pure stages: decode, parse_sip, build_row.

    .venv/bin/python bench/rows_bench.py [--rows 20000] [--repeat 5] [--generated 0.5]

Records are the real HEP vectors (tests/data/hep-vectors/*/packets) turned into Avro
records exactly as the receiver publishes them, mixed with generated SIP INVITEs
(`--generated` is their share). Each stage is timed over the whole mix; the best
of `--repeat` runs is printed in microseconds per row.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.hep import decode_packet  # noqa: E402
from pipeline.hep.errors import HepDecodeError  # noqa: E402
from pipeline.records import (  # noqa: E402
    ReceiveContext,
    RecordIdGenerator,
    load_codec,
    packet_to_record,
)
from pipeline.sip import SipParseError, parse_sip, summarise_sip  # noqa: E402
from pipeline.sip import parser as sip_parser  # noqa: E402
from pipeline.storage import build_row  # noqa: E402
from tests.integration.consume_support import sip_packet  # noqa: E402

VECTORS = ROOT / "tests" / "data" / "hep-vectors"


def vector_packets() -> list[Any]:
    packets = []
    for path in sorted(VECTORS.glob("*/packets/*.bin")):
        try:
            packets.append(decode_packet(path.read_bytes()))
        except HepDecodeError:
            continue
    return packets


def encoded_mix(rows: int, generated: float) -> list[bytes]:
    codec = load_codec()
    ids = RecordIdGenerator()
    context = ReceiveContext("udp", "127.0.0.1", 9999, "bench")
    now_us = int(time.time() * 1_000_000)
    real = vector_packets()
    n_gen = int(rows * generated)
    packets = [real[i % len(real)] for i in range(rows - n_gen)]
    packets += [sip_packet(f"gen-{i % 500}@test", i) for i in range(n_gen)]
    # Interleave so the caches see a realistic mix rather than two runs.
    packets = [packets[(i * 7919) % len(packets)] for i in range(len(packets))]
    return [
        codec.encode(packet_to_record(p, record_id=ids.next(), receive_time_us=now_us,
                                      context=context))
        for p in packets
    ]


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
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--generated", type=float, default=0.5,
                        help="share of generated SIP INVITEs in the mix (0..1)")
    args = parser.parse_args()

    values = encoded_mix(args.rows, args.generated)
    decode = load_codec().decode
    records = [decode(v) for v in values]
    payloads = [r["payload"] for r in records if r.get("proto_type") in (None, 1)]
    n = len(records)

    def run_decode() -> None:
        for v in values:
            decode(v)

    def run_parse() -> None:
        for p in payloads:
            with contextlib.suppress(SipParseError):
                parse_sip(p)

    def run_summarise() -> None:
        for p in payloads:
            with contextlib.suppress(SipParseError):
                summarise_sip(p)

    def run_build() -> None:
        for i, r in enumerate(records):
            build_row(r, kafka_partition=0, kafka_offset=i)

    def run_all() -> None:
        for i, v in enumerate(values):
            build_row(decode(v), kafka_partition=0, kafka_offset=i)

    caches = [getattr(sip_parser, name) for name in dir(sip_parser)
              if name.endswith("_CACHE") and name != "_NAME_CACHE"]

    def run_all_cold() -> None:
        # Every parsed-value cache emptied before each row: the worst case, a
        # stream in which no From/To/Via/Contact/R-URI value ever repeats.
        for i, v in enumerate(values):
            for cache in caches:
                cache.clear()
            build_row(decode(v), kafka_partition=0, kafka_offset=i)

    d = best_us(run_decode, n, args.repeat)
    p = best_us(run_parse, len(payloads), args.repeat)
    s = best_us(run_summarise, len(payloads), args.repeat) if caches else float("nan")
    b = best_us(run_build, n, args.repeat)
    a = best_us(run_all, n, args.repeat)
    c = best_us(run_all_cold, n, args.repeat) if caches else float("nan")
    print(f"{n} records ({len(payloads)} SIP), python {sys.version.split()[0]}")
    print(f"decode             {d:6.2f} us/row")
    print(f"parse_sip          {p:6.2f} us/row (SIP records only)")
    print(f"summarise_sip      {s:6.2f} us/row (SIP records only; what build_row calls)")
    print(f"build_row          {b:6.2f} us/row (parse included)")
    print(f"decode + build_row {a:6.2f} us/row  ({1e6 / a:,.0f} rows/s on one core)")
    print(f"  same, cold caches {c:6.2f} us/row  ({1e6 / c:,.0f} rows/s on one core)")


if __name__ == "__main__":
    main()
