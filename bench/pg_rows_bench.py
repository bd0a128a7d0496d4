"""PostgreSQL CPU per stored row, per schema and per index (not a test).

    .venv/bin/python bench/pg_rows_bench.py [--rows 20000] [--batch 2000] [--rounds 3]
        [--dsn postgresql://postgres@127.0.0.1:5432/postgres]
        [--base-migrations /work/wt-base/migrations] [--no-per-index] [--icu-locale en-US]

Rows are what the consumer stores: the distinct-Call-ID corpus (bench/load/
hep_corpus.bin) decoded, turned into Avro records, encoded and decoded by the real
record codec and built by `build_row`; the corpus is repeated with a per-copy prefix
on Call-IDs and correlation ids (so every copy's calls are distinct) and capture times
spread over the last hour (today's partitions).

Schemas, each in a private database created from `--dsn` (CREATE DATABASE
bench_pgrows_<pid>_*, dropped at the end):
    base  the migrations of `--base-migrations` (f1074a1's)
    main  this tree's migrations before 0005 (0001..0003)
    new   this tree's migrations (0005: json headers, "C" identifiers, lean indexes)
and variants of them: without one index (its write cost is the difference), headers
as jsonb/json, and two write paths: `copy` (binary COPY straight into the capture
tables, one transaction per batch) and `staging` (the sink of f1074a1: COPY into a
temporary table, then INSERT ... SELECT ... ON CONFLICT DO NOTHING per table).

The figure is the server backend's own CPU time (/proc/<pg_backend_pid()>/schedstat,
nanoseconds) over all batches, commits included, divided by the rows: the work done
by WAL writer, checkpointer and autovacuum is not in it. Every run starts from
truncated tables after a CHECKPOINT; the best of `--rounds` runs is printed. The cost of an index
is measured in pairs: in each round the schema with and without it are written back to
back, and the median of the rounds' differences is printed (robust to load changes).
Needs a server on this machine (it reads /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.hep import decode_packet  # noqa: E402
from pipeline.postgres.migrate import apply_migrations_on  # noqa: E402
from pipeline.postgres.partitions import ensure_partitions  # noqa: E402
from pipeline.records import (  # noqa: E402
    ReceiveContext,
    RecordIdGenerator,
    load_codec,
    packet_to_record,
)
from pipeline.resources import migrations_dir  # noqa: E402
from pipeline.storage import COLUMNS, CaptureRow, build_row  # noqa: E402

CORPUS = ROOT / "bench" / "load" / "hep_corpus.bin"
DEFAULT_BASE = Path("/work/wt-base/migrations")


def load_corpus(path: Path) -> list[bytes]:
    """Records of a u16 little-endian length, then the HEP bytes."""
    data = path.read_bytes()
    packets, offset = [], 0
    while offset + 2 <= len(data):
        (size,) = struct.unpack_from("<H", data, offset)
        packets.append(data[offset + 2:offset + 2 + size])
        offset += 2 + size
    return packets


def build_rows(count: int, now: datetime) -> list[CaptureRow]:
    """`count` rows from the corpus, through the record codec and build_row."""
    codec = load_codec()
    context = ReceiveContext("udp", "127.0.0.1", 9060, "bench")
    ids = RecordIdGenerator()
    packets = [decode_packet(d) for d in load_corpus(CORPUS)]
    now_us = int(now.timestamp() * 1_000_000)
    start_us = now_us - 3_600_000_000
    step_us = 3_600_000_000 // count
    rows = []
    for i in range(count):
        copy, packet = divmod(i, len(packets))
        record = packet_to_record(packets[packet], record_id=ids.next(),
                                  receive_time_us=now_us, context=context)
        record["capture_time"] = start_us + i * step_us
        if copy:
            prefix = f"r{copy}-"
            record["payload"] = record["payload"].replace(
                b"Call-ID: ", b"Call-ID: " + prefix.encode(), 1)
            if record.get("correlation_id"):
                record["correlation_id"] = prefix + record["correlation_id"]
        rows.append(build_row(codec.decode(codec.encode(record)),
                              kafka_partition=0, kafka_offset=i))
    return rows


def backend_cpu_ns(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except OSError:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


@dataclass
class Variant:
    name: str
    schema: str  # base, main or new
    setup: list[str] = field(default_factory=list)
    path: str = "copy"  # or "staging"
    rows: str = "real"  # or "empty-headers"
    database: str = ""
    best_ns: float = float("inf")
    # Per-index variants: measured back to back with `reference` (the schema with every
    # index) in each round; their cost is the median of those paired differences.
    reference: Variant | None = None
    paired_ns: list[float] = field(default_factory=list)


async def write_copy(conn: asyncpg.Connection, batches: Sequence[dict[str, list[Any]]],
                     columns: Sequence[str]) -> None:
    for batch in batches:
        async with conn.transaction():
            for table, records in batch.items():
                await conn.copy_records_to_table(table, records=records, columns=columns)


async def write_staging(conn: asyncpg.Connection, batches: Sequence[dict[str, list[Any]]],
                        columns: Sequence[str]) -> None:
    # f1074a1's PostgresSink: stage the batch, then one INSERT ... ON CONFLICT per table.
    column_list = ", ".join(columns)
    for batch in batches:
        async with conn.transaction():
            staged = [(table, *values) for table, records in batch.items()
                      for values in records]
            await conn.copy_records_to_table("hep_ingest_staging", records=staged,
                                             columns=("capture_table", *columns))
            for table in batch:
                await conn.execute(
                    f'INSERT INTO "{table}" ({column_list}) SELECT {column_list} '
                    "FROM hep_ingest_staging WHERE capture_table = $1 "
                    "ON CONFLICT (record_id, create_date) DO NOTHING", table)


def batched(rows: Sequence[CaptureRow], size: int,
            kept: Sequence[int]) -> list[dict[str, list[Any]]]:
    """Batches of `size` rows by table, with the values of the columns `kept`."""
    batches = []
    for start in range(0, len(rows), size):
        by_table: dict[str, list[Any]] = defaultdict(list)
        for row in rows[start:start + size]:
            by_table[row.table].append(tuple([row.values[i] for i in kept]))
        batches.append(dict(by_table))
    return batches


async def run_once(dsn: str, variant: Variant, batches: list[dict[str, list[Any]]],
                   columns: Sequence[str], tables: list[str]) -> float:
    conn = await asyncpg.connect(dsn, database=variant.database)
    try:
        await conn.execute(f"TRUNCATE {', '.join(tables)}")
        if variant.path == "staging":
            await conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS hep_ingest_staging ON COMMIT DELETE ROWS AS "
                f"SELECT ''::text AS capture_table, {', '.join(columns)} FROM hep_proto_1_default "
                "WITH NO DATA")
            await conn.execute("SET temp_buffers = '64MB'")
        await conn.execute("CHECKPOINT")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        before = backend_cpu_ns(pid)
        if variant.path == "staging":
            await write_staging(conn, batches, columns)
        else:
            await write_copy(conn, batches, columns)
        return backend_cpu_ns(pid) - before
    finally:
        await conn.close()


async def index_names(conn: asyncpg.Connection, tables: list[str]) -> list[str]:
    """The partitioned indexes of `tables`, named without their table's prefix."""
    rows = await conn.fetch(
        "SELECT c.relname AS table_name, i.relname AS index_name FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid "
        "WHERE c.relname = ANY($1::text[])", tables)
    kinds = set()
    for r in rows:
        kinds.add(r["index_name"].removeprefix(r["table_name"] + "_"))
    return sorted(kinds)


