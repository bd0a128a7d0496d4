"""sip_calls, sip_registrations and the `calls`/`call`/`stats` commands on calls
stored through the real pipeline (HEP bytes -> record -> row -> PostgresSink)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import typer
from typer.testing import CliRunner

from pipeline.commands import analysis
from tests.conftest import load_vectors
from tests.flows import Capture, Dialog, Endpoint, Party
from tests.integration.analysis_support import (
    encode_captures,
    flows_start,
    generated_packets,
    store_packets,
)

pytestmark = pytest.mark.integration

A_LEG = "3848276298220188511@192.0.2.10"
KAMAILIO_CALL = "acc-inv-1-28074@127.0.0.1"

# call_id -> (caller, callee, state, final_status, pdd ms, setup ms, duration s,
#             ended_by, end_method, ended_by address, src, dst, initial_cseq)
EXPECTED_CALLS: dict[str, tuple[Any, ...]] = {
    A_LEG: ("alice", "bob", "answered", 200, 505, 3505, 60.015, "caller", "BYE",
            "192.0.2.10:5060", "192.0.2.10:5060", "192.0.2.1:5060", 1),
    "b2b-9f3e1c@192.0.2.1": ("alice", "bob", "answered", 200, 485, 3485, 60.025, "caller",
                             "BYE", "192.0.2.1:5080", "192.0.2.1:5080",
                             "198.51.100.20:5060", 101),
    "busy-77a1@192.0.2.10": ("alice", "bob", "busy", 486, 400, None, None, None, None, None,
                             "192.0.2.10:5060", "192.0.2.1:5060", 1),
    "nf-0c55@192.0.2.11": ("dave", "nobody", "failed", 404, None, None, None, None, None,
                           None, "192.0.2.11:5060", "192.0.2.1:5060", 1),
    "cx-51f0@192.0.2.10": ("alice", "bob", "cancelled", 487, 300, None, None, "caller",
                           "CANCEL", "192.0.2.10:5060", "192.0.2.10:5060",
                           "192.0.2.1:5060", 1),
    "to-408e@192.0.2.10": ("alice", "erin", "failed", 408, None, None, None, None, None,
                           None, "192.0.2.10:5060", "192.0.2.1:5060", 1),
    "nofinal-2d@192.0.2.10": ("alice", "frank", "no_final_response", None, None, None, None,
                              None, None, None, "192.0.2.10:5060", "192.0.2.1:5060", 1),
    "reinv-6a@192.0.2.11": ("dave", "bob", "answered", 200, 800, 2000, 30.0, "callee", "BYE",
                            "192.0.2.1:5060", "192.0.2.11:5060", "192.0.2.1:5060", 1),
    "fork-3c1d@192.0.2.10": ("alice", "sales", "answered", 200, 300, 4000, 30.0, "callee",
                             "BYE", "198.51.100.21:5060", "192.0.2.10:5060",
                             "192.0.2.1:5060", 1),
    "auth-8b@192.0.2.11": ("dave", "alice", "answered", 200, 700, 5040, 120.0, "caller", "BYE",
                           "192.0.2.11:5060", "192.0.2.11:5060", "192.0.2.1:5060", 2),
}

CALL_FACTS_SQL = """
SELECT call_id, caller, callee, state, final_status,
       round(extract(epoch FROM pdd) * 1000, 3) AS pdd_ms,
       round(extract(epoch FROM setup_time) * 1000, 3) AS setup_ms,
       extract(epoch FROM duration)::float8 AS duration_s,
       ended_by, end_method,
       host(ended_by_ip) || ':' || ended_by_port AS ended_by_addr,
       host(src_ip) || ':' || src_port AS src, host(dst_ip) || ':' || dst_port AS dst,
       initial_cseq, invite_time, answer_time, end_time, messages, to_tag,
       caller_user_agent, callee_user_agent, final_reason
  FROM sip_calls
