"""Receiver throughput: highest loss-free UDP rate of receive -> decode -> Avro -> publish.

Starts tansu and a `hep-ingest receive` process, then blasts kamailio_hep3_udp packets
from a separate process at increasing rates (a few seconds each) and reads the
receiver's /metrics: a step is loss-free when every packet sent was published and
nothing was dropped (by the receiver or, as `received < sent`, by the kernel).

    .venv/bin/python bench/receiver_bench.py [--rates 10000,20000,...] [--seconds 5]
        [--workers N] [--receiver-arg=--linger-ms=20 ...]

With --workers N the receiver runs N SO_REUSEPORT worker processes; the sender then
rotates over 16 source ports (the kernel spreads datagrams by 4-tuple), metrics are
summed over the workers' /metrics ports and CPU over the worker processes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]

from conftest import load_vectors  # noqa: E402
from receiver_process import run_receiver_process  # noqa: E402

from pipeline.embedded import EmbeddedKafka  # noqa: E402


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan"), float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def children(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == parent:
                out.append(int(entry.name))
    return out


def blast(port: int, rate: int, seconds: float, packets: list[bytes], sources: int = 1) -> None:
    """Send `rate` packets/s for `seconds`, in 1 ms slices, from `sources` source ports."""
    socks = []
    for _ in range(sources):
        one = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        one.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        socks.append(one)
    target = ("127.0.0.1", port)
    count = len(packets)
    sent = 0
    start = time.perf_counter()
    total = int(rate * seconds)
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        while sent < due:
            try:
                socks[sent % sources].sendto(packets[sent % count], target)
            except BlockingIOError:
                continue
            sent += 1
        time.sleep(0.0005)
    for one in socks:
        one.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="5000,10000,20000,30000,40000,60000,80000,100000")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1, help="receive --workers N")
    parser.add_argument(
        "--receiver-arg",
        action="append",
        default=[],
        help="extra `hep-ingest receive` option (repeatable): --receiver-arg=--linger-ms=20",
    )
    args = parser.parse_args()
    packets, _ = load_vectors("kamailio_hep3_udp")
    tmp = Path(tempfile.mkdtemp(prefix="receiver-bench-"))
    best = 0
    workers = args.workers
    sources = 1 if workers == 1 else 16
    worker_args = ["--workers", str(workers)] if workers > 1 else []
    with EmbeddedKafka(log_path=tmp / "tansu.log") as kafka, run_receiver_process(
        tmp, kafka.bootstrap_servers, "bench", "--no-tcp", *worker_args, *args.receiver_arg
    ) as receiver:
        deadline = time.monotonic() + 30
        while (
            sum(e.get("event") == "receiver_started" for e in receiver.events()) < workers
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        time.sleep(1)
        pids = children(receiver.process.pid) if workers > 1 else [receiver.process.pid]
        base_port = receiver.metrics_port

        def metric(name: str) -> float:
            total = 0.0
            for k in range(workers):
                receiver.metrics_port = base_port + k
                total += receiver.metric(name)
            receiver.metrics_port = base_port
            return total

        def cpu() -> tuple[float, float]:
            times = [cpu_times(pid) for pid in pids]
            return sum(t[0] for t in times), sum(t[1] for t in times)

        sent_total = 0
        published_before = 0.0
        for rate in (int(r) for r in args.rates.split(",")):
            sent = int(rate * args.seconds)
            started = time.perf_counter()
            cpu_before = cpu()
            proc = multiprocessing.Process(
                target=blast, args=(receiver.udp_port, rate, args.seconds, packets, sources)
            )
            proc.start()
            proc.join()
            send_s = time.perf_counter() - started
            sent_total += sent
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                published = metric("hep_ingest_packets_published_total")
                if published >= sent_total or metric("hep_ingest_queue_depth") == 0:
                    time.sleep(0.5)
                    if metric("hep_ingest_queue_depth") == 0:
                        break
                time.sleep(0.2)
            cpu_after = cpu()
            user_s, sys_s = cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]
            cpu_used = user_s + sys_s
            received = metric("hep_ingest_packets_received_total")
            published = metric("hep_ingest_packets_published_total")
            # Receiver CPU per published packet: the cost that caps one process on a
            # dedicated core, whatever else the machine is running.
            count = max(published - published_before, 1)
            per_packet_us = cpu_used / count * 1e6
            published_before = published
            dropped = metric("hep_ingest_packets_dropped_total")
            lossless = published == sent_total and dropped == 0
            print(
                f"rate {rate:>7}/s  sent {sent_total:>8}  received {received:>9.0f}  "
                f"published {published:>9.0f}  dropped {dropped:.0f}  "
                f"(sender took {send_s:.1f}s)  receiver cpu {per_packet_us:.1f} us/packet "
                f"(user {user_s / count * 1e6:.1f}, sys {sys_s / count * 1e6:.1f})  "
                f"{'OK' if lossless else 'LOSS'}",
                flush=True,
            )
            if not lossless:
                break
            best = rate
    print(f"highest loss-free rate: {best} packets/s ({workers} worker(s))")


if __name__ == "__main__":
    main()
