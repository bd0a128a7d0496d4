"""CPU per packet of each process, for two or more code trees, in one run on one box.

Machines here differ 2-3x from one session to the next, so a figure only means
something beside another measured in the same run. This bench runs `hep-ingest receive`
and `hep-ingest consume` of each tree given with --tree NAME=PATH (a checkout, e.g. a git
worktree of the commit before a change) against the same tansu and PostgreSQL, feeding
them the distinct-call load (`bench/load/`: every packet its own Call-ID) at each rate
for a few seconds, and prints per rate and tree:

- CPU microseconds per packet sent of the receiver, the consumer, PostgreSQL (its
  backends, summed) and tansu, all on the same cores as the sender;
- packets lost (sent minus distinct Call-IDs stored), and how long storage took to catch
  up after the sender stopped.

Trees alternate within each rate so that drift of the machine hits them alike.

    .venv/bin/python bench/side_by_side.py --tree main=/work/wt-main --tree new=. \
        [--rates 5000,20000,100000] [--seconds 5] [--receive-only | --up] [--transport tcp]

With --transport tcp the load goes to the receivers' TCP listener as one HEP stream
over one connection (blocking writes: a slow receiver slows the sender, nothing is
lost), instead of UDP datagrams.

With --up each run is a whole `hep-ingest up` of the tree on a new data directory (its
own tansu and PostgreSQL): CPU is split by process (the receiver's and the consumer's
columns hold `up` itself where it runs both in one process, as f1074a1 does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.embedded import (  # noqa: E402
    EmbeddedKafka,
    EmbeddedPostgres,
    free_tcp_port,
    free_udp_port,
)

LOAD = ROOT / "bench" / "load"


def build_sender(workdir: Path) -> Path:
    binary = workdir / "hep_send_seq"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(LOAD / "hep_send_seq.c")], check=True)
    return binary


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children so far (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return sum(int(f) for f in fields[11:15]) / tick


def descendants(parent: int) -> list[int]:
    by_parent: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            by_parent.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [parent]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(by_parent.get(pid, []))
    return out


def tree_cpu(pid: int) -> float:
    return sum(cpu_seconds(p) for p in descendants(pid))


def metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return float("nan")
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name)] in " {"
    )


def known(value: float) -> float:
    """0 for a metric a tree does not export (NaN)."""
    return 0.0 if value != value else value


def hep_ingest(tree: Path, *args: str) -> list[str]:
    # The tree's own interpreter when it has a venv: children `up` starts with
    # sys.executable would otherwise import this venv's (editable) pipeline, whatever
    # PYTHONPATH says.
    own = tree / ".venv" / "bin" / "python"
    python = str(own) if own.exists() else sys.executable
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); from pipeline.cli import main; main()"
    return [python, "-c", code, *args]


@dataclass
class Run:
    tree: str
    rate: int
    sent: int
    stored: int
    catch_up_s: float
    receiver_us: float
    consumer_us: float
    postgres_us: float
    tansu_us: float


async def stored_call_ids(dsn: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        tables = [
            r[0] for r in await conn.fetch("SELECT table_name FROM hep_ingest_capture_tables")
        ]
        union = " UNION ALL ".join(f"SELECT call_id FROM {t}" for t in tables)
        value = await conn.fetchval(f"SELECT count(DISTINCT call_id) FROM ({union}) r")
        return int(value or 0)
    finally:
        await conn.close()


async def create_database(admin_dsn: str, name: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin_dsn.rsplit("/", 1)[0] + "/" + name


def wait_until(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def run_one(
    name: str,
    tree: Path,
    rate: int,
    seconds: float,
    sender: Path,
    kafka: EmbeddedKafka,
    postgres: EmbeddedPostgres,
    workdir: Path,
    seq_base: int,
    receive_only: bool,
    transport: str = "udp",
) -> Run:
    topic = f"bench-{name}-{rate}-{seq_base}"
    listen_port = free_udp_port() if transport == "udp" else free_tcp_port()
    receiver_metrics, consumer_metrics = free_tcp_port(), free_tcp_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEP_INGEST_")}
    env["HEP_INGEST_MIGRATIONS_DIR"] = str(tree / "migrations")
    env["HEP_INGEST_SCHEMAS_DIR"] = str(tree / "schemas")
    log = open(workdir / f"{topic}.log", "wb")  # noqa: SIM115
    processes: list[subprocess.Popen[bytes]] = []
    try:
        receiver = subprocess.Popen(
            hep_ingest(
                tree, "receive",
                *(["--udp", f"127.0.0.1:{listen_port}", "--no-tcp"] if transport == "udp"
                  else ["--tcp", f"127.0.0.1:{listen_port}", "--no-udp"]),
                "--bootstrap-servers", kafka.bootstrap_servers, "--topic", topic,
                "--partitions", "4", "--metrics", f"127.0.0.1:{receiver_metrics}",
                "--log-format", "json",
            ),
            stdout=log, stderr=log, env=env,
        )  # fmt: skip
        processes.append(receiver)
        wait_until(lambda: metric(receiver_metrics, "hep_ingest_packets_received_total") == 0, 30)
        consumer = None
        dsn = ""
        if not receive_only:
            dsn = asyncio.run(create_database(postgres.dsn, topic.replace("-", "_")))
            consumer = subprocess.Popen(
                hep_ingest(
                    tree, "consume", "--bootstrap-servers", kafka.bootstrap_servers,
                    "--topic", topic, "--group", f"g-{topic}", "--dsn", dsn,
                    "--metrics", f"127.0.0.1:{consumer_metrics}", "--log-format", "json",
                ),
                stdout=log, stderr=log, env=env,
            )  # fmt: skip
            processes.append(consumer)
            wait_until(lambda: metric(consumer_metrics, "hep_ingest_consumer_lag_total") >= 0, 30)
            time.sleep(2)
        postgres_pid = int((postgres.pgdata / "postmaster.pid").read_text().split()[0])
        kafka_pid = kafka.pid or 0
        before = {
            "receiver": tree_cpu(receiver.pid),
            "consumer": tree_cpu(consumer.pid) if consumer else 0.0,
            "postgres": tree_cpu(postgres_pid) if postgres_pid else 0.0,
            "tansu": cpu_seconds(kafka_pid) if kafka_pid else 0.0,
        }
        result = subprocess.run(
            [str(sender), str(listen_port), str(rate), str(seconds), str(LOAD / "hep_corpus.bin"),
             str(seq_base), "64", transport],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        stopped = time.monotonic()
        sent = int(json.loads(result.stdout.strip().splitlines()[-1])["sent"])
        # The last datagrams may wait in the socket for one drain interval (up to
        # 50 ms) before the receiver counts them: wait for them (or the kernel's drops).
        wait_until(
            lambda: metric(receiver_metrics, "hep_ingest_packets_received_total")
            + known(metric(receiver_metrics, "hep_ingest_udp_socket_drops_total"))
            >= sent,
            5,
        )
        wait_until(
            lambda: (
                metric(receiver_metrics, "hep_ingest_packets_published_total")
                >= metric(receiver_metrics, "hep_ingest_packets_decoded_total")
                and metric(receiver_metrics, "hep_ingest_queue_depth") == 0
            ),
            60,
        )
        stored = int(metric(receiver_metrics, "hep_ingest_packets_published_total"))
        if consumer is not None:
            wait_until(lambda: asyncio.run(stored_call_ids(dsn)) >= stored, 120)
            stored = asyncio.run(stored_call_ids(dsn))
        catch_up = time.monotonic() - stopped
        after = {
            "receiver": tree_cpu(receiver.pid),
            "consumer": tree_cpu(consumer.pid) if consumer else 0.0,
            "postgres": tree_cpu(postgres_pid) if postgres_pid else 0.0,
            "tansu": cpu_seconds(kafka_pid) if kafka_pid else 0.0,
        }
        per = {k: (after[k] - before[k]) / max(sent, 1) * 1e6 for k in before}
        return Run(
            name, rate, sent, stored, catch_up,
            per["receiver"], per["consumer"], per["postgres"], per["tansu"],
        )  # fmt: skip
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def classify(pid: int) -> str:
    """Which column a process of an `up` tree counts under."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    if "tansu" in command:
        return "tansu"
    if "postgres" in command.split(" ", 1)[0] or command.startswith("postgres:"):
        return "postgres"
    if " consume " in command or command.endswith(" consume"):
        return "consumer"
    return "receiver"  # the receiver child, or `up` itself (base: receiver and consumer)


