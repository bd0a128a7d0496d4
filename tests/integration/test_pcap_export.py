"""`hep-ingest call --format pcap` and `hep-ingest export` on messages stored through the
real pipeline, read back with tshark (and sngrep): every message, in capture order,
with its addresses, ports, transport and Call-ID."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from pipeline.commands import analysis, export
from pipeline.hep import encode_hep3
from tests.conftest import create_database, load_vectors
from tests.flows import Capture, answered_b2bua, busy
from tests.integration.analysis_support import flows_start, store_packets

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tshark") is None,
                       reason="tshark is not installed (Debian package tshark)"),
]

KAMAILIO_CALL = "acc-inv-1-28074@127.0.0.1"
A_LEG = "3848276298220188511@192.0.2.10"
B_LEG = "b2b-9f3e1c@192.0.2.1"
BUSY = "busy-77a1@192.0.2.10"
#: The busy call starts after the B2BUA call has ended, so neither interleaves.
BUSY_START_US = 100_000_000
IPV6 = {"192.0.2.10": "2001:db8::10", "192.0.2.1": "2001:db8::1"}
FIELDS = ("ip.src", "ipv6.src", "udp.srcport", "tcp.srcport", "ip.dst", "ipv6.dst",
          "udp.dstport", "tcp.dstport", "sip.Call-ID", "sip.Method", "sip.Status-Code")


def _packets(captures: list[Capture], *, tcp: str | None = None,
             ipv6: bool = False) -> list[bytes]:
    """HEP packets of `captures`; the Call-ID `tcp` over TCP; addresses IPv6 if `ipv6`."""
    out = []
    for capture in captures:
        packet = capture.to_packet()
        if tcp is not None and f"Call-ID: {tcp}\r\n".encode() in capture.payload:
            packet = replace(packet, ip_proto=6)
        if ipv6:
            packet = replace(packet, ip_family=10, src_ip=IPV6[packet.src_ip or ""],
                             dst_ip=IPV6[packet.dst_ip or ""])
        out.append(encode_hep3(packet))
    return out


@pytest.fixture(scope="module")
def stored(postgres: Any) -> tuple[str, datetime]:
    """The Kamailio HEP3 vectors; the B2BUA call with its b-leg over TCP; a busy call
    over IPv6. Returns the DSN and the generated flows' start."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = postgres.dsn.rsplit("/", 1)[0] + "/" + name
    start = flows_start()
    start_us = int(start.timestamp() * 1_000_000)

    async def fill() -> None:
        await create_database(postgres.dsn, name)
        await store_packets(dsn, load_vectors("kamailio_hep3_udp")[0])
        await store_packets(dsn, _packets(answered_b2bua(start_us), tcp=B_LEG))
        await store_packets(dsn, _packets(busy(start_us + BUSY_START_US), ipv6=True))

    asyncio.run(fill())
    return dsn, start


def tshark(path: Path | str, stdin: bytes | None = None) -> list[dict[str, str]]:
    command = ["tshark", "-r", str(path), "-Y", "sip", "-T", "fields"]
    for field in FIELDS:
        command += ["-e", field]
    result = subprocess.run(command, input=stdin, capture_output=True, check=True, timeout=120)
    return [dict(zip(FIELDS, line.split("\t"), strict=True))
            for line in result.stdout.decode().splitlines()]


def summary(frame: dict[str, str]) -> tuple[str, str, str, str, str, str]:
    """(transport, src, dst, Call-ID, method or status) of one SIP frame."""
    transport = "tcp" if frame["tcp.srcport"] else "udp"
    src = (frame["ip.src"] or frame["ipv6.src"]) + ":" + (frame["udp.srcport"]
                                                         or frame["tcp.srcport"])
    dst = (frame["ip.dst"] or frame["ipv6.dst"]) + ":" + (frame["udp.dstport"]
                                                         or frame["tcp.dstport"])
    return (transport, src, dst, frame["sip.Call-ID"], frame["sip.Method"],
            frame["sip.Status-Code"])


