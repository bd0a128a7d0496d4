"""Consumer throughput: pre-publish N records to tansu, consume them into PostgreSQL.

    .venv/bin/python bench/consumer_bench.py --records 500000
    .venv/bin/python bench/consumer_bench.py --records 200000 --profile /tmp/consume.prof

Starts an embedded broker and an embedded PostgreSQL (or uses --bootstrap-servers /
--dsn), publishes N generated SIP records (as the receiver would: Avro single-object,
keyed by Call-ID) to a fresh 4-partition topic, then runs one consumer worker
in-process (`run_consumer`, the same code `hep-ingest consume` runs, with the
idempotent sink) and prints rows/s from its first fetch to the last row committed.

    .venv/bin/python bench/consumer_bench.py --records 500000 --workers 4

With --workers N the consumer is instead the real `hep-ingest consume --workers N`
process (a supervisor and N worker processes in one group); rows/s is read from the
workers' /metrics and CPU from /proc (Linux). Use --partitions >= N.

    .venv/bin/python bench/consumer_bench.py --records 200000 --features all
    .venv/bin/python bench/consumer_bench.py --feature-cost [--rows 50000]

--features turns on the optional row features for the in-process run: `filters`
(discard by method, address ranges and HEP type, none of which match the load, so
every row is checked and stored), `censor` (every row's body censored), `kpi` (SIP
KPIs), `all`. --feature-cost needs no servers: it builds rows from the realistic
call flows of tests/flows.py (distinct Call-IDs per copy) and prints the CPU each
feature adds per row, next to what building the row costs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.consumer import ConsumerSettings, run_consumer  # noqa: E402
from pipeline.consumer.filters import (  # noqa: E402
    CaptureFilter,
    Screen,
    parse_networks,
)
from pipeline.consumer.kpi_rows import observe_rows  # noqa: E402
from pipeline.embedded import EmbeddedKafka, EmbeddedPostgres, free_tcp_port  # noqa: E402
from pipeline.sip.kpi import KpiLimits, SipKpi  # noqa: E402
from tests.conftest import create_topic  # noqa: E402
from tests.integration.consume_support import generated_sip, publish  # noqa: E402


class GcTimer:
    """Time spent in the cyclic garbage collector, per generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.counts = [0, 0, 0]
        self._start = 0.0
        self.active = False

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if not self.active:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._start
            self.counts[generation] += 1

    def summary(self, rows: float) -> str:
        return ", ".join(
            f"gen{g} {n}x {s:.2f}s ({s / rows * 1e6:.1f} us/row)"
            for g, (n, s) in enumerate(zip(self.counts, self.seconds, strict=True))
        )


def metric_total(registry: CollectorRegistry, name: str) -> float:
    total = 0.0
    for family in registry.collect():
        if family.name == name:
            for sample in family.samples:
                if sample.name in (name, f"{name}_total"):
                    total += sample.value
    return total


