"""A storage stall while HEP keeps coming over UDP loses nothing: Kafka holds it.

The standalone deployment (`hep-ingest receive` and `hep-ingest consume`, as in
docker-compose): the consumer is frozen (SIGSTOP) for several seconds while a bounded
load of distinct Call-IDs arrives at a moderate rate, then resumes (SIGCONT). Every
packet must be stored exactly once (as many rows as distinct Call-IDs as were sent)
and the kernel must have dropped none at the receiver's socket: capture does not wait
for storage. `hep-ingest up` with PostgreSQL itself paused is
tests/integration/test_up.py::test_up_loses_no_packet_while_postgres_is_stalled.

The rate is moderate and the waits generous: on a slow, shared machine the test takes
longer, it does not fail.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from receiver_process import kernel_drops, run_receiver_process

from pipeline.embedded import EmbeddedKafka
from pipeline.hep.encode import encode_hep3
from tests.integration.consume_support import (
    send_paced,
    sip_packet,
    start_consumer,
    stop_process,
    stored_call_ids,
    tail,
    wait_for_rows,
)

pytestmark = pytest.mark.integration

RATE = 1_000  # packets per second
STALL_S = 6.0  # below the consumer's Kafka session timeout: a pause, not a departure


async def test_a_frozen_consumer_loses_no_packet_sent_meanwhile(
    kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    total, warm_up = 9_000, 500
    during_stall = warm_up + int(RATE * STALL_S)
    packets = [encode_hep3(sip_packet(f"frozen-{i}@stall.test", i)) for i in range(total)]
    consumer_log = tmp_path / "consumer.log"
    with run_receiver_process(tmp_path, kafka.bootstrap_servers, topic_name) as receiver:
        receiver.wait_for_event("broker_connected", timeout=120)
        consumer = start_consumer(
            kafka.bootstrap_servers, topic_name, database_dsn, consumer_log,
            "--flush-interval", "0.2",
            # The product's default: the stall stays a pause, not a departure.
            "--session-timeout", "10",
        )  # fmt: skip
        try:
            send_paced(packets[:warm_up], receiver.udp_port, RATE)
            counts = await wait_for_rows(database_dsn, warm_up, 180, consumer)
            assert counts == (warm_up, warm_up), tail(consumer_log)
            os.kill(consumer.pid, signal.SIGSTOP)
            try:
                # The paced sends are the stall: about STALL_S seconds.
                await asyncio.to_thread(
                    send_paced, packets[warm_up:during_stall], receiver.udp_port, RATE
                )
                assert (await stored_call_ids(database_dsn))[0] == warm_up
            finally:
                os.kill(consumer.pid, signal.SIGCONT)
            await asyncio.to_thread(send_paced, packets[during_stall:], receiver.udp_port, RATE)
            counts = await wait_for_rows(database_dsn, total, 300, consumer)
            assert counts == (total, total), tail(consumer_log)
            assert await stored_call_ids(database_dsn) == (total, total)
            assert receiver.metric("hep_ingest_packets_received_total") == total
            assert receiver.metric("hep_ingest_packets_published_total") == total
            assert receiver.metric("hep_ingest_packets_dropped_total") == 0
            assert kernel_drops(receiver.udp_port) == 0
        finally:
            code = stop_process(consumer, timeout=60)
        assert code == 0, tail(consumer_log)
        assert receiver.terminate() == 0, receiver.log()
