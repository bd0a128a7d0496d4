"""Interoperability: real third-party HEP senders -> `hep-ingest receive` -> Kafka ->
`hep-ingest consume` -> PostgreSQL.

The senders are installed as an operator would install them (`.ci/run` does it):

- Kamailio `siptrace` (Debian `kamailio`), HEPv3 and HEPv2, proxying calls between two
  SIPp instances (Debian `sip-tester`), with the configuration of the capture in
  tests/data/hep-vectors/kamailio_hep3_udp (ports substituted);
- sngrep (Debian `sngrep`), replaying a pcap written here as HEPv3 (`-I file -H udp:...
  -N -q`: it reads the file, sends each SIP packet and exits);
- hep-js 1.0.22 (npm, sipcapture's encoder), run by node: a SIP message and a LOG (HEP
  type 100) carrying a correlation id and an auth key.

A sender that is not installed skips its test with the reason. Only 127.0.0.1 is ever
a target of traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from pipeline.embedded import EmbeddedKafka, free_udp_port
from tests.conftest import VECTORS_DIR
from tests.integration.consume_support import start_consumer, stop_process, tail, wait_for_rows
from tests.integration.receiver_process import (
    ReceiverProcess,
    free_udp_ports_in_a_row,
    run_receiver_process,
)

pytestmark = [pytest.mark.integration, pytest.mark.interop]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KAMAILIO_CFG = VECTORS_DIR / "kamailio_hep3_udp" / "kamailio.cfg"
HEPJS_VERSION = "1.0.22"
CALLS = 5
# What Kamailio mirrors of one call it proxies between the SIPp UAC and UAS: every
# message in and out, plus the 100 Trying tm sends upstream.
KAMAILIO_CALL_LADDER = Counter(
    {
        ("INVITE", None, "INVITE"): 2,
        (None, 100, "INVITE"): 1,
        (None, 180, "INVITE"): 2,
        (None, 200, "INVITE"): 2,
        ("ACK", None, "ACK"): 2,
        ("BYE", None, "BYE"): 2,
        (None, 200, "BYE"): 2,
    }
)


def require(binary: str, package: str) -> str:
    # Debian puts kamailio in /usr/sbin, which is not on a normal user's PATH.
    path = shutil.which(binary) or shutil.which(binary, path="/usr/local/sbin:/usr/sbin:/sbin")
    if path is None:
        pytest.skip(f"{binary} not installed (apt-get install {package}); see .ci/run")
    return path


# --- processes -----------------------------------------------------------------------


def udp_port_bound(port: int) -> bool:
    """Whether some process has bound UDP `port` on this host."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                local = line.split()[1]
                if int(local.rsplit(":", 1)[1], 16) == port:
                    return True
    if Path("/proc/net/udp").exists():
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # not Linux
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_udp_and_tcp_port() -> int:
    """A loopback port free for UDP and for TCP: Kamailio listens on both with one port
    when it sends HEP over TCP."""
    while True:
        port = free_udp_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def wait_udp_bound(
    port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while not udp_port_bound(port):
        if process.poll() is not None:
            raise AssertionError(f"{process.args[0]} exited {process.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{process.args[0]} never bound UDP {port}:\n{tail(log)}")
        time.sleep(0.05)


def spawn(command: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """A child in its own process group, so that `reap` also stops its children."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )


def reap(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM the process group of `process` (started by `spawn`), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout)
            # Children outliving the leader (Kamailio's workers) get the same signal.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def ingest_pipeline(
    kafka: EmbeddedKafka, dsn: str, topic: str, tmp_path: Path, *receiver_args: str
) -> Iterator[tuple[ReceiverProcess, subprocess.Popen[bytes]]]:
    """The real `hep-ingest receive` and `hep-ingest consume --sink postgres`."""
    with run_receiver_process(tmp_path, kafka.bootstrap_servers, topic, *receiver_args) as receiver:
        consumer = start_consumer(
            kafka.bootstrap_servers,
            topic,
            dsn,
            tmp_path / "consumer.log",
            "--flush-interval",
            "0.2",
        )
        try:
            yield receiver, consumer
        except BaseException:
            stop_process(consumer)
            raise
        assert stop_process(consumer) == 0, tail(tmp_path / "consumer.log")


async def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def stored(dsn: str, sent: int, consumer: subprocess.Popen[bytes], log: Path) -> None:
    total, distinct = await wait_for_rows(dsn, sent, 30, consumer)
    assert (total, distinct) == (sent, sent), tail(log)


# --- Kamailio + SIPp -------------------------------------------------------------------


def kamailio_cfg(
    sip_port: int, uas_port: int, hep_port: int, hep_version: int, hep_transport: str = "udp"
) -> str:
    """The captures' Kamailio configuration on test ports: SIP over UDP, HEP to `hep_port`
    over `hep_transport` (over TCP Kamailio needs its TCP stack, on the SIP port)."""
    cfg = KAMAILIO_CFG.read_text()
    hep_uri = f"sip:127.0.0.1:{hep_port}" + (";transport=tcp" if hep_transport == "tcp" else "")
    substitutions = [
        (r"listen=udp:127\.0\.0\.1:5060\n", f"listen=udp:127.0.0.1:{sip_port}\n"),
        (
            r"listen=tcp:127\.0\.0\.1:5060\n",
            f"listen=tcp:127.0.0.1:{sip_port}\n" if hep_transport == "tcp" else "disable_tcp=yes\n",
        ),
        (r"tcp_children=\d+\n", "" if hep_transport == "udp" else "tcp_children=1\n"),
        (r"tcp_connection_lifetime=\d+\n", ""),
        (r'alias="127\.0\.0\.1:5060"', f'alias="127.0.0.1:{sip_port}"'),
        (r"mpath=.*\n", ""),  # the package's module directory is kamailio's default
        (r'"sip:127\.0\.0\.1:5070"', f'"sip:127.0.0.1:{uas_port}"'),
        (
            r'"duplicate_uri", "sip:127\.0\.0\.1:9060"',
            f'"duplicate_uri", "{hep_uri}"',
        ),
        (r'"hep_version", 3\)', f'"hep_version", {hep_version})'),
        (r'"hep_capture_id", 2001\)', '"hep_capture_id", 2001)'),  # asserted below
    ]
    for pattern, replacement in substitutions:
        cfg, n = re.subn(pattern, replacement, cfg)
        assert n == 1, f"{KAMAILIO_CFG} changed: {pattern!r} matched {n} times"
    return cfg


def sipp(binary: str, scenario: str, port: int, *extra: str) -> list[str]:
    return [
        binary,
        "-sn",
        scenario,
        "-i",
        "127.0.0.1",
        "-p",
        str(port),
        "-cp",
        str(free_udp_port()),
        # SIPp binds its audio RTP socket on this port and the video one two above:
        # all four free (a free port whose +2 another socket holds failed a CI-like run:
        # "Unable to bind video RTP socket ... errno = 98").
        "-mp",
        str(free_udp_ports_in_a_row(4)),
        "-m",
        str(CALLS),
        "-nostdin",
        "-nr",  # no UDP retransmissions on loopback: each message is mirrored exactly once
        "-timeout",
        "30",
        "-timeout_error",
        *extra,
    ]


@pytest.mark.parametrize(
    ("hep_version", "hep_transport"),
    # HEPv2 over TCP has no length field: the receiver frames it by its header and the
    # SIP message it carries (headers, then Content-Length).
    [(3, "udp"), (2, "udp"), (2, "tcp")],
    ids=["hep3-udp", "hep2-udp", "hep2-tcp"],
)
async def test_kamailio_siptrace_calls_between_sipp_agents(
    hep_version: int,
    hep_transport: str,
    kafka: EmbeddedKafka,
    database_dsn: str,
    topic_name: str,
    tmp_path: Path,
) -> None:
    kamailio = require("kamailio", "kamailio")
    sipp_binary = require("sipp", "sip-tester")
    sip_port, uas_port, uac_port = free_udp_and_tcp_port(), free_udp_port(), free_udp_port()
    consumer_log = tmp_path / "consumer.log"
    with ingest_pipeline(kafka, database_dsn, topic_name, tmp_path) as (receiver, consumer):
        cfg = tmp_path / "kamailio.cfg"
        hep_port = receiver.tcp_port if hep_transport == "tcp" else receiver.udp_port
        cfg.write_text(kamailio_cfg(sip_port, uas_port, hep_port, hep_version, hep_transport))
        kamailio_log = tmp_path / "kamailio.log"
        started = datetime.now(UTC)
        proxy = spawn(
            [kamailio, "-DD", "-E", "-f", str(cfg), "-Y", str(tmp_path), "-m", "64", "-M", "8"],
            kamailio_log,
            tmp_path,
        )
        uas = uac = None
        try:
            await asyncio.to_thread(wait_udp_bound, sip_port, proxy, kamailio_log)
            uas = spawn(sipp(sipp_binary, "uas", uas_port), tmp_path / "uas.log", tmp_path)
            await asyncio.to_thread(wait_udp_bound, uas_port, uas, tmp_path / "uas.log")
            uac = spawn(
                sipp(sipp_binary, "uac", uac_port, "-r", str(CALLS), f"127.0.0.1:{sip_port}"),
                tmp_path / "uac.log",
                tmp_path,
            )
            assert await asyncio.to_thread(uac.wait, 40) == 0, tail(tmp_path / "uac.log")
            assert await asyncio.to_thread(uas.wait, 20) == 0, tail(tmp_path / "uas.log")
            finished = datetime.now(UTC)
            mirrored = CALLS * KAMAILIO_CALL_LADDER.total()
            await stored(database_dsn, mirrored, consumer, consumer_log)
            assert receiver.metric("hep_ingest_packets_invalid_total") == 0
            received = {"transport": hep_transport, "version": str(hep_version)}
            assert receiver.metric("hep_ingest_packets_received_total", received) == mirrored
            assert receiver.metric("hep_ingest_packets_received_total") == mirrored
        finally:
            for process in (uac, uas, proxy):
                if process is not None:
                    reap(process)
    # Kamailio's own account: one HEPTRACE log line per message it mirrored.
    assert kamailio_log.read_text(errors="replace").count("HEPTRACE") == mirrored

    rows = await fetch(
        database_dsn,
        "SELECT call_id, sid, method, status, cseq_method, capture_id, hep_version, hep_type,"
        " host(src_ip) AS src_ip, src_port, host(dst_ip) AS dst_ip, dst_port, create_date,"
        " parse_error FROM hep_proto_1_call",
    )
    assert len(rows) == mirrored
    # SIPp's Call-IDs are "<call number>-<pid>@<local ip>".
    call_ids = {r["call_id"] for r in rows}
    assert call_ids == {f"{n}-{uac.pid}@127.0.0.1" for n in range(1, CALLS + 1)}
    for call_id in call_ids:
        ladder = Counter(
            (r["method"], r["status"], r["cseq_method"]) for r in rows if r["call_id"] == call_id
        )
        assert ladder == KAMAILIO_CALL_LADDER, call_id
    # HEPv2 has no payload type field; it carries SIP, so its rows say SIP (1) too.
    assert {(r["capture_id"], r["hep_version"], r["hep_type"], r["parse_error"]) for r in rows} == {
        (2001, hep_version, 1, None)
    }
    assert all(r["sid"] == r["call_id"] for r in rows)
    assert {(r["src_ip"], r["dst_ip"]) for r in rows} == {("127.0.0.1", "127.0.0.1")}
    hops = {(r["src_port"], r["dst_port"]) for r in rows}
    assert hops == {
        (uac_port, sip_port),
        (sip_port, uac_port),
        (sip_port, uas_port),
        (uas_port, sip_port),
    }
    # The agent's clock is this host's: the decoded HEP timestamps (little-endian in
    # HEPv2) fall within the run.
    slack = timedelta(seconds=2)
    assert all(started - slack <= r["create_date"] <= finished + slack for r in rows)

    calls = await fetch(
        database_dsn,
        "SELECT call_id, state, final_status, end_method, ended_by, src_port, dst_port,"
        " (SELECT array_agg(DISTINCT m.capture_id) FROM hep_proto_1_call m"
        "   WHERE m.sid = c.call_id) AS capture_ids"
        " FROM sip_calls c",
    )
    assert {c["call_id"] for c in calls} == call_ids
    assert {
        (
            c["state"],
            c["final_status"],
            c["end_method"],
            c["ended_by"],
            c["src_port"],
            c["dst_port"],
            tuple(c["capture_ids"]),
        )
        for c in calls
    } == {("answered", 200, "BYE", "caller", uac_port, sip_port, (2001,))}


# --- sngrep ----------------------------------------------------------------------------

# sngrep 1.6 writes its capture id (2002 by default) with htons() into the 32-bit HEP
# chunk (capture_eep.c: `hg->capt_id.data = htons(eep_cfg.capt_id)`), so a little-endian
# host puts 07 d2 00 00 on the wire: 0x07d20000. The receiver stores what was sent.
SNGREP_CAPTURE_ID = int.from_bytes(socket.htons(2002).to_bytes(4, sys.byteorder), "big")


def sip_message(first_line: str, call_id: str, cseq: str, to_tag: str = "") -> bytes:
    return (
        f"{first_line}\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-{call_id[:6]}-{cseq.split()[0]}\r\n"
        f"From: <sip:alice@example.com>;tag=alice1\r\n"
        f"To: <sip:bob@example.com>{to_tag}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq}\r\n"
        f"Contact: <sip:alice@192.0.2.10:5060>\r\n"
        f"User-Agent: interop-pcap\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ethernet_udp_frame(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload  # no checksum
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,  # IPv4, 20-byte header
        0,
        20 + len(udp),
        1,
        0x4000,  # don't fragment
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(src[0]),
        socket.inet_aton(dst[0]),
    )
    ip = ip[:10] + struct.pack("!H", ipv4_checksum(ip)) + ip[12:]
    ethernet = bytes.fromhex("0200000000020200000000010800")
    return ethernet + ip + udp


def write_pcap(
    path: Path, packets: list[tuple[float, tuple[str, int], tuple[str, int], bytes]]
) -> None:
    """Classic libpcap file, microsecond timestamps, Ethernet link type."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for ts, src, dst, payload in packets:
        frame = ethernet_udp_frame(src, dst, payload)
        sec, usec = divmod(round(ts * 1_000_000), 1_000_000)
        out.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def sngrep_capture(start: float) -> list[tuple[float, tuple[str, int], tuple[str, int], bytes]]:
    """One answered call and one OPTIONS ping, as seen between two agents."""
    alice, bob = ("192.0.2.10", 5060), ("198.51.100.20", 5080)
    call, ping = "sngrep-interop-call-1@192.0.2.10", "sngrep-interop-ping-1@192.0.2.10"
    tag = ";tag=bob1"
    ladder = [
        (alice, bob, sip_message("INVITE sip:bob@example.com SIP/2.0", call, "1 INVITE")),
        (bob, alice, sip_message("SIP/2.0 100 Trying", call, "1 INVITE")),
        (bob, alice, sip_message("SIP/2.0 180 Ringing", call, "1 INVITE", tag)),
        (bob, alice, sip_message("SIP/2.0 200 OK", call, "1 INVITE", tag)),
        (alice, bob, sip_message("ACK sip:bob@198.51.100.20:5080 SIP/2.0", call, "1 ACK", tag)),
        (alice, bob, sip_message("BYE sip:bob@198.51.100.20:5080 SIP/2.0", call, "2 BYE", tag)),
        (bob, alice, sip_message("SIP/2.0 200 OK", call, "2 BYE", tag)),
        (alice, bob, sip_message("OPTIONS sip:bob@example.com SIP/2.0", ping, "1 OPTIONS")),
        (bob, alice, sip_message("SIP/2.0 200 OK", ping, "1 OPTIONS", tag)),
    ]
    return [(start + i * 0.25 + 0.000123, s, d, p) for i, (s, d, p) in enumerate(ladder)]


async def test_sngrep_replays_a_pcap_as_hep(
    kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    sngrep = require("sngrep", "sngrep")
    capture = sngrep_capture(int(time.time()) - 60)
    pcap = tmp_path / "sip.pcap"
    write_pcap(pcap, capture)
    with ingest_pipeline(kafka, database_dsn, topic_name, tmp_path) as (receiver, consumer):
        # -F: no user configuration; -N -q: no interface, quiet. sngrep reads the whole
        # file, sends each SIP packet as HEPv3 and exits.
        result = await asyncio.to_thread(
            subprocess.run,
            [sngrep, "-F", "-N", "-q", "-I", str(pcap), "-H", f"udp:127.0.0.1:{receiver.udp_port}"],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=30,
            cwd=tmp_path,
            start_new_session=True,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        await stored(database_dsn, len(capture), consumer, tmp_path / "consumer.log")

    rows = []
    for table in ("hep_proto_1_call", "hep_proto_1_default"):
        rows += await fetch(
            database_dsn,
            f"SELECT '{table}' AS tbl, call_id, method, status, host(src_ip) AS src_ip,"
            " src_port, host(dst_ip) AS dst_ip, dst_port, create_date, capture_id,"
            f" hep_version, user_agent, raw FROM {table}",
        )
    expected = []
    for ts, src, dst, payload in capture:
        text = payload.decode()
        first = text.split("\r\n", 1)[0]
        is_request = not first.startswith("SIP/2.0")
        call_id = re.search(r"Call-ID: (\S+)", text)[1]  # type: ignore[index]
        sec, usec = divmod(round(ts * 1_000_000), 1_000_000)
        expected.append(
            (
                "hep_proto_1_default" if "OPTIONS" in text else "hep_proto_1_call",
                call_id,
                first.split()[0] if is_request else None,
                None if is_request else int(first.split()[1]),
                *src,
                *dst,
                EPOCH + timedelta(seconds=sec, microseconds=usec),
                SNGREP_CAPTURE_ID,
                3,
                "interop-pcap",
                text,
            )
        )
    assert Counter(tuple(r.values()) for r in rows) == Counter(expected)

    calls = await fetch(database_dsn, "SELECT call_id, state, ended_by FROM sip_calls")
    assert [tuple(c.values()) for c in calls] == [
        ("sngrep-interop-call-1@192.0.2.10", "answered", "caller")
    ]


# --- hep-js ----------------------------------------------------------------------------

HEPJS_SENDER = r"""
const dgram = require("dgram");
const HEPjs = require("hep-js");
const [port, tsSec, tsUsec, callId] = process.argv.slice(2);
const base = {
  protocolFamily: 2, protocol: 17, captureId: 2099, capturePass: "interopKey",
  hepNodeName: "interop-node", timeSeconds: Number(tsSec),
};
const invite = [
  "INVITE sip:bob@example.com SIP/2.0",
  "Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK-hepjs-interop",
  "From: <sip:alice@example.com>;tag=hepjs1",
  "To: <sip:bob@example.com>",
  "Call-ID: " + callId,
  "CSeq: 1 INVITE",
  "Content-Length: 0",
  "", "",
].join("\r\n");
const log = "hep-js interop: call " + callId + " ended normally";
const packets = [
  HEPjs.encapsulate(invite, Object.assign({}, base, {
    srcIp: "127.0.0.2", srcPort: 5060, dstIp: "127.0.0.3", dstPort: 5062,
    timeUseconds: Number(tsUsec), payloadType: 1,
  })),
  HEPjs.encapsulate(log, Object.assign({}, base, {
    srcIp: "127.0.0.2", srcPort: 5060, dstIp: "127.0.0.3", dstPort: 5062,
    timeUseconds: Number(tsUsec) + 1, payloadType: 100, correlation_id: callId,
  })),
];
const socket = dgram.createSocket("udp4");
let pending = packets.length;
for (const packet of packets) {
  socket.send(packet, Number(port), "127.0.0.1", (err) => {
    if (err) { console.error(err); process.exit(1); }
    if (--pending === 0) { socket.close(); console.log(JSON.stringify({ sent: packets.length })); }
  });
}
"""


@pytest.fixture(scope="session")
def hepjs_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """node_modules with hep-js, installed from npm once per session."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the hep-js test")
    prefix = tmp_path_factory.mktemp("hepjs")
    try:
        result = subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(prefix),
                "--no-audit",
                "--no-fund",
                "--no-package-lock",
                "--fetch-retries=1",
                "--fetch-retry-mintimeout=1000",
                "--fetch-retry-maxtimeout=5000",
                f"hep-js@{HEPJS_VERSION}",
            ],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=180,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install hep-js@{HEPJS_VERSION} timed out (no registry access?)")
    if result.returncode != 0:
        pytest.skip(
            f"npm install hep-js@{HEPJS_VERSION} failed: "
            + result.stderr.decode(errors="replace")[-500:]
        )
    modules = prefix / "node_modules"
    probe = subprocess.run(
        [node, "-e", "console.log(typeof require('hep-js').encapsulate)"],
        capture_output=True,
        cwd=prefix,
        env={**os.environ, "NODE_PATH": str(modules)},
        timeout=30,
    )
    if probe.stdout.strip() != b"function":
        pytest.skip(f"hep-js does not load in node: {probe.stderr.decode(errors='replace')}")
    return modules


async def test_hepjs_sip_and_log_with_correlation_id(
    hepjs_modules: Path, kafka: EmbeddedKafka, database_dsn: str, topic_name: str, tmp_path: Path
) -> None:
    script = tmp_path / "send_hep.js"
    script.write_text(HEPJS_SENDER)
    call_id = f"hepjs-interop-{topic_name}@127.0.0.2"
    ts_sec, ts_usec = int(time.time()) - 30, 250_000
    with ingest_pipeline(kafka, database_dsn, topic_name, tmp_path, "--auth-key", "interopKey") as (
        receiver,
        consumer,
    ):
        result = await asyncio.to_thread(
            subprocess.run,
            [
                shutil.which("node") or "node",
                str(script),
                str(receiver.udp_port),
                str(ts_sec),
                str(ts_usec),
                call_id,
            ],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=30,
            env={**os.environ, "NODE_PATH": str(hepjs_modules)},
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        assert json.loads(result.stdout) == {"sent": 2}
        await stored(database_dsn, 2, consumer, tmp_path / "consumer.log")
        assert receiver.metric("hep_ingest_packets_rejected_total") == 0

    created = EPOCH + timedelta(seconds=ts_sec, microseconds=ts_usec)
    columns = (
        "sid, call_id, method, correlation_id, hep_type, hep_version, capture_id, node_name,"
        " host(src_ip) AS src_ip, src_port, host(dst_ip) AS dst_ip, dst_port, create_date, raw"
    )
    invite = await fetch(database_dsn, f"SELECT {columns} FROM hep_proto_1_call")
    assert [tuple(r.values())[:13] for r in invite] == [
        (
            call_id,
            call_id,
            "INVITE",
            None,
            1,
            3,
            2099,
            "interop-node",
            "127.0.0.2",
            5060,
            "127.0.0.3",
            5062,
            created,
        )
    ]
    log = await fetch(database_dsn, f"SELECT {columns} FROM hep_proto_100_default")
    assert [tuple(r.values()) for r in log] == [
        (
            call_id,
            None,
            None,
            call_id,
            100,
            3,
            2099,
            "interop-node",
            "127.0.0.2",
            5060,
            "127.0.0.3",
            5062,
            created + timedelta(microseconds=1),
            f"hep-js interop: call {call_id} ended normally",
        )
    ]
