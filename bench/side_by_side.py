"""CPU per packet of each process, for two or more code trees, in one run on one box.

Machines here differ 2-3x from one session to the next, so a figure only means
something beside another measured in the same run. This bench runs `hep-ingest receive`
and `hep-ingest consume` of each tree given with --tree NAME=PATH (a checkout, e.g. a git
worktree of the commit before a change) against the same tansu and PostgreSQL, feeding
them the distinct-call load (`bench/load/`: every packet its own Call-ID) at each rate
for a few seconds, and prints per rate and tree:

- CPU microseconds per packet sent of the receiver, the consumer, PostgreSQL and tansu,
  all on the same cores as the sender;
- PostgreSQL split per stored row: `pg-backend`, the client backends connected to the
  run's database (the consumer's connections: its COPY, offsets and lag queries; told
  by their process title "postgres: <user> <database> <host> ...") on their own, and
  `pg-other`, the rest of the server's work in the same interval (checkpointer,
  walwriter, background writer, io workers, autovacuum of this run's database and of
  earlier runs' databases, the postmaster, this bench's own counting queries and what
  exited between two samples), with a per-role breakdown of `pg-other` under each row
  (the counting queries and earlier runs' autovacuum are shown there, not summed);
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
import shutil
import subprocess
import sys
import tempfile
import threading
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


def ratios(run: Run, base: Run) -> str:
    """new/base per process, for what both measured (--receive-only has no consumer)."""
    pairs = [
        ("receive", run.receiver_us, base.receiver_us),
        ("consume", run.consumer_us, base.consumer_us),
        ("PostgreSQL backend", run.pg_backend_us_per_row, base.pg_backend_us_per_row),
        ("all of PostgreSQL", run.pg_backend_us_per_row + run.pg_other_us_per_row,
         base.pg_backend_us_per_row + base.pg_other_us_per_row),
    ]
    return ", ".join(f"{name} x{new / old:.2f}" for name, new, old in pairs if old and new)


def build_sender(workdir: Path) -> Path:
    binary = workdir / "hep_send_seq"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(LOAD / "hep_send_seq.c")], check=True)
    return binary


def cpu_seconds(pid: int, *, reaped_children: bool = True) -> float:
    """User + system CPU seconds of a process (Linux), with those of its reaped children
    so far unless told not to; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime, then cutime, cstime: the children's come after the process's own.
    counted = fields[11:15] if reaped_children else fields[11:13]
    return sum(int(f) for f in counted) / os.sysconf("SC_CLK_TCK")


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