def expected_vector_call(call_id: str) -> list[tuple[str, str, str, str, str, str]]:
    _, expected = load_vectors("kamailio_hep3_udp")
    return [("udp", f"{p['src_ip']}:{p['src_port']}", f"{p['dst_ip']}:{p['dst_port']}",
             p["sip"]["call_id"], p["sip"]["method"] or "", str(p["sip"]["status"] or ""))
            for p in expected["packets"] if p["sip"] and p["sip"]["call_id"] == call_id]


def expected_flow(captures: list[Capture], call_ids: set[str], *, tcp: str | None = None,
                  ipv6: bool = False) -> list[tuple[str, str, str, str, str, str]]:
    out = []
    for c in captures:
        if c.proto_type != 1:
            continue
        text = c.payload.decode()
        call_id = text.split("Call-ID: ", 1)[1].split("\r\n", 1)[0]
        if call_id not in call_ids:
            continue
        first = text.split(" ", 2)
        method, status = ("", first[1]) if first[0] == "SIP/2.0" else (first[0], "")
        src, dst = c.src, c.dst
        ips = (IPV6[src.ip], IPV6[dst.ip]) if ipv6 else (src.ip, dst.ip)
        out.append(("tcp" if call_id == tcp else "udp", f"{ips[0]}:{src.port}",
                    f"{ips[1]}:{dst.port}", call_id, method, status))
    return out


def sngrep_dialogs(path: Path, saved: Path) -> tuple[int, int]:
    """sngrep, headless, reads `path`: (dialogs it found, SIP messages it saved again)."""
    if shutil.which("sngrep") is None:
        pytest.skip("sngrep is not installed (Debian package sngrep)")
    run = subprocess.run(["sngrep", "-I", str(path), "-N", "-O", str(saved)],
                         capture_output=True, text=True, timeout=120, check=True)
    last = run.stdout.replace("\r", "\n").rstrip().splitlines()[-1]
    assert last.startswith("Dialog count: "), run.stdout
    return int(last.split(": ")[1]), len(tshark(saved))


def _cli() -> typer.Typer:
    app = typer.Typer()
    analysis.register(app)
    export.register(app)
    return app


def test_call_pcap_piped_into_tshark_shows_the_kamailio_call(
    stored: tuple[str, datetime],
) -> None:
    dsn, _ = stored
    hep_ingest = Path(sys.executable).with_name("hep-ingest")
    command = (f"'{hep_ingest}' call '{KAMAILIO_CALL}' --dsn '{dsn}' --format pcap "
               f"| tshark -r - -Y sip -T fields " + " ".join(f"-e {f}" for f in FIELDS))
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True,
                            timeout=180, env={**os.environ, "HEP_INGEST_LOG_LEVEL": "error"})
    assert result.returncode == 0, result.stderr.decode()
    frames = [dict(zip(FIELDS, line.split("\t"), strict=True))
              for line in result.stdout.decode().splitlines()]
    wanted = expected_vector_call(KAMAILIO_CALL)
    assert len(wanted) == 13
    assert [summary(f) for f in frames] == wanted


def test_call_pcap_with_a_tcp_leg_and_correlated_legs(
    stored: tuple[str, datetime], tmp_path: Path
) -> None:
    dsn, start = stored
    path = tmp_path / "b2bua.pcap"
    result = CliRunner().invoke(_cli(), ["call", A_LEG, "--dsn", dsn, "--format", "pcap",
                                         "--output", str(path)])
    assert result.exit_code == 0, result.output
    frames = [summary(f) for f in tshark(path)]
    flow = answered_b2bua(int(start.timestamp() * 1_000_000))
    assert frames == expected_flow(flow, {A_LEG, B_LEG}, tcp=B_LEG)
    assert {f[0] for f in frames if f[3] == B_LEG} == {"tcp"}
    assert {f[0] for f in frames if f[3] == A_LEG} == {"udp"}
    # The same bytes on stdout.
    piped = CliRunner().invoke(_cli(), ["call", A_LEG, "--dsn", dsn, "--format", "pcap"])
    assert piped.exit_code == 0 and piped.stdout_bytes == path.read_bytes()
    # sngrep follows both legs, the TCP one included.
    assert sngrep_dialogs(path, tmp_path / "sngrep.pcap") == (2, 14)


