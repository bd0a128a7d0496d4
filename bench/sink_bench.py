"""Rows/s into PostgreSQL, and PostgreSQL's CPU per row, of PostgresSink (not a test).

    .venv/bin/python bench/sink_bench.py [--batches 10] [--batch-size 10000] [--dsn DSN]
    .venv/bin/python bench/sink_bench.py --tree base=/work/wt-base --tree new=. [--rounds 3]

Without --tree: this tree's sink (a batch with its Kafka offsets claimed, as the
consumer writes it; then the same rows again, every one a duplicate, which takes the
staging + ON CONFLICT path), then plain COPY into the capture tables for comparison.

With --tree NAME=PATH (twice or more): each tree's own sink, run by the tree's own
.venv/bin/python on this script, on a database of its own in the same PostgreSQL,
trees alternating round by round so that drift of the machine hits them alike. Only
the ratios between trees of one run mean anything.

Every mode prints rows/s and the CPU of the sink's PostgreSQL backend per row
(/proc, Linux; the sink holds one connection). Without --dsn an embedded PostgreSQL is
started in a temporary directory. Rows are built once from the kamailio_hep3_udp
vectors with fresh record ids; the build cost per row (SIP parse included) is printed
separately.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path


def _import_tree(root: Path) -> None:
    """Import `pipeline` and `tests` from `root` (this script's tree by default)."""
    sys.path.insert(0, str(root))


_import_tree(Path(__file__).resolve().parent.parent)
if "--child" in sys.argv:  # a tree given with --tree: its pipeline, not this one's
    _import_tree(Path(sys.argv[sys.argv.index("--child") + 1]).resolve())

import asyncpg  # noqa: E402

from pipeline.embedded import EmbeddedPostgres  # noqa: E402
from pipeline.hep import decode_packet  # noqa: E402
from pipeline.postgres.sink import PostgresSink, SinkSettings  # noqa: E402
from pipeline.records import ReceiveContext, RecordIdGenerator, packet_to_record  # noqa: E402
from pipeline.storage import COLUMNS, CaptureRow, build_row  # noqa: E402
from tests.conftest import load_vectors  # noqa: E402

# Imported last: it puts this script's tree first on sys.path, which must not decide
# where `pipeline` comes from.
cpu_seconds = importlib.import_module("side_by_side").cpu_seconds


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


async def measure(
    backend: int, rows: int, work: Callable[[], Awaitable[None]]
) -> dict[str, float]:
    """rows/s and the backend's CPU microseconds per row while `work` runs."""
    cpu = cpu_seconds(backend)
    started = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - started
    return {
        "rows_per_s": rows / elapsed,
        "backend_us_per_row": (cpu_seconds(backend) - cpu) / rows * 1e6,
    }


def chunks(rows: list[CaptureRow], batches: int, size: int) -> list[list[CaptureRow]]:
    return [rows[i:i + size] for i in range(0, batches * size, size)]


async def sink_modes(dsn: str, rows: list[CaptureRow], batches: int, size: int
                     ) -> dict[str, dict[str, float]]:
    """The tree's sink as its consumer uses it on fresh rows, batches alternating with
    the staging path where the tree has both; then a replay of every row."""
    sink = PostgresSink(SinkSettings(dsn, min_connections=1, max_connections=1))
    await sink.start()
    try:
        async with sink.pool.acquire() as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
        group = f"bench-{uuid.uuid4().hex[:8]}"
        claimed: list[int] = []  # the stored offset of partition 0, once there is one

        async def write(part: list[CaptureRow]) -> None:
            if not hasattr(sink, "write_batch"):  # a tree from before stored offsets
                await sink.write(part)
                return
            from pipeline.storage.offsets import BatchOffsets, OffsetClaim

            start = claimed[-1] if claimed else None
            claim = OffsetClaim(0, start, (start or 0) + len(part))
            assert not (await sink.write_batch(part, BatchOffsets(group, "hep", (claim,)))).fenced
            claimed.append(claim.next_offset)

        async def staged(part: list[CaptureRow]) -> None:
            # Direct COPY's fallback forced on fresh rows: each capture table's staging
            # twin + INSERT ... ON CONFLICT, the path every batch took before.
            async with sink.pool.acquire() as conn, conn.transaction():
                await sink._isolate(conn, list(range(len(part))), part, defaultdict(int), [])

        modes: list[tuple[str, Callable[[list[CaptureRow]], Awaitable[None]]]] = [
            ("write", write)]
        if hasattr(sink, "write_batch"):
            modes.append(("staging + ON CONFLICT", staged))
        spent = {name: [0.0, 0.0, 0] for name, _ in modes}  # CPU s, wall s, rows
        for k, part in enumerate(chunks(rows, batches, size)):
            name, mode = modes[k % len(modes)]
            cpu, started = cpu_seconds(backend), time.perf_counter()
            await mode(part)
            spent[name][0] += cpu_seconds(backend) - cpu
            spent[name][1] += time.perf_counter() - started
            spent[name][2] += len(part)
        figures = {
            name: {"rows_per_s": n / wall, "backend_us_per_row": cpu / n * 1e6}
            for name, (cpu, wall, n) in spent.items()
        }

        async def replay() -> None:
            for part in chunks(rows, batches, size):
                await sink.write(part)

        figures["replay (all duplicates)"] = await measure(backend, batches * size, replay)
        return figures
    finally:
        await sink.close()


async def plain_copy(dsn: str, rows: list[CaptureRow], size: int) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    try:
        backend = await conn.fetchval("SELECT pg_backend_pid()")

        async def copy() -> None:
            by_table: dict[str, list[tuple[object, ...]]] = {}
            for i in range(0, len(rows), size):
                by_table.clear()
                for row in rows[i:i + size]:
                    by_table.setdefault(row.table, []).append(row.values)
                async with conn.transaction():
                    for table, records in by_table.items():
                        await conn.copy_records_to_table(table, records=records,
                                                         columns=COLUMNS)

        return await measure(backend, len(rows), copy)
    finally:
        await conn.close()


def show(name: str, figures: dict[str, float]) -> None:
    print(f"  {name:<28} {figures['rows_per_s']:>9,.0f} rows/s   "
          f"PostgreSQL backend {figures['backend_us_per_row']:6.1f} us CPU/row")


async def run(dsn: str, batches: int, size: int) -> None:
    rows, build_us = make_rows(batches * size * 2)
    print(f"build_row: {build_us:.1f} us/row ({1e6 / build_us:,.0f} rows/s on one core)")
    for mode, figures in (await sink_modes(dsn, rows[:batches * size], batches, size)).items():
        show(mode, figures)
    show("plain COPY (no guard)", await plain_copy(dsn, rows[batches * size:], size))


async def child(dsn: str, batches: int, size: int) -> None:
    rows, _ = make_rows(batches * size)
    print(json.dumps(await sink_modes(dsn, rows, batches, size)))


async def new_database(admin_dsn: str) -> str:
    name = f"sink_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin_dsn.rsplit("/", 1)[0] + "/" + name


async def side_by_side(admin_dsn: str, trees: list[tuple[str, Path]], rounds: int,
                       batches: int, size: int) -> None:
    results: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name, _ in trees}
    for _ in range(rounds):
        for name, root in trees:
            dsn = await new_database(admin_dsn)
            done = await asyncio.to_thread(
                subprocess.run,
                [str(root / ".venv" / "bin" / "python"), __file__, "--child", str(root),
                 "--dsn", dsn, "--batches", str(batches), "--batch-size", str(size)],
                check=True, capture_output=True, text=True,
            )
            out = done.stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
    print(f"{rounds} rounds of {batches} x {size} rows; median per tree")
    for name, runs in results.items():
        print(name)
        for mode in runs[0]:
            show(mode, {key: sorted(r[mode][key] for r in runs)[len(runs) // 2]
                        for key in runs[0][mode]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", metavar="TREE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    trees = [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in args.tree]

    def go(dsn: str) -> None:
        if args.child:
            import pipeline

            root = Path(args.child).resolve()
            assert Path(pipeline.__file__).resolve().is_relative_to(root), pipeline.__file__
            asyncio.run(child(dsn, args.batches, args.batch_size))
        elif trees:
            asyncio.run(side_by_side(dsn, trees, args.rounds, args.batches, args.batch_size))
        else:
            asyncio.run(run(dsn, args.batches, args.batch_size))

    if args.dsn:
        go(args.dsn)
        return
    with tempfile.TemporaryDirectory() as folder:
        server = EmbeddedPostgres(Path(folder))
        server.start()
        try:
            go(server.dsn)
        finally:
            server.stop("immediate")


if __name__ == "__main__":
    main()