def cpu_by_role(root: int) -> dict[str, float]:
    totals = dict.fromkeys(("receiver", "consumer", "postgres", "tansu"), 0.0)
    for pid in descendants(root):
        role = classify(pid)
        if role in totals:
            totals[role] += cpu_seconds(pid)
    return totals


def run_up(name: str, tree: Path, rate: int, seconds: float, sender: Path, workdir: Path) -> Run:
    import re
    import signal

    data_dir = workdir / f"up-{name}-{rate}"
    udp_port = free_udp_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEP_INGEST_")}
    env["HEP_INGEST_MIGRATIONS_DIR"] = str(tree / "migrations")
    env["HEP_INGEST_SCHEMAS_DIR"] = str(tree / "schemas")
    env["PYTHONPATH"] = str(tree)  # `up`'s children import the same tree
    out_path = workdir / f"up-{name}-{rate}.out"
    with open(out_path, "wb") as out:
        up = subprocess.Popen(
            hep_ingest(
                tree, "up", "--data-dir", str(data_dir), "--udp", f"127.0.0.1:{udp_port}",
                "--tcp", f"127.0.0.1:{free_tcp_port()}", "--kafka-port", "0", "--pg-port", "0",
                "--status-interval", "1",
            ),
            # Not from this checkout's directory: `python -m pipeline` children put their
            # working directory first on sys.path and would import this tree instead.
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir,
        )  # fmt: skip
    try:
        dsn_pattern = re.compile(r"(postgresql://\S+)")
        dsn = ""

        def ready() -> bool:
            nonlocal dsn
            text = out_path.read_text(errors="replace")
            match = dsn_pattern.search(text)
            if match and "status:" in text:
                dsn = match.group(1)
                return True
            assert up.poll() is None, text
            return False

        wait_until(ready, 240)
        time.sleep(2)

        def postmaster() -> int:
            pid_file = data_dir / "postgres" / "postmaster.pid"
            found = list(data_dir.rglob("postmaster.pid"))
            path = pid_file if pid_file.exists() else (found[0] if found else None)
            return int(path.read_text().split()[0]) if path else 0

        def cpu() -> dict[str, float]:
            totals = cpu_by_role(up.pid)
            # pg_ctl daemonizes the postmaster: it is not below `up`, find it by its pid file.
            pg = postmaster()
            if pg and pg not in descendants(up.pid):
                totals["postgres"] += tree_cpu(pg)
            return totals

        before = cpu()
        result = subprocess.run(
            [str(sender), str(udp_port), str(rate), str(seconds), str(LOAD / "hep_corpus.bin")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        stopped = time.monotonic()
        sent = int(json.loads(result.stdout.strip().splitlines()[-1])["sent"])
        stored = 0

        def caught_up() -> bool:
            nonlocal stored
            stored = asyncio.run(stored_call_ids(dsn))
            return stored >= sent

        wait_until(caught_up, 180)
        catch_up = time.monotonic() - stopped
        after = cpu()
        per = {k: (after[k] - before[k]) / max(sent, 1) * 1e6 for k in before}
        return Run(
            name, rate, sent, stored, catch_up,
            per["receiver"], per["consumer"], per["postgres"], per["tansu"],
        )  # fmt: skip
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(120)
        except subprocess.TimeoutExpired:
            up.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH (repeatable)")
    parser.add_argument("--rates", default="5000,20000,100000")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--receive-only", action="store_true", help="no consumer, no database")
    parser.add_argument("--up", action="store_true", help="each run a whole `hep-ingest up`")
    parser.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    args = parser.parse_args()
    trees = [(n, Path(p).resolve()) for n, p in (t.split("=", 1) for t in args.tree)]
    workdir = Path(tempfile.mkdtemp(prefix="side-by-side-"))
    sender = build_sender(workdir)
    print(f"logs in {workdir}", flush=True)
    print(
        f"{'rate/s':>8} {'tree':>6} {'sent':>8} {'stored':>8} {'lost':>7} {'catch-up':>9} "
        f"{'receive':>8} {'consume':>8} {'postgres':>8} {'tansu':>7}   (CPU us per packet)",
        flush=True,
    )
    seq_base = 0
    with EmbeddedKafka(log_path=workdir / "tansu.log") as kafka:
        postgres = EmbeddedPostgres(workdir / "pg")
        postgres.start()
        try:
            for rate in (int(r) for r in args.rates.split(",")):
                runs = []
                for name, tree in trees:
                    if args.up:
                        run = run_up(name, tree, rate, args.seconds, sender, workdir)
                    else:
                        run = run_one(
                            name, tree, rate, args.seconds, sender, kafka, postgres, workdir,
                            seq_base, args.receive_only, args.transport,
                        )  # fmt: skip
                    seq_base += run.sent + 1
                    runs.append(run)
                    print(
                        f"{rate:>8} {name:>6} {run.sent:>8} {run.stored:>8} "
                        f"{run.sent - run.stored:>7} {run.catch_up_s:>8.1f}s "
                        f"{run.receiver_us:>8.1f} {run.consumer_us:>8.1f} "
                        f"{run.postgres_us:>8.1f} {run.tansu_us:>7.1f}",
                        flush=True,
                    )
                base = runs[0]
                for run in runs[1:]:
                    ratio = run.receiver_us / base.receiver_us if base.receiver_us else 0
                    consume_ratio = (
                        run.consumer_us / base.consumer_us if base.consumer_us else float("nan")
                    )
                    print(
                        f"{'':>8} {run.tree}/{base.tree}: receive x{ratio:.2f}, "
                        f"consume x{consume_ratio:.2f}",
                        flush=True,
                    )
        finally:
            postgres.stop("fast")


if __name__ == "__main__":
    main()
