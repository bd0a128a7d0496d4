"""homer-app reads our database unchanged (issue 11, items 1 and 3; issue 12, item 3).

The statements are the ones homer-app 1.5.20 (sipcapture/homer-app, tag 1.5.20) sends to
the data database, in their literal shape: data/service/search.go builds a WHERE string
and hands it to jinzhu/gorm v1.9.16 (`Table(t).Where(sql, args...)[.Limit(n)].Find(&rows)`),
which sends `SELECT * FROM "<table>"  WHERE (<sql>)[ LIMIT n]` with `?` turned into `$n`
(a slice argument into `$n,$n+1,...`: scope.go buildCondition) through lib/pq v1.10.9,
whose parameters carry no type (PostgreSQL infers them) and travel as text.

The rows come from the real pipeline: the captured vectors (Kamailio HEPv3/v2/TCP,
hep-js with a LOG that has a correlation id), a HEPv1 packet (no capture id, no time),
and a B2BUA's two legs linked by an X-CID header, with the RTCP, RTCP-XR and LOG records
of its A leg, sent to `hep-ingest receive`, stored by `hep-ingest consume --a-leg-header
X-CID --custom-header X-CID`.

Each statement must run (one bad value in range fails it for everybody), return the rows
heplify-server's tables would hold, and give the JSON types homer-app type-asserts after
merging protocol_header, data_header and the row (`.(string)`, `.(float64)`): a key in
both headers would become an array there.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pipeline.embedded import (
    EmbeddedKafka,
    EmbeddedPostgres,
    free_tcp_port,
    free_udp_port,
    wait_for_tcp,
)
from pipeline.hep.encode import encode_hep3
from pipeline.hep.packet import HepPacket
from pipeline.storage.rows import table_for
from tests.conftest import VECTOR_SETS, create_database, load_vectors
from tests.integration.consume_support import start_consumer, stop_process, tail, wait_for_rows
from tests.integration.test_consume_e2e import send_vectors, start_receiver

pytestmark = pytest.mark.integration

A_LEG = "homer-a-leg@compat.test"
B_LEG = "homer-b-leg@compat.test"
B2B_LEG = A_LEG + "_b2b-1"  # homer-app's default input_function_js appends this
HEPJS_CALL = "hepjs-invite-0001@127.0.0.1"
HEPV1_CALL_SOURCE = ("kamailio_hep2_udp", 0)  # the SIP message the HEPv1 packet carries
RANGE = (-300, 200)  # lookup_range of homer-app's default correlation mappings


# -- the statements as gorm v1 + lib/pq send them -----------------------------------------


def gorm_find(table: str, where: str, args: Sequence[Any], limit: int | None = None
              ) -> tuple[str, list[Any]]:
    """jinzhu/gorm v1.9.16's SQL for Table(table).Where(where, args...).Limit(limit).Find:
    `SELECT * FROM "t"  WHERE (...)` (the two spaces are its empty join clause)."""
    pieces = where.split("?")
    assert len(pieces) == len(args) + 1, (where, args)
    sql, params = pieces[0], []
    for arg, rest in zip(args, pieces[1:], strict=True):
        values = list(arg) if isinstance(arg, list) else [arg]
        marks = []
        for value in values:
            params.append(value)
            marks.append(f"${len(params)}")
        sql += ",".join(marks) + rest
    text = f'SELECT * FROM "{table}"  WHERE ({sql})'
    if limit is not None:
        text += f" LIMIT {limit}"
    return text, params


def pq_time(when: datetime) -> str:
    """A Go time.Time as lib/pq writes it (SearchData passes time.Time values)."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def rfc3339(when: datetime) -> str:
    """time.Format(time.RFC3339), as GetTransactionData/Log/Qos pass their times."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def pq_connect(dsn: str) -> asyncpg.Connection:
    """A connection whose parameters go as text whatever type the server inferred for
    them, as lib/pq sends them; json comes back as text (gorm's json.RawMessage)."""
    conn = await asyncpg.connect(dsn)
    for type_name in ("timestamptz", "int4", "int8", "numeric"):
        await conn.set_type_codec(type_name, schema="pg_catalog", encoder=str, decoder=str,
                                  format="text")
    return conn


@dataclass
class HepTable:
    """homer-app's model.HepTable: what gorm reads of `SELECT *` (other columns are
    ignored), as json.Marshal gives it to gabs (numbers become float64 there)."""

    id: int
    sid: str
    create_date: str
    protocol_header: dict[str, Any]
    data_header: dict[str, Any]
    raw: str


async def homer_select(dsn: str, table: str, where: str, args: Sequence[Any],
                       limit: int | None = None) -> list[HepTable]:
    sql, params = gorm_find(table, where, args, limit)
    conn = await pq_connect(dsn)
    try:
        records = await conn.fetch(sql, *params)
    finally:
        await conn.close()
    return [
        HepTable(int(r["id"]), r["sid"], r["create_date"], json.loads(r["protocol_header"]),
                 json.loads(r["data_header"]), r["raw"])
        for r in records
    ]


def gabs_merge(*parts: dict[str, Any]) -> dict[str, Any]:
    """gabs v2 Container.Merge as homer-app chains it: a key met twice becomes an array."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key in merged:
                old = merged[key]
                merged[key] = [*old, value] if isinstance(old, list) else [old, value]
            else:
                merged[key] = value
    return merged


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def assert_homer_types(rows: list[HepTable]) -> None:
    """What homer-app's search grid, message view and call flow type-assert."""
    for row in rows:
        overlap = set(row.protocol_header) & set(row.data_header)
        assert not overlap, f"homer-app would turn {overlap} into arrays"
        element = gabs_merge(row.protocol_header, row.data_header)
        assert isinstance(element["srcIp"], str) and isinstance(element["dstIp"], str)
        for key in ("srcPort", "dstPort", "timeSeconds", "timeUseconds", "payloadType"):
            assert is_number(element[key]), (key, element[key])
        assert isinstance(element["captureId"], str) and element["captureId"].isdecimal()
        assert isinstance(element["correlation_id"], str)
        if "method" in element:
            assert isinstance(element["method"], str)
        # microTsFromHepTable and the call flow's create_date come from these.
        stamp = element["timeSeconds"] * 1_000_000 + element["timeUseconds"]
        created = datetime.fromisoformat(row.create_date)
        assert stamp == round(created.timestamp() * 1_000_000)


# -- the stored rows ------------------------------------------------------------------------


def b2bua_packets(now: float) -> list[bytes]:
    """Two legs of one call through a B2BUA that names the A leg in X-CID, the A leg's
    b2b-1 twin, and the A leg's RTCP, RTCP-XR and LOG records."""

    def invite(call_id: str, extra: str, offset: float) -> bytes:
        payload = (
            f"INVITE sip:bob@b.example SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 10.1.0.1:5060;branch=z9hG4bK{abs(hash(call_id))}\r\n"
            f"From: <sip:alice@a.example>;tag=f1\r\nTo: <sip:bob@b.example>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
        ).encode()
        return packet(1, payload, None, offset)

    def packet(proto: int, payload: bytes, correlation: str | None, offset: float) -> bytes:
        when = now + offset
        return encode_hep3(HepPacket(
            version=3, ip_family=2, ip_proto=17, src_ip="10.1.0.1", dst_ip="10.1.0.2",
            src_port=5060, dst_port=5080, ts_sec=int(when), ts_usec=int(when % 1 * 1e6),
            proto_type=proto, capture_id=2001, payload=payload, correlation_id=correlation,
        ))

    return [
        invite(A_LEG, "", 0.0),
        invite(B_LEG, f"x-cid: {A_LEG}\r\n", 0.01),
        invite(B2B_LEG, "", 0.02),
        packet(5, b'{"type":200,"ssrc":1,"report_count":0}', A_LEG, 0.5),
        packet(35, b'{"mos":4.1}', A_LEG, 0.6),
        packet(100, b"a leg answered", A_LEG, 0.7),
    ]


def hepv1_packet() -> tuple[bytes, str]:
    """A HEPv1 packet (no time, no capture id): the SIP message of a HEPv2 vector."""
    name, index = HEPV1_CALL_SOURCE
    packets, expected = load_vectors(name)
    v2, facts = packets[index], expected["packets"][index]
    v1 = bytes([1]) + v2[1:16] + v2[facts["payload_offset"]:]
    return v1, facts["sip"]["call_id"]


@dataclass
class Stored:
    dsn: str
    now: datetime
    hepv1_call_id: str
    metrics_file: Path


@pytest.fixture(scope="module")
def stored(kafka: EmbeddedKafka, postgres: EmbeddedPostgres,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    tmp = tmp_path_factory.mktemp("homer")
    name = f"t_{uuid.uuid4().hex[:12]}"
    asyncio.run(create_database(postgres.dsn, name))
    dsn = postgres.dsn.rsplit("/", 1)[0] + "/" + name
    topic = f"hep-homer-{uuid.uuid4().hex[:8]}"
    udp_port, tcp_port = free_udp_port(), free_tcp_port()
    receiver = start_receiver(kafka.bootstrap_servers, topic, udp_port, tcp_port,
                              tmp / "receiver.log")
    consumer = None
    try:
        wait_for_tcp("127.0.0.1", tcp_port, 30)
        consumer = start_consumer(
            kafka.bootstrap_servers, topic, dsn, tmp / "consumer.log", "--flush-interval",
            "0.2", "--a-leg-header", "X-CID", "--custom-header", "X-CID",
            "--metrics-file", str(tmp / "consumer.prom"),
        )
        sent = send_vectors(udp_port, tcp_port)
        now = time.time()
        v1, v1_call_id = hepv1_packet()
        extra = [v1, *b2bua_packets(now)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for data in extra:
                udp.sendto(data, ("127.0.0.1", udp_port))
        sent += len(extra)
        total, distinct = asyncio.run(wait_for_rows(dsn, sent, 60, consumer))
        assert (total, distinct) == (sent, sent), tail(tmp / "consumer.log")
        yield Stored(dsn, datetime.fromtimestamp(int(now), UTC), v1_call_id,
                     tmp / "consumer.prom")
    finally:
        if consumer is not None:
            assert stop_process(consumer) == 0, tail(tmp / "consumer.log")
        stop_process(receiver)


def vector_window(name: str) -> tuple[datetime, datetime]:
    """The UI's time range around a vector set (whole seconds, as homer-app keeps them)."""
    _, expected = load_vectors(name)
    stamps = [p["ts_sec"] for p in expected["packets"]]
    return (datetime.fromtimestamp(min(stamps) - 60, UTC),
            datetime.fromtimestamp(max(stamps) + 60, UTC))


def vector_rows(table: str, window: tuple[datetime, datetime]) -> list[dict[str, Any]]:
    """What heplify-server stores in `table` for the vector packets captured within
    `window` (its data_header.method is the request method, else the status code)."""
    rows = []
    for name in VECTOR_SETS:
        _, expected = load_vectors(name)
        for p in expected["packets"]:
            sip = p.get("sip") or {}
            cseq_method = sip["cseq"].split()[-1] if sip.get("cseq") else None
            if table_for(p["proto_type"], cseq_method if sip else None) != table:
                continue
            if not window[0].timestamp() <= p["ts_sec"] <= window[1].timestamp():
                continue
            rows.append({
                "callid": sip.get("call_id"),
                "method": sip.get("method") or str(sip.get("status")),
                "srcIp": p["src_ip"], "srcPort": p["src_port"], "dstIp": p["dst_ip"],
                "dstPort": p["dst_port"], "timeSeconds": p["ts_sec"],
                "timeUseconds": p["ts_usec"], "captureId": str(p["capture_id"]),
            })
    return rows


def summary(rows: list[HepTable]) -> Counter[tuple[Any, ...]]:
    keys = ("callid", "method", "srcIp", "srcPort", "dstIp", "dstPort", "timeSeconds",
            "timeUseconds", "captureId")
    return Counter(
        tuple(gabs_merge(r.protocol_header, r.data_header)[k] for k in keys) for r in rows
    )


def want(rows: list[dict[str, Any]]) -> Counter[tuple[Any, ...]]:
    keys = ("callid", "method", "srcIp", "srcPort", "dstIp", "dstPort", "timeSeconds",
            "timeUseconds", "captureId")
    return Counter(tuple(r[k] for k in keys) for r in rows)


# -- search grid (SearchService.SearchData) -------------------------------------------------
# buildQuery's WHERE for one value of a mapped field: "data_header->>'callid'= ?";
# for "a;b": "... IN (?,?)"; for an integer field "(protocol_header->>'captureId')::int = ?";
# wrapped as "create_date between ? AND ? AND ( ... )", LIMIT 200.


def search(stored: Stored, table: str, condition: str, args: Sequence[Any],
           window: tuple[datetime, datetime]) -> list[HepTable]:
    rows = asyncio.run(homer_select(
        stored.dsn, table, f"create_date between ? AND ? AND ( {condition} )",
        [pq_time(window[0]), pq_time(window[1]), *args], limit=200,
    ))
    assert_homer_types(rows)
    return rows


def test_search_by_call_id_returns_the_call(stored: Stored) -> None:
    window = vector_window("kamailio_hep3_udp")
    expected = vector_rows("hep_proto_1_call", window)
    call_id = expected[0]["callid"]
    rows = search(stored, "hep_proto_1_call", "data_header->>'callid'= ?", [call_id], window)
    assert summary(rows) == want([r for r in expected if r["callid"] == call_id])


def test_search_by_methods_and_source_returns_the_vector_rows(stored: Stored) -> None:
    window = vector_window("kamailio_hep3_udp")
    expected = vector_rows("hep_proto_1_call", window)
    rows = search(
        stored, "hep_proto_1_call",
        "data_header->>'method' IN (?,?) AND protocol_header->>'srcIp'= ? AND "
        "(protocol_header->>'srcPort')::int = ?",
        ["INVITE", "BYE", "127.0.0.1", 5071], window,
    )
    assert rows
    assert summary(rows) == want([
        r for r in expected
        if r["method"] in ("INVITE", "BYE") and r["srcIp"] == "127.0.0.1"
        and r["srcPort"] == 5071
    ])


def test_search_by_capture_id_with_a_hepv1_row_in_range(stored: Stored) -> None:
    """A HEPv1 packet has no capture id: its captureId is "0", so the cast that homer-app
    applies to every row of the range works, and 0 finds it."""
    window = (stored.now - timedelta(minutes=10), stored.now + timedelta(minutes=10))
    condition = "(protocol_header->>'captureId')::int = ?"
    hepv1 = search(stored, "hep_proto_1_call", condition, [0], window)
    assert [r.sid for r in hepv1] == [stored.hepv1_call_id]
    assert hepv1[0].protocol_header["captureId"] == "0"
    others = search(stored, "hep_proto_1_call", condition, [2001], window)
    assert sorted(r.sid for r in others) == sorted([A_LEG, B_LEG, B2B_LEG])
    window = vector_window("kamailio_hep3_udp")
    kamailio = search(stored, "hep_proto_1_call", condition, [2001], window)
    assert summary(kamailio) == want(
        [r for r in vector_rows("hep_proto_1_call", window) if r["captureId"] == "2001"])


def test_search_by_a_custom_header(stored: Stored) -> None:
    """Issue 12's custom header: in data_header (searchable by homer-app) and in the
    typed column."""
    window = (stored.now - timedelta(minutes=10), stored.now + timedelta(minutes=10))
    rows = search(stored, "hep_proto_1_call", "data_header->>'X-CID'= ?", [A_LEG], window)
    assert [r.sid for r in rows] == [B_LEG]

    async def typed() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(stored.dsn)
        try:
            return await conn.fetch(
                "SELECT sid, custom_headers FROM hep_proto_1_call "
                "WHERE custom_headers IS NOT NULL")
        finally:
            await conn.close()

    found = asyncio.run(typed())
    assert [(r["sid"], json.loads(r["custom_headers"])) for r in found] == [
        (B_LEG, {"X-CID": A_LEG})
    ]


# -- message view (GetMessageByID) ------------------------------------------------------------


def test_message_view_by_id(stored: Stored) -> None:
    window = vector_window("hepjs_hep3_udp")
    first = search(stored, "hep_proto_1_call", "data_header->>'callid'= ?", [HEPJS_CALL],
                   window)
    row = first[0]
    rows = asyncio.run(homer_select(
        stored.dsn, "hep_proto_1_call", f"create_date between ? and ? AND id = {row.id}",
        [pq_time(window[0]), pq_time(window[1])], limit=200,
    ))
    assert [r.id for r in rows] == [row.id]
    assert_homer_types(rows)
    assert rows[0].raw.startswith(("INVITE", "ACK", "BYE", "SIP/2.0"))


# -- call flow with correlated legs (GetTransaction) -------------------------------------------


CORRELATION_1_CALL = [  # migration/jsonschema/jsonschema.go: CorrelationMapping1call
    ("data_header.callid", "hep_proto_100_default", "sid", False),
    ("data_header.callid", "hep_proto_5_default", "sid", False),
    ("protocol_header.correlation_id", "hep_proto_1_call", "sid", False),
    ("data_header.callid", "hep_proto_1_call", "data_header->>'callid'", True),
]


def transaction_data(stored: Stored, table: str, field: str, values: list[Any],
                     start: datetime, end: datetime) -> list[HepTable]:
    """GetTransactionData: `create_date between ? AND ? AND <field> = ANY(ARRAY[?,...])`."""
    marks = ",".join("?" * len(values))
    return asyncio.run(homer_select(
        stored.dsn, table, f"create_date between ? AND ? AND {field} = ANY(ARRAY[{marks}])",
        [rfc3339(start), rfc3339(end), *values],
    ))


def call_flow(stored: Stored, call_id: str, start: datetime, end: datetime
              ) -> list[HepTable]:
    """GetTransaction for the 1_call profile, its correlations in mapping order."""
    rows = transaction_data(stored, "hep_proto_1_call", "sid", [call_id], start, end)
    sources: dict[str, list[Any]] = {}
    for row in rows:
        for source, *_ in CORRELATION_1_CALL:
            part, key = source.split(".")
            value = getattr(row, part).get(key)
            if isinstance(value, str | float | int) and value not in sources.setdefault(
                    source, []):
                sources[source].append(value)
    for source, table, field, b2b in CORRELATION_1_CALL:
        values = list(sources.get(source, []))
        if not values:
            continue
        if b2b:  # input_function_js: data[i] + '_b2b-1'
            values += [f"{v}_b2b-1" for v in values]
        rows += transaction_data(stored, table, field, values,
                                 start + timedelta(seconds=RANGE[0]),
                                 end + timedelta(seconds=RANGE[1]))
    unique = {(r.id, r.create_date): r for r in rows}  # uniqueHepTable
    flow = sorted(unique.values(), key=lambda r: (r.protocol_header["timeSeconds"],
                                                  r.protocol_header["timeUseconds"]))
    assert_homer_types(flow)
    return flow


def test_call_flow_of_the_b_leg_brings_the_a_leg_by_x_cid(stored: Stored) -> None:
    start, end = stored.now - timedelta(minutes=5), stored.now + timedelta(minutes=5)
    flow = call_flow(stored, B_LEG, start, end)
    b_leg = next(r for r in flow if r.sid == B_LEG)
    assert b_leg.protocol_header["correlation_id"] == A_LEG
    # The A leg by its correlation id; nothing else has the b-leg's Call-ID.
    assert Counter(r.sid for r in flow) == Counter({B_LEG: 1, A_LEG: 1})


def test_call_flow_of_the_a_leg_brings_its_b2b_twin_logs_and_rtcp(stored: Stored) -> None:
    start, end = stored.now - timedelta(minutes=5), stored.now + timedelta(minutes=5)
    flow = call_flow(stored, A_LEG, start, end)
    assert sorted(r.data_header.get("callid", r.data_header.get("proto")) for r in flow) == \
        sorted([A_LEG, B2B_LEG, "log", "rtcp"])


def test_call_flow_of_the_vectors(stored: Stored) -> None:
    """A Kamailio call and the hep-js call whose LOG has its Call-ID as correlation id."""
    start, end = vector_window("kamailio_hep3_udp")
    expected = vector_rows("hep_proto_1_call", (start, end))
    call_id = expected[0]["callid"]
    flow = call_flow(stored, call_id, start, end)
    assert summary(flow) == want([r for r in expected if r["callid"] == call_id])
    start, end = vector_window("hepjs_hep3_udp")
    flow = call_flow(stored, HEPJS_CALL, start, end)
    logs = [r for r in flow if r.data_header.get("proto") == "log"]
    assert [r.sid for r in logs] == [HEPJS_CALL]
    calls = [r for r in flow if "callid" in r.data_header]
    expected = vector_rows("hep_proto_1_call", (start, end))
    assert summary(calls) == want([r for r in expected if r["callid"] == HEPJS_CALL])


# -- logs and QoS (GetTransactionLog, GetTransactionQos) ------------------------------------


def by_sid(stored: Stored, table: str, call_ids: list[str], start: datetime,
           end: datetime) -> list[HepTable]:
    """`sid in (?) and create_date between ? and ?` (the slice expands to $1,$2,...)."""
    rows = asyncio.run(homer_select(
        stored.dsn, table, "sid in (?) and create_date between ? and ?",
        [call_ids, rfc3339(start), rfc3339(end)],
    ))
    for row in rows:
        assert not set(row.protocol_header) & set(row.data_header)
        assert isinstance(row.protocol_header["srcIp"], str)
        assert is_number(row.protocol_header["timeSeconds"])
    return rows


def test_logs_of_the_hepjs_call(stored: Stored) -> None:
    start, end = vector_window("hepjs_hep3_udp")
    rows = by_sid(stored, "hep_proto_100_default", [HEPJS_CALL, "no-such-call"], start, end)
    assert len(rows) == 1
    assert rows[0].protocol_header["correlation_id"] == HEPJS_CALL
    assert rows[0].protocol_header["captureId"] == "2001"
    assert rows[0].data_header == {"node": "2001", "proto": "log"}
    assert "ended normally" in rows[0].raw


def test_logs_and_qos_of_the_a_leg(stored: Stored) -> None:
    start, end = stored.now - timedelta(minutes=5), stored.now + timedelta(minutes=5)
    for table, proto in (("hep_proto_100_default", "log"), ("hep_proto_5_default", "rtcp"),
                         ("hep_proto_35_default", "rtcp_xr")):
        rows = by_sid(stored, table, [A_LEG], start, end)
        assert [(r.sid, r.data_header["proto"]) for r in rows] == [(A_LEG, proto)], table


def test_every_stored_row_has_homer_types(stored: Stored) -> None:
    """Whatever homer-app selects, every row of every table it may read types right."""

    async def tables() -> list[str]:
        conn = await asyncpg.connect(stored.dsn)
        try:
            return [r[0] for r in await conn.fetch(
                "SELECT table_name FROM hep_ingest_capture_tables ORDER BY 1")]
        finally:
            await conn.close()

    seen = 0
    for table in asyncio.run(tables()):
        rows = asyncio.run(homer_select(stored.dsn, table, "create_date between ? AND ?",
                                        [pq_time(datetime(2000, 1, 1, tzinfo=UTC)),
                                         pq_time(stored.now + timedelta(days=1))]))
        assert_homer_types(rows)
        seen += len(rows)
    assert seen == 170 + 51 + 34 + 12 + 1 + 6


def test_the_tables_homer_app_and_the_rotator_use_exist(stored: Stored) -> None:
    """heplify-server's rotator (rotator/pgfiles.go) and homer-app's controllers name
    these tables; each has the columns homer-app's model.HepTable reads."""

    async def columns() -> dict[str, set[str]]:
        conn = await asyncpg.connect(stored.dsn)
        try:
            rows = await conn.fetch(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = 'public'")
        finally:
            await conn.close()
        found: dict[str, set[str]] = {}
        for row in rows:
            found.setdefault(row["table_name"], set()).add(row["column_name"])
        return found

    found = asyncio.run(columns())
    for table in ("hep_proto_1_call", "hep_proto_1_registration", "hep_proto_1_default",
                  "hep_proto_5_default", "hep_proto_35_default", "hep_proto_54_default",
                  "hep_proto_100_default"):
        assert found.get(table, set()) >= {
            "id", "sid", "create_date", "protocol_header", "data_header", "raw",
            "custom_headers"}, table


def test_the_consumer_counts_what_the_header_rules_did(stored: Stored) -> None:
    """Only the B leg has X-CID: one value kept, one correlation id, no regex."""
    from prometheus_client.parser import text_string_to_metric_families

    want = {("custom", "X-CID", "extracted"): 1.0, ("custom", "X-CID", "regex_miss"): 0.0,
            ("a_leg", "X-CID", "extracted"): 1.0, ("a_leg", "X-CID", "regex_miss"): 0.0}
    got: dict[tuple[str, str, str], float] = {}
    deadline = time.monotonic() + 10
    while got != want and time.monotonic() < deadline:  # rewritten every fraction of a second
        time.sleep(0.2)
        text = stored.metrics_file.read_text()
        got = {
            (s.labels["use"], s.labels["header"], s.labels["outcome"]): s.value
            for family in text_string_to_metric_families(text)
            if family.name == "hep_ingest_sip_headers"
            for s in family.samples if s.name.endswith("_total")
        }
    assert got == want


def test_gorm_shape() -> None:
    sql, params = gorm_find("hep_proto_1_call", "sid in (?) and create_date between ? and ?",
                            [["a", "b"], "t1", "t2"], limit=200)
    assert sql == ('SELECT * FROM "hep_proto_1_call"  WHERE (sid in ($1,$2) and '
                   "create_date between $3 and $4) LIMIT 200")
    assert params == ["a", "b", "t1", "t2"]
