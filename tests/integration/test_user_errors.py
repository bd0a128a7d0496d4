"""Errors a user sees, through the real `hep-ingest` processes: one line, the right exit code.

- database commands on an unknown database, an unknown role, a garbage DSN (exit 2)
  or an unreachable server (exit 1): one line naming what failed, no traceback;
- `receive` with a malformed HEP_INGEST_METRICS: refused (exit 2) before any listener
  is bound;
- numeric settings that are NaN, infinite or negative: refused at start, from a flag or
  a HEP_INGEST_* variable (tests/unit/test_cli_settings.py walks every option; here a
  few go through the real process to show nothing starts).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from receiver_process import hep_ingest_command

from pipeline.embedded import EmbeddedPostgres
from pipeline.embedded.net import free_tcp_port, free_udp_port

pytestmark = pytest.mark.integration

DATABASE_COMMANDS = (["migrate"], ["partitions", "show"], ["calls"], ["stats"], ["call", "x"])


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEP_INGEST_")}
    return subprocess.run(
        [*hep_ingest_command(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {}), "COLUMNS": "250"},
    )


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, f"exit {result.returncode}\n{result.stderr}"
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _server_dsn(postgres: EmbeddedPostgres, *, user: str, database: str) -> str:
    return f"postgresql://{user}@{postgres.host}:{postgres.port}/{database}"


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=lambda c: c[0])
def test_unknown_database_is_one_line_and_exit_2(
    postgres: EmbeddedPostgres, command: list[str]
) -> None:
    missing = f"nosuch_{uuid.uuid4().hex[:8]}"
    dsn = _server_dsn(postgres, user=postgres.user, database=missing)
    result = run_cli(*command, "--dsn", dsn)
    assert_one_line(result, 2, missing, "does not exist")


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=lambda c: c[0])
def test_unknown_role_is_one_line_and_exit_2(
    postgres: EmbeddedPostgres, command: list[str]
) -> None:
    role = f"nobody_{uuid.uuid4().hex[:8]}"
    result = run_cli(*command, "--dsn", _server_dsn(postgres, user=role, database="postgres"))
    assert_one_line(result, 2, role)


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=lambda c: c[0])
def test_garbage_dsn_is_one_line_and_exit_2(command: list[str]) -> None:
    result = run_cli(*command, env={"HEP_INGEST_DSN": "not a dsn"})
    assert_one_line(result, 2, "DSN")


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=lambda c: c[0])
def test_unreachable_server_is_one_line_and_exit_1(command: list[str]) -> None:
    port = free_tcp_port()  # nothing listens there
    dsn = f"postgresql://postgres:secret@127.0.0.1:{port}/hep"
    line = assert_one_line(run_cli(*command, "--dsn", dsn), 1, "cannot reach PostgreSQL", str(port))
    assert "secret" not in line


def test_receive_refuses_a_malformed_metrics_variable_before_binding() -> None:
    udp, tcp = free_udp_port(), free_tcp_port()
    result = run_cli(
        "receive", "--udp", f"127.0.0.1:{udp}", "--tcp", f"127.0.0.1:{tcp}",
        "--bootstrap-servers", f"127.0.0.1:{free_tcp_port()}",
        env={"HEP_INGEST_METRICS": "localhost:notaport"},
    )  # fmt: skip
    assert_one_line(result, 2, "--metrics", "localhost:notaport")
    assert "receiver_started" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "env", "option"),
    [
        (["--retry-initial-s", "inf"], {}, "--retry-initial-s"),
        ([], {"HEP_INGEST_PROGRESS_INTERVAL": "nan"}, "--progress-interval"),
        (["--udp-rcvbuf", "-1"], {}, "--udp-rcvbuf"),
        ([], {"HEP_INGEST_SHUTDOWN_TIMEOUT": "inf"}, "--shutdown-timeout"),
    ],
)
def test_receive_refuses_bad_numbers_before_starting(
    args: list[str], env: dict[str, str], option: str
) -> None:
    udp, tcp = free_udp_port(), free_tcp_port()
    result = run_cli(
        "receive", "--udp", f"127.0.0.1:{udp}", "--tcp", f"127.0.0.1:{tcp}",
        "--bootstrap-servers", f"127.0.0.1:{free_tcp_port()}", *args, env=env,
    )  # fmt: skip
    assert_one_line(result, 2, option)
    assert "receiver_started" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("command", "args"),
    [
        (["consume", "--sink", "stdout"], ["--flush-interval", "nan"]),
        (["up"], ["--drain-timeout", "inf"]),
        (["partitions"], ["--retention-days", "-1"]),
    ],
)
def test_other_commands_refuse_bad_numbers(
    command: list[str], args: list[str], tmp_path: Path
) -> None:
    # A data directory of the test's own: if the value were accepted, `up` must not
    # start servers in the user's.
    result = run_cli(*command, *args, env={"HEP_INGEST_DATA_DIR": str(tmp_path)})
    assert_one_line(result, 2, args[0])


def test_up_with_an_unknown_database_says_so_in_one_line(
    postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    missing = f"nosuch_{uuid.uuid4().hex[:8]}"
    result = run_cli(
        "up", "--data-dir", str(tmp_path / "data"), "--kafka-port", "0",
        "--udp", f"127.0.0.1:{free_udp_port()}", "--tcp", f"127.0.0.1:{free_tcp_port()}",
        "--dsn", _server_dsn(postgres, user=postgres.user, database=missing),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("hep-ingest up:")]
    assert len(errors) == 1 and missing in errors[0], result.stderr
