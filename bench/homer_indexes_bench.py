"""Write cost of `hep-ingest homer-indexes`: PostgreSQL CPU per row stored, off vs on.

    .venv/bin/python bench/homer_indexes_bench.py [--rows 40000] [--batch 5000] \
        [--rounds 3] [--dsn DSN]

Rows are built once from bench/load/hep_corpus.bin (the distinct-Call-ID load) with
fresh record ids and today's capture time, through build_row, the consumer's row
building. Each round empties the SIP tables, sets the index mode, then COPYs the rows
into their capture tables (one transaction per batch) and reads the PostgreSQL
backend's CPU time from /proc (so the database must run on this host: without --dsn
an embedded PostgreSQL is started in a temporary directory). Modes, interleaved round
by round so that a machine's drifting load hits each alike:

* off: the default index set;
* callid: `homer-indexes enable --field callid` (the Call-ID search only);
* homer: `homer-indexes enable` (all six fields: hash for Call-ID and users, btree
  for the addresses);
* btree: the six expressions as btree indexes, as heplify-server creates them (for
  comparison only: not what the command creates, see pipeline/postgres/homer_indexes.py).

Prints, per mode, the median backend CPU per row, its ratio to `off`, the wall-clock
rows/s, and the size the homer indexes add per row.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import struct
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.embedded import EmbeddedPostgres  # noqa: E402
from pipeline.hep import decode_packet  # noqa: E402
from pipeline.postgres.homer_indexes import (  # noqa: E402
    SIP_TABLES,
    HomerField,
    disable_homer_indexes,
    enable_homer_indexes,
)
from pipeline.postgres.migrate import apply_migrations  # noqa: E402
from pipeline.postgres.partitions import ensure_partitions  # noqa: E402
from pipeline.records import ReceiveContext, RecordIdGenerator, packet_to_record  # noqa: E402
from pipeline.storage import COLUMNS, CaptureRow, build_row  # noqa: E402

CORPUS = ROOT / "bench" / "load" / "hep_corpus.bin"
MODES = ("off", "callid", "homer", "btree")
TICKS = os.sysconf("SC_CLK_TCK")


def corpus_packets(limit: int) -> list[bytes]:
    data = CORPUS.read_bytes()
    packets, offset = [], 0
    while offset + 2 <= len(data) and len(packets) < limit:
        (size,) = struct.unpack_from("<H", data, offset)
        packets.append(data[offset + 2:offset + 2 + size])
        offset += 2 + size
    return packets


def make_rows(count: int) -> list[CaptureRow]:
    packets = corpus_packets(count)
    context = ReceiveContext("udp", "127.0.0.1", 9, "bench")
    ids = RecordIdGenerator()
    now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
    rows = []
    for i in range(count):
        record = packet_to_record(decode_packet(packets[i % len(packets)]), record_id=ids.next(),
                                  receive_time_us=now_us, context=context)
        record["capture_time"] = now_us
        rows.append(build_row(record, kafka_partition=0, kafka_offset=i))
    return rows


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def set_mode(conn: asyncpg.Connection, mode: str) -> None:
    await disable_homer_indexes(conn)
    await conn.execute("DROP INDEX IF EXISTS " + ", ".join(
        f"bench_btree_{t}_{f.name}" for t in SIP_TABLES for f in HomerField))
    if mode == "homer":
        await enable_homer_indexes(conn)
    elif mode == "callid":
        await enable_homer_indexes(conn, [HomerField.callid])
    elif mode == "btree":
        for table in SIP_TABLES:
            for field in HomerField:
                await conn.execute(f"CREATE INDEX bench_btree_{table}_{field.name} "
                                   f"ON {table} ({field.expression})")


async def index_bytes(conn: asyncpg.Connection) -> int:
    """Every index of the SIP tables' partitions (the homer ones: minus mode off's)."""
    size: int = await conn.fetchval(
        "SELECT coalesce(sum(pg_indexes_size(inhrelid)), 0)::bigint FROM pg_inherits "
        "WHERE inhparent = ANY($1::regclass[])", list(SIP_TABLES))
    return size


async def run(dsn: str, rows_count: int, batch: int, rounds: int) -> None:
    await apply_migrations(dsn)
    started = time.perf_counter()
    rows = make_rows(rows_count)
    print(f"{len(rows)} rows built in {time.perf_counter() - started:.1f}s; "
          f"load average {os.getloadavg()[0]:.1f}")
    conn = await asyncpg.connect(dsn)
    await ensure_partitions(conn, now=datetime.now(UTC))
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    results: dict[str, list[tuple[float, float, int]]] = {m: [] for m in MODES}
    try:
        for _ in range(rounds):
            for mode in MODES:
                await conn.execute("TRUNCATE " + ", ".join(SIP_TABLES))
                await set_mode(conn, mode)
                await conn.execute("CHECKPOINT")
                cpu, wall = backend_cpu(pid), time.perf_counter()
                for i in range(0, len(rows), batch):
                    by_table: dict[str, list[tuple[object, ...]]] = {}
                    for row in rows[i:i + batch]:
                        by_table.setdefault(row.table, []).append(row.values)
                    async with conn.transaction():
                        for table, records in by_table.items():
                            await conn.copy_records_to_table(table, records=records,
                                                             columns=COLUMNS)
                wall = time.perf_counter() - wall
                cpu = backend_cpu(pid) - cpu
                results[mode].append((cpu, wall, await index_bytes(conn)))
        await set_mode(conn, "off")
    finally:
        await conn.close()
    base = statistics.median(cpu for cpu, _, _ in results["off"]) / len(rows) * 1e6
    base_size = statistics.median(s for _, _, s in results["off"])
    print(f"rounds {rounds}, {len(rows)} rows per round in batches of {batch}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'mode':6} {'backend CPU/row':>16} {'vs off':>7} {'rows/s':>9} "
          f"{'+index bytes/row':>16}  (CPU per round, us/row)")
    for mode in MODES:
        per_row = [cpu / len(rows) * 1e6 for cpu, _, _ in results[mode]]
        median = statistics.median(per_row)
        rate = len(rows) / statistics.median(wall for _, wall, _ in results[mode])
        size = (statistics.median(s for _, _, s in results[mode]) - base_size) / len(rows)
        print(f"{mode:6} {median:13.1f} us {median / base:7.2f} {rate:9,.0f} {size:16.1f}  "
              + ", ".join(f"{v:.1f}" for v in per_row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="a PostgreSQL on this host (default: embedded)")
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.dsn:
        asyncio.run(run(args.dsn, args.rows, args.batch, args.rounds))
        return
    with tempfile.TemporaryDirectory() as folder:
        server = EmbeddedPostgres(Path(folder))
        server.start()
        try:
            asyncio.run(run(server.dsn, args.rows, args.batch, args.rounds))
        finally:
            server.stop("immediate")


if __name__ == "__main__":
    main()