def drop_index_sql(kind: str, tables: list[str]) -> list[str]:
    if kind == "pkey":
        return [f'ALTER TABLE "{t}" DROP CONSTRAINT IF EXISTS "{t}_pkey"' for t in tables]
    return [f'DROP INDEX IF EXISTS "{t}_{kind}"' for t in tables]


def header_type_sql(kind: str, tables: list[str]) -> list[str]:
    return [f'ALTER TABLE "{t}" ALTER COLUMN protocol_header TYPE {kind} '
            f"USING protocol_header::{kind}, ALTER COLUMN data_header TYPE {kind} "
            f"USING data_header::{kind}" for t in tables]


def collate_c_sql(tables: list[str]) -> list[str]:
    return ["DROP VIEW IF EXISTS sip_messages"] + [
        f'ALTER TABLE "{t}" ALTER COLUMN sid TYPE text COLLATE "C", '
        'ALTER COLUMN correlation_id TYPE text COLLATE "C"' for t in tables]


def migration_folders(base: Path, workdir: Path) -> dict[str, Path]:
    main = workdir / "main"
    main.mkdir()
    for path in sorted(migrations_dir().glob("*.sql")):
        if int(path.name[:4]) < 5:
            shutil.copy(path, main)
    return {"base": base, "main": main, "new": migrations_dir()}


