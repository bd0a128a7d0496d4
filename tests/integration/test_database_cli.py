"""`hep-ingest migrate` and `hep-ingest partitions` as an operator runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry

from pipeline.postgres.migrate import apply_migrations
from pipeline.postgres.partitions import PartitionInterval, create_partition
from pipeline.postgres.sink import PostgresSink, SinkSettings
from pipeline.records import RecordIdGenerator, packet_to_record
from pipeline.resources import migrations_dir
from pipeline.storage.offsets import BatchOffsets, OffsetClaim
from pipeline.storage.rows import CAPTURE_TABLES
from tests.integration.consume_support import CONTEXT, sip_packet
from tests.integration.test_sink import rows_of

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




async def test_migrate_upgrades_a_database_that_holds_rows(
    database_dsn: str, tmp_path: Path
) -> None:
    """0004 (offsets stored with the rows) lands on a database written by the schema
    before it; its rows stay, and the sink then stores offsets with new rows."""

    # Today's schema: every migration but this one.
    before = tmp_path / "migrations"
    before.mkdir()
    earlier = [p for p in migrations_dir().glob("*.sql") if p.name != "0004_consumer_offsets.sql"]
    for path in earlier:
        shutil.copy(path, before)
    assert len(await apply_migrations(database_dsn, before)) == len(earlier)

    ids = RecordIdGenerator()
    records = [
        packet_to_record(sip_packet(f"old-{i}@test", i), record_id=ids.next(),
                         receive_time_us=1_795_664_046_000_000, context=CONTEXT)
        for i in range(40)
    ]
    rows = rows_of(records)
    old = PostgresSink(SinkSettings(database_dsn, apply_migrations=False),
                       registry=CollectorRegistry())
    await old.start()
    try:
        assert await old.write(rows[:30]) == []
    finally:
        await old.close(timeout=5)

    upgraded = run_cli("migrate", "--dsn", database_dsn)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.split() == ["applied", "0004_consumer_offsets"]

    sink = PostgresSink(SinkSettings(database_dsn, apply_migrations=False),
                        registry=CollectorRegistry())
    await sink.start()
    try:
        # A replay of stored rows with new ones: nothing duplicated, offsets stored.
        offsets = BatchOffsets("g", "hep", (OffsetClaim(0, None, 40),))
        assert (await sink.write_batch(rows, offsets)).fenced == {}
        assert await sink.stored_offsets("g", "hep", [0]) == {0: 40}
    finally:
        await sink.close(timeout=5)
    conn = await asyncpg.connect(database_dsn)
    try:
        total = await conn.fetchval(
            "SELECT count(*) FROM hep_proto_1_call WHERE call_id LIKE 'old-%'"
        )
        distinct = await conn.fetchval(
            "SELECT count(DISTINCT record_id) FROM hep_proto_1_call WHERE call_id LIKE 'old-%'"
        )
    finally:
        await conn.close()
    assert (total, distinct) == (40, 40)
