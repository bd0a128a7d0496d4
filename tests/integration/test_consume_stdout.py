"""`hep-ingest consume --sink stdout` prints enriched rows as JSON lines."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.embedded import EmbeddedKafka
from tests.conftest import create_topic
from tests.integration.consume_support import (
    encode_packets,
    publish,
    sip_packet,
    start_consumer,
    stop_process,
    tail,
)

pytestmark = pytest.mark.integration


def test_stdout_sink_prints_json_rows(
    kafka: EmbeddedKafka, topic_name: str, tmp_path: Path
) -> None:
    items = encode_packets(sip_packet(f"stdout-{i}@test", i + 1) for i in range(5))

    async def prepare() -> None:
        await create_topic(kafka.bootstrap_servers, topic_name, partitions=2)
        await publish(kafka.bootstrap_servers, topic_name, items)

    asyncio.run(prepare())

    out_path = tmp_path / "stdout.jsonl"
    log_path = tmp_path / "consumer.log"
    with open(out_path, "wb") as out:
        process = start_consumer(
            kafka.bootstrap_servers,
            topic_name,
            None,
            log_path,
            "--flush-interval",
            "0.2",
            sink="stdout",
            stdout=out.fileno(),
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if len(out_path.read_text().splitlines()) >= 5 or process.poll() is not None:
                    break
                time.sleep(0.2)
        finally:
            code = stop_process(process)
    assert code == 0, tail(log_path)
    lines = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert len(lines) == 5, tail(log_path)
    assert {line["call_id"] for line in lines} == {f"stdout-{i}@test" for i in range(5)}
    first = lines[0]
    assert first["table"] == "hep_proto_1_call"
    assert first["method"] == "INVITE"
    assert first["src_ip"] == "10.0.0.1" and first["dst_port"] == 5062
    assert first["raw"].startswith("INVITE sip:bob@example.com")


def test_help_shows_env_vars_and_defaults() -> None:
    from tests.integration.consume_support import cli

    result = subprocess.run(
        [*cli(), "consume", "--help"],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    for needle in (
        "HEP_INGEST_BATCH_SIZE",
        "10000",
        "HEP_INGEST_FLUSH_INTERVAL",
        "--no-migrate",
        "--store-auth-key",
        "HEP_INGEST_DEAD_LETTER_TOPIC",
    ):
        assert needle in result.stdout
