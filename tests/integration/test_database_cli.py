"""`hep-ingest migrate` and `hep-ingest partitions` as an operator runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from pipeline.postgres.partitions import PartitionInterval, create_partition
from pipeline.storage.rows import CAPTURE_TABLES

HEP_INGEST = shutil.which("hep-ingest") or str(Path(sys.executable).parent / "hep-ingest")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEP_INGEST_")}
    return subprocess.run([HEP_INGEST, *args], capture_output=True, text=True, timeout=120,
                          env={**env, "COLUMNS": "250"})


async def table_names(dsn: str, pattern: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT relname FROM pg_class WHERE relname LIKE $1", pattern)
    finally:
        await conn.close()
    return {r["relname"] for r in rows}


async def test_migrate_then_partitions_create_show_and_drop(database_dsn: str) -> None:
    first = run_cli("migrate", "--dsn", database_dsn)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_hep_tables" in first.stdout
    again = run_cli("migrate", "--dsn", database_dsn)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "database is up to date"

    created = run_cli("partitions", "create", "--dsn", database_dsn, "--ahead", "2d")
    assert created.returncode == 0, created.stderr
    today = datetime.now(UTC).strftime("%Y%m%d")
    assert f"created hep_proto_1_call_p{today}" in created.stdout
    # Today and two days ahead, for each capture table.
    assert f"{3 * len(CAPTURE_TABLES)} partitions created" in created.stdout
    rerun = run_cli("partitions", "create", "--dsn", database_dsn, "--ahead", "2d")
    assert "0 partitions created" in rerun.stdout

    # A partition a month old, as a consumer running then would have made it.
    old_start = PartitionInterval.DAILY.floor(datetime.now(UTC) - timedelta(days=30))
    old = PartitionInterval.DAILY.partition_name("hep_proto_1_call", old_start)
    conn = await asyncpg.connect(database_dsn)
    try:
        await create_partition(conn, "hep_proto_1_call", old, old_start,
                               old_start + timedelta(days=1))
    finally:
        await conn.close()

    shown = run_cli("partitions", "show", "--dsn", database_dsn)
    assert shown.returncode == 0, shown.stderr
    assert old in shown.stdout and f"hep_proto_1_call_p{today}" in shown.stdout
    assert "hep_proto_1_call_default_part" in shown.stdout

    dry = run_cli("partitions", "drop", "--dsn", database_dsn, "--retention-days", "14",
                  "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would drop {old}" in dry.stdout
    assert old in await table_names(database_dsn, "hep_proto_1_call_p%")

    dropped = run_cli("partitions", "drop", "--dsn", database_dsn, "--retention-days", "14")
    assert dropped.returncode == 0, dropped.stderr
    assert f"dropped {old}" in dropped.stdout
    remaining = await table_names(database_dsn, "hep_proto_1_call_p%")
    assert old not in remaining and f"hep_proto_1_call_p{today}" in remaining


def test_migrate_against_an_unreachable_database_is_a_clear_error() -> None:
    result = run_cli("migrate", "--dsn", "postgresql://postgres@127.0.0.1:1/none")
    assert result.returncode == 1
    assert "cannot reach PostgreSQL" in result.stderr


def test_no_dsn_and_no_embedded_database_is_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEP_INGEST_")}
    result = subprocess.run([HEP_INGEST, "partitions", "show"], capture_output=True, text=True,
                            timeout=60, env={**env, "HEP_INGEST_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "no --dsn given" in result.stderr


