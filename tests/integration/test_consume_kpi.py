"""Capture filters and SIP KPIs through the real pipeline: HEP over UDP ->
`hep-ingest receive` -> Kafka -> `hep-ingest consume --sip-kpi --discard-methods OPTIONS
--censor-methods MESSAGE` -> PostgreSQL, with /metrics compared to the stored rows."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest

from pipeline.embedded import EmbeddedKafka, free_tcp_port, free_udp_port, wait_for_tcp
from pipeline.sip.kpi import code_label
from tests import flows
from tests.conftest import create_topic
from tests.integration.analysis_support import encode_captures, flows_start
from tests.integration.consume_support import (
    log_events,
    start_consumer,
    stop_process,
    tail,
    wait_for_rows,
)
from tests.integration.receiver_process import send_udp
from tests.integration.test_consume_e2e import start_receiver
from tests.integration.test_consume_lag import scrape

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

NODE = "2042"  # flows.Capture.to_packet's capture id
KEEPALIVES = 15


def keepalives(start_us: int) -> list[flows.Capture]:
    """OPTIONS pings from the proxy to alice and her 200 OKs, one every 10 s."""
    out: list[flows.Capture] = []
    for n in range(KEEPALIVES):
        d = flows.Dialog(f"ka-{n}@192.0.2.1", flows.Party("proxy", flows.PROXY, f"k{n}"),
                         "alice", start_us + n * 10_000_000)
        ping = d.request(0, "OPTIONS", flows.PROXY, flows.ALICE, cseq=n + 1)
        d.response(3, ping, 200, "OK", flows.ALICE, flows.PROXY)
        out += d.captures
    return out


def chat(start_us: int) -> flows.Capture:
    text = (
        "MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKm1\r\n"
        "From: <sip:alice@example.com>;tag=m1\r\nTo: <sip:bob@example.com>\r\n"
        "Call-ID: chat-1@192.0.2.10\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n"
        "Content-Length: 17\r\n\r\nthe code is 4711!"
    )
    return flows.Capture(start_us, flows.ALICE, flows.PROXY, text.encode())


async def stored_sip(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT call_id, method, status, cseq_num, cseq_method, to_tag, create_date, raw"
            " FROM hep_proto_1_call UNION ALL SELECT call_id, method, status, cseq_num,"
            " cseq_method, to_tag, create_date, raw FROM hep_proto_1_registration UNION ALL"
            " SELECT call_id, method, status, cseq_num, cseq_method, to_tag, create_date, raw"
            " FROM hep_proto_1_default"
        )
    finally:
        await conn.close()


def delays(rows: list[asyncpg.Record], method: str, answers: set[int]) -> list[float]:
    """Per transaction (Call-ID, CSeq) of `method`, from the first request without a To
    tag to the first response with a status in `answers`: computed from stored rows."""
    started: dict[tuple[str, int], datetime] = {}
    answered: dict[tuple[str, int], datetime] = {}
    for row in rows:
        if row["cseq_method"] != method:
            continue
        key = (row["call_id"], row["cseq_num"])
        when = row["create_date"]
        if row["method"] == method and row["to_tag"] is None:
            started[key] = min(when, started.get(key, when))
        elif row["status"] in answers:
            answered[key] = min(when, answered.get(key, when))
    return sorted(
        (answered[k] - started[k]).total_seconds() for k in started if k in answered
    )


@pytest.mark.parametrize("partitions", [1, 4])
async def test_filters_and_kpis_match_the_stored_calls(
    kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path, partitions: int
) -> None:
    # With one partition every call shares the KPI state, so the unanswered call's
    # timeout is passed by the later flows' capture times deterministically; with four,
    # the receiver's Call-ID keys spread the calls and each partition keeps its own.
    await create_topic(kafka.bootstrap_servers, topic_name, partitions=partitions)
    start_us = int(flows_start().timestamp() * 1_000_000)
    calls = flows.all_flows(start_us)
    captures = sorted(calls + keepalives(start_us) + [chat(start_us + 1_000)],
                      key=lambda c: c.time_us)
    udp_port, tcp_port, metrics_port = free_udp_port(), free_tcp_port(), free_tcp_port()
    receiver = start_receiver(kafka.bootstrap_servers, topic_name, udp_port, tcp_port,
                              tmp_path / "receiver.log")
    consumer = start_consumer(
        kafka.bootstrap_servers, topic_name, database_dsn, tmp_path / "consumer.log",
        "--flush-interval", "0.2", "--metrics", f"127.0.0.1:{metrics_port}",
        "--discard-methods", "OPTIONS", "--censor-methods", "MESSAGE",
        "--sip-kpi", "--sip-kpi-timeout", "60",
    )
    try:
        await asyncio.to_thread(wait_for_tcp, "127.0.0.1", tcp_port, 30)
        await asyncio.to_thread(send_udp, udp_port, encode_captures(captures))
        expected_rows = len(calls) + 1  # the flows and the MESSAGE; no OPTIONS
        total, _ = await wait_for_rows(database_dsn, expected_rows, 60, consumer)
        assert total == expected_rows, tail(tmp_path / "consumer.log")
        sip_rows = await stored_sip(database_dsn)
        values = scrape(metrics_port)
        # KPIs follow the commit of the rows, and the lag the commit of the offsets.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            sum(v for k, v in values.items() if k.startswith("hep_ingest_sip_messages_total{"))
            < len(sip_rows) or values.get("hep_ingest_consumer_lag_total", 1) > 0
        ):
            await asyncio.sleep(0.3)
            values = scrape(metrics_port)
    finally:
        assert stop_process(consumer) == 0, tail(tmp_path / "consumer.log")
        stop_process(receiver)

    (started,) = [e for e in log_events(tmp_path / "consumer.log")
                  if e.get("event") == "consumer_started"]
    assert started["capture_filter"]["discard_methods"] == ["OPTIONS"]
    assert started["capture_filter"]["censor_methods"] == ["MESSAGE"]
    assert started["sip_kpi"]["timeout"] == 60

    # OPTIONS: dropped, counted, and their offsets committed (nothing left to read).
    assert not [r for r in sip_rows if r["cseq_method"] == "OPTIONS"]
    assert values['hep_ingest_records_discarded_total{reason="method"}'] == 2 * KEEPALIVES
    assert values["hep_ingest_consumer_lag_total"] == 0

    # MESSAGE: stored with its body blanked, same length.
    (message,) = [r for r in sip_rows if r["cseq_method"] == "MESSAGE"]
    assert message["raw"].endswith("\r\n\r\n" + "x" * 17) and "4711" not in message["raw"]
    assert values['hep_ingest_rows_censored_total{method="MESSAGE"}'] == 1

    # Messages by method, type and code: exactly the stored rows.
    stored_counts = Counter(
        (r["cseq_method"], "request" if r["method"] else "response",
         "" if r["method"] else code_label(r["status"]))
        for r in sip_rows
    )
    exported = {
        (m, t, c): values[
            f'hep_ingest_sip_messages_total{{code="{c}",method="{m}",node="{NODE}",type="{t}"}}'
        ]
        for (m, t, c) in stored_counts
    }
    assert exported == dict(stored_counts)
    assert sum(v for k, v in values.items()
               if k.startswith("hep_ingest_sip_messages_total{")) == len(sip_rows)

    # Both delay histograms: the stored calls' delays, computed here from the rows.
    for name, method, answers in (
        ("hep_ingest_sip_session_request_delay_seconds", "INVITE",
         {*range(180, 190), *range(200, 300)}),
        ("hep_ingest_sip_registration_request_delay_seconds", "REGISTER", {*range(200, 300)}),
    ):
        want = delays(sip_rows, method, answers)
        assert want, name
        assert values[f'{name}_count{{node="{NODE}"}}'] == len(want), name
        assert values[f'{name}_sum{{node="{NODE}"}}'] == pytest.approx(sum(want), abs=1e-6)
        for bound in ("0.5", "1.0"):
            in_bucket = sum(1 for d in want if d <= float(bound))
            assert values[f'{name}_bucket{{le="{bound}",node="{NODE}"}}'] == in_bucket

    outcomes = {
        k.split('outcome="')[1].split('"')[0]: v for k, v in values.items()
        if k.startswith("hep_ingest_sip_call_setups_total{")
    }
    timed_out = values['hep_ingest_sip_kpi_expired_total{reason="timeout"}']
    if partitions == 1:
        assert timed_out == 1
    # Else the unanswered call is closed only if a later message shares its partition.
    expected = {"answered": 5, "busy": 1, "cancelled": 1, "client_failure": 2,
                "auth_challenge": 1}
    if timed_out:
        expected["no_final_response"] = timed_out
    assert outcomes == expected
    registrations = {
        k.split('outcome="')[1].split('"')[0]: v for k, v in values.items()
        if k.startswith("hep_ingest_sip_registrations_total{")
    }
    assert registrations == {"success": 1, "auth_challenge": 3, "failure": 1}
    assert values["hep_ingest_sip_kpi_pending"] == 1 - timed_out
