"""pipeline.supervisor with tiny Python workers: exit codes, signal forwarding, names."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline import supervisor
from pipeline.commands.consume import CLIENT_ID
from pipeline.consumer.settings import ConsumerSettings

# Worker K handles SIGTERM by exiting 0 and then says so in DIR/K; the last one, once
# all are ready, sends SIGTERM to the supervisor (its parent), which must forward it.
READY_THEN_STOP = """
import os, pathlib, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
ready, index, workers = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
(ready / str(index)).touch()
if index == workers - 1:
    while len(list(ready.iterdir())) < workers:
        time.sleep(0.01)
    os.kill(os.getppid(), signal.SIGTERM)
time.sleep(30)
sys.exit(5)
"""


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_signals_are_forwarded_and_clean_exits_are_success(tmp_path: Path) -> None:
    def worker_argv(argv: Sequence[str], index: int) -> list[str]:
        return [*argv, str(tmp_path), str(index), "3"]

    assert supervisor.supervise(python(READY_THEN_STOP), 3, worker_argv, poll_s=0.01) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "1", "2"]


def test_a_worker_exiting_on_its_own_stops_the_others_and_fails() -> None:
    def worker_argv(_argv: Sequence[str], index: int) -> list[str]:
        # Worker 0 exits 0 at once (unexpected: no signal), worker 1 would run 30 s.
        return python("pass" if index == 0 else "import time; time.sleep(30)")

    assert supervisor.supervise([], 2, worker_argv, poll_s=0.01) == 1


def test_worker_address() -> None:
    assert supervisor.worker_address(("0.0.0.0", 9100), 2) == "0.0.0.0:9102"
    assert supervisor.worker_address(("::1", 9100), 1) == "[::1]:9101"


def test_own_command_needs_the_subcommand_on_the_command_line() -> None:
    assert supervisor.own_command("no-such-subcommand-here") is None


def test_consume_workers_client_id_prefix_is_the_settings_default() -> None:
    assert ConsumerSettings(sink="stdout").client_id == CLIENT_ID
