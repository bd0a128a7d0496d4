"""Helpers for tests that start `consume` or `up`, break a server, and stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from pipeline.embedded import free_tcp_port, free_udp_port
from tests.integration.consume_support import cli, log_events, tail


def closed_port_address() -> str:
    """127.0.0.1:<a port nobody listens on>: connections to it are refused."""
    return f"127.0.0.1:{free_tcp_port()}"


def wait_for_event(log: Path, name: str, process: subprocess.Popen[bytes], within: float) -> None:
    """Until the JSON log has an event `name`; fails if the process exits first."""
    wait_for_events(log, name, 1, process, within)


def wait_for_events(
    log: Path, name: str, count: int, process: subprocess.Popen[bytes], within: float
) -> list[dict[str, Any]]:
    """Until the JSON log has `count` events `name`, which it returns in log order; fails
    if the process exits first. A test waits for retries this way, not for a fixed time."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = [e for e in log_events(log) if e.get("event") == name]
        if len(found) >= count:
            return found
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}:\n{tail(log)}")
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} {name} events within {within}s:\n{tail(log)}")


def signal_and_time(
    process: subprocess.Popen[bytes], signum: signal.Signals = signal.SIGTERM
) -> tuple[int, float]:
    """(exit code, seconds from the signal to exit); kills the process after 30 s."""
    started = time.monotonic()
    process.send_signal(signum)
    try:
        code = process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return -9, time.monotonic() - started
    return code, time.monotonic() - started


def start_up(data_dir: Path, out: Path, *args: str) -> subprocess.Popen[bytes]:
    """`hep-ingest up` on free loopback ports, stdout and stderr into `out`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEP_INGEST_")}
    with open(out, "ab") as sink:
        return subprocess.Popen(
            [*cli(), "up", "--data-dir", str(data_dir), "--udp", f"127.0.0.1:{free_udp_port()}",
             "--tcp", f"127.0.0.1:{free_tcp_port()}", *args],
            stdout=sink, stderr=sink, stdin=subprocess.DEVNULL, env=env,
        )
