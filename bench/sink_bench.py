"""Rows/s into PostgreSQL: PostgresSink's idempotent path vs plain COPY (not a test).

    .venv/bin/python bench/sink_bench.py [--batches 10] [--batch-size 10000] [--dsn DSN]

Without --dsn it starts an embedded PostgreSQL in a temporary directory. Rows are
built once from the kamailio_hep3_udp vectors with fresh record ids; the build cost
per row (SIP parse included) is printed separately.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.embedded import EmbeddedPostgres
from pipeline.hep import decode_packet
from pipeline.postgres.sink import PostgresSink, SinkSettings
from pipeline.records import ReceiveContext, RecordIdGenerator, packet_to_record
from pipeline.storage import COLUMNS, CaptureRow, build_row
from tests.conftest import load_vectors


def make_rows(count: int) -> tuple[list[CaptureRow], float]:
    packets, _ = load_vectors("kamailio_hep3_udp")
    context = ReceiveContext("udp", "127.0.0.1", 9, "bench")
    ids = RecordIdGenerator()
    now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
    templates = [packet_to_record(decode_packet(p), record_id=b"", receive_time_us=now_us,
                                  context=context) for p in packets]
    records = [{**templates[i % len(templates)], "record_id": ids.next(),
                "capture_time": now_us} for i in range(count)]
    started = time.perf_counter()
    rows = [build_row(r, kafka_partition=0, kafka_offset=i) for i, r in enumerate(records)]
    return rows, (time.perf_counter() - started) / count * 1e6


async def run(dsn: str, batches: int, size: int) -> None:
    rows, build_us = make_rows(batches * size * 2)
    print(f"build_row: {build_us:.1f} us/row ({1e6 / build_us:,.0f} rows/s on one core)")
    sink = PostgresSink(SinkSettings(dsn, max_connections=2))
    await sink.start()
    chunks = [rows[i:i + size] for i in range(0, batches * size, size)]
    started = time.perf_counter()
    for chunk in chunks:
        await sink.write(chunk)
    elapsed = time.perf_counter() - started
    print(f"idempotent (COPY to staging + INSERT ON CONFLICT): {batches * size / elapsed:,.0f} "
          f"rows/s, {elapsed / batches * 1000:.0f} ms per {size}-row batch")
    started = time.perf_counter()
    for chunk in chunks:
        await sink.write(chunk)
    elapsed = time.perf_counter() - started
    print(f"idempotent replay (all duplicates): {batches * size / elapsed:,.0f} rows/s")
    await sink.close()

    conn = await asyncpg.connect(dsn)
    plain = rows[batches * size:]
    by_table: dict[str, list[tuple[object, ...]]] = {}
    started = time.perf_counter()
    for i in range(0, len(plain), size):
        by_table.clear()
        for row in plain[i:i + size]:
            by_table.setdefault(row.table, []).append(row.values)
        async with conn.transaction():
            for table, records in by_table.items():
                await conn.copy_records_to_table(table, records=records, columns=COLUMNS)
    elapsed = time.perf_counter() - started
    print(f"plain COPY into the capture tables (not idempotent): "
          f"{batches * size / elapsed:,.0f} rows/s")
    await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=10_000)
    args = parser.parse_args()
    if args.dsn:
        asyncio.run(run(args.dsn, args.batches, args.batch_size))
        return
    with tempfile.TemporaryDirectory() as folder:
        server = EmbeddedPostgres(Path(folder))
        server.start()
        try:
            asyncio.run(run(server.dsn, args.batches, args.batch_size))
        finally:
            server.stop("immediate")


if __name__ == "__main__":
    main()
