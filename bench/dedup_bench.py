"""Per-row CPU cost of the duplicate-capture check (consume --dedup-window-ms).

    .venv/bin/python bench/dedup_bench.py [--rows 20000] [--repeat 5]

Rows are built by the consumer's own row builder from the distinct-call corpus
(bench/load/hep_corpus.bin, each packet's Call-ID rewritten with a sequence number as
hep_send_seq.c does, so no two are alike) and fed to `DuplicateFilter` in batches of
500, as the worker does: once all distinct, once with every message captured twice (the
second copy 1 ms later from another agent). Prints the best of --repeat runs in
microseconds per row.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.consumer.dedup import DedupSettings, DuplicateFilter  # noqa: E402
from pipeline.hep import decode_packet  # noqa: E402
from pipeline.records import (  # noqa: E402
    ReceiveContext,
    RecordIdGenerator,
    packet_to_record,
)
from pipeline.storage import build_row  # noqa: E402
from pipeline.storage.rows import CaptureRow  # noqa: E402

CORPUS = ROOT / "bench" / "load" / "hep_corpus.bin"
BATCH = 500


def corpus_packets() -> list[bytes]:
    data = CORPUS.read_bytes()
    packets, at = [], 0
    while at < len(data):
        size = int.from_bytes(data[at:at + 2], "little")
        packets.append(data[at + 2:at + 2 + size])
        at += 2 + size
    return packets


def distinct_rows(count: int, twice: bool) -> list[CaptureRow]:
    corpus = [decode_packet(p) for p in corpus_packets()]
    ids = RecordIdGenerator()
    context = ReceiveContext(transport="udp", sender_ip="127.0.0.1", sender_port=9060,
                             receiver_id="bench")
    rows = []
    for seq in range(count // 2 if twice else count):
        packet = corpus[seq % len(corpus)]
        payload = packet.payload
        for header in (b"\r\nCall-ID: ", b"\r\ni: "):
            at = payload.find(header)
            if at >= 0:
                start = at + len(header)
                payload = payload[:start] + b"%012x" % seq + payload[start + 12:]
                break
        copies = [replace(packet, payload=payload)]
        if twice:
            usec = packet.ts_usec + 1000
            copies.append(replace(packet, payload=payload, capture_id=4242,
                                  ts_sec=packet.ts_sec + usec // 1_000_000,
                                  ts_usec=usec % 1_000_000))
        for copy in copies:
            record = packet_to_record(copy, record_id=ids.next(), receive_time_us=0,
                                      context=context)
            rows.append(build_row(record, kafka_partition=0, kafka_offset=len(rows)))
    return rows


def best_us(rows: list[CaptureRow], repeat: int) -> tuple[float, int]:
    best, found = float("inf"), 0
    for _ in range(repeat):
        dedup = DuplicateFilter(DedupSettings(window_ms=500))
        started = time.process_time()
        found = 0
        for first in range(0, len(rows), BATCH):
            chunk = rows[first:first + BATCH]
            found += len(dedup.duplicates(0, chunk, range(first, first + len(chunk))))
        best = min(best, time.process_time() - started)
    return best / len(rows) * 1e6, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for twice in (False, True):
        rows = distinct_rows(args.rows, twice)
        us, found = best_us(rows, args.repeat)
        label = "every message twice" if twice else "all distinct"
        print(f"dedup check, {label:20} {us:5.2f} us/row  ({found} duplicates in {len(rows)})")


if __name__ == "__main__":
    main()
