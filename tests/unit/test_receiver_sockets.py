"""Listen sockets: bind errors that name the address, no port stealing, kernel drops."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipeline.receiver.listen import check_addresses_free
from pipeline.receiver.metrics import ReceiverMetrics
from pipeline.receiver.socket_drops import UdpSocketDrops
from pipeline.receiver.udp import bind_udp_socket
from pipeline.stack import Totals, read_totals

HEADER = (
    "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode ref pointer drops\n"
)


def proc_line(inode: int, drops: int) -> str:
    return (
        f" 1586: 0100007F:2364 00000000:0000 07 00000000:00000000 00:00000000 00000000  "
        f"1000        0 {inode} 2 00000000d76a422a {drops}\n"
    )


def test_a_held_udp_port_is_refused_with_its_address() -> None:
    with bind_udp_socket("127.0.0.1", 0, 0) as held:
        port = held.getsockname()[1]
        for reuse_port in (False, True):
            with pytest.raises(OSError) as info:
                bind_udp_socket("127.0.0.1", port, 0, reuse_port=reuse_port)
            assert f"cannot bind UDP 127.0.0.1:{port}: " in str(info.value)
            assert "\n" not in str(info.value)
        # The receiver's socket itself never sets SO_REUSEADDR.
        assert held.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0


def test_workers_probe_refuses_addresses_held_even_with_reuse_port() -> None:
    with (
        bind_udp_socket("127.0.0.1", 0, 0, reuse_port=True) as udp,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
    ):
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp_port, tcp_port = udp.getsockname()[1], tcp.getsockname()[1]
        with pytest.raises(OSError, match=f"UDP 127.0.0.1:{udp_port}"):
            check_addresses_free([("127.0.0.1", udp_port)], [])
        with pytest.raises(OSError, match=f"TCP 127.0.0.1:{tcp_port}"):
            check_addresses_free([], [("127.0.0.1", tcp_port)])
        # The other transport on the same port numbers is free.
        check_addresses_free([("127.0.0.1", tcp_port)], [("127.0.0.1", udp_port)])


def test_socket_drops_follow_the_watched_inode_and_survive_close(tmp_path: Path) -> None:
    udp, udp6 = tmp_path / "udp", tmp_path / "udp6"
    drops = UdpSocketDrops((str(udp), str(udp6), str(tmp_path / "missing")))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        inode = os.fstat(sock.fileno()).st_ino
        drops.watch(sock.fileno(), "127.0.0.1:9060")
    assert drops.read() == {"127.0.0.1:9060": 0}
    udp.write_text(HEADER + proc_line(inode + 1, 99) + proc_line(inode, 7) + "garbage\n")
    udp6.write_text(HEADER)
    assert drops.read() == {"127.0.0.1:9060": 7}
    udp.write_text(HEADER)  # the socket is gone: its last value stays
    assert drops.read() == {"127.0.0.1:9060": 7}


def test_real_socket_is_found_in_proc_net_udp() -> None:
    if not os.path.exists("/proc/net/udp"):
        pytest.skip("no /proc/net/udp")
    drops = UdpSocketDrops()
    with bind_udp_socket("127.0.0.1", 0, 0) as sock:
        drops.watch(sock.fileno(), "127.0.0.1:1")
        assert drops.read() == {"127.0.0.1:1": 0}


def test_socket_drops_reach_metrics_totals_and_the_status_line() -> None:
    registry = CollectorRegistry()
    metrics = ReceiverMetrics(registry)
    metrics.bind_socket_drops(lambda: {"127.0.0.1:9060": 5, "[::1]:9060": 2})
    assert metrics.totals()["udp_socket_drops"] == 7
    value = registry.get_sample_value(
        "hep_ingest_udp_socket_drops_total", {"listen": "[::1]:9060"}
    )
    assert value == 2
    totals = read_totals(registry)
    assert totals.udp_socket_drops == 7
    assert totals.line().endswith("  udp socket drops 7")
    assert "socket drops" not in Totals().line()


def test_ipv4_and_ipv6_wildcards_on_one_port_are_two_listeners() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with bind_udp_socket("0.0.0.0", 0, 0) as v4:
        port = v4.getsockname()[1]
        with bind_udp_socket("::", port, 0) as v6:
            assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            with pytest.raises(OSError, match=rf"cannot bind UDP \[::\]:{port}: "):
                bind_udp_socket("::", port, 0)