async def run(args: argparse.Namespace) -> None:
    now = datetime.now(UTC)
    started = time.perf_counter()
    rows = build_rows(args.rows, now)
    tables = sorted({r.table for r in rows})
    counts = {t: sum(1 for r in rows if r.table == t) for t in tables}
    empty = [CaptureRow(r.table, (r.values[0], r.values[1], "{}", "{}", *r.values[4:]))
             for r in rows]
    print(f"{len(rows)} rows built in {time.perf_counter() - started:.1f} s: "
          + ", ".join(f"{t} {n}" for t, n in counts.items()))

    prefix = f"bench_pgrows_{os.getpid()}"
    admin = await asyncpg.connect(args.dsn)
    created: list[str] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folders = migration_folders(args.base_migrations, Path(tmp))
            indexes: dict[str, list[str]] = {}
            # Each schema's own columns (later migrations add some, such as 0006's).
            columns: dict[str, tuple[str, ...]] = {}
            for schema, folder in folders.items():
                name = f"{prefix}_{schema}_tpl"
                locale = (f" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE '{args.icu_locale}'"
                          if args.icu_locale else "")
                await admin.execute(f'CREATE DATABASE "{name}"{locale}')
                created.append(name)
                conn = await asyncpg.connect(args.dsn, database=name)
                try:
                    await apply_migrations_on(conn, folder)
                    await ensure_partitions(conn, now=now, tables=tables)
                    indexes[schema] = await index_names(conn, tables)
                    present = {r[0] for r in await conn.fetch(
                        "SELECT attname FROM pg_attribute "
                        "WHERE attrelid = 'hep_proto_1_call'::regclass AND attnum > 0")}
                    columns[schema] = tuple(c for c in COLUMNS if c in present)
                finally:
                    await conn.close()

            variants = [
                Variant("base, staging + ON CONFLICT (f1074a1's sink)", "base", path="staging"),
                Variant("base, COPY", "base"),
                Variant("base, COPY, headers json", "base", header_type_sql("json", tables)),
                Variant("base, COPY, no index", "base",
                        [s for k in indexes["base"] for s in drop_index_sql(k, tables)]),
                Variant("main, staging + ON CONFLICT", "main", path="staging"),
                Variant("main, COPY", "main"),
                Variant("new, staging + ON CONFLICT", "new", path="staging"),
                Variant("new, COPY", "new"),
                Variant("new, COPY, headers jsonb", "new", header_type_sql("jsonb", tables)),
                Variant("new, COPY, headers '{}'", "new", rows="empty-headers"),
                Variant('new, COPY, sid and correlation_id COLLATE "C"', "new",
                        collate_c_sql(tables)),
                Variant("new, COPY, no index", "new",
                        [s for k in indexes["new"] for s in drop_index_sql(k, tables)]),
            ]
            if args.per_index:
                for schema in ("base", "new"):
                    reference = next(v for v in variants if v.name == f"{schema}, COPY")
                    variants += [Variant(f"{schema}, COPY, without {kind}", schema,
                                         drop_index_sql(kind, tables), reference=reference)
                                 for kind in indexes[schema]]
            for n, variant in enumerate(variants):
                variant.database = f"{prefix}_v{n}"
                await admin.execute(f'CREATE DATABASE "{variant.database}" '
                                    f'TEMPLATE "{prefix}_{variant.schema}_tpl"')
                created.append(variant.database)
                conn = await asyncpg.connect(args.dsn, database=variant.database)
                try:
                    for statement in variant.setup:
                        await conn.execute(statement)
                finally:
                    await conn.close()

            batches = {}
            for schema, names in columns.items():
                kept = [COLUMNS.index(c) for c in names]
                batches[schema, "real"] = batched(rows, args.batch, kept)
                batches[schema, "empty-headers"] = batched(empty, args.batch, kept)
            for round_ in range(args.rounds):
                order = list(variants)
                random.Random(round_).shuffle(order)
                for variant in order:
                    pair = [variant] if variant.reference is None else [variant.reference, variant]
                    random.Random(round_ * 7919 + len(variant.name)).shuffle(pair)
                    measured = {}
                    for v in pair:
                        ns = await run_once(args.dsn, v, batches[v.schema, v.rows],
                                            columns[v.schema], tables)
                        v.best_ns = min(v.best_ns, ns)
                        measured[v.name] = ns
                    if variant.reference is not None:
                        variant.paired_ns.append(
                            measured[variant.reference.name] - measured[variant.name])
                print(f"round {round_ + 1}/{args.rounds} done, load average "
                      f"{os.getloadavg()[0]:.2f}", flush=True)
    finally:
        for name in created:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.close()

    report(variants, len(rows), args)


def report(variants: list[Variant], count: int, args: argparse.Namespace) -> None:
    per_row = {v.name: v.best_ns / count / 1000 for v in variants}
    print(f"\nbackend CPU, us/row (best of {args.rounds}; {count} rows, "
          f"{args.batch} rows per transaction)")
    for v in variants:
        if ", without " in v.name:
            continue
        print(f"  {v.name:<48} {per_row[v.name]:7.2f}")
    today = per_row["base, staging + ON CONFLICT (f1074a1's sink)"]
    for name in ("new, COPY", "new, staging + ON CONFLICT"):
        print(f"  {name} / base staging: {per_row[name] / today:.2f}")
    for schema in ("base", "new"):
        rows = [(v.name.split(", without ")[1],
                 statistics.median(v.paired_ns) / count / 1000,
                 min(v.paired_ns) / count / 1000, max(v.paired_ns) / count / 1000)
                for v in variants
                if v.name.startswith(f"{schema}, COPY, without ") and v.paired_ns]
        if rows:
            print(f"\n{schema}: write cost of each index, us/row ({schema}, COPY minus the "
                  "same without it, run back to back; median of the rounds, min..max)")
            for kind, cost, low, high in sorted(rows, key=lambda r: -r[1]):
                print(f"  {kind:<40} {cost:6.2f}  ({low:.2f}..{high:.2f})")
    print(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--base-migrations", type=Path, default=DEFAULT_BASE)
    parser.add_argument("--no-per-index", dest="per_index", action="store_false")
    parser.add_argument("--icu-locale", default="",
                        help="create the databases with this ICU collation (say en-US) "
                             "instead of the server's default")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