async def bench(args: argparse.Namespace, bootstrap: str, dsn: str) -> None:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    await create_topic(bootstrap, topic, partitions=args.partitions)
    t0 = time.perf_counter()
    items = generated_sip(args.records, calls=max(1, args.records // 10))
    t1 = time.perf_counter()
    for start in range(0, len(items), 100_000):
        await publish(bootstrap, topic, items[start : start + 100_000])
    t2 = time.perf_counter()
    print(
        f"encoded {len(items)} records in {t1 - t0:.1f}s, published in {t2 - t1:.1f}s", flush=True
    )

    if args.workers:
        await asyncio.to_thread(bench_processes, args, bootstrap, dsn, topic)
        return
    capture_filter, sip_kpi = FEATURES[args.features]
    settings = ConsumerSettings(
        capture_filter=capture_filter,
        sip_kpi=sip_kpi,
        bootstrap_servers=bootstrap,
        topic=topic,
        group=f"bench-{topic}",
        dsn=dsn,
        batch_size=args.batch_size,
        flush_interval=args.flush_interval,
    )
    registry = CollectorRegistry()
    gc_timer = GcTimer()
    gc.callbacks.append(gc_timer)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_consumer(settings, registry, stop, ready))
    await ready.wait()
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    started = None
    cpu_started = 0.0
    while True:
        consumed = metric_total(registry, "hep_ingest_records_consumed")
        if started is None and consumed > 0:
            started = time.perf_counter()
            cpu_started = time.process_time()
            gc_timer.active = True
        written = metric_total(registry, "hep_ingest_rows_written")
        if written + metric_total(registry, "hep_ingest_records_discarded") >= args.records:
            break
        if task.done():
            task.result()
            raise SystemExit("consumer stopped early")
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    cpu = time.process_time() - cpu_started
    gc_timer.active = False
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    stop.set()
    await task
    print(
        f"consumed and stored {int(written)} rows in {elapsed:.2f}s: "
        f"{written / elapsed:,.0f} rows/s (batch {args.batch_size}, idempotent sink, "
        f"features {args.features}); "
        f"consumer process CPU {cpu:.1f}s = {cpu / elapsed:.0%} of one core, "
        f"{cpu / written * 1e6:.1f} us/row"
    )
    print(f"cyclic GC during the run: {gc_timer.summary(written)}")


def scrape(port: int, name: str) -> float:
    """Sum of `name`'s samples on 127.0.0.1:port/metrics; 0 while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.split(" ", 1)[0].split("{", 1)[0] == name
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (Linux /proc); 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == parent:
                out.append(int(entry.name))
    return out


def bench_processes(args: argparse.Namespace, bootstrap: str, dsn: str, topic: str) -> None:
    """`hep-ingest consume --workers N` as a process; rows/s from the workers' metrics."""
    port = free_tcp_port()
    while port + args.workers > 65535:
        port = free_tcp_port()
    ports = [port + k for k in range(args.workers)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEP_INGEST_")}
    command = [
        str(Path(sys.executable).with_name("hep-ingest")), "consume",
        "--bootstrap-servers", bootstrap, "--topic", topic, "--group", f"bench-{topic}",
        "--dsn", dsn, "--batch-size", str(args.batch_size),
        "--flush-interval", str(args.flush_interval), "--workers", str(args.workers),
        "--metrics", f"127.0.0.1:{port}", "--log-level", "warning",
    ]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env)
    try:
        started = None
        cpu_started = 0.0
        workers: list[int] = []
        while True:
            if process.poll() is not None:
                raise SystemExit(f"hep-ingest consume exited with {process.returncode}")
            consumed = sum(scrape(p, "hep_ingest_records_consumed_total") for p in ports)
            if started is None and consumed > 0:
                started = time.perf_counter()
                workers = children(process.pid) or [process.pid]  # --workers 1: no child
                cpu_started = sum(cpu_seconds(pid) for pid in workers)
            written = sum(scrape(p, "hep_ingest_rows_written_total") for p in ports)
            if written >= args.records:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - (started or time.perf_counter())
        cpu = sum(cpu_seconds(pid) for pid in workers) - cpu_started
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
    print(
        f"consumed and stored {int(written)} rows in {elapsed:.2f}s: "
        f"{written / elapsed:,.0f} rows/s ({args.workers} worker processes, batch "
        f"{args.batch_size}, idempotent sink); workers' CPU {cpu:.1f}s = "
        f"{cpu / elapsed:.1f} cores, {cpu / written * 1e6:.1f} us/row; exit code {code}"
    )


_NO_MATCH_FILTER = CaptureFilter(
    discard_methods=frozenset({"OPTIONS", "NOTIFY"}),
    discard_hep_types=frozenset({5, 100}),
    # Documentation ranges the generated load does not use.
    discard_sources=parse_networks("203.0.113.0/24, 2001:db8::/32"),
    discard_destinations=parse_networks("203.0.113.0/24"),
)
_CENSOR_ALL = CaptureFilter(censor_methods=frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "MESSAGE",
}))
FEATURES: dict[str, tuple[CaptureFilter, KpiLimits | None]] = {
    "off": (CaptureFilter(), None),
    "filters": (_NO_MATCH_FILTER, None),
    "censor": (_CENSOR_ALL, None),
    "kpi": (CaptureFilter(), KpiLimits()),
    "all": (CaptureFilter(
        discard_methods=_NO_MATCH_FILTER.discard_methods,
        discard_hep_types=_NO_MATCH_FILTER.discard_hep_types,
        discard_sources=_NO_MATCH_FILTER.discard_sources,
        discard_destinations=_NO_MATCH_FILTER.discard_destinations,
        censor_methods=_CENSOR_ALL.censor_methods,
    ), KpiLimits()),
}