def test_call_pcap_errors(stored: tuple[str, datetime], tmp_path: Path) -> None:
    dsn, _ = stored
    missing = CliRunner().invoke(_cli(), ["call", "no-such-call", "--dsn", dsn, "--format",
                                          "pcap", "--output", str(tmp_path / "x.pcap")])
    assert missing.exit_code == 1 and not (tmp_path / "x.pcap").exists()
    table_to_file = CliRunner().invoke(_cli(), ["call", A_LEG, "--dsn", dsn,
                                                "--output", str(tmp_path / "x.txt")])
    assert table_to_file.exit_code == 2


def test_export_searches_by_time_user_ip_and_call_id(
    stored: tuple[str, datetime], tmp_path: Path
) -> None:
    dsn, start = stored
    start_us = int(start.timestamp() * 1_000_000)
    since, until = start.isoformat(), (start + timedelta(minutes=5)).isoformat()
    runner = CliRunner()

    def run(*args: str) -> list[tuple[str, str, str, str, str, str]]:
        path = tmp_path / f"{uuid.uuid4().hex}.pcap"
        result = runner.invoke(_cli(), ["export", "--dsn", dsn, "--since", since,
                                        "--until", until, "--output", str(path), *args])
        assert result.exit_code == 0, result.output
        assert "exported" in result.output
        return [summary(f) for f in tshark(path)]

    b2bua = expected_flow(answered_b2bua(start_us), {A_LEG, B_LEG}, tcp=B_LEG)
    busy_v6 = expected_flow(busy(start_us + BUSY_START_US), {BUSY}, ipv6=True)
    # Everything in the range: both generated calls, in capture order.
    assert run() == b2bua + busy_v6
    assert run("--ip", "2001:db8::10") == busy_v6
    assert run("--call-id", B_LEG) == [f for f in b2bua if f[3] == B_LEG]
    # A Call-ID also selects the legs that name it as their correlation id.
    assert run("--call-id", A_LEG, "--call-id", BUSY) == b2bua + busy_v6
    assert run("--user", "nobody") == []
    assert {f[3] for f in run("--user", "bob", "--ip", "192.0.2.1")} == {A_LEG, B_LEG}

    bad = runner.invoke(_cli(), ["export", "--dsn", dsn, "--ip", "not-an-ip"])
    assert bad.exit_code == 2


def test_export_of_the_vectors_reads_back_in_sngrep(
    stored: tuple[str, datetime], tmp_path: Path
) -> None:
    dsn, _ = stored
    _, expected = load_vectors("kamailio_hep3_udp")
    times = [p["ts_sec"] * 1_000_000 + p["ts_usec"] for p in expected["packets"]]
    since = datetime.fromtimestamp(min(times) / 1e6, UTC)
    until = datetime.fromtimestamp(max(times) / 1e6 + 1, UTC)
    path = tmp_path / "vectors.pcap"
    result = CliRunner().invoke(_cli(), [
        "export", "--dsn", dsn, "--since", since.isoformat(), "--until", until.isoformat(),
        "--output", str(path), "--progress-interval", "0"])
    assert result.exit_code == 0, result.output
    progress = [line for line in result.output.splitlines() if ", up to " in line]
    assert progress[0].startswith("exported 1 messages, up to ")
    assert progress[-1].startswith("exported 170 messages, up to ")
    frames = tshark(path)
    assert len(frames) == 170
    assert [f["sip.Call-ID"] for f in frames] == [p["sip"]["call_id"]
                                                  for p in expected["packets"]]
    assert sngrep_dialogs(path, tmp_path / "sngrep.pcap") == (
        expected["summary"]["call_ids"], 170)
