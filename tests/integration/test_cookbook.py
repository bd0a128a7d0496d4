"""Every query of docs/sql.md runs against stored calls and its result is checked."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pipeline.hep import encode_hep3
from pipeline.hep.packet import HepPacket
from pipeline.storage.headers import header_extraction
from tests.integration.analysis_support import flows_start, generated_packets, store_packets

pytestmark = pytest.mark.integration

COOKBOOK = Path(__file__).resolve().parents[2] / "docs" / "sql.md"
A_LEG = "3848276298220188511@192.0.2.10"

Rows = list[dict[str, Any]]


def cookbook_queries() -> dict[str, str]:
    """heading -> SQL of every ```sql block, keyed by the heading above it."""
    queries: dict[str, str] = {}
    heading = None
    for block in re.split(r"^(## .+)$", COOKBOOK.read_text(), flags=re.MULTILINE):
        if block.startswith("## "):
            heading = block[3:].strip()
            continue
        for sql in re.findall(r"```sql\n(.*?)```", block, flags=re.DOTALL):
            assert heading is not None, "a query before the first heading"
            assert heading not in queries, f"two queries under {heading!r}"
            queries[heading] = sql
    return queries


def _asr_acd(rows: Rows) -> None:
    assert len(rows) == 1
    row = rows[0]
    assert (row["attempted"], row["answered"]) == (10, 5)
    assert float(row["asr_percent"]) == 50.0
    assert float(row["acd_seconds"]) == 60.0  # (60.015 + 60.025 + 30 + 30 + 120) / 5


def _pdd(rows: Rows) -> None:
    # PDDs: 300, 300, 400, 485, 505, 700, 800 ms.
    assert [(float(r["pdd_p50_ms"]), float(r["pdd_p95_ms"]), r["calls_with_ringing"])
            for r in rows] == [(485.0, 770.0, 7)]


def _failing(rows: Rows) -> None:
    assert sorted((r["callee"], r["final_status"], r["calls"]) for r in rows) == [
        ("bob", 486, 1), ("bob", 487, 1), ("erin", 408, 1), ("nobody", 404, 1)]


def _by_user(rows: Rows) -> None:
    assert [r["call_id"] for r in rows] == [
        A_LEG, "b2b-9f3e1c@192.0.2.1", "busy-77a1@192.0.2.10", "cx-51f0@192.0.2.10",
        "to-408e@192.0.2.10", "nofinal-2d@192.0.2.10", "fork-3c1d@192.0.2.10",
        "auth-8b@192.0.2.11"]


def _no_final(rows: Rows) -> None:
    assert [(r["call_id"], r["callee"], r["messages"]) for r in rows] == [
        ("nofinal-2d@192.0.2.10", "frank", 4)]


def _hangups(rows: Rows) -> None:
    assert [(r["ended_by"], r["end_method"], r["calls"]) for r in rows] == [
        ("callee", "BYE", 2), ("caller", "BYE", 3), ("caller", "CANCEL", 1)]


def _register_by_agent(rows: Rows) -> None:
    assert [(r["user_agent"], r["failures"], r["challenges"], r["never_registered"])
            for r in rows] == [
        ("Grandstream GXP2170 1.0.11.3", 2, 2, 2), ("Yealink SIP-T46S 66.86.0.15", 0, 1, 0)]


def _failing_phones(rows: Rows) -> None:
    assert [(r["aor"], r["last_status"], r["failures"]) for r in rows] == [
        ("dave@example.com", 403, 1), ("frank@example.com", 401, 1)]


def _retransmissions(rows: Rows) -> None:
    assert [(r["call_id"], r["message"], r["retransmissions"]) for r in rows] == [
        ("nofinal-2d@192.0.2.10", "INVITE", 3)]


def _one_call(rows: Rows) -> None:
    assert [r["message"] for r in rows] == [
        "INVITE", "100 Trying", "180 Ringing", "486 Busy Here", "ACK"]
    assert [r["src"] for r in rows] == ["192.0.2.10:5060", *["192.0.2.1:5060"] * 3,
                                        "192.0.2.10:5060"]


def _per_source(rows: Rows) -> None:
    assert [(str(r["src_ip"]), r["calls"], r["answered"]) for r in rows] == [
        ("192.0.2.10", 6, 2), ("192.0.2.11", 3, 2), ("192.0.2.1", 1, 1)]


def _long_calls(rows: Rows) -> None:
    assert [(r["call_id"], r["duration"].total_seconds()) for r in rows] == [
        ("auth-8b@192.0.2.11", 120.0), ("b2b-9f3e1c@192.0.2.1", 60.025), (A_LEG, 60.015)]


def _correlated(rows: Rows) -> None:
    assert [(r["call_id"], r["kind"]) for r in rows] == [(A_LEG, "rtcp"), (A_LEG, "log")]
    assert '"ssrc": 1234' in rows[0]["raw"]
    assert "ended by caller" in rows[1]["raw"]


def _legs(rows: Rows) -> None:
    assert [(r["call_id"], r["a_leg"]) for r in rows] == [("b2b-9f3e1c@192.0.2.1", A_LEG)]


def _by_from_user_key(rows: Rows) -> None:
    assert rows
    assert {r["from_user"] for r in rows} == {"alice"}
    assert len({r["sid"] for r in rows}) >= 5


def _unknown_types(rows: Rows) -> None:
    assert [(r["hep_type"], r["records"]) for r in rows] == [(129, 2), (200, 1)]


def _partitions(rows: Rows) -> None:
    tables = {r["table_name"] for r in rows}
    assert {"hep_proto_1_call", "hep_proto_1_registration", "hep_proto_1_default",
            "hep_proto_5_default", "hep_proto_100_default"} <= tables
    assert any(r["bounds"] == "DEFAULT" for r in rows)
    assert sum(r["bytes"] for r in rows if r["table_name"] == "hep_proto_1_call") > 0


def _custom_headers(rows: Rows) -> None:
    assert [(r["a_leg"], r["count"]) for r in rows] == [("cid-77", 2), ("cid-78", 1)]


def _offsets(rows: Rows) -> None:
    assert [(r["consumer_group"], r["topic"], r["partition"]) for r in rows] == [
        ("hep-ingest", "hep", 0)
    ]
    assert rows[0]["next_offset"] > 0 and rows[0]["since_last_batch"].total_seconds() >= 0


CHECKS: dict[str, Callable[[Rows], None]] = {
    "ASR and ACD per hour": _asr_acd,
    "Post-dial delay p50 and p95": _pdd,
    "Top failing destinations by status": _failing,
    "Calls by a user": _by_user,
    "Calls that never got a final response": _no_final,
    "Who hangs up": _hangups,
    "REGISTER failures by user agent": _register_by_agent,
    "Phones that fail to register": _failing_phones,
    "Retransmission counts": _retransmissions,
    "One call's messages in order": _one_call,
    "Calls per source IP": _per_source,
    "Long calls": _long_calls,
    "RTCP and log records joined to their call": _correlated,
    "B2BUA legs of a call": _legs,
    "Partition sizes and retention": _partitions,
    "Indexes and long values": _by_from_user_key,
    "Tables per HEP type": _unknown_types,
    "Consumer offsets stored with the rows": _offsets,
    "Custom SIP headers": _custom_headers,
}


def x_cid_packets(start: datetime) -> list[bytes]:
    """INVITEs of B legs carrying the A leg's id in X-CID (stored with --custom-header),
    three days before the flows: outside the one-day window of the call queries."""
    packets = []
    for i, cid in enumerate(("cid-77", "cid-77", "cid-78")):
        payload = (
            f"INVITE sip:bob@192.0.2.20 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx{i}\r\n"
            f"From: <sip:alice@192.0.2.1>;tag=x{i}\r\n"
            f"To: <sip:bob@192.0.2.20>\r\n"
            f"Call-ID: xcid-{i}@192.0.2.1\r\n"
            f"CSeq: 1 INVITE\r\n"
            f"X-CID: {cid}\r\n"
            f"Content-Length: 0\r\n\r\n"
        ).encode()
        packets.append(encode_hep3(HepPacket(
            version=3, ip_family=2, ip_proto=17, src_ip="192.0.2.1", dst_ip="192.0.2.20",
            src_port=5060, dst_port=5060, ts_sec=int(start.timestamp()) - 3 * 86_400 + i,
            proto_type=1, payload=payload,
        )))
    return packets


def unknown_type_packets(start: datetime) -> list[bytes]:
    """Records of HEP types without a table of their own (a hostile or odd sender)."""
    return [
        encode_hep3(HepPacket(version=3, ip_family=2, ip_proto=17, src_ip="192.0.2.66",
                              dst_ip="192.0.2.1", src_port=9, dst_port=9060,
                              ts_sec=int(start.timestamp()) + i, proto_type=proto_type,
                              payload=b"opaque"))
        for i, proto_type in enumerate((129, 200, 129))
    ]


def test_cookbook_has_a_check_for_every_query() -> None:
    queries = cookbook_queries()
    assert len(queries) >= 12
    assert set(queries) == set(CHECKS), "every cookbook query needs exactly one check"


async def test_cookbook_queries(database_dsn: str) -> None:
    start = flows_start()
    await store_packets(database_dsn, generated_packets(start) + unknown_type_packets(start))
    await store_packets(database_dsn, x_cid_packets(start),
                        headers=header_extraction(custom=("X-CID",)))
    conn = await asyncpg.connect(database_dsn)
    try:
        for heading, sql in cookbook_queries().items():
            rows = [dict(r) for r in await conn.fetch(sql)]
            try:
                CHECKS[heading](rows)
            except AssertionError as exc:
                raise AssertionError(f"{heading}: {exc}\nrows: {rows}") from exc
    finally:
        await conn.close()
