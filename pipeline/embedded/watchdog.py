"""Stops the embedded PostgreSQL of a data directory when `hep-ingest up` dies.

pg_ctl starts the postmaster as a daemon, so no parent-death signal reaches it: when
`up` is SIGKILLed the server would run on until the next `up` adopts it. The watchdog
is a small process `up` starts before PostgreSQL, holding the write end of a pipe to
the watchdog's stdin. Whenever `up` ends, the kernel closes that pipe: the watchdog
reads end-of-file and stops the data directory's server if it still runs (after a
clean stop it finds nothing to do). A pipe, unlike a parent-death signal, does not
depend on which of `up`'s threads started the watchdog.

    python -m pipeline.embedded.watchdog DATA_DIR
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.embedded.postgres import EmbeddedPostgres


class PostgresWatchdog:
    """The watchdog process of one data directory; `close()` ends it without a stop."""

    def __init__(self, data_dir: Path) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.embedded.watchdog", str(data_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            # Its own session: a Ctrl-C meant for `up` must not end the watchdog first.
            start_new_session=True,
        )

    def close(self, timeout: float = 30.0) -> None:
        """After `up` stopped the server itself: the watchdog finds it stopped, exits."""
        process = self._process
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pipeline.embedded.watchdog DATA_DIR", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while sys.stdin.buffer.read(4096):  # nothing is ever written: wait for end-of-file
        pass
    server = EmbeddedPostgres(Path(argv[0]))
    if server.is_running():
        try:
            server.stop("fast")
        except Exception as exc:
            print(f"hep-ingest watchdog: cannot stop PostgreSQL in {argv[0]}: {exc}",
                  file=sys.stderr)
            return 1
        print(f"hep-ingest watchdog: `up` is gone, stopped PostgreSQL in {argv[0]}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