"""


def _facts(row: asyncpg.Record) -> tuple[Any, ...]:
    def num(value: Any) -> Any:
        return None if value is None else float(value)

    return (row["caller"], row["callee"], row["state"], row["final_status"],
            num(row["pdd_ms"]), num(row["setup_ms"]), row["duration_s"], row["ended_by"],
            row["end_method"], row["ended_by_addr"], row["src"], row["dst"],
            row["initial_cseq"])


@pytest.fixture
async def stored(database_dsn: str) -> AsyncIterator[tuple[str, datetime]]:
    """A database holding the Kamailio HEP3 vectors and every generated flow."""
    start = flows_start()
    packets, _ = load_vectors("kamailio_hep3_udp")
    await store_packets(database_dsn, packets)
    await store_packets(database_dsn, generated_packets(start))
    yield database_dsn, start


async def test_sip_calls_generated_flows(stored: tuple[str, datetime]) -> None:
    dsn, start = stored
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(CALL_FACTS_SQL + " WHERE caller <> 'sipp'")
        by_id = {r["call_id"]: r for r in rows}
        assert set(by_id) == set(EXPECTED_CALLS)
        for call_id, expected in EXPECTED_CALLS.items():
            assert _facts(by_id[call_id]) == expected, call_id
        # Times are first occurrences, relative to the flow's own start.
        fork = by_id["fork-3c1d@192.0.2.10"]
        assert fork["invite_time"] == start + timedelta(seconds=70)
        assert fork["to_tag"] == "c2701"  # carol's branch answered
        assert fork["callee_user_agent"] == "Cisco CP-8841 12.8.1"
        reinv = by_id["reinv-6a@192.0.2.11"]
        assert reinv["answer_time"] == start + timedelta(seconds=62)  # not the re-INVITE's
        assert reinv["final_reason"] == "OK"
        assert by_id["nofinal-2d@192.0.2.10"]["messages"] == 4
        # The same answers from the time-bounded function.
        bounded = await conn.fetch(
            "SELECT call_id, state FROM sip_calls_between($1, $2) ORDER BY invite_time",
            start, start + timedelta(minutes=5))
        assert [r["call_id"] for r in bounded][:3] == [
            A_LEG, "b2b-9f3e1c@192.0.2.1", "busy-77a1@192.0.2.10"]
        assert {r["call_id"]: r["state"] for r in bounded} == {
            k: v[2] for k, v in EXPECTED_CALLS.items()}
        # A range starting after a call's INVITE does not list it.
        later = await conn.fetch("SELECT call_id FROM sip_calls_between($1, $2)",
                                 start + timedelta(seconds=75), start + timedelta(minutes=5))
        assert {r["call_id"] for r in later} == {"auth-8b@192.0.2.11"}
    finally:
        await conn.close()


async def test_sip_calls_kamailio_vectors(stored: tuple[str, datetime]) -> None:
    dsn, _ = stored
    _, expected = load_vectors("kamailio_hep3_udp")
    # From expected.json alone: per call, the first INVITE, 18x, 200 INVITE and BYE.
    firsts: dict[str, dict[str, int]] = {}
    for p in expected["packets"]:
        sip = p.get("sip") or {}
        if not sip.get("cseq") or not sip["cseq"].endswith(("INVITE", "BYE")):
            continue
        kind = sip["method"] or f"{sip['status']} {sip['cseq'].split()[1]}"
        when = p["ts_sec"] * 1_000_000 + p["ts_usec"]
        firsts.setdefault(sip["call_id"], {}).setdefault(kind, when)
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(CALL_FACTS_SQL + " WHERE caller = 'sipp'")
    finally:
        await conn.close()
    assert len(rows) == 10
    for row in rows:
        f = firsts[row["call_id"]]
        assert _facts(row)[:4] == ("sipp", "service", "answered", 200)
        assert (row["src"], row["dst"]) == ("127.0.0.1:5071", "127.0.0.1:5060")
        assert (row["ended_by"], row["ended_by_addr"]) == ("caller", "127.0.0.1:5071")
        assert row["messages"] == 13
        assert float(row["pdd_ms"]) == (f["180 INVITE"] - f["INVITE"]) / 1000
        assert float(row["setup_ms"]) == (f["200 INVITE"] - f["INVITE"]) / 1000
        assert row["duration_s"] == pytest.approx((f["BYE"] - f["200 INVITE"]) / 1e6)


async def test_sip_registrations(stored: tuple[str, datetime]) -> None:
    dsn, start = stored
    conn = await asyncpg.connect(dsn)
    try:
        rows = {r["aor"]: r for r in await conn.fetch("SELECT * FROM sip_registrations")}
    finally:
        await conn.close()
    reg = start + timedelta(seconds=90)
    alice = rows["alice@example.com"]
    assert (alice["attempts"], alice["successes"], alice["challenges"], alice["failures"]) == (
        2, 1, 1, 0)
    assert (alice["last_status"], alice["expires"]) == (200, 3600)
    assert alice["last_attempt"] == reg + timedelta(milliseconds=30)
    assert alice["last_success"] == reg + timedelta(milliseconds=40)
    assert alice["registered_until"] == reg + timedelta(seconds=3600, milliseconds=40)
    assert (alice["user_agent"], alice["contact"], str(alice["src_ip"])) == (
        "Yealink SIP-T46S 66.86.0.15", "alice@192.0.2.10", "192.0.2.10")
    dave = rows["dave@example.com"]
    assert (dave["last_status"], dave["last_reason"], dave["failures"], dave["last_success"]) == (
        403, "Forbidden", 1, None)
    frank = rows["frank@example.com"]
    assert (frank["attempts"], frank["challenges"], frank["failures"]) == (1, 1, 1)
    sipp = [r for aor, r in rows.items() if aor.endswith("@127.0.0.1")]
    assert len(sipp) == 10
    assert all(r["last_status"] == 200 and r["failures"] == 0 and r["user_agent"] ==
               "sipp-acceptance" for r in sipp)


def _cli() -> typer.Typer:
    app = typer.Typer()
    analysis.register(app)
    return app


def test_call_command_draws_the_kamailio_ladder(stored_sync: tuple[str, datetime]) -> None:
    dsn, _ = stored_sync
    result = CliRunner().invoke(_cli(), ["call", KAMAILIO_CALL, "--dsn", dsn])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"Call-ID {KAMAILIO_CALL}: 13 messages"
    header = lines[1]
    uac, proxy, uas = (header.index(e) for e in
                       ("127.0.0.1:5071", "127.0.0.1:5060", "127.0.0.1:5070"))
    assert uac < proxy < uas
    lanes = [i for i, ch in enumerate(lines[2]) if ch == "|"]
    body = lines[3:]
    assert len(body) == 13
    # (label, from lane, to lane) per the capture order documented with the vectors.
    flow = [("INVITE", 0, 1), ("100 trying", 1, 0), ("INVITE", 1, 2), ("180 Ringing", 2, 1),
            ("180 Ringing", 1, 0), ("200 OK", 2, 1), ("200 OK", 1, 0), ("ACK", 0, 1),
            ("ACK", 1, 2), ("BYE", 0, 1), ("BYE", 1, 2), ("200 OK (BYE)", 2, 1),
            ("200 OK (BYE)", 1, 0)]
    times = []
    for line, (label, src, dst) in zip(body, flow, strict=True):
        assert label in line, line
        low, high = sorted((lanes[src], lanes[dst]))
        arrow_head = line[high - 1] if src < dst else line[low + 1]
        assert arrow_head == (">" if src < dst else "<"), line
        times.append(float(line.split("ms")[0].strip().lstrip("+")))
    assert times == sorted(times) and times[0] == 0.0

    as_json = CliRunner().invoke(_cli(), ["call", KAMAILIO_CALL, "--dsn", dsn,
                                          "--format", "json"])
    messages = json.loads(as_json.output)
    assert [m["method"] or m["status"] for m in messages] == [
        "INVITE", 100, "INVITE", 180, 180, 200, 200, "ACK", "ACK", "BYE", "BYE", 200, 200]


def test_call_command_follows_correlated_legs(stored_sync: tuple[str, datetime]) -> None:
    dsn, _ = stored_sync
    result = CliRunner().invoke(_cli(), ["call", A_LEG, "--dsn", dsn, "--format", "json"])
    assert result.exit_code == 0, result.output
    legs = [m["leg"] for m in json.loads(result.output)]
    assert legs.count(A_LEG) == 7 and legs.count("b2b-9f3e1c@192.0.2.1") == 7
    missing = CliRunner().invoke(_cli(), ["call", "no-such-call", "--dsn", dsn])
    assert missing.exit_code == 1


def test_calls_and_stats_commands(stored_sync: tuple[str, datetime]) -> None:
    dsn, start = stored_sync
    since, until = start.isoformat(), (start + timedelta(minutes=5)).isoformat()
    runner = CliRunner()
    out = runner.invoke(_cli(), ["calls", "--dsn", dsn, "--since", since, "--until", until,
                                 "--format", "json"])
    assert out.exit_code == 0, out.output
    calls = json.loads(out.output)
    assert {c["call_id"]: c["state"] for c in calls} == {
        k: v[2] for k, v in EXPECTED_CALLS.items()}
    assert calls[0]["call_id"] == "auth-8b@192.0.2.11"  # newest first
    assert next(c for c in calls if c["call_id"] == A_LEG)["duration"] == 60.015

    out = runner.invoke(_cli(), ["calls", "--dsn", dsn, "--since", since, "--until", until,
                                 "--user", "dave", "--state", "answered", "--format", "csv"])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.output)))
    assert [r["call_id"] for r in rows] == ["auth-8b@192.0.2.11", "reinv-6a@192.0.2.11"]
    assert rows[0]["setup_time"] == "5.04"

    out = runner.invoke(_cli(), ["calls", "--dsn", dsn, "--since", since, "--until", until,
                                 "--status", "486", "--limit", "5"])
    assert out.exit_code == 0, out.output
    table = out.output.splitlines()
    assert table[0].split()[:3] == ["invite_time", "call_id", "caller"]
    assert len(table) == 3 and "busy-77a1@192.0.2.10" in table[2]

    out = runner.invoke(_cli(), ["stats", "--dsn", dsn, "--since", since, "--until", until,
                                 "--format", "json"])
    assert out.exit_code == 0, out.output
    [bucket] = json.loads(out.output)
    assert bucket["interval_start"] == start.replace(minute=0).isoformat()
    assert (bucket["attempted"], bucket["answered"], bucket["asr_percent"]) == (10, 5, 50.0)
    assert bucket["acd_seconds"] == 60.008
    assert (bucket["pdd_p50_ms"], bucket["pdd_p95_ms"]) == (485.0, 770.0)
    assert bucket["top_failures"] == "404 x1, 408 x1, 486 x1"

    out = runner.invoke(_cli(), ["stats", "--dsn", dsn, "--since", since, "--until", until,
                                 "--interval", "1m", "--format", "csv"])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.output)))
    assert sum(int(r["attempted"]) for r in rows) == 10
    assert rows[0]["interval_start"] == start.isoformat()


@pytest.fixture
def stored_sync(postgres: Any) -> tuple[str, datetime]:
    """`stored` for synchronous tests (the CLI runs its own event loop)."""
    import uuid

    from tests.conftest import create_database

    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = postgres.dsn.rsplit("/", 1)[0] + "/" + name
    start = flows_start()

    async def fill() -> None:
        await create_database(postgres.dsn, name)
        packets, _ = load_vectors("kamailio_hep3_udp")
        await store_packets(dsn, packets)
        await store_packets(dsn, generated_packets(start))

    asyncio.run(fill())
    return dsn, start


async def test_call_id_lookup_in_a_time_range_uses_an_index(database_dsn: str) -> None:
    """With a realistic share of the table per call, the planner picks the indexes."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    caller = Party("alice", Endpoint("192.0.2.10"), "t1", "bench")
    captures: list[Capture] = []
    for n in range(3000):
        d = Dialog(f"bulk-{n}@192.0.2.10", caller, "bob", int(start.timestamp() * 1e6) + n * 1000)
        inv = d.request(0, "INVITE", caller.endpoint, Endpoint("192.0.2.1"), cseq=1)
        d.response(5, inv, 100, "Trying", Endpoint("192.0.2.1"), caller.endpoint)
        captures += d.captures
    await store_packets(database_dsn, encode_captures(captures))
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute("ANALYZE")
        since, until = start - timedelta(minutes=1), start + timedelta(hours=1)
        plans = {
            "raw": await conn.fetch(
                "EXPLAIN SELECT * FROM hep_proto_1_call "
                "WHERE sid = $1 AND create_date >= $2 AND create_date < $3",
                "bulk-1234@192.0.2.10", since, until),
            "sip_calls_between": await conn.fetch(
                "EXPLAIN SELECT * FROM sip_calls_between($2, $3) WHERE call_id = $1",
                "bulk-1234@192.0.2.10", since, until),
            "sip_calls": await conn.fetch(
                "EXPLAIN SELECT * FROM sip_calls WHERE call_id = $1", "bulk-1234@192.0.2.10"),
        }
        result = await conn.fetch(
            "SELECT call_id, state FROM sip_calls_between($2, $3) WHERE call_id = $1",
            "bulk-1234@192.0.2.10", since, until)
    finally:
        await conn.close()
    assert [tuple(r) for r in result] == [("bulk-1234@192.0.2.10", "no_final_response")]
    for name, plan in plans.items():
        text = "\n".join(r[0] for r in plan)
        assert any(kind in text for kind in ("Index Scan", "Index Only Scan",
                                             "Bitmap Index Scan")), f"{name}:\n{text}"
        # Only empty partitions (the planner's cost 0.00) may be read sequentially.
        seq = [line for line in text.splitlines() if "Seq Scan" in line]
        assert all("cost=0.00..0.00 " in line for line in seq), f"{name}:\n{text}"