def postgres_role(pid: int, database: str) -> str:
    """"backend" for a client backend connected to `database`, else the kind of server
    process, from its title: "postgres: [cluster: ]<user> <database> <host> <state>" for
    a backend, "postgres: [cluster: ]checkpointer", "... autovacuum worker <database>"."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "exited"
    if not title.startswith("postgres: "):
        return "postmaster"
    words = title.split()[1:]
    if words and words[0].endswith(":"):  # a cluster_name prefix
        words = words[1:]
    kind = " ".join(words[:2])
    if kind == "autovacuum worker":
        # Vacuum and analyze of the rows just written, or of an earlier run's database.
        mine = len(words) > 2 and words[2] == database
        return "autovacuum (this database)" if mine else "autovacuum (other databases)"
    for background in ("checkpointer", "walwriter", "background writer", "autovacuum",
                       "logical replication", "io worker", "startup", "archiver"):
        if kind.startswith(background):
            return background.split()[0]
    if words and words[0] == BENCH_ROLE:
        return "bench queries"
    if len(words) >= 2 and words[1] == database:
        return "backend"
    return "other backends"


#: The role this bench's own connections (its counting queries) log in as, so that
#: their processes are told from the consumer's by title (pids are reused quickly), and
#: the CPU seconds they used, read from /proc just before each closes.
BENCH_ROLE = "hep_bench_counter"
BENCH_QUERY_SECONDS = [0.0]


async def create_bench_role(dsn: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", BENCH_ROLE):
            await conn.execute(f"CREATE ROLE {BENCH_ROLE} LOGIN SUPERUSER")
    finally:
        await conn.close()


class PostgresSampler:
    """CPU seconds per role of a PostgreSQL server's processes over an interval.

    A thread reads /proc every 50 ms so that a process that exits within the interval (a
    short-lived connection, an autovacuum worker) is still counted under its role, with
    the CPU it had at its last sample; what escaped every sample (a process born and gone
    between two, the last <50 ms of one that exited) is the difference between the
    postmaster's reaped-children CPU and the sum, shown as "exited unsampled"."""

    def __init__(self, postmaster: int, database: str) -> None:
        self.postmaster, self.database = postmaster, database
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.roles: dict[int, str] = {}
        self._started = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _children(self) -> list[int]:
        """The postmaster's children (every server process is one): cheap enough to
        read every 50 ms, where a walk of all of /proc would load the cores measured."""
        try:
            listed = Path(f"/proc/{self.postmaster}/task/{self.postmaster}/children")
            return [int(pid) for pid in listed.read_text().split()]
        except OSError:
            return [pid for pid in descendants(self.postmaster) if pid != self.postmaster]

    def _sample(self) -> None:
        for pid in self._children():
            if pid not in self.roles:
                role = postgres_role(pid, self.database)
                if role == "exited":
                    continue
                self.roles[pid] = role
            if self.roles[pid] == "bench queries":
                continue  # counted by stored_call_ids
            seconds = cpu_seconds(pid, reaped_children=False)
            if seconds:
                self.last[pid] = seconds
                # Alive at the start: counted from there; born later: all of its CPU.
                self.first.setdefault(pid, 0.0 if self._started else seconds)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def __enter__(self) -> PostgresSampler:
        self._sample()  # before the thread starts: processes alive now count from here
        self._postmaster_start = cpu_seconds(self.postmaster)
        self._postmaster_own_start = cpu_seconds(self.postmaster, reaped_children=False)
        self._bench_start = BENCH_QUERY_SECONDS[0]
        self._started = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self._postmaster_end = cpu_seconds(self.postmaster)
        self._postmaster_own_end = cpu_seconds(self.postmaster, reaped_children=False)

    def split(self) -> dict[str, float]:
        by_role: dict[str, float] = {}
        for pid, last in self.last.items():
            role = self.roles[pid]
            by_role[role] = by_role.get(role, 0.0) + last - self.first.get(pid, 0.0)
        # The postmaster's own CPU plus its reaped children's: what the samples of the
        # processes that exited did not see is left over.
        alive = set(self._children())
        exited_seen = sum(
            last - self.first.get(pid, 0.0) for pid, last in self.last.items() if pid not in alive
        )
        own = self._postmaster_own_end - self._postmaster_own_start
        bench = BENCH_QUERY_SECONDS[0] - self._bench_start
        by_role["postmaster"] = own
        by_role["bench queries"] = bench
        by_role["exited unsampled"] = (
            self._postmaster_end - self._postmaster_start - own - exited_seen - bench
        )
        return by_role


#: Shown in pg-other's breakdown but not summed into it: work this run did not cause
#: (this bench's own counting queries; autovacuum of the rows of an earlier run).
NOT_THIS_RUN = ("bench queries", "autovacuum (other databases)")


def postgres_columns(split: dict[str, float], rows: int) -> tuple[float, float, str]:
    """(backend us/row, other us/row, breakdown of other) of a `PostgresSampler.split`."""
    per = {role: seconds / max(rows, 1) * 1e6 for role, seconds in split.items()}
    backend = per.pop("backend", 0.0)
    detail = ", ".join(
        f"{role}{' (not summed)' if role in NOT_THIS_RUN else ''} {us:.1f}"
        for role, us in sorted(per.items(), key=lambda kv: -kv[1])
        if abs(us) >= 0.05
    )
    return backend, sum(us for role, us in per.items() if role not in NOT_THIS_RUN), detail


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
    pg_backend_us_per_row: float = 0.0
    pg_other_us_per_row: float = 0.0
    pg_other_detail: str = ""


