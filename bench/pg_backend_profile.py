"""Where the consumer's PostgreSQL backends spend their CPU, by kind of work (not a test).

    .venv/bin/python bench/pg_backend_profile.py --tree new=. [--rate 20000] [--seconds 10]

Runs `bench/side_by_side.py` for one tree at one rate and, while its sender sends,
`perf record -a` (needs perf and the permission to profile the system); then sums the
samples of the consumer's backends (the processes titled "postgres: <user>
bench_<tree>_<rate>_... ") by the function they were in, and prints the share of each
kind of work: COPY parsing and the columns' input functions, json validation of the
HOMER headers, the heap insert and its buffers, the indexes, constraints and partition
routing, WAL records, the kernel (writing the pages the backend filled, extending
files, fsync at commit). Self time only: the embedded server is built without frame
pointers, so call chains are not reliable. With ~500 samples a share is good to about
±2 points.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: (kind of work, pattern of PostgreSQL function names), first match wins.
KINDS = (
    ("json validation of the headers", r"json|parse_object|parse_scalar|parse_array|utf8"),
    ("COPY parse, input functions", r"Copy|Receive|recv|^pq_|network_|resetStringInfo|"
                                    r"pg_any_to_server|NextCopy"),
    ("indexes", r"^_bt|^bt|brin|^_hash|^hashinsert|index_|Index|FormIndexDatum|"
                r"varstr_cmp|text_substring|hep_index"),
    ("constraints, partition routing, expressions", r"ExecConstraints|ExecFindPartition|"
                                                   r"ExecInterp|FunctionCall|ExecPartition|"
                                                   r"^tts_|slot_"),
    ("WAL records", r"XLog|GetRedoRecPtr|crc32"),
    ("commit, locks", r"Commit|Transaction|ProcArray|LWLock"),
    ("heap insert, buffers", r"heap|fill_val|Page|Buf|ResourceOwner|Relation|Extend|"
                             r"Strategy|Victim|checksum|^File|smgr|^md|hash_search|"
                             r"hash_bytes"),
)


def kind_of(symbol: str, kernel: bool) -> str:
    if kernel:
        return "kernel (page writes, file extension, fsync)"
    return next((kind for kind, pattern in KINDS if re.search(pattern, symbol)), "other")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", required=True, help="NAME=PATH")
    parser.add_argument("--rate", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    name = args.tree.split("=", 1)[0]
    workdir = Path(tempfile.mkdtemp(prefix="pg-backend-profile-"))
    data = workdir / "perf.data"
    bench = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "side_by_side.py"), "--tree", args.tree,
         "--rates", str(args.rate), "--seconds", str(args.seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and bench.poll() is None:
        if subprocess.run(["pgrep", "-f", "hep_send_seq"], capture_output=True).returncode == 0:
            break
        time.sleep(0.25)
    perf = subprocess.Popen(
        ["perf", "record", "-q", "-F", "499", "-a", "-o", str(data), "--",
         "sleep", str(max(args.seconds - 1, 1))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # The consumer's backends, looked for all along: its pool opens and closes them.
    title = re.compile(rf"postgres: \S+ bench_{re.escape(name)}_{args.rate}_")
    backends: set[str] = set()
    while perf.poll() is None:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if title.match(cmdline.read_bytes().replace(b"\0", b" ").decode()):
                    backends.add(cmdline.parent.name)
            except OSError:
                continue
        time.sleep(0.5)
    output, _ = bench.communicate()
    print("\n".join(output.strip().splitlines()[-2:]), flush=True)  # the run's figures
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--no-children", "--pid", ",".join(sorted(backends)),
         "--sort", "sym", "--stdio", "-g", "none", "-F", "sample,sym"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    by_kind: dict[str, int] = defaultdict(int)
    top: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for line in report.splitlines():
        found = re.match(r"\s*(\d+)\s+\[(.)\]\s+(\S+)", line)
        if found:
            samples, symbol = int(found[1]), found[3]
            kind = kind_of(symbol, found[2] == "k")
            by_kind[kind] += samples
            top[kind].append((samples, symbol))
    total = sum(by_kind.values())
    print(f"{total} samples of the backends {', '.join(sorted(backends))}")
    for kind, samples in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        functions = ", ".join(f"{s} {n}" for n, s in sorted(top[kind], reverse=True)[:5])
        print(f"{samples / max(total, 1) * 100:5.1f} %  {kind}: {functions}")


if __name__ == "__main__":
    main()
