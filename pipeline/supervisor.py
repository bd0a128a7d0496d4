"""Run N copies of this process's own command and supervise them (`--workers N`).

`receive` and `consume` use it the same way: the process that was given ``--workers
N`` (N > 1) becomes a supervisor that re-executes its own command line N times, each
made into worker K by a per-command transformer (``--workers 1 --worker-index K``, a
per-worker name, ``--metrics`` on the port + K), and waits for them:

- SIGTERM/SIGINT are forwarded to every worker, which stops cleanly on its own terms;
- a worker that exits while no signal was received (a bind error, a crash, a database
  it cannot reach) is a failure: the others are sent SIGTERM, so the orchestrator sees
  the whole service exit non-zero and restarts it;
- nothing is restarted here: that is the orchestrator's job (systemd, Kubernetes);
- a supervisor that is SIGKILLed takes its workers with it (SIGTERM from the kernel,
  pipeline.lifetime), so a restart never finds the ports held by orphans;
- the exit code is 0 when every worker exited 0 after a signal, else 1.

The workers inherit stdin, stdout, stderr and the environment; options on the command
line win over environment variables, so ``HEP_INGEST_WORKERS`` does not recurse.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.lifetime import die_with_parent
from pipeline.observability import get_logger
from pipeline.observability.logs import EventLogger

EXIT_OK = 0
EXIT_FAILURE = 1

#: Makes the command line to run as worker K from the supervisor's own.
WorkerArgv = Callable[[Sequence[str], int], Sequence[str]]

_log = get_logger("pipeline.supervisor")


def own_command(subcommand: str) -> list[str] | None:
    """This process's command line, to run again; None if `subcommand` is not on it.

    It is None when the command was not started from a command line that can be
    re-executed (a test runner invoking the command function, ``python -c``).
    """
    if subcommand not in sys.orig_argv:
        return None
    return [sys.executable, *sys.orig_argv[1:]]


def worker_address(address: tuple[str, int], index: int) -> str:
    """``HOST:PORT+index`` for a worker's option (an IPv6 host in brackets)."""
    host, port = address
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port + index}"


def supervise(
    argv: Sequence[str],
    workers: int,
    worker_argv: WorkerArgv,
    *,
    log: EventLogger | None = None,
    log_fields: Mapping[str, Any] | None = None,
    poll_s: float = 0.1,
) -> int:
    """Run ``worker_argv(argv, K)`` for K in 0..workers-1 until all exit; the exit code.

    `log_fields` are added to the ``workers_started`` event (names, metrics addresses).
    """
    log = log or _log
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop_all(signum: int) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        log.info("workers_stopping", signal=signal.Signals(signum).name)
        stop_all(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    failed = False
    try:
        for index in range(workers):
            if stopping:
                break
            # A SIGKILLed supervisor cannot forward anything: the kernel stops them.
            children.append(
                subprocess.Popen(
                    list(worker_argv(argv, index)), preexec_fn=die_with_parent(signal.SIGTERM)
                )
            )
        log.info(
            "workers_started",
            workers=workers,
            pids=[child.pid for child in children],
            **dict(log_fields or {}),
        )
        reported: set[int] = set()
        while len(reported) < len(children):
            for index, child in enumerate(children):
                code = child.poll()
                if code is None or index in reported:
                    continue
                reported.add(index)
                unexpected = not stopping
                bad = code != 0 or unexpected
                failed = failed or bad
                (log.error if bad else log.info)(
                    "worker_exited", worker=index, pid=child.pid, exit_code=code,
                    unexpected=unexpected,
                )
                if unexpected:
                    stopping = True
                    stop_all(signal.SIGTERM)
            time.sleep(poll_s)
    finally:
        for child in children:  # only on an exception in this loop
            if child.poll() is None:
                child.kill()
                child.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return EXIT_FAILURE if failed else EXIT_OK