async def stored_call_ids(dsn: str) -> int:
    import asyncpg

    # No parallel workers: the whole query's CPU is in this backend, counted below.
    conn = await asyncpg.connect(
        dsn, user=BENCH_ROLE, server_settings={"max_parallel_workers_per_gather": "0"}
    )
    try:
        tables = [
            r[0] for r in await conn.fetch("SELECT table_name FROM hep_ingest_capture_tables")
        ]
        union = " UNION ALL ".join(f"SELECT call_id FROM {t}" for t in tables)
        value = await conn.fetchval(f"SELECT count(DISTINCT call_id) FROM ({union}) r")
        return int(value or 0)
    finally:
        BENCH_QUERY_SECONDS[0] += cpu_seconds(conn.get_server_pid(), reaped_children=False)
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
    dsn_query: str = "",
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
        database = ""
        if not receive_only:
            database = topic.replace("-", "_")
            dsn = asyncio.run(create_database(postgres.dsn, database))
            asyncio.run(create_bench_role(dsn))
            consumer = subprocess.Popen(
                hep_ingest(
                    tree, "consume", "--bootstrap-servers", kafka.bootstrap_servers,
                    "--topic", topic, "--group", f"g-{topic}",
                    "--dsn", f"{dsn}?{dsn_query}" if dsn_query else dsn,
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
        pg_sampler = PostgresSampler(postgres_pid, database).__enter__()
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
        pg_sampler.__exit__()
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
            *postgres_columns(pg_sampler.split(), stored),
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

        database = dsn.rsplit("/", 1)[-1].split("?", 1)[0]
        asyncio.run(create_bench_role(dsn))
        before = cpu()
        pg_sampler = PostgresSampler(postmaster(), database).__enter__()
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
        pg_sampler.__exit__()
        after = cpu()
        per = {k: (after[k] - before[k]) / max(sent, 1) * 1e6 for k in before}
        return Run(
            name, rate, sent, stored, catch_up,
            per["receiver"], per["consumer"], per["postgres"], per["tansu"],
            *postgres_columns(pg_sampler.split(), stored),
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
    parser.add_argument(
        "--dsn-query", action="append", default=[], metavar="NAME=QUERY",
        help="query string added to tree NAME's consumer DSN (repeatable): asyncpg sends "
        "unknown parameters as session settings, e.g. new2=synchronous_commit=off "
        "measures a server setting against the same tree without it",
    )
    args = parser.parse_args()
    dsn_queries = dict(q.split("=", 1) for q in args.dsn_query)
    trees = [(n, Path(p).resolve()) for n, p in (t.split("=", 1) for t in args.tree)]
    workdir = Path(tempfile.mkdtemp(prefix="side-by-side-"))
    sender = build_sender(workdir)
    print(f"logs in {workdir}", flush=True)
    print(
        f"{'rate/s':>8} {'tree':>6} {'sent':>8} {'stored':>8} {'lost':>7} {'catch-up':>9} "
        f"{'receive':>8} {'consume':>8} {'postgres':>8} {'tansu':>7}   (CPU us per packet)"
        f" {'pg-backend':>10} {'pg-other':>8}   (PostgreSQL CPU us per stored row)",
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
                            dsn_queries.get(name, ""),
                        )  # fmt: skip
                    seq_base += run.sent + 1
                    runs.append(run)
                    print(
                        f"{rate:>8} {name:>6} {run.sent:>8} {run.stored:>8} "
                        f"{run.sent - run.stored:>7} {run.catch_up_s:>8.1f}s "
                        f"{run.receiver_us:>8.1f} {run.consumer_us:>8.1f} "
                        f"{run.postgres_us:>8.1f} {run.tansu_us:>7.1f}"
                        f"{'':>22} {run.pg_backend_us_per_row:>10.1f} "
                        f"{run.pg_other_us_per_row:>8.1f}",
                        flush=True,
                    )
                    if run.pg_other_detail:
                        print(f"{'':>8} {'':>6}   pg-other: {run.pg_other_detail}", flush=True)
                base = runs[0]
                for run in runs[1:]:
                    print(f"{'':>8} {run.tree}/{base.tree}: {ratios(run, base)}", flush=True)
        finally:
            postgres.stop("fast")
            remove_databases(workdir)


def remove_databases(workdir: Path) -> None:
    """Delete the run's PostgreSQL data directories (gigabytes per run), keep the logs."""
    for pgdata in [d.parent for d in workdir.rglob("PG_VERSION") if d.parent.name == "pgdata"]:
        server_log = pgdata / "server.log"
        if server_log.exists():
            name = "-".join(pgdata.relative_to(workdir).parts[:-1])
            shutil.copy(server_log, workdir / f"postgres-{name}.log")
        shutil.rmtree(pgdata, ignore_errors=True)


if __name__ == "__main__":
    main()