def flow_rows(n: int) -> list[object]:
    """At least `n` rows of tests/flows.py's call flows, each copy with its own
    Call-IDs, in capture order (one partition), built as the consumer builds them."""
    import re

    from pipeline.hep import decode_packet, encode_hep3
    from pipeline.records import ReceiveContext, RecordIdGenerator, packet_to_record
    from pipeline.storage import build_row
    from tests import flows

    context = ReceiveContext(transport="udp", sender_ip="127.0.0.1", sender_port=9,
                             receiver_id="bench")
    ids = RecordIdGenerator()
    base = flows.all_flows(1_700_000_000_000_000)
    span = base[-1].time_us - base[0].time_us + 1_000_000
    rows: list[object] = []
    copy = 0
    while len(rows) < n:
        for capture in base:
            payload = re.sub(rb"(Call-ID: [^\r]+)", rb"\1-%d" % copy, capture.payload)
            packet = capture.to_packet()
            packet.payload = payload
            packet.ts_sec, packet.ts_usec = divmod(capture.time_us + copy * span, 1_000_000)
            record = packet_to_record(decode_packet(encode_hep3(packet)), record_id=ids.next(),
                                      receive_time_us=time.time_ns() // 1000, context=context)
            rows.append(build_row(record, kafka_partition=0, kafka_offset=len(rows)))
        copy += 1
    return rows


def feature_cost(args: argparse.Namespace) -> None:
    """CPU per row of each optional feature, on built rows (best of --repeat)."""
    from pipeline.storage import CaptureRow, build_row

    rows: list[CaptureRow] = flow_rows(args.rows)  # type: ignore[assignment]

    def best(run: object) -> float:
        times = []
        for _ in range(args.repeat):
            gc.collect()
            started = time.perf_counter()
            run()  # type: ignore[operator]
            times.append(time.perf_counter() - started)
        return min(times) / len(rows) * 1e6

    # The baseline: building the same rows again (decode excluded).
    from pipeline.hep import decode_packet, encode_hep3
    from pipeline.records import ReceiveContext, RecordIdGenerator, packet_to_record
    from tests import flows

    context = ReceiveContext(transport="udp", sender_ip="127.0.0.1", sender_port=9,
                             receiver_id="bench")
    ids = RecordIdGenerator()
    sample = [
        packet_to_record(decode_packet(encode_hep3(c.to_packet())), record_id=ids.next(),
                         receive_time_us=0, context=context)
        for c in flows.all_flows(1_700_000_000_000_000)
    ]
    reps = len(rows) // len(sample) + 1
    build_us = best(lambda: [build_row(r, kafka_partition=0, kafka_offset=0)
                             for _ in range(reps) for r in sample]) * reps * len(sample) / len(rows)

    def screen(capture_filter: CaptureFilter) -> object:
        return lambda: Screen(capture_filter).screen(rows)

    filters_us = best(screen(_NO_MATCH_FILTER))
    discard_us = best(screen(CaptureFilter(discard_methods=frozenset({"OPTIONS"}))))
    censor_us = best(screen(_CENSOR_ALL))
    kpi_us = best(lambda: observe_rows(SipKpi(), rows))
    all_us = best(lambda: (Screen(FEATURES["all"][0]).screen(rows), observe_rows(SipKpi(), rows)))
    load = os.getloadavg()[0]
    print(f"{len(rows)} rows of call flows, best of {args.repeat}, load average {load:.2f}")
    print(f"  build_row (the baseline)          {build_us:6.2f} us/row")
    print(f"  discard by method only            {discard_us:6.2f} us/row")
    print(f"  filters (method, type, 2 ranges)  {filters_us:6.2f} us/row")
    print(f"  censor every row                  {censor_us:6.2f} us/row")
    print(f"  SIP KPIs                          {kpi_us:6.2f} us/row")
    print(f"  all of them                       {all_us:6.2f} us/row")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--flush-interval", type=float, default=1.0)
    parser.add_argument("--bootstrap-servers")
    parser.add_argument("--dsn")
    parser.add_argument("--profile", help="write cProfile stats here and print the top")
    parser.add_argument(
        "--workers", type=int, default=0,
        help="run `hep-ingest consume --workers N` as a process instead of in-process",
    )
    parser.add_argument("--features", choices=sorted(FEATURES), default="off",
                        help="optional row features of the in-process consumer")
    parser.add_argument("--feature-cost", action="store_true",
                        help="only print each feature's CPU per row (no servers)")
    parser.add_argument("--rows", type=int, default=50_000, help="rows for --feature-cost")
    parser.add_argument("--repeat", type=int, default=5, help="runs for --feature-cost")
    args = parser.parse_args()
    if args.feature_cost:
        feature_cost(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        kafka = None if args.bootstrap_servers else EmbeddedKafka(log_path=Path(tmp) / "k.log")
        pg = None if args.dsn else EmbeddedPostgres(Path(tmp) / "pg")
        try:
            if kafka:
                kafka.start()
            if pg:
                pg.start()
            bootstrap = args.bootstrap_servers or kafka.bootstrap_servers  # type: ignore[union-attr]
            dsn = args.dsn or pg.dsn  # type: ignore[union-attr]
            try:
                import uvloop

                uvloop.run(bench(args, bootstrap, dsn))
            except ImportError:
                asyncio.run(bench(args, bootstrap, dsn))
        finally:
            if kafka:
                kafka.stop()
            if pg:
                pg.stop("immediate")


if __name__ == "__main__":
    main()
