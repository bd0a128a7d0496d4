"""Per-row CPU cost of the consumer's stages, pure-Python vs compiled, rows in wire form.

    .venv/bin/python bench/rows_wire_bench.py [--rows 20000] [--repeat 5]

Rows come from bench/load/hep_corpus.bin (the distinct-Call-ID load), turned into Kafka
values exactly as the receiver publishes them. Printed, best of `--repeat` runs, in
microseconds per row:

    decode        RecordCodec.decode (the pure Avro reader)
    summary       summarise_sip of the SIP payloads, pure and compiled
    build         build_row of decoded records (its SIP summary included)
    encode        copy_tuple of built rows (the binary COPY tuple), pure and compiled
    build_rows    the whole per-record path of one partition chunk, what the consumer
                  calls: pure (decode + build_row + copy_tuple) and compiled (values
                  of the newest schema read and built in C); with and without the
                  tuples (the stdout sink wants none)

Compiled decode and build are fused inside build_rows and have no figure of their own.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.codec_bench import CORPUS, load_corpus  # noqa: E402
from pipeline.hep import decode_packet  # noqa: E402
from pipeline.hep.errors import HepDecodeError  # noqa: E402
from pipeline.records import (  # noqa: E402
    ReceiveContext,
    RecordIdGenerator,
    load_codec,
    packet_to_record,
)
from pipeline.sip import SipParseError, summarise_sip  # noqa: E402
from pipeline.storage import batch, build_row, wire  # noqa: E402

try:
    from pipeline import _speedups
except ImportError:  # installed without a C compiler: pure figures only
    _speedups = None  # type: ignore[assignment]


def kafka_values(rows: int) -> list[bytes]:
    codec = load_codec()
    ids = RecordIdGenerator()
    context = ReceiveContext("udp", "127.0.0.1", 9999, "bench")
    now_us = int(time.time() * 1_000_000)
    values = []
    for data in load_corpus(CORPUS, rows):
        try:
            packet = decode_packet(data)
        except HepDecodeError:
            continue
        values.append(codec.encode(packet_to_record(
            packet, record_id=ids.next(), receive_time_us=now_us, context=context)))
    return values


def best_us(fn: Callable[[], object], count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return best / max(count, 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    codec = load_codec()
    values = kafka_values(args.rows)
    records = [codec.decode(v) for v in values]
    payloads = [r["payload"] for r in records if r.get("proto_type") in (None, 1)]
    rows = [build_row(r, kafka_partition=0, kafka_offset=i) for i, r in enumerate(records)]
    offsets = list(range(len(values)))
    jsonb = wire.WireFormat()
    n = len(values)

    def summaries(summarise: Callable[[bytes], object]) -> Callable[[], None]:
        def run() -> None:
            for p in payloads:
                with contextlib.suppress(SipParseError):
                    summarise(p)
        return run

    def chunk(build_rows: Callable[..., object], wire_format: object) -> Callable[[], None]:
        def run() -> None:
            for start in range(0, n, 500):  # the worker's decode slice
                build_rows(values[start:start + 500], 0, offsets[start:start + 500],
                           codec=codec, wire_format=wire_format)
        return run

    figures: list[tuple[str, float, float | None]] = []
    compiled = _speedups

    def stage(label: str, pure: Callable[[], None], fast: Callable[[], None] | None,
              count: int = n) -> None:
        figures.append((label, best_us(pure, count, args.repeat),
                        best_us(fast, count, args.repeat) if fast is not None else None))

    stage("decode", lambda: [codec.decode(v) for v in values], None)
    stage("summary (SIP rows)", summaries(summarise_sip),
          summaries(compiled.summarise_sip) if compiled else None, len(payloads))
    stage("build (summary incl.)",
          lambda: [build_row(r, kafka_partition=0, kafka_offset=1) for r in records], None)
    stage("encode", lambda: [wire.copy_tuple(r.values) for r in rows],
          (lambda: [compiled.copy_tuple(r.values) for r in rows]) if compiled else None)
    stage("build_rows, no tuples", chunk(batch.build_rows, None),
          chunk(compiled.build_rows, None) if compiled else None)
    stage("build_rows, tuples", chunk(batch.build_rows, jsonb),
          chunk(compiled.build_rows, jsonb) if compiled else None)

    print(f"{n} rows ({len(payloads)} SIP) from {CORPUS.name}, python "
          f"{sys.version.split()[0]}; CPU us per row, best of {args.repeat}")
    print(f"{'stage':24s} {'pure':>8s} {'compiled':>9s} {'ratio':>6s}")
    for label, pure_us, fast_us in figures:
        fast = f"{fast_us:9.2f}" if fast_us is not None else f"{'(fused)':>9s}"
        ratio = f"{pure_us / fast_us:6.1f}" if fast_us else ""
        print(f"{label:24s} {pure_us:8.2f} {fast} {ratio}")


if __name__ == "__main__":
    main()
